"""The evidence routes (DESIGN.md "Evidence"): keys, checkpoints, proofs, export manifests.

GET /audit/keys                                   JWKS of the log's signing key (public)
GET /audit/checkpoint[?size=N]                    a signed note (text/plain, exact bytes)
GET /audit/proof/inclusion?id=ID[&size=N]         RFC 9162 inclusion proof, scoped
GET /audit/proof/consistency?from=M[&to=N]        RFC 9162 consistency proof
GET /audit/export/download/{jobId}/manifest[.sig] a job file's signed manifest
GET /audit/export/manifests/{exportId}[.sig]      a streamed export's signed manifest
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import evidence, service
from ..access import Principal
from ..context import Context
from ..errors import BadRequestError, NotFoundError
from .documents import MANIFEST_PATH
from .routes import (
    PendingManifests,
    StreamLimiter,
    _authenticate,
    _check_query,
    downloadable_job,
)

NOTE_TYPE = "text/plain; charset=utf-8"


def _size(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequestError(f"{name} must be a whole number of records, got {raw[:40]!r}")
    return int(raw)


def _signer(ctx: Context) -> evidence.Signer:
    if ctx.signer is None:
        raise evidence.NoSignerError("this portal has no signing key")
    return ctx.signer


async def keys_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/keys: the log's public key as a JWKS (no token: a public key is public)."""
    _check_query(request, ())
    return JSONResponse(_signer(ctx).jwks())


async def checkpoint_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/checkpoint: the signed note of the current tree, or of ?size=N."""
    await _authenticate(request, ctx)
    _check_query(request, ("size",))
    size = _size(request, "size")

    def note() -> str:
        with ctx.engine.begin() as conn:
            return evidence.note_at(conn, size)

    return Response(await run_in_threadpool(note), media_type=NOTE_TYPE)


async def inclusion_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/proof/inclusion?id=: a record's proof; one outside the grants is a 404."""
    who = await _authenticate(request, ctx)
    _check_query(request, ("id", "size"))
    record_id = request.query_params.get("id", "")
    if not record_id:
        raise BadRequestError("id is required: the record id to prove")
    size = _size(request, "size")

    def prove() -> dict[str, Any]:
        with ctx.engine.begin() as conn:
            return service.prove_record(conn, who, record_id, size)

    return JSONResponse(await run_in_threadpool(prove))


async def consistency_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/proof/consistency?from=M&to=N: the tree at M is a prefix of the tree at N."""
    await _authenticate(request, ctx)
    _check_query(request, ("from", "to"))
    first = _size(request, "from")
    if first is None:
        raise BadRequestError("from is required: the older tree size")
    second = _size(request, "to")

    def prove() -> dict[str, Any]:
        with ctx.engine.begin() as conn:
            return evidence.consistency(conn, first, second)

    return JSONResponse(await run_in_threadpool(prove))


async def _job_manifest(request: Request, ctx: Context) -> evidence.SignedManifest:
    job, _ = await downloadable_job(request, ctx)
    return await _manifest(ctx, job.job_id, None)


async def _manifest(
    ctx: Context, export_id: str, who: Principal | None, pending: PendingManifests | None = None
) -> evidence.SignedManifest:
    """The kept manifest; one of `pending` (a stream that just ended) is waited for."""

    def get() -> evidence.SignedManifest | None:
        with ctx.engine.connect() as conn:
            return service.manifest_for(conn, export_id, who)

    signed = await run_in_threadpool(get)
    if signed is None and pending is not None:
        await pending.wait(ctx, export_id, who)
        signed = await run_in_threadpool(get)
    if signed is None:
        raise NotFoundError(f"no signed manifest for {export_id[:64]} (yet)")
    return signed


async def job_manifest_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/export/download/{jobId}/manifest: the job file's manifest bytes."""
    signed = await _job_manifest(request, ctx)
    return Response(signed.manifest, media_type="application/json")


async def job_signature_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/export/download/{jobId}/manifest.sig: its raw Ed25519 signature."""
    signed = await _job_manifest(request, ctx)
    return Response(signed.signature, media_type="application/octet-stream")


async def _stream_manifest(
    request: Request, ctx: Context, limiter: StreamLimiter
) -> evidence.SignedManifest:
    who = await _authenticate(request, ctx)
    _check_query(request, ())
    export_id = str(request.path_params["export_id"])
    return await _manifest(ctx, export_id, who, limiter.manifests)


async def manifest_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/export/manifests/{exportId}: a streamed export's manifest, once it ended."""
    signed = await _stream_manifest(request, ctx, limiter)
    return Response(signed.manifest, media_type="application/json")


async def signature_route(request: Request, ctx: Context, limiter: StreamLimiter) -> Response:
    """GET /audit/export/manifests/{exportId}.sig: its raw Ed25519 signature."""
    signed = await _stream_manifest(request, ctx, limiter)
    return Response(signed.signature, media_type="application/octet-stream")


# (path, handler, needs a context); routes.routes() mounts them before the catch-all.
ROUTES = [
    ("/audit/keys", keys_route),
    ("/audit/checkpoint", checkpoint_route),
    ("/audit/proof/inclusion", inclusion_route),
    ("/audit/proof/consistency", consistency_route),
    ("/audit/export/download/{job_id}/manifest", job_manifest_route),
    ("/audit/export/download/{job_id}/manifest.sig", job_signature_route),
    (MANIFEST_PATH + ".sig", signature_route),
    (MANIFEST_PATH, manifest_route),
]
