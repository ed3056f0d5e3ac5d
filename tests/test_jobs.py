"""Export jobs: enqueue, visibility, the per-user cap, cancel, the AuditExportJob body."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select

from audit_core import jobs, service
from audit_core.access import AccessDeniedError, Principal
from audit_core.config import Settings
from audit_core.filters import AuditFilter
from audit_core.http import documents
from audit_core.models import AuditRecord, ExportJob

from .conftest import add_demo

ANA = Principal("ana@empresa.com", "auditor", frozenset({"production", "staging"}), "10.0.0.5")
BRUNO = Principal("bruno@empresa.com", "auditor", frozenset({"production"}), "10.0.0.6")
ADMIN = Principal("boss@empresa.com", "admin", None, "10.0.0.1")
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def events(engine: Engine, action: str, resource: str) -> list[AuditRecord]:
    """The portal's own audit records for one action on one resource."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(AuditRecord.__table__).where(
                AuditRecord.action == action, AuditRecord.resource == resource
            )
        ).all()
    return list(rows)


def queue(
    engine: Engine, settings: Settings, who: Principal = ANA, fmt: str = "csv", **kw: object
) -> jobs.JobInfo:
    with engine.connect() as conn:
        plan = service.plan_export(conn, who, AuditFilter(), fmt, now=NOW)
    return jobs.enqueue(engine, plan, who, settings, **kw)  # type: ignore[arg-type]


def test_enqueue_stores_the_plan_and_audits_it(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 500)
    with engine.connect() as conn:
        plan = service.plan_export(conn, ANA, AuditFilter.parse(action="user.*"), "json", now=NOW)
    job = jobs.enqueue(engine, plan, ANA, settings, compression="gzip")

    assert job.job_id == "export-20261126-001"
    assert job.state == "queued"
    assert job.requested_by == ANA.email
    assert (job.format, job.compression) == ("json", "gzip")
    assert job.estimated_records == plan.total > 0
    assert job.created_at == NOW
    assert job.attempts == job.rows_written == 0
    assert job.filter_text == plan.filter.describe()
    with engine.connect() as conn:
        row = conn.execute(select(ExportJob.__table__).where(ExportJob.job_id == job.job_id)).one()
    assert row.snapshot_seq == plan.upto_seq
    assert AuditFilter.from_json(row.filter_json) == plan.filter
    assert json.loads(row.scope) == ["production", "staging"]
    assert jobs.ClaimedJob.from_row(row).plan() == plan

    (record,) = events(engine, "audit.export.queue", job.job_id)
    assert (record.user, record.role, record.namespace, record.sourceIP, record.resourceType) == (
        ANA.email,
        "auditor",
        settings.self_namespace,
        ANA.source_ip,
        "ExportJob",
    )


def test_job_ids_count_up_per_day(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 50)
    ids = [queue(engine, settings).job_id for _ in range(3)]
    assert ids == ["export-20261126-001", "export-20261126-002", "export-20261126-003"]


def test_viewer_cannot_enqueue(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 50)
    with engine.connect() as conn:
        plan = service.plan_export(conn, ANA, AuditFilter(), "csv", now=NOW)
    with pytest.raises(AccessDeniedError):
        jobs.enqueue(engine, plan, replace(ANA, role="viewer"), settings)


def test_per_user_cap_counts_queued_and_processing_only(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 50)
    settings = replace(settings, max_queued_jobs=2)
    first = queue(engine, settings)
    queue(engine, settings)
    with pytest.raises(jobs.TooManyJobsError, match="2 export jobs queued or running"):
        queue(engine, settings)
    queue(engine, settings, who=BRUNO)  # the cap is per person
    jobs.cancel(engine, first.job_id, ANA, settings)
    queue(engine, settings)  # a cancelled job frees a place
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(ExportJob.__table__)).scalar()
        queued = conn.execute(
            select(func.count()).where(AuditRecord.action == "audit.export.queue")
        ).scalar()
    assert n == queued == 4  # the refused request stored nothing and audited nothing


def test_owner_and_admin_see_a_job_others_do_not(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 50)
    mine = queue(engine, settings)
    theirs = queue(engine, settings, who=BRUNO)
    with engine.connect() as conn:
        assert jobs.get_for(conn, mine.job_id, ANA) == mine
        assert jobs.get_for(conn, mine.job_id, replace(ANA, email="ANA@empresa.com")) == mine
        assert jobs.get_for(conn, mine.job_id, ADMIN) == mine
        assert jobs.get_for(conn, mine.job_id, BRUNO) is None
        assert jobs.get_for(conn, "export-20261126-999", ADMIN) is None
        assert [j.job_id for j in jobs.list_for(conn, ANA)] == [mine.job_id]
        assert [j.job_id for j in jobs.list_for(conn, ADMIN)] == [theirs.job_id, mine.job_id]
        assert [j.job_id for j in jobs.list_for(conn, ADMIN, requested_by=BRUNO.email)] == [
            theirs.job_id
        ]
        assert jobs.list_for(conn, ANA, requested_by=BRUNO.email) == []
        assert jobs.list_for(conn, ADMIN, state="completed") == []
        assert len(jobs.list_for(conn, ADMIN, limit=1)) == 1


@pytest.mark.parametrize("canceller", [ANA, ADMIN], ids=["owner", "admin"])
def test_owner_or_admin_cancels_a_queued_job(
    engine: Engine, settings: Settings, canceller: Principal
) -> None:
    add_demo(engine, 50)
    job = queue(engine, settings)
    done = jobs.cancel(engine, job.job_id, canceller, settings)
    assert done.state == "cancelled" and done.finished_at is not None
    (record,) = events(engine, "audit.job.cancel", job.job_id)
    assert (record.user, record.role) == (canceller.email, canceller.role)


def test_cancel_refuses_strangers_and_finished_jobs(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 50)
    job = queue(engine, settings)
    with pytest.raises(jobs.JobNotFoundError, match=f"no export job {job.job_id}"):
        jobs.cancel(engine, job.job_id, BRUNO, settings)
    with pytest.raises(jobs.JobNotFoundError):
        jobs.cancel(engine, "export-20261126-999", ADMIN, settings)
    jobs.cancel(engine, job.job_id, ANA, settings)
    with pytest.raises(jobs.JobNotCancellableError, match="is cancelled; only a queued job"):
        jobs.cancel(engine, job.job_id, ANA, settings)
    assert len(events(engine, "audit.job.cancel", job.job_id)) == 1


def test_document_is_the_seed_body_with_progress_after(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 50)
    job = queue(engine, settings)
    body = documents.job_document(job)
    assert list(body) == ["apiVersion", "kind", "metadata", "status"]
    assert body["apiVersion"] == "v1" and body["kind"] == "AuditExportJob"
    assert body["metadata"] == {"jobId": job.job_id}
    assert list(body["status"])[:4] == ["state", "estimatedRecords", "downloadUrl", "expiresAt"]
    assert body["status"]["state"] == "queued"
    assert body["status"]["estimatedRecords"] == job.estimated_records
    assert body["status"]["downloadUrl"] == f"/api/v1/audit/export/download/{job.job_id}"
    # Not finished: the queue time plus the TTL, the same on every poll.
    assert body["status"]["expiresAt"] == "2026-11-26T18:00:00Z"
    assert documents.job_document(job)["status"]["expiresAt"] == body["status"]["expiresAt"]
    assert body["status"]["rowsWritten"] == 0

    done = replace(
        job,
        state="completed",
        expires_at=datetime(2026, 11, 26, 19, tzinfo=UTC),
        file_size=10,
        file_sha256="ab" * 32,
    )
    status = documents.job_document(done)["status"]
    assert status["expiresAt"] == "2026-11-26T19:00:00Z"
    assert (status["fileSize"], status["sha256"]) == (10, "ab" * 32)
    failed = replace(job, state="failed", last_error="boom")
    assert documents.job_document(failed)["status"]["error"] == "boom"
    assert documents.job_document(failed)["status"]["expiresAt"] is None


@pytest.mark.parametrize(
    ("fmt", "compression", "name"),
    [
        ("csv", "none", "export-20261126-001.csv"),
        ("csv", "gzip", "export-20261126-001.csv.gz"),
        ("json", "none", "export-20261126-001.json"),
        ("jsonl", "gzip", "export-20261126-001.jsonl.gz"),
    ],
)
def test_file_path_comes_from_the_job_id(
    engine: Engine, settings: Settings, fmt: str, compression: str, name: str
) -> None:
    add_demo(engine, 20)
    job = queue(engine, settings, fmt=fmt, compression=compression)
    assert jobs.file_path(settings, job) == settings.export_dir / name
    # The seed's name plus the job's number that day: two jobs' files never share a name.
    assert documents.download_name(job) == "audit-export-20261126-001." + name.split(".", 1)[1]
    with pytest.raises(ValueError):
        jobs.file_path(settings, replace(job, job_id="../../etc/passwd"))
