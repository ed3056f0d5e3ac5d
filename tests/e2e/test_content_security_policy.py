"""End to end: the portal's Content-Security-Policy leaves Streamlit working in a real browser.

`streamlit run app.py` in local mode on a free loopback port, over demo records; headless
Chromium opens every page (the Explore chart and table, Exports, Verify, Admin, Ingest),
clicks a download, and records every CSP violation the browser reports, both as a
`securitypolicyviolation` event and as a console message. There must be none, and the
pages must still render. A page of another origin that frames the portal is refused.

Run: ``.venv/bin/python -m pytest -m e2e tests/e2e/test_content_security_policy.py -q``
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_core.db import make_engine, migrate

from ..conftest import add_demo
from . import harness

pytestmark = pytest.mark.e2e

# Collected in the page before any of its scripts run, so nothing is missed.
WATCH_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "(inline)"}`);
});
"""
PAGES = [
    ("", "[data-testid=stVegaLiteChart]"),  # Explore: the activity chart (Vega)
    ("", "[data-testid=stDataFrame]"),  # and the preview table (canvas)
    ("exports", "[data-testid=stHeading]"),
    ("verify", "[data-testid=stFileUploader]"),
    ("admin", "[data-testid=stHeading]"),
    ("ingest", "[data-testid=stFileUploader]"),
]


@pytest.fixture(scope="module")
def portal_url(tmp_path_factory: pytest.TempPathFactory, e2e_app_dir: Path) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("csp")
    url = f"sqlite:///{tmp / 'audit.db'}"
    engine = make_engine(url)
    migrate(engine)
    add_demo(engine, 1_000, seed=5)
    engine.dispose()
    port = harness.free_port()
    env = {
        "AUDIT_DATABASE_URL": url,
        "AUDIT_EXPORT_DIR": str(tmp / "exports"),
        "AUDIT_SECRET_KEY": "e2e-secret-0123456789abcdef0123456789",
    }
    proc = harness.start_streamlit(e2e_app_dir, port, env, log_path=tmp / "streamlit.log")
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        harness.stop_process(proc)


def watched_page(context: Any) -> tuple[Any, list[str]]:
    """A page whose CSP complaints in the console are collected in the returned list."""
    console: list[str] = []
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.add_init_script(WATCH_VIOLATIONS)

    def on_console(message: Any) -> None:
        text = str(message.text)
        if "Content Security Policy" in text or "Refused to" in text:
            console.append(text)

    page.on("console", on_console)
    return page, console


def violations(page: Any) -> list[str]:
    return list(page.evaluate("window.__cspViolations || []"))


def test_every_page_renders_under_the_policy_without_a_violation(
    portal_url: str, context: Any
) -> None:
    from playwright.sync_api import expect

    page, console = watched_page(context)
    for path, ready in PAGES:
        response = page.goto(portal_url + path)
        assert response is not None and "frame-ancestors 'none'" in (
            response.headers.get("content-security-policy", "")
        )
        expect(page.locator(ready).first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1_000)  # late work: fonts, icons, chart redraws
        assert violations(page) == [], path
    # The Explore page's download (a data: or blob: URL Streamlit makes) is allowed too.
    page.goto(portal_url)
    button = page.get_by_role("button", name="Download CSV")
    expect(button).to_be_visible(timeout=30_000)
    with page.expect_download() as info:
        button.click()
    assert info.value.suggested_filename.endswith(".csv")
    assert violations(page) == []
    assert console == []


def test_another_origin_may_not_frame_the_portal(portal_url: str, context: Any) -> None:
    page = context.new_page()
    framing = "http://localhost:1/"  # another origin, served by the route below

    def serve(route: Any) -> None:
        html = f'<iframe id="portal" src="{portal_url}" width="800" height="600"></iframe>'
        route.fulfill(status=200, content_type="text/html", body=html)

    page.route(framing, serve)
    page.goto(framing)
    page.wait_for_timeout(2_000)
    [framed] = [f for f in page.frames if f is not page.main_frame]
    # Refused (frame-ancestors 'none', X-Frame-Options: DENY): Chromium's error page instead.
    assert framed.url.startswith("chrome-error://"), framed.url
    assert framed.locator("[data-testid=stApp]").count() == 0
