"""Streaming writers: CSV (seed header, RFC 4180, formula-safe), JSON envelope, JSON Lines."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import orjson

from .record import FIELDS, FREE_TEXT

CSV_HEADER = ",".join(FIELDS) + "\r\n"
FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r", "\n", "'")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "jsonl": "application/x-ndjson",
}
EXTENSIONS = {"csv": "csv", "json": "json", "jsonl": "jsonl"}
# Columns whose values are free text; id, timestamp and checksum have fixed shapes.
_FREE_TEXT = tuple(FIELDS.index(f) for f in FREE_TEXT)

Row = tuple[str, ...]


def neutralise(cell: str) -> str:
    """Prefix a quote to a cell a spreadsheet would run as a formula (OWASP CSV injection)."""
    return "'" + cell if cell.startswith(FORMULA_LEAD) else cell


def restore(cell: str) -> str:
    """Undo neutralise: strip exactly one leading quote."""
    return cell[1:] if cell.startswith("'") else cell


def filename(fmt: str, when: datetime, compression: str = "none", tag: str = "") -> str:
    """The seed's name, audit-export-YYYYMMDD.<ext>, with `tag` (what tells this file from
    the day's others: a job's number, a download's range) after the date when given."""
    stem = f"audit-export-{when:%Y%m%d}" + (f"-{tag}" if tag else "")
    name = f"{stem}.{EXTENSIONS[fmt]}"
    return name + ".gz" if compression == "gzip" else name


def range_tag(start: datetime | None, end: datetime | None) -> str:
    """A file-name part for a time range: 20260301T0000Z-20260319T1600Z (start or end open:
    'start' / 'now')."""
    first = "start" if start is None else f"{start:%Y%m%dT%H%M}Z"
    last = "now" if end is None else f"{end:%Y%m%dT%H%M}Z"
    return f"{first}-{last}"


def _safe_row(row: Row) -> list[str]:
    out = list(row)
    for i in _FREE_TEXT:
        v = out[i]
        if v and v[0] in FORMULA_LEAD:
            out[i] = "'" + v
    return out


def csv_chunks(batches: Iterable[list[Row]], *, header: bool = True) -> Iterator[bytes]:
    """Yield the CSV file: the seed's header, then one chunk per batch of rows."""
    if header:
        yield CSV_HEADER.encode()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for batch in batches:
        writer.writerows(map(_safe_row, batch))
        yield buf.getvalue().encode("utf-8")
        buf.seek(0)
        buf.truncate()


def _encoded(batches: Iterable[list[Row]]) -> Iterator[list[bytes]]:
    for batch in batches:
        yield [orjson.dumps(dict(zip(FIELDS, r, strict=True))) for r in batch]


def jsonl_chunks(batches: Iterable[list[Row]]) -> Iterator[bytes]:
    """Yield JSON Lines: one record object per line."""
    return jsonl_from_encoded(_encoded(batches))


def json_chunks(batches: Iterable[list[Row]], metadata: Mapping[str, Any]) -> Iterator[bytes]:
    """Yield the seed's AuditExport envelope, records streamed one line each."""
    return json_from_encoded(_encoded(batches), metadata)


def jsonl_from_encoded(batches: Iterable[list[bytes]]) -> Iterator[bytes]:
    """JSON Lines from batches of records already encoded as compact JSON objects."""
    for batch in batches:
        if batch:
            yield b"\n".join(batch) + b"\n"


def json_from_encoded(
    batches: Iterable[list[bytes]], metadata: Mapping[str, Any]
) -> Iterator[bytes]:
    """The AuditExport envelope around batches of records already encoded as JSON objects."""
    head = orjson.dumps({"apiVersion": "v1", "kind": "AuditExport", "metadata": metadata})
    yield head[:-1] + b',"records":['
    first = True
    for batch in batches:
        if not batch:
            continue
        body = b",\n".join(batch)
        yield (b"\n" if first else b",\n") + body
        first = False
    yield b"]}\n" if first else b"\n]}\n"


def export_metadata(
    *, exported_at: str, start: str | None, end: str, total: int, description: str
) -> dict[str, Any]:
    """The envelope's metadata in the seed's key order, plus the filter in words."""
    return {
        "exportedAt": exported_at,
        "from": start,
        "to": end,
        "totalRecords": total,
        "format": "json",
        "filter": description,
    }
