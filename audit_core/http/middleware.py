"""ASGI middleware in front of the portal: security headers, loopback-only local mode, the
API's framing."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .. import access
from .documents import (
    ALLOW,
    ALLOWED_METHODS,
    PREFIX,
    SECURITY_HEADERS,
    error_response,
    method_not_allowed_message,
)

_SAFE_PATH = re.compile(r"[A-Za-z0-9._~/-]*")
# uvicorn's h11 refuses a request head over 16 KiB only when it arrives in pieces (with a
# plain-text 400 the app cannot change); one that arrives whole reaches the app, and the
# API refuses it itself with the JSON 431, so the answer does not depend on the network.
MAX_HEADER_BYTES = 16 * 1024

# Streamlit's index.html (1.67) has one inline script, `window.prerenderReady = false`;
# it runs by this hash, every other script must come from the portal itself.
# A wrong hash blocks it: tests/e2e/test_content_security_policy.py sees the violation.
STREAMLIT_INLINE_SCRIPT = "'sha256-THxz9J9+wf7rhwR2YkXJoSZ13UCmYyC+3lNDv2+8ugA='"
# What Streamlit's page needs and no more (checked in headless Chromium with no violation,
# tests/e2e/test_content_security_policy.py): its own scripts, WebAssembly compilation (not
# eval: its protobuf bundle's Long.js tries a wasm module), the styles its components inject
# inline, the websocket to itself, data:/blob: images, fonts and media (charts, icons,
# downloads). Nothing from another host: the favicon is an inline SVG (pages/common.py), as
# Streamlit fetches a `:material/...:` page icon from Google's font CDN. Nothing may frame it.
UI_POLICY = "; ".join(
    [
        "default-src 'self'",
        f"script-src 'self' {STREAMLIT_INLINE_SCRIPT} 'wasm-unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "media-src 'self' data: blob:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
UI_HEADERS = {
    "Content-Security-Policy": UI_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _is_api(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class SecurityHeadersMiddleware:
    """Add the security headers to every HTTP answer that lacks them, the UI's and the API's.

    Outermost in app.py, so it also covers answers made by the middleware inside it
    (Streamlit's own, LoopbackOnlyMiddleware's 403). The API's routes set theirs themselves.
    """

    def __init__(self, app: Any, prefix: str = PREFIX) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = SECURITY_HEADERS if _is_api(scope.get("path", ""), self.prefix) else UI_HEADERS

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": _with(message.get("headers") or [], extra)}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _with(raw: list[tuple[bytes, bytes]], extra: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    present = {name.lower() for name, _ in raw}
    added = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in extra.items()
        if name.lower().encode("latin-1") not in present
    ]
    return list(raw) + added


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

    - Answers uncompressed, with no `Vary: Accept-Encoding` (nothing varies): Streamlit
      gzips at level 9 for any client that accepts it,
      which would cut a streamed export's throughput several times over and change the
      bytes a download's Content-Length and Repr-Digest describe. (Smaller files: queue
      a gzip job.)
    - Answers a path no API route could match (characters outside [A-Za-z0-9._~/-],
      `..` or `//`) with the JSON 404 itself; otherwise Streamlit's path-security check
      would answer a plain-text 400.
    - Answers every method but GET and HEAD (TRACE, CONNECT, PROPFIND, anything) with the
      JSON 405 itself: Starlette's router would answer a method no route lists in plain text.
    - Answers header fields over MAX_HEADER_BYTES with the JSON 431.
    """

    def __init__(self, app: Any, prefix: str = PREFIX) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if _is_api(path, self.prefix):
            method = str(scope.get("method", ""))
            response = None
            if method not in ALLOWED_METHODS:
                message = method_not_allowed_message(method)
                response = error_response(405, "MethodNotAllowed", message, {"Allow": ALLOW})
            elif sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > MAX_HEADER_BYTES:
                response = error_response(
                    431,
                    "RequestHeaderFieldsTooLarge",
                    f"the request's header fields are larger than {MAX_HEADER_BYTES} bytes",
                )
            elif not _SAFE_PATH.fullmatch(path) or ".." in path or "//" in path:
                response = error_response(404, "NotFound", "no such API path")
            if response is not None:
                response.headers.update(SECURITY_HEADERS)
                await response(scope, receive, send)
                return
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
            scope = {**scope, "headers": headers}
            await self.app(scope, receive, _without_vary(send))
            return
        await self.app(scope, receive, send)


def _without_vary(send: Any) -> Any:
    """Drop the `Vary: Accept-Encoding` Streamlit's gzip layer adds: API answers are never
    compressed (ApiMiddleware removes Accept-Encoding), so the encoding does not vary."""

    async def sending(message: Any) -> None:
        if message["type"] == "http.response.start":
            kept = [
                (k, v)
                for k, v in message.get("headers") or []
                if not (k.lower() == b"vary" and v.lower() == b"accept-encoding")
            ]
            message = {**message, "headers": kept}
        await send(message)

    return sending
