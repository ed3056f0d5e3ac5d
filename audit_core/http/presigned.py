"""Job downloads from object storage: `302 Found` to a presigned URL, not the bytes.

With AUDIT_EXPORT_STORAGE set the file is an object in the bucket (storage.py), and the
client fetches it from the store itself, so large files never pass through the portal.
download_route makes every check it makes for a local file first (who, the job, its
state, may-still-read, expiry); then `answer` hands out a link that is bound to this one
object and this method, names the file as the local download does, and expires after
storage.LINK_SECONDS. A GET is audited as the download when the link is handed out (the
same record as a local download); HEAD gets the same answer, with a HEAD link, unrecorded.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .. import access, jobs
from ..access import Principal
from ..context import Context
from ..errors import GoneError
from ..formats import CONTENT_TYPES
from ..storage import LINK_SECONDS, open_storage
from .documents import download_name


async def answer(request: Request, ctx: Context, job: jobs.JobInfo, who: Principal) -> Response:
    """302 to a presigned URL of the completed job's object (410 once it is gone)."""
    url = await run_in_threadpool(_link, ctx, job, who, request.method)
    return Response(status_code=302, headers={"Location": url})


def _link(ctx: Context, job: jobs.JobInfo, who: Principal, method: str) -> str:
    """Sign the link and, for a GET, record the download in the same breath."""
    store = open_storage(ctx.settings)
    name = jobs.file_name(job.job_id, job.format, job.compression)
    if not store.exists(name):
        raise GoneError(f"export job {job.job_id} has expired and its file was removed")
    media = "application/gzip" if job.compression == "gzip" else CONTENT_TYPES[job.format]
    url = store.presigned_url(
        name,
        expires_in=LINK_SECONDS,
        method="HEAD" if method == "HEAD" else "GET",
        download_name=download_name(job),
        content_type=media,
    )
    if method != "HEAD":
        with ctx.engine.begin() as conn:
            access.record(
                conn,
                ctx.settings.self_namespace,
                who,
                action="audit.export.download",
                resource=f"{job.job_id} ({job.format}, {job.rows_written} rows)",
                resource_type="ExportJob",
            )
    return url
