"""Fixtures: a fresh SQLite file per test, and a PostgreSQL database of our own per session."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from audit_core import context, evidence, signing, store
from audit_core.config import Settings
from audit_core.context import Context
from audit_core.db import make_engine, migrate
from audit_core.demo import generate
from audit_core.models import ExportJob
from audit_core.record import compute_checksum

with warnings.catch_warnings():  # starlette warns that httpx is deprecated for TestClient
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PG_ADMIN_URL = os.environ.get(
    "AUDIT_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
ENGINES = ["sqlite", "postgresql"]
TABLES = (
    "audit_records",
    "audit_day_counts",
    "audit_totals",
    "audit_user_totals",
    "id_counters",
    "export_jobs",
    "portal_users",
    "api_tokens",
    "merkle_nodes",
    "checkpoints",
    "export_manifests",
    "saved_views",
)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """Create a PostgreSQL database for this test session and drop it afterwards."""
    name = f"audit_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """The session's PostgreSQL engine, migrated once."""
    engine = make_engine(pg_url)
    migrate(engine)
    yield engine
    engine.dispose()


def reset(engine: Engine) -> None:
    """Empty every table and reset the chain head."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
        else:
            for t in TABLES:
                conn.execute(text(f"DELETE FROM {t}"))
        conn.execute(
            text(
                "UPDATE chain_head SET last_seq = 0, last_hash = :h, appends = 0, tree_size = 0,"
                " tree_root = NULL, signed_head = NULL, last_manifest = NULL"
            ),
            {"h": "0" * 64},
        )


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for a fresh, migrated, empty database on each engine."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/audit.db"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        return url
    pg: Engine = request.getfixturevalue("pg_engine")
    reset(pg)
    return str(pg.url.render_as_string(hide_password=False))


@pytest.fixture
def engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh, migrated, empty database (SQLite file or PostgreSQL), signing
    with the test's key (the one `settings` names, so the CLI and the portal share it)."""
    eng = make_engine(db_url)
    key = signing.load_or_create_key(tmp_path / "signing.key")
    evidence.attach(eng, evidence.Signer(key, Settings().log_origin))
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at the test database and a temporary export folder."""
    return Settings(
        database_url=db_url,
        database_configured=True,
        export_dir=tmp_path / "exports",
        secret_key="test-secret-key-0123456789abcdef0123456789",
    )


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """Environment variables for a subprocess using the test database."""
    out = dict(os.environ)
    out.update(
        AUDIT_DATABASE_URL=settings.database_url,
        AUDIT_EXPORT_DIR=str(settings.export_dir),
        AUDIT_SECRET_KEY=settings.secret_key,
    )
    return out


def seed_record(n: int, **over: str) -> dict[str, str]:
    """The seed's first example record as the nth of 2026-03-01, with its checksum."""
    r = {
        "id": f"audit-20260301-{n:03d}",
        "timestamp": f"2026-03-01T00:{n % 60:02d}:00Z",
        "action": "runbook.create",
        "user": "admin@empresa.com",
        "role": "admin",
        "resource": "runbook-disk-cleanup",
        "resourceType": "Runbook",
        "namespace": "production",
        "sourceIP": "10.0.1.10",
    }
    r.update(over)
    r["checksum"] = compute_checksum(r)
    return r


def add_demo(engine: Engine, n: int, seed: int = 1) -> int:
    """Append n generated demo records."""
    with engine.begin() as conn:
        return store.append(conn, generate(n, seed=seed))


def finished_job(
    engine: Engine, n: int, fmt: str, rows: int, seconds: float, state: str = "completed"
) -> None:
    """A job row as the worker leaves it: `rows` written in `seconds`, a day ago + n s."""
    start = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=n)
    with engine.begin() as conn:
        conn.execute(
            ExportJob.__table__.insert().values(
                job_id=f"export-20260301-{n:03d}",
                state=state,
                requested_by="ana@empresa.com",
                requested_role="auditor",
                scope="null",
                filter_json="{}",
                filter_text="",
                format=fmt,
                compression="none",
                estimated_records=rows,
                snapshot_seq=0,
                source_ip="",
                created_at=start,
                started_at=start,
                finished_at=start + timedelta(seconds=seconds),
                rows_written=rows,
                attempts=1,
            )
        )


@contextmanager
def installed(settings: Settings) -> Iterator[Context]:
    """Build a context from settings and install it for the faces; restore the old one after."""
    ctx = context.build(settings)
    previous = context.install(ctx)
    try:
        yield ctx
    finally:
        context.install(previous)
        ctx.engine.dispose()


@pytest.fixture(scope="session")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The real app, lifespan run once for the session (on a throwaway SQLite database).

    Here, not in a test module: st.App runs one Streamlit runtime per process, so a second
    session copy of this fixture (a module importing it) would wait for it for ever.
    """
    base = tmp_path_factory.mktemp("api-session")
    mp = pytest.MonkeyPatch()
    mp.setenv("AUDIT_DATABASE_URL", f"sqlite:///{base}/session.db")
    mp.setenv("AUDIT_EXPORT_DIR", str(base / "exports"))
    mp.setenv("AUDIT_SECRET_KEY", "session-secret-0123456789abcdef0123456789")
    from app import app

    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            yield c
    finally:
        mp.undo()
