"""Job files in S3-compatible object storage, against a real server (SeaweedFS), never a mock.

The server enforces signatures (tests/s3_server.py), so the refusals here are its own.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import Engine, select

from audit_core import access, context, export, jobs
from audit_core.access import LOCAL_ADMIN
from audit_core.config import ObjectStore, Settings
from audit_core.context import Context
from audit_core.demo import generate
from audit_core.http import documents, links
from audit_core.models import AuditRecord
from audit_core.storage import MIN_PART_SIZE, S3Storage, StorageError, open_storage
from audit_core.store import append
from audit_core.worker import Worker, sweep_expired

from .conftest import add_demo
from .s3_server import REGION, S3Server, running
from .test_api import DATA_END
from .test_worker import FAST, ROOT, enqueue, event_count, job_row, wait_for, worker_process

with warnings.catch_warnings():  # starlette warns that httpx is deprecated for TestClient
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.xdist_group("s3")  # one server for the module, on one xdist worker


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on 127.0.0.1 for this module, stopped at its end."""
    with running(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """A fresh prefix of the test bucket; the AWS variables set for the portal's client."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    prefix = f"t-{uuid.uuid4().hex[:12]}/exports"
    return ObjectStore(s3_server.bucket, prefix, s3_server.endpoint_url, REGION)


@pytest.fixture
def s3_settings(settings: Settings, store: ObjectStore) -> Settings:
    """The test's settings with job files in the bucket."""
    return replace(settings, export_storage=store)


@pytest.fixture
def s3_env(env: dict[str, str], s3_server: S3Server, store: ObjectStore) -> dict[str, str]:
    """The environment of a worker process that keeps job files in the bucket."""
    assert store.endpoint_url is not None
    return {
        **env,
        **s3_server.env(),
        "AUDIT_EXPORT_STORAGE": store.url,
        "AUDIT_S3_ENDPOINT_URL": store.endpoint_url,
    }


# -- what the server holds ------------------------------------------------------------------


def stored(server: S3Server, store: ObjectStore, name: str) -> bytes | None:
    """The object's bytes as the server has them; None when there is no such object."""
    client = server.client()
    try:
        return client.get_object(Bucket=store.bucket, Key=store.key(name))["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def uploads(server: S3Server, store: ObjectStore) -> list[str]:
    """Keys of multipart uploads under the store's prefix that are not completed or aborted."""
    found = server.client().list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    return [u["Key"] for u in found.get("Uploads", [])]


def uploaded_parts(server: S3Server, store: ObjectStore) -> int:
    """How many parts the unfinished uploads under the prefix have received."""
    client = server.client()
    found = client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    total = 0
    for u in found.get("Uploads", []):
        listed = client.list_parts(Bucket=store.bucket, Key=u["Key"], UploadId=u["UploadId"])
        total += len(listed.get("Parts", []))
    return total


def job_name(job: jobs.JobInfo) -> str:
    return jobs.file_name(job.job_id, job.format, job.compression)


# -- job files round trip -------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "compression"), [("csv", "none"), ("jsonl", "gzip")])
def test_a_job_file_is_the_direct_export_byte_for_byte_in_the_bucket(
    engine: Engine,
    s3_settings: Settings,
    s3_server: S3Server,
    store: ObjectStore,
    fmt: str,
    compression: str,
) -> None:
    add_demo(engine, 12_000)
    job, direct = enqueue(engine, s3_settings, fmt, compression)
    assert Worker(engine, s3_settings, timing=FAST).run_until_idle() == [job.job_id]
    row = job_row(engine, job.job_id)
    assert row.state == "completed"
    data = stored(s3_server, store, job_name(job))
    assert data is not None
    assert hashlib.sha256(data).hexdigest() == row.file_sha256 and len(data) == row.file_size
    assert (gzip.decompress(data) if compression == "gzip" else data) == direct
    assert open_storage(s3_settings).size(job_name(job)) == row.file_size
    assert uploads(s3_server, store) == []
    assert not s3_settings.export_dir.exists() or not any(s3_settings.export_dir.iterdir())
    assert event_count(engine, "audit.job.complete", job.job_id) == 1


def test_a_big_file_goes_up_in_parts_in_flat_memory(
    s3_server: S3Server, store: ObjectStore
) -> None:
    """Memory holds about one part, whatever the file's size (here 6 parts of 5 MiB)."""
    storage = S3Storage(store, part_size=MIN_PART_SIZE)
    chunk = os.urandom(256 * 1024)
    digest = hashlib.sha256()
    pending = storage.open_writer("big.csv")
    tracemalloc.start()
    try:
        for i in range(6 * MIN_PART_SIZE // len(chunk) + 3):
            piece = chunk[i % 7 :] + chunk[: i % 7]  # no two parts alike
            digest.update(piece)
            pending.write(piece)
        pending.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored(s3_server, store, "big.csv") is None  # written, not yet published
    assert uploaded_parts(s3_server, store) == 7
    pending.publish()
    data = stored(s3_server, store, "big.csv")
    assert data is not None and hashlib.sha256(data).hexdigest() == digest.hexdigest()
    assert len(data) == 6 * MIN_PART_SIZE + 3 * len(chunk)
    assert peak < 3 * MIN_PART_SIZE, f"peak {peak} bytes for a {len(data)}-byte file"
    assert uploads(s3_server, store) == []


def test_an_empty_file_is_an_empty_object(s3_server: S3Server, store: ObjectStore) -> None:
    pending = S3Storage(store).open_writer("empty.jsonl")
    pending.finish()
    pending.publish()
    assert stored(s3_server, store, "empty.jsonl") == b""


# -- presigned links, refused by the server itself ---------------------------------------------


def published(store: ObjectStore, name: str, data: bytes) -> S3Storage:
    storage = S3Storage(store)
    pending = storage.open_writer(name)
    pending.write(data)
    pending.finish()
    pending.publish()
    return storage


def test_a_presigned_link_downloads_the_object_under_its_download_name(
    store: ObjectStore,
) -> None:
    storage = published(store, "export-20260301-001.csv", b"id,timestamp\r\n")
    url = storage.presigned_url(
        "export-20260301-001.csv",
        download_name="audit-export-20260301.csv",
        content_type="text/csv; charset=utf-8",
    )
    resp = httpx.get(url)  # no credentials: the link is the credential
    assert resp.status_code == 200 and resp.content == b"id,timestamp\r\n"
    assert resp.headers["content-disposition"] == 'attachment; filename="audit-export-20260301.csv"'
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["300"]
    head = httpx.head(storage.presigned_url("export-20260301-001.csv", method="HEAD"))
    assert head.status_code == 200 and head.headers["content-length"] == "14"


def _other_signature(url: str) -> str:
    """The same link with one hex digit of its signature changed."""
    sig = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    return url.replace(sig, ("1" if sig[0] == "0" else "0") + sig[1:])


TAMPERINGS = {
    "one character of the signature": _other_signature,
    "another object's key": lambda url: url.replace("/secret.csv?", "/public.csv?"),
    "the signature left out": lambda url: url.split("?", 1)[0],
}


@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_the_server_refuses_a_tampered_link(store: ObjectStore, how: str) -> None:
    storage = published(store, "secret.csv", b"FIRST-OBJECT-BYTES")
    published(store, "public.csv", b"SECOND-OBJECT-BYTES")
    url = storage.presigned_url("secret.csv")
    assert httpx.get(url).status_code == 200
    tampered = TAMPERINGS[how](url)
    assert tampered != url
    resp = httpx.get(tampered)
    assert resp.status_code == 403, resp.text
    assert b"OBJECT-BYTES" not in resp.content


def test_the_server_refuses_an_expired_link(store: ObjectStore) -> None:
    storage = published(store, "soon.csv", b"soon gone")
    url = storage.presigned_url("soon.csv", expires_in=1)
    time.sleep(2.5)  # SigV4 dates are in whole seconds
    resp = httpx.get(url)
    assert resp.status_code == 403 and "expired" in resp.text.lower(), resp.text


# -- expiry -----------------------------------------------------------------------------------


def test_expiry_deletes_the_object(
    engine: Engine, s3_settings: Settings, s3_server: S3Server, store: ObjectStore
) -> None:
    add_demo(engine, 300)
    job, _ = enqueue(engine, s3_settings)
    Worker(engine, s3_settings, timing=FAST).run_until_idle()
    row = job_row(engine, job.job_id)
    expires = row.expires_at
    assert stored(s3_server, store, job_name(job)) is not None
    assert sweep_expired(engine, s3_settings, now=expires - timedelta(seconds=1)) == []
    assert stored(s3_server, store, job_name(job)) is not None
    assert sweep_expired(engine, s3_settings, now=expires) == [job.job_id]
    assert stored(s3_server, store, job_name(job)) is None
    assert job_row(engine, job.job_id).state == "expired"
    assert event_count(engine, "audit.job.expire", job.job_id) == 1


# -- crashes and failures mid-upload ------------------------------------------------------------


class FailingOnce:
    """export.chunks, but the first run raises once `after` bytes have gone out."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.failed = False
        self.real = export.chunks

    def __call__(self, conn: Any, plan: export.ExportPlan) -> Iterator[bytes]:
        sent = 0
        for chunk in self.real(conn, plan):
            yield chunk
            sent += len(chunk)
            if not self.failed and sent >= self.after:
                self.failed = True
                raise RuntimeError("the database went away")


def test_a_failure_mid_upload_leaves_no_object_and_the_job_is_redone_cleanly(
    engine: Engine,
    s3_settings: Settings,
    s3_server: S3Server,
    store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_demo(engine, 20_000)
    job, direct = enqueue(engine, s3_settings, "jsonl")
    source = FailingOnce(after=MIN_PART_SIZE + 1)
    monkeypatch.setattr(export, "chunks", source)
    worker = Worker(engine, s3_settings, timing=FAST)
    worker.storage = S3Storage(store, part_size=MIN_PART_SIZE)  # a part goes out first
    assert worker.run_once() == job.job_id
    assert source.failed
    row = job_row(engine, job.job_id)
    assert (row.state, row.attempts, row.file_size) == ("queued", 1, None)
    assert "RuntimeError" in row.last_error
    assert stored(s3_server, store, job_name(job)) is None
    assert uploads(s3_server, store) == []  # aborted: its parts are gone too

    assert worker.run_until_idle() == [job.job_id]
    row = job_row(engine, job.job_id)
    assert (row.state, row.attempts) == ("completed", 2)
    assert stored(s3_server, store, job_name(job)) == direct
    assert uploads(s3_server, store) == []
    assert event_count(engine, "audit.job.complete", job.job_id) == 1


def test_a_job_is_completed_only_once_its_object_exists(
    engine: Engine,
    s3_settings: Settings,
    s3_server: S3Server,
    store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upload that cannot be completed (here: aborted behind the worker's back just
    before it completes it) leaves the job uncompleted, to be redone."""
    add_demo(engine, 300)
    job, direct = enqueue(engine, s3_settings)
    real_complete = jobs.complete
    client = s3_server.client()

    def complete_after_a_rival_abort(*args: Any, **kwargs: Any) -> None:
        found = client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
        for u in found.get("Uploads", []):
            client.abort_multipart_upload(Bucket=store.bucket, Key=u["Key"], UploadId=u["UploadId"])
        monkeypatch.setattr(jobs, "complete", real_complete)  # once
        real_complete(*args, **kwargs)

    monkeypatch.setattr(jobs, "complete", complete_after_a_rival_abort)
    worker = Worker(engine, s3_settings, timing=FAST)
    assert worker.run_once() == job.job_id
    row = job_row(engine, job.job_id)
    assert (row.state, row.file_size, row.finished_at) == ("queued", None, None)
    assert row.last_error.startswith("the object store could not complete the upload")
    assert stored(s3_server, store, job_name(job)) is None
    assert event_count(engine, "audit.job.complete", job.job_id) == 0
    assert worker.run_until_idle() == [job.job_id]
    assert job_row(engine, job.job_id).state == "completed"
    assert stored(s3_server, store, job_name(job)) == direct


def test_a_worker_killed_mid_upload_leaves_no_object_and_another_redoes_it(
    engine: Engine,
    s3_settings: Settings,
    s3_env: dict[str, str],
    s3_server: S3Server,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    add_demo(engine, 40_000)  # JSON Lines: ~13 MB; the first 8 MiB part goes at ~60%
    job, direct = enqueue(engine, s3_settings, "jsonl")
    # A pause per chunk that leaves seconds between the first part and the end: SQLite
    # sends 8 chunks of ~1.6 MB, PostgreSQL's COPY path ~50 of ~260 KB (measured).
    delay = "1500" if engine.dialect.name == "sqlite" else "200"
    with worker_process(
        s3_env,
        tmp_path / "first.log",
        AUDIT_WORKER_LEASE_SECONDS="2",
        AUDIT_WORKER_BATCH_DELAY_MS=delay,
    ) as first:
        wait_for("a part uploaded", lambda: uploaded_parts(s3_server, store) >= 1)
        first.send_signal(signal.SIGKILL)
        first.wait()
    row = job_row(engine, job.job_id)
    assert (row.state, row.attempts) == ("processing", 1), (tmp_path / "first.log").read_text()
    assert stored(s3_server, store, job_name(job)) is None  # nothing half-uploaded is an object
    assert uploads(s3_server, store) == [store.key(job_name(job))]  # the dead worker's parts

    with worker_process(s3_env, tmp_path / "second.log") as second:
        wait_for("the job to complete", lambda: job_row(engine, job.job_id).state == "completed")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    row = job_row(engine, job.job_id)
    data = stored(s3_server, store, job_name(job))
    assert row.attempts == 2 and data == direct
    assert hashlib.sha256(data).hexdigest() == row.file_sha256 and len(data) == row.file_size
    assert uploads(s3_server, store) == []  # the second worker aborted the dead one's upload
    assert event_count(engine, "audit.job.complete", job.job_id) == 1


# -- downloads: 302 to a presigned link ---------------------------------------------------------


@dataclass
class Portal:
    client: TestClient
    ctx: Context
    tokens: dict[str, str]

    def make(self, who: str, role: str) -> None:
        """Give who@empresa.com this role (every namespace)."""
        engine, settings = self.ctx.engine, self.ctx.settings
        access.upsert_user(engine, f"{who}@empresa.com", role, "*", LOCAL_ADMIN, settings=settings)

    def get(self, path: str, who: str, method: str = "GET") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return self.client.request(
            method, "/api/v1" + path, headers=headers, follow_redirects=False
        )


@pytest.fixture
def portal(client: TestClient, s3_settings: Settings) -> Iterator[Portal]:
    """The real API on this test's database, job files in the bucket; ana owns the jobs."""
    ctx = context.build(s3_settings)
    previous = context.install(ctx)
    tokens = {}
    portal = Portal(client, ctx, tokens)
    for who in ("ana", "otto"):
        portal.make(who, "auditor")
        tokens[who], _ = access.create_token(
            ctx.engine, f"{who}@empresa.com", LOCAL_ADMIN, settings=ctx.settings
        )
    try:
        yield portal
    finally:
        context.install(previous)
        ctx.engine.dispose()


def finished_job(portal: Portal, rows: int = 300) -> tuple[jobs.JobInfo, bytes]:
    """A completed job of ana's over demo records that end before today's portal records."""
    with portal.ctx.engine.begin() as conn:
        append(conn, generate(rows, seed=7, end=DATA_END))
    job, direct = enqueue(portal.ctx.engine, portal.ctx.settings)
    Worker(portal.ctx.engine, portal.ctx.settings, timing=FAST).run_until_idle()
    return job, direct


def downloads(engine: Engine, job_id: str) -> list[str]:
    """The resources of the job's audit.export.download records, in order."""
    stmt = (
        select(AuditRecord.resource)
        .where(AuditRecord.action == "audit.export.download")
        .where(AuditRecord.resource.startswith(job_id))
        .order_by(AuditRecord.seq)
    )
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def test_a_download_is_a_302_to_a_presigned_link_recorded_once(portal: Portal) -> None:
    job, direct = finished_job(portal)
    path = f"/audit/export/download/{job.job_id}"
    resp = portal.get(path, "ana")
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Expires"] == ["300"] and query["X-Amz-SignedHeaders"] == ["host"]
    store = portal.ctx.settings.export_storage
    assert store is not None
    assert urlsplit(location).path == f"/{store.bucket}/{store.key(job_name(job))}"
    fetched = httpx.get(location)  # the store serves it; no portal token goes there
    assert fetched.status_code == 200 and fetched.content == direct
    named = documents.download_name(job)  # as the local download names it
    assert fetched.headers["content-disposition"] == f'attachment; filename="{named}"'
    assert resp.headers["cache-control"] == "no-store"
    assert downloads(portal.ctx.engine, job.job_id) == [
        f"{job.job_id} (csv, {job.estimated_records} rows)"
    ]  # the same record as a local download, written when the link is handed out


def test_a_store_that_fails_is_a_503_that_hands_out_and_records_nothing(portal: Portal) -> None:
    job, _ = finished_job(portal)
    store = portal.ctx.settings.export_storage
    assert store is not None
    with socket.socket() as probe:  # a loopback port where nothing listens: the store is down
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}"
    gone = replace(store, endpoint_url=down)
    broken = replace(portal.ctx, settings=replace(portal.ctx.settings, export_storage=gone))
    previous = context.install(broken)
    try:
        resp = portal.get(f"/audit/export/download/{job.job_id}", "ana")
    finally:
        context.install(previous)
    assert resp.status_code == 503, resp.text
    assert resp.json()["reason"] == "ServiceUnavailable"
    assert "the object store could not" in resp.json()["message"]
    assert "location" not in resp.headers
    assert downloads(portal.ctx.engine, job.job_id) == []


def test_a_portal_signed_link_gets_the_302_too(portal: Portal) -> None:
    """The portal's own download buttons (?sig=, no token) end at the store as well."""
    job, direct = finished_job(portal)
    url = links.sign_download(job.job_id, "ana@empresa.com", portal.ctx.settings)
    resp = portal.client.get(url, follow_redirects=False)
    assert resp.status_code == 302, resp.text
    assert httpx.get(resp.headers["location"]).content == direct
    assert len(downloads(portal.ctx.engine, job.job_id)) == 1


def test_head_answers_the_same_302_and_records_nothing(portal: Portal) -> None:
    job, _ = finished_job(portal)
    resp = portal.get(f"/audit/export/download/{job.job_id}", "ana", method="HEAD")
    assert resp.status_code == 302 and resp.content == b""
    assert httpx.head(resp.headers["location"]).status_code == 200
    assert downloads(portal.ctx.engine, job.job_id) == []


def test_the_302_comes_after_the_same_checks_as_a_local_download(portal: Portal) -> None:
    job, _ = finished_job(portal)
    path = f"/audit/export/download/{job.job_id}"
    assert portal.get(path, "otto").status_code == 404  # not theirs: as if it did not exist
    access.upsert_user(
        portal.ctx.engine,
        "ana@empresa.com",
        "viewer",
        "*",
        LOCAL_ADMIN,
        settings=portal.ctx.settings,
    )
    assert portal.get(path, "ana").status_code == 403  # may no longer export
    access.upsert_user(
        portal.ctx.engine,
        "ana@empresa.com",
        "auditor",
        "*",
        LOCAL_ADMIN,
        settings=portal.ctx.settings,
    )
    row = job_row(portal.ctx.engine, job.job_id)
    sweep_expired(portal.ctx.engine, portal.ctx.settings, now=row.expires_at)
    assert portal.get(path, "ana").status_code == 410
    queued, _ = enqueue(portal.ctx.engine, portal.ctx.settings)
    assert portal.get(f"/audit/export/download/{queued.job_id}", "ana").status_code == 202
    assert downloads(portal.ctx.engine, job.job_id) == []


# -- a bucket the portal cannot use ---------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"AUDIT_EXPORT_STORAGE": "s3://no-such-bucket/x"}, "the bucket does not exist"),
        ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "refused the credentials"),
    ],
)
def test_a_worker_that_cannot_use_the_bucket_says_so_in_one_line(
    s3_env: dict[str, str], change: dict[str, str], said: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "audit_core", "worker"],
        cwd=ROOT,
        env={**s3_env, **change},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: AUDIT_EXPORT_STORAGE s3://"), proc.stderr
    assert said in lines[0] and "not-the-secret" not in proc.stderr


def test_a_storage_failure_reads_plainly(store: ObjectStore) -> None:
    broken = S3Storage(replace(store, bucket="no-such-bucket"))
    with pytest.raises(StorageError, match="could not list unfinished uploads: the bucket does"):
        broken.open_writer("x.csv")
