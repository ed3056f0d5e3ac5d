"""The JSON bodies and URLs the API hands out: Status errors, job documents, file names."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.responses import JSONResponse

from ..formats import filename
from ..jobs import MAX_ATTEMPTS, JobInfo, JobState
from ..record import format_instant

PREFIX = "/api/v1"
JOB_PATH = "/audit/export/jobs/{job_id}"
DOWNLOAD_PATH = "/audit/export/download/{job_id}"
DOWNLOAD_URL = PREFIX + DOWNLOAD_PATH
MANIFEST_PATH = "/audit/export/manifests/{export_id}"
JOB_URL = PREFIX + JOB_PATH
ALLOWED_METHODS = ("GET", "HEAD")
ALLOW = ", ".join(ALLOWED_METHODS)  # the Allow header of a 405
# On every API answer. The API sends data, never a page: nothing in it may run, load,
# be framed or be sniffed into another type.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """The Status body of every error (DESIGN.md)."""
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def method_not_allowed_message(method: str) -> str:
    return f"{method[:20]} is not allowed here; this API answers GET and HEAD only"


def error_response(
    code: int, reason: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_body(code, reason, message), code, headers=headers)


def job_document(job: JobInfo, *, retry_at: datetime | None = None) -> dict[str, Any]:
    """The seed's AuditExportJob body, with progress fields after the seed's own.

    A job queued again after a failed attempt says so at once: `error` is that attempt's
    error and `retryAt` (pass jobs.retry_at) when the next attempt may start.
    """
    status: dict[str, Any] = {
        "state": job.state,
        "estimatedRecords": job.estimated_records,
        "downloadUrl": DOWNLOAD_URL.format(job_id=job.job_id),
        "expiresAt": expires_text(job),
        "rowsWritten": job.rows_written,
        "attempts": job.attempts,
        "maxAttempts": MAX_ATTEMPTS,
    }
    if job.state in (JobState.COMPLETED, JobState.EXPIRED):
        status["fileSize"] = job.file_size
        status["sha256"] = job.file_sha256
    elif job.last_error:  # failed for good, or the last attempt failed and it will retry
        status["error"] = job.last_error
    if retry_at is not None and job.state == JobState.QUEUED:
        status["retryAt"] = format_instant(retry_at)
    return {
        "apiVersion": "v1",
        "kind": "AuditExportJob",
        "metadata": {"jobId": job.job_id},
        "status": status,
    }


def expires_text(job: JobInfo) -> str | None:
    """The job's `expiresAt`: the stored instant, written like every instant of the API.

    Until the job completes that is its queue time plus the TTL, the earliest its file can
    expire (the file is kept the TTL after completion), so polls of an unfinished job all
    read the same value; completion sets the real expiry, once. None when no file will
    ever exist (a failed or cancelled job).
    """
    if job.expires_at is None or job.state in (JobState.FAILED, JobState.CANCELLED):
        return None
    return format_instant(job.expires_at)


def download_name(job: JobInfo) -> str:
    """The attachment name of a job's file: the seed's name with the job's number of that
    day, audit-export-YYYYMMDD-NNN.<ext>[.gz] (export-YYYYMMDD-NNN), so two jobs' files
    never share a name."""
    number = job.job_id.rsplit("-", 1)[-1]
    return filename(job.format, job.created_at, job.compression, tag=number)
