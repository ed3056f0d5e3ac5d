"""Ingest: the seed envelope, JSON Lines and CSV; all or nothing; bounded; itself recorded."""

from __future__ import annotations

import hashlib
import io
import json
import resource
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from audit_core import evidence, export, ingest, query, signing
from audit_core.access import Principal
from audit_core.config import Settings
from audit_core.filters import AuditFilter
from audit_core.formats import csv_chunks
from audit_core.integrity import verify
from audit_core.models import AuditRecord
from audit_core.record import FIELDS

from .conftest import add_demo, seed_record

T = AuditRecord.__table__
ROOT = Path(__file__).resolve().parent.parent
WHO = Principal("ana@example.com", "admin", None, "10.0.0.7")
BOMB = b"[" * 100_000 + b"]" * 100_000  # 200 KB, 100,000 deep


def total(engine: Engine) -> int:
    """Records outside the portal's own namespace (where each ingest is recorded)."""
    with engine.connect() as conn:
        stmt = select(func.count()).select_from(T).where(T.c.namespace != "audit-portal")
        return int(conn.execute(stmt).scalar() or 0)


def own_records(engine: Engine) -> list[dict[str, str]]:
    """The portal's own records, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(T).where(T.c.namespace == "audit-portal").order_by(T.c.seq))
        return [{f: getattr(r, f) for f in FIELDS} for r in rows]


def opener(data: bytes):  # noqa: ANN201
    return lambda: io.BytesIO(data)


def load(
    engine: Engine, settings: Settings, data: bytes, fmt: str, name: str = "file"
) -> ingest.IngestReport:
    return ingest.ingest(engine, opener(data), fmt, name=name, principal=WHO, settings=settings)


def envelope(records: list[dict[str, str]]) -> bytes:
    return json.dumps(
        {"apiVersion": "v1", "kind": "AuditExport", "metadata": {}, "records": records},
        ensure_ascii=False,
    ).encode()


def jsonl(records: list[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def test_envelope_reingested_gives_identical_records(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    add_demo(engine, 400)
    with engine.connect() as conn:
        plan = export.plan(conn, AuditFilter(), "json")
        body = b"".join(export.chunks(conn, plan))
        before = b"".join(csv_chunks(query.stream(conn, AuditFilter())))
    from audit_core.db import make_engine, migrate

    fresh = make_engine(f"sqlite:///{tmp_path}/fresh.db")
    key = signing.load_or_create_key(tmp_path / "fresh.key")
    evidence.attach(fresh, evidence.Signer(key, settings.log_origin))
    migrate(fresh)
    cut = AuditFilter.parse(end=datetime.now(UTC))  # the ingest's own record comes after
    report = load(fresh, settings, body, "json")
    assert (report.total, report.added) == (400, 400)
    with fresh.connect() as conn:
        after = b"".join(csv_chunks(query.stream(conn, cut)))
        assert verify(conn).ok
    assert after == before


def test_jsonl_and_csv_with_formula_cells_round_trip(engine: Engine, settings: Settings) -> None:
    recs = [
        seed_record(1, resource='=HYPERLINK("x")'),
        seed_record(2, user="'quoted@x.com"),
        seed_record(3, resource='a,"b"\r\nc'),
    ]
    assert load(engine, settings, jsonl(recs), "jsonl").added == 3
    with engine.connect() as conn:
        flt = AuditFilter.parse(namespace="production")
        csv_body = b"".join(csv_chunks(query.stream(conn, flt)))
    assert b"'=HYPERLINK" in csv_body
    report = load(engine, settings, csv_body, "csv")
    assert (report.total, report.added, report.already_stored) == (3, 0, 3)


def test_a_bad_record_refuses_the_whole_file(engine: Engine, settings: Settings) -> None:
    good = [seed_record(i) for i in range(1, 6)]
    bad = dict(seed_record(6), checksum="sha256:" + "0" * 64)
    with pytest.raises(ingest.IngestError) as err:
        load(engine, settings, envelope([*good, bad, seed_record(7)]), "json")
    assert err.value.problems[0][0] == 6
    assert "checksum mismatch" in str(err.value)
    assert total(engine) == 0


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"id": "x-1"}, "not of the form"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"user": ""}, "empty"),
        ({"extra": "1"}, "unknown field"),
    ],
)
def test_refusals_name_position_and_reason(
    engine: Engine, settings: Settings, record: dict[str, str], reason: str
) -> None:
    raw = {k: v for k, v in seed_record(1).items() if k != "checksum"}
    raw.update(record)
    data = json.dumps(seed_record(2)).encode() + b"\n" + json.dumps(raw).encode() + b"\n"
    with pytest.raises(ingest.IngestError) as err:
        load(engine, settings, data, "jsonl")
    assert err.value.problems[0][0] == 2 and reason in err.value.problems[0][1]
    assert total(engine) == 0


def test_a_refused_file_names_up_to_twenty_refused_records(
    engine: Engine, settings: Settings
) -> None:
    recs = [seed_record(i) for i in range(1, 31)]
    for i in (1, 3, *range(9, 30)):  # records 2, 4, 10..30 refused: 23 of them
        recs[i] = dict(recs[i], checksum="sha256:" + "0" * 64)
    with pytest.raises(ingest.IngestError) as err:
        load(engine, settings, jsonl(recs), "jsonl")
    assert [pos for pos, _ in err.value.problems] == [2, 4, *range(10, 28)]
    assert err.value.total_bad == 23
    assert err.value.message.startswith("record 2: checksum mismatch")
    assert err.value.message.endswith("(22 more refused); nothing was added")
    assert total(engine) == 0


def test_same_id_with_other_content_is_refused(engine: Engine, settings: Settings) -> None:
    load(engine, settings, envelope([seed_record(1)]), "json")
    with pytest.raises(ingest.IngestError, match="already stored with other content"):
        load(engine, settings, envelope([seed_record(1, user="other@x.com")]), "json")
    assert total(engine) == 1


def test_an_id_repeated_in_a_file_is_found_by_the_database(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 2: the repeats lie in later batches than their first appearance, so only
    # the rows already appended in the ingest's transaction can tell.
    monkeypatch.setattr(ingest, "BATCH", 2)
    recs = [seed_record(i) for i in range(1, 6)]
    report = load(engine, settings, jsonl([*recs, recs[0], recs[3]]), "jsonl")
    assert (report.total, report.added, report.already_stored) == (7, 5, 2)
    other = seed_record(2, user="other@x.com")
    with pytest.raises(ingest.IngestError) as err:
        load(
            engine,
            settings,
            jsonl([seed_record(6), seed_record(7), seed_record(8), other]),
            "jsonl",
        )
    assert err.value.problems == [(4, "id audit-20260301-002 is already stored with other content")]
    assert total(engine) == 5


def test_check_reports_without_changing_anything(engine: Engine, settings: Settings) -> None:
    load(engine, settings, envelope([seed_record(1)]), "json")
    before = own_records(engine)
    report = ingest.check(engine, opener(envelope([seed_record(1), seed_record(2)])), "json")
    assert (report.total, report.new, report.already_stored, report.bad) == (2, 1, 1, 0)
    assert total(engine) == 1
    assert own_records(engine) == before


def test_timestamps_with_offsets_are_stored_in_utc(engine: Engine, settings: Settings) -> None:
    raw = {k: v for k, v in seed_record(1).items() if k != "checksum"}
    raw["timestamp"] = "2026-03-01T03:00:00.500+03:00"
    load(engine, settings, json.dumps(raw).encode(), "jsonl")
    with engine.connect() as conn:
        stmt = select(T.c.timestamp).where(T.c.namespace == "production")
        assert conn.execute(stmt).scalar() == "2026-03-01T00:00:00.5Z"


def test_csv_with_a_wrong_header_is_refused(engine: Engine, settings: Settings) -> None:
    with pytest.raises(ingest.IngestError, match="header"):
        load(engine, settings, b"id,when\r\naudit-20260301-001,x\r\n", "csv")


def test_broken_json_is_refused(engine: Engine, settings: Settings) -> None:
    with pytest.raises(ingest.IngestError, match="not valid JSON"):
        load(engine, settings, b'{"records":[{"id":', "json")


def test_detect_format() -> None:
    assert ingest.detect_format("a.NDJSON") == "jsonl"
    with pytest.raises(ValueError, match="cannot tell"):
        ingest.detect_format("a.txt")


# ---------------------------------------------------------------------------- bounded


def _one_gib() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("bomb.json", BOMB, b"record 1: a nested array at byte 1, not a record object"),
        ("bomb.jsonl", BOMB + b"\n", b"record 1: nesting deeper than 4 levels at byte 4"),
        (
            "deep.json",
            b'{"records":[{"id":' + BOMB + b"}]}",
            b"record 1: nesting deeper than 4 levels at byte 19",
        ),
    ],
    ids=["json", "jsonl", "in-a-record"],
)
def test_a_bracket_bomb_is_refused_at_once_in_bounded_memory(
    env: dict[str, str], tmp_path: Path, engine: Engine, name: str, data: bytes, message: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-m", "audit_core", "ingest", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        preexec_fn=_one_gib,  # the whole process: interpreter, drivers and the parse
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and b"nothing was added" in result.stderr
    assert b"Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert total(engine) == 0
    (refused,) = own_records(engine)
    assert refused["action"] == "portal.ingest.refused" and refused["user"].startswith("cli:")
    assert hashlib.sha256(data).hexdigest() in refused["resource"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"Records": [' + json.dumps(seed_record(1)).encode() + b"]}", 'found "Records"'),
        (
            b'{"records": {"first": ' + json.dumps(seed_record(1)).encode() + b"}}",
            '"records" must be an array of records; found an object',
        ),
        (b'"audit-20260301-001"', "the top level must be the export envelope"),
        (b'{"apiVersion": "v1", "kind": "AuditExport"}', 'has no "records" array'),
        (b'{"records": "none"}', '"records" must be an array of records'),
    ],
    ids=["Records", "records-object", "bare-string", "no-records", "records-string"],
)
def test_a_json_file_not_in_the_seed_shape_is_refused(
    engine: Engine, settings: Settings, data: bytes, message: str
) -> None:
    with pytest.raises(ingest.IngestError) as err:
        load(engine, settings, data, "json")
    assert message in err.value.message and err.value.status == 400
    assert total(engine) == 0


def _with_bad_byte(fmt: str) -> tuple[bytes, int]:
    """A file whose second record has one invalid UTF-8 byte; and that byte's offset."""
    recs = [seed_record(1), seed_record(2, user="zoë@x.com"), seed_record(3)]
    if fmt == "csv":
        rows = [tuple(r[f] for f in FIELDS) for r in recs]
        data = b"".join(csv_chunks([rows]))
    else:
        data = envelope(recs) if fmt == "json" else jsonl(recs)
    bad = data.replace("zoë".encode(), b"zo\xeb")
    return bad, bad.index(b"\xeb")


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_invalid_utf8_names_the_record_and_the_byte(
    engine: Engine, settings: Settings, fmt: str
) -> None:
    data, at = _with_bad_byte(fmt)
    with pytest.raises(ingest.IngestError) as err:
        load(engine, settings, data, fmt)
    assert err.value.problems == [(2, f"invalid UTF-8 at byte {at}")]
    assert f"record 2: invalid UTF-8 at byte {at}" in err.value.message
    report = ingest.check(engine, opener(data), fmt)
    assert report.problems == [(2, f"invalid UTF-8 at byte {at}")]
    assert total(engine) == 0


def test_a_record_longer_than_the_bound_is_refused(engine: Engine, settings: Settings) -> None:
    huge = b'{"id": "' + b"x" * (ingest.MAX_RECORD_BYTES + 10) + b'"}'
    with pytest.raises(ingest.IngestError, match="record 2: longer than 65536 bytes"):
        load(engine, settings, envelope([seed_record(1)])[:-2] + b", " + huge + b"]}", "json")
    with pytest.raises(ingest.IngestError, match="record 1: longer than 65536 bytes"):
        load(engine, settings, huge + b"\n", "jsonl")


# ---------------------------------------------------------------------------- recorded


def test_an_accepted_file_is_recorded_with_its_name_digest_and_counts(
    engine: Engine, settings: Settings
) -> None:
    first = jsonl([seed_record(1), seed_record(2)])
    load(engine, settings, first, "jsonl", name="march.jsonl")
    again = jsonl([seed_record(2), seed_record(3)])
    load(engine, settings, again, "jsonl", name="march-2.jsonl")
    done = own_records(engine)
    assert [r["action"] for r in done] == ["portal.ingest", "portal.ingest"]
    assert done[0]["resource"] == (
        f"march.jsonl; sha256 {hashlib.sha256(first).hexdigest()}; 2 added, 0 skipped"
    )
    assert done[1]["resource"] == (
        f"march-2.jsonl; sha256 {hashlib.sha256(again).hexdigest()}; 1 added, 1 skipped"
    )
    assert {(r["user"], r["role"], r["resourceType"], r["sourceIP"]) for r in done} == {
        ("ana@example.com", "admin", "IngestFile", "10.0.0.7")
    }
    with engine.connect() as conn:
        assert verify(conn).ok
        seqs = conn.execute(select(T.c.seq, T.c.namespace).order_by(T.c.seq)).all()
    # Same transaction as the rows: each file's record follows its rows in the log.
    assert [ns for _, ns in seqs] == ["production"] * 2 + ["audit-portal"] + [
        "production",
        "audit-portal",
    ]


def test_a_refused_file_is_recorded_with_the_reason(engine: Engine, settings: Settings) -> None:
    bad = dict(seed_record(2), checksum="sha256:" + "0" * 64)
    data = jsonl([seed_record(1), bad])
    with pytest.raises(ingest.IngestError):
        load(engine, settings, data, "jsonl", name="bad.jsonl")
    (refused,) = own_records(engine)
    assert refused["action"] == "portal.ingest.refused"
    assert refused["resourceType"] == "IngestFile" and refused["user"] == WHO.email
    digest = hashlib.sha256(data).hexdigest()
    assert refused["resource"].startswith(f"bad.jsonl; sha256 {digest}; record 2: checksum")
    assert total(engine) == 0
    with engine.connect() as conn:
        assert verify(conn).ok


def test_the_cli_records_the_operator(env: dict[str, str], tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "one.json"
    path.write_bytes(envelope([seed_record(1)]))
    result = subprocess.run(
        [sys.executable, "-m", "audit_core", "ingest", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (done,) = own_records(engine)
    assert done["action"] == "portal.ingest" and done["user"].startswith("cli:")
    assert done["role"] == "admin" and done["resource"].endswith("; 1 added, 0 skipped")
    assert done["resource"].startswith(f"{path}; sha256 ")
