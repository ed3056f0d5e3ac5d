"""Several hosts (issue 17, item 4): two portals and two worker processes that share nothing
but one PostgreSQL database and one S3 bucket (SeaweedFS on loopback, tests/s3_server.py).

Each host is a folder of its own: its HOME, working directory, TMPDIR, export folder, logs
and its own copy of the log's signing key. Every host gets the same key and the same
AUDIT_SECRET_KEY (as an operator would deploy them), or their signed heads, manifests and
portal-signed links would differ. Host A and host B each run a portal (`streamlit run
app.py`, which runs an export worker in-process) and a worker process (`python -m audit_core
worker`), so four workers compete for every job; the lease owner a job keeps
(`host:pid:uuid/i`, one machine here, so the pid tells them apart) names the process that
built its file. To kill a chosen worker mid-upload, the test holds the other processes still
(SIGSTOP, as if their hosts were cut off) until host A's worker has the job, and lets only
host B's worker go once A's is dead; every fixture resumes and stops what it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from audit_core import access, evidence, export, integrity, jobs, service, signing, store
from audit_core.access import LOCAL_ADMIN, Principal
from audit_core.config import ObjectStore, Settings
from audit_core.db import make_engine, migrate, refresh_statistics
from audit_core.demo import NAMESPACES, generate
from audit_core.filters import AuditFilter
from audit_core.http import links
from audit_core.models import ExportManifest
from audit_core.record import format_instant
from audit_core.storage import PART_SIZE

from .conftest import PG_ADMIN_URL
from .e2e.harness import free_port, log_tail, start_process, stop_process, wait_http
from .s3_server import REGION, S3Server, running
from .test_worker import J, event_count, job_row, wait_for

pytestmark = [pytest.mark.xdist_group("s3"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DATA_END = datetime(2026, 3, 20, tzinfo=UTC)
RECORDS = 40_000  # the whole log as JSON Lines is ~13 MB: two parts of the upload
ANA = "ana@empresa.com"
SECRET = "multihost-secret-0123456789abcdef0123456789"
SHARED_KNOBS = {
    "AUDIT_SYNC_EXPORT_LIMIT": "100",  # every export below becomes a job
    "AUDIT_MAX_QUEUED_JOBS": "50",
    "AUDIT_WORKER_POLL_SECONDS": "0.2",
    "AUDIT_WORKER_HEARTBEAT_SECONDS": "0.3",
}
# The portals' own workers take a few chunks per job at this pace, so while they build a
# file the next jobs go to the worker processes: every process takes part.
PORTAL_KNOBS = {"AUDIT_WORKER_BATCH_DELAY_MS": "400"}
WORKER_KNOBS = {"AUDIT_WORKER_BATCH_DELAY_MS": "50"}


# -- what the hosts share: a database and a bucket ----------------------------------------


@dataclass(frozen=True)
class Shared:
    """The database, the bucket, and the test's own view of them (library calls)."""

    engine: Engine
    db_url: str
    store: ObjectStore
    s3: S3Server
    key_file: Path  # the log's signing key, copied onto every host
    token: str  # ana's API token
    settings: Settings  # the settings a host has, for the test's library calls


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on 127.0.0.1 for this module, stopped at its end."""
    with running(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="module")
def shared(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """A PostgreSQL database of this module's own (dropped after) with 40,000 demo records,
    an auditor with a token, and a fresh prefix of the bucket."""
    name = f"audit_multihost_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine: Engine | None = None
    try:
        base = tmp_path_factory.mktemp("operator")
        key_file = base / "signing.key"
        key = signing.load_or_create_key(key_file)
        engine = make_engine(url)
        evidence.attach(engine, evidence.Signer(key, Settings().log_origin))
        migrate(engine)
        with engine.begin() as conn:
            store.append(conn, generate(RECORDS, seed=17, end=DATA_END))
        refresh_statistics(engine)
        assert s3_server.endpoint_url
        bucket = ObjectStore(
            s3_server.bucket, f"mh-{uuid.uuid4().hex[:10]}/exports", s3_server.endpoint_url, REGION
        )
        settings = Settings(
            database_url=url,
            database_configured=True,
            export_dir=base / "exports",
            export_storage=bucket,
            secret_key=SECRET,
            signing_key_file=key_file,
            max_queued_jobs=50,
        )
        access.upsert_user(engine, ANA, "auditor", "*", LOCAL_ADMIN, settings=settings)
        token, _ = access.create_token(engine, ANA, LOCAL_ADMIN, settings=settings)
        yield Shared(engine, url, bucket, s3_server, key_file, token, settings)
    finally:
        if engine is not None:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- hosts: a folder each, and the processes they run -------------------------------------


def stop(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Resume the process group (it may be paused), then SIGTERM it, SIGKILL after timeout."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGCONT)
    stop_process(proc, timeout=timeout)


@contextlib.contextmanager
def paused(*procs: subprocess.Popen[Any]) -> Iterator[None]:
    """SIGSTOP the processes (as if their hosts were cut off) and SIGCONT them after."""
    try:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGSTOP)
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)


@dataclass(frozen=True)
class Host:
    """One machine: a folder holding its HOME, working directory and settings."""

    name: str
    root: Path
    env: dict[str, str]

    def start(self, cmd: Sequence[str], log_name: str, **knobs: str) -> subprocess.Popen[bytes]:
        """Start cmd here (own session, stopped if we die), output to logs/<log_name>."""
        env = {**self.env, **knobs}
        return start_process(cmd, env=env, cwd=self.root, log_path=self.root / "logs" / log_name)

    @contextlib.contextmanager
    def worker(
        self, log_name: str = "worker.log", **knobs: str
    ) -> Iterator[subprocess.Popen[bytes]]:
        """`python -m audit_core worker`, running until the block ends (then SIGTERM)."""
        proc = self.start([sys.executable, "-m", "audit_core", "worker"], log_name, **knobs)
        log = self.root / "logs" / log_name
        try:
            wait_for(
                f"host {self.name}'s worker to start",
                lambda: b"started" in log.read_bytes() or proc.poll() is not None,
            )
            assert proc.poll() is None, log_tail(proc)
            yield proc
        finally:
            stop(proc)

    def cli(self, *args: str) -> bytes:
        """Run `python -m audit_core ARGS` here; its stdout."""
        run = subprocess.run(
            [sys.executable, "-m", "audit_core", *args],
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
        return run.stdout


def make_host(name: str, base: Path, shared: Shared) -> Host:
    """A host folder: the repository's Streamlit config and a copy of the signing key."""
    root = base / f"host-{name}"
    for sub in ("home", "tmp", "keys", "logs", ".streamlit"):
        (root / sub).mkdir(parents=True)
    shutil.copy2(shared.key_file, root / "keys" / "signing.key")
    shutil.copy2(ROOT / ".streamlit" / "config.toml", root / ".streamlit" / "config.toml")
    # Nothing of the test run's own settings (the session's API client sets AUDIT_* ones).
    drop = ("AUDIT_", "AWS_", "STREAMLIT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    store_url, endpoint = shared.store.url, shared.store.endpoint_url
    assert endpoint is not None
    env.update(
        HOME=str(root / "home"),
        TMPDIR=str(root / "tmp"),
        PYTHONUNBUFFERED="1",
        AUDIT_DATABASE_URL=shared.db_url,
        AUDIT_EXPORT_DIR=str(root / "data" / "exports"),
        AUDIT_SIGNING_KEY_FILE=str(root / "keys" / "signing.key"),
        AUDIT_SECRET_KEY=SECRET,
        AUDIT_EXPORT_STORAGE=store_url,
        AUDIT_S3_ENDPOINT_URL=endpoint,
        **shared.s3.env(),
        **SHARED_KNOBS,
    )
    return Host(name, root, env)


@pytest.fixture(scope="module")
def hosts(shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> tuple[Host, Host]:
    base = tmp_path_factory.mktemp("hosts")
    return make_host("a", base, shared), make_host("b", base, shared)


@dataclass(frozen=True)
class Portal:
    host: Host
    proc: subprocess.Popen[bytes]
    http: httpx.Client


def streamlit_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--server.runOnSave", "false",
    ]  # fmt: skip


def healthy(status: int, body: str) -> bool:
    return status == 200 and body.strip() == "ok"


@pytest.fixture(scope="module")
def portals(hosts: tuple[Host, Host], shared: Shared) -> Iterator[tuple[Portal, Portal]]:
    """`streamlit run app.py` on each host, each on a free loopback port, started together."""
    with contextlib.ExitStack() as stack:
        starting = []
        for host in hosts:
            port = free_port()
            proc = host.start(streamlit_command(port), "portal.log", **PORTAL_KNOBS)
            stack.callback(stop, proc)
            starting.append((host, proc, f"http://127.0.0.1:{port}"))
        started = []
        for host, proc, base in starting:
            wait_http(f"{base}/_stcore/health", healthy, timeout=120, proc=proc)
            http = stack.enter_context(httpx.Client(base_url=base, trust_env=False, timeout=60))
            answer = http.get("/api/v1/audit/export/jobs/export-20000101-001", headers=auth(shared))
            assert answer.status_code == 404, answer.text  # the API is up, on the database
            started.append(Portal(host, proc, http))
        yield started[0], started[1]


# -- helpers --------------------------------------------------------------------------------


def auth(shared: Shared) -> dict[str, str]:
    return {"Authorization": f"Bearer {shared.token}"}


def library_bytes(engine: Engine, fmt: str, params: dict[str, str]) -> bytes:
    """A direct export through the library, with the same filter as the API's."""
    with engine.connect() as conn:
        plan = export.plan(conn, AuditFilter.from_params(params), fmt)
        return b"".join(export.chunks(conn, plan))


def pid_of(lease_owner: str | None) -> int:
    """The process in a lease owner `host:pid:uuid/i`."""
    assert lease_owner is not None
    return int(lease_owner.split(":")[1])


def manifests_of(engine: Engine, job_id: str) -> int:
    stmt = select(func.count()).where(ExportManifest.export_id == job_id)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def unfinished_uploads(shared: Shared) -> list[str]:
    found = shared.s3.client().list_multipart_uploads(
        Bucket=shared.store.bucket, Prefix=shared.store.prefix
    )
    return [u["Key"] for u in found.get("Uploads", [])]


def uploaded_parts(shared: Shared) -> int:
    client = shared.s3.client()
    found = client.list_multipart_uploads(Bucket=shared.store.bucket, Prefix=shared.store.prefix)
    total = 0
    for u in found.get("Uploads", []):
        listed = client.list_parts(Bucket=shared.store.bucket, Key=u["Key"], UploadId=u["UploadId"])
        total += len(listed.get("Parts", []))
    return total


def stored(shared: Shared, name: str) -> bytes | None:
    client = shared.s3.client()
    try:
        return client.get_object(Bucket=shared.store.bucket, Key=shared.store.key(name))[
            "Body"
        ].read()
    except client.exceptions.NoSuchKey:
        return None


def fetch(portal: Portal, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """A download through this portal: a 302 to the bucket, followed there (no token)."""
    answer = portal.http.get(path, headers=headers, follow_redirects=False)
    assert answer.status_code == 302, (answer.status_code, answer.text[:500])
    location = answer.headers["location"]
    assert location.startswith(portal_store_url(portal)), location
    got = httpx.get(location, trust_env=False, timeout=60)
    assert got.status_code == 200, got.text[:500]
    return got


def portal_store_url(portal: Portal) -> str:
    """Where a presigned link of this host's bucket points."""
    endpoint = portal.host.env["AUDIT_S3_ENDPOINT_URL"]
    bucket, _, prefix = portal.host.env["AUDIT_EXPORT_STORAGE"].removeprefix("s3://").partition("/")
    return f"{endpoint}/{bucket}/{prefix}/"


def job_params(i: int) -> dict[str, str]:
    """Job i's filter: nine days of three namespaces (~600-1,600 records), from and to given."""
    start = DATA_END - timedelta(days=88 - 4 * i)
    busy = ("production", "staging")[i // 4 % 2]
    quiet = [n for n in NAMESPACES if n not in ("production", "staging")]
    namespaces = sorted({busy, quiet[i % len(quiet)], quiet[(i + 3) % len(quiet)]})
    return {
        "from": format_instant(start),
        "to": format_instant(start + timedelta(days=9)),
        "namespace": ",".join(namespaces),
    }


def wait_until_done(engine: Engine, job_ids: list[str], logs: Sequence[Path]) -> None:
    """Wait until every job completed; fail at once, with the logs, if one failed."""

    def states() -> dict[str, str]:
        with engine.connect() as conn:
            rows = conn.execute(select(J.c.job_id, J.c.state).where(J.c.job_id.in_(job_ids)))
            return {r.job_id: r.state for r in rows}

    deadline = time.monotonic() + 180
    while (now := states()) and any(s != "completed" for s in now.values()):
        ended = {j: s for j, s in now.items() if s in ("failed", "cancelled", "expired")}
        tails = "\n".join(f"--- {log}\n{log_tail(log)}" for log in logs)
        assert not ended, f"{ended}\n{tails}"
        assert time.monotonic() < deadline, f"still running: {now}\n{tails}"
        time.sleep(0.1)


# -- the tests ------------------------------------------------------------------------------


def test_twenty_jobs_from_two_portals_run_once_on_either_host_and_download_from_both(
    shared: Shared, hosts: tuple[Host, Host], portals: tuple[Portal, Portal]
) -> None:
    host_a, host_b = hosts
    with (
        host_a.worker("worker-twenty.log", **WORKER_KNOBS) as worker_a,
        host_b.worker("worker-twenty.log", **WORKER_KNOBS) as worker_b,
    ):
        queued: list[tuple[str, str, dict[str, str], int]] = []
        for i in range(20):
            fmt, params, via = ("csv", "jsonl")[i // 2 % 2], job_params(i), i % 2  # both, both
            answer = portals[via].http.get(
                "/api/v1/audit/export", params={"format": fmt, **params}, headers=auth(shared)
            )
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["metadata"]["jobId"]
            assert answer.headers["location"] == f"/api/v1/audit/export/jobs/{job_id}"
            queued.append((job_id, fmt, params, via))
        logs = [h.root / "logs" / n for h in hosts for n in ("portal.log", "worker-twenty.log")]
        wait_until_done(shared.engine, [q[0] for q in queued], logs)
    assert (worker_a.returncode, worker_b.returncode) == (0, 0), [log_tail(p) for p in logs]

    owners: Counter[int] = Counter()
    for job_id, fmt, params, via in queued:
        row = job_row(shared.engine, job_id)
        owners[pid_of(row.lease_owner)] += 1
        # Run exactly once: one attempt, one completion record, one signed manifest.
        assert (row.state, row.attempts) == ("completed", 1), (job_id, row.last_error)
        assert event_count(shared.engine, "audit.export.queue", job_id) == 1
        assert event_count(shared.engine, "audit.job.complete", job_id) == 1
        assert manifests_of(shared.engine, job_id) == 1
        direct = library_bytes(shared.engine, fmt, params)
        assert row.estimated_records > 100 and row.rows_written == row.estimated_records
        assert hashlib.sha256(direct).hexdigest() == row.file_sha256
        assert len(direct) == row.file_size
        assert stored(shared, row.file_name) == direct

        other = portals[1 - via]  # the portal that did not queue it knows it just as well
        doc = other.http.get(f"/api/v1/audit/export/jobs/{job_id}", headers=auth(shared))
        status = doc.json()["status"]
        assert (status["state"], status["attempts"], status["sha256"]) == (
            "completed",
            1,
            row.file_sha256,
        )
        for portal in portals:
            got = fetch(portal, f"/api/v1/audit/export/download/{job_id}", auth(shared))
            assert got.content == direct
            assert hashlib.sha256(got.content).hexdigest() == status["sha256"]
        # A portal-signed link (the download button's) from one host opens on the other.
        assert fetch(other, links.sign_download(job_id, ANA, shared.settings)).content == direct
        manifest = other.http.get(
            f"/api/v1/audit/export/download/{job_id}/manifest", headers=auth(shared)
        )
        sig = other.http.get(
            f"/api/v1/audit/export/download/{job_id}/manifest.sig", headers=auth(shared)
        )
        assert json.loads(manifest.content)["file"]["sha256"] == row.file_sha256
        signing.load_key(shared.key_file).public_key().verify(sig.content, manifest.content)

    processes = {worker_a.pid, worker_b.pid, portals[0].proc.pid, portals[1].proc.pid}
    assert set(owners) <= processes, owners
    assert owners[worker_a.pid] and owners[worker_b.pid], owners  # both worker hosts worked
    assert unfinished_uploads(shared) == []


def test_a_worker_killed_mid_upload_is_redone_by_the_other_host_and_nothing_is_lost(
    shared: Shared, hosts: tuple[Host, Host], portals: tuple[Portal, Portal]
) -> None:
    host_a, host_b = hosts
    params = {
        "from": format_instant(DATA_END - timedelta(days=91)),
        "to": format_instant(DATA_END),
        "namespace": ",".join(NAMESPACES),
    }
    # The direct export, by an operator's CLI on host B: every demo record, ~13 MB.
    cli_args = ["--from", params["from"], "--to", params["to"], "--namespace", params["namespace"]]
    direct = host_b.cli("export", "--format", "jsonl", *cli_args, "--no-manifest")
    assert direct.count(b"\n") == RECORDS and len(direct) > PART_SIZE + 2**20
    who = Principal(ANA, "auditor", None, "127.0.0.1")

    # Host A's worker paces itself (a part of 8 MiB goes out after ~4 s, the rest follows
    # over ~2.5 s more) and holds short leases, so the job is free soon after it dies.
    slow_a = {"AUDIT_WORKER_LEASE_SECONDS": "3", "AUDIT_WORKER_BATCH_DELAY_MS": "100"}
    with (
        host_b.worker("worker-second.log") as second,
        host_a.worker("worker-first.log", **slow_a) as first,
    ):
        # The portals' workers (and, until host A's worker has the job, host B's) are held
        # still, so host A's worker is the one that takes the job and dies with it.
        with paused(*(p.proc for p in portals)):
            with paused(second):
                with shared.engine.connect() as conn:
                    plan = service.plan_export(conn, who, AuditFilter.from_params(params), "jsonl")
                job = jobs.enqueue(shared.engine, plan, who, shared.settings)
                wait_for(
                    "host A's worker to claim the job",
                    lambda: job_row(shared.engine, job.job_id).lease_owner,
                )
                assert pid_of(job_row(shared.engine, job.job_id).lease_owner) == first.pid
            wait_for("a part of the file uploaded", lambda: uploaded_parts(shared) >= 1)
            first.send_signal(signal.SIGKILL)
            first.wait()
            row = job_row(shared.engine, job.job_id)
            assert (row.state, row.attempts) == ("processing", 1), log_tail(first)
            assert pid_of(row.lease_owner) == first.pid
            name = jobs.file_name(job.job_id, "jsonl", "none")
            assert stored(shared, name) is None  # nothing half-uploaded is an object
            assert unfinished_uploads(shared) == [shared.store.key(name)]  # its parts
            wait_for(
                "host B's worker to take the job over",
                lambda: job_row(shared.engine, job.job_id).attempts == 2,
                timeout=60,
            )
            assert pid_of(job_row(shared.engine, job.job_id).lease_owner) == second.pid
        # Both portals answer 202 until the file is whole, then the whole file.
        deadline, i = time.monotonic() + 120, 0
        path = f"/api/v1/audit/export/download/{job.job_id}"
        while (answer := portals[i % 2].http.get(path, headers=auth(shared))).status_code == 202:
            assert time.monotonic() < deadline, log_tail(second)
            i += 1
            time.sleep(0.2)
        assert answer.status_code == 302, answer.text
        served = httpx.get(answer.headers["location"], trust_env=False, timeout=60).content
    assert first.returncode == -signal.SIGKILL and second.returncode == 0, log_tail(second)

    row = job_row(shared.engine, job.job_id)
    assert (row.state, row.attempts, pid_of(row.lease_owner)) == ("completed", 2, second.pid)
    assert served == direct  # whole: every record, byte for byte the CLI's export
    assert row.rows_written == row.estimated_records == RECORDS
    assert hashlib.sha256(direct).hexdigest() == row.file_sha256 and len(direct) == row.file_size
    assert stored(shared, name) == direct
    assert unfinished_uploads(shared) == []  # host B's worker aborted the dead one's upload
    assert event_count(shared.engine, "audit.job.complete", job.job_id) == 1
    assert manifests_of(shared.engine, job.job_id) == 1
    for portal in portals:
        assert fetch(portal, path, auth(shared)).content == direct
    # And the log every host appended to still verifies under the one key.
    with shared.engine.connect() as conn:
        result = integrity.verify(conn)
    assert result.ok, result
