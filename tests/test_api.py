"""The HTTP API in-process: the real st.App (lifespan and routes) through TestClient.

Streamlit's runtime starts once per process, so one TestClient(app) serves the whole
test session; each test installs a context on its own database for the routes, and runs
the real export worker on it when a job has to finish.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, update

from audit_core import access, context, export, store, worker
from audit_core.access import LOCAL_ADMIN
from audit_core.config import Settings, Timing
from audit_core.context import Context
from audit_core.demo import generate
from audit_core.filters import AuditFilter
from audit_core.http import links
from audit_core.models import AuditRecord, ExportJob

from .conftest import finished_job

with warnings.catch_warnings():  # starlette warns that httpx is deprecated for TestClient
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

DATA_END = datetime(2026, 3, 20, tzinfo=UTC)
TO = "2026-03-21T00:00:00Z"  # after every demo record, before any record the API writes
LIMIT = 50


@dataclass
class Api:
    client: TestClient
    ctx: Context
    admin: str
    auditor: str  # production only
    viewer: str

    @property
    def engine(self) -> Engine:
        return self.ctx.engine

    def get(self, path: str, token: str | None = None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.get("/api/v1" + path, params=params, headers=headers)


@pytest.fixture
def api(client: TestClient, settings: Settings) -> Iterator[Api]:
    """The API on this test's fresh database (limit 50 rows), with three users' tokens."""
    settings = replace(settings, sync_export_limit=LIMIT, timing=Timing(poll_seconds=0.1))
    ctx = context.build(settings)
    previous = context.install(ctx)
    tokens = {}
    for email, role, ns in (
        ("boss@empresa.com", "admin", "*"),
        ("ana@empresa.com", "auditor", "production"),
        ("vera@empresa.com", "viewer", "*"),
    ):
        access.upsert_user(ctx.engine, email, role, ns, LOCAL_ADMIN, settings=ctx.settings)
        tokens[role], _ = access.create_token(ctx.engine, email, LOCAL_ADMIN, settings=ctx.settings)
    yield Api(client, ctx, tokens["admin"], tokens["auditor"], tokens["viewer"])
    context.install(previous)
    ctx.engine.dispose()


def add(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        store.append(conn, generate(n, seed=7, end=DATA_END))


def library_bytes(engine: Engine, fmt: str, **params: str) -> bytes:
    """What the library itself exports for the same filter."""
    with engine.connect() as conn:
        plan = export.plan(conn, AuditFilter.from_params(params), fmt)
        return b"".join(export.chunks(conn, plan))


def without_exported_at(body: bytes) -> bytes:
    doc = json.loads(body)
    doc["metadata"]["exportedAt"] = "-"
    return json.dumps(doc).encode()


def status(resp: Any, code: int, reason: str) -> dict[str, Any]:
    assert resp.status_code == code, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body == {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": body["message"],
    }
    assert "Traceback" not in body["message"]
    return body


def audit_rows(engine: Engine, action: str) -> list[Any]:
    t = AuditRecord.__table__
    with engine.connect() as conn:
        return list(conn.execute(select(t).where(t.c.action == action).order_by(t.c.seq)))


# --------------------------------------------------------------------------- 200


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_export_body_equals_the_library_export(api: Api, fmt: str) -> None:
    add(api.engine, 40)
    resp = api.get("/audit/export", api.admin, format=fmt, to=TO)
    assert resp.status_code == 200, resp.text
    expected = library_bytes(api.engine, fmt, to=TO)
    if fmt == "json":
        assert without_exported_at(resp.content) == without_exported_at(expected)
        assert resp.json()["metadata"]["totalRecords"] == 40
    else:
        assert resp.content == expected
    assert resp.headers["x-total-records"] == "40"


def test_csv_export_has_the_seed_headers(api: Api) -> None:
    add(api.engine, 10)
    resp = api.get("/audit/export", api.admin, to=TO)  # csv is the default
    today = datetime.now(UTC).strftime("%Y%m%d")
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert resp.headers["content-disposition"] == f'attachment; filename="audit-export-{today}.csv"'
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert resp.text.splitlines()[0] == (
        "id,timestamp,action,user,role,resource,resourceType,namespace,sourceIP,checksum"
    )


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("json", "application/json"), ("jsonl", "application/x-ndjson")],
)
def test_json_formats_have_their_content_types(api: Api, fmt: str, content_type: str) -> None:
    add(api.engine, 5)
    resp = api.get("/audit/export", api.admin, format=fmt, to=TO)
    assert resp.headers["content-type"] == content_type


def test_filters_and_namespace_grants_shape_the_export(api: Api) -> None:
    add(api.engine, 200)
    params = {"from": "2026-02-01", "to": TO, "action": "runbook.*,user.login"}
    resp = api.get("/audit/export", api.auditor, format="jsonl", **params)
    assert resp.status_code in (200, 202), resp.text
    if resp.status_code == 200:
        want = library_bytes(api.engine, "jsonl", namespace="production", **params)
        assert resp.content == want
        for line in resp.content.splitlines():
            assert json.loads(line)["namespace"] == "production"


def test_each_export_is_audited_with_who_what_and_where(api: Api) -> None:
    add(api.engine, 30)
    api.get("/audit/export", api.auditor, format="csv", to=TO, action="runbook.*")
    [row] = audit_rows(api.engine, "audit.export")
    assert row.user == "ana@empresa.com"
    assert row.role == "auditor"
    assert row.namespace == "audit-portal"
    assert row.sourceIP == "testclient"
    assert "api csv" in row.resource and "runbook.*" in row.resource


# --------------------------------------------------------------------------- jobs


def run_worker_until(api: Api, job_id: str, states: tuple[str, ...]) -> dict[str, Any]:
    threads = worker.start_in_process(api.ctx)
    try:
        deadline = time.monotonic() + 60
        while True:
            doc = api.get(f"/audit/export/jobs/{job_id}", api.admin).json()
            if doc["status"]["state"] in states or time.monotonic() > deadline:
                return doc
            time.sleep(0.1)
    finally:
        threads.stop()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_over_the_limit_queues_a_job_whose_download_equals_a_direct_export(
    api: Api, fmt: str
) -> None:
    add(api.engine, LIMIT + 25)
    resp = api.get("/audit/export", api.admin, format=fmt, to=TO)
    assert resp.status_code == 202, resp.text
    doc = resp.json()
    job_id = doc["metadata"]["jobId"]
    assert job_id == f"export-{datetime.now(UTC):%Y%m%d}-001"
    assert doc["apiVersion"] == "v1" and doc["kind"] == "AuditExportJob"
    assert doc["status"]["state"] == "queued"
    assert doc["status"]["estimatedRecords"] == LIMIT + 25
    assert doc["status"]["downloadUrl"] == f"/api/v1/audit/export/download/{job_id}"
    assert doc["status"]["expiresAt"].endswith("Z")
    assert resp.headers["location"] == f"/api/v1/audit/export/jobs/{job_id}"

    # Not ready yet: the download link answers 202 with the job and Retry-After.
    early = api.get(f"/audit/export/download/{job_id}", api.admin)
    assert early.status_code == 202
    assert early.headers["retry-after"].isdigit()
    assert early.json()["metadata"]["jobId"] == job_id

    done = run_worker_until(api, job_id, ("completed", "failed"))
    assert done["status"]["state"] == "completed", done

    got = api.get(f"/audit/export/download/{job_id}", api.admin)
    assert got.status_code == 200
    expected = library_bytes(api.engine, fmt, to=TO)
    if fmt == "json":
        assert without_exported_at(got.content) == without_exported_at(expected)
    else:
        assert got.content == expected
    sha = hashlib.sha256(got.content).digest()
    assert got.headers["content-length"] == str(len(got.content))
    assert got.headers["repr-digest"] == f"sha-256=:{base64.b64encode(sha).decode()}:"
    assert got.headers["etag"] == f'"sha256-{sha.hex()}"'
    assert got.headers["content-disposition"].startswith('attachment; filename="audit-export-')
    [row] = audit_rows(api.engine, "audit.export.download")
    assert row.user == "boss@empresa.com" and job_id in row.resource


def test_a_signed_portal_link_downloads_without_a_token(api: Api) -> None:
    add(api.engine, LIMIT * 6)  # enough that ana's production share is over the limit
    queued = api.get("/audit/export", api.auditor, to=TO)
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["metadata"]["jobId"]
    run_worker_until(api, job_id, ("completed", "failed"))
    url = links.sign_download(job_id, "ana@empresa.com", api.ctx.settings)
    ok = api.client.get(url)
    assert ok.status_code == 200
    assert ok.content == library_bytes(api.engine, "csv", to=TO, namespace="production")
    other = links.sign_download("export-20260101-001", "ana@empresa.com", api.ctx.settings)
    forged = url.split("?")[0] + "?" + other.split("?")[1]
    resp = api.client.get(forged)
    assert "made for another export job" in status(resp, 401, "Unauthorized")["message"]
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    old = links.sign_download(
        job_id, "ana@empresa.com", api.ctx.settings, now=datetime.now(UTC) - timedelta(hours=1)
    )
    assert "has expired" in status(api.client.get(old), 401, "Unauthorized")["message"]


def test_expired_job_download_is_gone(api: Api) -> None:
    add(api.engine, LIMIT + 1)
    job_id = api.get("/audit/export", api.admin, to=TO).json()["metadata"]["jobId"]
    run_worker_until(api, job_id, ("completed", "failed"))
    t = ExportJob.__table__
    with api.engine.begin() as conn:
        conn.execute(
            update(t)
            .where(t.c.job_id == job_id)
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    status(api.get(f"/audit/export/download/{job_id}", api.admin), 410, "Gone")


def test_a_failed_job_has_no_file_to_download(api: Api) -> None:
    add(api.engine, LIMIT + 1)
    job_id = api.get("/audit/export", api.admin, to=TO).json()["metadata"]["jobId"]
    t = ExportJob.__table__
    with api.engine.begin() as conn:
        conn.execute(
            update(t).where(t.c.job_id == job_id).values(state="failed", last_error="disk full")
        )
    body = status(api.get(f"/audit/export/download/{job_id}", api.admin), 409, "Conflict")
    assert "failed: disk full" in body["message"]


def test_jobs_of_other_people_are_not_found(api: Api) -> None:
    add(api.engine, LIMIT + 1)
    job_id = api.get("/audit/export", api.admin, to=TO).json()["metadata"]["jobId"]
    for path in (f"/audit/export/jobs/{job_id}", f"/audit/export/download/{job_id}"):
        status(api.get(path, api.auditor), 404, "NotFound")
        assert api.get(path, api.admin).status_code in (200, 202)
    status(api.get("/audit/export/jobs/export-20200101-999", api.admin), 404, "NotFound")
    status(api.get("/audit/export/download/../../etc/passwd", api.admin), 404, "NotFound")


def test_queued_jobs_are_capped_per_user(api: Api) -> None:
    api.ctx = replace(api.ctx, settings=replace(api.ctx.settings, max_queued_jobs=1))
    context.install(api.ctx)
    add(api.engine, LIMIT + 1)
    assert api.get("/audit/export", api.admin, to=TO).status_code == 202
    resp = api.get("/audit/export", api.admin, to=TO)
    status(resp, 429, "TooManyRequests")
    assert int(resp.headers["retry-after"]) > 0


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "header",
    [None, "Basic Ym9zczpwdw==", "Bearer", "Bearer not-a-token", "Bearer aep_00000000_" + "x" * 43],
)
def test_missing_or_bad_tokens_are_unauthorized(api: Api, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for path in (
        "/audit/export",
        "/audit/export/jobs/export-20260101-001",
        "/audit/export/download/export-20260101-001",
    ):
        resp = api.client.get("/api/v1" + path, headers=headers)
        status(resp, 401, "Unauthorized")
        assert resp.headers["www-authenticate"].startswith("Bearer")


def test_revoked_and_expired_tokens_are_unauthorized(api: Api) -> None:
    prefix = "_".join(api.auditor.split("_")[:2])
    access.revoke_token(api.engine, prefix, LOCAL_ADMIN, settings=api.ctx.settings)
    resp = api.get("/audit/export", api.auditor)
    assert "revoked" in status(resp, 401, "Unauthorized")["message"]
    t = access.TOKENS
    with api.engine.begin() as conn:
        conn.execute(update(t).values(expires_at=datetime.now(UTC) - timedelta(days=1)))
    resp = api.get("/audit/export", api.admin)
    assert "expired" in status(resp, 401, "Unauthorized")["message"]


def test_role_and_namespace_grants_are_forbidden(api: Api) -> None:
    add(api.engine, 5)
    status(api.get("/audit/export", api.viewer, to=TO), 403, "Forbidden")
    resp = api.get("/audit/export", api.auditor, to=TO, namespace="staging")
    assert "staging" in status(resp, 403, "Forbidden")["message"]
    # Each refusal is itself audited, once, with who asked and what for.
    denied = audit_rows(api.engine, "portal.access_denied")
    assert len(denied) == 2
    assert denied[1].resource.startswith("api /api/v1/audit/export: ")
    assert "staging" in denied[1].resource
    assert denied[1].namespace == "audit-portal"


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"format": "xml"}, "format"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "earlier"),
        ({"action": "run*book"}, "action"),
        ({"user": "x" * 1001}, "longer"),
        ({"namespace": "a\x01b"}, "control"),
        # Control characters around a value are refused too, never stripped away.
        ({"format": "\r\ncsv"}, "control"),
        ({"format": "csv\n"}, "control"),
        ({"from": "\t2026-03-01"}, "control"),
        ({"to": "\r\n"}, "control"),
        ({"namespace": "production\r\n"}, "control"),
        ({"namespaces": "production"}, "unknown query parameter"),
        ({"format": ""}, "empty"),
        ({"action": ",".join(["a"] * 900), "user": ",".join(["u"] * 900)}, "query string"),
        ({"from": " "}, "empty"),
        ({"to": "0001-01-01T00:00:00+01:00"}, "ISO 8601"),
    ],
)
def test_bad_parameters_are_bad_requests(api: Api, params: dict[str, str], word: str) -> None:
    resp = api.get("/audit/export", api.admin, **params)
    assert word in status(resp, 400, "BadRequest")["message"]


def test_unknown_paths_and_methods_answer_json(api: Api) -> None:
    resp = api.get("/no/such/thing", api.admin)
    status(resp, 404, "NotFound")
    assert resp.headers["cache-control"] == "no-store"
    resp = api.client.post("/api/v1/audit/export", headers={"Authorization": f"Bearer {api.admin}"})
    status(resp, 405, "MethodNotAllowed")
    assert resp.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/audit/export/jobs/C:x", "/audit/export/jobs/a%00b", "/a\\b"])
def test_odd_api_paths_are_json_not_found(api: Api, path: str) -> None:
    resp = api.get(path, api.admin)
    status(resp, 404, "NotFound")
    assert resp.headers["cache-control"] == "no-store"


def test_years_before_1000_are_written_with_four_digits(api: Api) -> None:
    resp = api.get("/audit/export", api.admin, format="json", to="0350-07-14T10:43:06Z")
    assert resp.status_code == 200, resp.text
    assert resp.json()["metadata"]["to"] == "0350-07-14T10:43:06Z"


def test_a_server_error_is_a_status_body_without_a_traceback(api: Api) -> None:
    # A database that does not answer: the query fails inside the route.
    unreachable = create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    context.install(replace(api.ctx, engine=unreachable))
    resp = api.get("/audit/export", api.admin)
    body = status(resp, 500, "InternalError")
    assert "reference" in body["message"] and "AUDIT_SYNC" not in body["message"]


def test_openapi_document_lists_the_routes_and_seed_parameters(api: Api) -> None:
    resp = api.client.get("/api/v1/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/audit/export",
        "/audit/export/jobs/{jobId}",
        "/audit/export/download/{jobId}",
        "/openapi.json",
        "/audit/keys",
        "/audit/checkpoint",
        "/audit/proof/inclusion",
        "/audit/proof/consistency",
        "/audit/export/download/{jobId}/manifest",
        "/audit/export/download/{jobId}/manifest.sig",
        "/audit/export/manifests/{exportId}",
        "/audit/export/manifests/{exportId}.sig",
    }
    names = [p["name"] for p in doc["paths"]["/audit/export"]["get"]["parameters"]]
    assert names == ["format", "from", "to", "action", "user", "namespace"]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


# --------------------------------------------------------------------------- access at download


def an_auditors_finished_job(api: Api) -> str:
    """A job ana (auditor, production) queued, run to completion."""
    add(api.engine, LIMIT * 6)  # enough that ana's production share is over the limit
    queued = api.get("/audit/export", api.auditor, to=TO)
    assert queued.status_code == 202, queued.text
    job_id = str(queued.json()["metadata"]["jobId"])
    assert run_worker_until(api, job_id, ("completed", "failed"))["status"]["state"] == "completed"
    return job_id


@pytest.mark.parametrize(
    ("role", "grants", "says"),
    [
        ("viewer", "production", "ana@empresa.com is now a viewer, who cannot export"),
        ("auditor", "staging", "ana@empresa.com is no longer granted namespace production"),
    ],
)
def test_a_finished_job_is_refused_once_its_requester_may_no_longer_read_it(
    api: Api, role: str, grants: str, says: str
) -> None:
    job_id = an_auditors_finished_job(api)
    link = links.sign_download(job_id, "ana@empresa.com", api.ctx.settings)  # made before
    access.upsert_user(
        api.engine, "ana@empresa.com", role, grants, LOCAL_ADMIN, settings=api.ctx.settings
    )
    by_token = api.get(f"/audit/export/download/{job_id}", api.auditor)
    assert says in status(by_token, 403, "Forbidden")["message"]
    by_link = api.client.get(link)
    assert says in status(by_link, 403, "Forbidden")["message"]
    assert api.client.head(link).status_code == 403
    assert audit_rows(api.engine, "audit.export.download") == []
    # Audited; the same refusal of the same person within the window is one record.
    [denied] = audit_rows(api.engine, "portal.access_denied")
    assert (denied.user, denied.role) == ("ana@empresa.com", role)
    assert job_id in denied.resource and says in denied.resource
    # Admins may read every job.
    assert api.get(f"/audit/export/download/{job_id}", api.admin).status_code == 200


def test_a_requester_who_still_reads_the_jobs_namespaces_keeps_the_download(api: Api) -> None:
    job_id = an_auditors_finished_job(api)
    access.upsert_user(
        api.engine, "ana@empresa.com", "auditor", "production,staging", LOCAL_ADMIN,
        settings=api.ctx.settings,
    )  # fmt: skip
    assert api.get(f"/audit/export/download/{job_id}", api.auditor).status_code == 200
    link = links.sign_download(job_id, "ana@empresa.com", api.ctx.settings)
    assert api.client.get(link).status_code == 200


# --------------------------------------------------------------------------- refusal floods


def with_settings(api: Api, **changes: Any) -> None:
    api.ctx = replace(api.ctx, settings=replace(api.ctx.settings, **changes))
    context.install(api.ctx)


def denied_resources(api: Api) -> list[str]:
    return [r.resource for r in audit_rows(api.engine, "portal.access_denied")]


def test_a_token_refused_too_often_is_turned_away_and_its_refusals_coalesced(api: Api) -> None:
    window = 3.0
    with_settings(api, refusal_window_seconds=window)
    add(api.engine, 5)
    opened = time.monotonic()
    status(api.get("/audit/export", api.viewer, to=TO), 403, "Forbidden")
    first_answered = time.monotonic()
    for _ in range(9):
        status(api.get("/audit/export", api.viewer, to=TO), 403, "Forbidden")
    for _ in range(2):
        resp = api.get("/audit/export", api.viewer, to=TO)
        body = status(resp, 429, "TooManyRequests")
        assert 1 <= int(resp.headers["retry-after"]) <= window
        assert "refused 10 times" in body["message"] and "token aep_" in body["message"]
    assert time.monotonic() - opened < window, "too slow to test inside the window"
    # Ten refusals, one record so far: the repeats are only counted.
    first = "api /api/v1/audit/export: your role may view records but not export them"
    assert denied_resources(api) == [first]
    # Only the token is turned away: others at the same address are not (their limit is 3x).
    assert api.get("/audit/export", api.admin, to=TO).status_code == 200

    time.sleep(max(0.0, first_answered + window + 0.1 - time.monotonic()))
    # The window has closed: the next request writes its summaries, and the token may ask again.
    status(api.get("/audit/export", api.viewer, to=TO), 403, "Forbidden")
    prefix = "_".join(api.viewer.split("_")[:2])
    assert denied_resources(api) == [
        first,
        f"{first} (repeated 9 times in 3 s)",
        f"api: token {prefix} turned away 2 more requests (429) after 10 refusals in 3 s",
        first,
    ]
    for row in audit_rows(api.engine, "portal.access_denied"):
        assert (row.user, row.role, row.sourceIP) == ("vera@empresa.com", "viewer", "testclient")


def test_an_address_refused_too_often_is_turned_away_whatever_the_token(api: Api) -> None:
    with_settings(api, max_refusals=2, refusal_window_seconds=60.0)
    make = access.create_token
    tokens = [make(api.engine, "vera@empresa.com", LOCAL_ADMIN)[0] for _ in range(3)]
    for token in tokens:  # two refusals each: no token reaches its own limit of two... yet
        for _ in range(2):
            status(api.get("/audit/export", token, to=TO), 403, "Forbidden")
    # Six from this address (3 x 2): everyone there waits for the window to end.
    resp = api.get("/audit/export", api.admin, to=TO)
    assert (
        "address testclient was refused 6 times" in status(resp, 429, "TooManyRequests")["message"]
    )
    assert int(resp.headers["retry-after"]) > 50
    status(api.client.get("/api/v1/audit/export/jobs/export-20260101-001"), 429, "TooManyRequests")
    assert len(denied_resources(api)) == 1  # six refusals, one (who, what): one record


def test_unauthenticated_requests_are_not_counted_as_refusals(api: Api) -> None:
    with_settings(api, max_refusals=1)
    for _ in range(5):
        status(api.get("/audit/export", "aep_00000000_" + "x" * 43), 401, "Unauthorized")
    assert api.get("/audit/export", api.admin, to=TO).status_code == 200
    assert denied_resources(api) == []


# --------------------------------------------------------------------------- headers and methods


API_POLICY = "default-src 'none'; frame-ancestors 'none'"


def test_every_api_answer_carries_the_security_headers(api: Api) -> None:
    add(api.engine, 5)
    for resp in (
        api.get("/audit/export", api.admin, to=TO),
        api.get("/audit/export"),
        api.get("/audit/export", api.viewer),
        api.get("/no/such/path", api.admin),
        api.get("/a\\b", api.admin),
        api.client.get("/api/v1/openapi.json"),
        api.client.delete("/api/v1/audit/export"),
    ):
        assert resp.headers["content-security-policy"] == API_POLICY, resp.url
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["cache-control"] == "no-store"


def test_the_portal_page_carries_a_policy_that_forbids_framing(api: Api) -> None:
    resp = api.client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    policy = resp.headers["content-security-policy"]
    for directive in (
        "frame-ancestors 'none'",
        "default-src 'self'",
        "script-src 'self' 'sha256-",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
    ):
        assert directive in policy, directive
    assert "'unsafe-eval'" not in policy  # only 'wasm-unsafe-eval': no JavaScript eval
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"


METHODS = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "QUERY",
           "MKCOL", "BREW"]  # fmt: skip
PATHS = [
    "/audit/export",
    "/audit/export/jobs/export-20260101-001",
    "/audit/export/download/export-20260101-001",
    "/openapi.json",
    "/no/such/path",
    "/a\\b",
]


def test_every_method_but_get_and_head_is_a_json_405_on_every_api_path(api: Api) -> None:
    auth = {"Authorization": f"Bearer {api.admin}"}
    for method in METHODS:
        for path in PATHS:
            resp = api.client.request(method, "/api/v1" + path, headers=auth)
            body = status(resp, 405, "MethodNotAllowed")
            assert method in body["message"], (method, path)
            assert resp.headers["allow"] == "GET, HEAD"
            assert resp.headers["cache-control"] == "no-store"
            assert resp.headers["content-security-policy"] == API_POLICY


def same_but_body(get: Any, head: Any, *, streamed: bool = False) -> None:
    """HEAD answered as GET was: status and headers equal, no body."""
    assert head.status_code == get.status_code
    assert head.content == b""
    # A stream's Link names a manifest reserved as it starts. Streamlit's gzip layer adds
    # Vary to a body large enough to compress, which an empty one is not.
    skip = {"date", "vary", "link"} if streamed else {"date", "vary"}
    assert {k: v for k, v in head.headers.items() if k not in skip} == {
        k: v for k, v in get.headers.items() if k not in skip
    }


def test_head_answers_as_get_would_without_a_body(api: Api) -> None:
    add(api.engine, 10)
    auth = {"Authorization": f"Bearer {api.admin}"}
    for path, headers in [
        ("/audit/export?format=json&to=" + TO, auth),
        ("/audit/export?format=xml", auth),
        ("/audit/export", {}),
        ("/audit/export/jobs/export-20200101-999", auth),
        ("/no/such/path", auth),
        ("/openapi.json", {}),
    ]:
        get = api.client.get("/api/v1" + path, headers=headers)
        head = api.client.head("/api/v1" + path, headers=headers)
        same_but_body(get, head, streamed=path.startswith("/audit/export?format=json"))
    # A HEAD export exports nothing: no audit record.
    assert len(audit_rows(api.engine, "audit.export")) == 1  # the GET's


def test_head_queues_no_job_and_downloads_nothing(api: Api) -> None:
    add(api.engine, LIMIT + 5)
    head = api.client.head("/api/v1/audit/export", params={"to": TO},
                           headers={"Authorization": f"Bearer {api.admin}"})  # fmt: skip
    assert head.status_code == 202 and "location" not in head.headers
    t = ExportJob.__table__
    with api.engine.connect() as conn:
        assert list(conn.execute(select(t.c.job_id))) == []
    job_id = api.get("/audit/export", api.admin, to=TO).json()["metadata"]["jobId"]
    run_worker_until(api, job_id, ("completed", "failed"))
    path = f"/api/v1/audit/export/download/{job_id}"
    auth = {"Authorization": f"Bearer {api.admin}"}
    head = api.client.head(path, headers=auth)
    get = api.client.get(path, headers=auth)
    same_but_body(get, head)
    assert int(head.headers["content-length"]) == len(get.content) > 0
    assert len(audit_rows(api.engine, "audit.export.download")) == 1  # the GET's


def test_header_fields_too_large_are_a_json_431(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.admin}", "X-Padding": "x" * 20_000}
    resp = api.client.get("/api/v1/audit/export", headers=headers)
    assert "header fields" in status(resp, 431, "RequestHeaderFieldsTooLarge")["message"]
    assert resp.headers["cache-control"] == "no-store"


# --------------------------------------------------------------------------- failing jobs


def test_a_job_whose_file_cannot_be_written_says_why_from_the_first_attempt(
    api: Api, tmp_path: Any
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the export folder should be")
    with_settings(api, export_dir=blocker / "exports")
    add(api.engine, LIMIT + 1)
    job_id = api.get("/audit/export", api.admin, to=TO).json()["metadata"]["jobId"]
    before = datetime.now(UTC)
    runner = worker.Worker(api.engine, api.ctx.settings, timing=Timing(retry_seconds=60))
    assert runner.run_once() == job_id  # one failed attempt; the next waits a minute
    said = "the export file could not be written (Not a directory); the portal will retry"
    for doc in (
        api.get(f"/audit/export/jobs/{job_id}", api.admin).json(),
        api.get(f"/audit/export/download/{job_id}", api.admin).json(),  # the 202
    ):
        st = doc["status"]
        assert (st["state"], st["error"], st["attempts"], st["maxAttempts"]) == (
            "queued", said, 1, 3,
        )  # fmt: skip
        retry = datetime.fromisoformat(st["retryAt"].replace("Z", "+00:00"))
        assert before + timedelta(seconds=59) <= retry <= datetime.now(UTC) + timedelta(seconds=61)
        assert str(tmp_path) not in json.dumps(doc)  # no server path reaches the requester


def test_api_answers_are_never_compressed_and_say_nothing_varies(api: Api) -> None:
    add(api.engine, 40)  # a body well over the gzip layer's minimum size
    resp = api.client.get(
        "/api/v1/audit/export",
        params={"format": "jsonl", "to": TO},
        headers={"Authorization": f"Bearer {api.admin}", "Accept-Encoding": "gzip"},
    )
    assert resp.status_code == 200 and len(resp.content) > 2000
    assert "content-encoding" not in resp.headers
    assert "vary" not in resp.headers


def test_a_download_asked_for_a_job_nearly_done_waits_for_it(api: Api) -> None:
    add(api.engine, LIMIT + 25)
    queued = api.get("/audit/export", api.admin, format="csv", to=TO)
    assert queued.status_code == 202
    job_id = queued.json()["metadata"]["jobId"]
    assert queued.headers["retry-after"] == "1"  # 75 rows: well under a second
    # The worker starts only after the download was asked for: without the wait, a 202.
    workers: list[Any] = []
    starter = threading.Timer(0.3, lambda: workers.append(worker.start_in_process(api.ctx)))
    starter.start()
    try:
        got = api.get(f"/audit/export/download/{job_id}", api.admin)
    finally:
        starter.join()
        for w in workers:
            w.stop()
    assert got.status_code == 200, got.text
    assert got.content == library_bytes(api.engine, "csv", to=TO)


def test_retry_after_is_counted_at_the_pace_this_installation_has_kept(api: Api) -> None:
    """A big job that finished here at 10 rows/s (a slow disk, say): the next 75-row job is
    told to come back in 7 s, not the 1 s the bench machine's pace would say."""
    finished_job(api.engine, 900, "csv", 100_000, 10_000.0)
    add(api.engine, LIMIT + 25)
    queued = api.get("/audit/export", api.admin, format="csv", to=TO)
    assert queued.status_code == 202, queued.text
    assert queued.headers["retry-after"] == "7"  # 75 rows at 10 rows/s
    job_id = queued.json()["metadata"]["jobId"]
    assert api.get(f"/audit/export/jobs/{job_id}", api.admin).headers["retry-after"] == "7"
    assert api.get("/audit/export", api.admin, format="json", to=TO).headers["retry-after"] == "1"
