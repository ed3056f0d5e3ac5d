"""The portal's context: settings, engine and mode, built once and handed to every face.

The server's lifespan builds it (`build`) and installs it; the HTTP routes and the workers
are handed it, and the Streamlit pages, which Streamlit runs without arguments, read the
installed one (`current`). Tests build their own from `Settings(...)` and install it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from . import delivery, evidence, storage, store
from .config import Settings
from .db import make_engine, migrate, refresh_statistics
from .errors import AuditError, ConfigError
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
    """Open and migrate the database; seed demo data only when none is configured and empty.

    A setting the portal cannot use raises ConfigError naming it (the export folder, the
    bucket, the signing key, the database), so each face can say so in one line.
    """
    check_export_dir(settings)
    check_stores(settings)
    signer = evidence.load_signer(settings)
    with database_errors(settings):
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


def check_stores(settings: Settings) -> None:
    """Reach every bucket the settings name (job files, deliveries), or raise ConfigError
    naming the setting: one line at start, not one per job."""
    storage.open_storage(settings).check()
    delivery.check(settings.delivery_to)


def check_export_dir(settings: Settings) -> None:
    """Create the export folder (job files; the default signing key sits beside it) or say why not.

    Checked first: with the folder under a file, the signing key beside it fails too, and
    its message would point at AUDIT_SIGNING_KEY_FILE rather than at the real cause.
    """
    path = settings.export_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"AUDIT_EXPORT_DIR {path}: the folder cannot be created "
            f"({exc.strerror or type(exc).__name__}): point AUDIT_EXPORT_DIR at a folder the "
            "portal may create and write"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"AUDIT_EXPORT_DIR {path}: the folder is not writable: make it writable for the "
            "portal, or point AUDIT_EXPORT_DIR at another folder"
        )


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """Turn a database that cannot be opened or migrated into ConfigError naming the setting.

    The URL is shown without its password; the driver's own first line says what failed
    (a database that does not exist, a refused connection, a rejected password).
    """
    try:
        yield
    except sa_exc.ArgumentError:  # also NoSuchModuleError: not a URL SQLAlchemy can use
        raise ConfigError(
            "AUDIT_DATABASE_URL is not a database URL the portal can use: give one such as "
            "postgresql+psycopg://user@host/dbname or sqlite:///data/audit.db"
        ) from None
    except (sa_exc.OperationalError, sa_exc.InterfaceError, OSError) as exc:
        raise ConfigError(
            f"AUDIT_DATABASE_URL {_named(settings)}: cannot open the database "
            f"({_reason(exc, settings)}): check that the server runs and the database exists "
            "(create it, e.g. with createdb), or correct AUDIT_DATABASE_URL"
        ) from None


def _named(settings: Settings) -> str:
    """The database URL as it may be shown: password hidden; '(the default)' when not set."""
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    return shown if settings.database_configured else f"{shown} (the default)"


def _reason(exc: BaseException, settings: Settings) -> str:
    """The first line of the driver's message (SQLAlchemy appends SQL and a help link)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip() or type(cause).__name__
    line = " ".join(text.splitlines()[0].split())
    try:
        password = make_url(settings.database_url).password
    except sa_exc.ArgumentError:
        password = None
    return line.replace(str(password), "***") if password else line


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
