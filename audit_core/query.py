"""Read the log: count, newest-first preview pages, ordered streams, facets, histograms."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select

from .filters import AuditFilter
from .models import AuditRecord
from .record import FIELDS

T = AuditRecord.__table__
EXPORT_COLUMNS = (
    T.c.id,
    T.c.timestamp,
    T.c.action,
    T.c.user,
    T.c.role,
    T.c.resource,
    T.c.resourceType,
    T.c.namespace,
    T.c.sourceIP,
    T.c.checksum,
)
STREAM_BATCH = 5_000
Row = tuple[str, ...]


class PageTokenError(ValueError):
    """A 'next page' token that was not made by us."""


def _where(flt: AuditFilter, upto_seq: int | None, *, prefix_as_range: bool = True) -> Any:
    clause = flt.clause(T, prefix_as_range=prefix_as_range)
    if upto_seq is not None:
        clause = and_(clause, T.c.seq <= upto_seq)
    return clause


def max_seq(conn: Connection) -> int:
    """The highest record key now: the snapshot bound for an export."""
    return int(conn.execute(select(func.max(T.c.seq))).scalar() or 0)


def count(conn: Connection, flt: AuditFilter, upto_seq: int | None = None) -> int:
    """Count matching records (prefixes as index ranges, so the count walks an index)."""
    stmt = select(func.count()).select_from(T).where(_where(flt, upto_seq))
    return int(conn.execute(stmt).scalar() or 0)


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_token: str | None


def _encode_token(ts: int, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{ts}:{seq}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        ts, seq = raw.split(":")
        return int(ts), int(seq)
    except (ValueError, UnicodeDecodeError):
        raise PageTokenError("that page link is not valid; start again from the newest") from None


def preview(
    conn: Connection, flt: AuditFilter, *, limit: int = 500, after: str | None = None
) -> Page:
    """Return the newest `limit` matching records, older than the `after` token if given."""
    sqlite = conn.dialect.name == "sqlite"
    # On SQLite, LIKE keeps the planner on the timestamp index for newest-first (see bench).
    where = _where(flt, None, prefix_as_range=not sqlite)
    if after:
        ts, seq = _decode_token(after)
        where = and_(where, or_(T.c.ts < ts, and_(T.c.ts == ts, T.c.seq < seq)))
    stmt: Select[Any] = (
        select(T.c.seq, T.c.ts, *EXPORT_COLUMNS)
        .where(where)
        .order_by(T.c.ts.desc(), T.c.seq.desc())
        .limit(limit + 1)
    )
    rows = conn.execute(stmt).all()
    more = len(rows) > limit
    rows = rows[:limit]
    out = [dict(zip(FIELDS, r[2:], strict=True)) for r in rows]
    token = _encode_token(rows[-1].ts, rows[-1].seq) if more and rows else None
    return Page(out, token)


def stream(
    conn: Connection,
    flt: AuditFilter,
    upto_seq: int | None = None,
    *,
    batch: int = STREAM_BATCH,
) -> Iterator[list[Row]]:
    """Yield matching records in (timestamp, key) order as lists of export-ordered tuples."""
    stmt = (
        select(*EXPORT_COLUMNS)
        .where(_where(flt, upto_seq))
        .order_by(T.c.ts, T.c.seq)
    )
    result = conn.execution_options(stream_results=True, max_row_buffer=batch).execute(stmt)
    try:
        for part in result.partitions(batch):
            yield [tuple(r) for r in part]
    finally:
        result.close()


def facets(conn: Connection, flt: AuditFilter, limit: int = 10) -> dict[str, list[tuple[str, int]]]:
    """Top values with counts for action, user and namespace."""
    where = _where(flt, None)
    out: dict[str, list[tuple[str, int]]] = {}
    for name, col in (("action", T.c.action), ("user", T.c.user), ("namespace", T.c.namespace)):
        n = func.count().label("n")
        stmt = select(col, n).where(where).group_by(col).order_by(n.desc(), col).limit(limit)
        out[name] = [(str(v), int(c)) for v, c in conn.execute(stmt).all()]
    return out


@dataclass(frozen=True)
class Summary:
    total: int
    users: int
    actions: int
    first: str | None
    last: str | None


def summary(conn: Connection, flt: AuditFilter) -> Summary:
    """Count, distinct users and actions, first and last timestamp."""
    where = _where(flt, None)
    row = conn.execute(
        select(
            func.count(),
            func.count(T.c.user_lc.distinct()),
            func.count(T.c.action.distinct()),
            func.min(T.c.ts),
            func.max(T.c.ts),
        ).where(where)
    ).one()
    first = last = None
    if row[0]:
        first = conn.execute(select(T.c.timestamp).where(where).order_by(T.c.ts).limit(1)).scalar()
        last = conn.execute(
            select(T.c.timestamp).where(where).order_by(T.c.ts.desc()).limit(1)
        ).scalar()
    return Summary(int(row[0]), int(row[1]), int(row[2]), first, last)


BUCKETS = {"hour": 3_600_000_000, "day": 86_400_000_000}


def histogram(
    conn: Connection, flt: AuditFilter, *, bucket: str = "day", by: str = "family"
) -> list[tuple[int, str, int]]:
    """Counts per time bucket (start in µs since the epoch) and action family or namespace."""
    width = BUCKETS[bucket]
    key_col = T.c.namespace if by == "namespace" else T.c.action
    b = T.c.ts // width
    stmt = select(b.label("b"), key_col, func.count()).where(_where(flt, None)).group_by(b, key_col)
    folded: dict[tuple[int, str], int] = {}
    for bk, key, n in conn.execute(stmt).all():
        name = str(key).split(".", 1)[0] if by == "family" else str(key)
        k = (int(bk) * width, name)
        folded[k] = folded.get(k, 0) + int(n)
    return sorted((b_, k, n) for (b_, k), n in folded.items())


def distinct_values(conn: Connection, column: str, flt: AuditFilter | None = None) -> list[str]:
    """Every distinct value of action, user or namespace (for pickers)."""
    col = {"action": T.c.action, "user": T.c.user, "namespace": T.c.namespace}[column]
    stmt = select(col).distinct().order_by(col)
    if flt is not None:
        stmt = stmt.where(_where(flt, None))
    return [str(v) for v in conn.execute(stmt).scalars()]


def first_timestamp(conn: Connection, flt: AuditFilter, upto_seq: int | None = None) -> str | None:
    stmt = select(T.c.timestamp).where(_where(flt, upto_seq)).order_by(T.c.ts, T.c.seq).limit(1)
    return conn.execute(stmt).scalar()
