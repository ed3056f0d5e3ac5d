"""The API as its clients meet it: a client generated from the OpenAPI document, and curl
over real HTTP (`streamlit run app.py` on a free loopback port) resuming a cut download."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from audit_core.config import Settings
from audit_core.formats import FORMULA_LEAD, neutralise, restore
from audit_core.http import openapi
from audit_core.http.openapi import INSTANT_PATTERN
from audit_core.record import (
    CHECKED_FIELDS,
    DEFAULT_MAX,
    FREE_TEXT,
    MAX_FIELD,
    RecordError,
    format_instant,
    normalize,
)

from .conftest import seed_record
from .test_api import LIMIT, TO, audit_rows
from .test_api_server import add as add_live
from .test_api_server import admin_token, live_server

ROOT = Path(__file__).resolve().parent.parent
DOC = openapi.document()


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in the document, with where it sits."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def schema_of(name: str) -> dict[str, Any]:
    """A component schema, standalone (its $refs resolve against the document)."""
    return {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}


# --------------------------------------------------------------------------- instants


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 3, 1, 0, 5, tzinfo=UTC),
        datetime(2026, 3, 1, 0, 5, 0, 250_000, tzinfo=UTC),
        datetime(2026, 3, 1, 0, 5, 0, 1, tzinfo=UTC),
        datetime(2026, 3, 1, 0, 5, 0, 999_999, tzinfo=UTC),
        datetime(350, 7, 14, 10, 43, 6, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_the_instant_pattern_matches_what_format_instant_writes(when: datetime) -> None:
    assert re.fullmatch(INSTANT_PATTERN, format_instant(when))


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T00:05:00+00:00",
        "2026-03-01T00:05:00.250Z",  # format_instant drops trailing zeros
        "2026-03-01T00:05:00.Z",
        "2026-03-01T00:05:00.0000001Z",
        "2026-03-01 00:05:00Z",
        "2026-03-01T00:05:00z",
        "2026-03-01T00:05Z",
        "350-07-14T10:43:06Z",
        "2026-03-01",
    ],
)
def test_the_instant_pattern_refuses_what_format_instant_never_writes(text: str) -> None:
    assert not re.fullmatch(INSTANT_PATTERN, text)


def test_no_instant_the_api_writes_is_declared_date_time() -> None:
    dated = [path for path, node in walk(DOC) if node.get("format") == "date-time"]
    # Only the inputs may be date-time: a client writes them, the API parses them.
    assert dated == [
        "/paths//audit/export/get/parameters/1/schema",
        "/paths//audit/export/get/parameters/2/schema",
    ]
    schemas = DOC["components"]["schemas"]
    meta = schemas["AuditExport"]["properties"]["metadata"]["properties"]
    job = schemas["AuditExportJob"]["properties"]["status"]["properties"]
    for schema in (
        schemas["AuditRecord"]["properties"]["timestamp"],
        meta["exportedAt"],
        meta["from"],
        meta["to"],
        job["expiresAt"],
        job["retryAt"],
    ):
        assert schema["pattern"] == INSTANT_PATTERN
        assert "string" in schema["type"]


def test_200_responses_list_application_json_first() -> None:
    oks = [
        (path, op["responses"][code])
        for path, item in DOC["paths"].items()
        for op in item.values()
        for code in ("200", "206")
        if code in op["responses"]
    ]
    assert len(oks) >= 12
    for path, ok in oks:
        types = list(ok.get("content", {}))
        if "application/json" in types:
            assert types[0] == "application/json", (path, types)


# --------------------------------------------------------------------------- limits, CSV rule


def test_record_properties_carry_the_limits_ingest_enforces() -> None:
    props = DOC["components"]["schemas"]["AuditRecord"]["properties"]
    for field in CHECKED_FIELDS:
        assert props[field]["maxLength"] == MAX_FIELD.get(field, DEFAULT_MAX), field
    assert props["resource"]["maxLength"] > props["user"]["maxLength"]
    # And ingest keeps to them: a value at the limit is taken, one character more is not.
    for field in ("resource", "user", "resourceType", "sourceIP"):
        limit = props[field]["maxLength"]
        assert normalize(seed_record(1, **{field: "x" * limit})).as_dict()[field] == "x" * limit
        with pytest.raises(RecordError, match=f"longer than {limit} characters"):
            normalize(seed_record(1, **{field: "x" * (limit + 1)}))


NAMES = {"\t": "TAB", "\r": "CR", "\n": "LF"}


def test_the_csv_formula_rule_is_stated_as_the_writer_and_ingest_apply_it() -> None:
    record = DOC["components"]["schemas"]["AuditRecord"]
    fmt = DOC["paths"]["/audit/export"]["get"]["parameters"][0]
    for text in (record["description"], fmt["description"]):
        leads = " ".join(NAMES.get(c, c) for c in FORMULA_LEAD)
        assert f"starts with {leads} is written with one ' before it" in text
        assert "(" + ", ".join(FREE_TEXT) + ")" in text
    for field in FREE_TEXT:
        assert "formula" in record["properties"][field]["description"]
    for lead in FORMULA_LEAD:
        assert neutralise(lead + "x") == "'" + lead + "x"
        assert restore(neutralise(lead + "x")) == lead + "x"
    assert neutralise("x=1") == "x=1" and neutralise("!x") == "!x"


def test_the_readme_states_the_limits_the_formula_rule_and_the_bare_token() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"`resource` over {MAX_FIELD['resource']:,} characters" in readme
    assert f"any other field over {DEFAULT_MAX}" in readme
    leads = ", ".join(NAMES.get(c, f"`{c}`") for c in FORMULA_LEAD[:-1])
    assert f"starts with {leads} or `{FORMULA_LEAD[-1]}`" in re.sub(r"\s+", " ", readme)
    assert "`Authorization: <token>`" in readme
    assert (
        "Authorization: <token>"
        in DOC["components"]["securitySchemes"]["bearerAuth"]["description"]
    )


# --------------------------------------------------------------------------- curl, live


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run curl (never through a proxy) and return what it did."""
    cmd = ["curl", "-sS", "--noproxy", "*", "--max-time", "60", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def wait_for_file(base: str, job_id: str, auth: str) -> dict[str, Any]:
    """Poll the job with curl until its file is ready; return its status."""
    deadline = time.monotonic() + 120
    while True:
        got = curl(f"{base}/api/v1/audit/export/jobs/{job_id}", "-H", auth)
        state = json.loads(got.stdout)["status"]
        if state["state"] not in ("queued", "processing") or time.monotonic() > deadline:
            assert state["state"] == "completed", state
            return dict(state)
        time.sleep(0.2)


@pytest.mark.slow
def test_curl_resumes_a_cut_off_download_to_the_jobs_exact_file(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add_live(engine, LIMIT + 30)
    token = admin_token(engine, settings)
    auth = f"Authorization: {token}"  # the seed's own example: the token alone
    part = tmp_path / "audit.csv"
    with live_server(env, tmp_path) as base:
        queued = curl(f"{base}/api/v1/audit/export?to={TO}", "-H", auth, "-w", "\n%{http_code}")
        body, code = queued.stdout.rsplit("\n", 1)
        assert code == "202", queued.stdout + queued.stderr
        job_id = json.loads(body)["metadata"]["jobId"]
        state = wait_for_file(base, job_id, auth)
        url = f"{base}/api/v1/audit/export/download/{job_id}"
        size, cut = state["fileSize"], state["fileSize"] // 3

        # Cut off after `cut` bytes, then resume: curl asks for the rest with Range.
        first = curl("-r", f"0-{cut - 1}", "-o", str(part), "-w", "%{http_code}", "-H", auth, url)
        assert first.stdout == "206" and part.stat().st_size == cut, first.stderr
        rest = curl("-C", "-", "-o", str(part), "-w", "%{http_code}", "-H", auth, url)
        assert rest.returncode == 0 and rest.stdout == "206", rest.stderr
        assert hashlib.sha256(part.read_bytes()).hexdigest() == state["sha256"]
        assert part.stat().st_size == size
        # Resuming a whole file asks past its end: 416, which curl takes as "done".
        again = curl("-C", "-", "-o", str(part), "-w", "%{http_code}", "-H", auth, url)
        assert (again.returncode, again.stdout) == (0, "416"), again.stderr
        assert hashlib.sha256(part.read_bytes()).hexdigest() == state["sha256"]

        # The copy is current: If-None-Match with the ETag sends nothing.
        etag = f'If-None-Match: "sha256-{state["sha256"]}"'
        same = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", auth, "-H", etag, url)
        assert same.stdout == "304"
        head = curl("-I", "-H", auth, url).stdout.lower()  # (text mode: CRLF reads as LF)
        assert "\naccept-ranges: bytes\n" in head
        whole = curl("-D", "-", "-o", "/dev/null", "-H", auth, "-H", "Accept-Encoding: gzip", url)
        assert whole.stdout.startswith("HTTP/1.1 200 ") and "\nvary:" not in whole.stdout.lower()

    resources = [r.resource for r in audit_rows(engine, "audit.export.download")]
    rows = f"{job_id} (csv, {LIMIT + 30} rows"
    assert resources == [
        f"{rows}, bytes 0-{cut - 1}/{size})",
        f"{rows}, bytes {cut}-{size - 1}/{size})",
        f"{rows})",  # the whole GET; the 304 and HEAD sent no bytes
    ]
    for row in audit_rows(engine, "audit.export.download"):
        assert (row.user, row.sourceIP) == ("boss@empresa.com", "127.0.0.1")
