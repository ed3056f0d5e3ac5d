"""What pages and routes call: every read and export takes the acting principal.

There is no unscoped path from the UI or the API to the log: each function scopes
the filter to the principal's grants first (access.scope) and audits exports.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Connection, Engine

from . import export, query, store
from .access import AccessDenied, Principal, scope
from .config import Settings
from .filters import AuditFilter


def count(conn: Connection, who: Principal, flt: AuditFilter) -> int:
    return query.count(conn, scope(who, flt))


def preview(
    conn: Connection, who: Principal, flt: AuditFilter, *, limit: int = 500,
    after: str | None = None,
) -> query.Page:
    return query.preview(conn, scope(who, flt), limit=limit, after=after)


def summary(conn: Connection, who: Principal, flt: AuditFilter) -> query.Summary:
    return query.summary(conn, scope(who, flt))


def facets(
    conn: Connection, who: Principal, flt: AuditFilter, limit: int = 10
) -> dict[str, list[tuple[str, int]]]:
    return query.facets(conn, scope(who, flt), limit)


def histogram(
    conn: Connection, who: Principal, flt: AuditFilter, *, bucket: str = "day",
    by: str = "family",
) -> list[tuple[int, str, int]]:
    return query.histogram(conn, scope(who, flt), bucket=bucket, by=by)


def distinct_values(conn: Connection, who: Principal, column: str) -> list[str]:
    values = query.distinct_values(conn, column, scope(who, AuditFilter()))
    return values


def plan_export(
    conn: Connection, who: Principal, flt: AuditFilter, fmt: str, *, now: datetime | None = None
) -> export.ExportPlan:
    """Scope, snapshot and count an export; refuse principals who may not export."""
    if not who.can_export:
        raise AccessDenied("your role may view records but not export them")
    return export.plan(conn, scope(who, flt), fmt, now=now)


def is_immediate(plan: export.ExportPlan, settings: Settings) -> bool:
    """True when the export is small enough to build on the spot (the seed's 10,000 rule)."""
    return plan.total <= settings.sync_export_limit


def export_chunks(
    engine: Engine, who: Principal, plan: export.ExportPlan, settings: Settings,
    *, channel: str = "api",
) -> Iterator[bytes]:
    """Stream an immediate export's bytes, then write the audit.export record."""
    with engine.connect() as conn:
        yield from export.chunks(conn, plan)
    record_export(engine, who, plan, settings, channel=channel)


def record_export(
    engine: Engine, who: Principal, plan: export.ExportPlan, settings: Settings,
    *, channel: str,
) -> None:
    """Write the audit.export record for an export that was handed out."""
    with engine.begin() as conn:
        store.log_event(
            conn,
            action="audit.export",
            user=who.email,
            role=who.role,
            resource=f"{channel} {plan.fmt} {plan.total} rows; {plan.filter.describe()}",
            resource_type="AuditExport",
            namespace=settings.self_namespace,
            source_ip=who.source_ip,
        )
