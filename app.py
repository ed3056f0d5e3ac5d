"""The server: the Streamlit portal, the HTTP API under /api/v1, and the export worker.

`streamlit run app.py` and `uvicorn app:app` both serve it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import streamlit as st
from starlette.middleware import Middleware
from starlette.routing import Mount

from audit_core import access, api, worker
from audit_core.portal import in_local_mode, set_local_mode


@asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[dict[str, Any]]:
    """Open the database (migrating it) and run one export worker for this process."""
    auth = access.auth_configured(st.secrets if st.secrets.load_if_toml_exists() else None)
    access.check_local_mode(st.get_option("server.address"), auth)
    ctx = set_local_mode(not auth)
    running = worker.start_in_process(ctx)
    try:
        yield {}
    finally:
        running.stop()


app = st.App(
    "navigation.py",
    routes=[Mount("/api/v1", routes=api.routes())],
    middleware=[
        Middleware(api.LoopbackOnlyMiddleware, enabled=in_local_mode),
        Middleware(api.ApiMiddleware),
    ],
    lifespan=lifespan,
)
