"""bench/bench_scale.py's server-side generator writes stores the product finds valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_generated_records_verify_and_equal_what_append_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 records made in SQL (two extensions, the second starting inside a tile and a
    day): `audit_core verify` passes, and store.append of the same records stores the same
    chain, tree, day counts, totals and id counters (check_generator exits otherwise)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_scale

    monkeypatch.setattr(bench_scale, "PG_ADMIN", PG_ADMIN_URL.replace("+psycopg", ""))
    bench_scale.check_generator(5_000, tmp_path)
