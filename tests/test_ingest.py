"""Ingest: the seed envelope, JSON Lines and CSV; all or nothing; re-ingest adds nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from audit_core import export, ingest, query
from audit_core.filters import AuditFilter
from audit_core.formats import csv_chunks
from audit_core.integrity import verify
from audit_core.models import AuditRecord

from .conftest import add_demo, seed_record

T = AuditRecord.__table__


def total(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(T)).scalar() or 0)


def opener(data: bytes):  # noqa: ANN201
    return lambda: io.BytesIO(data)


def envelope(records: list[dict[str, str]]) -> bytes:
    return json.dumps(
        {"apiVersion": "v1", "kind": "AuditExport", "metadata": {}, "records": records}
    ).encode()


def test_envelope_reingested_gives_identical_records(engine: Engine, tmp_path: Path) -> None:
    add_demo(engine, 400)
    with engine.connect() as conn:
        plan = export.plan(conn, AuditFilter(), "json")
        body = b"".join(export.chunks(conn, plan))
        before = b"".join(csv_chunks(query.stream(conn, AuditFilter())))
    from audit_core.db import make_engine, migrate

    fresh = make_engine(f"sqlite:///{tmp_path}/fresh.db")
    migrate(fresh)
    report = ingest.ingest(fresh, opener(body), "json")
    assert (report.total, report.added) == (400, 400)
    with fresh.connect() as conn:
        after = b"".join(csv_chunks(query.stream(conn, AuditFilter())))
        assert verify(conn).ok
    assert after == before


def test_jsonl_and_csv_with_formula_cells_round_trip(engine: Engine) -> None:
    recs = [
        seed_record(1, resource='=HYPERLINK("x")'),
        seed_record(2, user="'quoted@x.com"),
        seed_record(3, resource='a,"b"\r\nc'),
    ]
    jsonl = b"\n".join(json.dumps(r).encode() for r in recs) + b"\n"
    assert ingest.ingest(engine, opener(jsonl), "jsonl").added == 3
    with engine.connect() as conn:
        csv_body = b"".join(csv_chunks(query.stream(conn, AuditFilter())))
    assert b"'=HYPERLINK" in csv_body
    report = ingest.ingest(engine, opener(csv_body), "csv")
    assert (report.total, report.added, report.already_stored) == (3, 0, 3)


def test_a_bad_record_refuses_the_whole_file(engine: Engine) -> None:
    good = [seed_record(i) for i in range(1, 6)]
    bad = dict(seed_record(6), checksum="sha256:" + "0" * 64)
    with pytest.raises(ingest.IngestError) as err:
        ingest.ingest(engine, opener(envelope([*good, bad, seed_record(7)])), "json")
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
    engine: Engine, record: dict[str, str], reason: str
) -> None:
    raw = {k: v for k, v in seed_record(1).items() if k != "checksum"}
    raw.update(record)
    data = json.dumps(seed_record(2)).encode() + b"\n" + json.dumps(raw).encode() + b"\n"
    with pytest.raises(ingest.IngestError) as err:
        ingest.ingest(engine, opener(data), "jsonl")
    assert err.value.problems[0][0] == 2 and reason in err.value.problems[0][1]
    assert total(engine) == 0


def test_same_id_with_other_content_is_refused(engine: Engine) -> None:
    ingest.ingest(engine, opener(envelope([seed_record(1)])), "json")
    with pytest.raises(ingest.IngestError, match="already stored with other content"):
        ingest.ingest(engine, opener(envelope([seed_record(1, user="other@x.com")])), "json")
    assert total(engine) == 1


def test_check_reports_without_changing_anything(engine: Engine) -> None:
    ingest.ingest(engine, opener(envelope([seed_record(1)])), "json")
    report = ingest.check(engine, opener(envelope([seed_record(1), seed_record(2)])), "json")
    assert (report.total, report.new, report.already_stored, report.bad) == (2, 1, 1, 0)
    assert total(engine) == 1


def test_timestamps_with_offsets_are_stored_in_utc(engine: Engine) -> None:
    raw = {k: v for k, v in seed_record(1).items() if k != "checksum"}
    raw["timestamp"] = "2026-03-01T03:00:00.500+03:00"
    ingest.ingest(engine, opener(json.dumps(raw).encode()), "jsonl")
    with engine.connect() as conn:
        assert conn.execute(select(T.c.timestamp)).scalar() == "2026-03-01T00:00:00.5Z"


def test_csv_with_a_wrong_header_is_refused(engine: Engine) -> None:
    with pytest.raises(ingest.IngestError, match="header"):
        ingest.ingest(engine, opener(b"id,when\r\naudit-20260301-001,x\r\n"), "csv")


def test_broken_json_is_refused(engine: Engine) -> None:
    with pytest.raises(ingest.IngestError, match="not valid JSON"):
        ingest.ingest(engine, opener(b'{"records":[{"id":'), "json")


def test_detect_format() -> None:
    assert ingest.detect_format("a.NDJSON") == "jsonl"
    with pytest.raises(ValueError, match="cannot tell"):
        ingest.detect_format("a.txt")
