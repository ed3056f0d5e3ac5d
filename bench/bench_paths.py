"""Every path a large export can take, against the floors, in one run (issue 14).

    .venv/bin/python bench/bench_paths.py --records 10000,1000000 --rounds 3   # the full run
    .venv/bin/python bench/bench_paths.py --records 10000,50000 --rounds 1     # a small trial
    .venv/bin/python bench/bench_paths.py --engines sqlite --paths floor,cli,api --formats csv
    .venv/bin/pip install -r requirements-bench.txt      # DuckDB and its offline extensions

For each engine (--engines) and size (--records), a demo store is made with
`python -m audit_core demo --records N --seed 7`: a SQLite file in --workdir (kept there and
reused next time), or a PostgreSQL database of its own (audit_bench_paths_<random> on
$AUDIT_BENCH_PG_ADMIN_URL, default postgresql://postgres@127.0.0.1:5432/postgres), dropped
at the end, even on error or Ctrl-C. Every path exports all the demo records, no filter,
with `to` fixed just past the newest one (so the audit records the bench's own exports
write stay out of every export), each to a file under --workdir (default: a temp
directory, removed at the end). Paths (--paths):

  floor   the engine's own shell: `sqlite3 -readonly -csv -header` / `sqlite3 -json`;
          psql `\\copy (SELECT ...) TO file CSV HEADER` / `\\copy` of row_to_json per row
          (the JSON floor is also the JSON Lines floor)
  duckdb  `COPY (SELECT ... FROM sqlite_scan(...) | postgres_scan(...)) TO file` in a fresh
          Python process (skipped, saying why, when duckdb or its extension cannot load)
  cli     `python -m audit_core export --format F --to T -o FILE`, the whole process
  api     a warm `streamlit run app.py` on a free 127.0.0.1 port with AUDIT_SYNC_EXPORT_LIMIT
          above the row count, fetched by curl into a file; plus the library's own
          in-process time for the same export (export.plan + export.chunks, bytes dropped,
          as bench/bench_api.py measures it) and the API's ratio to it
  job     a second server at the default limit: GET export -> 202 -> sleep the Retry-After
          it sent -> GET the download link (202 + Retry-After again, or the file); wall
          time from the request to the file on disk. Also: createdAt -> startedAt (the
          worker's pick-up latency), createdAt -> finishedAt, and each Retry-After against
          the time actually left until the file was ready (read from export_jobs)

Timing: one untimed warm-up pass, then --rounds rounds, each running every case once
(cases interleaved, so load drift hits them alike); the table gives the median rows/s,
min-max, and the ratio to the floor of the same engine and format. The two servers never
run at once (a job queued on one could be claimed by the other's worker): round 1..N of
floor/duckdb/cli/api run with the streaming server up, then round 1..N of floor/job with
the job server up; the floor's runs of both are pooled. Server RSS above idle is the
server's process tree (psutil, every 50 ms) during each stream and each job, against its
RSS just before the request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, select, text  # noqa: E402

from audit_core import export  # noqa: E402
from audit_core.config import Settings  # noqa: E402
from audit_core.db import make_engine  # noqa: E402
from audit_core.filters import AuditFilter  # noqa: E402
from audit_core.models import JOBS  # noqa: E402
from audit_core.record import FIELDS, format_instant, from_micros, to_micros  # noqa: E402
from tests.e2e.harness import free_port, start_streamlit, stop_process  # noqa: E402

PY = sys.executable
COLS = ", ".join(f'"{f}"' for f in FIELDS)
PG_ADMIN = os.environ.get(
    "AUDIT_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
DEFAULTS = Settings()  # the product's defaults: the immediate limit, the self namespace
PATHS = ("floor", "duckdb", "cli", "api", "job")
FORMATS = ("csv", "json", "jsonl")
DUCKDB_OPTIONS = {"csv": "(HEADER)", "jsonl": "(FORMAT json)", "json": "(FORMAT json, ARRAY true)"}
JOB_TIMEOUT = 1800.0  # seconds one job may take before the bench gives up on it
RSS_INTERVAL = 0.05

# Run in a fresh interpreter: load the scanner (from duckdb-ext-* when installed, which
# ships the extension files for offline use), then run one statement.
DUCKDB_SCRIPT = """
import os, sys
import duckdb
config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
try:
    import duckdb_ext
except ImportError:
    pass
else:
    config["extension_directory"] = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
con = duckdb.connect(config=config)
con.execute("LOAD " + sys.argv[1])
con.execute(sys.argv[2])
"""


# ---------------------------------------------------------------- stores


@dataclass
class Store:
    """One demo store and the settings every process that uses it gets."""

    engine: str  # "sqlite" or "postgresql"
    url: str  # SQLAlchemy URL
    env: dict[str, str]  # AUDIT_* for the CLI, the servers and the demo
    sqlite_file: Path | None = None
    pg_name: str | None = None
    rows: int = 0  # records every path exports
    to: str = ""  # the export's `to`, just past the newest demo record
    to_us: int = 0


def store_env(url: str, workdir: Path) -> dict[str, str]:
    """The AUDIT_* settings of the store's processes; any other AUDIT_* we inherit is blanked
    (an empty value means the default), so the bench measures the product's defaults."""
    env = {k: "" for k in os.environ if k.startswith("AUDIT_")}
    env["AUDIT_DATABASE_URL"] = url
    env["AUDIT_EXPORT_DIR"] = str(workdir / "exports")  # signing.key goes beside it
    env["AUDIT_SECRET_KEY"] = SECRET
    return env


def child_env(store: Store) -> dict[str, str]:
    return {**os.environ, **store.env}


def run_demo(store: Store, n: int) -> None:
    """Fill the store with n demo records, the way the other benches do."""
    print(f"generating {n:,} demo records into {store.engine} ...", flush=True)
    t = time.perf_counter()
    cmd = [PY, "-m", "audit_core", "demo", "--records", str(n), "--seed", "7"]
    p = subprocess.run(cmd, cwd=ROOT, env=child_env(store), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"demo failed ({p.returncode}):\n{p.stderr[-2000:]}")
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)


def sqlite_store(workdir: Path, n: int) -> Store:
    """The SQLite store of n records in workdir, made once and reused while it is complete."""
    db = workdir / f"sqlite-{n}.db"
    ready = db.with_suffix(".ready")
    url = f"sqlite:///{db}"
    store = Store("sqlite", url, store_env(url, workdir), sqlite_file=db)
    if not (ready.exists() and db.exists()):
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), ready):
            p.unlink(missing_ok=True)
        run_demo(store, n)
        ready.write_text(f"{n}\n")
    return with_bounds(store)


def pg_url(name: str, driver: str = "postgresql") -> str:
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql", driver, 1) + f"/{name}"


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)


def pg_store(workdir: Path, n: int, created: list[str]) -> Store:
    """A fresh PostgreSQL database of n demo records; its name is added to created at once."""
    import psycopg

    name = f"audit_bench_paths_{secrets.token_hex(4)}"
    pg_admin(f'CREATE DATABASE "{name}"')
    created.append(name)
    url = pg_url(name, "postgresql+psycopg")
    store = Store("postgresql", url, store_env(url, workdir), pg_name=name)
    run_demo(store, n)
    with psycopg.connect(pg_url(name), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # as autovacuum would, before anything is measured
    return with_bounds(store)


def drop_pg(name: str) -> None:
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_bounds(store: Store) -> Store:
    """Fix `to` just past the newest demo record and count the rows before it."""
    engine = make_engine(store.url)
    with engine.connect() as conn:
        newest = conn.execute(
            text("SELECT max(ts) FROM audit_records WHERE namespace <> :ns"),
            {"ns": DEFAULTS.self_namespace},
        ).scalar_one()
        to_dt = from_micros(newest).replace(microsecond=0) + timedelta(seconds=1)
        store.to, store.to_us = format_instant(to_dt), to_micros(to_dt)
        store.rows = conn.execute(
            text("SELECT count(*) FROM audit_records WHERE ts < :to"), {"to": store.to_us}
        ).scalar_one()
    engine.dispose()
    return store


def make_token(store: Store) -> str:
    """An admin's API token, through the CLI (`users add`, `tokens create`)."""
    env = child_env(store)
    cli = [PY, "-m", "audit_core"]
    subprocess.run(
        [*cli, "users", "add", "bench@example.com", "--role", "admin", "--namespaces", "*"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    out = subprocess.run(
        [*cli, "tokens", "create", "bench@example.com"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[0]


# ---------------------------------------------------------------- measuring


@dataclass
class JobTiming:
    """What the job path's server side did, read from export_jobs after the download."""

    server_seconds: float  # createdAt -> finishedAt
    start_latency: float  # createdAt -> startedAt
    ready_gap: float  # finishedAt -> the request that got the file
    retry_afters: list[tuple[float, float]]  # (Retry-After sent, seconds actually left)


@dataclass
class Run:
    seconds: float
    size: int  # bytes of the export
    rss_above_idle: float | None = None  # MB, server process tree
    rss_idle: float | None = None
    job: JobTiming | None = None


@dataclass
class Case:
    """One thing to time: a path in one format."""

    path: str  # floor, duckdb, cli, api, library, job
    fmt: str
    label: str
    run: Callable[[], Run]


def floor_format(fmt: str) -> str:
    """The floor a format is held to: CSV's, or JSON's for both JSON formats."""
    return "csv" if fmt == "csv" else "json"


def timed(cmd: list[str], env: dict[str, str] | None = None, stdout: Path | None = None) -> float:
    """Run cmd to completion (stdout to a file, or dropped); return its wall seconds."""
    with open(stdout or os.devnull, "wb") as out:
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"failed ({p.returncode}): {cmd}\n{p.stderr.decode()[-2000:]}")
    return seconds


def written(seconds: float, out: Path) -> Run:
    """A run that wrote the file out."""
    return Run(seconds, out.stat().st_size)


def fresh(path: Path) -> Path:
    """The output file, removed first so every run writes a new file."""
    path.unlink(missing_ok=True)
    return path


def select_sql(store: Store) -> str:
    """The floors' query: the export's columns, rows and order."""
    return f"SELECT {COLS} FROM audit_records WHERE ts < {store.to_us} ORDER BY ts, seq"


def floor_case(store: Store, kind: str, out_dir: Path) -> Case:
    """The engine's own shell writing the same columns to a file (kind: csv or json)."""
    out = out_dir / f"floor.{kind}"
    sql = select_sql(store)
    if store.engine == "sqlite":
        assert store.sqlite_file is not None
        mode = "-csv" if kind == "csv" else "-json"
        cmd = ["sqlite3", "-readonly", mode] + (["-header"] if kind == "csv" else [])
        cmd += [str(store.sqlite_file), sql]
        label = f"floor: sqlite3 .mode {kind}"
        return Case("floor", kind, label, lambda: written(timed(cmd, stdout=fresh(out)), out))
    if kind == "csv":
        copy = f"\\copy ({sql}) TO '{out}' CSV HEADER"
    else:  # one JSON object a line; \x01/\x02 never occur raw in JSON, so nothing is escaped
        copy = (
            f"\\copy (SELECT row_to_json(t) FROM ({sql}) t) TO '{out}' "
            "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
        )
    cmd = [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        pg_url(str(store.pg_name)),
        "-c",
        copy,
    ]
    label = "floor: psql \\copy csv" if kind == "csv" else "floor: psql \\copy row_to_json"

    def run() -> Run:
        fresh(out)
        return written(timed(cmd), out)

    return Case("floor", kind, label, run)


def duckdb_source(store: Store) -> tuple[str, str]:
    """(extension, table function call) that reads audit_records in DuckDB."""
    if store.engine == "sqlite":
        return "sqlite", f"sqlite_scan('{store.sqlite_file}', 'audit_records')"
    dsn = psycopg_dsn(str(store.pg_name))
    return "postgres", f"postgres_scan('{dsn}', 'public', 'audit_records')"


def psycopg_dsn(name: str) -> str:
    """The libpq key=value string of a bench database (DuckDB's postgres_scan takes it)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(PG_ADMIN, dbname=name)


def duckdb_problem(store: Store) -> str | None:
    """Why DuckDB cannot read this store here (None: it can)."""
    ext, source = duckdb_source(store)
    try:
        p = subprocess.run(
            [PY, "-c", DUCKDB_SCRIPT, ext, f"SELECT count(*) FROM {source}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return f"loading DuckDB's {ext} extension took over 120 s"
    if p.returncode == 0:
        return None
    lines = p.stderr.strip().splitlines()
    last = lines[-1] if lines else f"exit status {p.returncode}"
    if "No module named 'duckdb'" in p.stderr:
        return "duckdb is not installed (.venv/bin/pip install -r requirements-bench.txt)"
    return f"DuckDB's {ext} extension cannot be loaded offline: {last[:300]}"


def duckdb_case(store: Store, fmt: str, out_dir: Path) -> Case:
    """DuckDB's COPY of the same SELECT, in a fresh Python process."""
    out = out_dir / f"duckdb.{fmt}"
    ext, source = duckdb_source(store)
    sql = (
        f"COPY (SELECT {COLS} FROM {source} WHERE ts < {store.to_us} ORDER BY ts, seq) "
        f"TO '{out}' {DUCKDB_OPTIONS[fmt]}"
    )
    label = f"DuckDB COPY from {source.split('(')[0]}"

    def run() -> Run:
        fresh(out)
        return written(timed([PY, "-c", DUCKDB_SCRIPT, ext, sql]), out)

    return Case("duckdb", fmt, label, run)


def cli_case(store: Store, fmt: str, out_dir: Path) -> Case:
    """`python -m audit_core export`, the whole process (its manifest and audit record too)."""
    out = out_dir / f"cli.{fmt}"
    cmd = [PY, "-m", "audit_core", "export", "--format", fmt, "--to", store.to, "-o", str(out)]

    def run() -> Run:
        fresh(out)
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, env=child_env(store), capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if p.returncode != 0 or f"exported {store.rows} records" not in p.stderr:
            raise RuntimeError(f"CLI export: exit {p.returncode}\n{p.stderr[-2000:]}")
        return written(seconds, out)

    return Case("cli", fmt, "CLI export (whole process)", run)


def library_case(engine: Engine, store: Store, fmt: str) -> Case:
    """The library's own in-process export: plan + chunks, bytes dropped (bench_api's rate)."""
    flt = AuditFilter.parse(end=store.to)

    def run() -> Run:
        t = time.perf_counter()
        with engine.connect() as conn:
            plan = export.plan(conn, flt, fmt)
            size = sum(len(chunk) for chunk in export.chunks(conn, plan))
        seconds = time.perf_counter() - t
        if plan.total != store.rows:
            raise RuntimeError(f"library export counted {plan.total}, want {store.rows}")
        return Run(seconds, size)

    return Case("library", fmt, "library in-process (plan + chunks)", run)


# ---------------------------------------------------------------- the servers


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    token: str


@contextlib.contextmanager
def serving(store: Store, limit: int | None, token: str, logs: Path) -> Iterator[Server]:
    """`streamlit run app.py` on a free loopback port (limit None: the default), stopped after."""
    port = free_port()
    env = {**store.env, "AUDIT_SYNC_EXPORT_LIMIT": "" if limit is None else str(limit)}
    label = "default limit" if limit is None else f"limit {limit:,}"
    print(f"  starting streamlit on 127.0.0.1:{port} ({label}) ...", flush=True)
    proc = start_streamlit(ROOT, port, env=env, log_path=logs / f"server-{port}.log", timeout=180)
    try:
        yield Server(proc, f"http://127.0.0.1:{port}", token)
    finally:
        stop_process(proc)


def tree_rss_mb(proc: psutil.Process) -> float:
    """Resident memory of a process and its children, in MB."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / (1 << 20)


class RssSampler:
    """The peak RSS of a process tree while the with-block runs, and its RSS just before."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.idle = self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssSampler:
        self.idle = self.peak = tree_rss_mb(self.proc)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            self.peak = max(self.peak, tree_rss_mb(self.proc))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_mb(self.proc))


def curl(url: str, token: str, out: Path) -> tuple[int, dict[str, str]]:
    """GET url with the token, the body into out; return the status and (lower-case) headers."""
    head = out.with_name(out.name + ".headers")
    cmd = ["curl", "-sS", "--noproxy", "*", "-o", str(out), "-D", str(head), "-w", "%{http_code}"]
    cmd += ["-H", f"Authorization: Bearer {token}", url]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"curl {url}: exit {p.returncode}: {p.stderr.strip()}")
    headers = {}
    for line in head.read_text(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    head.unlink()
    return int(p.stdout), headers


def export_url(server: Server, store: Store, fmt: str) -> str:
    return f"{server.base}/api/v1/audit/export?format={fmt}&to={store.to}"


def check_answer(status: int, want: int, headers: dict[str, str], out: Path, rows: int) -> None:
    """Refuse an answer with another status or another record count than expected."""
    if status != want:
        body = out.read_text(errors="replace")[:500] if out.exists() else ""
        raise RuntimeError(f"API answered {status}, expected {want}: {body}")
    got = int(headers.get("x-total-records", "-1"))
    if want == 200 and got != rows:
        raise RuntimeError(f"API sent {got} records, expected {rows}")


def api_case(server: Server, store: Store, fmt: str, out_dir: Path) -> Case:
    """The streamed export of a warm server, fetched by curl into a file."""
    out = out_dir / f"api.{fmt}"

    def run() -> Run:
        fresh(out)
        with RssSampler(server.proc.pid) as rss:
            t = time.perf_counter()
            status, headers = curl(export_url(server, store, fmt), server.token, out)
            seconds = time.perf_counter() - t
        check_answer(status, 200, headers, out, store.rows)
        return Run(seconds, out.stat().st_size, rss.peak - rss.idle, rss.idle)

    return Case("api", fmt, "API stream (warm server)", run)


def client_case(server: Server, out_dir: Path) -> Case:
    """curl alone against the same server: process start, connect, a tiny answer.

    What every `api` figure pays besides the export itself; left out of the tables, and
    taken off the API's time in the API ÷ library line (at 10k rows it is a good part).
    """
    out = out_dir / "client.txt"

    def run() -> Run:
        fresh(out)
        t = time.perf_counter()
        status, _ = curl(f"{server.base}/_stcore/health", "-", out)
        seconds = time.perf_counter() - t
        if status != 200:
            raise RuntimeError(f"/_stcore/health answered {status}")
        return Run(seconds, out.stat().st_size, 0, 0)

    return Case("client", "csv", "curl alone (GET /_stcore/health)", run)


def job_row(engine: Engine, job_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(JOBS).where(JOBS.c.job_id == job_id)).one()
    return dict(row._mapping)


Polls = list[tuple[float | None, datetime]]  # (Retry-After, when), the last (None, when)


def follow_job(server: Server, store: Store, fmt: str, out: Path) -> tuple[str, Polls]:
    """Queue the export, then poll its download link as told until the file comes.

    Sleeps exactly each Retry-After the API sends, never longer. Returns the job id and
    the polls: (Retry-After, when that 202 came) for each, then (None, when the request
    that got the file was sent).
    """
    started = time.monotonic()
    status, headers = curl(export_url(server, store, fmt), server.token, out)
    check_answer(status, 202, headers, out, store.rows)
    job_id = json.loads(out.read_text())["metadata"]["jobId"]
    download = f"{server.base}/api/v1/audit/export/download/{job_id}"
    polls: Polls = []
    asked = datetime.now(UTC)
    while status == 202:
        wait = float(headers["retry-after"])
        polls.append((wait, datetime.now(UTC)))
        if time.monotonic() - started + wait > JOB_TIMEOUT:
            raise RuntimeError(f"job {job_id} not done after {JOB_TIMEOUT:.0f} s")
        time.sleep(wait)
        asked = datetime.now(UTC)
        status, headers = curl(download, server.token, out)
    check_answer(status, 200, headers, out, store.rows)
    polls.append((None, asked))
    return job_id, polls


def job_case(server: Server, engine: Engine, store: Store, fmt: str, out_dir: Path) -> Case:
    """The job path at the default limit: request -> 202 -> poll -> file on disk."""
    out = out_dir / f"job.{fmt}"

    def run() -> Run:
        fresh(out)
        with RssSampler(server.proc.pid) as rss:
            t = time.perf_counter()
            job_id, polls = follow_job(server, store, fmt, out)
            seconds = time.perf_counter() - t
        row = job_row(engine, job_id)
        (Path(store.env["AUDIT_EXPORT_DIR"]) / str(row["file_name"])).unlink(missing_ok=True)
        size = out.stat().st_size
        return Run(seconds, size, rss.peak - rss.idle, rss.idle, job_timing(row, polls))

    return Case("job", fmt, "job (202, poll, download)", run)


def job_timing(row: dict[str, Any], polls: Polls) -> JobTiming:
    """The job's own times against what the client was told and did."""
    created, started, finished = row["created_at"], row["started_at"], row["finished_at"]
    return JobTiming(
        server_seconds=(finished - created).total_seconds(),
        start_latency=(started - created).total_seconds(),
        ready_gap=(polls[-1][1] - finished).total_seconds(),
        retry_afters=[(ra, (finished - at).total_seconds()) for ra, at in polls if ra is not None],
    )


# ---------------------------------------------------------------- one block


@dataclass
class Block:
    """Every run of one engine and size."""

    store: Store
    rounds: int
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)
    labels: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)


def measure(block: Block, cases: list[Case]) -> None:
    """One untimed warm-up pass over the cases, then block.rounds interleaved rounds."""
    for case in cases:
        block.labels[(case.path, case.fmt)] = case.label
        case.run()
    for r in range(block.rounds):
        for case in cases:
            result = case.run()
            block.runs.setdefault((case.path, case.fmt), []).append(result)
            print(
                f"  round {r + 1} {block.store.engine:10s} {block.store.rows:>9,} "
                f"{case.path:7s} {case.fmt:5s} {result.seconds:8.3f} s "
                f"{block.store.rows / result.seconds:>11,.0f} rows/s "
                f"{result.size / 1e6:9.1f} MB",
                flush=True,
            )


def floor_cases(store: Store, formats: list[str], out_dir: Path) -> list[Case]:
    """The floors the formats are held to (the JSON floor serves JSON and JSON Lines)."""
    kinds = dict.fromkeys(floor_format(f) for f in formats)
    return [floor_case(store, kind, out_dir) for kind in kinds]


def stream_phase_cases(
    store: Store,
    a: argparse.Namespace,
    duckdb_ok: bool,
    server: Server | None,
    engine: Engine,
    out_dir: Path,
) -> list[Case]:
    """Floor, DuckDB, CLI, API and library cases, format by format (each floor once,
    before the first format it serves); API and library only with a server."""
    floors = {c.fmt: c for c in floor_cases(store, a.formats, out_dir)}
    cases: list[Case] = [] if server is None else [client_case(server, out_dir)]
    for fmt in a.formats:
        if "floor" in a.paths and floor_format(fmt) in floors:
            cases.append(floors.pop(floor_format(fmt)))
        if "duckdb" in a.paths and duckdb_ok:
            cases.append(duckdb_case(store, fmt, out_dir))
        if "cli" in a.paths:
            cases.append(cli_case(store, fmt, out_dir))
        if server is not None:
            cases.append(api_case(server, store, fmt, out_dir))
            cases.append(library_case(engine, store, fmt))
    return cases


def run_block(store: Store, a: argparse.Namespace, out_dir: Path, logs: Path) -> Block:
    """Measure every chosen path on one store: the streaming phase, then the job phase."""
    block = Block(store, a.rounds)
    load0 = os.getloadavg()[0]
    problem = duckdb_problem(store) if "duckdb" in a.paths else None
    if problem:
        block.notes.append(f"DuckDB: skipped: {problem}.")
        print(f"  {block.notes[-1]}", flush=True)
    engine = make_engine(store.url)
    token = make_token(store) if {"api", "job"} & set(a.paths) else ""
    try:
        if "api" in a.paths:
            with serving(store, store.rows + 1, token, logs) as server:
                measure(block, stream_phase_cases(store, a, not problem, server, engine, out_dir))
        else:
            measure(block, stream_phase_cases(store, a, not problem, None, engine, out_dir))
        if "job" in a.paths:
            run_job_phase(block, engine, token, a, out_dir, logs)
    finally:
        engine.dispose()
    block.load = (load0, os.getloadavg()[0])
    return block


def run_job_phase(
    block: Block, engine: Engine, token: str, a: argparse.Namespace, out_dir: Path, logs: Path
) -> None:
    """The job rounds, with the floors interleaved, on a server at the default limit."""
    store = block.store
    limit = DEFAULTS.sync_export_limit
    if store.rows <= limit:
        block.notes.append(
            f"Job: not measured at {store.rows:,} rows: at or under the default "
            f"AUDIT_SYNC_EXPORT_LIMIT ({limit:,}) the API streams the export instead."
        )
        return
    with serving(store, None, token, logs) as server:
        cases = floor_cases(store, a.formats, out_dir) if "floor" in a.paths else []
        cases += [job_case(server, engine, store, fmt, out_dir) for fmt in a.formats]
        measure(block, cases)


# ---------------------------------------------------------------- report


ORDER = ("floor", "duckdb", "cli", "api", "library", "job", "client")


def rates(block: Block, key: tuple[str, str]) -> list[float]:
    return [block.store.rows / r.seconds for r in block.runs.get(key, [])]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def median_range(values: list[float], fmt: Callable[[float], str]) -> str:
    """'median (min-max)', or the value alone for one run."""
    med = fmt(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt(min(values))}–{fmt(max(values))})"


def table(block: Block) -> str:
    """The block's Markdown table, then its extra lines."""
    s = block.store
    head = (
        f"#### {s.engine}, {s.rows:,} rows — median of {block.rounds} round(s) after a "
        f"warm-up; load average {block.load[0]:.1f} before, {block.load[1]:.1f} after"
    )
    lines = [head, "", "| path | format | rows/s (median) | min–max | × floor |"]
    lines.append("|---|---|---:|---:|---:|")
    keys = sorted(
        (k for k in block.runs if k[0] != "client"),
        key=lambda k: (ORDER.index(k[0]), FORMATS.index(k[1])),
    )
    for key in keys:
        rps = rates(block, key)
        floor = rates(block, ("floor", floor_format(key[1])))
        med = statistics.median(rps)
        ratio = f"{med / statistics.median(floor):.2f}×" if floor else "—"
        lines.append(
            f"| {block.labels[key]} | {key[1]} | {med:,.0f} | "
            f"{min(rps):,.0f}–{max(rps):,.0f} | {ratio} |"
        )
    lines += [""] + [f"* {n}" for n in extra_lines(block) + block.notes]
    return "\n".join(lines)


def extra_lines(block: Block) -> list[str]:
    """API against the library, the job's latency and Retry-After, the servers' RSS."""
    out = []
    fmts = [f for f in FORMATS if ("api", f) in block.runs and ("library", f) in block.runs]
    if fmts:
        parts = []
        for f in fmts:
            api = statistics.median(r.seconds for r in block.runs[("api", f)])
            lib = statistics.median(r.seconds for r in block.runs[("library", f)])
            parts.append(f"{f} {lib / api:.2f}× ({ms(api)} vs {ms(lib)})")
        out.append("API stream ÷ library in-process (rows/s): " + ", ".join(parts) + ".")
        if ("client", "csv") in block.runs:
            own = statistics.median(r.seconds for r in block.runs[("client", "csv")])
            parts = []
            for f in fmts:
                api = statistics.median(r.seconds for r in block.runs[("api", f)]) - own
                lib = statistics.median(r.seconds for r in block.runs[("library", f)])
                parts.append(f"{f} {lib / api:.2f}× ({ms(api)} vs {ms(lib)})")
            out.append(
                f"curl alone (GET /_stcore/health on the same server: process start, "
                f"connect, a tiny answer) takes {ms(own)}; API without it ÷ library: "
                + ", ".join(parts)
                + "."
            )
    out += job_lines(block)
    out += rss_lines(block)
    return out


def job_lines(block: Block) -> list[str]:
    """Pick-up latency, the job's own time, and Retry-After against the time left."""
    jobs = {f: [r.job for r in block.runs.get(("job", f), []) if r.job] for f in FORMATS}
    jobs = {f: j for f, j in jobs.items() if j}
    if not jobs:
        return []
    rows = block.store.rows
    latency = [f"{f} {median_range([j.start_latency for j in js], ms)}" for f, js in jobs.items()]
    own = [
        f"{f} {statistics.median(j.server_seconds for j in js):.2f} s "
        f"({rows / statistics.median(j.server_seconds for j in js):,.0f} rows/s)"
        for f, js in jobs.items()
    ]
    told = []
    for f, js in jobs.items():
        pairs = "; ".join(
            ", ".join(f"{ra:.0f} s/{left:+.1f} s" for ra, left in j.retry_afters) for j in js
        )
        gap = statistics.median(j.ready_gap for j in js)
        told.append(f"{f}: {pairs} (file ready {gap:.1f} s before the request that got it)")
    return [
        "Job, enqueue → worker started (startedAt − createdAt): " + ", ".join(latency) + ".",
        "Job, its own time (createdAt → finishedAt): " + ", ".join(own) + ".",
        "Job, Retry-After sent / time actually left until finishedAt, per run: "
        + " | ".join(told)
        + ".",
    ]


def rss_lines(block: Block) -> list[str]:
    """Server RSS above idle during the streams and the jobs (peak, per format)."""
    out = []
    for path, name in (("api", "API stream"), ("job", "job")):
        parts = []
        for f in FORMATS:
            runs = [r for r in block.runs.get((path, f), []) if r.rss_above_idle is not None]
            if runs:
                above = max(r.rss_above_idle or 0.0 for r in runs)
                idle = statistics.median(r.rss_idle or 0.0 for r in runs)
                parts.append(f"{f} +{above:.0f} MB (idle {idle:.0f} MB)")
        if parts:
            out.append(f"Server RSS above idle, {name} (peak of the runs): " + ", ".join(parts))
    return out


def preamble(a: argparse.Namespace, started: datetime) -> str:
    cmd = " ".join([".venv/bin/python", "bench/bench_paths.py", *sys.argv[1:]])
    return (
        f"Run of {started:%Y-%m-%d %H:%M} UTC: `{cmd}`. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}. rows/s = rows / wall "
        "time; × floor = median rows/s over the floor's (same engine, CSV or JSON)."
    )


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", default="10000,1000000", help="store sizes, comma-separated")
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--workdir", type=Path, help="keep the SQLite stores here (default: temp)")
    a = ap.parse_args()
    a.sizes = [int(n) for n in a.records.split(",")]
    a.engines = a.engines.split(",")
    a.formats = a.formats.split(",")
    a.paths = a.paths.split(",")
    for name, given, allowed in (
        ("engine", a.engines, ("sqlite", "postgresql")),
        ("format", a.formats, FORMATS),
        ("path", a.paths, PATHS),
    ):
        if bad := [g for g in given if g not in allowed]:
            ap.error(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
    if a.rounds < 1 or min(a.sizes) < 1:
        ap.error("--rounds and --records must be positive")
    return a


def check_tools(a: argparse.Namespace) -> None:
    """Stop early when a program a chosen path runs is missing."""
    need = []
    if "floor" in a.paths:
        need += ["sqlite3"] if "sqlite" in a.engines else []
        need += ["psql"] if "postgresql" in a.engines else []
    if {"api", "job"} & set(a.paths):
        need.append("curl")
    if missing := [t for t in need if shutil.which(t) is None]:
        raise SystemExit(f"missing programs: {', '.join(missing)}")


def main() -> int:
    a = parse_args()
    check_tools(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="bench-paths-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out_dir, logs = workdir / "out", workdir / "logs"
    out_dir.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    started = datetime.now(UTC)
    created: list[str] = []
    tables: list[str] = []
    try:
        for engine in a.engines:
            for n in a.sizes:
                print(f"{engine}, {n:,} records:", flush=True)
                if engine == "sqlite":
                    store = sqlite_store(workdir, n)
                else:
                    store = pg_store(workdir, n, created)
                try:
                    tables.append(table(run_block(store, a, out_dir, logs)))
                finally:
                    if store.pg_name:
                        drop_pg(store.pg_name)
                        created.remove(store.pg_name)
                print("\n" + tables[-1] + "\n", flush=True)
    finally:
        for name in created:
            drop_pg(name)
        shutil.rmtree(out_dir, ignore_errors=True)
        if a.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"stores kept in {workdir}; server logs in {logs}")
    print("\n## Export paths: all blocks\n")
    print(preamble(a, started) + "\n")
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
