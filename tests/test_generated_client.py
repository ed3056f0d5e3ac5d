"""A client generated from our own OpenAPI document by openapi-python-client exports JSON
through the API, and every record's checksum recomputes from the typed records it returns.

(Before the document gave `timestamp` a pattern it said `format: date-time`: the generated
client parsed each into a datetime and wrote it back as `+00:00`, and every checksum failed.)
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import httpx

from audit_core.offline_verify import record_checksum
from audit_core.record import FIELDS

from .test_api import TO, Api, add, api  # noqa: F401 - the api fixture

GENERATOR = Path(sys.executable).with_name("openapi-python-client")


def generate_client(api: Api, tmp_path: Path) -> Path:
    doc = api.client.get("/api/v1/openapi.json").json()
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(doc))
    out = tmp_path / "client"
    done = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(spec), "--output-path", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_a_generated_client_gets_records_whose_checksums_recompute(
    api: Api, tmp_path: Path
) -> None:
    add(api.engine, 30)
    out = generate_client(api, tmp_path)
    (package,) = [p for p in out.iterdir() if (p / "client.py").exists()]
    sys.path.insert(0, str(out))
    try:
        client_mod = importlib.import_module(f"{package.name}.client")
        export_mod = importlib.import_module(f"{package.name}.api.audit.export_audit_log")
        fmt_mod = importlib.import_module(f"{package.name}.models.export_audit_log_format")
        # The session's in-process app, reached through the TestClient's own transport.
        http = httpx.Client(
            transport=api.client._transport,
            base_url="http://testserver/api/v1",
            headers={"Authorization": f"Bearer {api.admin}"},
        )
        client = client_mod.AuthenticatedClient(base_url="http://testserver/api/v1", token="-")
        client.set_httpx_client(http)
        json_format = fmt_mod.ExportAuditLogFormat("json")
        to = datetime.fromisoformat(TO.replace("Z", "+00:00"))
        resp = export_mod.sync_detailed(client=client, format_=json_format, to=to)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == package.name or m.startswith(package.name)]:
            del sys.modules[name]
    assert resp.status_code == 200, resp.content[:300]
    records = resp.parsed.records
    assert len(records) >= 30
    for typed in records:
        rec = typed.to_dict()
        assert list(rec) == list(FIELDS)
        assert isinstance(rec["timestamp"], str) and rec["timestamp"].endswith("Z")
        assert record_checksum(rec) == rec["checksum"], rec
