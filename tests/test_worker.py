"""Export workers: byte-identical files, leases, crashes, retries, expiry, real processes."""

from __future__ import annotations

import gzip
import hashlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from audit_core import export, jobs, service, store
from audit_core.access import Principal
from audit_core.config import Settings, Timing
from audit_core.context import Context
from audit_core.errors import ConfigError
from audit_core.filters import AuditFilter
from audit_core.http import documents
from audit_core.models import AuditRecord, ExportJob
from audit_core.record import compute_checksum, format_instant, normalize
from audit_core.worker import (
    THREAD_NAME,
    Worker,
    WorkerThreads,
    attempt_error,
    start_in_process,
    sweep_expired,
)

from .conftest import add_demo, finished_job

ROOT = Path(__file__).resolve().parents[1]
ANA = Principal("ana@empresa.com", "auditor", None, "10.0.0.5")
FAST = Timing(lease_seconds=30, heartbeat_seconds=0.2, poll_seconds=0.05, retry_seconds=0)
J = ExportJob.__table__


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Poll until check() is truthy; a generous deadline, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def job_row(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(J).where(J.c.job_id == job_id)).one()


def event_count(engine: Engine, action: str, resource: str | None = None) -> int:
    stmt = select(func.count()).where(AuditRecord.action == action)
    if resource is not None:
        stmt = stmt.where(AuditRecord.resource == resource)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def enqueue(
    engine: Engine,
    settings: Settings,
    fmt: str = "csv",
    compression: str = "none",
    flt: AuditFilter | None = None,
) -> tuple[jobs.JobInfo, bytes]:
    """Queue a job; return it with the bytes of a direct export planned at the same moment."""
    with engine.connect() as conn:
        plan = service.plan_export(conn, ANA, flt or AuditFilter(), fmt)
        direct = b"".join(export.chunks(conn, plan))
    return jobs.enqueue(engine, plan, ANA, settings, compression=compression), direct


def newcomers(n: int, start: int = 1) -> list[Any]:
    """Records that match every filter's time range, in the middle of the demo's days."""
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1, minutes=7)
    out = []
    for i in range(start, start + n):
        fields = {
            "id": f"audit-19990101-{i:03d}",
            "timestamp": format_instant(when),
            "action": "user.login",
            "user": "late@empresa.com",
            "role": "operator",
            "resource": f"late-{i}",
            "resourceType": "User",
            "namespace": "production",
            "sourceIP": "10.9.9.9",
        }
        fields["checksum"] = compute_checksum(fields)
        out.append(normalize(fields))
    return out


def parts(settings: Settings) -> list[Path]:
    return sorted(settings.export_dir.glob(".*.part")) if settings.export_dir.exists() else []


def finished_file(settings: Settings, job: jobs.JobInfo) -> bytes:
    return jobs.file_path(settings, job).read_bytes()


@pytest.mark.parametrize(
    ("fmt", "compression"),
    [("csv", "none"), ("json", "none"), ("jsonl", "none"), ("csv", "gzip"), ("jsonl", "gzip")],
)
def test_job_file_equals_direct_export_even_while_records_arrive(
    engine: Engine, settings: Settings, fmt: str, compression: str
) -> None:
    add_demo(engine, 12_000)  # three stream batches
    job, direct = enqueue(engine, settings, fmt, compression)
    with engine.begin() as conn:
        store.append(conn, newcomers(5))  # after enqueue, before the run
    worker = Worker(engine, settings, timing=replace(FAST, batch_delay=0.2))
    runner = threading.Thread(target=worker.run_until_idle)
    runner.start()
    try:
        wait_for("the worker to start writing", lambda: parts(settings))
        with engine.begin() as conn:
            store.append(conn, newcomers(5, start=6))  # while the file is being written
    finally:
        runner.join()

    done = job_row(engine, job.job_id)
    assert done.state == "completed"
    data = finished_file(settings, job)
    assert hashlib.sha256(data).hexdigest() == done.file_sha256
    assert len(data) == done.file_size
    assert (gzip.decompress(data) if compression == "gzip" else data) == direct
    assert done.rows_written == done.estimated_records == job.estimated_records
    assert parts(settings) == []
    assert event_count(engine, "audit.job.complete", job.job_id) == 1


def test_gzip_files_are_deterministic(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 300)
    first, _ = enqueue(engine, settings, "csv", "gzip")
    Worker(engine, settings, timing=FAST).run_until_idle()
    with engine.connect() as conn:
        row = conn.execute(select(J).where(J.c.job_id == first.job_id)).one()
        plan = jobs.ClaimedJob.from_row(row).plan()
    second = jobs.enqueue(engine, plan, ANA, settings, compression="gzip")
    Worker(engine, settings, timing=FAST).run_until_idle()
    assert finished_file(settings, first) == finished_file(settings, second)


def test_expired_job_file_is_gone_and_job_says_so(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 200)
    job, _ = enqueue(engine, settings)
    Worker(engine, settings, timing=FAST).run_until_idle()
    with engine.connect() as conn:
        done = jobs.get_for(conn, job.job_id, ANA)
    assert done is not None and done.state == "completed" and done.expires_at is not None
    assert done.expires_at - done.finished_at == timedelta(hours=settings.export_ttl_hours)
    path = jobs.file_path(settings, done)
    assert path.exists() and not jobs.is_expired(done)

    assert sweep_expired(engine, settings, now=done.expires_at - timedelta(seconds=1)) == []
    assert path.exists()
    assert jobs.is_expired(done, now=done.expires_at)  # 410 even before the sweep runs
    assert sweep_expired(engine, settings, now=done.expires_at) == [job.job_id]
    assert not path.exists()
    with engine.connect() as conn:
        gone = jobs.get_for(conn, job.job_id, ANA)
    assert gone is not None and gone.state == "expired" and jobs.is_expired(gone)
    assert documents.job_document(gone)["status"]["state"] == "expired"
    assert sweep_expired(engine, settings, now=done.expires_at + timedelta(days=1)) == []


def test_each_job_event_writes_exactly_one_audit_record(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 200)
    job, _ = enqueue(engine, settings)
    Worker(engine, settings, timing=FAST).run_until_idle()
    sweep_expired(engine, settings, now=datetime.now(UTC) + timedelta(days=1))
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                AuditRecord.action,
                AuditRecord.user,
                AuditRecord.role,
                AuditRecord.resource_type,
                AuditRecord.namespace,
                AuditRecord.source_ip,
            )
            .where(AuditRecord.resource == job.job_id)
            .order_by(AuditRecord.seq)
        ).all()
    who = (ANA.email, ANA.role, "ExportJob", settings.self_namespace, ANA.source_ip)
    assert [tuple(r) for r in rows] == [
        ("audit.export.queue", *who),
        ("audit.job.complete", *who),
        ("audit.job.expire", *who),
    ]


def test_cancelled_job_never_runs(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 200)
    cancelled, _ = enqueue(engine, settings)
    kept, _ = enqueue(engine, settings)
    jobs.cancel(engine, cancelled.job_id, ANA, settings)
    assert Worker(engine, settings, timing=FAST).run_until_idle() == [kept.job_id]
    row = job_row(engine, cancelled.job_id)
    assert (row.state, row.attempts, row.started_at, row.file_name) == ("cancelled", 0, None, None)
    assert not jobs.file_path(settings, cancelled).exists()
    assert event_count(engine, "audit.job.complete", cancelled.job_id) == 0


BOSS = Principal("boss@empresa.com", "admin", None, "10.0.0.1")


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (("auditor", "billing"), "is no longer granted namespace payments"),
        (("auditor", "payments"), None),  # lost billing, which this job does not read
        (("viewer", "payments,billing"), "is now a viewer, who cannot export"),
        (None, "was removed from the portal after queueing this export"),
    ],
)
def test_a_job_runs_with_its_requesters_access_at_run_time(
    engine: Engine, settings: Settings, change: tuple[str, str] | None, refusal: str | None
) -> None:
    from audit_core import access

    add_demo(engine, 300)
    email = "aldo@empresa.com"
    access.upsert_user(engine, email, "auditor", "payments,billing", BOSS)
    aldo = Principal(email, "auditor", frozenset({"payments", "billing"}), "10.0.0.9")
    with engine.connect() as conn:
        plan = service.plan_export(conn, aldo, AuditFilter.parse(namespace="payments"), "csv")
    job = jobs.enqueue(engine, plan, aldo, settings)
    if change is None:
        access.remove_user(engine, email, BOSS)
    else:
        access.upsert_user(engine, email, change[0], change[1], BOSS)
    Worker(engine, settings, timing=FAST).run_until_idle()
    row = job_row(engine, job.job_id)
    if refusal is None:
        assert row.state == "completed" and jobs.file_path(settings, job).exists()
        return
    assert (row.state, row.attempts, row.file_name) == ("failed", 1, None)
    assert row.last_error == f"refused: {email} {refusal}"
    assert event_count(engine, "audit.job.fail", job.job_id) == 1
    assert not jobs.file_path(settings, job).exists()


def test_a_claimed_job_can_no_longer_be_cancelled(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 200)
    job, _ = enqueue(engine, settings)
    worker = Worker(engine, settings, timing=FAST)
    row = worker.claim()
    assert row is not None and row.job_id == job.job_id
    with pytest.raises(jobs.JobNotCancellableError, match="is processing"):
        jobs.cancel(engine, job.job_id, ANA, settings)
    worker.run(row)
    assert job_row(engine, job.job_id).state == "completed"


def unwritable(settings: Settings, tmp_path: Path) -> Settings:
    """Settings whose export folder cannot be made: every attempt fails."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the export folder should be")
    return replace(settings, export_dir=blocker / "exports")


def test_failing_job_is_retried_then_failed_with_a_readable_error(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 200)
    settings = unwritable(settings, tmp_path)
    job, _ = enqueue(engine, settings)
    assert Worker(engine, settings, timing=FAST).run_until_idle() == [job.job_id] * 3
    row = job_row(engine, job.job_id)
    assert (row.state, row.attempts) == ("failed", 3)
    # Plain words, and no server path: that stays in the server log.
    assert row.last_error == (
        "failed after 3 attempts: the export file could not be written (Not a directory)"
    )
    assert event_count(engine, "audit.job.fail", job.job_id) == 1
    with engine.connect() as conn:
        info = jobs.get_for(conn, job.job_id, ANA)
    assert info is not None
    assert documents.job_document(info)["status"]["error"] == row.last_error


def test_a_failed_attempt_waits_before_the_next(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Retries back off (retry_seconds, doubled each time) instead of running at once."""
    add_demo(engine, 200)
    broken = unwritable(settings, tmp_path)
    job, _ = enqueue(engine, broken)
    worker = Worker(engine, broken, timing=replace(FAST, retry_seconds=60))
    before = datetime.now(UTC)
    assert worker.run_until_idle() == [job.job_id]  # one attempt, then it waits
    row = job_row(engine, job.job_id)
    assert (row.state, row.attempts) == ("queued", 1)
    assert row.last_error == (
        "the export file could not be written (Not a directory); the portal will retry"
    )
    with engine.connect() as conn:
        info = jobs.get_for(conn, job.job_id, ANA)
        retry = jobs.retry_at(conn, job.job_id)
    assert info is not None and retry is not None
    shown = documents.job_document(info, retry_at=retry)["status"]
    assert (shown["state"], shown["error"], shown["attempts"]) == ("queued", row.last_error, 1)
    assert shown["retryAt"] == format_instant(retry)
    retry_at = row.lease_expires_at.replace(tzinfo=UTC)
    assert before + timedelta(seconds=59) <= retry_at <= datetime.now(UTC) + timedelta(seconds=61)
    # Once the retry time has come (here: moved back) it runs again, and waits twice as long.
    with engine.begin() as conn:
        conn.execute(J.update().where(J.c.job_id == job.job_id).values(lease_expires_at=before))
    assert worker.run_until_idle() == [job.job_id]
    row = job_row(engine, job.job_id)
    assert row.attempts == 2
    assert row.lease_expires_at.replace(tzinfo=UTC) >= before + timedelta(seconds=119)


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (PermissionError(13, "Permission denied", "/srv/exports/.x.part"),
         "the export file could not be written (Permission denied)"),
        (OSError(28, "No space left on device", "/srv/exports/.x.part"),
         "the export file could not be written (No space left on device)"),
        (OSError("no errno"), "the export file could not be written (OSError)"),
        (RuntimeError("connection to /var/run/postgresql failed"),
         "the export file could not be made (RuntimeError; see the server log)"),
        (jobs.JobNotFoundError("export-20260101-001"), "no export job export-20260101-001"),
    ],
)  # fmt: skip
def test_an_attempts_error_names_the_cause_but_no_server_path(exc: Exception, said: str) -> None:
    assert attempt_error(exc) == said
    assert "/srv" not in attempt_error(exc) and "/var" not in attempt_error(exc)


def test_job_whose_workers_keep_dying_fails_after_three_attempts(
    engine: Engine, settings: Settings
) -> None:
    add_demo(engine, 200)
    job, _ = enqueue(engine, settings)
    dying = Worker(engine, settings, timing=replace(FAST, lease_seconds=0.05))
    for attempt in (1, 2, 3):
        row = dying.claim()  # claims, then "dies": never runs it, never renews
        assert row is not None and row.attempts == attempt
        time.sleep(0.1)
    assert dying.claim() is None
    row = job_row(engine, job.job_id)
    assert row.state == "failed"
    assert "gave up after 3 attempts" in row.last_error and "lease expired" in row.last_error
    assert event_count(engine, "audit.job.fail", job.job_id) == 1


def test_worker_that_lost_its_lease_never_publishes(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 200)
    job, direct = enqueue(engine, settings)
    slow = Worker(engine, settings, timing=replace(FAST, lease_seconds=0.05), name="slow")
    stalled = slow.claim()
    time.sleep(0.1)
    rescuer = Worker(engine, settings, timing=FAST, name="rescuer")
    assert rescuer.run_until_idle() == [job.job_id]
    slow.run(stalled)  # wakes up and finishes its copy: must not touch the job
    row = job_row(engine, job.job_id)
    assert (row.state, row.lease_owner, row.attempts) == ("completed", "rescuer", 2)
    assert finished_file(settings, job) == direct
    assert event_count(engine, "audit.job.complete", job.job_id) == 1
    assert parts(settings) == []


def test_a_worker_held_up_past_its_lease_leaves_the_new_holders_upload_alone(
    engine: Engine, settings: Settings
) -> None:
    """open_writer clears what earlier attempts left: only the lease holder may call it."""
    add_demo(engine, 200)
    job, direct = enqueue(engine, settings)
    slow = Worker(engine, settings, timing=replace(FAST, lease_seconds=0.05), name="slow")
    stalled = slow.claim()
    assert stalled is not None
    time.sleep(0.1)
    rescuer = Worker(engine, settings, timing=FAST, name="rescuer")
    taken = rescuer.claim()
    assert taken is not None
    upload = rescuer.storage.open_writer(taken.file_name)  # the holder's file, half written
    upload.write(b"half")
    slow.run(stalled)  # wakes up: must not clear the holder's upload
    assert len(parts(settings)) == 1
    upload.discard()
    rescuer.run(taken)
    row = job_row(engine, job.job_id)
    assert (row.state, row.lease_owner) == ("completed", "rescuer")
    assert finished_file(settings, job) == direct


def test_in_process_worker_thread_runs_jobs_and_stops_cleanly(
    engine: Engine, settings: Settings
) -> None:
    add_demo(engine, 200)
    handle = start_in_process(Context(settings, engine, demo=False))
    # Other in-process workers may run in this test process (the API tests' app), so
    # check this handle's own threads rather than every thread with the name.
    try:
        assert [t.name for t in handle.threads] == [THREAD_NAME]
        assert all(t.is_alive() for t in handle.threads)
        job, direct = enqueue(engine, settings, "jsonl")
        wait_for("the job to complete", lambda: job_row(engine, job.job_id).state == "completed")
    finally:
        handle.stop()
    assert not any(t.is_alive() for t in handle.threads)
    assert finished_file(settings, job) == direct


def test_audit_portal_workers_sets_how_many_threads_a_portal_runs(
    engine: Engine, settings: Settings
) -> None:
    """0 for a portal host that only serves (workers run elsewhere): its jobs stay queued."""
    assert Settings.from_env({"AUDIT_PORTAL_WORKERS": "0"}).portal_workers == 0
    assert Settings.from_env({}).portal_workers == 1
    with pytest.raises(ConfigError, match="AUDIT_PORTAL_WORKERS must be at least 0"):
        Settings.from_env({"AUDIT_PORTAL_WORKERS": "-1"})
    add_demo(engine, 200)
    serving_only = start_in_process(Context(replace(settings, portal_workers=0), engine, False))
    try:
        assert serving_only.threads == []
        job, _ = enqueue(engine, settings, "jsonl")
        time.sleep(0.5)
        assert job_row(engine, job.job_id).state == "queued"
    finally:
        serving_only.stop()
    two = start_in_process(Context(replace(settings, portal_workers=2), engine, False))
    try:
        assert [t.name for t in two.threads] == [f"{THREAD_NAME}-1", f"{THREAD_NAME}-2"]
        wait_for("the job to complete", lambda: job_row(engine, job.job_id).state == "completed")
    finally:
        two.stop()


# -- real worker processes ----------------------------------------------------------------


@contextmanager
def worker_process(
    env: dict[str, str], log: Path, *extra: str, **timing: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python -m audit_core worker` and make sure it is gone afterwards."""
    quick = {"AUDIT_WORKER_POLL_SECONDS": "0.1", "AUDIT_WORKER_HEARTBEAT_SECONDS": "0.3"}
    env = {**env, **quick, **timing}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "audit_core", "worker", *extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for(
            f"{log.name} to start",
            lambda: b"started" in log.read_bytes() or proc.poll() is not None,
        )
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_worker_killed_mid_job_is_redone_once_by_another(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add_demo(engine, 20_000)
    job, direct = enqueue(engine, settings, "csv")
    with worker_process(
        env,
        tmp_path / "first.log",
        AUDIT_WORKER_LEASE_SECONDS="2",
        AUDIT_WORKER_BATCH_DELAY_MS="400",
    ) as first:
        wait_for("a partly written file", lambda: any(p.stat().st_size for p in parts(settings)))
        first.send_signal(signal.SIGKILL)
        first.wait()
    row = job_row(engine, job.job_id)
    assert (row.state, row.attempts) == ("processing", 1)
    assert not jobs.file_path(settings, job).exists()  # nothing half-written is published
    assert parts(settings)  # the dead worker's temporary file is still there

    with worker_process(env, tmp_path / "second.log") as second:
        wait_for("the job to complete", lambda: job_row(engine, job.job_id).state == "completed")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    row = job_row(engine, job.job_id)
    assert row.attempts == 2
    data = finished_file(settings, job)
    assert hashlib.sha256(data).hexdigest() == row.file_sha256 and len(data) == row.file_size
    assert data == direct
    assert parts(settings) == []
    assert event_count(engine, "audit.job.complete", job.job_id) == 1


def test_sigterm_releases_the_job_in_progress_and_exits_zero(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add_demo(engine, 12_000)
    job, direct = enqueue(engine, settings, "jsonl")
    with worker_process(env, tmp_path / "w.log", AUDIT_WORKER_BATCH_DELAY_MS="500") as proc:
        wait_for("the worker to start writing", lambda: parts(settings))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    row = job_row(engine, job.job_id)
    assert (row.state, row.attempts, row.lease_owner) == ("queued", 0, None)
    assert parts(settings) == [] and not jobs.file_path(settings, job).exists()
    assert Worker(engine, settings, timing=FAST).run_until_idle() == [job.job_id]
    assert finished_file(settings, job) == direct


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_worker_processes_run_twenty_jobs_exactly_once(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add_demo(engine, 300)
    settings = replace(settings, max_queued_jobs=20)
    timing = {"AUDIT_WORKER_BATCH_DELAY_MS": "300"}
    with (
        worker_process(env, tmp_path / "a.log", **timing),
        worker_process(env, tmp_path / "b.log", "--concurrency", "2", **timing),
    ):
        pairs = [enqueue(engine, settings, fmt) for fmt in ("csv", "json", "jsonl", "csv") * 5]
        with engine.connect() as conn:
            wait_for(
                "every job to complete",
                lambda: (
                    conn.execute(select(func.count()).where(J.c.state == "completed")).scalar()
                    == 20
                ),
            )
    with engine.connect() as conn:
        rows = conn.execute(select(J.c.job_id, J.c.attempts, J.c.lease_owner)).all()
    queued = [job for job, _ in pairs]
    assert sorted(r.job_id for r in rows) == sorted(j.job_id for j in queued)
    assert {r.attempts for r in rows} == {1}
    assert len({r.lease_owner.rsplit("/", 1)[0] for r in rows}) == 2  # both took part
    for job, direct in pairs:
        assert event_count(engine, "audit.job.complete", job.job_id) == 1
        assert finished_file(settings, job) == direct
    assert event_count(engine, "audit.job.complete") == 20


def test_worker_command_refuses_a_concurrency_below_one(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from audit_core.cli import main

    for key in ("AUDIT_DATABASE_URL", "AUDIT_EXPORT_DIR", "AUDIT_SECRET_KEY"):
        monkeypatch.setenv(key, env[key])
    assert main(["worker", "--concurrency", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --concurrency must be at least 1"


def test_timing_reads_the_test_knobs_from_the_environment() -> None:
    timing = Timing.from_env(
        {
            "AUDIT_WORKER_LEASE_SECONDS": "2",
            "AUDIT_WORKER_BATCH_DELAY_MS": "250",
            "AUDIT_WORKER_RETRY_SECONDS": "5",
        }
    )
    assert (timing.lease_seconds, timing.batch_delay, timing.retry_seconds) == (2.0, 0.25, 5.0)
    assert timing.poll_seconds == Timing().poll_seconds


# -- waking on enqueue --------------------------------------------------------------------

SLOW_POLL = Timing(lease_seconds=30, heartbeat_seconds=0.2, poll_seconds=600, retry_seconds=0)


def test_an_idle_worker_starts_a_queued_job_without_waiting_for_its_poll(
    engine: Engine, settings: Settings
) -> None:
    add_demo(engine, 200)
    handle = WorkerThreads(engine, settings, timing=SLOW_POLL).start()
    try:
        time.sleep(0.3)  # the worker has looked, found nothing, and waits (for 600 s)
        job, direct = enqueue(engine, settings, "csv")
        # Far inside the poll: only the ring on enqueue can have started it.
        wait_for(
            "the job to complete", lambda: job_row(engine, job.job_id).state == "completed", 60
        )
    finally:
        handle.stop()
    assert not any(t.is_alive() for t in handle.threads)
    assert finished_file(settings, job) == direct


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_worker_process_hears_of_a_job_queued_elsewhere(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add_demo(engine, 200)
    with worker_process(env, tmp_path / "w.log", AUDIT_WORKER_POLL_SECONDS="600"):
        time.sleep(1.0)  # it has looked once and listens
        job, direct = enqueue(engine, settings, "jsonl")
        wait_for(
            "the job to complete", lambda: job_row(engine, job.job_id).state == "completed", 60
        )
    assert finished_file(settings, job) == direct


def info(**changes: Any) -> jobs.JobInfo:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    base = jobs.JobInfo(
        job_id="export-20260301-001",
        state="queued",
        requested_by=ANA.email,
        format="csv",
        compression="none",
        estimated_records=3_000_000,
        rows_written=0,
        file_size=None,
        file_sha256=None,
        created_at=now,
        started_at=None,
        finished_at=None,
        expires_at=None,
        last_error=None,
        filter_text="",
        attempts=0,
    )
    return replace(base, **changes)


def test_retry_after_follows_the_jobs_own_pace_once_it_has_one() -> None:
    now = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    queued = info()
    assert jobs.seconds_left(queued, now) == 3_000_000 / jobs.ASSUMED_ROWS_PER_SECOND
    assert jobs.retry_after(queued, now) == 10
    # Started 4 s ago and 2M rows written: 1M left at its 500k rows/s is 2 s.
    started = datetime(2026, 3, 1, 12, 0, 6, tzinfo=UTC)
    running = info(state="processing", started_at=started, rows_written=2_000_000)
    assert jobs.seconds_left(running, now) == pytest.approx(2.0)
    assert jobs.retry_after(running, now) == 2
    # 1M written in those 4 s: 2M left at 250k rows/s is 8 s, but a job's first seconds
    # are its slowest, and at the expected pace it is done in 10 - 4 = 6 s: the sooner.
    slow_start = replace(running, rows_written=1_000_000)
    assert jobs.seconds_left(slow_start, now) == pytest.approx(6.0)
    # Once the expected time has passed, its own pace it is: 1M in 12 s, 2M left is 24 s.
    late = replace(slow_start, started_at=started - timedelta(seconds=8))
    assert jobs.seconds_left(late, now) == pytest.approx(24.0)
    assert jobs.retry_after(late, now) == 24
    # Waiting 30 s to retry a failed attempt: that wait comes first.
    retry = datetime(2026, 3, 1, 12, 0, 40, tzinfo=UTC)
    assert jobs.retry_after(queued, now, retry_at=retry) == 40
    # Tiny jobs are asked about again after a second; a stalled estimate never over a minute.
    assert jobs.retry_after(info(estimated_records=10), now) == 1
    assert jobs.retry_after(info(estimated_records=10**9), now) == jobs.MAX_RETRY_AFTER


def test_a_running_job_with_no_rows_reported_yet_counts_the_time_it_has_run() -> None:
    """Before its first lease renewal a job reports no rows: its time left still shrinks,
    so a poller who comes back after Retry-After is held for the file (the long-poll)."""
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    running = info(format="json", estimated_records=1_000_000, state="processing")
    running = replace(running, started_at=start)
    pace = jobs.PACE[("postgresql", "json")]
    at = start + timedelta(seconds=2)
    assert jobs.seconds_left(running, at, engine="postgresql") == pytest.approx(
        1_000_000 / pace - 2
    )
    late = start + timedelta(seconds=60)
    assert jobs.seconds_left(running, late, engine="postgresql") == 0.0
    assert jobs.retry_after(running, late, engine="postgresql") == 1


def test_retry_after_uses_the_measured_pace_of_the_engine_and_format() -> None:
    now = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    csv_job = info(format="csv", estimated_records=1_400_000)
    pg = jobs.PACE[("postgresql", "csv")]
    assert jobs.seconds_left(csv_job, now, engine="postgresql") == 1_400_000 / pg
    assert jobs.retry_after(csv_job, now, engine="postgresql") == int(1_400_000 / pg)
    # An engine or format it has no figure for falls back to the one assumed pace.
    assert jobs.seconds_left(csv_job, now, engine="oracle") == (
        1_400_000 / jobs.ASSUMED_ROWS_PER_SECOND
    )


def test_retry_after_learns_the_pace_of_this_installations_own_jobs(engine: Engine) -> None:
    """PACE was measured on one machine: once large jobs have finished here, their median
    pace (per format) is what a poller's Retry-After is counted at."""
    with engine.connect() as conn:
        assert jobs.observed_pace(conn, "json") is None  # nothing finished yet: PACE it is
    finished_job(engine, 1, "json", 1_000_000, 5.0)  # 200k rows/s
    finished_job(engine, 2, "json", 1_000_000, 4.0, state="expired")  # 250k rows/s
    finished_job(engine, 3, "json", 2_000_000, 10.0)  # 200k rows/s
    finished_job(engine, 4, "json", 50_000, 0.01)  # too small to tell a pace
    finished_job(engine, 5, "csv", 1_000_000, 1.0)  # another format
    finished_job(engine, 6, "json", 1_000_000, 1.0, state="failed")  # not a finished file
    with engine.connect() as conn:
        pace = jobs.observed_pace(conn, "json")
        assert jobs.observed_pace(conn, "csv") == pytest.approx(1_000_000)
    assert pace == pytest.approx(200_000)
    queued = info(format="json", estimated_records=1_000_000)
    now = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)
    assert jobs.seconds_left(queued, now, engine="postgresql", pace=pace) == pytest.approx(5.0)
    assert jobs.retry_after(queued, now, engine="postgresql", pace=pace) == 5
    assert jobs.retry_after(queued, now, engine="postgresql") == int(
        1_000_000 / jobs.PACE[("postgresql", "json")]
    )
