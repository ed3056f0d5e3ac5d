"""Starlette routes of the HTTP API (mounted at /api/v1 by app.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route



def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


async def not_found(request: Request) -> JSONResponse:
    return JSONResponse(status_body(404, "NotFound", f"no such API path: {request.url.path}"), 404)


def routes() -> list[BaseRoute]:
    return [Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])]
