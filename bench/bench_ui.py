"""Server time of the Explore page: first full render and a filter change, 1M records.

Runs the portal's navigation script under Streamlit's AppTest (the same script a browser
session runs, minus the websocket) against a SQLite file, with every cache cold:

    .venv/bin/python bench/bench_ui.py [--db PATH] [--records 1000000] [--repeat 3]

The database is generated once (demo data, seed 7) if PATH does not exist. Imports are
warmed on a tiny database first, as a running server would have them.
Targets (issue 7): first render < 1 s, filter change < 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit_core import context, store  # noqa: E402
from audit_core.config import Settings  # noqa: E402
from audit_core.db import make_engine, migrate  # noqa: E402
from audit_core.demo import generate  # noqa: E402
from audit_core.query import max_seq  # noqa: E402

NAV = str(ROOT / "navigation.py")


def ensure_db(path: Path, records: int) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    migrate(engine)
    with engine.connect() as conn:
        have = max_seq(conn)
    if have < records:
        print(f"generating {records - have:,} demo records into {path} ...", file=sys.stderr)
        with engine.begin() as conn:
            store.append(conn, generate(records - have, seed=7))
    engine.dispose()
    return url


def point_at(url: str, export_dir: str) -> None:
    import streamlit as st

    settings = Settings(database_url=url, database_configured=True, export_dir=Path(export_dir))
    old = context.install(context.build(settings))  # open + migrate: the server does it at start
    if old is not None:
        old.engine.dispose()
    st.cache_resource.clear()
    st.cache_data.clear()


def timed(fn) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds, CPU seconds of this process across its threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def one_round(url: str, export_dir: str) -> dict[str, tuple[float, float]]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    point_at(url, export_dir)
    st.cache_data.clear()
    at = AppTest.from_file(NAV, default_timeout=120)
    out = {"first render": timed(at.run)}
    assert not at.exception, at.exception
    out["same view again (cached)"] = timed(at.run)

    at.multiselect(key="explore_action").set_value(["runbook.*"])
    button = next(b for b in at.button if b.label == "Apply filters")
    out["filter change: action runbook.*"] = timed(lambda: button.click().run())

    at.multiselect(key="explore_namespace").set_value(["payments"])
    button = next(b for b in at.button if b.label == "Apply filters")
    out["filter change: + namespace payments"] = timed(lambda: button.click().run())

    at.multiselect(key="explore_action").set_value([])
    at.multiselect(key="explore_namespace").set_value([])
    at.text_input(key="explore_from").set_value(week_before_last(at))
    button = next(b for b in at.button if b.label == "Apply filters")
    out["filter change: from = last 7 days"] = timed(lambda: button.click().run())

    at.text_input(key="explore_from").set_value(first_record(at))
    button = next(b for b in at.button if b.label == "Apply filters")
    out["filter change: from = first record (all)"] = timed(lambda: button.click().run())
    assert not at.exception, at.exception
    return out


def _span(at) -> list[str]:  # noqa: ANN001
    line = next(m.value for m in at.markdown if m.value.startswith("First record"))
    return line.split("**")[1::2]


def first_record(at) -> str:  # noqa: ANN001
    return _span(at)[0]


def week_before_last(at) -> str:  # noqa: ANN001
    last = datetime.fromisoformat(_span(at)[1].replace("Z", "+00:00"))
    return (last - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "bench-ui-1m.db")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    url = ensure_db(args.db, args.records)
    with tempfile.TemporaryDirectory() as tmp:
        warm = ensure_db(Path(tmp) / "warm.db", 2_000)
        one_round(warm, tmp)
        rounds = [one_round(url, tmp) for _ in range(args.repeat)]
    print(
        f"Explore page server time, SQLite, {args.records:,} records "
        f"(median of {args.repeat}, cold caches each round; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(f"  {'':42s} {'wall':>7s} {'cpu':>7s}   wall min-max")
    for name in rounds[0]:
        wall = [r[name][0] for r in rounds]
        cpu = [r[name][1] for r in rounds]
        print(
            f"  {name:42s} {statistics.median(wall):6.3f}s {statistics.median(cpu):6.3f}s"
            f"   {min(wall):.3f}-{max(wall):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
