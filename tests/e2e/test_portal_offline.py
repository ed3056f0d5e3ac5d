"""End to end: the portal asks nothing of any host but its own, and its record panel follows
the record, in a real browser against `streamlit run app.py`.

Local mode on a free loopback port over a temporary SQLite database of demo records. Every
request the page makes is watched (`page.on("request")`); one to a host other than
127.0.0.1 / localhost fails the test, even though the harness's browser context aborts it.
Screenshots go to tests/artifacts/offline-*.png.

Run: ``.venv/bin/python -m pytest -m e2e tests/e2e/test_portal_offline.py -q``
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine

from audit_core import query
from audit_core.filters import AuditFilter

from . import harness
from .conftest import DemoPortal, demo_portal
from .test_portal_browser import matching, select_row

RECORDS = 900
pytestmark = pytest.mark.e2e


Portal = DemoPortal


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory, e2e_app_dir: Path) -> Iterator[Portal]:
    """`streamlit run app.py` on a free loopback port over a fresh SQLite database."""
    tmp = tmp_path_factory.mktemp("offline")
    with demo_portal(tmp, e2e_app_dir, "offline", RECORDS, seed=5) as running:
        yield running


def newest(engine: Engine, limit: int, **params: str) -> list[dict[str, str]]:
    """The newest `limit` records matching params, as the preview orders them."""
    with engine.connect() as conn:
        return query.preview(conn, AuditFilter.from_params(params), limit=limit).rows


def shot(page: Any, name: str) -> None:
    harness.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(harness.ARTIFACTS_DIR / f"offline-{name}.png"), full_page=True)


def panel(page: Any) -> Any:
    return page.locator(".st-key-explore_record_panel")


def test_no_page_requests_anything_from_another_host(portal: Portal, page: Any) -> None:
    """Explore (with a record open), Exports, Verify, Admin, Ingest and a record link."""
    from playwright.sync_api import expect

    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not harness.is_loopback_url(r.url) else 0)
    record = newest(portal.engine, 700)[650]["id"]
    visits = [
        ("", "[data-testid=stVegaLiteChart]"),
        ("exports", "[data-testid=stHeading]"),
        ("verify", "[data-testid=stFileUploader]"),
        ("admin", "[data-testid=stHeading]"),
        ("ingest", "[data-testid=stFileUploader]"),
        ("?" + urlencode({"record": record}), ".st-key-explore_record_panel"),
    ]
    for path, ready in visits:
        page.goto(portal.url + path)
        expect(page.locator(ready).first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1_500)  # icons, fonts and the favicon load after the first paint
    expect(panel(page)).to_contain_text(f"Record {record}")
    page.goto(portal.url)
    matching(page)
    select_row(page, 1)
    expect(panel(page)).to_be_visible(timeout=30_000)
    page.wait_for_timeout(1_500)
    shot(page, "01-record-panel")
    assert outside == []


def test_the_panel_follows_the_record_when_the_filter_widens(portal: Portal, page: Any) -> None:
    from playwright.sync_api import expect

    everything = newest(portal.engine, 500)
    to = everything[40]["timestamp"]
    chosen = newest(portal.engine, 3, to=to)[2]["id"]
    assert everything[2]["id"] != chosen  # the row number would name another record
    page.goto(portal.url + "?" + urlencode({"to": to}))
    narrow = matching(page)
    select_row(page, 2)
    expect(panel(page)).to_contain_text(f"Record {chosen}", timeout=30_000)
    page.get_by_role("textbox", name="To (UTC, not included)").fill("")
    page.get_by_role("button", name="Apply filters").click()
    metric = page.locator("[data-testid=stMetric]").filter(has_text="Matching records")
    expect(metric).to_contain_text(f"{RECORDS:,}", timeout=30_000)
    assert narrow < RECORDS
    expect(panel(page)).to_contain_text(f"Record {chosen}", timeout=30_000)
    expect(page).to_have_url(f"{portal.url}?{urlencode({'record': chosen})}")
    shot(page, "02-panel-kept-its-record")


def test_a_record_that_left_the_rows_is_named_and_opens_anyway(portal: Portal, page: Any) -> None:
    from playwright.sync_api import expect

    to = newest(portal.engine, 700)[600]["timestamp"]
    chosen = newest(portal.engine, 1, to=to)[0]["id"]
    page.goto(portal.url + "?" + urlencode({"to": to}))
    matching(page)
    select_row(page, 0)
    expect(panel(page)).to_contain_text(f"Record {chosen}", timeout=30_000)
    page.get_by_role("textbox", name="To (UTC, not included)").fill("")
    page.get_by_role("button", name="Apply filters").click()
    left = page.get_by_text("is not among the records shown now")
    expect(left).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid=stAlert]").filter(has=left)).to_contain_text(chosen)
    expect(panel(page)).to_have_count(0)  # no other record in its place
    shot(page, "03-record-left")
    page.get_by_role("button", name="Open it anyway").click()
    expect(panel(page)).to_contain_text(f"Record {chosen}", timeout=30_000)
    expect(panel(page).get_by_text("Opened by its link")).to_be_visible()
