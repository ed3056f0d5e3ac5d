"""Benchmark a background export job against the direct export of the same plan.

    python bench/bench_jobs.py [--rows 1000000] [--format csv] [--compression none|gzip]
                               [--db-url URL] [--workdir DIR]

Fills a database with --rows demo records (kept in --workdir and reused when it already has
them), queues one job for all of them, runs a real `python -m audit_core worker` process until
the job completes, and compares with a fresh process doing the direct export of the same plan
(export.chunks to a file). Reports rows/s (rows / time spent exporting, process start-up
excluded) and each process's peak RSS (VmHWM, read from /proc at the end of
the process's work), plus an
idle worker's RSS as the baseline of imports. The job file's SHA-256 must equal the direct
file's (the file is gunzipped first when --compression gzip).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from audit_core import export, jobs, query, store  # noqa: E402
from audit_core.access import LOCAL_ADMIN  # noqa: E402
from audit_core.config import Settings  # noqa: E402
from audit_core.db import make_engine, migrate  # noqa: E402
from audit_core.demo import generate  # noqa: E402
from audit_core.filters import AuditFilter  # noqa: E402


def sha256_of(path: Path, gunzip: bool = False) -> str:
    h = hashlib.sha256()
    opener: Any = gzip.open if gunzip else open
    with opener(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def peak_rss_mb(pid: int | str) -> float:
    """The process's resident-set high-water mark (VmHWM: this program's, not its parent's)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc status")


def run_child(cmd: list[str], env: dict[str, str], until: Any = None) -> tuple[int, float, str]:
    """Run a process; once until() is true read its peak RSS and stop it with SIGTERM.

    Without until, the child prints its own peak as the last line of its output.
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    peak = 0.0
    if until is not None:
        while not until() and proc.poll() is None:
            time.sleep(0.2)
        if proc.poll() is None:
            peak = peak_rss_mb(proc.pid)
            proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate()
    return proc.returncode, peak, out


def child_direct(url: str, job_id: str, output: str) -> int:
    """Child mode: the direct export of the job's plan, timed without start-up."""
    engine = make_engine(url)
    with engine.connect() as conn:
        row = conn.execute(select(jobs.J).where(jobs.J.c.job_id == job_id)).one()
        plan = jobs.ClaimedJob.from_row(row).plan()
        started = time.perf_counter()
        with open(output, "wb") as out:
            for chunk in export.chunks(conn, plan):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        seconds = time.perf_counter() - started
    print(json.dumps({"rows": plan.total, "seconds": seconds, "rss": peak_rss_mb("self")}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="demo records (default 1M)")
    ap.add_argument("--format", default="csv", choices=("csv", "json", "jsonl"))
    ap.add_argument("--compression", default="none", choices=("none", "gzip"))
    ap.add_argument("--db-url", help="database to use (default: SQLite in --workdir)")
    ap.add_argument("--workdir", default=str(ROOT / "data" / "bench-jobs"))
    ap.add_argument(
        "--child-direct", nargs=3, metavar=("URL", "JOB", "OUT"), help=argparse.SUPPRESS
    )
    a = ap.parse_args()
    if a.child_direct:
        return child_direct(*a.child_direct)

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    url = a.db_url or f"sqlite:///{work}/bench-{a.rows}.db"
    engine = make_engine(url)
    migrate(engine)
    with engine.connect() as conn:
        have = query.max_seq(conn)
    if have < a.rows:
        print(f"filling {url} with {a.rows - have} demo records...", file=sys.stderr)
        t = time.perf_counter()
        with engine.begin() as conn:
            store.append(conn, generate(a.rows - have, seed=have + 7))
        print(f"  {time.perf_counter() - t:.1f} s", file=sys.stderr)

    exports = work / "exports"
    settings = Settings(
        database_url=url,
        database_configured=True,
        export_dir=exports,
        secret_key="bench",
        max_queued_jobs=1000,
    )
    # Everything recorded up to the fill: the job and the direct export read the same rows.
    with engine.connect() as conn:
        plan = export.plan(conn, AuditFilter(), a.format, upto_seq=a.rows)
    job = jobs.enqueue(engine, plan, LOCAL_ADMIN, settings, compression=a.compression)
    env = dict(
        os.environ,
        AUDIT_DATABASE_URL=url,
        AUDIT_EXPORT_DIR=str(exports),
        AUDIT_SECRET_KEY="bench",
        AUDIT_WORKER_POLL_SECONDS="0.2",
    )

    def state() -> str:
        with engine.connect() as conn:
            return str(
                conn.execute(
                    select(jobs.J.c.state).where(jobs.J.c.job_id == job.job_id)
                ).scalar_one()
            )

    worker_cmd = [sys.executable, "-m", "audit_core", "worker"]
    rc, job_rss, _ = run_child(worker_cmd, env, until=lambda: state() in ("completed", "failed"))
    with engine.connect() as conn:
        row = conn.execute(select(jobs.J).where(jobs.J.c.job_id == job.job_id)).one()
    if row.state != "completed":
        print(f"job {row.state}: {row.last_error}", file=sys.stderr)
        return 1
    job_seconds = (row.finished_at - row.started_at).total_seconds()

    direct_file = work / f"direct-{a.rows}.{a.format}"
    rc2, direct_rss, out = run_child(
        [sys.executable, __file__, "--child-direct", url, job.job_id, str(direct_file)], env
    )
    direct = json.loads(out)
    direct_rss = direct["rss"]
    t0 = time.monotonic()
    _, idle_rss, _ = run_child(worker_cmd, env, until=lambda: time.monotonic() - t0 > 3)

    job_file = jobs.file_path(settings, job)
    same = sha256_of(job_file, a.compression == "gzip") == sha256_of(direct_file)
    rows = row.estimated_records
    print(
        f"rows {rows:,}  format {a.format}  compression {a.compression}  "
        f"database {engine.dialect.name}  at {datetime.now(UTC):%Y-%m-%dT%H:%MZ}"
    )
    print(f"{'':14}{'seconds':>9}{'rows/s':>12}{'peak RSS MB':>13}{'file MB':>10}")
    print(
        f"{'direct export':14}{direct['seconds']:9.2f}{rows / direct['seconds']:12,.0f}"
        f"{direct_rss:13.1f}{direct_file.stat().st_size / 1e6:10.1f}"
    )
    print(
        f"{'job (worker)':14}{job_seconds:9.2f}{rows / job_seconds:12,.0f}"
        f"{job_rss:13.1f}{row.file_size / 1e6:10.1f}"
    )
    print(f"{'idle worker':14}{'':9}{'':12}{idle_rss:13.1f}")
    print(f"job file equals direct export: {same}; worker exit status {rc}")
    direct_file.unlink()
    job_file.unlink()
    return 0 if same and rc == 0 and rc2 == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
