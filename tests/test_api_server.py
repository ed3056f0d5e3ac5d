"""The HTTP API over real HTTP: `streamlit run app.py` as a subprocess on a free loopback port."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from audit_core import access, export, store
from audit_core.access import LOCAL_ADMIN
from audit_core.config import Settings
from audit_core.demo import generate
from audit_core.filters import AuditFilter

from .e2e.harness import free_port, log_tail, start_streamlit, stop_process

ROOT = Path(__file__).resolve().parent.parent
DATA_END = datetime(2026, 3, 20, tzinfo=UTC)
TO = "2026-03-21T00:00:00Z"
LIMIT = 50

pytestmark = pytest.mark.slow


def add(engine: Engine, n: int, seed: int = 3, end: datetime = DATA_END) -> None:
    with engine.begin() as conn:
        store.append(conn, generate(n, seed=seed, end=end))


def library_bytes(engine: Engine, fmt: str, **params: str) -> bytes:
    with engine.connect() as conn:
        plan = export.plan(conn, AuditFilter.from_params(params), fmt)
        return b"".join(export.chunks(conn, plan))


def admin_token(engine: Engine, settings: Settings) -> str:
    access.upsert_user(engine, "boss@empresa.com", "admin", "*", LOCAL_ADMIN, settings=settings)
    token, _ = access.create_token(engine, "boss@empresa.com", LOCAL_ADMIN, settings=settings)
    return token


@contextmanager
def live_server(env: dict[str, str], tmp_path: Path, **extra: str) -> Iterator[str]:
    """Run the portal with `streamlit run app.py`; yield its base URL; stop it."""
    port = free_port()
    child = {k: v for k, v in env.items() if k.startswith("AUDIT_")}
    child.update(AUDIT_WORKER_POLL_SECONDS="0.2", AUDIT_SYNC_EXPORT_LIMIT=str(LIMIT))
    child.update(extra)
    proc = start_streamlit(ROOT, port, env=child, log_path=tmp_path / "streamlit.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def export_then_manifest(base: str, token: str) -> tuple[bytes, bytes]:
    """A CSV export read over one socket to its last chunk, then at once its manifest asked
    for over a second socket opened beforehand: (the export's body, the manifest answer)."""
    host, port = base.removeprefix("http://").split(":")
    auth = f"Host: {host}\r\nAuthorization: Bearer {token}\r\n"
    with (
        socket.create_connection((host, int(port))) as one,
        socket.create_connection((host, int(port))) as two,
    ):
        one.sendall(f"GET /api/v1/audit/export?to={TO} HTTP/1.1\r\n{auth}\r\n".encode())
        got = b""
        while not got.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's last chunk
            data = one.recv(65536)
            assert data, got[:300]
            got += data
        link = got.split(b"link: <", 1)[1].split(b">", 1)[0].decode()
        two.sendall(f"GET {link} HTTP/1.1\r\n{auth}Connection: close\r\n\r\n".encode())
        answer = b""
        while data := two.recv(65536):
            answer += data
    head, chunked = got.split(b"\r\n\r\n", 1)
    body = b""
    while True:  # undo the chunked transfer coding
        size_line, rest = chunked.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return body, answer
        body, chunked = body + rest[:size], rest[size + 2 :]


def test_the_live_server_answers_the_seed_api(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add(engine, 40)
    token = admin_token(engine, settings)
    auth = {"Authorization": f"Bearer {token}"}
    with (
        live_server(env, tmp_path) as base,
        httpx.Client(base_url=base, trust_env=False, timeout=30) as http,
    ):
        # 200: streamed CSV / JSON Lines equal to the library's own export.
        resp = http.get("/api/v1/audit/export", params={"to": TO}, headers=auth)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "text/csv; charset=utf-8"
        assert resp.headers["content-disposition"].startswith('attachment; filename="audit-export-')
        assert resp.content == library_bytes(engine, "csv", to=TO)
        # Its manifest is signed once the response has ended; asked for the moment the
        # last chunk has come (on a connection already open), it is waited for.
        body, manifest = export_then_manifest(base, token)
        assert manifest.startswith(b"HTTP/1.1 200 "), manifest[:300]
        doc = json.loads(manifest.split(b"\r\n\r\n", 1)[1])
        assert doc["file"]["sha256"] == hashlib.sha256(body).hexdigest()
        resp = http.get("/api/v1/audit/export", params={"to": TO, "format": "jsonl"}, headers=auth)
        assert resp.content == library_bytes(engine, "jsonl", to=TO)

        # Errors are JSON Status bodies, also for unknown API paths (not the UI page).
        resp = http.get("/api/v1/audit/export")
        assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["kind"] == "Status"
        resp = http.get("/api/v1/nothing/here", headers=auth)
        assert resp.status_code == 404 and resp.json()["reason"] == "NotFound"
        assert http.get("/").headers["content-type"].startswith("text/html")  # the portal

        # 202 over the limit; the in-process worker finishes it; the download is the export.
        add(engine, 30, seed=4, end=DATA_END - timedelta(days=100))  # other days, other ids
        resp = http.get("/api/v1/audit/export", params={"to": TO}, headers=auth)
        assert resp.status_code == 202, resp.text
        url = resp.json()["status"]["downloadUrl"]
        deadline = time.monotonic() + 120
        while (got := http.get(url, headers=auth)).status_code == 202:
            assert time.monotonic() < deadline, log_tail(tmp_path / "streamlit.log")
            time.sleep(0.2)
        assert got.status_code == 200, got.text
        assert got.content == library_bytes(engine, "csv", to=TO)
        assert int(got.headers["content-length"]) == len(got.content)


def test_concurrent_streams_are_capped_per_token(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add(engine, 60_000)  # ~12 MB of CSV
    token = admin_token(engine, settings)
    auth = {"Authorization": f"Bearer {token}"}
    extra = {"AUDIT_SYNC_EXPORT_LIMIT": "1000000", "AUDIT_MAX_CONCURRENT_STREAMS": "1"}
    with (
        live_server(env, tmp_path, **extra) as base,
        httpx.Client(base_url=base, trust_env=False, timeout=60) as http,
    ):
        # A reader with a small receive window that stops reading: the server stalls
        # mid-stream (the file is far bigger than the socket buffers) and holds its slot.
        host, port = base.removeprefix("http://").split(":")
        with socket.socket() as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            slow.connect((host, int(port)))
            slow.sendall(
                f"GET /api/v1/audit/export?to={TO} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            head = slow.recv(1024)
            assert head.startswith(b"HTTP/1.1 200 ")
            cut = head.split(b"link: <", 1)[1].split(b">", 1)[0].decode()
            busy = http.get("/api/v1/audit/export", params={"to": TO}, headers=auth)
            assert busy.status_code == 429, busy.text[:500]
            assert int(busy.headers["retry-after"]) > 0
            assert busy.json()["reason"] == "TooManyRequests"
        # Hanging up frees the slot.
        deadline = time.monotonic() + 30
        while True:
            resp = http.get(
                "/api/v1/audit/export", params={"to": "2026-01-01T00:00:00Z"}, headers=auth
            )
            if resp.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert resp.status_code == 200, resp.text
        # The stream cut short was recorded, but no manifest vouches for it.
        assert http.get(cut, headers=auth).status_code == 404


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add(engine, 120)
    token = admin_token(engine, settings)
    with live_server(env, tmp_path, AUDIT_MAX_QUEUED_JOBS="1000") as base:
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "run", f"{base}/api/v1/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_headers_conformance,response_schema_conformance,ignored_auth,"
            "negative_data_rejection,unsupported_method",
            "--max-examples", "25", "--seed", "1", "--workers", "1",
            "--report", "json", "--report-json-path", str(tmp_path / "st.json"),
        ]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        report = json.loads((tmp_path / "st.json").read_text())
        assert report


def raw_request(base: str, head: bytes, *, pieces: int = 1) -> bytes:
    """Send a request head (in pieces, if asked) over a plain socket; read the answer to EOF."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        size = -(-len(head) // pieces)
        try:
            for i in range(0, len(head), size):
                sock.sendall(head[i : i + size])
                time.sleep(0.05 if pieces > 1 else 0)  # let the server read each piece alone
        except OSError:
            pass  # the server may answer and close before the head is all sent
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_the_live_server_sends_security_headers_and_answers_every_method(
    engine: Engine, settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    add(engine, 5)
    token = admin_token(engine, settings)
    auth = {"Authorization": f"Bearer {token}"}
    with (
        live_server(env, tmp_path) as base,
        httpx.Client(base_url=base, trust_env=False, timeout=30) as http,
    ):
        page = http.get("/")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        static = http.get("/favicon.png")
        assert "frame-ancestors 'none'" in static.headers["content-security-policy"]
        api = http.get("/api/v1/audit/export", params={"to": TO}, headers=auth)
        assert (
            api.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        )

        # Methods no route lists, even ones Starlette and httpx know nothing of: JSON 405.
        for method in (b"TRACE", b"CONNECT", b"PROPFIND", b"BREW", b"DELETE"):
            line = method + b" /api/v1/audit/export HTTP/1.1\r\n"
            answer = raw_request(base, line + b"Host: x\r\nConnection: close\r\n\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 405 "), answer[:300]
            assert b"\r\nallow: GET, HEAD" in head and b"\r\ncache-control: no-store" in head
            assert json.loads(body)["reason"] == "MethodNotAllowed"

        # HEAD: GET's status and headers, no body; nothing exported, so nothing audited.
        resp = http.head("/api/v1/audit/export", params={"to": TO}, headers=auth)
        assert resp.status_code == 200 and resp.content == b""
        assert resp.headers["x-total-records"] == "5"
        assert resp.headers["content-disposition"].startswith('attachment; filename="audit-')

        # Header fields too large: the JSON 431 when they reach the portal (20 KB at once)...
        start = b"GET /api/v1/audit/export HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        request = start + b"X-Padding: " + b"x" * 20_000 + b"\r\n\r\n"
        head, _, body = raw_request(base, request).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), head[:300]
        assert json.loads(body)["reason"] == "RequestHeaderFieldsTooLarge"
        # ...but 100 KB arriving in pieces outgrows uvicorn's 16 KiB buffer first, and its
        # h11 layer answers before the app is called: a plain-text 400 the app cannot change.
        request = start + b"X-Padding: " + b"x" * 100_000 + b"\r\n\r\n"
        answer = raw_request(base, request, pieces=20)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
        assert b"Invalid HTTP request received." in answer
