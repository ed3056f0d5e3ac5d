"""The server: the Streamlit portal, the HTTP API under /api/v1, and the export worker.

`streamlit run app.py` and `uvicorn app:app` both serve it. The lifespan reads the
settings once, builds the context (database migrated, demo data when none is configured)
and hands it to the API routes, the pages and the in-process worker.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import streamlit as st
from starlette.middleware import Middleware
from starlette.routing import Mount

from audit_core import access, context, worker
from audit_core.config import Settings
from audit_core.errors import AuditError, ConfigError
from audit_core.http import ApiMiddleware, LoopbackOnlyMiddleware, routes
from audit_core.http.documents import PREFIX
from audit_core.http.middleware import SecurityHeadersMiddleware


@asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[dict[str, Any]]:
    """Build the context (migrating the database) and run one export worker for this process."""
    try:
        auth = access.auth_configured(st.secrets if st.secrets.load_if_toml_exists() else None)
        access.check_local_mode(st.get_option("server.address"), auth)
        ctx = context.build(_settings(), local_mode=not auth)
    except AuditError as exc:
        _refuse_to_start(exc)
        raise
    previous = context.install(ctx)
    running = worker.start_in_process(ctx)
    try:
        yield {"context": ctx}
    finally:
        running.stop()
        context.install(previous)
        ctx.engine.dispose()


def _settings() -> Settings:
    """Settings.from_env; its one file access (the link secret kept beside AUDIT_EXPORT_DIR
    when AUDIT_SECRET_KEY is unset) failing is a setting to fix too."""
    try:
        return Settings.from_env()
    except OSError as exc:
        raise ConfigError(
            f"AUDIT_EXPORT_DIR: the download-link secret cannot be kept beside it "
            f"({exc.filename}: {exc.strerror or type(exc).__name__}): point AUDIT_EXPORT_DIR at "
            "a folder the portal may create and write, or set AUDIT_SECRET_KEY"
        ) from None


def _refuse_to_start(exc: AuditError) -> None:
    """Say why in one line on stderr and end the server process with the error's exit status.

    Raising out of the lifespan would not do: Starlette hands uvicorn the formatted
    traceback as the failure message and uvicorn logs all of it, after Streamlit has
    already printed "You can now view your Streamlit app". So a server that owns the
    process (uvicorn runs the lifespan on the main thread) leaves at once: nothing is
    running yet that needs stopping. Run in-process (TestClient, which drives the
    lifespan from a thread of its own), the caller gets the exception instead.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    print(f"error: {exc.message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(exc.exit_code)


def _local_mode() -> bool:
    return context.current().local_mode


app = st.App(
    "navigation.py",
    routes=[Mount(PREFIX, routes=routes(context.current))],
    middleware=[
        Middleware(SecurityHeadersMiddleware),  # outermost: on every answer, even a refusal
        Middleware(LoopbackOnlyMiddleware, enabled=_local_mode),
        Middleware(ApiMiddleware),
    ],
    lifespan=lifespan,
)
