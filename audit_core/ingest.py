"""Load records from the seed's JSON envelope, JSON Lines or CSV; all or nothing per file."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ijson
import orjson
from sqlalchemy import Engine

from . import store
from .errors import BadRequestError
from .formats import restore
from .record import CHECKED_FIELDS, FIELDS, FREE_TEXT, Record, RecordError, normalize

FORMATS = ("json", "jsonl", "csv")
CHECK_BATCH = 5_000
MAX_REPORTED = 20


class IngestError(BadRequestError):
    """The file was refused whole; `problems` lists (position, reason)."""

    def __init__(self, problems: list[tuple[int, str]], total_bad: int) -> None:
        self.problems = problems
        self.total_bad = total_bad
        pos, reason = problems[0]
        more = f" ({total_bad - 1} more refused)" if total_bad > 1 else ""
        super().__init__(f"record {pos}: {reason}{more}; nothing was added")


@dataclass
class IngestReport:
    total: int = 0
    new: int = 0
    already_stored: int = 0
    added: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    bad: int = 0


def detect_format(name: str, given: str | None = None) -> str:
    if given:
        if given not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {given!r}")
        return given
    lower = name.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(".csv"):
        return "csv"
    raise ValueError(f"cannot tell the format of {name!r}: name it .json, .jsonl or .csv")


def read_raw(fh: IO[bytes], fmt: str) -> Iterator[Any]:
    """Yield the raw record objects of a file, in order, without loading it whole."""
    if fmt == "jsonl":
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield _Bad(f"line {n} is not JSON: {exc}")
    elif fmt == "json":
        start = fh.read(4096).lstrip()
        fh.seek(0)
        path = "records.item" if start.startswith(b"{") else "item"
        try:
            yield from ijson.items(fh, path, use_float=True)
        except ijson.JSONError as exc:
            yield _Bad(f"the file is not valid JSON: {exc}")
    else:
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None:
            return
        missing = [f for f in CHECKED_FIELDS if f not in header]
        extra = [h for h in header if h not in FIELDS]
        if missing or extra:
            yield _Bad(
                "the CSV header must be "
                + ",".join(FIELDS)
                + (f" (missing: {', '.join(missing)})" if missing else "")
                + (f" (unknown: {', '.join(extra)})" if extra else "")
            )
            return
        for row in reader:
            if len(row) != len(header):
                yield _Bad(f"has {len(row)} cells, the header has {len(header)}")
                continue
            rec = dict(zip(header, row, strict=True))
            for f in FREE_TEXT:
                rec[f] = restore(rec[f])
            yield rec


class _Bad:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def records(
    opener: Callable[[], IO[bytes]], fmt: str
) -> Iterator[tuple[int, Record | None, str | None]]:
    """Yield (position, record or None, reason or None) for each record in the file."""
    with opener() as fh:
        for pos, raw in enumerate(read_raw(fh, fmt), 1):
            if isinstance(raw, _Bad):
                yield pos, None, raw.reason
                continue
            try:
                yield pos, normalize(raw), None
            except RecordError as exc:
                yield pos, None, str(exc)


def check(
    engine: Engine,
    opener: Callable[[], IO[bytes]],
    fmt: str,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Validate a file and say what ingesting it would add; changes nothing."""
    report = IngestReport()
    batch: list[tuple[int, Record]] = []
    seen: dict[str, str] = {}

    def flush() -> None:
        if not batch:
            return
        with engine.connect() as conn:
            stored = store.existing_checksums(conn, [r.id for _, r in batch])
        for pos, r in batch:
            prior = stored.get(r.id) or seen.get(r.id)
            if prior is None:
                report.new += 1
                seen[r.id] = r.checksum
            elif prior == r.checksum:
                report.already_stored += 1
            else:
                _problem(report, pos, f"id {r.id} is already stored with other content")
        batch.clear()

    for pos, rec, reason in records(opener, fmt):
        report.total += 1
        if rec is None:
            _problem(report, pos, reason or "invalid")
        else:
            batch.append((pos, rec))
        if len(batch) >= CHECK_BATCH:
            flush()
            if progress:
                progress(report.total)
    flush()
    if progress:
        progress(report.total)
    return report


def _problem(report: IngestReport, pos: int, reason: str) -> None:
    report.bad += 1
    if len(report.problems) < MAX_REPORTED:
        report.problems.append((pos, reason))


def ingest(
    engine: Engine,
    opener: Callable[[], IO[bytes]],
    fmt: str,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Check the whole file, then append its new records in one transaction.

    Raises IngestError, adding nothing, if any record is refused.
    """
    report = check(engine, opener, fmt, progress)
    if report.bad:
        raise IngestError(report.problems, report.bad)
    if report.new:
        with engine.begin() as conn:
            report.added = store.append(
                conn, (rec for _, rec, _ in records(opener, fmt) if rec is not None)
            )
    return report


def opener_for(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: open(path, "rb")  # noqa: SIM115 - the caller closes it
