"""Per-engine fast paths behind one interface; None means 'use the plain path'.

Every fast path must produce exactly the bytes of the plain path (tests/test_fastpath.py
compares them on adversarial values). The plain path is `formats.csv_chunks /
jsonl_chunks / json_chunks` over `query.stream`; the fast paths move the per-cell work
into the database and hand Python one finished line per row:

- SQLite CSV: the SELECT joins each row's raw cells with byte 0xFF into one BLOB; a
  batch without `,` `"`, a CR or LF inside a cell (see controls) or a free-text cell
  that might need neutralising (see leads) is written with one `bytes.replace`, any
  other batch cell by cell.
  Through pysqlite3 (db.sqlite_module) the string building runs on SQLite 3.51.
- SQLite JSON / JSON Lines: `json_object(...)` builds each record with the seed's keys
  in the seed's order; its escaping equals orjson's (`\\"`, `\\\\`, `\\b\\f\\n\\r\\t`,
  other controls as lowercase `\\u00xx`, everything else raw UTF-8).
- PostgreSQL CSV: `COPY (SELECT <plain columns> ...) TO STDOUT (FORMAT csv)`, exactly the
  floor's query: COPY's quoting is Python csv's once empty cells are not its NULL string,
  and a chunk that holds no '"' and no comma followed by a formula lead goes out with
  CRLF row ends as it came (see _pg_csv). Large exports read COPY through asyncpg in
  chunks of rows (_pg_copy_chunks), small ones row by row through libpq (_pg_copy).
- PostgreSQL JSON / JSON Lines: to_json() per cell, read by the same COPY readers; a
  COPY chunk of such rows is JSON Lines as it comes (jsonl_chunks).

Filter values are bound parameters: the WHERE clause is the AuditFilter's SQLAlchemy
clause, compiled for the dialect, with its parameters passed to the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import queue
import re
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, and_, literal_column, select

from .filters import AuditFilter
from .models import AUDIT
from .record import FIELDS, FREE_TEXT

T = AUDIT
BATCH = 5_000
PG_BATCH = 2_000  # COPY rows per yielded chunk


def _q(name: str) -> str:
    return f'"{name}"'


def _sqlite_csv_line(concat: bool) -> str:
    """Raw cells joined by 0xFF, ending in CRLF. 0xFF never occurs in UTF-8 text, so the
    cells split back exactly.

    With `concat` (SQLite 3.44 and later) the line is built by one concat() call, which
    sizes the result once, instead of a chain of `||` that grows it 21 times: 16% fewer
    instructions in SQLite per row (BENCHMARKS.md "Export paths"). Same bytes either way:
    every column is NOT NULL, so concat()'s NULL-as-empty rule never applies. Whether a
    cell needs neutralising is told per batch in Python (leads): the CASE that used to
    mark such rows in SQL was a fifth of SQLite's time per row.
    """
    if concat:
        cells = ", x'ff', ".join(_q(f) for f in FIELDS)
        return f"CAST(concat({cells}, x'0d0a') AS BLOB)"
    cells = " || x'ff' || ".join(_q(f) for f in FIELDS)
    return f"CAST({cells} || x'0d0a' AS BLOB)"


def _sqlite_json_object() -> str:
    pairs = ", ".join(f"'{f}', {_q(f)}" for f in FIELDS)
    return f"CAST(json_object({pairs}) AS BLOB)"


def _pg_copy_columns() -> str:
    """The plain columns: COPY's own CSV writer does all the per-cell work (see _pg_csv)."""
    return ", ".join(_q(f) for f in FIELDS)


def _pg_json_object() -> str:
    """The record as orjson writes it: to_json() escapes exactly as orjson does."""
    parts = []
    for i, f in enumerate(FIELDS):
        key = ("{" if i == 0 else ",") + f'"{f}":'
        parts.append(f"'{key}' || to_json({_q(f)}::text)::text")
    return " || ".join(parts) + " || '}'"


SQLITE_CSV_LINE = _sqlite_csv_line(concat=True)
SQLITE_CSV_LINE_OLD = _sqlite_csv_line(concat=False)  # SQLite before 3.44: no concat()
PG_JSON_OBJECT = _pg_json_object()
SQLITE_JSON_OBJECT = _sqlite_json_object()
PG_COPY_COLUMNS = _pg_copy_columns()


def _where(flt: AuditFilter, upto_seq: int | None) -> Any:
    clause = flt.clause(T)
    if upto_seq is not None:
        clause = and_(clause, T.c.seq <= upto_seq)
    return clause


def _compile(conn: Connection, stmt: Any) -> tuple[str, Any]:
    """SQL text and driver parameters for stmt on this connection's dialect."""
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    if compiled.positiontup is not None:
        return str(compiled), tuple(params[k] for k in compiled.positiontup)
    return str(compiled), params


def _select(columns_sql: str, flt: AuditFilter, upto_seq: int | None) -> Any:
    return (
        select(literal_column(columns_sql))
        .select_from(T)
        .where(_where(flt, upto_seq))
        .order_by(T.c.ts, T.c.seq)
    )


def _sqlite_lines(
    conn: Connection, columns_sql: str, flt: AuditFilter, upto_seq: int | None
) -> Iterator[list[tuple[bytes]]]:
    sql, params = _compile(conn, _select(columns_sql, flt, upto_seq))
    raw = conn.connection.driver_connection
    assert raw is not None
    cur = raw.cursor()
    try:
        cur.execute(sql, params)
        while rows := cur.fetchmany(BATCH):
            yield rows
    finally:
        cur.close()


def _sqlite_csv(conn: Connection, flt: AuditFilter, upto_seq: int | None) -> Iterator[bytes]:
    from .formats import CSV_HEADER

    yield CSV_HEADER.encode()
    chain = itertools.chain.from_iterable
    line = SQLITE_CSV_LINE if _has_concat(conn) else SQLITE_CSV_LINE_OLD
    for rows in _sqlite_lines(conn, line, flt, upto_seq):
        body = b"".join(chain(rows))
        if (
            b"," in body
            or b'"' in body
            or controls(body) != 2 * len(rows)
            or leads(body, len(rows))
        ):
            # Some cell needs quoting or neutralising: do this batch cell by cell.
            yield b"".join([_exact_line(r[0]) for r in rows])
        else:
            yield body.replace(b"\xff", b",")


def controls(data: bytes) -> int:
    """How many bytes of data are at most 0x0D (CR): NUL, tab, LF, CR and the like.

    Every line ends in CRLF, so a batch of n lines with exactly 2n such bytes holds no CR
    or LF inside a cell. numpy counts ~7x faster than two bytes.count calls (which cost
    ~0.17 s per 1M rows, BENCHMARKS.md "Export paths").
    """
    import numpy as np

    return int(np.count_nonzero(np.frombuffer(data, np.uint8) <= 0x0D))


_LEAD = frozenset(b"=+-@\t\r\n'")
_FREE_IDX = tuple(FIELDS.index(f) for f in FREE_TEXT)
# Each free-text cell's place among a row's 0xFF separators: it starts just after the
# separator before it (every free-text field has a field before it and one after it).
_FREE_SEPS = tuple(i - 1 for i in _FREE_IDX)
_IP_COLUMN = FREE_TEXT.index("sourceIP")


def leads(data: bytes, rows: int) -> bool:
    """True when a free-text cell of some line in data might need neutralising.

    data is `rows` lines of 0xFF-separated cells, CRLF-ended, with no CR or LF inside a
    cell (controls). A cell that needs it starts with one of `= + - @ tab CR LF '`, all
    below 'A', so a cheap superset is tested: a cell starting below 'A' (a source address
    may also start with '.' to '<': digits, ':'). An empty cell needs nothing. numpy
    reads the first bytes of all the batch's free-text cells at once (~0.1 s per 1M rows
    against ~0.2 s for the same test as a CASE in SQLite).
    """
    import numpy as np

    a = np.frombuffer(data, np.uint8)
    seps = np.flatnonzero(a == 0xFF)
    if len(seps) != rows * (len(FIELDS) - 1):
        return True  # cells that cannot be told apart: let the exact path decide
    first = a[seps.reshape(rows, -1)[:, _FREE_SEPS] + 1]
    low = first < 0x41
    ip = first[:, _IP_COLUMN]
    low[:, _IP_COLUMN] &= (ip < 0x2E) | (ip >= 0x3D)
    return bool(low.any())


def count_byte(data: bytes, byte: int) -> int:
    """data.count(bytes([byte])), vectorised (numpy): a job's progress counts LFs."""
    import numpy as np

    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == byte))


def _exact_line(line: bytes) -> bytes:
    """One 0xFF-separated row ending in CRLF -> the CSV line formats.csv_chunks writes."""
    cells = line[:-2].split(b"\xff")
    for i in _FREE_IDX:
        c = cells[i]
        if c and c[0] in _LEAD:
            cells[i] = b"'" + c
    for i, c in enumerate(cells):
        if b"," in c or b'"' in c or b"\n" in c or b"\r" in c:
            cells[i] = b'"' + c.replace(b'"', b'""') + b'"'
    return b",".join(cells) + b"\r\n"


def _pg_copy(
    conn: Connection, columns_sql: str, options: str, flt: AuditFilter, upto_seq: int | None
) -> Iterator[list[Any]]:
    """COPY (SELECT ...) TO STDOUT, read straight from libpq: batches of row messages.

    psycopg's Copy object costs a few microseconds per row in Python generators; reading
    the rows with PQgetCopyData directly keeps up with psql. Each message is one row
    ending with LF (libpq hands out whole rows only). Parameters are bound client-side
    by psycopg (ClientCursor.mogrify, libpq's literal escaping): COPY takes no
    server-side parameters.
    """
    import psycopg

    sql, params = _compile(conn, _select(columns_sql, flt, upto_seq))
    raw = conn.connection.driver_connection
    assert raw is not None
    copy_sql = psycopg.ClientCursor(raw).mogrify(
        f"COPY ({sql}) TO STDOUT ({options}, ENCODING 'UTF8')", params
    )
    pgconn = raw.pgconn
    done = False
    # No psycopg lock is held across the yields: a consumer that drops this generator
    # without closing it must not wedge the connection's own rollback (it fails instead,
    # "COPY in progress", and the pool discards the connection).
    pgconn.send_query(copy_sql.encode())
    while pgconn.flush():
        pass
    try:
        res = pgconn.get_result()
        if res is None or res.status != psycopg.pq.ExecStatus.COPY_OUT:
            raise _pg_error(res)
        get = pgconn.get_copy_data
        rows: list[Any] = []
        append = rows.append
        while True:
            nbytes, data = get(0)
            if nbytes < 0:
                break
            append(data)
            if len(rows) >= PG_BATCH:
                yield rows
                rows = []
                append = rows.append
        if rows:
            yield rows
        res = pgconn.get_result()
        if res is None or res.status != psycopg.pq.ExecStatus.COMMAND_OK:
            raise _pg_error(res)
        done = True
    finally:
        with contextlib.suppress(Exception):  # best effort: the connection may be gone
            if not done:
                # Stopped early (consumer gone) or failed: cancel and drain the COPY.
                with contextlib.suppress(Exception):
                    raw.cancel_safe()
                while True:
                    nbytes, _ = pgconn.get_copy_data(0)
                    if nbytes < 0:
                        break
            while pgconn.get_result() is not None:
                pass


# COPY's NULL string: the columns are NOT NULL, and with any NULL string but '' COPY writes
# an empty cell as nothing, as Python's csv does ('' would make it write "").
_PG_CSV_OPTIONS = "FORMAT csv, NULL E'\\x01'"
# A free-text cell that starts with a formula lead follows a comma (id comes first and is
# never neutralised); a cell starting with CR or LF is quoted, so it holds '"'.
_PG_LEAD = re.compile(rb",[=+\-@\t']")


def _pg_csv(
    conn: Connection, flt: AuditFilter, upto_seq: int | None, rows: int | None
) -> Iterator[bytes]:
    """CSV by COPY of the plain columns: no per-cell work on the server.

    COPY's CSV writer quotes exactly the cells Python's csv quotes (a `,` `"` CR or LF)
    once empty cells are not its NULL string. A chunk of whole rows with no '"' has no
    quoted cell, so every LF is a row end; with no comma followed by a formula lead
    either, no cell needs neutralising, and the chunk goes out with CRLF row ends as it
    came. Any other chunk is parsed and written again by the plain path's writer
    (formats.csv_chunks).
    """
    from .formats import CSV_HEADER, csv_chunks

    yield CSV_HEADER.encode()
    chunks = _pg_copy_chunks(conn, PG_COPY_COLUMNS, flt, upto_seq) if _chunked(rows) else None
    if chunks is None:  # small, or no asyncpg: libpq's rows, batched
        chunks = (
            b"".join(rows)
            for rows in _pg_copy(conn, PG_COPY_COLUMNS, _PG_CSV_OPTIONS, flt, upto_seq)
        )
    for chunk in chunks:
        if b'"' not in chunk and _PG_LEAD.search(chunk) is None:
            yield chunk.replace(b"\n", b"\r\n")
        else:
            cells = csv.reader(io.StringIO(chunk.decode(), newline=""))
            yield from csv_chunks([[tuple(r) for r in cells]], header=False)


# Below this many rows the libpq path wins: asyncpg's own connection and thread cost
# ~10 ms (1,600 rows: 4 ms by libpq, 14 ms by asyncpg; 41k rows: 89 ms / 81 ms; 10M rows:
# 15.3 s / 16.5 s whole process, BENCHMARKS.md).
CHUNKED_MIN_ROWS = 30_000


def _chunked(rows: int | None) -> bool:
    return rows is None or rows >= CHUNKED_MIN_ROWS


class _ConsumerGoneError(Exception):
    """The consumer of a COPY went away."""


def _pg_copy_chunks(
    conn: Connection,
    columns_sql: str,
    flt: AuditFilter,
    upto_seq: int | None,
    options: dict[str, str] | None = None,
) -> Iterator[bytes] | None:
    """COPY (SELECT ...) TO STDOUT (FORMAT csv) read by asyncpg, in chunks of whole rows.

    libpq hands out one row per call, which costs Python about a microsecond a row
    (more than the server spends writing it); asyncpg's protocol joins all the row
    messages in its read buffer into one chunk (~64 KB). It runs on its own connection
    and event loop in a thread, behind a small queue (so memory stays flat): the rows
    are fixed by the snapshot bound, so another connection sees exactly the same rows.
    None when asyncpg is not installed.
    """
    try:
        import asyncpg
    except ImportError:
        return None
    import psycopg

    sql, params = _compile(conn, _select(columns_sql, flt, upto_seq))
    raw = conn.connection.driver_connection
    assert raw is not None
    select_sql = psycopg.ClientCursor(raw).mogrify(sql, params)
    dsn = conn.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return _threaded_copy(asyncpg, dsn, select_sql, options or {"null": "\x01"})


def _threaded_copy(
    asyncpg: Any, dsn: str, select_sql: str, options: dict[str, str]
) -> Iterator[bytes]:
    chunks: queue.Queue[Any] = queue.Queue(maxsize=4)
    stop = threading.Event()
    done = object()

    async def copy() -> None:
        pg = await asyncpg.connect(dsn)
        try:

            async def sink(data: bytes) -> None:
                if data[-1:] != b"\n":
                    raise RuntimeError("COPY data did not end at a row end")
                while not stop.is_set():
                    try:
                        chunks.put(bytes(data), timeout=0.2)
                        return
                    except queue.Full:
                        continue
                raise _ConsumerGoneError

            await pg.copy_from_query(select_sql, output=sink, format="csv", **options)
        finally:
            if stop.is_set():
                pg.terminate()  # mid-COPY: drop the connection rather than drain it
            else:
                await pg.close()

    def run() -> None:
        try:
            asyncio.run(copy())
            item: Any = done
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
            item = exc
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=run, name="pg-copy", daemon=True)
    thread.start()
    try:
        while (item := chunks.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)


def _pg_json(
    conn: Connection, flt: AuditFilter, upto_seq: int | None, rows: int | None
) -> Iterator[list[bytes]]:
    for chunk in _pg_jsonl(conn, flt, upto_seq, rows):
        yield chunk[:-1].split(b"\n")


def _pg_jsonl(
    conn: Connection, flt: AuditFilter, upto_seq: int | None, rows: int | None
) -> Iterator[bytes]:
    # JSON text never holds a raw control character, so with \x01 / \x02 as delimiter and
    # quote COPY's CSV writer passes each object through untouched, plus LF: each chunk
    # of rows is JSON Lines already.
    chunks = None
    if _chunked(rows):
        options = {"delimiter": "\x01", "quote": "\x02"}
        chunks = _pg_copy_chunks(conn, PG_JSON_OBJECT, flt, upto_seq, options)
    if chunks is not None:
        yield from chunks
        return
    libpq_options = "FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02'"
    for batch in _pg_copy(conn, PG_JSON_OBJECT, libpq_options, flt, upto_seq):
        yield b"".join(batch)


def _pg_error(res: Any) -> Exception:
    import psycopg

    if res is None:
        return psycopg.OperationalError("COPY returned no result")
    message = res.error_message.decode(errors="replace")
    state = res.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
    cls = psycopg.errors.lookup(state.decode()) if state else psycopg.DatabaseError
    return cls(message)


def csv_chunks(
    conn: Connection, flt: AuditFilter, upto_seq: int, rows: int | None = None
) -> Iterator[bytes] | None:
    """A faster CSV writer for this engine (header included), or None.

    rows is the planned row count, if known (it picks PostgreSQL's reader).
    """
    name = conn.dialect.name
    if name == "sqlite":
        return _sqlite_csv(conn, flt, upto_seq)
    if name == "postgresql" and conn.dialect.driver == "psycopg":
        return _pg_csv(conn, flt, upto_seq, rows)
    return None


def _has_concat(conn: Connection) -> bool:
    return bool(getattr(conn.dialect.dbapi, "sqlite_version_info", (0,)) >= (3, 44))


def jsonl_chunks(
    conn: Connection, flt: AuditFilter, upto_seq: int, rows: int | None = None
) -> Iterator[bytes] | None:
    """JSON Lines in finished chunks, or None (use json_records).

    PostgreSQL only: its COPY chunks already are JSON Lines (one object per row, LF after
    each), passed on as they come. (On SQLite, building the LF into each line in SQL
    cost 1-6% more instructions per row than joining in Python: BENCHMARKS.md.)
    """
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        return _pg_jsonl(conn, flt, upto_seq, rows)
    return None


def json_records(
    conn: Connection, flt: AuditFilter, upto_seq: int, rows: int | None = None
) -> Iterator[list[bytes]] | None:
    """Batches of records already encoded as compact JSON objects (orjson's bytes), or None."""
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        return _pg_json(conn, flt, upto_seq, rows)
    if conn.dialect.name != "sqlite":
        return None
    chain = itertools.chain.from_iterable
    return (list(chain(rows)) for rows in _sqlite_lines(conn, SQLITE_JSON_OBJECT, flt, upto_seq))
