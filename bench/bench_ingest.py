"""Benchmark `python -m audit_core ingest`: wall time, records/s and peak RSS against file size.

    python bench/bench_ingest.py [--records 100000,1000000] [--formats jsonl,json]
                                 [--engines sqlite,postgresql] [--workdir DIR]
                                 [--pg-admin-url URL]

Writes --records demo records (audit_core.demo.generate, valid checksums) as JSON Lines and as
the seed's JSON envelope (the export's own writers), kept in --workdir and reused when present.
Each file is ingested by a fresh `python -m audit_core ingest` process into a fresh database:
a new SQLite file, or a PostgreSQL database of its own (CREATE DATABASE on --pg-admin-url,
dropped afterwards). The database is migrated by `init` first, so the timed process only
ingests. Peak RSS is that process's own high-water mark (ru_maxrss from os.wait4 on it, not
the cumulative RUSAGE_CHILDREN); `init`'s peak is the floor of imports, drivers and migrations.
The target (issue 13): peak RSS within 20% between 100k and 1M records.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from audit_core.demo import generate  # noqa: E402
from audit_core.formats import json_chunks, jsonl_chunks  # noqa: E402
from audit_core.models import AUDIT  # noqa: E402
from audit_core.record import FIELDS  # noqa: E402

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
END = datetime(2026, 3, 1, tzinfo=UTC)  # fixed, so the files are the same on every run
SECRET = "bench-ingest-secret-0123456789abcdef0123"


def batches(n: int) -> Iterator[list[tuple[str, ...]]]:
    batch: list[tuple[str, ...]] = []
    for r in generate(n, seed=1, end=END):
        batch.append(tuple(getattr(r, f) for f in FIELDS))
        if len(batch) == 5_000:
            yield batch
            batch = []
    if batch:
        yield batch


def make_file(workdir: Path, n: int, fmt: str) -> Path:
    """The n-record file in fmt, written once (to .part, then renamed)."""
    path = workdir / f"ingest-{n}.{fmt}"
    if path.exists():
        return path
    part = path.with_name(path.name + ".part")
    meta = {"exportedAt": "2026-03-01T00:00:00Z", "totalRecords": n, "format": "json"}
    chunks = jsonl_chunks(batches(n)) if fmt == "jsonl" else json_chunks(batches(n), meta)
    with open(part, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
    part.replace(path)
    return path


def file_made_apart(workdir: Path, n: int, fmt: str) -> Path:
    """make_file in a process of its own: Linux counts a child's peak RSS from the moment
    it was forked, so a bench process grown by writing 1M records would inflate every
    figure after it (seen: `init` at 147 MB after a 1M file was written, 70 MB before)."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import bench_ingest as b; " + (
        "b.make_file(b.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])"
    )
    here = str(Path(__file__).resolve().parent)
    subprocess.run([sys.executable, "-c", code, here, str(workdir), str(n), fmt], check=True)
    return workdir / f"ingest-{n}.{fmt}"


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a CLI command; return (wall seconds, peak RSS in MB, stderr)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "audit_core", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {err.strip()}")
    return wall, usage.ru_maxrss / 1024.0, err  # ru_maxrss is in KiB on Linux


class Database:
    """A fresh database for one run: a new SQLite file or a PostgreSQL database of our own."""

    def __init__(self, engine: str, workdir: Path, admin_url: str) -> None:
        self.kind, self.admin_url = engine, admin_url
        tag = f"bench_ingest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        if engine == "sqlite":
            self.url = f"sqlite:///{workdir / (tag + '.db')}"
        else:
            self.url = admin_url.rsplit("/", 1)[0] + "/" + tag
        self.name, self.path = tag, workdir / (tag + ".db")

    def __enter__(self) -> Database:
        if self.kind == "postgresql":
            self._admin(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "postgresql":
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)

    def _admin(self, sql: str) -> None:
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(sql))
        admin.dispose()

    def rows(self) -> int:
        engine = create_engine(self.url)
        with engine.connect() as conn:
            n = int(conn.execute(select(func.count()).select_from(AUDIT)).scalar() or 0)
        engine.dispose()
        return n


def bench_one(engine: str, path: Path, n: int, workdir: Path, admin_url: str) -> dict[str, Any]:
    with Database(engine, workdir, admin_url) as db:
        env = dict(os.environ)
        env.update(
            AUDIT_DATABASE_URL=db.url,
            AUDIT_EXPORT_DIR=str(workdir / "exports"),
            AUDIT_SECRET_KEY=SECRET,
        )
        _, floor, _ = run(["init"], env)
        wall, peak, err = run(["ingest", str(path)], env)
        if f"{n} added" not in err or db.rows() != n + 1:  # + its portal.ingest record
            raise SystemExit(f"{path.name} on {engine}: unexpected result: {err.strip()}")
    return {"engine": engine, "records": n, "wall": wall, "peak": peak, "floor": floor}


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| engine | format | records | file MB | wall s | records/s | peak RSS MB | init RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['engine']} | {r['format']} | {r['records']:,} | {r['mb']:.0f} | "
            f"{r['wall']:.1f} | {r['records'] / r['wall']:,.0f} | {r['peak']:.0f} | "
            f"{r['floor']:.0f} |"
        )
    return "\n".join(out)


def growth(rows: list[dict[str, Any]]) -> list[str]:
    """Peak RSS of the largest run over the smallest, per engine and format."""
    lines = []
    for key in sorted({(r["engine"], r["format"]) for r in rows}):
        runs = sorted(
            (r for r in rows if (r["engine"], r["format"]) == key), key=lambda r: r["records"]
        )
        if len(runs) > 1:
            lo, hi = runs[0], runs[-1]
            lines.append(
                f"{key[0]} {key[1]}: peak RSS {lo['peak']:.0f} MB at {lo['records']:,} -> "
                f"{hi['peak']:.0f} MB at {hi['records']:,} ({hi['peak'] / lo['peak'] - 1:+.1%})"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", default="100000,1000000", help="comma list of record counts")
    p.add_argument("--formats", default="jsonl,json", help="jsonl and/or json")
    p.add_argument("--engines", default="sqlite,postgresql", help="sqlite and/or postgresql")
    p.add_argument("--workdir", default=str(ROOT / "data" / "bench-ingest"), help="files go here")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="where to CREATE DATABASE")
    a = p.parse_args()
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(x) for x in a.records.split(",")):
        for fmt in a.formats.split(","):
            path = file_made_apart(workdir, n, fmt)
            for engine in a.engines.split(","):
                r = bench_one(engine, path, n, workdir, a.pg_admin_url)
                r.update(format=fmt, mb=path.stat().st_size / 1e6)
                rows.append(r)
                print(table([r]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    print()
    print("\n".join(growth(rows)))


if __name__ == "__main__":
    main()
