"""API export throughput against the library's own export rate.

    .venv/bin/python bench/bench_api.py                      # 10,000-row and 1M-row CSV
    .venv/bin/python bench/bench_api.py --formats csv,jsonl --repeat 3
    .venv/bin/python bench/bench_api.py --pg-template audit_bench_1000000   # PostgreSQL

Data: a copy of the cached 1M-record demo SQLite file that bench/bench_export.py builds
(/tmp/auditbench/audit-1000000.db; made with `python -m audit_core demo --records N
--seed 7` when missing). A copy, because every API export writes its audit record.
With --pg-template, a PostgreSQL copy instead (CREATE DATABASE ... TEMPLATE the cached
bench database), dropped at the end.

Server: `streamlit run app.py` on a free loopback port, AUDIT_SYNC_EXPORT_LIMIT raised
above the row count so the 1M-row request streams (instead of queueing a job).
Client: curl to /dev/null (`-w %{size_download} %{time_total}`), bearer token.
Library: export.plan + export.chunks in this process, warm, bytes discarded: the rate
the API is held to (target: API >= 0.8x library).

Both are measured on the same filter, `to` fixed just past the newest demo record so
the audit records the API writes are not part of the exports. Median of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from audit_core import access, export  # noqa: E402
from audit_core.access import LOCAL_ADMIN  # noqa: E402
from audit_core.config import Settings  # noqa: E402
from audit_core.db import make_engine, migrate  # noqa: E402
from audit_core.filters import AuditFilter  # noqa: E402
from audit_core.record import format_instant, from_micros  # noqa: E402
from tests.e2e.harness import free_port, start_streamlit, stop_process  # noqa: E402

PG_ADMIN = create_engine(
    os.environ.get(
        "AUDIT_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    isolation_level="AUTOCOMMIT",
)


def ensure_source(path: Path, n: int) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AUDIT_DATABASE_URL": f"sqlite:///{path}"}
    subprocess.run(
        [sys.executable, "-m", "audit_core", "demo", "--records", str(n), "--seed", "7"],
        check=True,
        cwd=ROOT,
        env=env,
    )


def library_run(engine: object, params: dict[str, str], fmt: str) -> tuple[float, int, int]:
    """Seconds, rows and bytes of one in-process export."""
    t0 = time.perf_counter()
    with engine.connect() as conn:  # type: ignore[attr-defined]
        plan = export.plan(conn, AuditFilter.from_params(params), fmt)
        size = sum(len(c) for c in export.chunks(conn, plan))
    return time.perf_counter() - t0, plan.total, size


def api_run(base: str, token: str, params: dict[str, str], fmt: str) -> tuple[float, int, int]:
    """Seconds, rows (X-Total-Records) and bytes of one API export fetched by curl."""
    query = "&".join(f"{k}={v}" for k, v in {**params, "format": fmt}.items())
    with tempfile.NamedTemporaryFile("w+") as headers:
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "-o",
                "/dev/null",
                "-D",
                headers.name,
                "-w",
                "%{http_code} %{size_download} %{time_total}",
                "-H",
                f"Authorization: Bearer {token}",
                f"{base}/api/v1/audit/export?{query}",
            ],  # fmt: skip
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        rows = 0
        for line in Path(headers.name).read_text().splitlines():
            if line.lower().startswith("x-total-records:"):
                rows = int(line.split(":", 1)[1])
    code, size, secs = int(out[0]), int(out[1]), float(out[2])
    if code != 200:
        raise RuntimeError(f"API answered {code} for {query}")
    return secs, rows, size


def median(runs: list[tuple[float, int, int]]) -> tuple[float, int, int]:
    secs = statistics.median(r[0] for r in runs)
    return secs, runs[0][1], runs[0][2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, default=Path("/tmp/auditbench/audit-1000000.db"))
    ap.add_argument("--records", type=int, default=1_000_000, help="when building --source")
    ap.add_argument("--formats", default="csv")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small", type=int, default=10_000, help="rows in the small request")
    ap.add_argument("--pg-template", help="PostgreSQL database to copy instead of SQLite")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    pg_copy = ""
    if a.pg_template:
        pg_copy = f"audit_api_bench_{os.getpid()}"
        with PG_ADMIN.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{pg_copy}" TEMPLATE "{a.pg_template}"'))
        url = PG_ADMIN.url.set(database=pg_copy).render_as_string(hide_password=False)
    else:
        ensure_source(a.source, a.records)
        db = work / "audit.db"
        shutil.copyfile(a.source, db)
        url = f"sqlite:///{db}"
    settings = Settings(database_url=url, database_configured=True, export_dir=work / "exports")
    engine = make_engine(url)
    migrate(engine)
    with engine.connect() as conn:
        total = conn.execute(text("SELECT count(*) FROM audit_records")).scalar_one()
        newest = conn.execute(text("SELECT max(ts) FROM audit_records")).scalar_one()
        small_from = conn.execute(
            text("SELECT ts FROM audit_records ORDER BY ts DESC LIMIT 1 OFFSET :n"),
            {"n": a.small - 1},
        ).scalar_one()
    to = format_instant(from_micros(newest + 1_000_000))
    # After fixing `to`, so the records these write stay outside every export below.
    access.upsert_user(engine, "bench@example.com", "admin", "*", LOCAL_ADMIN, settings=settings)
    token, _ = access.create_token(engine, "bench@example.com", LOCAL_ADMIN, settings=settings)
    cases = {
        f"{a.small:,}-row request": {"from": format_instant(from_micros(small_from)), "to": to},
        f"{total:,}-row streamed export": {"to": to},
    }

    port = free_port()
    env = {
        "AUDIT_DATABASE_URL": url,
        "AUDIT_EXPORT_DIR": str(work / "exports"),
        "AUDIT_SECRET_KEY": "bench-secret-0123456789abcdef0123456789abcdef",
        "AUDIT_SYNC_EXPORT_LIMIT": str(total + 1),
        "AUDIT_MAX_CONCURRENT_STREAMS": "4",
    }
    proc = start_streamlit(ROOT, port, env=env, log_path=work / "streamlit.log")
    base = f"http://127.0.0.1:{port}"
    kind = "PostgreSQL" if pg_copy else "SQLite"
    print(f"API throughput ({kind}, {total:,} records; python {sys.version.split()[0]})")
    print(f"{'case':32} {'fmt':5} {'rows':>9} {'MB':>7} {'library s':>10} {'API s':>8} "
          f"{'lib rows/s':>11} {'API rows/s':>11} {'API/lib':>7}")  # fmt: skip
    try:
        for name, params in cases.items():
            for fmt in a.formats.split(","):
                api_run(base, token, params, fmt)  # warm the server's caches and pages
                lib = median([library_run(engine, params, fmt) for _ in range(a.repeat)])
                api = median([api_run(base, token, params, fmt) for _ in range(a.repeat)])
                rows = lib[1]
                assert api[1] == rows, (api, lib)
                print(
                    f"{name:32} {fmt:5} {rows:>9,} {api[2] / 1e6:>7.1f} {lib[0]:>10.3f} "
                    f"{api[0]:>8.3f} {rows / lib[0]:>11,.0f} {rows / api[0]:>11,.0f} "
                    f"{lib[0] / api[0]:>7.2f}"
                )
    finally:
        stop_process(proc)
        engine.dispose()
        shutil.rmtree(work, ignore_errors=True)
        if pg_copy:
            with PG_ADMIN.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_copy}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
