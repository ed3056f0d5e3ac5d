"""The command line, run as a real subprocess: round trip, errors, verify, help text."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from audit_core.cli import build_parser
from audit_core.models import AUDIT

ROOT = Path(__file__).resolve().parent.parent


def cli(
    env: dict[str, str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "audit_core", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def test_round_trip_demo_json_ingest_csv_is_byte_identical(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert cli(env, "demo", "--records", "3000", "--seed", "7").returncode == 0
    # Demo records end before now; the exports' own audit records come after `cut`.
    cut = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    first = cli(env, "export", "--format", "json", "--to", cut, "-o", str(tmp_path / "all.json"))
    assert first.returncode == 0, first.stderr
    csv_a = cli(env, "export", "--format", "csv", "--to", cut)
    fresh = dict(env, AUDIT_DATABASE_URL=f"sqlite:///{tmp_path}/fresh.db")
    loaded = cli(fresh, "ingest", str(tmp_path / "all.json"))
    assert loaded.returncode == 0, loaded.stderr
    assert b"3000 added" in loaded.stderr
    csv_b = cli(fresh, "export", "--format", "csv", "--to", cut)
    assert csv_a.returncode == csv_b.returncode == 0
    assert csv_a.stdout.count(b"\r\n") == 3001
    assert csv_a.stdout == csv_b.stdout
    again = cli(fresh, "ingest", str(tmp_path / "all.json"))
    assert b"0 added, 3000 already stored" in again.stderr
    assert cli(fresh, "verify").returncode == 0


def test_every_export_is_itself_audited(env: dict[str, str]) -> None:
    cli(env, "demo", "--records", "10")
    cli(env, "export", "--format", "jsonl", "--namespace", "production")
    out = cli(env, "export", "--format", "jsonl", "--action", "audit.export").stdout.decode()
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert '"user":"cli:' in lines[0] and '"namespace":"audit-portal"' in lines[0]
    assert "namespace production" in lines[0]


def test_stdin_ingest_needs_a_format_and_then_works(env: dict[str, str]) -> None:
    row = (
        b'{"id":"audit-20260301-001","timestamp":"2026-03-01T00:05:00Z","action":"runbook.create",'
        b'"user":"admin@empresa.com","role":"admin","resource":"r","resourceType":"Runbook",'
        b'"namespace":"production","sourceIP":"10.0.1.10"}\n'
    )
    refused = cli(env, "ingest", "-", stdin=row)
    assert refused.returncode == 2 and b"--format" in refused.stderr
    assert cli(env, "ingest", "-", "--format", "jsonl", stdin=row).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("export", "--from", "last tuesday"), b"ISO 8601"),
        (("export", "--format", "xml"), b"csv, json, jsonl"),
        (("export", "--from", "2026-03-02", "--to", "2026-03-01"), b"earlier than"),
        (("ingest", "/no/such/file.json"), b"no such file"),
        (("ingest", "notes.txt"), b"no such file"),
    ],
)
def test_errors_are_one_line_exit_2_no_traceback(
    env: dict[str, str], args: tuple[str, ...], message: bytes
) -> None:
    result = cli(env, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert b"Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_refused_file_names_the_record_and_adds_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id":"audit-20260301-001","timestamp":"nope","action":"a","user":"u",'
        '"role":"r","resource":"x","resourceType":"t","namespace":"n","sourceIP":"i"}\n'
    )
    result = cli(env, "ingest", str(bad))
    assert result.returncode == 2 and b"record 1: timestamp" in result.stderr
    assert b"nothing was added" in result.stderr
    # Nothing from the file: the log holds only the record of its refusal.
    exported = cli(env, "export", "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line)["action"] for line in exported] == ["portal.ingest.refused"]
    assert b"audit-20260301-001" not in b"".join(exported)


def test_verify_exits_1_naming_the_tampered_row(env: dict[str, str], engine: Engine) -> None:
    cli(env, "demo", "--records", "30")
    with engine.begin() as conn:
        conn.execute(update(AUDIT).where(AUDIT.c.seq == 12).values(action="secret.read"))
    result = cli(env, "verify")
    assert result.returncode == 1
    assert b"FAILED at record audit-" in result.stdout


def test_every_command_has_help_text() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {c.dest: c.help for c in sub._choices_actions}  # type: ignore[attr-defined]
    assert {"init", "demo", "ingest", "export", "verify"} <= set(helps)
    assert all(helps.values())
