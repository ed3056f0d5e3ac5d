"""Background export jobs: enqueue, look up, list, cancel, describe; where their files live.

A job is an export plan written down: the scoped filter (end resolved), the format, the
snapshot bound and the instant it was planned. Any worker rebuilds exactly the same bytes
from it (`plan`), whenever it runs. The workers themselves live in `worker.py`.

    decide: service.is_immediate(plan, settings)
    enqueue(engine, plan, who, settings, *, compression="none") -> JobInfo
    get_for(conn, job_id, who) -> JobInfo | None      # None when unknown or not visible
    list_for(conn, who, *, limit=100, state=None, requested_by=None) -> list[JobInfo]
    cancel(engine, job_id, who, settings) -> JobInfo
    document(job, now=None) -> dict                    # the seed's AuditExportJob body
    file_path(settings, job) -> Path
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, Row, Table, func, insert, select, update

from . import access, export, store
from .access import AccessDenied, Principal
from .config import Settings
from .filters import AuditFilter
from .formats import EXTENSIONS, filename
from .models import ExportJob
from .record import format_instant

J = cast(Table, ExportJob.__table__)
STATES = ("queued", "processing", "completed", "failed", "cancelled", "expired")
ACTIVE = ("queued", "processing")
COMPRESSIONS = ("none", "gzip")
JOB_ID_RE = re.compile(r"^export-\d{8}-\d{3,}$")
DOWNLOAD_URL = "/api/v1/audit/export/download/{job_id}"


class JobError(Exception):
    """A job request that cannot be done; the message is fit to show the person asking."""


class TooManyJobs(JobError):  # noqa: N818 - the name callers code against
    """The principal already has as many queued or running jobs as allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"you already have {limit} export jobs queued or running (the limit); "
            "wait for one to finish or cancel one"
        )
        self.limit = limit


class JobNotFound(JobError, LookupError):  # noqa: N818 - reads like TooManyJobs
    """No such job, or not one the principal may see (the two look the same on purpose)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no export job {job_id}")
        self.job_id = job_id


class JobNotCancellable(JobError):  # noqa: N818 - reads like TooManyJobs
    """Only a queued job can be cancelled."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"export job {job_id} is {state}; only a queued job can be cancelled")
        self.job_id = job_id
        self.state = state


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
    if not who.can_export:
        raise AccessDenied("your role may view records but not export them")
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
            raise TooManyJobs(settings.max_queued_jobs)
        job_id = store.next_id(conn, f"export-{created:%Y%m%d}")
        scope = None if who.namespaces is None else sorted(who.namespaces)
        conn.execute(
            insert(J).values(
                job_id=job_id,
                state="queued",
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
                # the job was queued under (see document()).
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
        row = conn.execute(select(*_INFO_COLUMNS).where(J.c.job_id == job_id)).one()
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
        stmt = update(J).where(J.c.job_id == job_id, J.c.state == "queued")
        if not who.is_admin:
            stmt = stmt.where(_owner_clause(who))
        now = datetime.now(UTC)
        # Conditional on 'queued', so a worker's claim and a cancel cannot both win.
        done = conn.execute(stmt.values(state="cancelled", finished_at=now)).rowcount
        if not done:
            job = get_for(conn, job_id, who)
            if job is None:
                raise JobNotFound(job_id)
            raise JobNotCancellable(job_id, job.state)
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


def document(job: JobInfo, now: datetime | None = None) -> dict[str, Any]:
    """The seed's AuditExportJob body, with progress fields after the seed's own."""
    status: dict[str, Any] = {
        "state": job.state,
        "estimatedRecords": job.estimated_records,
        "downloadUrl": DOWNLOAD_URL.format(job_id=job.job_id),
        "expiresAt": _expires_text(job, now),
        "rowsWritten": job.rows_written,
    }
    if job.state in ("completed", "expired"):
        status["fileSize"] = job.file_size
        status["sha256"] = job.file_sha256
    if job.state == "failed" and job.last_error:
        status["error"] = job.last_error
    return {
        "apiVersion": "v1",
        "kind": "AuditExportJob",
        "metadata": {"jobId": job.job_id},
        "status": status,
    }


def _expires_text(job: JobInfo, now: datetime | None) -> str | None:
    if job.expires_at is None or job.state in ("failed", "cancelled"):
        return None  # no file will ever exist
    if job.state in ("completed", "expired"):
        return format_instant(job.expires_at)
    # Not finished yet: the file will live at least TTL from now. The stored estimate is
    # created_at + TTL, so the job carries the TTL it was queued under.
    ttl = job.expires_at - job.created_at
    now = now or datetime.now(UTC)
    return format_instant(max(job.expires_at, now + ttl).replace(microsecond=0))


def file_path(settings: Settings, job: JobInfo) -> Path:
    """Where the job's finished file lives; the name comes from the job id alone."""
    return settings.export_dir / file_name(job.job_id, job.format, job.compression)


def file_name(job_id: str, fmt: str, compression: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    name = f"{job_id}.{EXTENSIONS[fmt]}"
    return name + ".gz" if compression == "gzip" else name


def download_name(job: JobInfo) -> str:
    """The attachment name offered to the browser: audit-export-YYYYMMDD.<ext>[.gz]."""
    return filename(job.format, job.created_at, job.compression)


def is_expired(job: JobInfo, now: datetime | None = None) -> bool:
    """True when the file is gone or past its expiry (even before the sweep ran)."""
    if job.state == "expired":
        return True
    now = now or datetime.now(UTC)
    return job.state == "completed" and job.expires_at is not None and job.expires_at <= now


def plan(row: Any) -> export.ExportPlan:
    """Rebuild a job's export plan from its stored row: same filter, snapshot and instant."""
    return export.ExportPlan(
        AuditFilter.from_json(row.filter_json),
        row.format,
        int(row.snapshot_seq),
        int(row.estimated_records),
        row.created_at,
    )
