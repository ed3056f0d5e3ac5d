"""The fast export paths give exactly the plain path's bytes, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from audit_core import export, fastpath, formats, query, store
from audit_core.filters import AuditFilter
from audit_core.models import AUDIT
from audit_core.record import FIELDS, FREE_TEXT, compute_checksum, normalize
from tests.conftest import add_demo

# Values that stress CSV quoting, formula neutralisation and JSON escaping.
NASTY = [
    "",
    "plain",
    "a,b",
    'say "hi"',
    '"',
    '""',
    '","',
    "line1\nline2",
    "cr\rcr",
    "crlf\r\n",
    "\n",
    "\r",
    "=1+2",
    '=HYPERLINK("http://x","y")',
    "+x",
    "-x",
    "-",
    "@x",
    "\tx",
    "\rx",
    "\nx",
    "'x",
    "''",
    "x'",
    " =x",
    "ünïcødé ✓ 日本語 🙂",
    'é,"\n',
    "\u2028\u2029\u0085\ufeff",
    "back\\slash\\",
    "\\N",
    "\\.",
    "NULL",
    "null",
    "ctrl\x01\x02\x1b\x1f\x7f",
    "\x08\x0c\x0b",
    '},{"a":1}',
    "a;b|c",
    "trailing space ",
    " ",
    '=",\r\n',
    "x" * 60 + ",",
    "\x01",  # PostgreSQL COPY's NULL string in the fast path: such a cell comes quoted
    "x,=y",  # a comma then a formula lead inside a cell: not a cell start
]
REQUIRED = ("action", "user", "namespace")
NOW = datetime(2026, 3, 2, tzinfo=UTC)


def nasty_records() -> list:
    out = []
    for i, v in enumerate(NASTY):
        fields = {
            "id": f"audit-20260301-{i + 1:03d}",
            # several records share one timestamp so (timestamp, key) ordering matters
            "timestamp": f"2026-03-01T00:{i // 3:02d}:00Z",
        }
        for f in FIELDS[2:-1]:
            fields[f] = v if (f not in REQUIRED or v.strip()) else f"x{v}"
        fields["resource"] = (v + str(i)) * (20 if i % 5 == 0 else 1)
        fields["checksum"] = compute_checksum(fields)
        out.append(normalize(fields))
    return out


@pytest.fixture
def nasty(engine: Engine) -> Engine:
    with engine.begin() as conn:
        store.append(conn, nasty_records())
    add_demo(engine, 300, seed=3)
    return engine


FILTERS = [
    AuditFilter(),
    AuditFilter.parse(namespace="payments,xplain"),
    AuditFilter.parse(action="runbook.*"),
    AuditFilter.parse(action="user.*,=1+2,a,b"),
    AuditFilter.parse(user="ADMIN@empresa.com,plain"),
    AuditFilter.parse(start="2026-03-01T00:03:00Z", end="2026-03-01T00:09:00Z"),
    AuditFilter.parse(namespace="nothing-here"),
]


def plain_csv(conn, flt, upto):
    return b"".join(formats.csv_chunks(query.stream(conn, flt, upto)))


def plain_jsonl(conn, flt, upto):
    return b"".join(formats.jsonl_chunks(query.stream(conn, flt, upto)))


def test_engine_has_a_fast_csv_path(engine: Engine) -> None:
    with engine.connect() as conn:
        assert fastpath.csv_chunks(conn, AuditFilter(), 0) is not None


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: f.describe())
def test_fast_csv_is_byte_identical(nasty: Engine, flt: AuditFilter) -> None:
    with nasty.connect() as conn:
        upto = query.max_seq(conn)
        fast = fastpath.csv_chunks(conn, flt, upto)
        assert fast is not None
        got = b"".join(fast)
        want = plain_csv(conn, flt, upto)
    assert got == want
    assert got.startswith(formats.CSV_HEADER.encode())


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: f.describe())
def test_fast_json_records_are_byte_identical(nasty: Engine, flt: AuditFilter) -> None:
    with nasty.connect() as conn:
        upto = query.max_seq(conn)
        enc = fastpath.json_records(conn, flt, upto)
        if enc is None:
            pytest.skip(f"no fast JSON path on {nasty.dialect.name}")
        got = b"".join(formats.jsonl_from_encoded(enc))
        want = plain_jsonl(conn, flt, upto)
    assert got == want


def test_every_nasty_value_survives_the_fast_csv(nasty: Engine) -> None:
    """The fast CSV parses back (csv module) to the neutralised values, in order."""
    import csv
    import io

    with nasty.connect() as conn:
        fast = fastpath.csv_chunks(conn, AuditFilter(), query.max_seq(conn))
        assert fast is not None
        text = b"".join(fast).decode()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert tuple(rows[0]) == FIELDS
    by_id = {r[0]: r for r in rows[1:]}
    for i, v in enumerate(NASTY):
        row = by_id[f"audit-20260301-{i + 1:03d}"]
        assert formats.restore(row[FIELDS.index("role")]) == v
        assert row[FIELDS.index("role")] == formats.neutralise(v)


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
@pytest.mark.parametrize("flt", FILTERS[:3], ids=lambda f: f.describe())
def test_export_chunks_equal_the_plain_writers(nasty: Engine, fmt: str, flt: AuditFilter) -> None:
    """export.chunks (which routes to the fast paths) against the plain writers."""
    with nasty.connect() as conn:
        p = export.plan(conn, flt, fmt, now=NOW)
        got = b"".join(export.chunks(conn, p))
        batches = query.stream(conn, p.filter, p.upto_seq)
        if fmt == "csv":
            want = b"".join(formats.csv_chunks(batches))
        elif fmt == "jsonl":
            want = b"".join(formats.jsonl_chunks(batches))
        else:
            start = p.filter.start
            meta = formats.export_metadata(
                exported_at="2026-03-02T00:00:00Z",
                start=query.first_timestamp(conn, p.filter, p.upto_seq) if not start else None,
                end="2026-03-02T00:00:00Z",
                total=p.total,
                description=p.filter.describe(),
            )
            want = b"".join(formats.json_chunks(batches, meta))
    assert got == want


def test_snapshot_bound_is_respected(nasty: Engine) -> None:
    """Rows appended after the plan's snapshot are not in the fast output."""
    with nasty.connect() as conn:
        upto = query.max_seq(conn)
    later = []
    for i in range(50):
        fields = {
            "id": f"audit-20260302-{i + 1:03d}",
            "timestamp": "2026-03-01T00:05:00Z",
            "action": "late.add",
            "user": "u@x",
            "role": "r",
            "resource": f"=r{i}",
            "resourceType": "T",
            "namespace": "payments",
            "sourceIP": "::1",
        }
        fields["checksum"] = compute_checksum(fields)
        later.append(normalize(fields))
    with nasty.begin() as conn:
        store.append(conn, later)
    with nasty.connect() as conn:
        fast = fastpath.csv_chunks(conn, AuditFilter(), upto)
        assert fast is not None
        got = b"".join(fast)
        assert got == plain_csv(conn, AuditFilter(), upto)
        assert got != plain_csv(conn, AuditFilter(), None)


ALPHABET = [*",\"\r\n\t=+-@' ;|\\/.:", "é", "日", "🙂", "\u2028", "\x01", "\x7f", *"abcXYZ019"]


def random_records(n: int, seed: int) -> list:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        fields = {
            "id": f"audit-20260305-{i + 1:04d}",
            "timestamp": f"2026-03-05T{rng.randint(0, 2):02d}:00:00Z",
        }
        for f in FIELDS[2:-1]:
            v = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 6)))
            if f in REQUIRED and not v.strip():
                v = "r" + v
            fields[f] = v
        fields["checksum"] = compute_checksum(fields)
        out.append(normalize(fields))
    return out


def test_random_values_are_byte_identical(engine: Engine) -> None:
    """Randomised cells from an alphabet of specials, in batches big and small."""
    with engine.begin() as conn:
        store.append(conn, random_records(3000, seed=11))
    with engine.connect() as conn:
        upto = query.max_seq(conn)
        for flt in (AuditFilter(), AuditFilter.parse(start="2026-03-05T01:00:00Z")):
            fast = fastpath.csv_chunks(conn, flt, upto)
            assert fast is not None
            assert b"".join(fast) == plain_csv(conn, flt, upto)
            enc = fastpath.json_records(conn, flt, upto)
            if enc is not None:
                assert b"".join(formats.jsonl_from_encoded(enc)) == plain_jsonl(conn, flt, upto)


def test_nul_characters_on_sqlite(tmp_path) -> None:
    """SQLite stores NUL inside text (PostgreSQL refuses it): still byte-identical."""
    from audit_core.db import make_engine, migrate

    eng = make_engine(f"sqlite:///{tmp_path}/nul.db")
    migrate(eng)
    recs = []
    for i, v in enumerate(["a\x00b", "\x00", "=\x00,", "\x00=", 'x\x00"y']):
        fields = {
            "id": f"audit-20260301-{i + 1:03d}",
            "timestamp": "2026-03-01T00:00:00Z",
            "action": "a" + v,
            "user": "u" + v,
            "role": v,
            "resource": v,
            "resourceType": v,
            "namespace": "n" + v,
            "sourceIP": v,
        }
        fields["checksum"] = compute_checksum(fields)
        recs.append(normalize(fields))
    with eng.begin() as conn:
        store.append(conn, recs)
    with eng.connect() as conn:
        upto = query.max_seq(conn)
        fast = fastpath.csv_chunks(conn, AuditFilter(), upto)
        assert fast is not None
        assert b"".join(fast) == plain_csv(conn, AuditFilter(), upto)
        enc = fastpath.json_records(conn, AuditFilter(), upto)
        assert enc is not None
        got = b"".join(formats.jsonl_from_encoded(enc))
        assert got == plain_jsonl(conn, AuditFilter(), upto)
    eng.dispose()


def test_stopping_early_leaves_the_connection_usable(engine: Engine) -> None:
    """A consumer that goes away mid-export (closed download) must not wedge the connection."""
    add_demo(engine, 20000, seed=5)
    with engine.connect() as conn:
        upto = query.max_seq(conn)
        fast = fastpath.csv_chunks(conn, AuditFilter(), upto)
        assert fast is not None
        it = iter(fast)
        next(it)  # header
        next(it)  # first rows
        it.close()  # type: ignore[attr-defined]
        # On PostgreSQL the COPY was cancelled, which ends the transaction as any
        # failed statement does; the caller rolls back and goes on.
        conn.rollback()
        assert query.max_seq(conn) == upto
        again = fastpath.csv_chunks(conn, AuditFilter(), upto)
        assert again is not None
        assert b"".join(again) == plain_csv(conn, AuditFilter(), upto)


@pytest.mark.parametrize("libpq", [False, True], ids=["default", "libpq"])
def test_small_batches(engine: Engine, monkeypatch, libpq: bool) -> None:
    """Many small batches (clean and dirty ones mixed): still the same bytes.

    With libpq, PostgreSQL reads COPY row by row, as it does where asyncpg is missing.
    """
    if libpq:
        if engine.dialect.name != "postgresql":
            pytest.skip("libpq's reader is PostgreSQL's")
        monkeypatch.setattr(fastpath, "_pg_copy_chunks", lambda *args: None)
    monkeypatch.setattr(fastpath, "BATCH", 37)
    monkeypatch.setattr(fastpath, "PG_BATCH", 29)
    with engine.begin() as conn:
        store.append(conn, nasty_records() + random_records(800, seed=12))
    add_demo(engine, 500, seed=13)
    with engine.connect() as conn:
        upto = query.max_seq(conn)
        for flt in FILTERS:
            fast = fastpath.csv_chunks(conn, flt, upto)
            assert fast is not None
            assert b"".join(fast) == plain_csv(conn, flt, upto), flt.describe()
            enc = fastpath.json_records(conn, flt, upto)
            if enc is not None:
                got = b"".join(formats.jsonl_from_encoded(enc))
                assert got == plain_jsonl(conn, flt, upto), flt.describe()


def test_clean_and_dirty_chunks_mixed(engine: Engine) -> None:
    """Enough rows for many COPY chunks, nasty ones amid them in time: the same bytes."""
    add_demo(engine, 30000, seed=14)
    with engine.connect() as conn:
        stamps = conn.execute(select(AUDIT.c.timestamp).order_by(AUDIT.c.ts)).scalars().all()
    middle = []
    for i, r in enumerate(nasty_records()):
        fields = {f: getattr(r, f) for f in FIELDS if f != "checksum"}
        fields["id"] = f"audit-20000101-{i + 1:03d}"
        fields["timestamp"] = stamps[len(stamps) // 2 + i * 300]
        fields["checksum"] = compute_checksum(fields)
        middle.append(normalize(fields))
    with engine.begin() as conn:
        store.append(conn, middle)
    with engine.connect() as conn:
        upto = query.max_seq(conn)
        fast = fastpath.csv_chunks(conn, AuditFilter(), upto)
        assert fast is not None
        chunks = list(fast)
        assert len(chunks) > 5
        assert b"".join(chunks) == plain_csv(conn, AuditFilter(), upto)


def test_both_sqlite_line_builders_give_the_same_bytes(tmp_path) -> None:
    """concat() (SQLite 3.44+) and the `||` chain (older SQLite) build identical lines.

    Row by row on the nasty and random values (NUL included), through pysqlite3's SQLite;
    then the whole export through the standard library's sqlite3 (3.40 here, so the
    chain) equals the plain writer's bytes.
    """
    import sqlite3

    from audit_core.db import make_engine, migrate

    url = f"sqlite:///{tmp_path}/both.db"
    eng = make_engine(url)
    migrate(eng)
    nul = {f: f"x{i}\x00,=" for i, f in enumerate(FIELDS[2:-1])}
    nul.update(id="audit-20260301-999", timestamp="2026-03-01T00:00:00Z")
    nul["checksum"] = compute_checksum(nul)
    with eng.begin() as conn:
        store.append(conn, [*nasty_records(), normalize(nul), *random_records(2000, seed=4)])
    with eng.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        if getattr(conn.dialect.dbapi, "sqlite_version_info", (0,)) < (3, 44):
            pytest.skip("this SQLite has no concat()")
        lines = [
            [r[0] for r in raw.execute(f"SELECT {expr} FROM audit_records ORDER BY seq")]
            for expr in (fastpath.SQLITE_CSV_LINE, fastpath.SQLITE_CSV_LINE_OLD)
        ]
    assert len(lines[0]) == 2000 + len(NASTY) + 1
    assert lines[0] == lines[1]
    eng.dispose()

    old = make_engine(url, module=sqlite3)
    with old.connect() as conn:
        upto = query.max_seq(conn)
        fast = fastpath.csv_chunks(conn, AuditFilter(), upto)
        assert fast is not None
        assert b"".join(fast) == plain_csv(conn, AuditFilter(), upto)
    old.dispose()


def test_controls_counts_the_bytes_up_to_cr() -> None:
    """The CSV batch check: every byte 0x00-0x0D counts (so a tab or NUL in a cell sends the
    batch cell by cell, never the other way), nothing above."""
    assert fastpath.controls(b"a\tb\x00c\r\n") == 4
    assert fastpath.controls(b"plain,\x0e\x1f\x7f\xff") == 0
    data = bytes(range(256)) * 3
    assert fastpath.controls(data) == 3 * 14
    assert fastpath.count_byte(data + b"\n\n", 0x0A) == (data + b"\n\n").count(b"\n") == 5


def test_leads_finds_every_free_text_cell_that_might_need_neutralising() -> None:
    """The CSV batch check for formula leads: any free-text cell starting below 'A' sends
    the batch cell by cell (a source address may start with a digit, ':' or '.'), an
    empty cell or a lead in the id, timestamp or checksum does not."""

    def line(**cells: str) -> bytes:
        row = {f: "A" for f in FIELDS} | cells
        return b"\xff".join(row[f].encode() for f in FIELDS) + b"\r\n"

    clean = line(sourceIP="10.0.0.1") + line(sourceIP="2001:db8::1") + line(sourceIP="::1")
    assert not fastpath.leads(clean, 3)
    assert not fastpath.leads(line(id="=1", timestamp="-", checksum="+", user=""), 1)
    for field in FREE_TEXT:
        for lead in "=+-@\t'" if field != "sourceIP" else "=+-@'":
            assert fastpath.leads(clean + line(**{field: lead + "x"}), 4), (field, lead)
    assert fastpath.leads(line(resource="/path"), 1)  # below 'A': a superset, told exactly later
    assert not fastpath.leads(line(resource="ünïcode"), 1)
    assert fastpath.leads(clean, 4)  # the separators do not add up: let the exact path decide
