"""Export and preview benchmark against the floors (sqlite3 shell, psql COPY).

    .venv/bin/python bench/bench_export.py                     # 1M records, both engines
    .venv/bin/python bench/bench_export.py --records 10000000  # 10M
    .venv/bin/python bench/bench_export.py --records 100000 --no-write   # quick look

Data: N demo records (`python -m audit_core demo --records N --seed 7`) in a SQLite file,
copied row for row (same keys, chain and counters) into a PostgreSQL database of its own
(`audit_bench_<N>`), both cached under --data-dir between runs (--drop removes the
PostgreSQL database at the end; --regenerate rebuilds both).

Exports: each measurement is a whole process (interpreter start and imports included, like
the floors), run --repeat times interleaved with its floor, after one untimed floor run
per engine that brings its pages into the page cache; the median wall time gives
rows/s, and peak RSS is `/usr/bin/time -f %M` of that process. Ours is
`bench/run_export.py` (the CLI's export bytes without its migration check and its audit
record); the floors are the sqlite3 shell (`-csv -header`, `-json`) and
`psql -c "COPY (SELECT ...) TO STDOUT WITH CSV HEADER"` over the same rows (same columns,
same order, same WHERE). All output goes to /dev/null.

Previews: in one warm process, `query.count` + `query.preview(limit=500)` per filter,
median of --preview-repeat runs after one warm-up; the plans of both statements are
printed with --plans (and written to BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audit_core import query, store  # noqa: E402
from audit_core.db import make_engine, migrate, sqlite_module  # noqa: E402
from audit_core.filters import AuditFilter  # noqa: E402
from audit_core.models import AUDIT  # noqa: E402
from audit_core.record import FIELDS, format_instant, from_micros  # noqa: E402

PY = sys.executable
COLS = ", ".join(f'"{f}"' for f in FIELDS)
PG_ADMIN = os.environ.get(
    "AUDIT_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REL_PY = os.path.relpath(PY, ROOT) if PY.startswith(str(ROOT)) else PY


# ---------------------------------------------------------------- data


def sqlite_path(data_dir: Path, n: int) -> Path:
    return data_dir / f"audit-{n}.db"


def ensure_sqlite(data_dir: Path, n: int, regenerate: bool) -> Path:
    db = sqlite_path(data_dir, n)
    ready = db.with_suffix(".ready")
    if ready.exists() and db.exists() and not regenerate:
        eng = make_engine(f"sqlite:///{db}")
        migrate(eng)  # a cached file made before a newer migration catches up here
        eng.dispose()
        return db
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), ready):
        p.unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"generating {n:,} records into {db} ...", flush=True)
    t = time.perf_counter()
    env = dict(os.environ, AUDIT_DATABASE_URL=f"sqlite:///{db}")
    subprocess.run(
        [PY, "-m", "audit_core", "demo", "--records", str(n), "--seed", "7"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    ready.write_text(f"{n}\n")
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return db


def pg_url(n: int, driver: str = "postgresql") -> str:
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql", driver, 1) + f"/audit_bench_{n}"


def ensure_pg(db: Path, n: int, regenerate: bool) -> str:
    import psycopg

    name = f"audit_bench_{n}"
    src = sqlite3.connect(db)
    want = src.execute("SELECT last_seq, last_hash FROM chain_head").fetchone()
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and not regenerate:
            try:
                with psycopg.connect(pg_url(n)) as c:
                    got = c.execute("SELECT last_seq, last_hash FROM chain_head").fetchone()
                if got == want:
                    eng = make_engine(pg_url(n, "postgresql+psycopg"))
                    migrate(eng)
                    eng.dispose()
                    return pg_url(n, "postgresql+psycopg")
            except psycopg.Error:
                pass
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    print(f"loading {n:,} records into PostgreSQL {name} ...", flush=True)
    t = time.perf_counter()
    eng = make_engine(pg_url(n, "postgresql+psycopg"))
    migrate(eng)
    cols = [c.name for c in AUDIT.columns]  # every column, keys and chain included
    qcols = ", ".join(f'"{c}"' for c in cols)
    with psycopg.connect(pg_url(n)) as c:
        with c.cursor() as cur:
            cur.execute("TRUNCATE audit_records, id_counters")
            with cur.copy(f"COPY audit_records ({qcols}) FROM STDIN") as cp:
                for row in src.execute(f"SELECT {qcols} FROM audit_records ORDER BY seq"):
                    cp.write_row(row)
            with cur.copy("COPY id_counters (prefix, last) FROM STDIN") as cp:
                for row in src.execute("SELECT prefix, last FROM id_counters"):
                    cp.write_row(row)
            head = src.execute("SELECT last_seq, last_hash, appends FROM chain_head").fetchone()
            cur.execute("UPDATE chain_head SET last_seq = %s, last_hash = %s, appends = %s", head)
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('audit_records', 'seq'), "
                "(SELECT max(seq) FROM audit_records))"
            )
        c.commit()
    with eng.begin() as conn:  # the rows came around store.append: count their days
        store.rebuild_day_counts(conn)
    eng.dispose()
    with psycopg.connect(pg_url(n), autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return pg_url(n, "postgresql+psycopg")


# ---------------------------------------------------------------- exports


def run(cmd: list[str], stdout: int | None = subprocess.DEVNULL) -> tuple[float, int]:
    """Run cmd to completion; return (wall seconds, peak RSS in MB of cmd's own process).

    The peak RSS comes from /usr/bin/time (%M): the rusage of a child forked from this
    Python process would count the parent's pages copied before exec.
    """
    t = time.perf_counter()
    p = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd],
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.PIPE,
        check=False,
    )
    wall = time.perf_counter() - t
    err = p.stderr.decode(errors="replace").strip().splitlines()
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {shlex.join(cmd)}\n" + "\n".join(err))
    return wall, int(err[-1]) // 1024


def show(cmd: list[str]) -> str:
    return shlex.join([REL_PY if c == PY else c for c in cmd]) + " > /dev/null"


def export_cases(
    db: Path,
    url: str | None,
    engine: str,
    to: str,
    upto: int,
    to_us: int,
) -> list[tuple[str, str, list[str], str, list[str]]]:
    where = f"WHERE ts < {to_us} AND seq <= {upto} ORDER BY ts, seq"
    sql = f"SELECT {COLS} FROM audit_records {where}"
    out = []
    if engine == "sqlite":
        u = f"sqlite:///{db}"
        for fmt, mode in (("csv", "-csv"), ("json", "-json"), ("jsonl", "-json")):
            floor = ["sqlite3", "-readonly", mode] + (["-header"] if fmt == "csv" else [])
            floor += [str(db), sql]
            ours = [PY, "bench/run_export.py", u, fmt, "--to", to, "--upto-seq", str(upto)]
            out.append((engine, fmt, ours, f"sqlite3 {mode}", floor))
    else:
        assert url is not None
        plain = url.replace("+psycopg", "")
        floor = ["psql", "-X", "-q", "-d", plain, "-c", f"COPY ({sql}) TO STDOUT WITH CSV HEADER"]
        for fmt in ("csv", "json", "jsonl"):
            ours = [PY, "bench/run_export.py", url, fmt, "--to", to, "--upto-seq", str(upto)]
            out.append((engine, fmt, ours, "psql COPY csv", floor))
    return out


def bench_exports(cases, repeat: int, rows: int) -> list[dict]:
    results = []
    floors: dict[tuple[str, str], tuple[float, int]] = {}
    warmed: set[str] = set()
    for engine, fmt, ours, floor_name, floor in cases:
        ot, orss, ft, frss = [], [], [], []
        key = (engine, floor_name)
        if engine not in warmed:
            # One untimed floor run first: the other engine's files (GBs at 10M) may have
            # pushed this one's pages out of the page cache, and whichever side ran
            # first would pay for reading them back.
            run(floor)
            warmed.add(engine)
        for _ in range(repeat):
            w, r = run(ours)
            ot.append(w)
            orss.append(r)
            if key not in floors:
                w, r = run(floor)
                ft.append(w)
                frss.append(r)
        if key not in floors:
            floors[key] = (statistics.median(ft), max(frss))
        f_med, f_rss = floors[key]
        o_med = statistics.median(ot)
        res = {
            "engine": engine,
            "fmt": fmt,
            "ours_s": o_med,
            "ours_rps": rows / o_med,
            "ours_rss": max(orss),
            "floor": floor_name,
            "floor_s": f_med,
            "floor_rps": rows / f_med,
            "floor_rss": f_rss,
            "ratio": f_med / o_med,
            "ours_cmd": show(ours),
            "floor_cmd": show(floor),
            "runs": ot,
        }
        print(
            f"  {engine:10s} {fmt:5s} ours {o_med:6.2f}s {res['ours_rps']:>9,.0f} rows/s "
            f"{res['ours_rss']:4d} MB | {floor_name:14s} {f_med:6.2f}s "
            f"{res['floor_rps']:>9,.0f} rows/s | ratio {res['ratio']:.2f}",
            flush=True,
        )
        results.append(res)
    return results


TARGETS = {
    ("sqlite", "csv"): 0.5,
    ("sqlite", "json"): 0.6,
    ("sqlite", "jsonl"): 0.6,
    ("postgresql", "csv"): 0.9,
}


# ---------------------------------------------------------------- previews


def preview_filters(last_us: int) -> list[tuple[str, AuditFilter]]:
    last = from_micros(last_us).replace(minute=0, second=0, microsecond=0)
    start, end = last - timedelta(days=30), last - timedelta(days=23)
    return [
        ("all", AuditFilter()),
        ("namespace=payments", AuditFilter.parse(namespace="payments")),
        ("action=runbook.*", AuditFilter.parse(action="runbook.*")),
        ("user=carlos.silva@empresa.com", AuditFilter.parse(user="carlos.silva@empresa.com")),
        ("7-day range", AuditFilter.parse(start=start, end=end)),
        (
            "combined: ns=production, runbook.*, 30 days",
            AuditFilter.parse(
                namespace="production", action="runbook.*", start=last - timedelta(days=30)
            ),
        ),
        (
            "combined: user + secret.*, 7 days",
            AuditFilter.parse(
                user="carlos.silva@empresa.com", action="secret.*", start=start, end=end
            ),
        ),
    ]


def bench_previews(url: str, engine_name: str, repeat: int, plans: bool) -> tuple[list, list]:
    eng = make_engine(url)
    out, plan_lines = [], []
    with eng.connect() as conn:
        last_us = conn.exec_driver_sql("SELECT max(ts) FROM audit_records").scalar()
        for label, flt in preview_filters(last_us):
            tc, tp, tt, tw = [], [], [], []
            for i in range(repeat + 1):
                query.forget_counts()  # time the first count of a filter, not a cached one
                t0 = time.perf_counter()
                n = query.count(conn, flt)
                t1 = time.perf_counter()
                page = query.preview(conn, flt, limit=500)
                t2 = time.perf_counter()
                query.count(conn, flt)  # remembered: adds only rows appended since
                query.preview(conn, flt, limit=500)
                t3 = time.perf_counter()
                if i:
                    tc.append(t1 - t0)
                    tp.append(t2 - t1)
                    tt.append(t2 - t0)
                    tw.append(t3 - t2)
            med = statistics.median(tt) * 1000
            warm = statistics.median(tw) * 1000
            out.append(
                {
                    "engine": engine_name,
                    "filter": label,
                    "count": n,
                    "rows": len(page.rows),
                    "count_ms": statistics.median(tc) * 1000,
                    "preview_ms": statistics.median(tp) * 1000,
                    "total_ms": med,
                    "warm_ms": warm,
                }
            )
            print(
                f"  {engine_name:10s} {label:45s} {n:>9,} rows  count "
                f"{statistics.median(tc) * 1000:7.1f} ms  newest-500 "
                f"{statistics.median(tp) * 1000:7.1f} ms  total {med:7.1f} ms  "
                f"(count remembered: {warm:5.1f} ms)",
                flush=True,
            )
            if plans:
                plan_lines.append(f"{engine_name} / {label}")
                for op, text in query.explain(conn, flt):
                    plan_lines.append(f"  {op}:")
                    plan_lines.extend("    " + ln for ln in text.splitlines())
    eng.dispose()
    return out, plan_lines


# ---------------------------------------------------------------- report


def table(exports: list[dict], previews: list[dict], n: int, limit_ms: float) -> str:
    lines = [
        "| engine | format | ours rows/s | ours peak RSS | floor | floor rows/s | "
        "floor RSS | ratio | target | met |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in exports:
        tgt = TARGETS.get((r["engine"], r["fmt"]))
        met = "—" if tgt is None else ("yes" if r["ratio"] >= tgt else "**no**")
        rss_ok = r["ours_rss"] <= 150
        lines.append(
            f"| {r['engine']} | {r['fmt']} | {r['ours_rps']:,.0f} | {r['ours_rss']} MB"
            f"{'' if rss_ok else ' (**over 150**)'} | {r['floor']} | {r['floor_rps']:,.0f} | "
            f"{r['floor_rss']} MB | {r['ratio']:.2f}× | {f'≥ {tgt}×' if tgt else '—'} | {met} |"
        )
    lines += [
        "",
        "Preview (count + newest 500), warm page cache, median; "
        f"target ≤ {limit_ms:.0f} ms. 'total' is a filter's first count (count cache "
        "emptied before each run) plus the newest 500; 'again' is the same preview "
        "once the count is remembered (only rows appended since are counted):",
        "",
        "| engine | filter | matching | count ms | newest-500 ms | total ms | met | again ms |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for p in previews:
        met = "yes" if p["total_ms"] <= limit_ms else "**no**"
        lines.append(
            f"| {p['engine']} | {p['filter']} | {p['count']:,} | {p['count_ms']:.1f} | "
            f"{p['preview_ms']:.1f} | {p['total_ms']:.1f} | {met} | {p['warm_ms']:.1f} |"
        )
    return "\n".join(lines)


def write_report(path: Path, n: int, body: str) -> None:
    start, end = f"<!-- results:{n} -->", f"<!-- /results:{n} -->"
    block = f"{start}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/auditbench"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--preview-repeat", type=int, default=5)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--formats", default="csv,json,jsonl")
    ap.add_argument("--no-exports", action="store_true")
    ap.add_argument("--no-previews", action="store_true")
    ap.add_argument("--plans", action="store_true", help="print (and write) query plans")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--drop", action="store_true", help="drop the PostgreSQL database at the end")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    a = ap.parse_args()
    n = a.records
    engines = a.engines.split(",")
    fmts = a.formats.split(",")
    db = ensure_sqlite(a.data_dir, n, a.regenerate)
    url = ensure_pg(db, n, a.regenerate) if "postgresql" in engines else None
    con = sqlite3.connect(db)
    upto, last_us, total = con.execute(
        "SELECT max(seq), max(ts), count(*) FROM audit_records"
    ).fetchone()
    con.close()
    to_dt = from_micros(last_us).replace(microsecond=0) + timedelta(seconds=1)
    to, to_us = (
        format_instant(to_dt),
        int((to_dt - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000),
    )
    load0 = os.getloadavg()
    started = datetime.now(UTC)
    exports: list[dict] = []
    if not a.no_exports:
        print(f"exports of {total:,} rows, median of {a.repeat} whole-process runs:", flush=True)
        cases = []
        for e in engines:
            cases += [c for c in export_cases(db, url, e, to, upto, to_us) if c[1] in fmts]
        exports = bench_exports(cases, a.repeat, total)
    previews, plan_lines = [], []
    if not a.no_previews:
        print(f"previews (count + newest 500), median of {a.preview_repeat}:", flush=True)
        for e in engines:
            u = f"sqlite:///{db}" if e == "sqlite" else url
            assert u is not None
            p, pl = bench_previews(u, e, a.preview_repeat, a.plans)
            previews += p
            plan_lines += pl
    load1 = os.getloadavg()
    limit = 50.0 if n <= 1_000_000 else 200.0
    body = table(exports, previews, n, limit)
    print()
    print(body)
    if plan_lines:
        print("\n".join(plan_lines))
    if not a.no_write:
        mod = sqlite_module()
        ours_sqlite = mod.sqlite_version if mod is not None else sqlite3.sqlite_version
        cmds = sorted({r["ours_cmd"] for r in exports} | {r["floor_cmd"] for r in exports})
        head = (
            f"### {n:,} records — {started:%Y-%m-%d %H:%M} UTC\n\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other "
            f"work: load average {load0[0]:.1f} before, {load1[0]:.1f} after), "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version} (the shell, "
            f"and the standard library's module), {ours_sqlite} (ours: db.sqlite_module).\n"
            f"Produced by `{REL_PY} bench/bench_export.py --records {n}"
            f"{' --plans' if a.plans else ''}`; each export row is the median of "
            f"{a.repeat} whole-process runs, floor measured in the same run.\n\n"
        )
        details = ""
        if cmds:
            details += "\n\nCommands measured (median of the runs; rows/s = rows / wall time):\n\n"
            details += "```\n" + "\n".join(cmds) + "\n```"
        if plan_lines:
            details += "\n\nQuery plans (count, then newest 500):\n\n```\n"
            details += "\n".join(plan_lines) + "\n```"
        write_report(a.report, n, head + body + details)
        print(f"\nwrote {a.report}")
    if a.drop and url:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "audit_bench_{n}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
