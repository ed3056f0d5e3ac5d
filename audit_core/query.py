"""Read the log: count, newest-first preview pages, ordered streams, facets, histograms."""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    union_all,
)

from .errors import BadRequestError
from .filters import AuditFilter
from .models import AUDIT, DAYS, TOTALS, USER_TOTALS
from .record import FIELDS, to_micros
from .store import DAY_US, floor_bucket

T = AUDIT
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


class PageTokenError(BadRequestError):
    """A 'next page' token that was not made by us."""


def _where(flt: AuditFilter, upto_seq: int | None, *, prefix_as_range: bool = True) -> Any:
    clause = flt.clause(T, prefix_as_range=prefix_as_range)
    if upto_seq is not None:
        clause = and_(clause, T.c.seq <= upto_seq)
    return clause


def max_seq(conn: Connection) -> int:
    """The highest record key now: the snapshot bound for an export."""
    return int(conn.execute(select(func.max(T.c.seq))).scalar() or 0)


def _count_stmt(
    flt: AuditFilter, upto_seq: int | None, after_seq: int | None = None
) -> Select[Any]:
    """COUNT(*) of flt among keys (after_seq, upto_seq].

    Without after_seq, a filter on time, action and namespace only is counted from the
    day counts and totals (see _days_count_stmt), a filter on users alone with no start
    from the user totals (_user_count_stmt); other user filters walk the user index. With
    after_seq, only the keys after it are read, through the primary key: the filter is
    applied outside a LIMITed subquery, which SQLite cannot flatten into the filter's index.
    """
    if after_seq is not None:
        assert upto_seq is not None
        return _count_recent(flt, after_seq, max(upto_seq - after_seq, 1), upto_seq)
    days = _whole_days(flt)
    if days is not None:
        return _days_count_stmt(flt, upto_seq, *days)
    if flt.users and replace(flt, users=(), end=None) == AuditFilter():
        return _user_count_stmt(flt, upto_seq)
    return _log_count_stmt(flt, upto_seq)


def _user_count_stmt(flt: AuditFilter, upto_seq: int | None) -> Select[Any]:
    """Exact COUNT(*) of a filter on users alone, with no start: their totals, less their
    rows from its end on and the rows after the snapshot bound (both few: an export's end
    is now), instead of a walk over every index entry the users have (BENCHMARKS.md "Scale").
    """
    whole = select(func.coalesce(func.sum(USER_TOTALS.c.n), 0))
    terms: list[Any] = [whole.where(USER_TOTALS.c.user_lc.in_(flt.users)).scalar_subquery()]
    if flt.end is not None:
        later = _log_count_stmt(replace(flt, end=None), None).where(T.c.ts >= to_micros(flt.end))
        terms.append(-later.scalar_subquery())
    if upto_seq is not None:
        terms.append(-_count_recent(flt, upto_seq, 2**62).scalar_subquery())
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return select(total)


def _log_count_stmt(flt: AuditFilter, upto_seq: int | None) -> Select[Any]:
    """COUNT(*) of flt in the log itself, through the filter's own index.

    The upper bound is written `+seq` so neither engine prefers the primary key to the
    filter's own index (a bare `seq <= n` makes SQLite scan the whole table).
    """
    stmt = select(func.count()).select_from(T)
    if flt != AuditFilter():
        # No WHERE at all when unfiltered: SQLite then counts a whole index b-tree
        # (OP_Count) instead of stepping through `WHERE 1 = 1` row by row.
        stmt = stmt.where(flt.clause(T))
    if upto_seq is not None:
        stmt = stmt.where(literal_column("+audit_records.seq") <= bindparam("upto", upto_seq))
    return stmt


def _count_recent(
    flt: AuditFilter, after_seq: int, limit: int, upto_seq: int | None = None
) -> Select[Any]:
    """COUNT(*) of flt among the keys after after_seq (at most limit of them)."""
    keys = T.c.seq > after_seq
    if upto_seq is not None:
        keys = and_(keys, T.c.seq <= upto_seq)
    recent = (
        select(T.c.seq, T.c.ts, T.c.action, T.c.user_lc, T.c.namespace)
        .where(keys)
        .limit(limit)
        .subquery("recent")
    )
    # The subquery has the table's filter columns under the same names.
    return select(func.count()).select_from(recent).where(flt.clause(cast(Table, recent)))


def _whole_days(flt: AuditFilter) -> tuple[int | None, int | None] | None:
    """The whole UTC days [d0, d1) inside flt's range (None: unbounded on that side).

    None when the day counts cannot answer flt: it names users (the day counts have no
    user; the user index is selective anyway) or its range holds no whole day.
    """
    if flt.users:
        return None
    d0 = None if flt.start is None else -(-to_micros(flt.start) // DAY_US)
    d1 = None if flt.end is None else to_micros(flt.end) // DAY_US
    if d0 is not None and d1 is not None and d0 >= d1:
        return None
    return d0, d1


def _in_days(flt: AuditFilter, d0: int | None, d1: int | None) -> list[Any]:
    """WHERE terms on audit_day_counts: flt's actions and namespaces, days [d0, d1)."""
    terms = [replace(flt, start=None, end=None).clause(DAYS)]
    terms += [DAYS.c.day >= d0] if d0 is not None else []
    terms += [DAYS.c.day < d1] if d1 is not None else []
    return terms


def _edges(flt: AuditFilter, d0: int | None, d1: int | None) -> list[tuple[int, int]]:
    """The partial days of flt's range outside [d0, d1), as [lo, hi) in microseconds."""
    out = []
    if d0 is not None and flt.start is not None and to_micros(flt.start) < d0 * DAY_US:
        out.append((to_micros(flt.start), d0 * DAY_US))
    if d1 is not None and flt.end is not None and d1 * DAY_US < to_micros(flt.end):
        out.append((d1 * DAY_US, to_micros(flt.end)))
    return out


def _days_count_stmt(
    flt: AuditFilter, upto_seq: int | None, d0: int | None, d1: int | None
) -> Select[Any]:
    """Exact COUNT(*) of flt from the day counts plus the partial days at its edges.

    audit_day_counts holds every stored row, kept in the rows' own transaction, so one
    statement sees both in the same state. Its sum over the whole days [d0, d1) with
    flt's actions and namespaces, plus the log's own count of the partial days before d0
    and from d1 on, is the count of flt. With a snapshot bound, the rows after it that
    the day counts already hold (found by primary key) are taken off again.

    Unbounded below, the whole days are audit_totals less the days from d1 on: a sum
    over every day grows with the log's history (BENCHMARKS.md "Scale").
    """
    dims = replace(flt, start=None, end=None)
    if d0 is None:
        whole = select(func.coalesce(func.sum(TOTALS.c.n), 0)).where(dims.clause(TOTALS))
        terms: list[Any] = [whole.scalar_subquery()]
        if d1 is not None:
            later = select(func.coalesce(func.sum(DAYS.c.n), 0)).where(*_in_days(flt, d1, None))
            terms.append(-later.scalar_subquery())
    else:
        day_sum = select(func.coalesce(func.sum(DAYS.c.n), 0)).where(*_in_days(flt, d0, d1))
        terms = [day_sum.scalar_subquery()]
    for lo, hi in _edges(flt, d0, d1):
        edge = _log_count_stmt(dims, upto_seq).where(T.c.ts >= lo, T.c.ts < hi)
        terms.append(edge.scalar_subquery())
    if upto_seq is not None:
        recent = _count_recent(dims, upto_seq, 2**62)
        if d0 is not None:
            recent = recent.where(literal_column("recent.ts") >= d0 * DAY_US)
        if d1 is not None:
            recent = recent.where(literal_column("recent.ts") < d1 * DAY_US)
        terms.append(-recent.scalar_subquery())
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return select(total)


@dataclass(frozen=True)
class _Counted:
    seq: int  # the count covers keys <= seq ...
    chain: str  # ... and the row at seq had this chain hash (so: the same history)
    n: int


_COUNT_CACHE: OrderedDict[tuple[str, AuditFilter], _Counted] = OrderedDict()
_COUNT_CACHE_SIZE = 512
_count_lock = threading.Lock()


def _chain_at(conn: Connection, seq: int) -> str | None:
    return conn.execute(select(T.c.chain).where(T.c.seq == seq)).scalar()


def count(conn: Connection, flt: AuditFilter, upto_seq: int | None = None) -> int:
    """Exact count of matching records (with keys <= upto_seq when given).

    The log is append-only and keys grow in chain order, so the rows with keys <= S are
    fixed once the row at S exists: a count over them stays exact for as long as that
    row still carries the same chain hash (the hash commits to every row before it).
    Counts are therefore remembered per database and filter, and a later count adds
    only the rows appended since, found by primary key. The first count of a filter
    reads the day counts (no users) or walks the filter's index (see _count_stmt).
    """
    db = conn.engine.url
    if db.get_backend_name() == "sqlite" and db.database in (None, "", ":memory:"):
        return int(conn.execute(_count_stmt(flt, upto_seq)).scalar() or 0)
    key = (db.render_as_string(hide_password=True), flt)
    with _count_lock:
        hit = _COUNT_CACHE.get(key)
    if hit is None and upto_seq is None:
        # One statement, one snapshot: the count and the highest key it covers.
        stmt = select(
            _count_stmt(flt, None).scalar_subquery(),
            select(func.max(T.c.seq)).scalar_subquery(),
        )
        n_, head_ = conn.execute(stmt).one()
        n, head = int(n_ or 0), int(head_ or 0)
    else:
        head = max_seq(conn) if upto_seq is None else upto_seq
        if hit is not None and hit.seq <= head and _chain_at(conn, hit.seq) == hit.chain:
            n = hit.n
            if head > hit.seq:
                n += int(conn.execute(_count_stmt(flt, head, hit.seq)).scalar() or 0)
        else:
            n = int(conn.execute(_count_stmt(flt, head)).scalar() or 0)
    chain = hit.chain if hit is not None and hit.seq == head else _chain_at(conn, head)
    if chain is not None:
        with _count_lock:
            _COUNT_CACHE[key] = _Counted(head, chain, n)
            _COUNT_CACHE.move_to_end(key)
            while len(_COUNT_CACHE) > _COUNT_CACHE_SIZE:
                _COUNT_CACHE.popitem(last=False)
    return n


def forget_counts() -> None:
    """Drop every remembered count (for benchmarks that time first counts)."""
    with _count_lock:
        _COUNT_CACHE.clear()


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


def _preview_stmt(
    conn: Connection, flt: AuditFilter, limit: int, after: tuple[int, int] | None
) -> Select[Any]:
    sqlite = conn.dialect.name == "sqlite"
    # On SQLite, LIKE keeps the planner on the timestamp index for newest-first (see bench).
    where = _where(flt, None, prefix_as_range=not sqlite)
    if after:
        ts, seq = after
        where = and_(where, or_(T.c.ts < ts, and_(T.c.ts == ts, T.c.seq < seq)))
    return (
        select(T.c.seq, T.c.ts, *EXPORT_COLUMNS)
        .where(where)
        .order_by(T.c.ts.desc(), T.c.seq.desc())
        .limit(limit + 1)
    )


def preview(
    conn: Connection, flt: AuditFilter, *, limit: int = 500, after: str | None = None
) -> Page:
    """Return the newest `limit` matching records, older than the `after` token if given."""
    key = _decode_token(after) if after else None
    rows = conn.execute(_preview_stmt(conn, flt, limit, key)).all()
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
    stmt = select(*EXPORT_COLUMNS).where(_where(flt, upto_seq)).order_by(T.c.ts, T.c.seq)
    result = conn.execution_options(stream_results=True, max_row_buffer=batch).execute(stmt)
    try:
        for part in result.partitions(batch):
            yield [tuple(r) for r in part]
    finally:
        result.close()


def facets(conn: Connection, flt: AuditFilter, limit: int = 10) -> dict[str, list[tuple[str, int]]]:
    """Top values with counts for action, user (lower-cased) and namespace.

    Users are grouped as the filter matches them, case-insensitively, which also lets
    the count walk the user index; with no filter but an end, they come from the user
    totals (_user_grouped). Actions and namespaces come from the day counts and totals
    when the filter allows (see _grouped).
    """
    where = _where(flt, None)
    out: dict[str, list[tuple[str, int]]] = {}
    for name, col in (("action", T.c.action), ("user", T.c.user_lc), ("namespace", T.c.namespace)):
        if name == "user":
            rows = _user_grouped(conn, flt)
        else:
            rows = _grouped(conn, flt, name, daily=False)
        if rows is None:
            n = func.count().label("n")
            stmt = select(col, n).where(where).group_by(col).order_by(n.desc(), col).limit(limit)
            out[name] = [(str(v), int(c)) for v, c in conn.execute(stmt).all()]
            continue
        totals: dict[str, int] = {}
        for v, c in rows:
            totals[str(v)] = totals.get(str(v), 0) + int(c)
        out[name] = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return out


@dataclass(frozen=True)
class Summary:
    total: int
    users: int
    actions: int
    first: str | None
    last: str | None


def summary(conn: Connection, flt: AuditFilter) -> Summary:
    """Count, distinct users and actions, first and last timestamp.

    One scalar subquery each, so every part walks its own covering index instead of
    all five sharing one pass over the table (about 8x faster at 1M rows on SQLite).
    """
    where = _where(flt, None)

    def scalar(*cols: Any) -> Any:
        return select(*cols).select_from(T).where(where).scalar_subquery()

    row = conn.execute(
        select(
            _count_stmt(flt, None).scalar_subquery(),
            scalar(func.count(T.c.user_lc.distinct())),
            scalar(func.count(T.c.action.distinct())),
        )
    ).one()
    first = last = None
    if row[0]:
        first = first_timestamp(conn, flt)
        last = conn.execute(
            select(T.c.timestamp).where(where).order_by(T.c.ts.desc()).limit(1)
        ).scalar()
    return Summary(int(row[0]), int(row[1]), int(row[2]), first, last)


BUCKETS = {"hour": 3_600_000_000, "day": 86_400_000_000}


def _grouped(conn: Connection, flt: AuditFilter, key: str, *, daily: bool) -> list[Any] | None:
    """Counts of flt per `key` (action or namespace), per UTC day too when daily.

    From the day counts for the whole days and from the log for the partial days at the
    range's edges, in one statement; a value may come in up to three rows (the caller
    adds them). None when the day counts cannot answer flt (see _whole_days).
    """
    days = _whole_days(flt)
    if days is None:
        return None
    d0, d1 = days
    dims = replace(flt, start=None, end=None)
    day_cols = [DAYS.c.day, DAYS.c[key]] if daily else [DAYS.c[key]]
    log_cols = [floor_bucket(T.c.ts, DAY_US), T.c[key]] if daily else [T.c[key]]
    if d0 is None and not daily:  # the totals less the days from d1 on (_days_count_stmt)
        whole = select(TOTALS.c[key], func.sum(TOTALS.c.n)).where(dims.clause(TOTALS))
        parts = [whole.group_by(TOTALS.c[key])]
        if d1 is not None:
            later = select(DAYS.c[key], func.sum(DAYS.c.n) * -1).where(*_in_days(flt, d1, None))
            parts.append(later.group_by(DAYS.c[key]))
    else:
        in_days = _in_days(flt, d0, d1)
        parts = [select(*day_cols, func.sum(DAYS.c.n)).where(*in_days).group_by(*day_cols)]
    for lo, hi in _edges(flt, d0, d1):
        in_edge = and_(dims.clause(T), T.c.ts >= lo, T.c.ts < hi)
        parts.append(select(*log_cols, func.count()).where(in_edge).group_by(*log_cols))
    stmt = union_all(*parts) if len(parts) > 1 else parts[0]
    return list(conn.execute(stmt).all())


def _user_grouped(conn: Connection, flt: AuditFilter) -> list[Any] | None:
    """Counts per user of a filter with nothing but an end: the user totals, less the
    rows from the end on (few when the end is now). None for any other filter."""
    if replace(flt, end=None) != AuditFilter():
        return None
    parts: list[Any] = [select(USER_TOTALS.c.user_lc, USER_TOTALS.c.n)]
    if flt.end is not None:
        later = select(T.c.user_lc, func.count() * -1).where(T.c.ts >= to_micros(flt.end))
        parts.append(later.group_by(T.c.user_lc))
    stmt: Any = union_all(*parts) if len(parts) > 1 else parts[0]
    return list(conn.execute(stmt).all())


def histogram(
    conn: Connection, flt: AuditFilter, *, bucket: str = "day", by: str = "family"
) -> list[tuple[int, str, int]]:
    """Counts per time bucket (start in µs since the epoch) and action family or namespace.

    Daily counts come from the day counts where the filter allows (see _grouped).
    """
    width = BUCKETS[bucket]
    key = "namespace" if by == "namespace" else "action"
    rows = _grouped(conn, flt, key, daily=True) if bucket == "day" else None
    if rows is None:
        b = floor_bucket(T.c.ts, width)
        stmt = select(b, T.c[key], func.count()).where(_where(flt, None)).group_by(b, T.c[key])
        rows = list(conn.execute(stmt).all())
    folded: dict[tuple[int, str], int] = {}
    for bk, value, n in rows:
        name = str(value).split(".", 1)[0] if by == "family" else str(value)
        k = (int(bk) * width, name)
        folded[k] = folded.get(k, 0) + int(n)
    return sorted((b_, k, n) for (b_, k), n in folded.items())


def distinct_values(conn: Connection, column: str, flt: AuditFilter | None = None) -> list[str]:
    """Every distinct value of action, user (lower-cased, read from its index) or namespace."""
    col = {"action": T.c.action, "user": T.c.user_lc, "namespace": T.c.namespace}[column]
    stmt = select(col).distinct().order_by(col)
    if flt is not None:
        stmt = stmt.where(_where(flt, None))
    return [str(v) for v in conn.execute(stmt).scalars()]


def edge_ids(
    conn: Connection, flt: AuditFilter, upto_seq: int | None = None
) -> tuple[str | None, str | None]:
    """The ids of the first and last record an export writes (time, then key order)."""
    where = _where(flt, upto_seq)
    first = conn.execute(select(T.c.id).where(where).order_by(T.c.ts, T.c.seq).limit(1))
    last = conn.execute(
        select(T.c.id).where(where).order_by(T.c.ts.desc(), T.c.seq.desc()).limit(1)
    )
    return first.scalar(), last.scalar()


def first_timestamp(conn: Connection, flt: AuditFilter, upto_seq: int | None = None) -> str | None:
    stmt = select(T.c.timestamp).where(_where(flt, upto_seq)).order_by(T.c.ts, T.c.seq).limit(1)
    return conn.execute(stmt).scalar()


def explain(conn: Connection, flt: AuditFilter) -> list[tuple[str, str]]:
    """The engine's plan for the count and newest-500 statements of flt (for bench/)."""
    out = []
    raw: Any = conn.connection.driver_connection
    statements = (
        ("count", _count_stmt(flt, None)),
        ("newest 500", _preview_stmt(conn, flt, 500, None)),
    )
    for op, stmt in statements:
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        sql = str(compiled)
        params = compiled.params
        if compiled.positiontup is not None:
            params = tuple(params[k] for k in compiled.positiontup)
        if conn.dialect.name == "sqlite":
            rows = raw.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            text = "\n".join(str(r[-1]) for r in rows)
        else:
            with raw.cursor() as cur:
                cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + sql, params)
                text = "\n".join(r[0] for r in cur.fetchall())
        out.append((op, text))
    return out
