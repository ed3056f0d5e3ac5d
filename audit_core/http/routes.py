"""Starlette routes of the HTTP API (mounted at /api/v1 by app.py).

    GET /audit/export                    the seed's export: 200 streamed file, or 202 job
    GET /audit/export/jobs/{jobId}       the job's AuditExportJob document
    GET /audit/export/download/{jobId}   the job's file (202 while not ready, 410 expired)
    GET /openapi.json                    the OpenAPI 3.1 description of the above

Every data route takes `Authorization: Bearer <token>` (the download route also takes a
portal-signed `?sig=`); every error is the JSON Status body of DESIGN.md, made from the
`AuditError` the domain raised, in one place (`_endpoint`). The routes are thin: parse,
authenticate, call `service`/`jobs`, shape the response. They are handed the context.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any, BinaryIO

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .. import access, export, jobs, service
from ..access import Principal
from ..context import Context
from ..errors import (
    AuditError,
    ConflictError,
    GoneError,
    NotFoundError,
    TooManyRequestsError,
    UnauthorizedError,
)
from ..filters import MAX_PARAM, AuditFilter, FilterError, parse_format
from ..formats import CONTENT_TYPES, filename
from . import links, openapi
from .documents import (
    DOWNLOAD_PATH,
    JOB_PATH,
    JOB_URL,
    SECURITY_HEADERS,
    download_name,
    error_response,
    job_document,
)

log = logging.getLogger(__name__)

EXPORT_PARAMS = ("format", "from", "to", "action", "user", "namespace")
MAX_QUERY = 4096  # characters in a whole query string
FILE_CHUNK = 1 << 20  # bytes per chunk when serving a job's file
RETRY_NOT_READY = 5  # seconds a poller should wait for a job
RETRY_BUSY = 10  # seconds a caller over a limit should wait
REALM = 'Bearer realm="audit-export"'

Handler = Callable[[Request, Context, "StreamLimiter"], Awaitable[Response]]


class MethodNotAllowedError(AuditError):
    """This API answers GET only."""

    status = 405
    reason = "MethodNotAllowed"


# --------------------------------------------------------------------------- limits


class StreamLimiter:
    """Counts each caller's streams in flight in this process and refuses past the cap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def acquire(self, key: str, limit: int) -> None:
        with self._lock:
            n = self._open.get(key, 0)
            if n >= limit:
                raise TooManyRequestsError(
                    f"you already have {n} exports or downloads streaming (the limit is "
                    f"{limit}); wait for one to finish",
                    retry_after=RETRY_BUSY,
                )
            self._open[key] = n + 1

    def release(self, key: str) -> None:
        with self._lock:
            n = self._open.get(key, 0) - 1
            if n <= 0:
                self._open.pop(key, None)
            else:
                self._open[key] = n


# --------------------------------------------------------------------------- helpers


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


async def _authenticate(request: Request, ctx: Context) -> Principal:
    """The bearer token's principal; UnauthorizedError (401) when missing or not valid."""
    header = request.headers.get("authorization")
    if header is None:
        raise UnauthorizedError("an API token is required: send Authorization: Bearer <token>")
    token = access.bearer_token(header)
    if not token:
        raise UnauthorizedError("the Authorization header must be: Bearer <token>")
    who: Principal = await run_in_threadpool(
        access.authenticate_token, ctx.engine, token, _client_ip(request)
    )
    request.state.principal = who  # for the access-denied record, should one follow
    return who


async def _signed(request: Request, ctx: Context, job_id: str) -> Principal:
    """The principal of a portal-signed download link (?sig=)."""
    sig = request.query_params.get("sig", "")
    if len(sig) > MAX_PARAM:
        raise UnauthorizedError("this download link is not valid")
    email = links.verify_download(sig, job_id, ctx.settings)

    def lookup() -> Principal | None:
        with ctx.engine.connect() as conn:
            return access.principal_for(conn, email, ctx.settings, _client_ip(request))

    who = await run_in_threadpool(lookup)
    if who is None and ctx.local_mode and email == access.LOCAL_ADMIN.email:
        # Sign-in is off: the portal signs links for its one local admin (loopback only).
        who = replace(access.LOCAL_ADMIN, source_ip=_client_ip(request))
    if who is None:
        raise UnauthorizedError("the person this link was signed for no longer has access")
    request.state.principal = who
    return who


def _check_query(request: Request, allowed: tuple[str, ...]) -> None:
    """Refuse unknown, repeated-when-single, or over-long query parameters."""
    if len(request.url.query) > MAX_QUERY:
        raise FilterError(f"the query string is longer than {MAX_QUERY} characters")
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            expected = ", ".join(allowed) if allowed else "none"
            raise FilterError(
                f"unknown query parameter {name[:40]!r}; expected: {expected}", name[:40]
            )
        if len(value) > MAX_PARAM:
            raise FilterError(f"{name} is longer than {MAX_PARAM} characters", name)
    for name in ("format", "from", "to", "sig"):
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise FilterError(f"{name} may be given only once", name)
        if values and not values[0].strip():
            raise FilterError(f"{name} is empty: leave it out or give a value", name)


def _job_id(request: Request) -> str:
    job_id = str(request.path_params["job_id"])
    if not jobs.JOB_ID_RE.match(job_id) or len(job_id) > 40:
        raise NotFoundError(f"no export job {job_id[:60]!r}")
    return job_id


def _limit_key(who: Principal, request: Request) -> str:
    # One person may hold several tokens; the cap is per token, so key on the token.
    token = access.bearer_token(request.headers.get("authorization"))
    return "_".join(token.split("_", 2)[:2]) if token else f"user:{who.email}"


async def _guarded(
    chunks: Iterator[bytes], first: bytes | None, release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """Yield a stream's chunks (first already pulled) and release its slot however it ends."""
    try:
        if first:
            yield first
        async for chunk in iterate_in_threadpool(chunks):
            yield chunk
    finally:
        release()
        close = getattr(chunks, "close", None)
        if close is not None:  # a reader who hung up: hand the connection back now
            # ValueError: still running in a worker thread; it closes when collected.
            with contextlib.suppress(ValueError):
                close()


# --------------------------------------------------------------------------- routes


async def export_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/export: stream the export, or queue it as a job when over the limit."""
    who = await _authenticate(request, ctx)
    _check_query(request, EXPORT_PARAMS)
    params = request.query_params
    fmt = parse_format(params.get("format"))
    flt = AuditFilter.parse(
        start=params.get("from"),
        end=params.get("to"),
        action=params.getlist("action") or None,
        user=params.getlist("user") or None,
        namespace=params.getlist("namespace") or None,
    )

    def make_plan() -> export.ExportPlan:
        with ctx.engine.connect() as conn:
            return service.plan_export(conn, who, flt, fmt)

    plan = await run_in_threadpool(make_plan)
    if not service.is_immediate(plan, ctx.settings):
        job = await run_in_threadpool(jobs.enqueue, ctx.engine, plan, who, ctx.settings)
        doc = job_document(job)
        return JSONResponse(
            doc,
            202,
            headers={
                "Location": JOB_URL.format(job_id=job.job_id),
                "Retry-After": str(RETRY_NOT_READY),
            },
        )
    key = _limit_key(who, request)
    limiter.acquire(key, ctx.settings.max_concurrent_streams)
    try:
        chunks = service.export_chunks(ctx.engine, who, plan, ctx.settings, channel="api")
        # Pull the first chunk (which writes the audit record) before any header leaves,
        # so a failure there is still an honest error status.
        first = await run_in_threadpool(next, chunks, None)
    except BaseException:
        limiter.release(key)
        raise
    name = filename(fmt, plan.exported_at)
    return StreamingResponse(
        _guarded(chunks, first, lambda: limiter.release(key)),
        200,
        media_type=CONTENT_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Total-Records": str(plan.total),
        },
    )


async def job_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/export/jobs/{jobId}: the job document, with progress."""
    who = await _authenticate(request, ctx)
    _check_query(request, ())
    job = await _visible_job(ctx, _job_id(request), who)
    return JSONResponse(job_document(job))


async def _visible_job(ctx: Context, job_id: str, who: Principal) -> jobs.JobInfo:
    def get() -> jobs.JobInfo | None:
        with ctx.engine.connect() as conn:
            return jobs.get_for(conn, job_id, who)

    job = await run_in_threadpool(get)
    if job is None:  # unknown and someone else's look the same: no enumeration
        raise NotFoundError(f"no export job {job_id}")
    return job


async def download_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/export/download/{jobId}: the finished file, or where the job stands."""
    job_id_raw = str(request.path_params["job_id"])
    if "sig" in request.query_params and "authorization" not in request.headers:
        who = await _signed(request, ctx, job_id_raw)
    else:
        who = await _authenticate(request, ctx)
    _check_query(request, ("sig",))
    job = await _visible_job(ctx, _job_id(request), who)
    if jobs.is_expired(job):
        raise GoneError(f"export job {job.job_id} has expired and its file was removed")
    if job.state in jobs.ACTIVE:
        return JSONResponse(job_document(job), 202, headers={"Retry-After": str(RETRY_NOT_READY)})
    if job.state != jobs.JobState.COMPLETED:
        failed = job.state == jobs.JobState.FAILED
        why = f": {job.last_error}" if failed and job.last_error else ""
        raise ConflictError(f"export job {job.job_id} is {job.state}{why}; no file to download")
    key = _limit_key(who, request)
    limiter.acquire(key, ctx.settings.max_concurrent_streams)
    try:
        fh = await run_in_threadpool(_open_and_record, ctx, job, who)
    except BaseException:
        limiter.release(key)
        raise

    def release() -> None:
        fh.close()
        limiter.release(key)

    assert job.file_sha256 is not None and job.file_size is not None
    digest = base64.b64encode(bytes.fromhex(job.file_sha256)).decode()
    media = "application/gzip" if job.compression == "gzip" else CONTENT_TYPES[job.format]
    return StreamingResponse(
        _guarded(_read(fh), None, release),
        200,
        media_type=media,
        headers={
            "Content-Length": str(job.file_size),
            "Content-Disposition": f'attachment; filename="{download_name(job)}"',
            "ETag": f'"sha256-{job.file_sha256}"',
            "Repr-Digest": f"sha-256=:{digest}:",
            "X-Total-Records": str(job.rows_written),
        },
    )


def _open_and_record(ctx: Context, job: jobs.JobInfo, who: Principal) -> BinaryIO:
    """Open the job's file (it stays readable if the sweep removes it) and audit the download."""
    try:
        fh = open(jobs.file_path(ctx.settings, job), "rb")  # noqa: SIM115 - closed by release
    except FileNotFoundError:
        raise GoneError(f"export job {job.job_id} has expired and its file was removed") from None
    try:
        with ctx.engine.begin() as conn:
            access.record(
                conn,
                ctx.settings.self_namespace,
                who,
                action="audit.export.download",
                resource=f"{job.job_id} ({job.format}, {job.rows_written} rows)",
                resource_type="ExportJob",
            )
    except BaseException:
        fh.close()
        raise
    return fh


def _read(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(FILE_CHUNK):
        yield chunk


async def openapi_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /openapi.json: the API's OpenAPI 3.1 document (no data, so no token needed)."""
    _check_query(request, ())
    return JSONResponse(openapi.document())


async def not_found(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    raise NotFoundError(f"no such API path: {request.url.path[:200]}")


# --------------------------------------------------------------------------- wiring


def _record_denied(request: Request, ctx: Context, message: str) -> None:
    """Write portal.access_denied for an authenticated caller the grants refused (403)."""
    who = getattr(request.state, "principal", None)
    if not isinstance(who, Principal):
        return
    what = f"api {request.url.path[:200]}: {message}"
    access.denied(ctx.engine, who.email, who.role, what, who.source_ip, ctx.settings)


def _endpoint(
    handler: Handler,
    limiter: StreamLimiter,
    get_context: Callable[[], Context],
    *,
    needs_context: bool = True,
) -> Callable[..., Any]:
    """Wrap a handler: GET only, JSON Status errors, no-store headers, no traceback leaks."""

    async def run(request: Request) -> Response:
        response: Response
        try:
            if request.method != "GET":
                raise MethodNotAllowedError(
                    f"{request.method[:20]} is not allowed here; this API only answers GET",
                    headers={"Allow": "GET"},
                )
            ctx = get_context() if needs_context else None
            response = await handler(request, ctx, limiter)  # type: ignore[arg-type]
        except AuditError as e:
            response = await _error_answer(request, e, get_context)
        except Exception:  # noqa: BLE001 - the last line: log it, never leak it
            ref = uuid.uuid4().hex[:12]
            log.exception("API error %s on %s %s", ref, request.method, request.url.path)
            response = error_response(
                500,
                "InternalError",
                f"the server could not answer this request; the server log has the "
                f"details under reference {ref}",
            )
        response.headers.update(SECURITY_HEADERS)
        return response

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


async def _error_answer(
    request: Request, e: AuditError, get_context: Callable[[], Context]
) -> Response:
    """The Status answer for a domain error; a 401 challenges, a 403 is audited."""
    headers = dict(e.headers)
    if e.status == 401:
        presented = "authorization" in request.headers or "sig" in request.query_params
        headers["WWW-Authenticate"] = f'{REALM}, error="invalid_token"' if presented else REALM
    if e.status == 403:
        await run_in_threadpool(_record_denied, request, get_context(), e.message)
    return error_response(e.status, e.reason, e.message, headers or None)


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def routes(get_context: Callable[[], Context]) -> list[BaseRoute]:
    """The API's routes, to mount at /api/v1 (a JSON 404 catches every other path)."""
    limiter = StreamLimiter()  # one per mounted API: streams in flight in this process

    def route(path: str, handler: Handler, needs_context: bool = True) -> Route:
        endpoint = _endpoint(handler, limiter, get_context, needs_context=needs_context)
        return Route(path, endpoint, methods=ALL_METHODS)

    return [
        route("/audit/export", export_route),
        route(JOB_PATH, job_route),
        route(DOWNLOAD_PATH, download_route),
        route("/openapi.json", openapi_route, needs_context=False),
        route("/{path:path}", not_found, needs_context=False),
    ]
