"""What pages and routes call: every read and export takes the acting principal.

There is no unscoped path from the UI or the API to the log: each function scopes
the filter to the principal's grants first (access.scope), refuses a namespace
outside them (AccessDeniedError), and refuses exports to roles that may only view.
These functions raise and never write the denial themselves: the face that catches
AccessDeniedError answers it (403, or a message) and records it once with access.denied.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Connection, Engine

from . import access, export, query
from .access import AccessDeniedError, Principal, scope
from .config import Settings
from .filters import AuditFilter

PICKER_COLUMNS = ("action", "user", "namespace")


def count(conn: Connection, who: Principal, flt: AuditFilter) -> int:
    """Count the records the principal may see that match the filter."""
    return query.count(conn, scope(who, flt))


def preview(
    conn: Connection,
    who: Principal,
    flt: AuditFilter,
    *,
    limit: int = 500,
    after: str | None = None,
) -> query.Page:
    """One keyset page of matching records within the principal's grants."""
    return query.preview(conn, scope(who, flt), limit=limit, after=after)


def summary(conn: Connection, who: Principal, flt: AuditFilter) -> query.Summary:
    """Totals and time span of matching records within the principal's grants."""
    return query.summary(conn, scope(who, flt))


def facets(
    conn: Connection, who: Principal, flt: AuditFilter, limit: int = 10
) -> dict[str, list[tuple[str, int]]]:
    """Top values per column among matching records within the principal's grants."""
    return query.facets(conn, scope(who, flt), limit)


def histogram(
    conn: Connection,
    who: Principal,
    flt: AuditFilter,
    *,
    bucket: str = "day",
    by: str = "family",
) -> list[tuple[int, str, int]]:
    """Counts per time bucket within the principal's grants."""
    return query.histogram(conn, scope(who, flt), bucket=bucket, by=by)


def distinct_values(conn: Connection, who: Principal, column: str) -> list[str]:
    """Every value of action, user or namespace the principal may see (for pickers)."""
    if column not in PICKER_COLUMNS:
        raise ValueError(f"no picker for column {column!r}")
    return query.distinct_values(conn, column, scope(who, AuditFilter()))


def namespaces(conn: Connection, who: Principal) -> list[str]:
    """The namespaces the principal may pick: their grants, or every stored one for '*'."""
    if who.namespaces is None:
        return query.distinct_values(conn, "namespace")
    return sorted(who.namespaces)


def plan_export(
    conn: Connection, who: Principal, flt: AuditFilter, fmt: str, *, now: datetime | None = None
) -> export.ExportPlan:
    """Scope, snapshot and count an export; refuse principals who may not export."""
    access.require_export(who)
    return export.plan(conn, scope(who, flt), fmt, now=now)


def check_plan(who: Principal, plan: export.ExportPlan) -> None:
    """Refuse a plan the principal could not have made (another role, wider namespaces)."""
    access.require_export(who)
    if who.namespaces is None:
        return
    wanted = set(plan.filter.namespaces)
    if not wanted or not wanted <= who.namespaces:
        raise AccessDeniedError("this export reaches beyond your namespace grants")


def is_immediate(plan: export.ExportPlan, settings: Settings) -> bool:
    """True when the export is small enough to build on the spot (the seed's 10,000 rule)."""
    return fits_immediate(plan.total, settings)


def fits_immediate(total: int, settings: Settings) -> bool:
    """The seed's rule on a count: at or under AUDIT_SYNC_EXPORT_LIMIT is built on the spot."""
    return total <= settings.sync_export_limit


def export_chunks(
    engine: Engine,
    who: Principal,
    plan: export.ExportPlan,
    settings: Settings,
    *,
    channel: str = "api",
) -> Iterator[bytes]:
    """Stream an immediate export's bytes, writing its audit.export record first.

    The plan is checked against the principal before anything else, so a plan made for
    someone else cannot be replayed. The record is written before the first byte leaves
    (a reader who hangs up half-way has still been recorded), and if it cannot be
    written, nothing is handed out.
    """
    check_plan(who, plan)
    return _stream(engine, who, plan, settings, channel)


def _stream(
    engine: Engine, who: Principal, plan: export.ExportPlan, settings: Settings, channel: str
) -> Iterator[bytes]:
    with engine.connect() as conn:
        chunks = export.chunks(conn, plan)
        try:
            first = next(chunks, None)
            record_export(engine, who, plan, settings, channel=channel)
            if first is not None:
                yield first
            yield from chunks
        finally:
            # A reader who hangs up must not hand a connection with an open COPY or
            # cursor back to the pool: close the source before the connection.
            chunks.close()


def record_export(
    engine: Engine,
    who: Principal,
    plan: export.ExportPlan,
    settings: Settings,
    *,
    channel: str,
) -> None:
    """Write the audit.export record for an export that was handed out."""
    check_plan(who, plan)
    with engine.begin() as conn:
        access.record(
            conn,
            settings.self_namespace,
            who,
            action="audit.export",
            resource=f"{channel} {plan.fmt} {plan.total} rows; {plan.filter.describe()}",
            resource_type="AuditExport",
        )
