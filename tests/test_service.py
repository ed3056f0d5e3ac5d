"""service: nothing outside a principal's grants is reachable; viewers cannot export."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import Engine, func, select

from audit_core import export, service
from audit_core.access import LOCAL_ADMIN, AccessDeniedError, Principal
from audit_core.config import Settings
from audit_core.filters import AuditFilter
from audit_core.models import AuditRecord
from tests.conftest import add_demo

T = AuditRecord.__table__
VIEWER = Principal("vera@example.com", "viewer", frozenset({"staging"}), "10.0.0.1")
AUDITOR = Principal("aldo@example.com", "auditor", frozenset({"payments"}), "10.0.0.2")
PEOPLE = [VIEWER, AUDITOR]
FOREIGN = "production"  # granted to neither


@pytest.fixture
def demo(engine: Engine) -> Engine:
    """An engine holding 600 demo records across a dozen namespaces."""
    add_demo(engine, 600)
    return engine


def audit_count(engine: Engine, action: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(T.c.action == action)).scalar_one())


def own_count(engine: Engine, ns: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(T.c.namespace == ns)).scalar_one())


# Every read a page or the API can make, as (name, call).
READS = {
    "count": lambda c, w, f: service.count(c, w, f),
    "preview": lambda c, w, f: service.preview(c, w, f, limit=50),
    "summary": lambda c, w, f: service.summary(c, w, f),
    "facets": lambda c, w, f: service.facets(c, w, f),
    "histogram": lambda c, w, f: service.histogram(c, w, f, by="namespace"),
}


@pytest.mark.parametrize("who", PEOPLE, ids=["viewer", "auditor"])
@pytest.mark.parametrize("read", list(READS), ids=list(READS))
def test_explicit_foreign_namespace_is_refused(demo: Engine, who: Principal, read: str) -> None:
    flt = AuditFilter.parse(namespace=FOREIGN)
    with demo.connect() as conn, pytest.raises(AccessDeniedError, match=FOREIGN):
        READS[read](conn, who, flt)


@pytest.mark.parametrize("who", PEOPLE, ids=["viewer", "auditor"])
def test_a_list_with_one_foreign_namespace_is_refused_whole(demo: Engine, who: Principal) -> None:
    mine = next(iter(who.namespaces or ()))
    flt = AuditFilter.parse(namespace=f"{mine},{FOREIGN}")
    with demo.connect() as conn, pytest.raises(AccessDeniedError):
        service.count(conn, who, flt)


@pytest.mark.parametrize("who", PEOPLE, ids=["viewer", "auditor"])
def test_no_namespace_means_only_the_granted_one(demo: Engine, who: Principal) -> None:
    mine = next(iter(who.namespaces or ()))
    expected = own_count(demo, mine)
    assert 0 < expected < 600
    flt = AuditFilter()
    with demo.connect() as conn:
        assert service.count(conn, who, flt) == expected
        page = service.preview(conn, who, flt, limit=1000)
        assert {r["namespace"] for r in page.rows} == {mine}
        assert len(page.rows) == expected
        assert service.summary(conn, who, flt).total == expected
        facets = service.facets(conn, who, flt)
        assert [ns for ns, _ in facets["namespace"]] == [mine]
        hist = service.histogram(conn, who, flt, by="namespace")
        assert {ns for _, ns, _ in hist} == {mine}
        assert sum(n for _, _, n in hist) == expected
        assert service.distinct_values(conn, who, "namespace") == [mine]
        assert service.namespaces(conn, who) == [mine]


def test_admin_sees_every_namespace(demo: Engine) -> None:
    with demo.connect() as conn:
        assert service.count(conn, LOCAL_ADMIN, AuditFilter()) == 600
        assert FOREIGN in service.namespaces(conn, LOCAL_ADMIN)


def test_someone_with_no_grants_sees_nothing(demo: Engine) -> None:
    nobody = Principal("n@example.com", "viewer", frozenset(), "")
    with demo.connect() as conn, pytest.raises(AccessDeniedError, match="no namespace grants"):
        service.count(conn, nobody, AuditFilter())


def test_viewer_cannot_plan_an_export(demo: Engine) -> None:
    with demo.connect() as conn, pytest.raises(AccessDeniedError, match="not export"):
        service.plan_export(conn, VIEWER, AuditFilter(), "csv")


def test_auditor_export_holds_only_their_namespace(demo: Engine, settings: Settings) -> None:
    mine = "payments"
    with demo.connect() as conn:
        plan = service.plan_export(conn, AUDITOR, AuditFilter(), "jsonl")
        with pytest.raises(AccessDeniedError):
            service.plan_export(conn, AUDITOR, AuditFilter.parse(namespace=FOREIGN), "csv")
    assert plan.total == own_count(demo, mine)
    lines = b"".join(service.export_chunks(demo, AUDITOR, plan, settings)).splitlines()
    assert len(lines) == plan.total
    assert all(b'"namespace":"payments"' in line for line in lines)


def test_a_plan_cannot_be_replayed_by_someone_with_fewer_rights(
    demo: Engine, settings: Settings
) -> None:
    with demo.connect() as conn:
        wide = service.plan_export(conn, LOCAL_ADMIN, AuditFilter(), "csv")
        forged = export.plan(conn, AuditFilter.parse(namespace=FOREIGN), "csv")
    before = audit_count(demo, "audit.export")
    for who, plan in [(AUDITOR, wide), (AUDITOR, forged), (VIEWER, wide)]:
        with pytest.raises(AccessDeniedError):
            service.export_chunks(demo, who, plan, settings)
        with pytest.raises(AccessDeniedError):
            service.record_export(demo, who, plan, settings, channel="ui")
    assert audit_count(demo, "audit.export") == before


def test_an_export_writes_exactly_one_audit_record(demo: Engine, settings: Settings) -> None:
    who = replace(AUDITOR, source_ip="192.0.2.7")
    with demo.connect() as conn:
        plan = service.plan_export(conn, who, AuditFilter(), "csv")
    before = audit_count(demo, "audit.export")
    body = b"".join(service.export_chunks(demo, who, plan, settings, channel="ui"))
    assert body.startswith(b"id,timestamp,")
    assert audit_count(demo, "audit.export") == before + 1
    with demo.connect() as conn:
        row = conn.execute(select(T).where(T.c.action == "audit.export")).one()
    assert (row.user, row.role, row.sourceIP) == (who.email, "auditor", "192.0.2.7")
    assert row.namespace == settings.self_namespace
    assert row.resourceType == "AuditExport"
    assert "payments" in row.resource and row.resource.startswith("ui csv")


def test_unknown_picker_column_is_refused(demo: Engine) -> None:
    with demo.connect() as conn, pytest.raises(ValueError):
        service.distinct_values(conn, LOCAL_ADMIN, "resource")


def test_a_reader_who_stops_early_has_still_been_recorded(demo: Engine, settings: Settings) -> None:
    with demo.connect() as conn:
        plan = service.plan_export(conn, LOCAL_ADMIN, AuditFilter(), "jsonl")
    stream = service.export_chunks(demo, LOCAL_ADMIN, plan, settings)
    assert audit_count(demo, "audit.export") == 0  # nothing is written before it starts
    first = next(stream)
    assert first.startswith(b'{"id":')
    stream.close()  # type: ignore[attr-defined]
    assert audit_count(demo, "audit.export") == 1
