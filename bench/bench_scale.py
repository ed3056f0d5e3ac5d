"""Cost as the log grows: PostgreSQL at 1M, 10M and 30M records (issue 17).

    .venv/bin/python bench/bench_scale.py --check 20000            # generator validity only
    .venv/bin/python bench/bench_scale.py --sizes 1000000          # 1M: check, make, measure
    .venv/bin/python bench/bench_scale.py --sizes 1000000,10000000,30000000 --drop

The stores are made on the server: `python -m audit_core demo` appends ~7k records/s
through Python, so 30M would take over an hour; here SQL makes them at the same rate of
growth (the demo's 1M over 90 days, kept: 10M is 900 days, 30M is 2,700 days, about
7.4 years of history ending today) with the demo's users, actions, namespaces, hourly
profile, resources and addresses, and everything the product derives:

- each record's checksum (`sha256:` + hex SHA-256 of the canonical JSON, built with
  `to_json()` per value, the same escaping as Python's `json.dumps`), its chain hash
  (a PL/pgSQL loop over insertion order, `sha256(prev || checksum)`), `ts`, `user_lc`,
  the daily `audit-YYYYMMDD-NNN` ids and `id_counters`;
- the Merkle tree in `tree.py`'s layout: leaf `sha256(0x00 || digest)`, one
  `INSERT ... SELECT` per level pairing the level below, levels 1-7 in temporary tables,
  level 8 (merkle.TILE_LEVEL) and up stored in `merkle_nodes`;
- the day counts (an upsert of the new rows' counts) and the chain head, whose root and
  signed note come from the product's own `evidence.advance_head`.

Growth is incremental: one database (`audit_bench_scale_main`) is extended 1M -> 10M ->
30M, each extension only adding days after the newest record. `--check N` (run first by
default, 20,000 records in two extensions) proves the generator: `python -m audit_core
verify` on the generated store (checksums, search columns, chain, every stored subtree
against the rows, the signed head, day counts), then the same records appended by
`store.append` into a fresh database must give the same chain tip, tree root, stored
nodes, day counts and id counters.

At each size, in one warm process, median of --repeat after a warm-up: preview (count +
newest 500, count memory emptied each run) for bench_export's filters, a filtered
export of about 100k records (CSV, `export.plan` + `export.chunks`, bytes dropped), a
checkpoint of the whole tree, an inclusion proof, a consistency proof; and
`EXPLAIN (ANALYZE, BUFFERS)` of the key statements into --plans-file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_export import preview_filters  # noqa: E402

from audit_core import demo, evidence, export, merkle, query, signing, store, tree  # noqa: E402
from audit_core.db import make_engine, migrate  # noqa: E402
from audit_core.filters import AuditFilter  # noqa: E402
from audit_core.record import FIELDS, format_instant, from_micros, normalize  # noqa: E402

PG_ADMIN = os.environ.get(
    "AUDIT_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MAIN_DB = "audit_bench_scale_main"
HOURS_PER_RECORD = 90 * 24 / 1_000_000  # the demo's 1M records over 90 days, kept
HOUR_US = 3_600_000_000
SLOTS = 1 << 16  # weighted picks: an int array of this many slots per dimension
CHUNK = 500_000  # records generated, chained and inserted per statement group
MIN_FREE_GB = 15
ORIGIN = "audit-export-portal"
RESOURCES = {
    "runbook": (
        "disk-cleanup",
        "db-failover",
        "cert-renewal",
        "cache-flush",
        "node-drain",
        "log-rotate",
    ),
    "secret": ("db-password", "api-key", "tls-cert", "oauth-client"),
    "deployment": ("checkout", "api-gateway", "auth", "search", "ledger"),
    "policy": ("mfa-required", "ip-allowlist", "least-privilege", "retention"),
    "alert": ("cpu-high", "disk-full", "latency-p99", "error-rate"),
}


def url_of(db: str, driver: str = "postgresql") -> str:
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql", driver, 1) + "/" + db


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


# ------------------------------------------------------------------ the demo's values


def _slots(weights: Sequence[float]) -> list[int]:
    """An array of SLOTS 1-based indexes, each index taking its weight's share of slots."""
    total = sum(weights)
    ends = [round(SLOTS * acc / total) for acc in _accumulate(weights)]
    out: list[int] = []
    for i, end in enumerate(ends):
        out.extend([i + 1] * (end - len(out)))
    return out


def _accumulate(values: Sequence[float]) -> list[float]:
    acc, out = 0.0, []
    for v in values:
        acc += v
        out.append(acc)
    return out


@dataclass(frozen=True)
class Dimensions:
    """The demo's users, actions and namespaces, with their weights as pick slots."""

    users: list[tuple[str, str]]
    actions: list[tuple[str, str, str]]  # (action, family, resourceType)
    namespaces: list[str]

    @classmethod
    def of_demo(cls, seed: int = 7) -> Dimensions:
        users = demo._users(random.Random(seed), 300)
        actions = [
            (f"{fam}.{verb}", fam, demo.RESOURCE_TYPES[fam])
            for fam, verbs in demo.ACTIONS.items()
            for verb in verbs
        ]
        return cls(users, actions, list(demo.NAMESPACES))

    def slot_arrays(self) -> tuple[list[int], list[int], list[int]]:
        user_w = [1.0 / (i + 1) ** 0.7 for i in range(len(self.users))]
        act_w = [demo.FAMILY_WEIGHTS[f] / len(demo.ACTIONS[f]) for _, f, _ in self.actions]
        ns_w = [1.0 / (i + 1) for i in range(len(self.namespaces))]
        return _slots(user_w), _slots(act_w), _slots(ns_w)


# ------------------------------------------------------------------ generation


@dataclass(frozen=True)
class Hour:
    start_us: int
    count: int
    first: int  # 0-based leaf of its first record
    day_before: int  # records of the same UTC day before this hour (the id's sequence)


def plan_hours(origin: datetime, first_hour: int, last_hour: int, n: int) -> list[int]:
    """Spread n records over hours [first_hour, last_hour) after origin like the demo:
    by HOURLY, weekends at 0.35, largest remainders so the total is exactly n."""
    weights = []
    for h in range(first_hour, last_hour):
        at = origin + timedelta(hours=h)
        weights.append(demo.HOURLY[at.hour] * (1.0 if at.weekday() < 5 else 0.35))
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    short = n - sum(counts)
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[:short]:
        counts[i] += 1
    return counts


SETUP_SQL = """
CREATE TEMP TABLE gen_users (i int PRIMARY KEY, email text, email_lc text, role text);
CREATE TEMP TABLE gen_actions (i int PRIMARY KEY, action text, fam text, rtype text);
CREATE TEMP TABLE gen_ns (i int PRIMARY KEY, name text);
CREATE FUNCTION pg_temp.gen_chain(prev text) RETURNS TABLE (k bigint, chain text)
LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT s.k AS kk, s.checksum AS c FROM gen_stage s ORDER BY s.k LOOP
    prev := encode(sha256(convert_to(prev || r.c, 'UTF8')), 'hex');
    k := r.kk;
    chain := prev;
    RETURN NEXT;
  END LOOP;
END $$;
"""

# One row per record of the chunk's hours: the demo's fields, from the slot arrays and
# random(); OFFSET 0 keeps each random() evaluated once per row.
STAGE_SQL = """
CREATE TEMP TABLE gen_stage AS
SELECT k, seq, id, ts, "timestamp", action, "user", user_lc, role, resource,
       "resourceType", namespace, "sourceIP",
       'sha256:' || encode(sha256(convert_to(
         '{"action":' || to_json(action)::text || ',"id":' || to_json(id)::text
         || ',"namespace":' || to_json(namespace)::text
         || ',"resource":' || to_json(resource)::text
         || ',"resourceType":' || to_json("resourceType")::text
         || ',"role":' || to_json(role)::text || ',"sourceIP":' || to_json("sourceIP")::text
         || ',"timestamp":' || to_json("timestamp")::text || ',"user":' || to_json("user")::text
         || '}', 'UTF8')), 'hex') AS checksum
FROM (
  SELECT v.k, v.k + %(seq0)s AS seq,
         'audit-' || v.day || '-'
           || CASE WHEN v.n < 1000 THEN lpad(v.n::text, 3, '0') ELSE v.n::text END AS id,
         v.hs + v.s::bigint * 1000000 AS ts,
         v.tpre || lpad((v.s / 60)::text, 2, '0') || ':' || lpad((v.s %% 60)::text, 2, '0')
           || 'Z' AS "timestamp",
         a.action, u.email AS "user", u.email_lc AS user_lc, u.role,
         CASE a.fam
           WHEN 'incident'
             THEN 'INC-' || v.day || '-' || lpad((1 + floor(v.r1 * 40))::int::text, 3, '0')
           WHEN 'runbook' THEN 'runbook-' || (%(runbook)s::text[])[1 + floor(v.r1 * 6)::int]
           WHEN 'user' THEN 'user-' || (1000 + floor(v.r1 * 9000))::int
           WHEN 'secret' THEN (%(secret)s::text[])[1 + floor(v.r1 * 4)::int]
             || '-' || (1 + floor(v.r2 * 30))::int
           WHEN 'deployment' THEN (%(deployment)s::text[])[1 + floor(v.r1 * 5)::int]
             || '-v' || (1 + floor(v.r2 * 9))::int || '.' || floor(v.r3 * 31)::int
           WHEN 'policy' THEN 'policy-' || (%(policy)s::text[])[1 + floor(v.r1 * 4)::int]
           ELSE 'alert-' || (%(alert)s::text[])[1 + floor(v.r1 * 4)::int]
         END AS resource,
         a.rtype AS "resourceType", ns.name AS namespace,
         CASE WHEN v.r4 < 0.15
           THEN '2001:db8:' || to_hex(floor(v.r5 * 65536)::int) || ':'
             || to_hex(floor(v.r6 * 65536)::int) || '::' || to_hex(1 + floor(v.r7 * 65535)::int)
           ELSE '10.0.' || floor(v.r5 * 10)::int || '.' || (2 + floor(v.r6 * 253))::int
         END AS "sourceIP"
  FROM (
    SELECT h.first + g.j AS k, h.before + g.j + 1 AS n, h.day, h.tpre, h.hs,
           floor((g.j + random()) * 3600.0 / h.c)::int AS s,
           (%(us)s::int[])[1 + floor(random() * %(slots)s)::int] AS ui,
           (%(as)s::int[])[1 + floor(random() * %(slots)s)::int] AS ai,
           (%(ns)s::int[])[1 + floor(random() * %(slots)s)::int] AS ni,
           random() AS r1, random() AS r2, random() AS r3, random() AS r4,
           random() AS r5, random() AS r6, random() AS r7
    FROM unnest(%(hs)s::bigint[], %(hc)s::int[], %(hf)s::bigint[], %(hb)s::int[],
                %(hd)s::text[], %(hp)s::text[]) AS h(hs, c, first, before, day, tpre)
    CROSS JOIN LATERAL generate_series(0, h.c - 1) AS g(j)
    OFFSET 0
  ) v
  JOIN gen_users u ON u.i = v.ui
  JOIN gen_actions a ON a.i = v.ai
  JOIN gen_ns ns ON ns.i = v.ni
) rows
"""

INSERT_SQL = """
INSERT INTO audit_records (seq, id, ts, "timestamp", action, "user", user_lc, role, resource,
                           "resourceType", namespace, "sourceIP", checksum, chain, leaf)
SELECT s.seq, s.id, s.ts, s."timestamp", s.action, s."user", s.user_lc, s.role, s.resource,
       s."resourceType", s.namespace, s."sourceIP", s.checksum, c.chain, s.k
FROM gen_stage s JOIN gen_chained c USING (k)
ORDER BY s.k
"""


def _setup(cur: psycopg.Cursor[Any], dims: Dimensions) -> None:
    cur.execute(SETUP_SQL)
    with cur.copy("COPY gen_users (i, email, email_lc, role) FROM STDIN") as cp:
        for i, (email, role) in enumerate(dims.users, 1):
            cp.write_row((i, email, email.lower(), role))
    with cur.copy("COPY gen_actions (i, action, fam, rtype) FROM STDIN") as cp:
        for i, row in enumerate(dims.actions, 1):
            cp.write_row((i, *row))
    with cur.copy("COPY gen_ns (i, name) FROM STDIN") as cp:
        for i, name in enumerate(dims.namespaces, 1):
            cp.write_row((i, name))


def _read_origin(cur: psycopg.Cursor[Any], db: str) -> datetime | None:
    cur.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (db,)
    )
    row = cur.fetchone()
    note = row[0] if row else None
    if not note or not note.startswith("bench_scale origin "):
        return None
    return datetime.fromisoformat(note.removeprefix("bench_scale origin "))


def extend(db: str, target: int, origin: datetime, signer: evidence.Signer) -> float:
    """Extend the store in `db` to `target` records with later hours; return seconds."""
    t0 = time.perf_counter()
    dims = Dimensions.of_demo()
    us, as_, ns = dims.slot_arrays()
    with psycopg.connect(url_of(db)) as pg, pg.cursor() as cur:
        cur.execute("SET work_mem = '256MB'")
        cur.execute("SET synchronous_commit = off")
        note = sql.Literal(f"bench_scale origin {origin.isoformat()}")
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(db), note))
        cur.execute("SELECT count(*), coalesce(max(seq), 0) FROM audit_records")
        size, max_seq = cur.fetchone() or (0, 0)
        cur.execute("SELECT tree_size, last_hash FROM chain_head WHERE id = 1")
        tree_size, prev = cur.fetchone() or (0, "0" * 64)
        if size != tree_size or size >= target:
            raise SystemExit(f"{db}: {size} records, tree {tree_size}: cannot extend to {target}")
        h0, h1 = round(size * HOURS_PER_RECORD), round(target * HOURS_PER_RECORD)
        if size and h0 * HOUR_US + _origin_us(origin) <= _newest_us(cur):
            h0 += 1  # the previous stage's last hour is taken: start after it
        h1 = max(h1, h0 + 1)
        counts = plan_hours(origin, h0, h1, target - size)
        hours = _hours(cur, origin, h0, counts, size)
        _setup(cur, dims)
        pg.commit()
        log(f"{db}: {size:,} -> {target:,} records over {h1 - h0:,} hours ({h0}..{h1})")
        done = size
        phases = dict.fromkeys(("values and checksums", "chain", "insert", "day counts"), 0.0)
        for part in _chunks(hours):
            n = sum(h.count for h in part)
            params: dict[str, Any] = {
                "seq0": max_seq + 1 - size,
                "us": us,
                "as": as_,
                "ns": ns,
                "slots": SLOTS,
                "hs": [h.start_us for h in part],
                "hc": [h.count for h in part],
                "hf": [h.first for h in part],
                "hb": [h.day_before for h in part],
                "hd": [f"{from_micros(h.start_us):%Y%m%d}" for h in part],
                "hp": [format_instant(from_micros(h.start_us))[:14] for h in part],
                **{k: list(v) for k, v in RESOURCES.items()},
            }
            cur.execute("SELECT setseed(%s)", (((part[0].first * 7919) % 1000) / 1000.0,))
            steps = (
                ("values and checksums", STAGE_SQL, params),
                (
                    "chain",
                    "CREATE TEMP TABLE gen_chained AS SELECT * FROM pg_temp.gen_chain(%s)",
                    (prev,),
                ),
                ("insert", INSERT_SQL, None),
            )
            for name, stmt, args in steps:
                phase = time.perf_counter()
                cur.execute(stmt, args)
                phases[name] += time.perf_counter() - phase
            cur.execute("SELECT chain FROM gen_chained ORDER BY k DESC LIMIT 1")
            prev = (cur.fetchone() or (prev,))[0]
            phase = time.perf_counter()
            _add_days(cur)
            phases["day counts"] += time.perf_counter() - phase
            cur.execute("DROP TABLE gen_stage, gen_chained")
            pg.commit()
            done += n
            log(
                f"  {done:,} records ({time.perf_counter() - t0:.0f} s: "
                + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
                + ")"
            )
        _counters(cur, hours)
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('audit_records', 'seq'), "
            "(SELECT max(seq) FROM audit_records))"
        )
        cur.execute(
            "UPDATE chain_head SET last_seq = (SELECT max(seq) FROM audit_records), "
            "last_hash = %s, appends = appends + 1 WHERE id = 1",
            (prev,),
        )
        pg.commit()
        t_tree = time.perf_counter()
        build_tree(cur, size, target)
        pg.commit()
        log(f"  tree: {time.perf_counter() - t_tree:.0f} s")
    _sign_head(db, target, signer)
    with psycopg.connect(url_of(db), autocommit=True) as pg:
        pg.execute("VACUUM ANALYZE")  # as autovacuum would, before anything is measured
    return time.perf_counter() - t0


def _origin_us(origin: datetime) -> int:
    return int((origin - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000


def _newest_us(cur: psycopg.Cursor[Any]) -> int:
    cur.execute("SELECT coalesce(max(ts), 0) FROM audit_records")
    return int((cur.fetchone() or (0,))[0])


def _hours(
    cur: psycopg.Cursor[Any], origin: datetime, h0: int, counts: list[int], size: int
) -> list[Hour]:
    """The hours with their first leaf and the records of their day before them."""
    out, first, per_day = [], size, {}
    for i, c in enumerate(counts):
        start = _origin_us(origin) + (h0 + i) * HOUR_US
        day = f"{from_micros(start):%Y%m%d}"
        if day not in per_day:  # an earlier stage may have ended inside this day
            cur.execute("SELECT last FROM id_counters WHERE prefix = %s", (f"audit-{day}",))
            row = cur.fetchone()
            per_day[day] = int(row[0]) if row else 0
        if c:
            out.append(Hour(start, c, first, per_day[day]))
        first += c
        per_day[day] += c
    return out


def _chunks(hours: list[Hour]) -> list[list[Hour]]:
    out: list[list[Hour]] = [[]]
    n = 0
    for h in hours:
        if n >= CHUNK:
            out.append([])
            n = 0
        out[-1].append(h)
        n += h.count
    return [part for part in out if part]


def _add_days(cur: psycopg.Cursor[Any]) -> None:
    """Add the chunk's rows to audit_day_counts (and, from migration 0006 on, to
    audit_totals and audit_user_totals), as store.append does per batch."""
    cur.execute(
        f"INSERT INTO audit_day_counts (day, namespace, action, n) "
        f"SELECT floor(ts::numeric / {store.DAY_US})::bigint, namespace, action, count(*) "
        "FROM gen_stage GROUP BY 1, 2, 3 "
        "ON CONFLICT (day, namespace, action) DO UPDATE SET n = audit_day_counts.n + excluded.n"
    )
    cur.execute("SELECT to_regclass('audit_totals') IS NOT NULL")
    if (cur.fetchone() or (False,))[0]:
        cur.execute(
            "INSERT INTO audit_totals (namespace, action, n) "
            "SELECT namespace, action, count(*) FROM gen_stage GROUP BY 1, 2 "
            "ON CONFLICT (namespace, action) DO UPDATE SET n = audit_totals.n + excluded.n"
        )
        cur.execute(
            "INSERT INTO audit_user_totals (user_lc, n) "
            "SELECT user_lc, count(*) FROM gen_stage GROUP BY 1 "
            "ON CONFLICT (user_lc) DO UPDATE SET n = audit_user_totals.n + excluded.n"
        )


def _counters(cur: psycopg.Cursor[Any], hours: list[Hour]) -> None:
    last: dict[str, int] = {}
    for h in hours:
        last[f"audit-{from_micros(h.start_us):%Y%m%d}"] = h.day_before + h.count
    cur.executemany(
        "INSERT INTO id_counters (prefix, last) VALUES (%s, %s) "
        "ON CONFLICT (prefix) DO UPDATE SET last = greatest(id_counters.last, excluded.last)",
        list(last.items()),
    )


def build_tree(cur: psycopg.Cursor[Any], old: int, new: int) -> None:
    """Store the subtrees (level >= TILE_LEVEL) completed by leaves [old, new), per level.

    Levels below TILE_LEVEL are not stored (tree.py hashes them from the records); they
    are made here in temporary tables only under the tiles the new leaves complete.
    """
    tl = merkle.TILE_LEVEL
    base = (old >> tl) << tl  # first leaf of the first tile that was not complete
    cur.execute(
        "CREATE TEMP TABLE gen_level AS "
        "SELECT leaf / 2 AS idx, sha256('\\x01'::bytea || string_agg("
        "  sha256('\\x00'::bytea || decode(substr(checksum, 8), 'hex')), ''::bytea ORDER BY leaf"
        ")) AS hash "
        "FROM audit_records WHERE leaf >= %s AND leaf < %s GROUP BY leaf / 2 HAVING count(*) = 2",
        (base, new),
    )
    for _level in range(2, tl + 1):
        cur.execute(
            "CREATE TEMP TABLE gen_next AS SELECT idx / 2 AS idx, "
            "sha256('\\x01'::bytea || string_agg(hash, ''::bytea ORDER BY idx)) AS hash "
            "FROM gen_level GROUP BY idx / 2 HAVING count(*) = 2"
        )
        cur.execute("DROP TABLE gen_level")
        cur.execute("ALTER TABLE gen_next RENAME TO gen_level")
    cur.execute(
        "INSERT INTO merkle_nodes (level, idx, hash) SELECT %s, idx, hash FROM gen_level",
        (tl,),
    )
    cur.execute("DROP TABLE gen_level")
    level = tl + 1
    while new >> level:
        cur.execute(
            "INSERT INTO merkle_nodes (level, idx, hash) "
            "SELECT %(lv)s, idx / 2, sha256('\\x01'::bytea || string_agg(hash, ''::bytea "
            "ORDER BY idx)) FROM merkle_nodes WHERE level = %(lv)s - 1 AND idx >= %(lo)s "
            "GROUP BY idx / 2 HAVING count(*) = 2",
            {"lv": level, "lo": 2 * (old >> level)},
        )
        level += 1


def _sign_head(db: str, size: int, signer: evidence.Signer) -> None:
    """Record and sign the new tree head with the product's own code (root from the nodes)."""
    engine = make_engine(url_of(db, "postgresql+psycopg"))
    evidence.attach(engine, signer)
    with engine.begin() as conn:
        evidence.advance_head(conn, size)
    engine.dispose()


def load_signer(work: Path) -> tuple[evidence.Signer, Path]:
    path = work / "signing.key"
    return evidence.Signer(signing.load_or_create_key(path), ORIGIN), path


# ------------------------------------------------------------------ databases


def create_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(url_of(name, "postgresql+psycopg"))
    migrate(engine)
    engine.dispose()


def drop_db(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_exists(name: str) -> bool:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        return (
            admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


def store_size(name: str) -> int:
    with psycopg.connect(url_of(name)) as pg:
        row = pg.execute("SELECT tree_size FROM chain_head WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def db_bytes(name: str) -> dict[str, int]:
    with psycopg.connect(url_of(name)) as pg:
        rows = pg.execute(
            "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
            "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 2 DESC"
        ).fetchall()
    return {str(r): int(b) for r, b in rows}


def index_bytes(name: str) -> dict[str, int]:
    with psycopg.connect(url_of(name)) as pg:
        rows = pg.execute(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
            "WHERE indrelid = 'audit_records'::regclass ORDER BY 2 DESC"
        ).fetchall()
        rows += pg.execute(
            "SELECT 'heap audit_records', pg_relation_size('audit_records') UNION ALL "
            "SELECT 'toast+fsm+vm', pg_total_relation_size('audit_records') "
            "- pg_indexes_size('audit_records') - pg_relation_size('audit_records')"
        ).fetchall()
    return {str(r): int(b) for r, b in rows}


def btree_levels(name: str) -> dict[str, int]:
    """Levels above the leaves of each audit_records index (pageinspect's bt_metap)."""
    with psycopg.connect(url_of(name), autocommit=True) as pg:
        pg.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        rows = pg.execute(
            "SELECT indexrelid::regclass::text, (bt_metap(indexrelid::regclass::text)).level "
            "FROM pg_index WHERE indrelid = 'audit_records'::regclass"
        ).fetchall()
    return {str(r): int(n) for r, n in rows}


def free_bytes() -> int:
    return shutil.disk_usage(
        "/var/lib/postgresql" if Path("/var/lib/postgresql").exists() else "/"
    ).free


# ------------------------------------------------------------------ the validity check


def check_generator(n: int, work: Path) -> None:
    """Generate n records server-side in two extensions; the product must find them valid."""
    signer, key = load_signer(work)
    gen, ref = f"audit_bench_scale_check_{uuid.uuid4().hex[:6]}", ""
    try:
        create_db(gen)
        origin = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
            days=math.ceil(n * HOURS_PER_RECORD / 24) + 2
        )
        extend(gen, n * 3 // 5 + 37, origin, signer)  # unaligned: the second extension
        extend(gen, n, origin, signer)  # starts inside a tile and inside a day
        env = dict(
            os.environ,
            AUDIT_DATABASE_URL=url_of(gen, "postgresql+psycopg"),
            AUDIT_SIGNING_KEY_FILE=str(key),
            AUDIT_EXPORT_DIR=str(work / "exports"),
        )
        out = subprocess.run(
            [sys.executable, "-m", "audit_core", "verify"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        log(
            f"check: `python -m audit_core verify` on {n:,} generated records: {out.stdout.strip()}"
        )
        if out.returncode != 0 or not out.stdout.startswith("ok:"):
            raise SystemExit(f"generated store fails verify:\n{out.stdout}{out.stderr}")
        ref = f"audit_bench_scale_ref_{uuid.uuid4().hex[:6]}"
        create_db(ref)
        same = compare_with_append(gen, ref, signer)
        log(f"check: the same records through store.append: {same}")
    finally:
        drop_db(gen)
        if ref:
            drop_db(ref)


def compare_with_append(gen: str, ref: str, signer: evidence.Signer) -> str:
    """Append gen's records through store.append into ref; compare what both stored."""
    g = make_engine(url_of(gen, "postgresql+psycopg"))
    r = make_engine(url_of(ref, "postgresql+psycopg"))
    evidence.attach(r, signer)
    fields = ", ".join(f'"{f}"' for f in FIELDS)
    with g.connect() as gc:
        rows = gc.exec_driver_sql(f"SELECT {fields} FROM audit_records ORDER BY seq").all()
    keys = (
        "id",
        "timestamp",
        "action",
        "user",
        "role",
        "resource",
        "resourceType",
        "namespace",
        "sourceIP",
        "checksum",
    )
    records = [normalize(dict(zip(keys, row, strict=True)), require_checksum=True) for row in rows]
    with r.begin() as rc:
        store.append(rc, records)
    checks = {
        "chain": "SELECT seq, leaf, chain FROM audit_records ORDER BY seq",
        "head": "SELECT last_seq, last_hash, tree_size, tree_root FROM chain_head",
        "nodes": "SELECT level, idx, hash FROM merkle_nodes ORDER BY level, idx",
        "day counts": "SELECT day, namespace, action, n FROM audit_day_counts ORDER BY 1, 2, 3",
        "totals": "SELECT namespace, action, n FROM audit_totals ORDER BY 1, 2",
        "user totals": "SELECT user_lc, n FROM audit_user_totals ORDER BY 1",
        "id counters": "SELECT prefix, last FROM id_counters ORDER BY prefix",
        "search columns": "SELECT ts, user_lc FROM audit_records ORDER BY seq",
    }
    with g.connect() as gc, r.connect() as rc:
        for what, sql in checks.items():
            a, b = gc.exec_driver_sql(sql).all(), rc.exec_driver_sql(sql).all()
            if a != b:
                raise SystemExit(f"generated store differs from store.append's in {what}")
        root = tree.root(gc, len(records))
        mem = merkle.MemorySource([tree.leaf_of(str(x[-1])) for x in rows])
        if merkle.root(mem, len(records)) != root:
            raise SystemExit("the stored nodes' root differs from an in-memory tree's")
    g.dispose()
    r.dispose()
    return (
        f"identical chain, head, {len(checks) - 2} more tables; root {root.hex()[:16]}... "
        f"equals an in-memory merkle.MemorySource of the {len(records):,} checksums"
    )


# ------------------------------------------------------------------ measurements


def median_ms(fn: Callable[[], object], repeat: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs), runs


def export_filter(last_us: int) -> tuple[str, AuditFilter]:
    """About 100k records at the demo's rate: namespace=production, the last 28 days."""
    last = from_micros(last_us).replace(minute=0, second=0, microsecond=0)
    start, end = last - timedelta(days=28), last + timedelta(hours=1)
    return "ns=production, 28 days", AuditFilter.parse(namespace="production", start=start, end=end)


def measure(db: str, signer: evidence.Signer, repeat: int) -> tuple[dict[str, Any], list[str]]:
    engine = make_engine(url_of(db, "postgresql+psycopg"))
    evidence.attach(engine, signer)
    migrate(engine)
    res: dict[str, Any] = {"previews": []}
    plans: list[str] = []
    with engine.connect() as conn:
        last_us = int(conn.exec_driver_sql("SELECT max(ts) FROM audit_records").scalar() or 0)
        size = evidence.read_head(conn).size
        res["size"] = size
        for label, flt in preview_filters(last_us):
            counted: list[int] = []

            def count(flt: AuditFilter = flt, out: list[int] = counted) -> None:
                query.forget_counts()
                out.append(query.count(conn, flt))

            def newest(flt: AuditFilter = flt) -> None:
                query.preview(conn, flt, limit=500)

            def both(flt: AuditFilter = flt) -> None:
                query.forget_counts()
                query.count(conn, flt)
                query.preview(conn, flt, limit=500)

            before = old_count_stmt(flt)
            b_ms = None
            if before is not None:
                b_ms = median_ms(lambda s=before: conn.execute(s).one(), repeat)[0]
                plans += _block(f"{label} / count before 0006", _explain(conn, before))
            c_ms, _ = median_ms(count, repeat)
            p_ms, _ = median_ms(newest, repeat)
            t_ms, runs = median_ms(both, repeat)
            res["previews"].append(
                {
                    "filter": label,
                    "count": counted[-1],
                    "count_ms": c_ms,
                    "before_ms": b_ms,
                    "newest_ms": p_ms,
                    "total_ms": t_ms,
                    "runs": runs,
                }
            )
            log(
                f"  {label:45s} {counted[-1]:>10,}  count {c_ms:7.1f}  "
                f"newest {p_ms:6.1f}  total {t_ms:7.1f} ms"
            )
            plans += explain_preview(conn, label, flt)
        res.update(measure_facets(conn, repeat))
        plans += [
            *_block("facets, no filter / users before 0006", _explain(conn, old_user_facet()))
        ]
        label, flt = export_filter(last_us)
        rows: list[int] = []

        def run_export() -> None:
            p = export.plan(conn, flt, "csv")
            nbytes = sum(len(c) for c in export.chunks(conn, p))
            rows.append(p.total)
            res["export_bytes"] = nbytes

        e_ms, _ = median_ms(run_export, max(3, repeat // 2))
        res["export"] = {"filter": label, "rows": rows[-1], "ms": e_ms}
        log(
            f"  export {label}: {rows[-1]:,} rows in {e_ms:.0f} ms "
            f"({rows[-1] / e_ms * 1000:,.0f} rows/s)"
        )
        plans += explain_export(conn, label, flt)
        ids = [
            str(r[0])
            for r in conn.exec_driver_sql(
                "SELECT id FROM audit_records WHERE leaf IN (0, %(a)s, %(b)s) ORDER BY leaf",
                {"a": size // 2, "b": size - 1},
            )
        ]
    proofs = measure_proofs(engine, size, ids, repeat * 4)
    res.update(proofs)
    res.update(measure_writes(engine, size, last_us))
    with engine.connect() as conn:
        plans += explain_proofs(conn, size)
    engine.dispose()
    return res, plans


def old_user_facet() -> Any:
    """The user facet of an unfiltered view before migration 0006: every row grouped."""
    from sqlalchemy import func, select

    from audit_core.models import AUDIT

    n = func.count().label("n")
    return select(AUDIT.c.user_lc, n).group_by(AUDIT.c.user_lc).order_by(n.desc()).limit(10)


def measure_facets(conn: Any, repeat: int) -> dict[str, float]:
    """The Explore page's facets (top actions, users, namespaces) with no filter, now and
    as the user facet was before 0006 (the action and namespace ones summed every day)."""
    from sqlalchemy import func, select

    from audit_core.models import DAYS

    facets_ms = median_ms(lambda: query.facets(conn, AuditFilter()), repeat)[0]
    old = [old_user_facet()]
    for key in ("action", "namespace"):
        old.append(select(DAYS.c[key], func.sum(DAYS.c.n)).group_by(DAYS.c[key]))
    before_ms = median_ms(lambda: [conn.execute(s).all() for s in old], max(2, repeat // 2))[0]
    log(f"  facets, no filter: {facets_ms:.1f} ms (before 0006: {before_ms:.0f} ms)")
    return {"facets_ms": facets_ms, "facets_before_ms": before_ms}


def old_count_stmt(flt: AuditFilter) -> Any:
    """The first count as it was before migration 0006 for a filter with no start and no
    end: the day counts summed over every day, or the user index walked, beside the
    highest key, as query.count runs it."""
    from sqlalchemy import func, select

    from audit_core.models import AUDIT, DAYS

    head = select(func.max(AUDIT.c.seq)).scalar_subquery()
    if flt.start is not None or flt.end is not None:
        return None
    if flt.users:  # the user index, walked over every entry the user has
        return select(query._log_count_stmt(flt, None).scalar_subquery(), head)
    days = query._whole_days(flt)
    assert days is not None
    day_sum = select(func.coalesce(func.sum(DAYS.c.n), 0)).where(*query._in_days(flt, *days))
    return select(day_sum.scalar_subquery(), head)


def measure_writes(engine: Any, size: int, last_us: int) -> dict[str, float]:
    """A delivery segment's reads (the newest 100k leaves, as delivery.py reads them) and
    an append of 10k demo records after the newest (store.append, rolled back)."""
    from audit_core import delivery

    first = max(0, size - delivery.MAX_SEGMENT)

    def segment() -> None:
        with engine.connect() as conn:
            for _ in delivery._rows(conn, first, size - 1):
                pass

    end = from_micros(last_us) + timedelta(days=2)
    batch = list(demo.generate(10_000, seed=11, end=end, days=1))

    def append() -> None:
        with engine.connect() as conn, conn.begin() as tx:
            store.append(conn, batch)
            tx.rollback()

    seg_ms = median_ms(segment, 3)[0]
    app_ms = median_ms(append, 3)[0]
    log(f"  delivery segment rows {seg_ms:.0f} ms, append 10k {app_ms:.0f} ms")
    return {"segment_ms": seg_ms, "append_ms": app_ms}


def measure_proofs(engine: Any, size: int, ids: list[str], repeat: int) -> dict[str, float]:
    def checkpoint() -> None:
        # Kept checkpoints would pile up (and verify re-checks each one): roll back.
        with engine.connect() as conn, conn.begin() as tx:
            evidence.checkpoint(conn, "bench")
            tx.rollback()

    def inclusion() -> None:
        with engine.connect() as conn:
            for rid in ids:
                evidence.inclusion(conn, rid, size)

    def consistency() -> None:
        with engine.connect() as conn:
            evidence.consistency(conn, size // 3 + 1, size)

    out = {
        "checkpoint_ms": median_ms(checkpoint, repeat)[0],
        "inclusion_ms": median_ms(inclusion, repeat)[0] / len(ids),
        "consistency_ms": median_ms(consistency, repeat)[0],
    }
    log(
        f"  checkpoint {out['checkpoint_ms']:.1f} ms, inclusion {out['inclusion_ms']:.1f} ms, "
        f"consistency {out['consistency_ms']:.1f} ms"
    )
    return out


def _explain(conn: Any, stmt: Any) -> str:
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    if compiled.positiontup is not None:
        params = tuple(params[k] for k in compiled.positiontup)
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + str(compiled), params)
        return "\n".join(r[0] for r in cur.fetchall())


def _block(title: str, text: str) -> list[str]:
    return [title, *("    " + ln for ln in text.splitlines())]


def explain_preview(conn: Any, label: str, flt: AuditFilter) -> list[str]:
    return [
        *_block(f"{label} / count", _explain(conn, query._count_stmt(flt, None))),
        *_block(f"{label} / newest 500", _explain(conn, query._preview_stmt(conn, flt, 500, None))),
    ]


def explain_export(conn: Any, label: str, flt: AuditFilter) -> list[str]:
    upto = query.max_seq(conn)
    select = (
        query.select(*query.EXPORT_COLUMNS)
        .where(query._where(flt, upto))
        .order_by(query.T.c.ts, query.T.c.seq)
    )
    return [
        *_block(f"export {label} / count", _explain(conn, query._count_stmt(flt, upto))),
        *_block(f"export {label} / rows (the COPY's SELECT)", _explain(conn, select)),
    ]


def explain_proofs(conn: Any, size: int) -> list[str]:
    from sqlalchemy import select, tuple_

    from audit_core.models import AUDIT, NODES

    keys: set[tuple[int, int]] = set()
    spans: list[tuple[int, int]] = []
    for block in merkle._blocks(0, size):
        merkle._collect(block, merkle.TILE_LEVEL, keys, spans)
    nodes = select(NODES.c.level, NODES.c.idx, NODES.c.hash).where(
        tuple_(NODES.c.level, NODES.c.idx).in_(sorted(keys))
    )
    lo, hi = spans[-1] if spans else (size, size)
    leaves = (
        select(AUDIT.c.leaf, AUDIT.c.checksum)
        .where(AUDIT.c.leaf >= lo, AUDIT.c.leaf < hi)
        .order_by(AUDIT.c.leaf)
    )
    return [
        *_block(f"checkpoint / stored nodes ({len(keys)} keys)", _explain(conn, nodes)),
        *_block(f"checkpoint / leaves [{lo}, {hi})", _explain(conn, leaves)),
    ]


# ------------------------------------------------------------------ report


def report(results: list[dict[str, Any]]) -> str:
    sizes = [r["size"] for r in results]
    head = "| measure | " + " | ".join(f"{s / 1e6:g}M" for s in sizes) + " |"
    ratio = len(sizes) >= 2
    if ratio:
        a, b = sizes[-2], sizes[-1]
        head += f" {a / 1e6:g}M→{b / 1e6:g}M | vs log n ({math.log(b) / math.log(a):.2f}) |"
    lines = [head, "|---|" + "---:|" * (len(sizes) + (2 if ratio else 0))]

    def row(name: str, values: list[float], fmt: str = "{:.1f}") -> None:
        cells = [fmt.format(v) for v in values]
        line = f"| {name} | " + " | ".join(cells) + " |"
        if ratio and values[-2] > 0:
            g = values[-1] / values[-2]
            within = g <= math.log(sizes[-1]) / math.log(sizes[-2]) * 1.25
            line += f" {g:.2f}× | {'≤ log n' if within else '**faster**'} |"
        lines.append(line)

    for i, p in enumerate(results[0]["previews"]):
        label = p["filter"]
        row(
            f"preview ms: {label} (count + newest 500)",
            [r["previews"][i]["total_ms"] for r in results],
        )
        row("  … count ms", [r["previews"][i]["count_ms"] for r in results])
        if all(r["previews"][i].get("before_ms") is not None for r in results):
            row("  … count ms before 0006", [r["previews"][i]["before_ms"] for r in results])
        row("  … matching records", [r["previews"][i]["count"] for r in results], "{:,.0f}")
    if all("facets_ms" in r for r in results):
        row("facets, no filter (Explore), ms", [r["facets_ms"] for r in results])
        row("  … before 0006, ms", [r["facets_before_ms"] for r in results], "{:.0f}")
    row(
        f"export ms: {results[0]['export']['filter']}, CSV",
        [r["export"]["ms"] for r in results],
        "{:.0f}",
    )
    row("  … records exported", [r["export"]["rows"] for r in results], "{:,.0f}")
    row("checkpoint ms", [r["checkpoint_ms"] for r in results])
    row("inclusion proof ms", [r["inclusion_ms"] for r in results])
    row("consistency proof ms", [r["consistency_ms"] for r in results])
    if all("segment_ms" in r for r in results):
        row(
            "delivery segment: read newest 100k leaves, ms",
            [r["segment_ms"] for r in results],
            "{:.0f}",
        )
        row(
            "append 10k records (store.append, rolled back), ms",
            [r["append_ms"] for r in results],
            "{:.0f}",
        )
    row("store GB (all tables and indexes)", [r["bytes"] / 1e9 for r in results], "{:.2f}")
    row("generation s (this extension)", [r.get("gen_s", 0.0) for r in results], "{:.0f}")
    return "\n".join(lines)


def write_plans(path: Path, size: int, plans: list[str]) -> None:
    start, end = f"<!-- plans:{size} -->", f"<!-- /plans:{size} -->"
    body = "\n".join(
        [
            start,
            f"## {size:,} records ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
            "",
            "```",
            *plans,
            "```",
            end,
        ]
    )
    text = (
        path.read_text()
        if path.exists()
        else (
            "# Query plans of bench/bench_scale.py\n\nEXPLAIN (ANALYZE, BUFFERS, COSTS OFF) of the "
            'statements the scale benchmark times, per store size (BENCHMARKS.md, "Scale").\n'
        )
    )
    if start in text and end in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def wait_for(flag: Path | None, deadline: str | None) -> None:
    if flag is None:
        return
    until = None
    if deadline:
        hh, mm = map(int, deadline.split(":"))
        until = datetime.now(UTC).replace(hour=hh, minute=mm, second=0, microsecond=0)
    while not flag.exists():
        if until is not None and datetime.now(UTC) >= until:
            log(f"{flag} has not appeared by {deadline} UTC: going ahead")
            return
        time.sleep(30)
    log(f"{flag} is there: going ahead")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000,30000000")
    ap.add_argument(
        "--check", type=int, default=20_000, help="records for the validity check (0: skip)"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/audit_bench_scale"))
    ap.add_argument("--plans-file", type=Path, default=ROOT / "docs" / "scale-plans.md")
    ap.add_argument(
        "--wait-for", type=Path, help="before a size of 10M or more, wait for this file"
    )
    ap.add_argument("--wait-until", help="HH:MM UTC: stop waiting for --wait-for then")
    ap.add_argument("--drop", action="store_true", help="drop the store at the end")
    ap.add_argument("--regenerate", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.check:
        check_generator(args.check, args.work)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if not sizes:
        return 0
    signer, _ = load_signer(args.work)
    if args.regenerate or not db_exists(MAIN_DB):
        create_db(MAIN_DB)
    with psycopg.connect(url_of(MAIN_DB)) as pg, pg.cursor() as cur:
        origin = _read_origin(cur, MAIN_DB)
    if origin is None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        origin = today - timedelta(days=math.ceil(max(sizes) * HOURS_PER_RECORD / 24) + 1)
    results: list[dict[str, Any]] = []
    results_file = args.work / "results.json"
    saved = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.regenerate:
        saved = {}
    try:
        for n in sizes:
            have = store_size(MAIN_DB)
            if have > n:
                raise SystemExit(f"{MAIN_DB} holds {have:,} records, more than {n:,}: --regenerate")
            gen_s = float(saved.get(str(n), {}).get("gen_s", 0.0))
            if have < n:
                if n >= 10_000_000:
                    wait_for(args.wait_for, args.wait_until)
                if have:
                    per = sum(db_bytes(MAIN_DB).values()) / have
                    need = per * (n - have) * 1.2
                    left = free_bytes() - need
                    log(f"{n:,}: ~{need / 1e9:.1f} GB more, {left / 1e9:.1f} GB would stay free")
                    if left < MIN_FREE_GB * 1e9:
                        raise SystemExit(f"stopping: under {MIN_FREE_GB} GB would stay free")
                gen_s += extend(MAIN_DB, n, origin, signer)
            log(f"measuring {n:,} (load {os.getloadavg()[0]:.1f})")
            load0 = os.getloadavg()[0]
            res, plans = measure(MAIN_DB, signer, args.repeat)
            res["gen_s"] = gen_s
            res["bytes"] = sum(db_bytes(MAIN_DB).values())
            res["load"] = (load0, os.getloadavg()[0])
            res["tables"] = db_bytes(MAIN_DB)
            res["indexes"] = index_bytes(MAIN_DB)
            res["levels"] = btree_levels(MAIN_DB)
            res["measured_at"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
            results.append(res)
            saved[str(n)] = res
            results_file.write_text(json.dumps(saved, indent=1))
            write_plans(args.plans_file, n, plans)
            log(
                f"  store {res['bytes'] / 1e9:.2f} GB: "
                + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in list(res["tables"].items())[:6])
            )
            print(report(results), flush=True)
        shown = [saved[k] for k in sorted(saved, key=int)]
        print(f"\nevery size measured so far ({results_file}):\n" + report(shown), flush=True)
    finally:
        if args.drop:
            drop_db(MAIN_DB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
