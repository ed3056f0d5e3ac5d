"""Engine set-up: SQLite pragmas, migrations to head, planner statistics."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, inspect, text

from audit_core.db import make_engine, migrate, refresh_statistics

from .conftest import add_demo


def test_sqlite_runs_in_wal_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/new/dir/audit.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_migrations_reach_head_and_are_idempotent(engine: Engine) -> None:
    migrate(engine)  # a second run changes nothing
    tables = set(inspect(engine).get_table_names())
    assert {"audit_records", "chain_head", "export_jobs", "portal_users", "api_tokens"} <= tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM chain_head")).scalar() == 1


def test_statistics_are_gathered_on_sqlite(engine: Engine) -> None:
    add_demo(engine, 200)
    refresh_statistics(engine)  # a no-op on PostgreSQL, whose autovacuum keeps them
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            tables = conn.exec_driver_sql("SELECT DISTINCT tbl FROM sqlite_stat1").scalars().all()
        assert "audit_records" in tables
