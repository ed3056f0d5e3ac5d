"""Schemathesis against the live API: no server error, no response that breaks the document.

    .venv/bin/python bench/schemathesis_run.py                       # SQLite, 2,000 records
    .venv/bin/python bench/schemathesis_run.py --database-url postgresql+psycopg://...
    .venv/bin/python bench/schemathesis_run.py --max-examples 200 --checks all

Starts `streamlit run app.py` on a free loopback port over a fresh database with demo
records, a 500-record synchronous limit (so some generated requests become jobs) and
an admin token, then runs `schemathesis run <base>/api/v1/openapi.json` with that token.
Exits with schemathesis's status; the JSON report is written next to the server log.

The default checks are the ones that judge the server against its own document:
not_a_server_error, status_code_conformance, content_type_conformance,
response_headers_conformance, response_schema_conformance, ignored_auth,
negative_data_rejection and unsupported_method. (`positive_data_acceptance` is left out
by default: a schema cannot say "from must be earlier than to", so schemathesis's valid
inputs include ranges the API rightly answers with 400.)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from audit_core import access, store  # noqa: E402
from audit_core.access import LOCAL_ADMIN  # noqa: E402
from audit_core.config import Settings  # noqa: E402
from audit_core.db import make_engine, migrate  # noqa: E402
from audit_core.demo import generate  # noqa: E402
from tests.e2e.harness import free_port, start_streamlit, stop_process  # noqa: E402

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,ignored_auth,"
    "negative_data_rejection,unsupported_method"
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", help="an EMPTY database to use (default: a temp SQLite)")
    ap.add_argument("--records", type=int, default=2_000)
    ap.add_argument("--max-examples", type=int, default=100)
    ap.add_argument("--checks", default=CHECKS)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="schemathesis-"))
    url = a.database_url or f"sqlite:///{work}/audit.db"
    settings = Settings(database_url=url, database_configured=True, export_dir=work / "exports")
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        if conn.execute(text("SELECT count(*) FROM audit_records")).scalar_one():
            sys.exit("the database is not empty: give an empty one")
        store.append(conn, generate(a.records, seed=7, end=datetime(2026, 3, 20, tzinfo=UTC)))
    access.upsert_user(engine, "fuzz@example.com", "admin", "*", LOCAL_ADMIN, settings=settings)
    token, _ = access.create_token(engine, "fuzz@example.com", LOCAL_ADMIN, settings=settings)
    engine.dispose()

    port = free_port()
    env = {
        "AUDIT_DATABASE_URL": url,
        "AUDIT_EXPORT_DIR": str(work / "exports"),
        "AUDIT_SECRET_KEY": "fuzz-secret-0123456789abcdef0123456789abcdef",
        "AUDIT_SYNC_EXPORT_LIMIT": "500",
        "AUDIT_MAX_QUEUED_JOBS": "100000",
        "AUDIT_MAX_CONCURRENT_STREAMS": "64",
    }
    proc = start_streamlit(ROOT, port, env=env, log_path=work / "streamlit.log")
    report = work / "schemathesis.json"
    try:
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "run",
            f"http://127.0.0.1:{port}/api/v1/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--checks", a.checks,
            "--max-examples", str(a.max_examples),
            "--seed", str(a.seed),
            "--workers", "2",
            "--report", "json", "--report-json-path", str(report),
        ]  # fmt: skip
        code = subprocess.run(cmd, cwd=work).returncode
    finally:
        stop_process(proc)
    print(f"schemathesis exit status {code}; server log {work / 'streamlit.log'}")
    if not a.keep and code == 0:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
