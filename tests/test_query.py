"""Queries against a Python reference, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from audit_core import query, store
from audit_core.filters import AuditFilter
from audit_core.record import FIELDS, compute_checksum, format_instant, from_micros, normalize
from tests.conftest import add_demo

N = 1500
COLS = (
    'seq, ts, id, timestamp, action, "user", user_lc, role, resource, "resourceType", '
    'namespace, "sourceIP", checksum'
)


def all_rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {COLS} FROM audit_records")).mappings().all()
    return [dict(r) for r in rows]


def matches(flt: AuditFilter, r: dict) -> bool:
    from audit_core.record import to_micros

    if flt.start is not None and r["ts"] < to_micros(flt.start):
        return False
    if flt.end is not None and r["ts"] >= to_micros(flt.end):
        return False
    in_family = any(r["action"].startswith(p) for p in flt.action_prefixes)
    if (flt.actions or flt.action_prefixes) and r["action"] not in flt.actions and not in_family:
        return False
    if flt.users and r["user_lc"] not in flt.users:
        return False
    return not (flt.namespaces and r["namespace"] not in flt.namespaces)


def export_tuple(r: dict) -> tuple[str, ...]:
    return tuple(r[f] for f in FIELDS)


@pytest.fixture
def demo(engine: Engine) -> Engine:
    query.forget_counts()
    add_demo(engine, N, seed=4)
    return engine


def filters(rows: list[dict]) -> list[tuple[str, AuditFilter]]:
    ts = sorted(r["ts"] for r in rows)
    mid, late = from_micros(ts[len(ts) // 3]), from_micros(ts[2 * len(ts) // 3])
    return [
        ("all", AuditFilter()),
        ("namespace", AuditFilter.parse(namespace="production")),
        ("two namespaces", AuditFilter.parse(namespace="payments,staging")),
        ("family", AuditFilter.parse(action="runbook.*")),
        ("family and exact", AuditFilter.parse(action="secret.*,user.login")),
        ("user any case", AuditFilter.parse(user="CARLOS.Silva@empresa.com")),
        ("range", AuditFilter.parse(start=mid, end=late)),
        ("from only", AuditFilter.parse(start=late)),
        ("combined", AuditFilter.parse(namespace="production", action="runbook.*", start=mid)),
        (
            "user family range",
            AuditFilter.parse(user="admin@empresa.com", action="user.*", start=mid, end=late),
        ),
        ("nothing", AuditFilter.parse(namespace="no-such-namespace")),
        ("empty range", AuditFilter.parse(start="2001-01-01", end="2001-01-02")),
    ]


def test_count_matches_reference(demo: Engine) -> None:
    rows = all_rows(demo)
    assert len(rows) == N
    with demo.connect() as conn:
        for name, flt in filters(rows):
            want = sum(matches(flt, r) for r in rows)
            assert query.count(conn, flt) == want, name
            assert query.count(conn, flt) == want, name + " (remembered)"
            upto = sorted(r["seq"] for r in rows)[N // 2]
            want_upto = sum(matches(flt, r) and r["seq"] <= upto for r in rows)
            assert query.count(conn, flt, upto) == want_upto, name + " (upto)"


def more_records(n: int, day: str = "20260401", ns: str = "production") -> list:
    out = []
    for i in range(n):
        fields = {
            "id": f"audit-{day}-{i + 1:03d}",
            "timestamp": f"{day[:4]}-{day[4:6]}-{day[6:]}T00:{i % 60:02d}:00Z",
            "action": "runbook.execute" if i % 2 else "user.login",
            "user": "Late@Example.com",
            "role": "sre",
            "resource": f"r{i}",
            "resourceType": "Runbook",
            "namespace": ns,
            "sourceIP": "10.0.0.1",
        }
        fields["checksum"] = compute_checksum(fields)
        out.append(normalize(fields))
    return out


def test_remembered_counts_follow_appends(demo: Engine) -> None:
    """A remembered count adds the rows appended since, and stays exact."""
    flts = [
        AuditFilter(),
        AuditFilter.parse(action="runbook.*", namespace="production"),
        AuditFilter.parse(user="late@example.com"),
    ]
    with demo.connect() as conn:
        before = [query.count(conn, f) for f in flts]
    with demo.begin() as conn:
        store.append(conn, more_records(40))
    rows = all_rows(demo)
    with demo.connect() as conn:
        after = [query.count(conn, f) for f in flts]
        query.forget_counts()
        fresh = [query.count(conn, f) for f in flts]
    assert after == fresh == [sum(matches(f, r) for r in rows) for f in flts]
    assert after[0] == before[0] + 40 and after[2] == before[2] + 40


def test_remembered_counts_notice_a_different_history(demo: Engine) -> None:
    """Emptied and refilled (same keys, other rows): the chain differs, so it recounts."""
    flt = AuditFilter.parse(namespace="production")
    with demo.connect() as conn:
        n1 = query.count(conn, flt)
    with demo.begin() as conn:
        conn.execute(text("DELETE FROM audit_records"))
        conn.execute(text("DELETE FROM audit_day_counts"))
        conn.execute(text("DELETE FROM audit_totals"))
        conn.execute(text("DELETE FROM audit_user_totals"))
        conn.execute(text("DELETE FROM id_counters"))
        conn.execute(text("DELETE FROM merkle_nodes"))  # a store made anew: its tree too
        conn.execute(text("DELETE FROM checkpoints"))
        conn.execute(
            text(
                "UPDATE chain_head SET last_seq = 0, last_hash = :h, tree_size = 0,"
                " tree_root = NULL, signed_head = NULL"
            ),
            {"h": "0" * 64},
        )
        if demo.dialect.name == "postgresql":
            conn.execute(text("ALTER SEQUENCE audit_records_seq_seq RESTART WITH 1"))
    with demo.begin() as conn:
        store.append(conn, more_records(N, ns="staging"))
    with demo.connect() as conn:
        assert query.max_seq(conn) == N
        assert query.count(conn, flt) == 0 != n1
        assert query.count(conn, AuditFilter.parse(namespace="staging")) == N


@pytest.mark.parametrize("limit", [1, 97, 500])
def test_preview_pages_walk_everything_newest_first(demo: Engine, limit: int) -> None:
    rows = all_rows(demo)
    with demo.connect() as conn:
        for name, flt in filters(rows)[:6] + filters(rows)[-2:]:
            if limit == 1 and name != "user family range":
                continue
            want = sorted(
                (r for r in rows if matches(flt, r)),
                key=lambda r: (r["ts"], r["seq"]),
                reverse=True,
            )
            got: list[dict] = []
            token = None
            while True:
                page = query.preview(conn, flt, limit=limit, after=token)
                assert len(page.rows) <= limit
                got.extend(page.rows)
                token = page.next_token
                if token is None:
                    break
            assert [tuple(p.values()) for p in got] == [export_tuple(r) for r in want], name
            assert all(list(p) == list(FIELDS) for p in got[:1])


def test_preview_refuses_a_forged_token(demo: Engine) -> None:
    with demo.connect() as conn, pytest.raises(query.PageTokenError):
        query.preview(conn, AuditFilter(), after="not-a-token!")


@pytest.mark.parametrize("batch", [7, 5000])
def test_stream_is_in_timestamp_then_key_order(demo: Engine, batch: int) -> None:
    rows = all_rows(demo)
    with demo.connect() as conn:
        upto = query.max_seq(conn)
        for name, flt in filters(rows):
            want = [
                export_tuple(r)
                for r in sorted(rows, key=lambda r: (r["ts"], r["seq"]))
                if matches(flt, r)
            ]
            batches = list(query.stream(conn, flt, upto, batch=batch))
            assert all(0 < len(b) <= batch for b in batches)
            assert [t for b in batches for t in b] == want, name


def test_facets_summary_histogram_distinct(demo: Engine) -> None:
    rows = all_rows(demo)
    with demo.connect() as conn:
        for name, flt in filters(rows):
            sel = [r for r in rows if matches(flt, r)]
            f = query.facets(conn, flt, limit=5)
            for col in ("action", "user", "namespace"):
                counts = Counter(r[col] for r in sel)
                want = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
                assert f[col] == want, (name, col)
            s = query.summary(conn, flt)
            assert s.total == len(sel), name
            assert s.users == len({r["user_lc"] for r in sel})
            assert s.actions == len({r["action"] for r in sel})
            if sel:
                assert s.first == min(sel, key=lambda r: r["ts"])["timestamp"]
                assert s.last == max(sel, key=lambda r: r["ts"])["timestamp"]
            else:
                assert s.first is None and s.last is None
            for bucket, width in (("day", 86_400_000_000), ("hour", 3_600_000_000)):
                h = query.histogram(conn, flt, bucket=bucket, by="family")
                want_h = Counter((r["ts"] // width * width, r["action"].split(".")[0]) for r in sel)
                assert h == sorted((b, k, n) for (b, k), n in want_h.items()), (name, bucket)
            hn = query.histogram(conn, flt, bucket="day", by="namespace")
            assert sum(n for _, _, n in hn) == len(sel)
            assert query.distinct_values(conn, "namespace", flt) == sorted(
                {r["namespace"] for r in sel}
            )
            first = min(sel, key=lambda r: (r["ts"], r["seq"]))["timestamp"] if sel else None
            assert query.first_timestamp(conn, flt) == first
        assert query.max_seq(conn) == max(r["seq"] for r in rows)
        assert query.distinct_values(conn, "action") == sorted({r["action"] for r in rows})


def test_empty_log(engine: Engine) -> None:
    query.forget_counts()
    with engine.connect() as conn:
        assert query.max_seq(conn) == 0
        assert query.count(conn, AuditFilter()) == 0
        page = query.preview(conn, AuditFilter())
        assert page.rows == [] and page.next_token is None
        assert list(query.stream(conn, AuditFilter(), 0)) == []
        assert query.summary(conn, AuditFilter()).total == 0
        assert query.first_timestamp(conn, AuditFilter()) is None


def test_explain_names_an_index(demo: Engine) -> None:
    """The plans bench/ prints: counts unbounded in time read the totals (per user, or per
    namespace and action); bounded ones the day counts or the user index."""
    with demo.connect() as conn:
        for flt in (AuditFilter.parse(action="runbook.*"), AuditFilter.parse(user="x@y")):
            plans = dict(query.explain(conn, flt))
            assert set(plans) == {"count", "newest 500"}
            newest = plans["newest 500"]
            assert "ix_audit" in newest or "Index" in newest or "INDEX" in newest, newest
            count = plans["count"]
            assert ("audit_user_totals" if flt.users else "audit_totals") in count, count
        week = {"start": "2026-03-01T00:00:00Z", "end": "2026-03-08T00:00:00Z"}
        for flt in (
            AuditFilter.parse(action="runbook.*", **week),
            AuditFilter.parse(user="x@y", **week),
        ):
            count = dict(query.explain(conn, flt))["count"]
            assert ("ix_audit_user_ts" if flt.users else "audit_day_counts") in count, count


def test_timestamps_format_round_trip(demo: Engine) -> None:
    rows = all_rows(demo)
    for r in rows[:50]:
        assert format_instant(from_micros(r["ts"])) == r["timestamp"]
    assert timedelta(0) <= from_micros(max(r["ts"] for r in rows)) - from_micros(
        min(r["ts"] for r in rows)
    )
