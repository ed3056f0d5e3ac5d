"""The API's HTTP semantics in-process, on both engines: resumable downloads (Range,
If-Range), conditional requests (If-None-Match), the bare token of the seed's example, and
job documents that hold still between polls."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import select

from audit_core.access import LOCAL_ADMIN, create_token, revoke_token
from audit_core.filters import AuditFilter
from audit_core.http.openapi import INSTANT_PATTERN
from audit_core.jobs import JOB_ID_PATTERN
from audit_core.models import ExportJob
from audit_core.record import format_instant

from .test_api import (  # noqa: F401
    LIMIT,
    TO,
    Api,
    add,
    api,
    audit_rows,
    library_bytes,
    run_worker_until,
    status,
    with_settings,
)

DOWNLOAD = "/api/v1/audit/export/download/{job_id}"


@dataclass
class Download:
    """A finished job's file as the API serves it whole."""

    url: str
    body: bytes
    etag: str
    auth: dict[str, str]

    @property
    def size(self) -> int:
        return len(self.body)


def finished(api: Api) -> Download:
    """Queue an over-the-limit CSV export, run it, and fetch its file once."""
    add(api.engine, LIMIT + 25)
    queued = api.get("/audit/export", api.admin, to=TO)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["metadata"]["jobId"]
    done = run_worker_until(api, job_id, ("completed", "failed"))
    assert done["status"]["state"] == "completed", done
    auth = {"Authorization": f"Bearer {api.admin}"}
    url = DOWNLOAD.format(job_id=job_id)
    whole = api.client.get(url, headers=auth)
    assert whole.status_code == 200 and whole.content == library_bytes(api.engine, "csv", to=TO)
    return Download(url, whole.content, whole.headers["etag"], auth)


def fetch(api: Api, d: Download, method: str = "GET", **headers: str) -> Any:
    return api.client.request(method, d.url, headers={**d.auth, **headers})


def downloads(api: Api) -> list[str]:
    return [row.resource for row in audit_rows(api.engine, "audit.export.download")]


# --------------------------------------------------------------------------- ranges


def test_a_download_and_its_head_say_they_accept_byte_ranges(api: Api) -> None:
    d = finished(api)
    for method in ("GET", "HEAD"):
        resp = fetch(api, d, method)
        assert resp.status_code == 200
        assert resp.headers["accept-ranges"] == "bytes"
        assert resp.headers["content-length"] == str(d.size)
        assert "content-range" not in resp.headers


def test_one_byte_range_is_a_206_of_exactly_those_bytes_and_is_audited(api: Api) -> None:
    d = finished(api)
    n = d.size
    cases = [  # Range, first byte, last byte
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, n - 1),
        ("bytes=-10", n - 10, n - 1),
        ("bytes=5-5", 5, 5),
        (f"bytes={n - 1}-", n - 1, n - 1),
        ("bytes=0-99999999999", 0, n - 1),  # past the end: clipped to the file
        ("bytes=-" + "9" * 30, 0, n - 1),  # a suffix longer than the file: all of it
        ("bytes=" + "0" * 30 + "7-8", 7, 8),  # leading zeros are still numbers
        ("Bytes = 3-4", 3, 4),
    ]
    for header, first, last in cases:
        resp = fetch(api, d, Range=header)
        assert resp.status_code == 206, (header, resp.text[:200])
        assert resp.content == d.body[first : last + 1], header
        assert resp.headers["content-range"] == f"bytes {first}-{last}/{n}", header
        assert resp.headers["content-length"] == str(last - first + 1), header
        assert resp.headers["etag"] == d.etag and resp.headers["accept-ranges"] == "bytes"
        assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    job_id = d.url.rsplit("/", 1)[1]
    parts = [f"{job_id} (csv, {LIMIT + 25} rows, bytes {a}-{b}/{n})" for _, a, b in cases]
    assert downloads(api) == [f"{job_id} (csv, {LIMIT + 25} rows)", *parts]


def test_a_malformed_or_unsatisfiable_range_is_a_416_that_sends_and_audits_nothing(
    api: Api,
) -> None:
    d = finished(api)
    n = d.size
    for header in [
        f"bytes={n}-",
        f"bytes={n + 5}-{n + 9}",
        "bytes=" + "9" * 30 + "-",
        "bytes=-0",
        "bytes=5-2",
        "bytes=abc",
        "bytes=",
        "bytes=-",
        "bytes 0-5",
        "bytes=0x10-",
        "bytes=1.5-",
        "bytes=+1-2",
        "bytes=1_0-20",
        "0-5",
    ]:
        resp = fetch(api, d, Range=header)
        body = status(resp, 416, "RangeNotSatisfiable")
        assert resp.headers["content-range"] == f"bytes */{n}", header
        assert f"the file has {n} bytes" in body["message"]
    assert len(downloads(api)) == 1  # finished()'s whole download only


def test_several_ranges_or_another_unit_get_the_whole_file(api: Api) -> None:
    d = finished(api)
    for header in ("bytes=0-1,5-6", "bytes=0-1, 3-4", "bytes=-5,0-", "items=0-5"):
        resp = fetch(api, d, Range=header)
        assert resp.status_code == 200, header
        assert resp.content == d.body and "content-range" not in resp.headers


def test_if_range_keeps_the_range_only_for_the_current_etag(api: Api) -> None:
    d = finished(api)
    resp = fetch(api, d, Range="bytes=100-", **{"If-Range": d.etag})
    assert resp.status_code == 206 and resp.content == d.body[100:]
    for other in (
        "W/" + d.etag,  # If-Range compares strongly
        '"sha256-' + "0" * 64 + '"',
        "Wed, 02 Dec 2026 10:00:00 GMT",
    ):
        resp = fetch(api, d, Range="bytes=100-", **{"If-Range": other})
        assert resp.status_code == 200, other
        assert resp.content == d.body


def test_head_ignores_a_range_and_answers_as_the_whole_get(api: Api) -> None:
    d = finished(api)
    resp = fetch(api, d, "HEAD", Range="bytes=0-9")
    assert resp.status_code == 200 and resp.content == b""
    assert resp.headers["content-length"] == str(d.size)
    assert "content-range" not in resp.headers


# --------------------------------------------------------------------------- conditional


def test_if_none_match_with_the_etag_is_a_304_without_a_body_or_an_audit(api: Api) -> None:
    d = finished(api)
    for condition in (d.etag, "W/" + d.etag, "*", f'"sha256-{"0" * 64}", {d.etag}'):
        for method in ("GET", "HEAD"):
            resp = fetch(api, d, method, **{"If-None-Match": condition})
            assert resp.status_code == 304, (condition, method)
            assert resp.content == b""
            assert resp.headers["etag"] == d.etag
            assert resp.headers.get("content-length", "0") == "0"
            assert resp.headers["cache-control"] == "no-store"
    # If-None-Match is read before Range (RFC 9110 13.2.2).
    resp = fetch(api, d, Range="bytes=0-9", **{"If-None-Match": d.etag})
    assert resp.status_code == 304
    assert len(downloads(api)) == 1  # nothing sent, nothing audited


def test_if_none_match_with_another_etag_gets_the_file(api: Api) -> None:
    d = finished(api)
    resp = fetch(api, d, **{"If-None-Match": f'"sha256-{"0" * 64}"'})
    assert resp.status_code == 200 and resp.content == d.body


def test_download_answers_say_nothing_varies(api: Api) -> None:
    # They are never compressed (ApiMiddleware drops Accept-Encoding before Streamlit's
    # gzip layer, whose identity path would otherwise still add Vary: Accept-Encoding).
    d = finished(api)
    for headers in ({}, {"Range": "bytes=0-9"}, {"If-None-Match": d.etag}):
        resp = fetch(api, d, **headers, **{"Accept-Encoding": "gzip"})
        assert resp.status_code in (200, 206, 304)
        assert "vary" not in resp.headers and "content-encoding" not in resp.headers


# --------------------------------------------------------------------------- bare tokens


def bare(api: Api, path: str, token: str, **params: str) -> Any:
    return api.client.get("/api/v1" + path, params=params, headers={"Authorization": token})


def test_a_bare_token_is_taken_like_a_bearer_token(api: Api) -> None:
    add(api.engine, 10)
    resp = bare(api, "/audit/export", api.auditor, to=TO)
    assert resp.status_code == 200, resp.text
    assert resp.content == library_bytes(api.engine, "csv", to=TO, namespace="production")
    [row] = audit_rows(api.engine, "audit.export")
    assert (row.user, row.role) == ("ana@empresa.com", "auditor")


def test_a_bare_token_downloads_a_job(api: Api) -> None:
    d = finished(api)
    resp = api.client.get(d.url, headers={"Authorization": f"  {api.admin}  "})
    assert resp.status_code == 200 and resp.content == d.body
    assert len(downloads(api)) == 2


def test_bare_tokens_are_refused_like_bearer_ones(api: Api) -> None:
    revoked, _ = create_token(api.engine, "ana@empresa.com", LOCAL_ADMIN)
    revoke_token(api.engine, "_".join(revoked.split("_")[:2]), LOCAL_ADMIN)
    for header, says in [
        (revoked, "was revoked"),
        ("not-a-token", "malformed"),
        ("aep_00000000_" + "x" * 43, "not valid"),
        (f"Basic {api.admin}", "must be: Bearer <token>"),
        (f"{api.admin} {api.admin}", "must be: Bearer <token>"),
        ("Bearer", "must be: Bearer <token>"),
    ]:
        resp = bare(api, "/audit/export", header, to=TO)
        assert says in status(resp, 401, "Unauthorized")["message"], header
        challenge = resp.headers["www-authenticate"]
        assert challenge == 'Bearer realm="audit-export", error="invalid_token"', header


def test_refusals_of_a_bare_token_count_against_that_token(api: Api) -> None:
    with_settings(api, max_refusals=2, refusal_window_seconds=60.0)
    add(api.engine, 5)
    for _ in range(2):
        status(bare(api, "/audit/export", api.viewer, to=TO), 403, "Forbidden")
    resp = bare(api, "/audit/export", api.viewer, to=TO)
    prefix = "_".join(api.viewer.split("_")[:2])
    assert f"token {prefix} was refused 2 times" in status(resp, 429, "TooManyRequests")["message"]
    [denied] = audit_rows(api.engine, "portal.access_denied")
    assert (denied.user, denied.role) == ("vera@empresa.com", "viewer")
    # The address is not yet over its own limit (three times as many): others still pass.
    assert api.get("/audit/export", api.admin, to=TO).status_code == 200


# --------------------------------------------------------------------------- job documents


def stored_expiry(api: Api, job_id: str) -> str:
    t = ExportJob.__table__
    with api.engine.connect() as conn:
        stored = conn.execute(select(t.c.expires_at).where(t.c.job_id == job_id)).scalar_one()
    return format_instant(stored)


def test_a_queued_jobs_expiry_holds_still_between_polls(api: Api) -> None:
    add(api.engine, LIMIT + 5)
    queued = api.get("/audit/export", api.admin, to=TO).json()
    job_id = queued["metadata"]["jobId"]
    first = api.get(f"/audit/export/jobs/{job_id}", api.admin).json()["status"]
    time.sleep(1.2)  # past a second boundary: a value computed from "now" would move
    again = api.get(f"/audit/export/jobs/{job_id}", api.admin).json()["status"]
    polled = api.get(f"/audit/export/download/{job_id}", api.admin)
    assert polled.status_code == 202
    expiries = {
        queued["status"]["expiresAt"],
        first["expiresAt"],
        again["expiresAt"],
        polled.json()["status"]["expiresAt"],
    }
    # One value, the stored one, written like every other instant (fraction and all).
    assert expiries == {stored_expiry(api, job_id)}
    assert all(first[k] == again[k] for k in first)


def test_a_finished_jobs_expiry_is_the_stored_one_in_the_apis_form(api: Api) -> None:
    d = finished(api)
    job_id = d.url.rsplit("/", 1)[1]
    doc = api.get(f"/audit/export/jobs/{job_id}", api.admin).json()["status"]
    assert doc["expiresAt"] == stored_expiry(api, job_id)
    assert re.fullmatch(INSTANT_PATTERN, doc["expiresAt"])


@pytest.mark.parametrize("path", ["/audit/export/jobs/{id}", "/audit/export/download/{id}"])
def test_a_job_unknown_to_a_bare_token_is_not_found(api: Api, path: str) -> None:
    resp = bare(api, path.format(id="export-20200101-999"), api.admin)
    status(resp, 404, "NotFound")


# --------------------------------------------------------------------------- the document


def component(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """A component schema, standalone (its $refs resolve against the document)."""
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


def test_every_parameter_example_is_a_request_the_api_accepts(api: Api) -> None:
    add(api.engine, 5)
    doc = api.client.get("/api/v1/openapi.json").json()
    params = doc["paths"]["/audit/export"]["get"]["parameters"]
    examples = {p["name"]: p["schema"]["example"] for p in params if "example" in p["schema"]}
    assert set(examples) == {"from", "to"}
    flt = AuditFilter.parse(start=examples["from"], end=examples["to"])
    assert flt.start is not None and flt.end is not None and flt.start < flt.end
    resp = api.get("/audit/export", api.admin, **examples)
    assert resp.status_code == 200, resp.text
    job_id = doc["paths"]["/audit/export/jobs/{jobId}"]["get"]["parameters"][0]["schema"]
    assert re.fullmatch(JOB_ID_PATTERN, job_id["example"])


def test_what_the_api_writes_validates_against_the_document(api: Api) -> None:
    add(api.engine, 5)
    doc = api.client.get("/api/v1/openapi.json").json()
    envelope = Draft202012Validator(component(doc, "AuditExport"))
    # No `to`: the export also holds the portal's own records, stamped to the microsecond.
    export = api.get("/audit/export", api.admin, format="json").json()
    assert any("." in r["timestamp"] for r in export["records"]), "no fractional timestamp"
    envelope.validate(export)
    envelope.validate(api.get("/audit/export", api.admin, format="json", to=TO).json())
    with_settings(api, sync_export_limit=1)
    queued = api.get("/audit/export", api.admin, to=TO)
    assert queued.status_code == 202
    Draft202012Validator(component(doc, "AuditExportJob")).validate(queued.json())
