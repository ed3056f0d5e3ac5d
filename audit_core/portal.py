"""The portal's shared services for pages and routes: engine, settings, start-up."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

from sqlalchemy import Engine

from . import store
from .config import Settings
from .db import make_engine, migrate, refresh_statistics
from .query import max_seq

log = logging.getLogger(__name__)
DEMO_RECORDS = 50_000
_lock = threading.Lock()
_context: Context | None = None


@dataclass(frozen=True)
class Context:
    settings: Settings
    engine: Engine
    demo: bool  # running on generated demo data
    local_mode: bool = False  # sign-in off: the server is loopback-only, one local admin


def context() -> Context:
    """The process's settings and engine, migrated; seeded with demo data only when
    no database is configured and the default one is empty."""
    global _context
    with _lock:
        if _context is None:
            settings = Settings.from_env()
            engine = make_engine(settings.database_url)
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
            _context = Context(settings, engine, demo)
        return _context


def set_local_mode(local: bool) -> Context:
    """Record whether sign-in is off (decided by the server at start-up from its secrets)."""
    global _context
    ctx = context()
    with _lock:
        _context = replace(ctx, local_mode=local)
        return _context


def in_local_mode() -> bool:
    """True once the server has started with sign-in off."""
    ctx = _context
    return ctx is not None and ctx.local_mode


def reset() -> None:
    """Forget the process's context, so the next context() reads AUDIT_* again (tests)."""
    global _context
    with _lock:
        if _context is not None:
            _context.engine.dispose()
        _context = None
