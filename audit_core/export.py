"""Plan and run one export: snapshot bound, count, metadata, and the chunks of the file."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

from . import fastpath, query
from .filters import AuditFilter
from .formats import (
    csv_chunks,
    export_metadata,
    json_chunks,
    json_from_encoded,
    jsonl_chunks,
    jsonl_from_encoded,
)
from .record import format_instant


@dataclass(frozen=True)
class ExportPlan:
    """Everything that fixes an export's bytes: filter (end resolved), format, snapshot."""

    filter: AuditFilter
    fmt: str
    upto_seq: int
    total: int
    exported_at: datetime


def plan(
    conn: Connection,
    flt: AuditFilter,
    fmt: str,
    *,
    now: datetime | None = None,
    upto_seq: int | None = None,
) -> ExportPlan:
    """Fix the snapshot (highest key now) and 'to' (default now), and count the rows."""
    now = now or datetime.now(UTC)
    if flt.end is None:
        flt = flt.with_end(now)
    seq = query.max_seq(conn) if upto_seq is None else upto_seq
    total = query.count(conn, flt, seq)
    return ExportPlan(flt, fmt, seq, total, now)


def chunks(conn: Connection, p: ExportPlan) -> Generator[bytes, None, None]:
    """Yield the export file's bytes in chunks of thousands of rows."""
    if p.fmt == "csv":
        fast = fastpath.csv_chunks(conn, p.filter, p.upto_seq, p.total)
        if fast is not None:
            yield from fast
            return
        yield from csv_chunks(query.stream(conn, p.filter, p.upto_seq))
        return
    if p.fmt == "jsonl":
        lines = fastpath.jsonl_chunks(conn, p.filter, p.upto_seq, p.total)
        if lines is not None:
            yield from lines
            return
        encoded = fastpath.json_records(conn, p.filter, p.upto_seq, p.total)
        if encoded is not None:
            yield from jsonl_from_encoded(encoded)
        else:
            yield from jsonl_chunks(query.stream(conn, p.filter, p.upto_seq))
        return
    encoded = fastpath.json_records(conn, p.filter, p.upto_seq, p.total)
    assert p.filter.end is not None
    start = p.filter.start
    meta = export_metadata(
        exported_at=format_instant(p.exported_at),
        start=format_instant(start) if start else query.first_timestamp(conn, p.filter, p.upto_seq),
        end=format_instant(p.filter.end),
        total=p.total,
        description=p.filter.describe(),
    )
    if encoded is not None:
        yield from json_from_encoded(encoded, meta)
    else:
        yield from json_chunks(query.stream(conn, p.filter, p.upto_seq), meta)
