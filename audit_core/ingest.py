"""Load records from the seed's JSON envelope, JSON Lines or CSV; all or nothing per file.

Memory stays flat whatever the number of records (BENCHMARKS.md, "Ingest"). The file is
read in blocks and each record is parsed on its own, at most MAX_RECORD_BYTES long;
nesting deeper than MAX_DEPTH is refused where it starts (a 200 KB file of brackets, 100,000
deep, once drove an ijson parse to 23 GB); and an id repeated within a file is found by
the database, which already holds the file's earlier batches inside the ingest's
transaction, rather than by a set of every id in Python.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Connection, Engine

from . import access, store
from .access import Principal
from .config import Settings
from .errors import BadRequestError
from .formats import restore
from .record import CHECKED_FIELDS, FIELDS, FREE_TEXT, Record, RecordError, normalize

FORMATS = ("json", "jsonl", "csv")
BATCH = 5_000
MAX_REPORTED = 20
# The envelope {, its "records" [, a record {, and one level more, which normalize then
# refuses by name ("field ... must be a string"): nothing in the seed's shape is deeper.
MAX_DEPTH = 4
# A record at its field limits (4,000 + 8 x 320 characters), every character escaped as
# \uXXXX, is about 40 KB; the envelope outside "records" has the same bound.
MAX_RECORD_BYTES = 1 << 16
BLOCK = 1 << 20
WS = b" \t\r\n"
BOM = b"\xef\xbb\xbf"
OPEN = b"[{"
LBRACKET, LBRACE = OPEN
PAIRS = {ord("]"): ord("["), ord("}"): ord("{")}
# From a position outside any string: skip non-bracket bytes and whole strings, stop at the
# next bracket (group 1). Possessive, so a string cut by the block's end fails the match
# instead of being read from its middle; the caller then reads the next block.
BRACKET = re.compile(rb'(?:[^"\[\]{}]++|"(?:[^"\\]++|\\.)*+")*+([\[\]{}])', re.S)
STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.S)
ENVELOPE = (
    'the export envelope {"apiVersion":"v1","kind":"AuditExport","metadata":{...},'
    '"records":[...]} or an array of records'
)


class IngestError(BadRequestError):
    """The file was refused whole; `problems` lists (record position, 0 for the file, reason)."""

    def __init__(self, problems: list[tuple[int, str]], total_bad: int) -> None:
        self.problems = problems
        self.total_bad = total_bad
        super().__init__(refusal(problems, total_bad))


def refusal(problems: list[tuple[int, str]], total_bad: int) -> str:
    """The one-line reason a file was refused, naming its first refused record."""
    pos, reason = problems[0]
    where = f"record {pos}: " if pos else ""
    more = f" ({total_bad - 1} more refused)" if total_bad > 1 else ""
    return f"{where}{reason}{more}; nothing was added"


def _refused(reason: str, pos: int = 0) -> IngestError:
    return IngestError([(pos, reason)], 1)


@dataclass
class IngestReport:
    total: int = 0
    new: int = 0
    already_stored: int = 0
    added: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    bad: int = 0
    sha256: str = ""  # hex SHA-256 of the file's bytes


def detect_format(name: str, given: str | None = None) -> str:
    if given:
        if given not in FORMATS:
            raise BadRequestError(f"format must be one of {', '.join(FORMATS)}; got {given!r}")
        return given
    lower = name.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(".csv"):
        return "csv"
    raise BadRequestError(f"cannot tell the format of {name!r}: name it .json, .jsonl or .csv")


# ---------------------------------------------------------------------------- reading


class _Source:
    """The file being read: every byte read is counted and hashed, whoever reads it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.offset = 0

    def _seen(self, data: bytes) -> bytes:
        self.sha.update(data)
        self.offset += len(data)
        return data

    def read(self) -> bytes:
        return self._seen(self.fh.read(BLOCK))

    def readline(self) -> tuple[bytes, bool]:
        """The next line, at most MAX_RECORD_BYTES of it; False when the rest was skipped."""
        line = self._seen(self.fh.readline(MAX_RECORD_BYTES))
        if len(line) < MAX_RECORD_BYTES or line.endswith(b"\n"):
            return line, True
        while rest := self._seen(self.fh.readline(BLOCK)):
            if rest.endswith(b"\n"):
                break
        return line, False

    def digest(self) -> str:
        """Read what is left, then the hex SHA-256 of the whole file."""
        while self.read():
            pass
        return self.sha.hexdigest()


class _Bad:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _too_deep(data: bytes) -> int | None:
    """The index where nesting first goes deeper than MAX_DEPTH, if it does."""
    depth, pos = 0, 0
    while m := BRACKET.match(data, pos):
        pos = m.end()
        depth += 1 if data[pos - 1] in OPEN else -1
        if depth > MAX_DEPTH:
            return pos - 1
    return None


def _deep(at: int) -> str:
    return f"nesting deeper than {MAX_DEPTH} levels at byte {at}; a record is one flat object"


def _json_problem(data: bytes, at: int, exc: orjson.JSONDecodeError) -> str:
    """Say why one record's bytes (starting at byte `at` of the file) are not JSON."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {at + bad.start}"
    deep = _too_deep(data)
    if deep is not None:
        return _deep(at + deep)
    return f"not valid JSON at byte {at + len(text[: exc.pos].encode())}: {exc.msg}"


def _parse(data: bytes, at: int, whole: bool = True) -> Any:
    """One record's JSON, or a _Bad saying why not (with the byte, counted from the file)."""
    if not whole:
        deep = _too_deep(data)
        return _Bad(_deep(at + deep) if deep is not None else _too_long(at))
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return _Bad(_json_problem(data, at, exc))


def _too_long(at: int) -> str:
    return f"longer than {MAX_RECORD_BYTES} bytes (from byte {at})"


def _jsonl(src: _Source) -> Iterator[tuple[int, Any]]:
    n = 0
    while True:
        at = src.offset
        line, whole = src.readline()
        if not line:
            return
        if at == 0 and line.startswith(BOM):
            line, at = line[len(BOM) :], len(BOM)
        if line.strip(WS):
            n += 1
            yield n, _parse(line, at, whole)


class _CsvLines:
    """Lines for csv.reader, decoded one at a time so a bad byte names its record."""

    def __init__(self, src: _Source) -> None:
        self.src = src
        self.n = 0  # the record being read; 0 is the header
        self.start = 0  # the byte where it began

    def begin(self, n: int) -> None:
        self.n, self.start = n, self.src.offset

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        at = self.src.offset
        line, whole = self.src.readline()
        if not line:
            raise StopIteration
        if at == 0 and line.startswith(BOM):
            line = line[len(BOM) :]
        if not whole or self.src.offset - self.start > MAX_RECORD_BYTES:
            raise _refused(_too_long(self.start), self.n)
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            where = "" if self.n else " in the CSV header"
            raise _refused(f"invalid UTF-8 at byte {at + exc.start}{where}", self.n) from None


def _csv(src: _Source) -> Iterator[tuple[int, Any]]:
    lines = _CsvLines(src)
    reader = csv.reader(lines)
    header = _csv_row(reader, lines, 0)
    if header is None:
        raise _refused("the file is empty: a CSV file starts with the header " + ",".join(FIELDS))
    missing = [f for f in CHECKED_FIELDS if f not in header]
    extra = [h for h in header if h not in FIELDS]
    if missing or extra:
        raise _refused(
            "the CSV header must be "
            + ",".join(FIELDS)
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (unknown: {', '.join(extra)})" if extra else "")
        )
    n = 0
    while (row := _csv_row(reader, lines, n + 1)) is not None:
        n += 1
        if len(row) != len(header):
            yield n, _Bad(f"has {len(row)} cells, the header has {len(header)}")
            continue
        rec = dict(zip(header, row, strict=True))
        for f in FREE_TEXT:
            rec[f] = restore(rec[f])
        yield n, rec


def _csv_row(reader: Any, lines: _CsvLines, n: int) -> list[str] | None:
    lines.begin(n)
    try:
        return next(reader, None)
    except csv.Error as exc:
        raise _refused(f"not valid CSV at byte {lines.start}: {exc}", n) from None


class _Json:
    """The records of a .json file, found by its brackets without parsing the file whole.

    Only the brackets outside strings are looked at; each record's bytes are handed to
    orjson alone, and the envelope outside "records" (kept with "records" as []) is
    parsed at its end. Frames on the stack: envelope, records, record, member (a value
    of the envelope other than "records"), nested (inside a record).
    """

    def __init__(self, src: _Source) -> None:
        self.src = src
        self.buf = b""
        self.base = 0  # the file offset of buf[0]
        self.pos = 0  # where the next bracket is looked for
        self.last = 0  # just after the previous bracket: the gap since then is unread
        self.stack: list[tuple[int, str]] = []
        self.env = bytearray()
        self.n = 0  # records seen so far
        self.record_at = 0  # the file offset of the current record
        self.records_seen = False

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        self._start()
        while True:
            m = BRACKET.match(self.buf, self.pos)
            if m is None:
                self._fill()
                continue
            self.pos = m.end()
            item = self._bracket(self.buf[self.pos - 1], self.pos - 1)
            self.last = self.pos
            if item is not None:
                yield item
            if not self.stack:
                self._trailing()
                return

    def _start(self) -> None:
        """Skip a byte-order mark and white space; then an object or an array must open."""
        while not (body := self.buf.removeprefix(BOM).lstrip(WS)):
            if len(self.buf) > MAX_RECORD_BYTES:
                raise _refused(f"more than {MAX_RECORD_BYTES} bytes of white space at the start")
            if not self._more():
                raise _refused(f"the file is empty; a .json file must be {ENVELOPE}")
        self.pos = len(self.buf) - len(body)
        if body[0] not in OPEN:
            raise _refused(f"the top level must be {ENVELOPE}; found {_kind(body)}")

    def _more(self) -> bool:
        data = self.src.read()
        self.buf += data
        return bool(data)

    def _fill(self) -> None:
        """Read the next block, keeping only what is not yet used (bounded in size)."""
        keep = self.record_at - self.base if self._in_record() else self.last
        if len(self.buf) - keep > MAX_RECORD_BYTES:
            at = self.base + keep
            if self._in_record():
                raise _refused(_too_long(at), self.n)
            raise _refused(f"more than {MAX_RECORD_BYTES} bytes without a record from byte {at}")
        data = self.src.read()
        if not data:
            raise self._ended()
        self.buf = self.buf[keep:] + data
        self.base += keep
        self.pos -= keep
        self.last -= keep

    def _ended(self) -> IngestError:
        end = self.src.offset
        if self._in_record():
            return _refused(
                f"the file is not valid JSON: it ends at byte {end}, in this record", self.n
            )
        return _refused(
            f"the file is not valid JSON: it ends at byte {end}, before its last bracket"
        )

    def _in_record(self) -> bool:
        return any(kind == "record" for _, kind in self.stack)

    def _bracket(self, c: int, i: int) -> tuple[int, Any] | None:
        if c in OPEN:
            self._open(c, i)
            return None
        return self._close(c, i)

    def _open(self, c: int, i: int) -> None:
        at = self.base + i
        if len(self.stack) >= MAX_DEPTH:
            raise _refused(_deep(at), self.n if self._in_record() else 0)
        if not self.stack:
            kind = "records" if c == LBRACKET else "envelope"
            self.env += b"{" if kind == "envelope" else b""
        elif (parent := self.stack[-1][1]) == "records":
            kind = self._record(c, i)
        elif parent in ("record", "nested"):
            kind = "nested"
        elif parent == "envelope":
            kind = self._member(c, i)
        else:
            kind = "member"
            self._capture(self.buf[self.last : i + 1], self.base + self.last)
        self.stack.append((c, kind))

    def _record(self, c: int, i: int) -> str:
        self._between(i, closing=False)
        self.n += 1
        self.record_at = self.base + i
        if c == LBRACKET:
            raise _refused(f"a nested array at byte {self.record_at}, not a record object", self.n)
        return "record"

    def _member(self, c: int, i: int) -> str:
        """Open a value of the envelope: "records" (kept out of env as []) or another."""
        at, gap = self.base + i, self.buf[self.last : i]
        key = _last_key(gap)
        if key == "records":
            if self.records_seen:
                raise _refused(f'"records" appears twice (again at byte {at})')
            if c == LBRACE:
                raise _refused(
                    f'"records" must be an array of records; found an object at byte {at}'
                )
            self.records_seen = True
            self._capture(gap + b"[]", self.base + self.last)
            return "records"
        if key is not None and key.lower() == "records":
            raise _refused(
                f"found {_quoted(key)} at byte {at}; the records must be in an array named "
                '"records" (names are case-sensitive)'
            )
        self._capture(gap + bytes([c]), self.base + self.last)
        return "member"

    def _close(self, c: int, i: int) -> tuple[int, Any] | None:
        at = self.base + i
        opened, kind = self.stack.pop()
        if PAIRS[c] != opened:
            msg = f"the file is not valid JSON: {chr(c)!r} at byte {at} closes {chr(opened)!r}"
            raise _refused(msg, self.n if kind in ("record", "nested") else 0)
        if kind == "record":
            start = self.record_at - self.base
            whole = i + 1 - start <= MAX_RECORD_BYTES
            return self.n, _parse(self.buf[start : i + 1], self.record_at, whole)
        if kind == "records":
            self._between(i, closing=True)
        elif kind == "member":
            self._capture(self.buf[self.last : i + 1], self.base + self.last)
        elif kind == "envelope":
            self._capture(self.buf[self.last : i + 1], self.base + self.last)
            self._check_envelope()
        return None

    def _between(self, i: int, *, closing: bool) -> None:
        """Between records only a comma (and white space) may stand."""
        gap = self.buf[self.last : i]
        body = gap.strip(WS)
        if body == (b"," if self.n and not closing else b""):
            return
        if self.n and body.startswith(b","):
            body = body[1:].strip(WS)
        if body:
            at = self.base + self.last + gap.find(body[:1])
            raise _refused(f"not a record object (at byte {at})", self.n + 1)
        what = "a ',' after the last record" if closing else "no ',' between records"
        raise _refused(f"the file is not valid JSON: {what} at byte {self.base + i}")

    def _capture(self, data: bytes, at: int) -> None:
        """Keep a piece of the envelope (outside "records") for its check at the end."""
        try:
            data.decode("utf-8")  # pieces end at brackets, so none splits a character
        except UnicodeDecodeError as exc:
            raise _refused(f"invalid UTF-8 at byte {at + exc.start}") from None
        self.env += data
        if len(self.env) > MAX_RECORD_BYTES:
            raise _refused(
                f'the envelope outside "records" is larger than {MAX_RECORD_BYTES} bytes '
                f"(at byte {at}); a .json file must be {ENVELOPE}"
            )

    def _check_envelope(self) -> None:
        try:
            env = orjson.loads(self.env)
        except orjson.JSONDecodeError as exc:
            raise _refused(f"the file is not valid JSON outside the records: {exc.msg}") from None
        if "records" not in env:
            raise _refused(
                f'the JSON object has no "records" array; a .json file must be {ENVELOPE}'
            )
        if not self.records_seen or env["records"] != []:
            raise _refused('"records" must be an array of records')

    def _trailing(self) -> None:
        rest = self.buf[self.pos :]
        while True:
            body = rest.lstrip(WS)
            if body:
                at = self.src.offset - len(body)
                raise _refused(f"the file is not valid JSON: more after its end at byte {at}")
            if not (rest := self.src.read()):
                return


def _last_key(gap: bytes) -> str | None:
    """The member name just before a bracket: the last string of the gap, then ':'."""
    last = next(iter(deque(STRING.finditer(gap), maxlen=1)), None)
    if last is None or gap[last.end() :].strip(WS) != b":":
        return None
    try:
        key = orjson.loads(last.group())
    except orjson.JSONDecodeError:
        return None
    return key if isinstance(key, str) else None


def _kind(body: bytes) -> str:
    first = body[:1]
    if first == b'"':
        return "a string"
    if first in (b"t", b"f", b"n"):
        return "true, false or null"
    if first.isdigit() or first == b"-":
        return "a number"
    return "something that is not JSON"


def _quoted(text: str) -> str:
    return orjson.dumps(text[:80]).decode()


def _raw(src: _Source, fmt: str) -> Iterator[tuple[int, Any]]:
    """Yield (position, raw record or _Bad); raise IngestError when the file has no shape."""
    if fmt == "jsonl":
        return _jsonl(src)
    if fmt == "json":
        return iter(_Json(src))
    return _csv(src)


def _records(src: _Source, fmt: str) -> Iterator[tuple[int, Record | None, str | None]]:
    """Yield (position, record or None, reason or None) for each record in the file."""
    for pos, raw in _raw(src, fmt):
        if isinstance(raw, _Bad):
            yield pos, None, raw.reason
            continue
        try:
            yield pos, normalize(raw), None
        except RecordError as exc:
            yield pos, None, exc.message


# ---------------------------------------------------------------------------- checking


def _problem(report: IngestReport, pos: int, reason: str) -> None:
    report.bad += 1
    if len(report.problems) < MAX_REPORTED:
        report.problems.append((pos, reason))


def _batches(
    src: _Source,
    fmt: str,
    report: IngestReport,
    progress: Callable[[int], None] | None,
) -> Iterator[list[tuple[int, Record]]]:
    """The file's valid records in batches of BATCH; bad ones are noted as problems.

    A file whose shape cannot be read on (IngestError from the reader) is one problem
    more, and its end.
    """
    batch: list[tuple[int, Record]] = []
    try:
        for pos, rec, reason in _records(src, fmt):
            report.total += 1
            if rec is None:
                _problem(report, pos, reason or "invalid")
            else:
                batch.append((pos, rec))
            if len(batch) >= BATCH:
                yield batch
                batch = []
                if progress:
                    progress(report.total)
    except IngestError as exc:
        _problem(report, *exc.problems[0])
    if batch:
        yield batch
    if progress:
        progress(report.total)


def _new_in(
    conn: Connection, batch: list[tuple[int, Record]], report: IngestReport
) -> list[Record]:
    """The batch's records not stored yet, in order; an id kept with other content is a problem."""
    stored = store.existing_checksums(conn, [r.id for _, r in batch])
    fresh: dict[str, Record] = {}
    for pos, r in batch:
        earlier = fresh.get(r.id)
        prior = stored.get(r.id) or (earlier.checksum if earlier else None)
        if prior is None:
            fresh[r.id] = r
        elif prior == r.checksum:
            report.already_stored += 1
        else:
            where = "stored" if earlier is None else "earlier in the file"
            _problem(report, pos, f"id {r.id} is already {where} with other content")
    report.new += len(fresh)
    return list(fresh.values())


def _check_rest(
    engine: Engine, batches: Iterator[list[tuple[int, Record]]], report: IngestReport
) -> None:
    """Look at each remaining batch against the stored records, reading only."""
    for batch in batches:
        with engine.connect() as conn:
            _new_in(conn, batch, report)


def check(
    engine: Engine,
    opener: Callable[[], IO[bytes]],
    fmt: str,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Validate a file and say what ingesting it would add; changes nothing.

    Reads only: an id repeated in the file more than BATCH records apart counts as new
    here, where ingest() (which sees its own earlier batches) skips or refuses it.
    """
    report = IngestReport()
    with opener() as fh:
        src = _Source(fh)
        _check_rest(engine, _batches(src, fmt, report, progress), report)
        report.sha256 = src.digest()
    report.problems.sort(key=lambda p: p[0])
    return report


# ---------------------------------------------------------------------------- ingesting


def ingest(
    engine: Engine,
    opener: Callable[[], IO[bytes]],
    fmt: str,
    *,
    name: str,
    principal: Principal,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Append a file's new records in one transaction, with its `portal.ingest` record.

    At the first problem (the file's shape, a bad record, an id stored with other
    content) the transaction is rolled back; the rest of the file is only read, to name
    up to MAX_REPORTED refused records; a `portal.ingest.refused` record is written in a
    transaction of its own, and IngestError is raised: nothing from the file is added.
    """
    report = IngestReport()
    with opener() as fh:
        src = _Source(fh)
        batches = _batches(src, fmt, report, progress)
        with engine.begin() as conn:
            if _append(conn, batches, report):
                report.sha256 = src.digest()
                outcome = f"{report.added} added, {report.already_stored} skipped"
                _record(conn, settings, principal, "portal.ingest", name, report.sha256, outcome)
                return report
            conn.rollback()  # nothing from the file stays, and the append lock is released
        report.added = 0
        _check_rest(engine, batches, report)
        report.sha256 = src.digest()
    report.problems.sort(key=lambda p: p[0])  # a batch's conflicts are noted after its reads
    refused = IngestError(report.problems, report.bad)
    record_refusal(engine, name, report.sha256, refused.message, principal, settings)
    raise refused


def _append(
    conn: Connection, batches: Iterator[list[tuple[int, Record]]], report: IngestReport
) -> bool:
    """Append batch by batch while the file has no problem; False at the first one."""
    # Take the append lock first, so no other writer adds an id between a batch's
    # lookup and its insert.
    store.lock_head(conn)
    for batch in batches:
        fresh = _new_in(conn, batch, report)
        if report.bad:
            return False
        if fresh:
            report.added += store.append(conn, fresh)
    return not report.bad


def record_refusal(
    engine: Engine,
    name: str,
    sha256: str,
    reason: str,
    principal: Principal,
    settings: Settings,
) -> None:
    """Write the `portal.ingest.refused` record of a file, in a transaction of its own."""
    with engine.begin() as conn:
        _record(conn, settings, principal, "portal.ingest.refused", name, sha256, reason)


def _record(
    conn: Connection,
    settings: Settings,
    principal: Principal,
    action: str,
    name: str,
    sha256: str,
    outcome: str,
) -> None:
    access.record(
        conn,
        settings.self_namespace,
        principal,
        action=action,
        resource=f"{name}; sha256 {sha256}; {outcome}",
        resource_type="IngestFile",
    )


def opener_for(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: open(path, "rb")  # noqa: SIM115 - the caller closes it
