"""What the evidence costs: appends with the tree, exports with a manifest, proofs, storage.

    .venv/bin/python bench/bench_evidence.py                   # 1M records, SQLite + PostgreSQL
    .venv/bin/python bench/bench_evidence.py --records 200000 --engines sqlite
    .venv/bin/python bench/bench_evidence.py --baseline /path/to/checkout-before-the-tree
    .venv/bin/python bench/bench_evidence.py --store sqlite:////path/to/10m.db   # proofs only

- append: `python -m audit_core demo --records N` as a whole process, this tree against
  --baseline (a checkout from before the Merkle tree), interleaved A B A B;
- export: `export -o F` against `export -o F --no-manifest` (CSV, JSON, JSONL), interleaved;
- proofs: checkpoint of the current tree, inclusion and consistency proofs, in-process, median
  of 50 after a warm-up;
- storage: merkle_nodes plus the leaf column and its index, against the records' table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audit_core import evidence  # noqa: E402
from audit_core.config import Settings  # noqa: E402
from audit_core.context import build  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PY = sys.executable


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def pg_database() -> str:
    name = f"audit_bench_ev_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name


def drop_pg(name: str) -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def url_for(engine: str, work: Path, tag: str) -> tuple[str, str | None]:
    if engine == "sqlite":
        return f"sqlite:///{work}/{tag}.db", None
    name = pg_database()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name, name


def bench_append(engine: str, records: int, baseline: Path | None, work: Path, rounds: int) -> None:
    if baseline is None:
        print("  append: skipped (no --baseline checkout to compare with)")
        return
    ratios, ours, theirs = [], [], []
    for r in range(rounds):
        for side, cwd in (("new", ROOT), ("old", baseline)):
            url, pg = url_for(engine, work, f"append-{side}-{r}")
            env = {**os.environ, "AUDIT_DATABASE_URL": url, "AUDIT_EXPORT_DIR": str(work / "x")}
            seconds = timed([PY, "-m", "audit_core", "demo", "--records", str(records)], env, cwd)
            (ours if side == "new" else theirs).append(seconds)
            if pg:
                drop_pg(pg)
            elif side == "old":
                Path(url.removeprefix("sqlite:///")).unlink()
        ratios.append(theirs[-1] / ours[-1])
    print(
        f"  append {records:,}: with tree {statistics.median(ours):.2f} s "
        f"({records / statistics.median(ours):,.0f} rec/s), "
        f"before {statistics.median(theirs):.2f} s"
        f" -> throughput {statistics.median(ratios):.2f}x of before (median of {rounds})"
    )


def bench_exports(url: str, work: Path, rounds: int) -> None:
    env = {**os.environ, "AUDIT_DATABASE_URL": url, "AUDIT_EXPORT_DIR": str(work / "x")}
    for fmt in ("csv", "json", "jsonl"):
        out = work / f"e.{fmt}"
        base = [PY, "-m", "audit_core", "export", "--format", fmt, "-o", str(out)]
        timed(base + ["--no-manifest"], env, ROOT)  # warm the page cache
        ratios, signed, plain = [], [], []
        for _ in range(rounds):
            plain.append(timed(base + ["--no-manifest"], env, ROOT))
            signed.append(timed(base, env, ROOT))
            ratios.append(plain[-1] / signed[-1])
        print(
            f"  export {fmt}: with manifest {statistics.median(signed):.2f} s, without "
            f"{statistics.median(plain):.2f} s -> throughput {statistics.median(ratios):.3f}x"
        )


def sqlite_pages(conn: Any, url: str) -> dict[str, int] | None:
    """Bytes per table and index (dbstat): from the driver, else from the sqlite3 shell
    (pysqlite3's SQLite is built without dbstat; Debian's shell has it)."""
    stat = "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
    try:
        return {str(k): int(v) for k, v in conn.execute(text(stat)).all()}
    except Exception:  # noqa: BLE001 - dbstat is not in every SQLite build
        pass
    path = url.removeprefix("sqlite:///")
    try:
        out = subprocess.run(
            ["sqlite3", path, stat], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {k: int(v) for k, v in (line.split("|") for line in out.splitlines())}


def bench_proofs(url: str, work: Path) -> None:
    ctx = build(Settings(database_url=url, database_configured=True, export_dir=work / "x"))
    with ctx.engine.connect() as conn:
        size = evidence.read_head(conn).size
        ids = [
            r[0]
            for r in conn.execute(
                text("SELECT id FROM audit_records WHERE leaf IN (0, :a, :b)"),
                {"a": size // 2, "b": size - 1},
            )
        ]

    def median_ms(fn) -> float:  # noqa: ANN001
        fn()
        runs = []
        for _ in range(50):
            start = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - start) * 1000)
        return statistics.median(runs)

    def checkpoint() -> None:
        with ctx.engine.begin() as conn:
            evidence.checkpoint(conn, "bench")

    def inclusion() -> None:
        with ctx.engine.begin() as conn:
            for rid in ids:
                evidence.inclusion(conn, rid, size)

    def consistency() -> None:
        with ctx.engine.begin() as conn:
            evidence.consistency(conn, size // 3 + 1, size)

    print(
        f"  at {size:,} records: checkpoint {median_ms(checkpoint):.1f} ms, inclusion proof "
        f"{median_ms(inclusion) / len(ids):.1f} ms, "
        f"consistency proof {median_ms(consistency):.1f} ms"
    )
    with ctx.engine.connect() as conn:
        if ctx.engine.dialect.name == "postgresql":
            q = lambda s: conn.execute(text(s)).scalar()  # noqa: E731
            log = q("SELECT pg_total_relation_size('audit_records')")
            tree_bytes = (
                q("SELECT pg_total_relation_size('merkle_nodes')")
                + q("SELECT pg_relation_size('ux_audit_leaf')")
                + 8 * size
            )
        else:
            q = lambda s: conn.execute(text(s)).scalar()  # noqa: E731
            pages = sqlite_pages(conn, url)
            if pages is None:
                print("  storage: no SQLite with dbstat here; not measured")
                return
            log = sum(
                v
                for k, v in pages.items()
                if k in ("audit_records",)
                or k.startswith(("ix_audit", "sqlite_autoindex_audit_records"))
            )
            tree_bytes = pages.get("merkle_nodes", 0) + pages.get("ux_audit_leaf", 0) + 8 * size
    print(
        f"  storage: tree {tree_bytes / 1e6:.1f} MB vs log {log / 1e6:.1f} MB "
        f"= {100 * tree_bytes / log:.1f}%"
    )
    ctx.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--append-records", type=int, default=200_000)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--baseline", type=Path, help="a checkout from before the Merkle tree")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--store",
        action="append",
        default=[],
        help="only the proofs and storage on this existing store (URL); may be repeated",
    )
    args = ap.parse_args()
    if args.store:
        with tempfile.TemporaryDirectory(prefix="bench-evidence-") as tmp:
            for url in args.store:
                print(f"{url}:")
                bench_proofs(url, Path(tmp))
        return
    print(f"bench_evidence: load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-evidence-") as tmp:
        work = Path(tmp)
        for engine in args.engines.split(","):
            print(f"{engine}:")
            bench_append(engine, args.append_records, args.baseline, work, args.rounds)
            url, pg = url_for(engine, work, "big")
            env = {**os.environ, "AUDIT_DATABASE_URL": url, "AUDIT_EXPORT_DIR": str(work / "x")}
            start = time.perf_counter()
            subprocess.run(
                [PY, "-m", "audit_core", "demo", "--records", str(args.records)],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            print(f"  made {args.records:,} records in {time.perf_counter() - start:.1f} s")
            try:
                bench_proofs(url, work)
                bench_exports(url, work, args.rounds)
            finally:
                if pg:
                    drop_pg(pg)


if __name__ == "__main__":
    main()
