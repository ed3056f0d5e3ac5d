"""Starlette routes of the HTTP API (mounted at /api/v1 by app.py).

    GET /audit/export                    the seed's export: 200 streamed file, or 202 job
    GET /audit/export/jobs/{jobId}       the job's AuditExportJob document
    GET /audit/export/download/{jobId}   the job's file (202 while not ready, 410 expired;
                                         one byte Range gives a 206, If-None-Match a 304)
    GET /openapi.json                    the OpenAPI 3.1 description of the above

Every data route takes `Authorization: Bearer <token>`, or the token alone as the seed's
example sends it (the download route also takes a portal-signed `?sig=`); every error is
the JSON Status body of DESIGN.md, made from the `AuditError` the domain raised, in one
place (`_endpoint`). HEAD answers as GET would, without a body (and without queueing,
streaming or auditing anything). The routes are thin: parse, authenticate, call
`service`/`jobs`, shape the response. They are handed the context. Refusals (403) are
counted per token and client address by the routes' `access.RefusalGuard`: too many in a
window are turned away (429), their records coalesced.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, BinaryIO

import anyio
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .. import access, export, jobs, service
from ..access import Principal
from ..config import Settings
from ..context import Context
from ..errors import (
    AuditError,
    ConflictError,
    GoneError,
    NotFoundError,
    TooManyRequestsError,
    UnauthorizedError,
)
from ..filters import MAX_PARAM, AuditFilter, FilterError, parse_format, refuse_control
from ..formats import CONTENT_TYPES, filename
from . import links, openapi, presigned
from .documents import (
    ALLOW,
    ALLOWED_METHODS,
    DOWNLOAD_PATH,
    JOB_PATH,
    JOB_URL,
    MANIFEST_PATH,
    PREFIX,
    SECURITY_HEADERS,
    download_name,
    error_response,
    job_document,
    method_not_allowed_message,
)

log = logging.getLogger(__name__)

EXPORT_PARAMS = ("format", "from", "to", "action", "user", "namespace")
MAX_QUERY = 4096  # characters in a whole query string
FILE_CHUNK = 1 << 20  # bytes per chunk when serving a job's file
RETRY_BUSY = 10  # seconds a caller over a limit should wait
# A download asked for a job expected within this long waits for it (checked every step).
LONG_POLL_SECONDS = 2.0
LONG_POLL_STEP = 0.05
# A streamed export's manifest asked for while it is being signed is waited for this long.
MANIFEST_WAIT_SECONDS = 10.0
REALM = 'Bearer realm="audit-export"'

Handler = Callable[[Request, Context, "StreamLimiter"], Awaitable[Response]]
ADDRESS_FACTOR = 3  # one client address may hold several people's tokens (a proxy, a NAT)


class MethodNotAllowedError(AuditError):
    """This API answers GET and HEAD only."""

    status = 405
    reason = "MethodNotAllowed"


class RangeNotSatisfiableError(AuditError):
    """A Range the job's file cannot satisfy, or one that is not a byte range."""

    status = 416
    reason = "RangeNotSatisfiable"


# --------------------------------------------------------------------------- limits


class StreamLimiter:
    """Counts each caller's streams in flight in this process and refuses past the cap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self.manifests = PendingManifests()  # streams ended whose manifest is being signed

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


class PendingManifests:
    """Streamed exports whose manifest is being signed now that their response has ended.

    The API signs a stream's manifest after its last byte has left, so the caller does not
    wait for it; one who asks for that manifest at once is held here until it is kept
    (`wait`) instead of being told there is none yet. Keyed by database and export id;
    only the requester (or an admin) is held, so a wait tells no one else of the export.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], tuple[str, anyio.Event]] = {}

    def begin(self, ctx: Context, export_id: str, who: Principal) -> Callable[[], None]:
        """Note the export as being signed; call what is returned once it is (or failed)."""
        key = (ctx.settings.database_url, export_id)
        event = anyio.Event()
        self._pending[key] = (who.email.lower(), event)

        def end() -> None:
            if self._pending.get(key, (None, None))[1] is event:
                del self._pending[key]
            event.set()

        return end

    async def wait(self, ctx: Context, export_id: str, who: Principal | None) -> None:
        """Wait (at most MANIFEST_WAIT_SECONDS) while this caller's manifest is signed."""
        entry = self._pending.get((ctx.settings.database_url, export_id))
        if entry is None:
            return
        owner, event = entry
        if who is not None and not who.is_admin and who.email.lower() != owner:
            return
        with anyio.move_on_after(MANIFEST_WAIT_SECONDS):
            await event.wait()


class RefusalGuards:
    """The refusal guard of the context being served.

    A new context (the server's one, or a test's own database) starts with a fresh guard,
    so counts and pending summary records never cross from one database to another.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: tuple[Context, access.RefusalGuard] | None = None

    def for_context(self, ctx: Context) -> access.RefusalGuard:
        with self._lock:
            if self._served is None or self._served[0] is not ctx:
                guard = access.RefusalGuard(ctx.settings.refusal_window_seconds)
                self._served = (ctx, guard)
            return self._served[1]


# --------------------------------------------------------------------------- helpers


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def _presented_token(authorization: str | None) -> str:
    """The token of `Authorization: Bearer <token>` or of a bare `Authorization: <token>`.

    The seed's own curl example sends the token with no scheme, so a header of one word
    that is not a scheme name is taken as the token itself, and checked exactly as a
    bearer token is. Any other scheme (Basic, say) presents no token: ''.
    """
    value = (authorization or "").strip()
    if value.partition(" ")[0].lower() == "bearer":
        return access.bearer_token(value)
    return value if len(value.split()) == 1 else ""


async def _authenticate(request: Request, ctx: Context) -> Principal:
    """The API token's principal; UnauthorizedError (401) when missing or not valid."""
    header = request.headers.get("authorization")
    if header is None:
        raise UnauthorizedError("an API token is required: send Authorization: Bearer <token>")
    token = _presented_token(header)
    if not token:
        raise UnauthorizedError(
            "the Authorization header must be: Bearer <token> (or the token alone)"
        )
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
        refuse_control(name, value)  # before the emptiness check below, which strips
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
    token = _presented_token(request.headers.get("authorization"))
    return "_".join(token.split("_", 2)[:2]) if token else f"user:{who.email}"


def _refusal_keys(request: Request, settings: Settings) -> dict[str, int]:
    """What a refusal counts against, with each limit: the token presented, the address."""
    address = _client_ip(request) or "(unknown)"
    keys = {f"address {address}": ADDRESS_FACTOR * settings.max_refusals}
    prefix = access.token_prefix(_presented_token(request.headers.get("authorization")))
    if prefix is not None:
        keys = {f"token {prefix}": settings.max_refusals, **keys}
    return keys


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
    if request.method == "HEAD":
        return _export_head(plan, service.is_immediate(plan, ctx.settings))
    if not service.is_immediate(plan, ctx.settings):
        job = await run_in_threadpool(jobs.enqueue, ctx.engine, plan, who, ctx.settings)
        doc = job_document(job)
        pace = await _pace(ctx, job)
        return JSONResponse(
            doc,
            202,
            headers={
                "Location": JOB_URL.format(job_id=job.job_id),
                "Retry-After": str(
                    jobs.retry_after(job, engine=ctx.settings.engine_kind, pace=pace)
                ),
            },
        )
    key = _limit_key(who, request)
    limiter.acquire(key, ctx.settings.max_concurrent_streams)
    name = filename(fmt, plan.exported_at)
    try:
        streamed = service.StreamedExport(
            ctx.engine,
            who,
            plan,
            ctx.settings,
            channel="api",
            manifest=service.ManifestRequest(name, str(request.url.query)),
        )
        chunks = streamed.chunks()
        # Pull the first chunk (which writes the audit record and reserves the manifest's
        # id) before any header leaves, so a failure there is still an honest status.
        first = await run_in_threadpool(next, chunks, None)
    except BaseException:
        limiter.release(key)
        raise
    export_id = str(streamed.export_id)
    manifest_url = PREFIX + MANIFEST_PATH.format(export_id=export_id)
    signing_done = limiter.manifests.begin(ctx, export_id, who)

    def release() -> None:
        limiter.release(key)
        if not streamed.complete:  # cut short: no manifest will come, no one waits for it
            signing_done()

    return StreamingResponse(
        _guarded(chunks, first, release),
        200,
        media_type=CONTENT_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Total-Records": str(plan.total),
            "Link": f'<{manifest_url}>; rel="describedby"',
        },
        background=BackgroundTask(_sign_after, streamed, signing_done),
    )


async def _sign_after(streamed: service.StreamedExport, end: Callable[[], None]) -> None:
    """Once the response has ended: sign the manifest of a stream that was sent whole.

    Signing after the last byte spares the caller its wait (BENCHMARKS.md "Export paths");
    a stream cut short gets no manifest, as before. A failure is logged, and the manifest
    route then answers 404 for it.
    """
    try:
        if streamed.complete:
            await run_in_threadpool(streamed.sign)
    except Exception:  # noqa: BLE001 - the response has gone: log it, never raise it
        log.exception("could not sign the manifest of export %s", streamed.export_id)
    finally:
        end()


def _export_head(plan: export.ExportPlan, immediate: bool) -> Response:
    """HEAD /audit/export: GET's status and headers, with nothing queued, streamed or audited.

    HEAD is safe, so over the limit it queues no job: the 202 then has no Location, and
    the manifest's Link (an id reserved as the stream starts) is left out too.
    """
    if not immediate:
        return _head(202, "application/json")
    name = filename(plan.fmt, plan.exported_at)
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    headers["X-Total-Records"] = str(plan.total)
    return _head(200, CONTENT_TYPES[plan.fmt], headers)


def _head(status: int, media_type: str, headers: dict[str, str] | None = None) -> Response:
    """Status and headers only. Content-Length only when given: a GET that streams has none."""
    response = Response(status_code=status, media_type=media_type, headers=headers)
    if "Content-Length" not in (headers or {}):
        del response.headers["content-length"]
    return response


async def job_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/export/jobs/{jobId}: the job document, with progress."""
    who = await _authenticate(request, ctx)
    _check_query(request, ())
    job = await _visible_job(ctx, _job_id(request), who)
    doc, headers = await _document(ctx, job)
    return JSONResponse(doc, headers=headers)


async def _visible_job(ctx: Context, job_id: str, who: Principal) -> jobs.JobInfo:
    def get() -> jobs.JobInfo | None:
        with ctx.engine.connect() as conn:
            return jobs.get_for(conn, job_id, who)

    job = await run_in_threadpool(get)
    if job is None:  # unknown and someone else's look the same: no enumeration
        raise NotFoundError(f"no export job {job_id}")
    return job


async def downloadable_job(request: Request, ctx: Context) -> tuple[jobs.JobInfo, Principal]:
    """The job of a download URL (its file or its manifest) and who asks: by token, or by a
    portal-signed link (?sig=); refused unless the job is theirs (or they are an admin) and
    they may still read all it reads."""
    job_id_raw = str(request.path_params["job_id"])
    if "sig" in request.query_params and "authorization" not in request.headers:
        who = await _signed(request, ctx, job_id_raw)
    else:
        who = await _authenticate(request, ctx)
    _check_query(request, ("sig",))
    job = await _visible_job(ctx, _job_id(request), who)
    await run_in_threadpool(may_still_read, ctx, job, who)
    return job, who


async def download_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/export/download/{jobId}: the finished file, or where the job stands."""
    job, who = await downloadable_job(request, ctx)
    if jobs.is_expired(job):
        raise GoneError(f"export job {job.job_id} has expired and its file was removed")
    if job.state in jobs.ACTIVE:
        pace = await _pace(ctx, job)
        job = await _nearly_done(ctx, job, who, pace)
        if job.state in jobs.ACTIVE:
            doc, headers = await _document(ctx, job, pace)
            return JSONResponse(doc, 202, headers=headers)
    if job.state != jobs.JobState.COMPLETED:
        failed = job.state == jobs.JobState.FAILED
        why = f": {job.last_error}" if failed and job.last_error else ""
        raise ConflictError(f"export job {job.job_id} is {job.state}{why}; no file to download")
    if ctx.settings.export_storage is not None:  # in a bucket: 302 to a presigned link
        return await presigned.answer(request, ctx, job, who)
    return await _file_answer(request, ctx, limiter, job, who)


async def _file_answer(
    request: Request, ctx: Context, limiter: StreamLimiter, job: jobs.JobInfo, who: Principal
) -> Response:
    """A completed job's file: 304 to a caller holding it, HEAD's headers, 200 or a 206 part.

    Conditions are read in RFC 9110 13.2.2's order: If-None-Match, then Range with
    If-Range. Only a GET that sends bytes is audited (and takes a stream slot).
    """
    media, headers = _file_headers(job)
    if _matches_any(request.headers.get("if-none-match"), headers["ETag"]):
        await _require_file(ctx, job)  # the caller's copy is current: nothing is sent
        return _not_modified(headers)
    if request.method == "HEAD":  # the file's headers; nothing opened, nothing audited
        await _require_file(ctx, job)
        return _head(200, media, headers)
    span = _requested_span(request, job, headers["ETag"])
    if span is not None:
        headers.update(span.headers())
    key = _limit_key(who, request)
    limiter.acquire(key, ctx.settings.max_concurrent_streams)
    try:
        fh = await run_in_threadpool(_open_and_record, ctx, job, who, span)
    except BaseException:
        limiter.release(key)
        raise

    def release() -> None:
        fh.close()
        limiter.release(key)

    chunks = _guarded(_read(fh, int(headers["Content-Length"])), None, release)
    code = 200 if span is None else 206
    return StreamingResponse(chunks, code, media_type=media, headers=headers)


def may_still_read(ctx: Context, job: jobs.JobInfo, who: Principal) -> None:
    """Refuse (403) a job's file to someone who may no longer read all the job reads.

    The check the worker makes before it runs a job (access.export_refusal on the job's
    namespaces), made again for the person downloading: a requester demoted to viewer or
    whose grants were narrowed since gets nothing; admins may read every job.
    """
    with ctx.engine.connect() as conn:
        flt = jobs.job_filter(conn, job.job_id)
        refusal = None if flt is None else access.export_refusal(conn, who.email, flt.namespaces)
    if refusal is not None:
        raise access.AccessDeniedError(
            f"export job {job.job_id} reads more than you may read now: {refusal}"
        )


def _file_headers(job: jobs.JobInfo) -> tuple[str, dict[str, str]]:
    """The media type and headers of a completed job's file (the whole of it)."""
    assert job.file_sha256 is not None and job.file_size is not None
    digest = base64.b64encode(bytes.fromhex(job.file_sha256)).decode()
    media = "application/gzip" if job.compression == "gzip" else CONTENT_TYPES[job.format]
    return media, {
        "Accept-Ranges": "bytes",
        "Content-Length": str(job.file_size),
        "Content-Disposition": f'attachment; filename="{download_name(job)}"',
        "ETag": f'"sha256-{job.file_sha256}"',
        "Repr-Digest": f"sha-256=:{digest}:",
        "X-Total-Records": str(job.rows_written),
    }


@dataclass(frozen=True)
class ByteSpan:
    """One satisfiable byte range of a file: bytes first..last (inclusive) of size."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def text(self) -> str:
        """The range as Content-Range writes it: bytes first-last/size."""
        return f"bytes {self.first}-{self.last}/{self.size}"

    def headers(self) -> dict[str, str]:
        """What a 206 says instead of the whole file's Content-Length."""
        return {"Content-Range": self.text(), "Content-Length": str(self.length)}


def _requested_span(request: Request, job: jobs.JobInfo, etag: str) -> ByteSpan | None:
    """The part of the file a GET asks for; None for the whole file.

    Range is honoured only on GET (RFC 9110 14.2), and with If-Range only when it names
    the file's current ETag (a strong match; a date or any other tag gets the whole file).
    """
    header = request.headers.get("range")
    if request.method != "GET" or header is None:
        return None
    condition = request.headers.get("if-range")
    if condition is not None and condition.strip() != etag:
        return None
    assert job.file_size is not None
    return _byte_span(header, job.file_size)


def _byte_span(header: str, size: int) -> ByteSpan | None:
    """Parse a Range header for a file of `size` bytes; None means send the whole file.

    One byte range (bytes=a-b, a-, -n) gives its span, clipped to the file. Several
    ranges, or a unit other than bytes, get the whole file (RFC 9110 14.2 allows that);
    a malformed byte range, or one that starts past the end, is refused (416).
    """
    unit, eq, ranges = header.partition("=")
    if eq and unit.strip().lower() != "bytes":
        return None  # a unit we do not know: RFC 9110 says ignore the header
    if eq and "," in ranges:
        return None  # several ranges: the whole file, in one 200
    m = _BYTE_RANGE.fullmatch(ranges.strip()) if eq else None
    if m is None or m.group(1) == m.group(2) == "":
        raise _unsatisfiable(
            size, f"Range {header[:60]!r} is not a byte range such as bytes=0-1023"
        )
    first, last = _number(m.group(1)), _number(m.group(2))
    if first is None:  # bytes=-n: the last n bytes
        assert last is not None
        if last == 0 or size == 0:
            raise _unsatisfiable(size, f"Range {header[:60]!r} asks for no bytes")
        return ByteSpan(max(size - last, 0), size - 1, size)
    if last is not None and last < first:
        raise _unsatisfiable(size, f"Range {header[:60]!r} ends before it starts")
    if first >= size:
        raise _unsatisfiable(size, f"Range {header[:60]!r} starts past the file's {size} bytes")
    return ByteSpan(first, size - 1 if last is None else min(last, size - 1), size)


_BYTE_RANGE = re.compile(r"([0-9]*)-([0-9]*)")
MAX_DIGITS = 18  # a position this long is past any file; int() of 16 KiB of digits is not


def _number(digits: str) -> int | None:
    """A byte position; None when absent; past any file (but still in order) when huge."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_DIGITS else 10**MAX_DIGITS


def _unsatisfiable(size: int, message: str) -> RangeNotSatisfiableError:
    return RangeNotSatisfiableError(
        f"{message}; the file has {size} bytes",
        headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
    )


def _matches_any(condition: str | None, etag: str) -> bool:
    """Does If-None-Match name this ETag (weakly: W/ ignored) or say `*`?"""
    if condition is None:
        return False
    tags = [tag.strip() for tag in condition.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


def _not_modified(headers: dict[str, str]) -> Response:
    """304: no body, the ETag the caller already holds (RFC 9110 15.4.5)."""
    return Response(status_code=304, headers={"ETag": headers["ETag"]})


async def _require_file(ctx: Context, job: jobs.JobInfo) -> None:
    """Refuse (410) a completed job whose file the sweep has already removed."""
    if not await run_in_threadpool(jobs.file_path(ctx.settings, job).exists):
        raise GoneError(f"export job {job.job_id} has expired and its file was removed")


async def _pace(ctx: Context, job: jobs.JobInfo) -> float | None:
    """This installation's own pace for the job's format (jobs.observed_pace)."""

    def read() -> float | None:
        with ctx.engine.connect() as conn:
            return jobs.observed_pace(conn, job.format)

    return await run_in_threadpool(read)


async def _nearly_done(
    ctx: Context, job: jobs.JobInfo, who: Principal, pace: float | None
) -> jobs.JobInfo:
    """A job expected within LONG_POLL_SECONDS is waited for here, so the poller who came
    back after its (whole-second) Retry-After gets the file now instead of another 202."""
    if jobs.seconds_left(job, engine=ctx.settings.engine_kind, pace=pace) > LONG_POLL_SECONDS:
        return job
    deadline = time.monotonic() + LONG_POLL_SECONDS

    def get() -> jobs.JobInfo | None:
        with ctx.engine.connect() as conn:
            return jobs.get_for(conn, job.job_id, who)

    while time.monotonic() < deadline:
        await asyncio.sleep(LONG_POLL_STEP)
        now = await run_in_threadpool(get)
        if now is None:
            return job
        if now.state not in jobs.ACTIVE:
            return now
    return job


async def _document(
    ctx: Context, job: jobs.JobInfo, pace: float | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The job's document and, while it is active, the Retry-After its file is expected in
    (at `pace`, read here when not given). A job waiting to retry a failed attempt says
    when it will.
    """
    retry = None
    if job.state == jobs.JobState.QUEUED and job.last_error:

        def read() -> datetime | None:
            with ctx.engine.connect() as conn:
                return jobs.retry_at(conn, job.job_id)

        retry = await run_in_threadpool(read)
    headers = {}
    if job.state in jobs.ACTIVE:
        pace = pace if pace is not None else await _pace(ctx, job)
        left = jobs.retry_after(job, retry_at=retry, engine=ctx.settings.engine_kind, pace=pace)
        headers["Retry-After"] = str(left)
    return job_document(job, retry_at=retry), headers


def _open_and_record(
    ctx: Context, job: jobs.JobInfo, who: Principal, span: ByteSpan | None = None
) -> BinaryIO:
    """Open the job's file at the span's start (it stays readable if the sweep removes it)
    and audit the download; a resumed or partial one names its bytes in the record."""
    try:
        fh = open(jobs.file_path(ctx.settings, job), "rb")  # noqa: SIM115 - closed by release
    except FileNotFoundError:
        raise GoneError(f"export job {job.job_id} has expired and its file was removed") from None
    part = "" if span is None else f", {span.text()}"
    try:
        fh.seek(0 if span is None else span.first)
        with ctx.engine.begin() as conn:
            access.record(
                conn,
                ctx.settings.self_namespace,
                who,
                action="audit.export.download",
                resource=f"{job.job_id} ({job.format}, {job.rows_written} rows{part})",
                resource_type="ExportJob",
            )
    except BaseException:
        fh.close()
        raise
    return fh


def _read(fh: BinaryIO, length: int) -> Iterator[bytes]:
    """Yield `length` bytes of the file from where it stands, a chunk at a time."""
    while length > 0 and (chunk := fh.read(min(FILE_CHUNK, length))):
        length -= len(chunk)
        yield chunk


async def openapi_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /openapi.json: the API's OpenAPI 3.1 document (no data, so no token needed)."""
    _check_query(request, ())
    return JSONResponse(openapi.document())


async def not_found(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    raise NotFoundError(f"no such API path: {request.url.path[:200]}")


# --------------------------------------------------------------------------- wiring


def _record_denied(
    request: Request, ctx: Context, guard: access.RefusalGuard, message: str
) -> None:
    """Count and audit (coalesced) a refusal by the grants (403) of an authenticated caller."""
    who = getattr(request.state, "principal", None)
    if not isinstance(who, Principal):
        return
    what = f"api {request.url.path[:200]}: {message}"
    guard.refused(ctx.engine, ctx.settings, who, what, _refusal_keys(request, ctx.settings))


async def _turn_away(request: Request, ctx: Context, guard: access.RefusalGuard) -> None:
    """Write the summaries of closed windows; refuse (429) a caller refused too often."""
    if guard.due():
        await run_in_threadpool(guard.flush, ctx.engine, ctx.settings)
    guard.check(_refusal_keys(request, ctx.settings))


def _endpoint(
    handler: Handler,
    limiter: StreamLimiter,
    guards: RefusalGuards,
    get_context: Callable[[], Context],
    *,
    needs_context: bool = True,
) -> Callable[..., Any]:
    """Wrap a handler: GET and HEAD only, JSON Status errors, no-store headers, no leaks."""

    async def run(request: Request) -> Response:
        response: Response
        ctx: Context | None = None
        try:
            if request.method not in ALLOWED_METHODS:  # ApiMiddleware answers these first
                raise _method_not_allowed(request.method)
            if needs_context:
                ctx = get_context()
                await _turn_away(request, ctx, guards.for_context(ctx))
            response = await handler(request, ctx, limiter)  # type: ignore[arg-type]
        except AuditError as e:
            response = await _error_answer(request, e, ctx, guards)
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
        return _without_body(response) if request.method == "HEAD" else response

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _method_not_allowed(method: str) -> MethodNotAllowedError:
    return MethodNotAllowedError(method_not_allowed_message(method), headers={"Allow": ALLOW})


def _without_body(response: Response) -> Response:
    """HEAD: the same status and headers (Content-Length included), no body.

    This covers the JSON answers. A route that streams must answer HEAD itself, before it
    takes a stream slot or opens a file (export_route, download_route do).
    """
    bare = Response(status_code=response.status_code)
    bare.raw_headers = list(response.raw_headers)
    return bare


async def _error_answer(
    request: Request, e: AuditError, ctx: Context | None, guards: RefusalGuards
) -> Response:
    """The Status answer for a domain error; a 401 challenges, a 403 is counted and audited."""
    headers = dict(e.headers)
    if e.status == 401:
        presented = "authorization" in request.headers or "sig" in request.query_params
        headers["WWW-Authenticate"] = f'{REALM}, error="invalid_token"' if presented else REALM
    if e.status == 403 and ctx is not None:
        guard = guards.for_context(ctx)
        await run_in_threadpool(_record_denied, request, ctx, guard, e.message)
    return error_response(e.status, e.reason, e.message, headers or None)


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def routes(get_context: Callable[[], Context]) -> list[BaseRoute]:
    """The API's routes, to mount at /api/v1 (a JSON 404 catches every other path)."""
    limiter = StreamLimiter()  # one per mounted API: streams in flight in this process
    guards = RefusalGuards()  # refusals counted and coalesced, per context served

    def route(path: str, handler: Handler, needs_context: bool = True) -> Route:
        endpoint = _endpoint(handler, limiter, guards, get_context, needs_context=needs_context)
        return Route(path, endpoint, methods=ALL_METHODS)

    from .evidence import ROUTES as EVIDENCE

    return [
        *(route(path, handler) for path, handler in EVIDENCE),
        route("/audit/export", export_route),
        route(JOB_PATH, job_route),
        route(DOWNLOAD_PATH, download_route),
        route("/openapi.json", openapi_route, needs_context=False),
        route("/{path:path}", not_found, needs_context=False),
    ]
