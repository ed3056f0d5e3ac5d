"""Append records to the log: one writer at a time; rows, chain, day counts and Merkle tree
in one transaction, and the tree head signed anew (evidence.advance_head)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    String,
    bindparam,
    cast,
    delete,
    except_,
    func,
    insert,
    select,
    update,
)

from . import evidence, tree
from .errors import ConflictError
from .models import AUDIT as T
from .models import COUNTERS, DAYS, HEAD, TOTALS, USER_TOTALS
from .record import ID_RE, Record, chain_next, compute_checksum, format_instant, normalize

INSERT_BATCH = 5_000
DAY_US = 86_400_000_000  # one UTC day in the ts unit (microseconds)


class RecordConflictError(ConflictError):
    """An incoming record reuses a stored id with different content."""


def lock_head(conn: Connection) -> tuple[int, str]:
    """Take the append lock (a write to the head row) and return (last_seq, last_hash).

    Writing first makes SQLite take its write lock before reading anything and makes
    PostgreSQL lock the row, so concurrent appenders queue here instead of forking the chain.
    """
    if conn.dialect.update_returning:  # one statement (SQLite 3.35+, PostgreSQL)
        row = conn.execute(_LOCK_RETURNING).one()
    else:
        conn.execute(_LOCK)
        row = conn.execute(select(HEAD.c.last_seq, HEAD.c.last_hash).where(HEAD.c.id == 1)).one()
    return int(row.last_seq), str(row.last_hash)


_LOCK = update(HEAD).where(HEAD.c.id == 1).values(appends=HEAD.c.appends + 1)
_LOCK_RETURNING = _LOCK.returning(HEAD.c.last_seq, HEAD.c.last_hash)


def next_id(conn: Connection, prefix: str) -> str:
    """Return the next daily id for prefix (e.g. 'audit-20260301'); caller holds the lock."""
    last = conn.execute(_COUNTER, {"prefix": prefix}).scalar()
    if last is None:
        conn.execute(insert(COUNTERS).values(prefix=prefix, last=1))
        n = 1
    else:
        n = int(last) + 1
        conn.execute(_RAISE_COUNTER, {"b_prefix": prefix, "b_last": n})
    return f"{prefix}-{n:03d}"


# The statements every audited action runs, built once: building and keying a statement
# cost SQLAlchemy more than SQLite took to run most of them (BENCHMARKS.md "Export paths").
_COUNTER = select(COUNTERS.c.last).where(COUNTERS.c.prefix == bindparam("prefix"))
_RAISE_COUNTER = (
    update(COUNTERS)
    .where(COUNTERS.c.prefix == bindparam("b_prefix"))
    .values(last=bindparam("b_last"))
)
_COUNTERS_IN = select(COUNTERS.c.prefix, COUNTERS.c.last).where(
    COUNTERS.c.prefix.in_(bindparam("prefixes", expanding=True))
)
_CHECKSUMS_IN = select(T.c.id, T.c.checksum).where(T.c.id.in_(bindparam("ids", expanding=True)))
_MAX_SEQ = select(func.max(T.c.seq))
_CHAIN = (
    update(HEAD)
    .where(HEAD.c.id == 1)
    .values(last_seq=bindparam("b_seq"), last_hash=bindparam("b_hash"))
)


def _raise_counters(conn: Connection, records: Sequence[Record]) -> None:
    highest: dict[str, int] = {}
    for r in records:
        m = ID_RE.match(r.id)
        if m:
            prefix = f"audit-{m.group(1)}"
            highest[prefix] = max(highest.get(prefix, 0), int(m.group(2)))
    if not highest:
        return
    rows = conn.execute(_COUNTERS_IN, {"prefixes": list(highest)}).all()
    known = {p: int(last) for p, last in rows}
    for prefix, n in highest.items():
        if prefix not in known:
            conn.execute(insert(COUNTERS).values(prefix=prefix, last=n))
        elif n > known[prefix]:
            conn.execute(update(COUNTERS).where(COUNTERS.c.prefix == prefix).values(last=n))


def existing_checksums(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
    """Map the given ids that are already stored to their checksums.

    On PostgreSQL the ids go in as one array joined to the table: `id IN ($1, ..., $900)`
    is a list of parameters, which the planner cannot hash, and on a table whose
    statistics still say empty (a first ingest, inside its own transaction) it compared
    every row with every id: 424 records/s for a 100k file instead of thousands.
    """
    if conn.dialect.name == "postgresql":
        wanted = (
            func.unnest(cast(list(ids), ARRAY(String))).table_valued("id").render_derived("wanted")
        )
        stmt = select(T.c.id, T.c.checksum).join(wanted, T.c.id == wanted.c.id)
        return {str(i): str(c) for i, c in conn.execute(stmt).all()}
    found: dict[str, str] = {}
    for i in range(0, len(ids), 900):
        chunk = list(ids[i : i + 900])
        found.update(conn.execute(_CHECKSUMS_IN, {"ids": chunk}).all())
    return found


def append(conn: Connection, records: Iterable[Record]) -> int:
    """Append new records in order, skipping ids already stored with the same checksum.

    Runs inside the caller's transaction, which must be the first write in it.
    Raises RecordConflictError when an id is stored with a different checksum.
    """
    return _append_locked(conn, records, lock_head(conn))


def _append_locked(conn: Connection, records: Iterable[Record], locked: tuple[int, str]) -> int:
    """append, the lock taken already in this transaction: `locked` is what it returned."""
    last_seq, last_hash = locked
    head = evidence.read_head(conn)
    size = head.size
    added = 0
    batch: list[Record] = []

    def flush() -> None:
        nonlocal last_seq, last_hash, added, size
        if not batch:
            return
        stored = existing_checksums(conn, [r.id for r in batch])
        rows: list[dict[str, object]] = []
        seen: set[str] = set()
        for r in batch:
            if r.id in stored or r.id in seen:
                if stored.get(r.id, r.checksum) != r.checksum:
                    raise RecordConflictError(f"id {r.id} is already stored with other content")
                continue
            seen.add(r.id)
            last_hash = chain_next(last_hash, r.checksum)
            rows.append(_row(r, last_hash, size + len(rows)))
        if rows:
            conn.execute(insert(T), rows)
            tree.extend(conn, size, [tree.leaf_of(str(r["checksum"])) for r in rows])
            size += len(rows)
            _raise_counters(conn, batch)
            _add_day_counts(conn, rows)
            added += len(rows)
        batch.clear()

    try:
        for record in records:
            batch.append(record)
            if len(batch) >= INSERT_BATCH:
                flush()
        flush()
    except LookupError:  # extending a tree whose stored part is gone: say it as a tamper
        evidence.check_head(conn, head)
        raise
    # The signed head is checked against the tree once the rows are in (still this
    # transaction: a refusal rolls everything back), in one pass with the new root.
    new_root = evidence.check_head(conn, head, size if added else None)
    if added:
        last_seq = conn.execute(_MAX_SEQ).scalar() or 0
        conn.execute(_CHAIN, {"b_seq": last_seq, "b_hash": last_hash})
        evidence.advance_head(conn, size, new_root)
    return added


def _add_day_counts(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add the rows to audit_day_counts, audit_totals and audit_user_totals (same
    transaction as the rows)."""
    days = Counter((int(r["ts"]) // DAY_US, r["namespace"], r["action"]) for r in rows)
    _upsert_counts(conn, DAYS, ("day", "namespace", "action"), days)
    totals = Counter((r["namespace"], r["action"]) for r in rows)
    _upsert_counts(conn, TOTALS, ("namespace", "action"), totals)
    users = Counter((r["user_lc"],) for r in rows)
    _upsert_counts(conn, USER_TOTALS, ("user_lc",), users)


def _upsert_counts(
    conn: Connection, table: Any, keys: tuple[str, ...], counts: Counter[Any]
) -> None:
    stmt = _UPSERTS.get((conn.dialect.name, table.name))
    if stmt is None:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
        base = upsert(table)
        stmt = base.on_conflict_do_update(
            index_elements=[table.c[k] for k in keys], set_={"n": table.c.n + base.excluded.n}
        )
        _UPSERTS[(conn.dialect.name, table.name)] = stmt
    conn.execute(stmt, [{**dict(zip(keys, k, strict=True)), "n": n} for k, n in counts.items()])


_UPSERTS: dict[tuple[str, str], Any] = {}  # (dialect, table): its counts upsert, built once


def floor_bucket(ts: Any, width: int) -> Any:
    """floor(ts / width) in SQL on both engines (integer division truncates toward zero)."""
    return (ts - ((ts % width) + width) % width) // width


def _day_counts_select() -> Any:
    day = floor_bucket(T.c.ts, DAY_US)
    return select(day, T.c.namespace, T.c.action, func.count()).group_by(
        day, T.c.namespace, T.c.action
    )


def _totals_select() -> Any:
    return select(T.c.namespace, T.c.action, func.count()).group_by(T.c.namespace, T.c.action)


def _user_totals_select() -> Any:
    return select(T.c.user_lc, func.count()).group_by(T.c.user_lc)


def day_counts_differ(conn: Connection) -> bool:
    """Whether the day counts or the totals (audit_totals, audit_user_totals) differ from
    the rows, compared in one statement.

    One statement sees one state of all three tables, so appends running meanwhile (the
    portal writes its own events all the time) cannot make them look different.
    """
    pairs = (
        (_day_counts_select(), select(DAYS.c.day, DAYS.c.namespace, DAYS.c.action, DAYS.c.n)),
        (_totals_select(), select(TOTALS.c.namespace, TOTALS.c.action, TOTALS.c.n)),
        (_user_totals_select(), select(USER_TOTALS.c.user_lc, USER_TOTALS.c.n)),
    )
    diffs = [
        select(func.count()).select_from(except_(a, b).subquery()).scalar_subquery()
        for counted, stored in pairs
        for a, b in ((counted, stored), (stored, counted))
    ]
    total: Any = diffs[0]
    for d in diffs[1:]:
        total = total + d
    return bool(conn.execute(select(total)).scalar())


def day_count_totals(conn: Connection) -> tuple[int, int]:
    """(records the day counts account for, records in the log)."""
    counted = conn.execute(select(func.coalesce(func.sum(DAYS.c.n), 0))).scalar_one()
    rows = conn.execute(select(func.count()).select_from(T)).scalar_one()
    return int(counted), int(rows)


def rebuild_day_counts(conn: Connection) -> None:
    """Recompute the day counts and the totals from the rows (after rows were loaded
    around append)."""
    conn.execute(delete(DAYS))
    conn.execute(
        insert(DAYS).from_select(["day", "namespace", "action", "n"], _day_counts_select())
    )
    conn.execute(delete(TOTALS))
    conn.execute(insert(TOTALS).from_select(["namespace", "action", "n"], _totals_select()))
    conn.execute(delete(USER_TOTALS))
    conn.execute(insert(USER_TOTALS).from_select(["user_lc", "n"], _user_totals_select()))


def _row(r: Record, chain: str, leaf: int) -> dict[str, object]:
    return {
        "leaf": leaf,
        "id": r.id,
        "ts": r.ts,
        "timestamp": r.timestamp,
        "action": r.action,
        "user": r.user,
        "user_lc": r.user.lower(),
        "role": r.role,
        "resource": r.resource,
        "resourceType": r.resourceType,
        "namespace": r.namespace,
        "sourceIP": r.sourceIP,
        "checksum": r.checksum,
        "chain": chain,
    }


def log_event(
    conn: Connection,
    *,
    action: str,
    user: str,
    role: str,
    resource: str,
    resource_type: str,
    namespace: str,
    source_ip: str = "",
    when: datetime | None = None,
) -> Record:
    """Write one of the portal's own events into the log, as an ordinary chained record."""
    when = when or datetime.now(UTC)
    locked = lock_head(conn)  # the id counter is read and raised under the lock
    rid = next_id(conn, f"audit-{when:%Y%m%d}")
    fields = {
        "id": rid,
        "timestamp": format_instant(when),
        "action": action,
        "user": user,
        "role": role,
        "resource": resource[:4000],
        "resourceType": resource_type,
        "namespace": namespace,
        "sourceIP": source_ip or "local",
    }
    fields["checksum"] = compute_checksum(fields)
    record = normalize(fields)
    _append_locked(conn, [record], locked)
    return record
