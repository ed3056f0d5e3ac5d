"""Day counts: kept by every append, exact counts from them, rebuilt, migrated, verified."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select, update

from audit_core import query, store
from audit_core.db import migrate
from audit_core.filters import AuditFilter
from audit_core.integrity import verify
from audit_core.models import AUDIT, DAYS, TOTALS, USER_TOTALS
from audit_core.record import compute_checksum, format_instant, normalize, parse_instant

from .conftest import add_demo

ROOT = Path(__file__).resolve().parent.parent

EDGES = [
    "2026-03-01T00:00:00Z",  # exactly midnight: the first instant of its day
    "2026-02-28T23:59:59.999999Z",  # the last instant of the day before
    "2026-03-01T00:00:00.000001Z",
    "2026-03-02T12:00:00Z",
    "1969-12-31T23:59:59.5Z",  # before the epoch: days are floored, not truncated
    "1970-01-01T00:00:00Z",
]


def edge_records(start: int = 1, stamps: list[str] = EDGES) -> list:
    out = []
    for i, ts in enumerate(stamps):
        fields = {
            "id": f"audit-20260301-{start + i:03d}",
            "timestamp": format_instant(parse_instant(ts)),
            "action": ("runbook.run", "secret.read")[i % 2],
            "user": f"u{i}@x.com",
            "role": "sre",
            "resource": f"r{i}",
            "resourceType": "Thing",
            "namespace": ("production", "payments")[i % 3 == 0],
            "sourceIP": "10.0.0.1",
        }
        fields["checksum"] = compute_checksum(fields)
        out.append(normalize(fields))
    return out


def from_rows(conn) -> dict:  # noqa: ANN001
    """What the day counts should hold, counted in Python from the records."""
    rows = conn.execute(select(AUDIT.c.ts, AUDIT.c.namespace, AUDIT.c.action)).all()
    return dict(Counter((ts // 86_400_000_000, ns, a) for ts, ns, a in rows))


def stored(conn) -> dict:  # noqa: ANN001
    return {(d, ns, a): n for d, ns, a, n in conn.execute(select(DAYS)).all()}


def brute_count(conn, flt: AuditFilter, upto: int | None) -> int:  # noqa: ANN001
    """The log's own count, without the day counts."""
    return int(conn.execute(query._log_count_stmt(flt, upto)).scalar() or 0)


def test_appends_keep_the_day_counts(engine: Engine) -> None:
    add_demo(engine, 400, seed=21)
    with engine.begin() as conn:
        store.append(conn, edge_records())
    with engine.begin() as conn:
        store.append(conn, edge_records())  # the same records again add nothing
    with engine.connect() as conn:
        days = stored(conn)
        assert days == from_rows(conn)
        assert sum(days.values()) == query.max_seq(conn) == 400 + len(EDGES)
        assert (-1, "production", "runbook.run") in days  # 1969-12-31 is day -1
        assert (0, "production", "secret.read") in days
        assert verify(conn).ok


def random_filter(rng: random.Random, base: datetime) -> AuditFilter:
    def instant() -> datetime:
        return base + timedelta(microseconds=rng.randrange(0, 40 * 86_400_000_000))

    start = instant() if rng.random() < 0.7 else None
    end = instant() if rng.random() < 0.7 else None
    if start and end and start >= end:
        start, end = end, start + timedelta(microseconds=1)
    if rng.random() < 0.3:  # day boundaries exactly
        start = start and start.replace(hour=0, minute=0, second=0, microsecond=0)
    return AuditFilter(
        start=start,
        end=end,
        actions=tuple(rng.sample(["runbook.run", "secret.read", "user.login"], rng.randint(0, 2))),
        action_prefixes=tuple(rng.sample(["runbook.", "deploy.", ""], rng.randint(0, 1))),
        namespaces=tuple(rng.sample(["production", "payments", "staging"], rng.randint(0, 2))),
    )


def test_counts_from_day_counts_are_exact(engine: Engine) -> None:
    """Random ranges (partial days at both ends), families, lists and snapshot bounds."""
    add_demo(engine, 1500, seed=22)
    with engine.begin() as conn:
        store.append(conn, edge_records())
    with engine.connect() as conn:
        head = query.max_seq(conn)
        first = conn.execute(select(AUDIT.c.timestamp).order_by(AUDIT.c.ts).limit(1)).scalar()
    base = parse_instant(first) - timedelta(days=2)
    rng = random.Random(5)
    later = [base + timedelta(microseconds=rng.randrange(40 * 86_400_000_000)) for _ in range(300)]
    with engine.begin() as conn:  # rows after the snapshot bound `head`
        store.append(conn, edge_records(100, [f"{t:%Y-%m-%dT%H:%M:%S.%f}Z" for t in later]))
    with engine.connect() as conn:
        now = query.max_seq(conn)
        assert now > head
        filters = [AuditFilter(), AuditFilter.parse(start="1969-12-31T12:00:00Z")]
        filters += [random_filter(rng, base) for _ in range(60)]
        for flt in filters:
            for upto in (None, head, now, 3):
                query.forget_counts()
                got = query.count(conn, flt, upto)
                assert got == brute_count(conn, flt, upto), (flt, upto)


def test_a_user_filter_and_a_range_inside_one_day_read_the_log() -> None:
    one_day = AuditFilter.parse(start="2026-03-01T01:00:00Z", end="2026-03-01T23:00:00Z")
    assert query._whole_days(one_day) is None
    assert query._whole_days(AuditFilter.parse(user="a@b.c")) is None
    assert query._whole_days(AuditFilter()) == (None, None)
    assert query._whole_days(
        AuditFilter.parse(start="2026-03-01T00:00:00Z", end="2026-03-03T00:00:00.5Z")
    ) == (20513, 20515)


def test_rebuild_and_verify_notice_wrong_day_counts(engine: Engine) -> None:
    add_demo(engine, 200, seed=24)
    with engine.begin() as conn:
        conn.execute(update(DAYS).values(n=DAYS.c.n + 1))
    with engine.connect() as conn:
        result = verify(conn)
    assert not result.ok and result.place == "day counts" and result.checked == 200
    with engine.begin() as conn:
        store.rebuild_day_counts(conn)
    with engine.connect() as conn:
        assert verify(conn).ok
        assert query.count(conn, AuditFilter()) == 200


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to an older revision, as a store made before it would be."""
    from alembic import command
    from alembic.config import Config

    from audit_core.db import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_the_migration_counts_rows_already_stored(engine: Engine) -> None:
    """A database from before revision 0003 gets its day counts filled on upgrade."""
    add_demo(engine, 300, seed=25)
    with engine.begin() as conn:
        store.append(conn, edge_records())
        want = from_rows(conn)
    downgrade(engine, "0002")
    migrate(engine)
    with engine.connect() as conn:
        assert stored(conn) == want
        assert query.count(conn, AuditFilter.parse(namespace="payments")) == sum(
            n for (_, ns, _), n in want.items() if ns == "payments"
        )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_verify_recount(engine: Engine, env: dict[str, str]) -> None:
    add_demo(engine, 50, seed=26)
    with engine.begin() as conn:
        conn.execute(delete(DAYS))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "audit_core", "verify", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)

    bad = run()
    assert bad.returncode == 1 and "FAILED at day counts" in bad.stdout, bad.stdout
    good = run("--recount")
    assert good.returncode == 0 and "day counts rebuilt" in good.stdout, good.stdout + good.stderr
    assert run().returncode == 0


def test_daily_histograms_from_day_counts_are_exact(engine: Engine) -> None:
    add_demo(engine, 800, seed=27)
    with engine.begin() as conn:
        store.append(conn, edge_records())
    rng = random.Random(8)
    with engine.connect() as conn:
        rows = conn.execute(select(AUDIT.c.ts, AUDIT.c.action, AUDIT.c.namespace)).all()
        first = min(r.ts for r in rows)
        base = parse_instant(format_instant(datetime.fromtimestamp(first / 1e6, UTC)))
        for flt in [AuditFilter(), *(random_filter(rng, base) for _ in range(25))]:
            for by in ("family", "namespace"):
                want: dict[tuple[int, str], int] = {}
                for ts, action, ns in rows:
                    if not matches(flt, ts, action, ns):
                        continue
                    key = (
                        ts // 86_400_000_000 * 86_400_000_000,
                        ns if by == "namespace" else action.split(".")[0],
                    )
                    want[key] = want.get(key, 0) + 1
                got = query.histogram(conn, flt, bucket="day", by=by)
                assert got == sorted((b, k, n) for (b, k), n in want.items()), flt


def matches(flt: AuditFilter, ts: int, action: str, ns: str) -> bool:
    from audit_core.record import to_micros

    if flt.start and ts < to_micros(flt.start):
        return False
    if flt.end and ts >= to_micros(flt.end):
        return False
    prefixed = any(map(action.startswith, flt.action_prefixes))
    if (flt.actions or flt.action_prefixes) and action not in flt.actions and not prefixed:
        return False
    return not flt.namespaces or ns in flt.namespaces


def test_facets_from_day_counts_are_exact(engine: Engine) -> None:
    add_demo(engine, 800, seed=28)
    rng = random.Random(9)
    with engine.connect() as conn:
        rows = conn.execute(select(AUDIT.c.ts, AUDIT.c.action, AUDIT.c.namespace)).all()
        base = datetime.fromtimestamp(min(r.ts for r in rows) / 1e6, UTC)
        for flt in [AuditFilter(), *(random_filter(rng, base) for _ in range(25))]:
            got = query.facets(conn, flt, limit=5)
            for name, col in (("action", 1), ("namespace", 2)):
                want: dict[str, int] = {}
                for r in rows:
                    if matches(flt, r.ts, r.action, r.namespace):
                        want[r[col]] = want.get(r[col], 0) + 1
                top = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
                assert got[name] == top, (flt, name)


def test_totals_answer_unbounded_filters_exactly(engine: Engine) -> None:
    """audit_totals and audit_user_totals (migration 0006) hold every row; counts with no
    start made from them equal a count of the rows, with and without a snapshot bound."""
    add_demo(engine, 400, seed=28)
    with engine.begin() as conn:
        store.append(conn, edge_records(500))
        upto = query.max_seq(conn)
        store.append(conn, edge_records(600, EDGES[:3]))
        cols = (AUDIT.c.seq, AUDIT.c.ts, AUDIT.c.namespace, AUDIT.c.action, AUDIT.c.user_lc)
        rows = conn.execute(select(*cols)).all()
        totals = dict(Counter((r[2], r[3]) for r in rows))
        assert {(ns, a): n for ns, a, n in conn.execute(select(TOTALS)).all()} == totals
        users = dict(Counter(r[4] for r in rows))
        assert dict(conn.execute(select(USER_TOTALS)).all()) == users
    someone, other = sorted(users, key=users.__getitem__)[-2:]
    end = datetime(2026, 3, 1, 12, tzinfo=UTC)
    cases = [
        (AuditFilter(), lambda r: True),
        (AuditFilter.parse(namespace="payments"), lambda r: r[2] == "payments"),
        (AuditFilter.parse(action="runbook.*"), lambda r: r[3].startswith("runbook.")),
        (AuditFilter.parse(end=end), lambda r: r[1] < int(end.timestamp()) * 1_000_000),
        (AuditFilter.parse(user=someone.upper()), lambda r: r[4] == someone),
        (AuditFilter.parse(user=f"{someone},{other}"), lambda r: r[4] in (someone, other)),
        (
            AuditFilter.parse(user="u1@x.com", end=end),
            lambda r: r[4] == "u1@x.com" and r[1] < int(end.timestamp()) * 1_000_000,
        ),
        (AuditFilter.parse(user="nobody@x.com"), lambda r: False),
    ]
    query.forget_counts()
    with engine.connect() as conn:
        for flt, match in cases:
            assert query.count(conn, flt) == sum(map(match, rows)), flt
            want = sum(match(r) for r in rows if r[0] <= upto)
            assert query.count(conn, flt, upto) == want, flt


def test_verify_notices_wrong_totals_and_recount_mends_them(engine: Engine) -> None:
    add_demo(engine, 100, seed=29)
    for table in (TOTALS, USER_TOTALS):
        with engine.begin() as conn:
            conn.execute(update(table).values(n=table.c.n + 1))
        with engine.connect() as conn:
            result = verify(conn)
        assert not result.ok and result.place == "day counts", table
        with engine.begin() as conn:
            store.rebuild_day_counts(conn)
        with engine.connect() as conn:
            assert verify(conn).ok


def test_the_totals_migration_fills_from_the_day_counts(engine: Engine) -> None:
    """A database from before revision 0006 gets both totals filled on upgrade."""
    add_demo(engine, 300, seed=30)

    def both(conn) -> tuple:  # noqa: ANN001
        totals = select(TOTALS).order_by(TOTALS.c.namespace, TOTALS.c.action)
        users = select(USER_TOTALS).order_by(USER_TOTALS.c.user_lc)
        return conn.execute(totals).all(), conn.execute(users).all()

    with engine.connect() as conn:
        want = both(conn)
    downgrade(engine, "0005")
    migrate(engine)
    with engine.connect() as conn:
        assert both(conn) == want and verify(conn).ok
