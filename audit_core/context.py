"""The portal's context: settings, engine and mode, built once and handed to every face.

The server's lifespan builds it (`build`) and installs it; the HTTP routes and the workers
are handed it, and the Streamlit pages, which Streamlit runs without arguments, read the
installed one (`current`). Tests build their own from `Settings(...)` and install it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import Engine

from . import evidence, store
from .config import Settings
from .db import make_engine, migrate, refresh_statistics
from .errors import AuditError
from .evidence import Signer
from .query import max_seq

log = logging.getLogger(__name__)
DEMO_RECORDS = 50_000


@dataclass(frozen=True)
class Context:
    settings: Settings
    engine: Engine
    demo: bool  # running on generated demo data
    local_mode: bool = False  # sign-in off: the server is loopback-only, one local admin
    signer: Signer | None = None  # the log's Ed25519 key and origin (evidence.py)


def build(settings: Settings, *, local_mode: bool = False) -> Context:
    """Open and migrate the database; seed demo data only when none is configured and empty."""
    signer = evidence.load_signer(settings)
    engine = make_engine(settings.database_url)
    evidence.attach(engine, signer)
    migrate(engine)
    demo = False
    if not settings.database_configured:
        with engine.connect() as conn:
            empty = max_seq(conn) == 0
        if empty:
            from .demo import generate

            log.info("no database configured: seeding %d demo records", DEMO_RECORDS)
            with engine.begin() as conn:
                store.append(conn, generate(DEMO_RECORDS))
        demo = True
    refresh_statistics(engine)
    return Context(settings, engine, demo, local_mode, signer)


class NoContextError(AuditError):
    """A face asked for the context before the server built it."""


_lock = threading.Lock()
_installed: Context | None = None


def install(ctx: Context | None) -> Context | None:
    """Make ctx the process's context (None removes it); return the one it replaces."""
    global _installed
    with _lock:
        previous, _installed = _installed, ctx
    return previous


def current() -> Context:
    """The installed context; NoContextError before the server (or a test) installed one."""
    ctx = _installed
    if ctx is None:
        raise NoContextError(
            "the portal's context is not built yet: start it with `streamlit run app.py`"
        )
    return ctx
