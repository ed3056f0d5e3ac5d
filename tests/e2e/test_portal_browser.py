"""End to end: the portal in a real browser, served by `streamlit run app.py`.

Local mode (no [auth]) on a free loopback port, a temporary SQLite database with demo
records and a small immediate-download limit. Opens a filtered URL, reads the count,
downloads CSV, queues a large export, follows it to completion on the Exports page and
downloads it through its signed link; both files are compared with a direct export.
Screenshots of every page go to tests/artifacts/portal-*.png.

Run: ``.venv/bin/python -m pytest -m e2e tests/e2e/test_portal_browser.py -q``
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine, select

from audit_core import export, jobs, query
from audit_core.db import make_engine, migrate
from audit_core.filters import AuditFilter
from audit_core.formats import CSV_HEADER
from audit_core.models import ExportJob

from ..conftest import add_demo
from . import harness

RECORDS = 2_000
LIMIT = 500
pytestmark = pytest.mark.e2e


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
    expect(page.get_by_text(job_id)).to_be_visible(timeout=30_000)
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


def test_admin_and_ingest_pages_render(portal: Portal, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(portal.url + "admin")
    expect(page.get_by_role("heading", name="Admin")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Immediate download limit")).to_be_visible()
    shot(page, "05-admin")
    page.goto(portal.url + "ingest")
    expect(page.get_by_role("heading", name="Ingest")).to_be_visible(timeout=30_000)
    shot(page, "06-ingest")
