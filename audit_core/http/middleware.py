"""ASGI middleware in front of the portal: loopback-only local mode, the API's framing."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .. import access
from .documents import PREFIX, SECURITY_HEADERS, error_response

_SAFE_PATH = re.compile(r"[A-Za-z0-9._~/-]*")


class LoopbackOnlyMiddleware:
    """In local mode (sign-in off, everyone is the admin) answer loopback clients only.

    The start-up check refuses a non-loopback server.address, but `uvicorn app:app --host
    0.0.0.0` does not go through that setting; this refuses the requests themselves.
    """

    def __init__(self, app: Any, enabled: Callable[[], bool]) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and self.enabled():
            client = scope.get("client") or ("", 0)
            if not access.is_loopback(str(client[0])):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = error_response(
                    403,
                    "Forbidden",
                    "sign-in is off (local mode): this portal only answers on loopback",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ApiMiddleware:
    """ASGI middleware for /api/v1, placed by app.py outside Streamlit's own middleware.

    - Answers uncompressed: Streamlit gzips at level 9 for any client that accepts it,
      which would cut a streamed export's throughput several times over and change the
      bytes a download's Content-Length and Repr-Digest describe. (Smaller files: queue
      a gzip job.)
    - Answers a path no API route could match (characters outside [A-Za-z0-9._~/-],
      `..` or `//`) with the JSON 404 itself; otherwise Streamlit's path-security check
      would answer a plain-text 400.
    """

    def __init__(self, app: Any, prefix: str = PREFIX) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == self.prefix or path.startswith(self.prefix + "/"):
            if not _SAFE_PATH.fullmatch(path) or ".." in path or "//" in path:
                response = error_response(404, "NotFound", "no such API path")
                response.headers.update(SECURITY_HEADERS)
                await response(scope, receive, send)
                return
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
