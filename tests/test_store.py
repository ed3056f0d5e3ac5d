"""Appending records: the chain, duplicate ids, daily counters, the portal's own events."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from audit_core import store
from audit_core.integrity import verify
from audit_core.models import AuditRecord
from audit_core.record import Record, compute_checksum, normalize

from .conftest import add_demo, seed_record


def rec(n: int, **over: str) -> Record:
    return normalize(seed_record(n, **over))


def test_append_links_chain_and_verify_passes(engine: Engine) -> None:
    assert add_demo(engine, 300) == 300
    with engine.connect() as conn:
        result = verify(conn)
    assert result.ok and result.checked == 300


def test_reappending_same_records_adds_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        assert store.append(conn, [rec(1), rec(2)]) == 2
    with engine.begin() as conn:
        assert store.append(conn, [rec(1), rec(2), rec(3)]) == 1


def test_same_id_other_content_is_a_conflict(engine: Engine) -> None:
    with engine.begin() as conn:
        store.append(conn, [rec(1)])
    with pytest.raises(store.RecordConflictError), engine.begin() as conn:
        store.append(conn, [rec(1, user="someone@else.com")])


def test_log_event_continues_the_daily_sequence(engine: Engine) -> None:
    with engine.begin() as conn:
        store.append(conn, [rec(7)])
    from datetime import UTC, datetime

    when = datetime(2026, 3, 1, 12, tzinfo=UTC)
    with engine.begin() as conn:
        event = store.log_event(
            conn,
            action="audit.export",
            user="cli:root",
            role="admin",
            resource="x",
            resource_type="AuditExport",
            namespace="audit-portal",
            when=when,
        )
    assert event.id == "audit-20260301-008"
    assert event.checksum == compute_checksum(event.as_dict())
    with engine.connect() as conn:
        assert verify(conn).ok
        stored = conn.execute(select(AuditRecord.__table__.c.id)).scalars().all()
    assert stored == ["audit-20260301-007", "audit-20260301-008"]
