"""Writers: golden text for CSV, the JSON envelope and JSON Lines; formula safety."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest

from audit_core.formats import (
    csv_chunks,
    export_metadata,
    filename,
    json_chunks,
    jsonl_chunks,
    neutralise,
    range_tag,
    restore,
)
from audit_core.record import FIELDS

SEED_ROWS = [
    (
        "audit-20260301-001",
        "2026-03-01T00:05:00Z",
        "runbook.create",
        "admin@empresa.com",
        "admin",
        "runbook-disk-cleanup",
        "Runbook",
        "production",
        "10.0.1.10",
        "sha256:a1b2c3d4...",
    ),
    (
        "audit-20260301-002",
        "2026-03-01T01:15:00Z",
        "incident.acknowledge",
        "carlos.silva@empresa.com",
        "operator",
        "INC-20260301-001",
        "Incident",
        "production",
        "10.0.1.50",
        "sha256:e5f6g7h8...",
    ),
]
ADVERSARIAL = (
    "audit-20260301-003",
    "2026-03-01T02:00:00.25Z",
    "=cmd|' /C calc'!A0",
    "+1@x.com",
    "-role",
    'say "hi", then\r\nleave',
    "@SUM(A1)",
    "\tns",
    "'quoted",
    "sha256:00",
)


def text(chunks: object) -> str:
    return b"".join(chunks).decode("utf-8")  # type: ignore[arg-type]


def test_csv_matches_the_seed_byte_for_byte() -> None:
    expected = (
        "id,timestamp,action,user,role,resource,resourceType,namespace,sourceIP,checksum\r\n"
        "audit-20260301-001,2026-03-01T00:05:00Z,runbook.create,admin@empresa.com,admin,"
        "runbook-disk-cleanup,Runbook,production,10.0.1.10,sha256:a1b2c3d4...\r\n"
        "audit-20260301-002,2026-03-01T01:15:00Z,incident.acknowledge,carlos.silva@empresa.com,"
        "operator,INC-20260301-001,Incident,production,10.0.1.50,sha256:e5f6g7h8...\r\n"
    )
    assert text(csv_chunks([SEED_ROWS[:1], SEED_ROWS[1:]])) == expected


def test_csv_quotes_minimally_and_neutralises_formula_cells() -> None:
    body = text(csv_chunks([[ADVERSARIAL]]))
    assert body.split("\r\n", 1)[1] == (
        "audit-20260301-003,2026-03-01T02:00:00.25Z,'=cmd|' /C calc'!A0,'+1@x.com,'-role,"
        '"say ""hi"", then\r\nleave",\'@SUM(A1),\'\tns,\'\'quoted,sha256:00\r\n'
    )


def test_csv_reads_back_to_the_raw_values_after_restoring() -> None:
    body = text(csv_chunks([[ADVERSARIAL], SEED_ROWS]))
    rows = list(csv.reader(io.StringIO(body, newline="")))
    assert rows[0] == list(FIELDS)
    back = [
        tuple(restore(c) if i not in (0, 1, 9) else c for i, c in enumerate(r)) for r in rows[1:]
    ]
    assert back == [ADVERSARIAL, *SEED_ROWS]


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@x", "'@x"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("\nx", "'\nx"),
        ("'x", "''x"),
        ("x=1", "x=1"),
        ("", ""),
        ("ação", "ação"),
    ],
)
def test_neutralise_is_reversible(cell: str, safe: str) -> None:
    assert neutralise(cell) == safe
    assert restore(safe) == cell


def test_json_envelope_has_the_seed_shape() -> None:
    meta = export_metadata(
        exported_at="2026-03-19T16:00:00Z",
        start="2026-03-01T00:00:00Z",
        end="2026-03-19T16:00:00Z",
        total=2,
        description="All records",
    )
    body = text(json_chunks([SEED_ROWS[:1], [], SEED_ROWS[1:]], meta))
    doc = json.loads(body)
    assert list(doc) == ["apiVersion", "kind", "metadata", "records"]
    assert doc["apiVersion"] == "v1" and doc["kind"] == "AuditExport"
    assert list(doc["metadata"])[:5] == ["exportedAt", "from", "to", "totalRecords", "format"]
    assert doc["metadata"]["format"] == "json" and doc["metadata"]["totalRecords"] == 2
    assert [list(r) for r in doc["records"]] == [list(FIELDS)] * 2
    assert doc["records"][1]["user"] == "carlos.silva@empresa.com"
    assert body == (
        '{"apiVersion":"v1","kind":"AuditExport","metadata":{"exportedAt":"2026-03-19T16:00:00Z",'
        '"from":"2026-03-01T00:00:00Z","to":"2026-03-19T16:00:00Z","totalRecords":2,'
        '"format":"json","filter":"All records"},"records":[\n'
        + json.dumps(dict(zip(FIELDS, SEED_ROWS[0], strict=True)), separators=(",", ":"))
        + ",\n"
        + json.dumps(dict(zip(FIELDS, SEED_ROWS[1], strict=True)), separators=(",", ":"))
        + "\n]}\n"
    )


def test_json_with_no_records_is_valid() -> None:
    meta = export_metadata(exported_at="x", start=None, end="y", total=0, description="d")
    assert json.loads(text(json_chunks([], meta)))["records"] == []


def test_json_and_jsonl_carry_raw_values() -> None:
    meta = export_metadata(exported_at="x", start=None, end="y", total=1, description="d")
    rec = json.loads(text(json_chunks([[ADVERSARIAL]], meta)))["records"][0]
    assert tuple(rec.values()) == ADVERSARIAL
    lines = text(jsonl_chunks([[ADVERSARIAL], SEED_ROWS])).split("\n")
    assert lines[-1] == "" and len(lines) == 4
    assert tuple(json.loads(lines[0]).values()) == ADVERSARIAL


@pytest.mark.parametrize(
    ("fmt", "comp", "name"),
    [
        ("csv", "none", "audit-export-20260319.csv"),
        ("json", "none", "audit-export-20260319.json"),
        ("jsonl", "gzip", "audit-export-20260319.jsonl.gz"),
    ],
)
def test_file_names_follow_the_seed(fmt: str, comp: str, name: str) -> None:
    assert filename(fmt, datetime(2026, 3, 19, 16, tzinfo=UTC), comp) == name


def test_a_tag_tells_the_days_files_apart() -> None:
    when = datetime(2026, 3, 19, 16, tzinfo=UTC)
    assert filename("csv", when, tag="007") == "audit-export-20260319-007.csv"
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 19, 16, 30, tzinfo=UTC)
    assert range_tag(start, end) == "20260301T0000Z-20260319T1630Z"
    assert range_tag(None, end) == "start-20260319T1630Z"
    assert range_tag(start, None) == "20260301T0000Z-now"
    tagged = filename("jsonl", when, "gzip", tag=range_tag(start, end))
    assert tagged == "audit-export-20260319-20260301T0000Z-20260319T1630Z.jsonl.gz"
