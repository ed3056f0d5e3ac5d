"""End to end: time presets, saved views and the 1024 px layout, in a real browser against
`streamlit run app.py`.

Local mode on a free loopback port over a temporary SQLite database of demo records (90
days up to now). A preset lands in the URL as absolute instants; a view is saved, reopened
from the sidebar, opened by its shared link in another browser, and deleted; at 1024x768
no filter chip, button label or sidebar link is cut and the preview's key columns come
first; every control is reached with the Tab key. Screenshots of every page at 1440 and
1024 px wide go to tests/artifacts/views-*.png.

Run: ``.venv/bin/python -m pytest -m e2e tests/e2e/test_portal_views.py -q``
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import Engine, select

from audit_core import query, saved_views
from audit_core.access import LOCAL_ADMIN
from audit_core.config import Settings
from audit_core.filters import AuditFilter
from audit_core.models import AUDIT, SAVED_VIEWS
from audit_core.record import parse_instant

from . import harness
from .conftest import DemoPortal, demo_portal
from .test_portal_browser import matching

RECORDS = 1_500
pytestmark = pytest.mark.e2e
INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
KEY_COLUMNS = ["timestamp", "action", "user", "namespace"]
# Every filter chip, button label and link whose text does not fit its box (an ellipsis).
CUT_TEXT = """() => {
  const boxes = [
    ...document.querySelectorAll('[data-tag] span[title]'),
    ...document.querySelectorAll('button p'),
    ...document.querySelectorAll('[data-testid=stPageLink-NavLink] > span'),
  ];
  return boxes.filter(e => e.checkVisibility() && e.textContent.trim())
    .filter(e => e.scrollWidth > e.clientWidth + 1 || e.textContent.includes('\\u2026'))
    .map(e => ({text: e.textContent, scroll: e.scrollWidth, client: e.clientWidth}));
}"""
# The preview grid's columns the browser has drawn (its accessible table holds only those).
DRAWN_COLUMNS = """() => [...document.querySelectorAll(
  '[data-testid=stDataFrame] [role=columnheader]')].map(h => h.textContent.trim())"""
HEADINGS = """() => [...document.querySelectorAll(
  ['h1', 'h2', 'h3', 'h4'].map(h => '[data-testid=stMain] ' + h).join(', '))
].map(h => Number(h.tagName[1]))"""
FOCUSED = """() => { const e = document.activeElement; if (!e) return '';
  return (e.getAttribute('aria-label') || e.innerText || e.tagName).trim().slice(0, 60); }"""
PAGES = [
    ("explore", "", "[data-testid=stVegaLiteChart]"),
    ("exports", "exports", "[data-testid=stHeading]"),
    ("verify", "verify", "[data-testid=stFileUploader]"),
    ("admin", "admin", "[data-testid=stHeading]"),
    ("ingest", "ingest", "[data-testid=stFileUploader]"),
]


Portal = DemoPortal


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory, e2e_app_dir: Path) -> Iterator[Portal]:
    """`streamlit run app.py` on a free loopback port over a fresh SQLite database."""
    tmp = tmp_path_factory.mktemp("views")
    with demo_portal(tmp, e2e_app_dir, "views", RECORDS, seed=7) as running:
        yield running


def library_count(engine: Engine, params: dict[str, str]) -> int:
    with engine.connect() as conn:
        return query.count(conn, AuditFilter.from_params(params))


def url_params(page: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def metric(page: Any) -> Any:
    return page.locator("[data-testid=stMetric]").filter(has_text="Matching records")


def shot(page: Any, name: str) -> None:
    """The whole page at the window's width (Streamlit scrolls inside: grow the window)."""
    harness.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": 2600})
    page.wait_for_timeout(800)  # let charts redraw at the new size
    page.screenshot(path=str(harness.ARTIFACTS_DIR / f"views-{name}.png"), full_page=True)
    page.set_viewport_size(size)


def pick_preset(page: Any, label: str) -> None:
    page.get_by_role("combobox", name="Time range").click()
    page.get_by_role("option", name=label, exact=True).click()
    page.get_by_role("button", name="Apply filters").click()


def test_a_preset_lands_in_the_url_as_instants(portal: Portal, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(portal.url)
    assert matching(page) == RECORDS
    before = datetime.now(UTC)
    pick_preset(page, "Last 7 days")
    page.wait_for_url(re.compile(r"[?&]to="), timeout=30_000)
    params = url_params(page)
    assert set(params) == {"from", "to"}
    assert INSTANT.fullmatch(params["from"]) and INSTANT.fullmatch(params["to"]), params
    start, end = parse_instant(params["from"]), parse_instant(params["to"])
    assert end - start == timedelta(days=7)
    assert before - timedelta(seconds=5) < end <= datetime.now(UTC) + timedelta(seconds=1)
    expected = library_count(portal.engine, params)
    assert 0 < expected < RECORDS
    expect(metric(page)).to_contain_text(f"{expected:,}", timeout=30_000)
    expect(page.get_by_role("textbox", name="From (UTC, included)")).to_have_value(params["from"])
    expect(page.get_by_text("Last 7 days, fixed when applied")).to_be_visible()
    expect(page.get_by_text("[From, To)").first).to_be_visible()
    shot(page, "preset-applied")
    # The link, opened again later, means the same range.
    page.goto(page.url)
    assert matching(page) == expected
    assert url_params(page) == params


def test_save_reopen_share_and_delete_a_view(portal: Portal, page: Any, browser: Any) -> None:
    from playwright.sync_api import expect

    wanted = {"action": "user.*"}
    page.goto(portal.url + "?" + urlencode(wanted))
    narrow = matching(page)
    page.get_by_text("Saved views: save, share, delete").click()
    page.get_by_role("textbox", name="Name this filter").fill("User changes")
    page.get_by_role("button", name="Save view").click()
    sidebar = page.locator("[data-testid=stSidebar]")
    link = sidebar.get_by_role("link", name="User changes")
    expect(link).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Saved view User changes: it is in the sidebar")).to_be_visible()
    shot(page, "view-saved")

    # Another filter, then the view again from the sidebar.
    page.get_by_role("button", name="Remove user.* (every user action)").click()
    page.get_by_role("button", name="Apply filters").click()
    # Every record now, the portal's own among them (saving the view wrote one).
    expect(metric(page)).not_to_contain_text(f"records{narrow:,}", timeout=30_000)
    assert matching(page) >= RECORDS
    link.click()
    expect(metric(page)).to_contain_text(f"{narrow:,}", timeout=30_000)
    expect(page).to_have_url(f"{portal.url}?{urlencode(wanted)}", timeout=30_000)
    expect(page.get_by_text(f"Saved view User changes by {LOCAL_ADMIN.email}")).to_be_visible()

    # Its link, shown to share, opens it in another browser.
    with portal.engine.connect() as conn:
        (view,) = saved_views.list_for(conn, LOCAL_ADMIN)
    page.get_by_text("Saved views: save, share, delete").click()
    shared = page.locator("[data-testid=stCode]").filter(has_text="?view=")
    expect(shared).to_be_visible()
    share_url = shared.inner_text().strip()
    assert share_url == f"{portal.url.rstrip('/')}?view={view.view_id}"  # the browser's address
    other = harness.new_context(browser)
    try:
        visitor = other.new_page()
        visitor.set_default_timeout(15_000)
        visitor.goto(share_url)
        assert matching(visitor) == narrow
        expect(visitor).to_have_url(f"{portal.url}?{urlencode(wanted)}", timeout=30_000)
    finally:
        other.close()

    page.get_by_role("button", name="Delete view").click()
    expect(page.get_by_text("Deleted view User changes.")).to_be_visible(timeout=30_000)
    expect(sidebar.get_by_role("link", name="User changes")).to_have_count(0)
    with portal.engine.connect() as conn:
        assert saved_views.list_for(conn, LOCAL_ADMIN) == []
        logged = conn.execute(
            select(AUDIT.c.action, AUDIT.c.resourceType).where(
                AUDIT.c.action.in_(["portal.view.save", "portal.view.delete"])
            )
        ).all()
    assert sorted(map(tuple, logged)) == [
        ("portal.view.delete", "SavedView"),
        ("portal.view.save", "SavedView"),
    ]


def test_at_1024_nothing_is_cut_and_every_control_takes_the_keyboard(
    portal: Portal, browser: Any
) -> None:
    from playwright.sync_api import expect

    with portal.engine.connect() as conn:
        user = query.distinct_values(conn, "user")[0]
        own = Settings().self_namespace  # the portal's own records, newer than the pickers
        namespace = next(n for n in query.distinct_values(conn, "namespace") if n != own)
    saved_views.create(portal.engine, LOCAL_ADMIN, "Runbooks, every namespace", AuditFilter())
    params = {"action": "runbook.*,user.login", "user": user, "namespace": namespace}
    context = harness.new_context(browser, viewport={"width": 1024, "height": 768})
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(portal.url + "?" + urlencode(params))
        matching(page)
        page.wait_for_timeout(1_000)
        chips = page.locator("[data-tag] span[title]")
        expect(chips.first).to_be_visible()
        texts = [t.strip() for t in chips.all_inner_texts()]
        assert any(t.startswith("runbook.*") for t in texts) and namespace in texts
        assert page.evaluate(CUT_TEXT) == []
        # Widen to everything: the preview, its pager and the downloads are drawn too.
        page.goto(portal.url + "?" + urlencode({"from": "2000-01-01", "action": "runbook.*"}))
        matching(page)
        grid = page.locator("[data-testid=stDataFrame]").first
        grid.scroll_into_view_if_needed()
        page.wait_for_timeout(1_000)
        for label in ("Newest", "Older", "Download CSV", "Download JSON Lines"):
            expect(page.get_by_role("button", name=label)).to_be_visible()
        assert page.evaluate(CUT_TEXT) == []
        assert page.evaluate(DRAWN_COLUMNS)[:4] == KEY_COLUMNS
        levels = page.evaluate(HEADINGS)
        assert levels[0] == 1 and all(
            b - a <= 1 for a, b in zip(levels, levels[1:], strict=False)
        ), levels
        assert_tab_reaches(page)
    finally:
        context.close()
        with portal.engine.begin() as conn:
            conn.execute(SAVED_VIEWS.delete())


def assert_tab_reaches(page: Any) -> None:
    """Tab from the top of the page: the filter's controls and the page's buttons take focus."""
    page.goto(page.url)
    matching(page)
    page.locator("[data-testid=stMain] h1").first.click()  # start from the page, not the URL bar
    reached = set()
    for _ in range(120):
        page.keyboard.press("Tab")
        reached.add(page.evaluate(FOCUSED))
    for control in (
        "Time range",
        "From (UTC, included)",
        "To (UTC, not included)",
        "Action",
        "User",
        "Namespace",
        "Apply filters",
        "Saved views: save, share, delete",
    ):
        assert any(control in r for r in reached), (control, sorted(reached))
    assert any("Pick From" in r for r in reached), sorted(reached)


@pytest.mark.parametrize("width", [1440, 1024])
def test_every_page_at_1440_and_1024(portal: Portal, browser: Any, width: int) -> None:
    from playwright.sync_api import expect

    context = harness.new_context(browser, viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        for n, (name, path, ready) in enumerate(PAGES, start=1):
            page.goto(portal.url + path)
            expect(page.locator(ready).first).to_be_visible()
            page.wait_for_timeout(1_500)
            shot(page, f"{width}-{n}-{name}")
            if name == "explore":
                assert page.evaluate(CUT_TEXT) == []
    finally:
        context.close()
