"""The server: the Streamlit portal, the HTTP API under /api/v1, and the export worker.

`streamlit run app.py` and `uvicorn app:app` both serve it. The lifespan reads the
settings once, builds the context (database migrated, demo data when none is configured)
and hands it to the API routes, the pages and the in-process worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import streamlit as st
from starlette.middleware import Middleware
from starlette.routing import Mount

from audit_core import access, context, worker
from audit_core.config import Settings
from audit_core.http import ApiMiddleware, LoopbackOnlyMiddleware, routes
from audit_core.http.documents import PREFIX


@asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[dict[str, Any]]:
    """Build the context (migrating the database) and run one export worker for this process."""
    auth = access.auth_configured(st.secrets if st.secrets.load_if_toml_exists() else None)
    access.check_local_mode(st.get_option("server.address"), auth)
    ctx = context.build(Settings.from_env(), local_mode=not auth)
    previous = context.install(ctx)
    running = worker.start_in_process(ctx)
    try:
        yield {"context": ctx}
    finally:
        running.stop()
        context.install(previous)
        ctx.engine.dispose()


def _local_mode() -> bool:
    return context.current().local_mode


app = st.App(
    "navigation.py",
    routes=[Mount(PREFIX, routes=routes(context.current))],
    middleware=[
        Middleware(LoopbackOnlyMiddleware, enabled=_local_mode),
        Middleware(ApiMiddleware),
    ],
    lifespan=lifespan,
)
