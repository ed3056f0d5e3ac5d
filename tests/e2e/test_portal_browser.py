"""End to end: the portal in a real browser, served by `streamlit run app.py`.

Local mode (no [auth]) on a free loopback port, a temporary SQLite database with demo
records and a small immediate-download limit. Opens a filtered URL, reads the count,
downloads CSV, queues a large export, follows it to completion on the Exports page and
downloads it through its signed link; both files are compared with a direct export.
Records whose fields are Markdown, HTML, an e-mail address and a javascript: URL are opened
in the record panel, and a person signed in through OIDC sees their email in the sidebar:
all of it must show as literal text, with no link, image or emphasis made of it.
Screenshots of every page go to tests/artifacts/portal-*.png.

Run: ``.venv/bin/python -m pytest -m e2e tests/e2e/test_portal_browser.py -q``
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, select

from audit_core import export, jobs, query, store
from audit_core.db import make_engine, migrate
from audit_core.filters import AuditFilter
from audit_core.formats import CSV_HEADER
from audit_core.models import ExportJob
from audit_core.record import normalize

from ..conftest import add_demo, seed_record
from . import harness
from .conftest import SignInStack

RECORDS = 2_000
LIMIT = 500
pytestmark = pytest.mark.e2e
EVIL_EMAIL = "mallory@evil.example"
HOSTILE = [
    {
        "user": EVIL_EMAIL,
        "resource": "**Checksum verified by Security** "
        "[open the evidence](https://evil.example/phish)",
        "resourceType": "<img src=x onerror=alert(1)>",
        "namespace": "ns_[x](javascript:alert(1))_",
        "sourceIP": "www.evil.example",
    },
    {
        "user": EVIL_EMAIL,
        "resource": "[run me](javascript:alert(document.cookie)) <b>bold</b> _it_ "
        ":red[alarm] :smile: $x^2$ :material/home:",
        "resourceType": "<a href=https://evil.example>Report</a>",
        "namespace": "ns_[x](javascript:alert(1))_",
        "sourceIP": "10.0.0.1 <https://evil.example/ip>",
    },
]
FRAGMENTS = ("Checksum", "evidence", "evil", "run me", "Report", "mallory", "alarm", "bold")
# Every link, image, emphasis and handler in the app, as the browser built them.
DOM_MARKUP = """() => {
  const app = document.querySelector('[data-testid=stApp]');
  const links = [...app.querySelectorAll('a[href]')].map(a => {
    const u = new URL(a.getAttribute('href'), location.href);
    return {href: a.getAttribute('href'), url: u.href, protocol: u.protocol};
  });
  const emphasis = [...app.querySelectorAll('strong, em, b, i, s, del')].map(e => e.textContent);
  const images = [...app.querySelectorAll('img')].map(i => i.getAttribute('src'));
  const handlers = [...app.querySelectorAll('*')].filter(
    e => [...e.attributes].some(a => a.name.startsWith('on'))).map(e => e.outerHTML);
  return {links, emphasis, images, handlers};
}"""


@dataclass
class Portal:
    url: str
    engine: Engine
    log: Path


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory, e2e_app_dir: Path) -> Iterator[Portal]:
    """`streamlit run app.py` on a free loopback port over a fresh SQLite database."""
    tmp = tmp_path_factory.mktemp("portal")
    url = f"sqlite:///{tmp / 'audit.db'}"
    engine = make_engine(url)
    migrate(engine)
    add_demo(engine, RECORDS, seed=11)
    plant_hostile(engine)
    port = harness.free_port()
    env = {
        "AUDIT_DATABASE_URL": url,
        "AUDIT_EXPORT_DIR": str(tmp / "exports"),
        "AUDIT_SECRET_KEY": "e2e-secret-0123456789abcdef0123456789",
        "AUDIT_SYNC_EXPORT_LIMIT": str(LIMIT),
        "AUDIT_WORKER_POLL_SECONDS": "0.5",
        # Slow the worker a little so the browser sees the job in progress.
        "AUDIT_WORKER_BATCH_DELAY_MS": "200",
    }
    log = tmp / "streamlit.log"
    proc = harness.start_streamlit(e2e_app_dir, port, env, log_path=log)
    try:
        yield Portal(f"http://127.0.0.1:{port}/", engine, log)
    finally:
        harness.stop_process(proc)
        artifacts = harness.ARTIFACTS_DIR
        artifacts.mkdir(parents=True, exist_ok=True)
        if log.exists():
            (artifacts / "portal-streamlit.log").write_text(log.read_text())
        engine.dispose()


def plant_hostile(engine: Engine) -> None:
    """Add the HOSTILE records yesterday, with ids no demo day reaches."""
    when = datetime.now(UTC) - timedelta(days=1)
    records = [
        normalize(
            seed_record(
                1,
                **fields,
                id=f"audit-{when:%Y%m%d}-{9001 + n}",
                timestamp=f"{when:%Y-%m-%dT%H}:0{n}:00Z",
                action="runbook.execute",
            )
        )
        for n, fields in enumerate(HOSTILE)
    ]
    with engine.begin() as conn:
        store.append(conn, records)


def assert_no_markup_from_values(page: Any, *literal: str) -> None:
    """No link leaves the portal or is mailto:/javascript:, no emphasis or image is made of
    record or user text, no element carries an event handler; each literal is shown."""
    from playwright.sync_api import expect

    found = page.evaluate(DOM_MARKUP)
    outside = [
        link
        for link in found["links"]
        if link["protocol"] not in ("http:", "https:") or not harness.is_loopback_url(link["url"])
    ]
    assert outside == [], outside
    assert [e for e in found["emphasis"] if any(f in e for f in FRAGMENTS)] == [], found
    assert [src for src in found["images"] if src == "x" or "evil" in (src or "")] == [], found
    assert found["handlers"] == [], found["handlers"]
    app = page.locator("[data-testid=stApp]")
    for text in literal:
        # (the grid's cells are also in a hidden table for screen readers: skip those)
        expect(app.get_by_text(text).filter(visible=True).first).to_be_visible()


def shot(page: Any, name: str) -> None:
    """Save a screenshot of the whole page (Streamlit scrolls inside, so grow the window)."""
    harness.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": 2400})
    page.wait_for_timeout(700)  # let charts redraw at the new size
    page.screenshot(path=str(harness.ARTIFACTS_DIR / f"portal-{name}.png"), full_page=True)
    page.set_viewport_size(size)


def matching(page: Any) -> int:
    from playwright.sync_api import expect

    value = (
        page.locator("[data-testid=stMetric]")
        .filter(has_text="Matching records")
        .locator("[data-testid=stMetricValue]")
    )
    expect(value).to_be_visible(timeout=30_000)
    return int(value.inner_text().replace(",", ""))


def direct_csv(engine: Engine, flt: AuditFilter, upto_seq: int | None = None) -> bytes:
    with engine.connect() as conn:
        plan = export.plan(conn, flt, "csv", upto_seq=upto_seq)
        return b"".join(export.chunks(conn, plan))


def a_small_filter(engine: Engine) -> dict[str, str]:
    """A family and a namespace that select between 1 and LIMIT records."""
    with engine.connect() as conn:
        for ns in query.distinct_values(conn, "namespace"):
            params = {"action": "user.*", "namespace": ns}
            if 0 < query.count(conn, AuditFilter.from_params(params)) <= LIMIT:
                return params
    raise AssertionError("no small filter in the demo data")


def test_filtered_url_count_and_csv_download(portal: Portal, page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    params = a_small_filter(portal.engine)
    flt = AuditFilter.from_params(params)
    with portal.engine.connect() as conn:
        expected = query.count(conn, flt)
    page.goto(portal.url + "?" + urlencode(params))
    assert matching(page) == expected
    expect(page.get_by_text("Sign-in is off: local mode")).to_be_visible()
    expect(page.get_by_role("button", name="Download CSV")).to_be_visible()
    shot(page, "01-explore-filtered")

    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").click()
    download = info.value
    assert download.suggested_filename.startswith("audit-export-")
    assert download.suggested_filename.endswith(".csv")
    path = tmp_path / "download.csv"
    download.save_as(path)
    data = path.read_bytes()
    assert data.decode().startswith(CSV_HEADER)
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert len(rows) == expected + 1
    assert data == direct_csv(portal.engine, flt)


def test_queue_follow_and_download_a_large_export(portal: Portal, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(portal.url)
    total = matching(page)
    assert total > LIMIT
    expect(page.get_by_role("button", name="Queue export")).to_be_visible()
    expect(page.get_by_role("button", name="Download CSV")).to_have_count(0)
    page.get_by_role("button", name="Queue export").click()
    queued = page.get_by_text("Queued export-")
    expect(queued).to_be_visible(timeout=30_000)
    job_id = queued.inner_text().split()[1].rstrip(":")
    shot(page, "02-explore-queued")

    page.get_by_role("link", name="Follow your exports").click()
    page.wait_for_url("**/exports")
    expect(page.get_by_text(job_id).first).to_be_visible(timeout=30_000)
    shot(page, "03-exports-running")
    link = page.get_by_role("link", name="Download")
    expect(link).to_be_visible(timeout=120_000)  # the fragment refreshes until completed
    shot(page, "04-exports-completed")
    href = link.get_attribute("href")
    assert href and href.startswith(f"/api/v1/audit/export/download/{job_id}?sig=")
    response = page.request.get(portal.url.rstrip("/") + href)
    assert response.status == 200, response.text()[:500]
    body = response.body()

    t = ExportJob.__table__
    with portal.engine.connect() as conn:
        row = conn.execute(select(t).where(t.c.job_id == job_id)).one()
        plan = jobs.ClaimedJob.from_row(row).plan()
        assert body == b"".join(export.chunks(conn, plan))
    assert body.decode().startswith(CSV_HEADER)
    assert len(body.decode().splitlines()) == plan.total + 1 >= total

    # Beside the file: its signed manifest and signature, checked with the public key.
    halves = []
    for name in ("Manifest", "Signature"):
        part = page.get_by_role("link", name=name).get_attribute("href")
        assert part and part.startswith(f"/api/v1/audit/export/download/{job_id}/manifest")
        got = page.request.get(portal.url.rstrip("/") + part)
        assert got.status == 200, got.text()[:500]
        halves.append(got.body())
    manifest, signature = halves
    assert json.loads(manifest)["file"]["sha256"] == hashlib.sha256(body).hexdigest()
    (jwk,) = page.request.get(portal.url.rstrip("/") + "/api/v1/audit/keys").json()["keys"]
    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    Ed25519PublicKey.from_public_bytes(raw).verify(signature, manifest)  # raises if not


def test_admin_and_ingest_pages_render(portal: Portal, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(portal.url + "admin")
    expect(page.get_by_role("heading", name="Admin")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Immediate download limit")).to_be_visible()
    shot(page, "05-admin")
    page.goto(portal.url + "ingest")
    expect(page.get_by_role("heading", name="Ingest")).to_be_visible(timeout=30_000)
    shot(page, "06-ingest")


def select_row(page: Any, row: int) -> None:
    """Tick a row's selection box in the preview grid (drawn on a canvas: by position)."""
    grid = page.locator("[data-testid=stDataFrame]").first
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    assert box is not None
    row_height = 35  # Streamlit's grid: header and rows alike
    page.mouse.click(box["x"] + 18, box["y"] + row_height * (row + 1) + row_height / 2)


def test_hostile_record_values_show_as_literal_text(portal: Portal, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(portal.url + "?" + urlencode({"user": EVIL_EMAIL}))
    assert matching(page) == len(HOSTILE)
    assert_no_markup_from_values(page, f"User {EVIL_EMAIL}")
    panel = page.locator("[data-testid=stTable]")
    for row, record in enumerate(reversed(HOSTILE)):  # the preview is newest first
        select_row(page, row)
        expect(panel.get_by_text(record["resource"], exact=True)).to_be_visible(timeout=30_000)
        for value in record.values():
            expect(panel.get_by_text(value, exact=True)).to_be_visible()
        assert_no_markup_from_values(page, *record.values())
        shot(page, f"07-hostile-record-{row + 1}")


def sign_in(page: Any, stack: SignInStack, email: str) -> None:
    """Sign in through the test OIDC provider (its login accepts any password)."""
    from playwright.sync_api import expect

    page.goto(stack.app_url)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.provider_url}/**")
    page.locator("input[name=login]").fill(email)
    page.locator("input[name=password]").fill("any-password")
    page.locator("button[type=submit]").click()
    consent = page.get_by_role("button", name="Continue")
    back = page.locator("[data-testid=stApp]").get_by_text(email).filter(visible=True).first
    expect(consent.or_(back).first).to_be_visible(timeout=20_000)
    if consent.is_visible():
        consent.click()
    page.wait_for_url(f"{stack.app_url}**")
    expect(back).to_be_visible(timeout=20_000)


def test_signed_in_emails_show_as_literal_text(
    signin_stack: SignInStack, browser: Any, page: Any
) -> None:
    """The sidebar's email (an admin) and the no-access page's (a stranger): no mailto: link."""
    from playwright.sync_api import expect

    admin = "auditor.one@example.com"  # AUDIT_ADMINS of the sign-in stack
    try:
        sign_in(page, signin_stack, admin)
        sidebar = page.locator("[data-testid=stSidebar]")
        expect(sidebar.get_by_text(admin, exact=True)).to_be_visible()
        assert_no_markup_from_values(page, admin)
        shot(page, "08-signed-in-sidebar")

        stranger = harness.new_context(browser)
        try:
            other = stranger.new_page()
            other.set_default_timeout(15_000)
            sign_in(other, signin_stack, EVIL_EMAIL)
            expect(other.get_by_role("heading", name="No access yet")).to_be_visible()
            assert_no_markup_from_values(other, f"You are signed in as {EVIL_EMAIL}")
            shot(other, "09-no-access")
        finally:
            stranger.close()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{signin_stack.logs()}") from exc
