r"""Background export jobs: every state a job goes through, and every transition, here.

A job is an export plan written down: the scoped filter (end resolved), the format, the
snapshot bound and the instant it was planned. Any worker rebuilds exactly the same bytes
from it (`ClaimedJob.plan`), whenever it runs. As procrastinate's JobManager does, this
module owns the lifecycle; `worker.py` only loops, writes files and calls it.

    queued --claim--> processing --complete--> completed --expire--> expired
      |  ^               |  |  \--release (stop)--> queued
      |  '--retry_later--'  '--fail--> failed
      '--cancel--> cancelled

Every change after the claim goes through `_transition` with the lease-holder guard
(`_held`): a worker that lost its job (it stalled past the lease) changes nothing.

    enqueue(engine, plan, who, settings, *, compression="none") -> JobInfo
    get_for(conn, job_id, who) -> JobInfo | None      # None when unknown or not visible
    list_for(conn, who, *, limit=100, state=None, requested_by=None) -> list[JobInfo]
    cancel(engine, job_id, who, settings) -> JobInfo
    claim / renew / complete / release / retry_later / fail / give_up / expire_due
    file_path(settings, job) -> Path
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Table,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)

from . import access, export, store, wakeup
from .access import Principal
from .config import Settings
from .errors import ConflictError, NotFoundError, TooManyRequestsError
from .filters import AuditFilter
from .formats import EXTENSIONS
from .models import ExportJob

J = cast(Table, ExportJob.__table__)


class JobState(StrEnum):
    """Where a job stands; stored as the member's value."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


STATES = tuple(s.value for s in JobState)
ACTIVE = (JobState.QUEUED.value, JobState.PROCESSING.value)
COMPRESSIONS = ("none", "gzip")
JOB_ID_PATTERN = r"^export-\d{8}-\d{3,}$"
JOB_ID_RE = re.compile(JOB_ID_PATTERN)
MAX_ATTEMPTS = 3
# The job path's pace, measured (bench/bench_paths.py): a Retry-After before a job has
# shown its own. MAX_RETRY_AFTER keeps a poller from waiting past a stalled estimate.
ASSUMED_ROWS_PER_SECOND = 300_000
# The job's own pace by engine and format, measured at 1M rows (BENCHMARKS.md "Export
# paths": createdAt -> finishedAt), a little under it so a poller is not sent past the end.
# Run of 2026-12-03 (jobs writing on a thread of their own): SQLite csv 578k, json 631k,
# jsonl 697k rows/s; PostgreSQL csv 935k, json 416k, jsonl 418k.
PACE = {
    ("sqlite", "csv"): 520_000,
    ("sqlite", "json"): 560_000,
    ("sqlite", "jsonl"): 620_000,
    ("postgresql", "csv"): 850_000,
    ("postgresql", "json"): 380_000,
    ("postgresql", "jsonl"): 380_000,
}
MAX_RETRY_AFTER = 60
# A job's pace is learnt from this installation's own finished jobs of the format (the last
# PACE_SAMPLE of at least PACE_MIN_ROWS rows: a small job's fixed costs would mislead).
PACE_SAMPLE = 5
PACE_MIN_ROWS = 100_000
TOO_MANY_RETRY_SECONDS = 60  # a queue slot frees when a job finishes: minutes, not seconds


class TooManyJobsError(TooManyRequestsError):
    """The principal already has as many queued or running jobs as allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"you already have {limit} export jobs queued or running (the limit); "
            "wait for one to finish or cancel one",
            retry_after=TOO_MANY_RETRY_SECONDS,
        )
        self.limit = limit


class JobNotFoundError(NotFoundError):
    """No such job, or not one the principal may see (the two look the same on purpose)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no export job {job_id}")
        self.job_id = job_id


class JobNotCancellableError(ConflictError):
    """Only a queued job can be cancelled."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"export job {job_id} is {state}; only a queued job can be cancelled")
        self.job_id = job_id
        self.state = state


class LeaseLostError(ConflictError):
    """Another worker took the job over, or it left the processing state."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the lease on export job {job_id} was lost")
        self.job_id = job_id


@dataclass(frozen=True)
class JobInfo:
    """What a person may know about one job."""

    job_id: str
    state: str
    requested_by: str
    format: str
    compression: str
    estimated_records: int
    rows_written: int
    file_size: int | None
    file_sha256: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    last_error: str | None
    filter_text: str
    attempts: int


_INFO_COLUMNS = [J.c[name] for name in JobInfo.__dataclass_fields__]


def _info(row: Row[Any]) -> JobInfo:
    return JobInfo(**{name: row._mapping[name] for name in JobInfo.__dataclass_fields__})


def _owner_clause(who: Principal) -> Any:
    return func.lower(J.c.requested_by) == who.email.lower()


def enqueue(
    engine: Engine,
    plan: export.ExportPlan,
    who: Principal,
    settings: Settings,
    *,
    compression: str = "none",
) -> JobInfo:
    """Store a planned export as a queued job and audit it; refuse past the per-user cap.

    The plan must already be scoped to `who` (service.plan_export does that).
    """
    access.require_export(who)
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    assert plan.filter.end is not None, "plan the export first: its end must be resolved"
    created = plan.exported_at
    with engine.begin() as conn:
        # The append lock serialises enqueues too, so the cap check cannot race and the
        # job's daily counter is safe to bump.
        store.lock_head(conn)
        active = conn.execute(
            select(func.count()).select_from(J).where(_owner_clause(who), J.c.state.in_(ACTIVE))
        ).scalar_one()
        if active >= settings.max_queued_jobs:
            raise TooManyJobsError(settings.max_queued_jobs)
        job_id = store.next_id(conn, f"export-{created:%Y%m%d}")
        scope = None if who.namespaces is None else sorted(who.namespaces)
        conn.execute(
            insert(J).values(
                job_id=job_id,
                state=JobState.QUEUED.value,
                requested_by=who.email,
                requested_role=who.role,
                scope=json.dumps(scope),
                filter_json=plan.filter.to_json(),
                filter_text=plan.filter.describe(),
                format=plan.fmt,
                compression=compression,
                estimated_records=plan.total,
                snapshot_seq=plan.upto_seq,
                source_ip=who.source_ip,
                created_at=created,
                # Until the job completes this is an estimate; it also carries the TTL
                # the job was queued under (see http.documents).
                expires_at=created + timedelta(hours=settings.export_ttl_hours),
                rows_written=0,
                attempts=0,
            )
        )
        access.record(
            conn,
            settings.self_namespace,
            who,
            action="audit.export.queue",
            resource=job_id,
            resource_type="ExportJob",
        )
        wakeup.announce(conn)  # workers in other processes hear of it at commit
        row = conn.execute(select(*_INFO_COLUMNS).where(J.c.job_id == job_id)).one()
    wakeup.ring(engine)  # committed: this process's idle worker starts it now
    return _info(row)


def get_for(conn: Connection, job_id: str, who: Principal) -> JobInfo | None:
    """The job if it exists and `who` owns it or is an admin; otherwise None."""
    stmt = select(*_INFO_COLUMNS).where(J.c.job_id == job_id)
    if not who.is_admin:
        stmt = stmt.where(_owner_clause(who))
    row = conn.execute(stmt).first()
    return None if row is None else _info(row)


def list_for(
    conn: Connection,
    who: Principal,
    *,
    limit: int = 100,
    state: str | None = None,
    requested_by: str | None = None,
) -> list[JobInfo]:
    """Newest jobs first: the principal's own, or anyone's for an admin."""
    stmt = select(*_INFO_COLUMNS)
    if not who.is_admin:
        stmt = stmt.where(_owner_clause(who))
    if requested_by:
        stmt = stmt.where(func.lower(J.c.requested_by) == requested_by.lower())
    if state:
        stmt = stmt.where(J.c.state == state)
    stmt = stmt.order_by(J.c.created_at.desc(), J.c.job_id.desc()).limit(limit)
    return [_info(r) for r in conn.execute(stmt)]


def cancel(engine: Engine, job_id: str, who: Principal, settings: Settings) -> JobInfo:
    """Cancel a queued job (owner or admin) and audit it; raise JobNotFound/JobNotCancellable."""
    with engine.begin() as conn:
        where = and_(J.c.job_id == job_id, J.c.state == JobState.QUEUED.value)
        if not who.is_admin:
            where = and_(where, _owner_clause(who))
        # Conditional on 'queued', so a worker's claim and a cancel cannot both win.
        if not _transition(conn, where, state=JobState.CANCELLED.value, finished_at=_now()):
            job = get_for(conn, job_id, who)
            if job is None:
                raise JobNotFoundError(job_id)
            raise JobNotCancellableError(job_id, job.state)
        access.record(
            conn,
            settings.self_namespace,
            who,
            action="audit.job.cancel",
            resource=job_id,
            resource_type="ExportJob",
        )
        job = get_for(conn, job_id, who)
    assert job is not None
    return job


def file_path(settings: Settings, job: JobInfo) -> Path:
    """Where the job's finished file lives in the export folder (local storage); the name
    comes from the job id alone. In a bucket the same name is the object's (storage.py)."""
    return settings.export_dir / file_name(job.job_id, job.format, job.compression)


def file_name(job_id: str, fmt: str, compression: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    name = f"{job_id}.{EXTENSIONS[fmt]}"
    return name + ".gz" if compression == "gzip" else name


def seconds_left(
    job: JobInfo,
    now: datetime | None = None,
    *,
    retry_at: datetime | None = None,
    engine: str | None = None,
    pace: float | None = None,
) -> float:
    """How long until an active job's file is ready, as well as can be told now.

    While it runs: its size at the expected pace less the time it has run, or, once it has
    reported rows (lease renewals), the rows left at the pace it has kept so far when that
    is sooner or the expected time has passed. A job's first seconds are its slowest (a
    COPY's sort, say), so its own pace alone would send a poller away past the end; one
    sent back early is held by the download's long-poll or told again. Before it starts:
    its size at the expected pace, plus the time until a retry may start. The expected
    pace is `pace` (observed_pace: this installation's own), else the one measured for
    the engine and format (PACE; ASSUMED_ROWS_PER_SECOND when unknown).
    """
    now = now or datetime.now(UTC)
    left_rows = max(job.estimated_records - job.rows_written, 0)
    started = job.started_at
    if pace is None or pace <= 0:
        pace = PACE.get((engine or "", job.format), ASSUMED_ROWS_PER_SECOND)
    if job.state == JobState.PROCESSING.value and started is not None:
        elapsed = max((now - _aware(started)).total_seconds(), 0.0)
        expected = job.estimated_records / pace - elapsed
        if job.rows_written > 0 and elapsed > 0:
            own = left_rows / (job.rows_written / elapsed)
            return min(own, expected) if expected > 0 else own
        return max(expected, 0.0)
    wait = 0.0
    if retry_at is not None:
        wait = max((_aware(retry_at) - now).total_seconds(), 0.0)
    return wait + left_rows / pace


def observed_pace(conn: Connection, fmt: str) -> float | None:
    """Rows per second of this installation's recent large jobs of the format (their
    median, started -> finished); None before any has finished.

    PACE was measured on one machine; a real one (its disks, its cores, its engine's
    tuning) keeps its own pace, which tells a poller its Retry-After better.
    """
    rows = conn.execute(
        select(J.c.rows_written, J.c.started_at, J.c.finished_at)
        .where(
            J.c.state.in_((JobState.COMPLETED.value, JobState.EXPIRED.value)),
            J.c.format == fmt,
            J.c.rows_written >= PACE_MIN_ROWS,
            J.c.started_at.is_not(None),
            J.c.finished_at.is_not(None),
        )
        .order_by(J.c.finished_at.desc())
        .limit(PACE_SAMPLE)
    ).all()
    paces = [
        r.rows_written / seconds
        for r in rows
        if (seconds := (_aware(r.finished_at) - _aware(r.started_at)).total_seconds()) > 0
    ]
    return statistics.median(paces) if paces else None


def retry_after(
    job: JobInfo,
    now: datetime | None = None,
    *,
    retry_at: datetime | None = None,
    engine: str | None = None,
    pace: float | None = None,
) -> int:
    """The Retry-After to send a poller of an active job: seconds_left in whole seconds.

    Rounded down (at least 1): a poller back a little early for its file is held by the
    download route until the job is done (http.routes LONG_POLL_SECONDS), while one sent
    away for a whole extra second would just wait.
    """
    left = seconds_left(job, now, retry_at=retry_at, engine=engine, pace=pace)
    return max(1, min(math.floor(left + 1e-9), MAX_RETRY_AFTER))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def is_expired(job: JobInfo, now: datetime | None = None) -> bool:
    """True when the file is gone or past its expiry (even before the sweep ran)."""
    if job.state == JobState.EXPIRED.value:
        return True
    now = now or _now()
    return (
        job.state == JobState.COMPLETED.value
        and job.expires_at is not None
        and job.expires_at <= now
    )


def job_filter(conn: Connection, job_id: str) -> AuditFilter | None:
    """The scoped filter a job was queued with (its namespaces: what it reads); None if unknown."""
    text = conn.execute(select(J.c.filter_json).where(J.c.job_id == job_id)).scalar_one_or_none()
    return None if text is None else AuditFilter.from_json(text)


def retry_at(conn: Connection, job_id: str) -> datetime | None:
    """When a job queued again after a failed attempt may run; None unless it waits for that."""
    row = conn.execute(
        select(J.c.state, J.c.last_error, J.c.lease_expires_at).where(J.c.job_id == job_id)
    ).first()
    if row is None or row.state != JobState.QUEUED.value or not row.last_error:
        return None
    return cast(datetime | None, row.lease_expires_at)


# -- the lease lifecycle (workers) -----------------------------------------------------------


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker holds under a lease: what it needs to build and publish the file."""

    job_id: str
    format: str
    compression: str
    filter_json: str
    snapshot_seq: int
    estimated_records: int
    created_at: datetime
    requested_by: str
    requested_role: str
    attempts: int
    lease_owner: str | None

    @classmethod
    def from_row(cls, row: Any) -> ClaimedJob:
        """Read a stored export_jobs row."""
        return cls(
            job_id=str(row.job_id),
            format=str(row.format),
            compression=str(row.compression),
            filter_json=str(row.filter_json),
            snapshot_seq=int(row.snapshot_seq),
            estimated_records=int(row.estimated_records),
            created_at=row.created_at,
            requested_by=str(row.requested_by),
            requested_role=str(row.requested_role),
            attempts=int(row.attempts),
            lease_owner=row.lease_owner,
        )

    @property
    def file_name(self) -> str:
        return file_name(self.job_id, self.format, self.compression)

    def plan(self) -> export.ExportPlan:
        """Rebuild the export plan: same filter, snapshot and instant as when it was queued."""
        return export.ExportPlan(
            AuditFilter.from_json(self.filter_json),
            self.format,
            self.snapshot_seq,
            self.estimated_records,
            self.created_at,
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _transition(conn: Connection, where: ColumnElement[bool], **values: Any) -> bool:
    """Change the jobs matching `where`; True when one did. Every state change comes here."""
    return bool(conn.execute(update(J).where(where).values(**values)).rowcount)


def _held(job: ClaimedJob) -> ColumnElement[bool]:
    """The lease guard: the job is still processing under this worker's lease."""
    return and_(
        J.c.job_id == job.job_id,
        J.c.state == JobState.PROCESSING.value,
        J.c.lease_owner == job.lease_owner,
    )


def _runnable(now: datetime) -> ColumnElement[bool]:
    # A queued job's lease_expires_at, when set, is its retry time; a processing job
    # whose lease ran out lost its worker.
    return or_(
        and_(
            J.c.state == JobState.QUEUED.value,
            or_(J.c.lease_expires_at.is_(None), J.c.lease_expires_at <= now),
        ),
        and_(J.c.state == JobState.PROCESSING.value, J.c.lease_expires_at < now),
    )


def claim(
    engine: Engine, owner: str, lease_seconds: float, settings: Settings
) -> ClaimedJob | None:
    """Take the oldest runnable job under a fresh lease; give up on jobs out of attempts.

    `FOR UPDATE SKIP LOCKED` on PostgreSQL; on SQLite the conditional UPDATE is atomic.
    """
    while True:
        now = _now()
        with engine.begin() as conn:
            runnable = _runnable(now)
            pick = select(J.c.job_id, J.c.attempts).where(runnable)
            pick = pick.order_by(J.c.created_at, J.c.job_id).limit(1)
            if conn.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            found = conn.execute(pick).first()
            if found is None:
                return None
            if found.attempts >= MAX_ATTEMPTS:
                # Its last worker died holding it: that was the final attempt.
                _give_up(conn, settings, found.job_id, runnable)
                continue
            if not _transition(
                conn,
                and_(J.c.job_id == found.job_id, runnable),
                state=JobState.PROCESSING.value,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=J.c.attempts + 1,
                started_at=now,
                rows_written=0,
            ):
                continue  # SQLite: another worker won this one; look again
            return ClaimedJob.from_row(
                conn.execute(select(J).where(J.c.job_id == found.job_id)).one()
            )


def _give_up(conn: Connection, settings: Settings, job_id: str, runnable: Any) -> None:
    error = (
        f"gave up after {MAX_ATTEMPTS} attempts: the worker running it stopped "
        "responding before it finished (lease expired)"
    )
    _fail(conn, settings, job_id, and_(J.c.job_id == job_id, runnable), error)


def renew(engine: Engine, job: ClaimedJob, lease_seconds: float, rows: int) -> None:
    """Extend the lease and report progress; raise LeaseLostError if it is no longer ours."""
    lease = _now() + timedelta(seconds=lease_seconds)
    with engine.begin() as conn:
        if not _transition(conn, _held(job), lease_expires_at=lease, rows_written=rows):
            raise LeaseLostError(job.job_id)


def complete(
    engine: Engine,
    job: ClaimedJob,
    settings: Settings,
    *,
    size: int,
    digest: str,
    rows: int,
    publish: Callable[[], None],
) -> None:
    """Mark the job completed and publish its file while the row is still ours, audited."""
    now = _now()
    expires = now + timedelta(hours=settings.export_ttl_hours)
    with engine.begin() as conn:
        if not _transition(
            conn,
            _held(job),
            state=JobState.COMPLETED.value,
            finished_at=now,
            expires_at=expires,
            rows_written=rows,
            file_name=job.file_name,
            file_size=size,
            file_sha256=digest,
            last_error=None,
            lease_expires_at=None,  # lease_owner stays: who built the file
        ):
            raise LeaseLostError(job.job_id)
        # Published only while the row is locked as ours; if the commit then failed the
        # job would simply run again and write the same bytes.
        publish()
        _log_event(conn, settings, job.job_id, "audit.job.complete")


def release(engine: Engine, job: ClaimedJob) -> None:
    """Hand an interrupted job back to the queue; the interruption is not a failure."""
    with engine.begin() as conn:
        _transition(
            conn,
            _held(job),
            state=JobState.QUEUED.value,
            lease_owner=None,
            lease_expires_at=None,
            started_at=None,
            rows_written=0,
            attempts=J.c.attempts - 1,
        )


def retry_later(engine: Engine, job: ClaimedJob, error: str, wait: timedelta) -> None:
    """Queue the job again, runnable after `wait`, with the attempt's error on show."""
    with engine.begin() as conn:
        _transition(
            conn,
            _held(job),
            state=JobState.QUEUED.value,
            rows_written=0,
            last_error=error,
            lease_owner=None,
            lease_expires_at=_now() + wait,  # when it may run again
        )


def fail(engine: Engine, job: ClaimedJob, settings: Settings, error: str) -> None:
    """Fail the held job for good, with one audit.job.fail record."""
    with engine.begin() as conn:
        _fail(conn, settings, job.job_id, _held(job), error)


def _fail(conn: Connection, settings: Settings, job_id: str, where: Any, error: str) -> None:
    if _transition(
        conn,
        where,
        state=JobState.FAILED.value,
        finished_at=_now(),
        last_error=error,
        lease_owner=None,
        lease_expires_at=None,
    ):
        _log_event(conn, settings, job_id, "audit.job.fail")


def expire_due(
    engine: Engine,
    settings: Settings,
    remove_file: Callable[[str], None],
    now: datetime | None = None,
) -> list[str]:
    """Mark completed jobs past their expiry expired and remove their files (by file name)."""
    now = now or _now()
    with engine.connect() as conn:
        due = conn.execute(
            select(J.c.job_id, J.c.format, J.c.compression)
            .where(J.c.state == JobState.COMPLETED.value, J.c.expires_at <= now)
            .order_by(J.c.expires_at)
        ).all()
    expired = []
    for job_id, fmt, compression in due:
        with engine.begin() as conn:
            where = and_(J.c.job_id == job_id, J.c.state == JobState.COMPLETED.value)
            if not _transition(conn, where, state=JobState.EXPIRED.value):
                continue  # another worker swept it
            remove_file(file_name(job_id, fmt, compression))
            _log_event(conn, settings, job_id, "audit.job.expire")
        expired.append(job_id)
    return expired


def _log_event(conn: Connection, settings: Settings, job_id: str, action: str) -> None:
    """Write a job event as the person who asked for the job."""
    who = conn.execute(
        select(J.c.requested_by, J.c.requested_role, J.c.source_ip).where(J.c.job_id == job_id)
    ).one()
    actor = Principal(who.requested_by, who.requested_role, None, who.source_ip)
    access.record(
        conn,
        settings.self_namespace,
        actor,
        action=action,
        resource=job_id,
        resource_type="ExportJob",
    )
