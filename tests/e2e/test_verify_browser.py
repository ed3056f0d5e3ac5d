"""End to end: the Verify page checks uploaded bundles in a real browser.

`streamlit run app.py` in local mode on a free loopback port, over a temporary SQLite
database; the real CLI exports a signed CSV bundle (file, manifest, signature). The
browser uploads it with `set_input_files` and reads the verdict, then a copy with one byte
of the file flipped, then proofs that are not JSON; it also asks for a record's proof.
Screenshots go to tests/artifacts/verify-*.png.

Run: ``.venv/bin/python -m pytest -m e2e tests/e2e/test_verify_browser.py -q``
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from audit_core import evidence, query, signing
from audit_core.config import Settings
from audit_core.db import make_engine, migrate
from audit_core.filters import AuditFilter

from ..conftest import add_demo
from . import harness

RECORDS = 300
pytestmark = pytest.mark.e2e


@dataclass
class Portal:
    url: str
    bundle: Path  # the exported CSV; its manifest and signature sit beside it
    record_id: str


def cli(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "audit_core", *args],
        cwd=harness.REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory, e2e_app_dir: Path) -> Iterator[Portal]:
    """A signed log, a CLI export of it, and `streamlit run app.py` over the same database."""
    tmp = tmp_path_factory.mktemp("verify")
    url = f"sqlite:///{tmp / 'audit.db'}"
    env = {
        "AUDIT_DATABASE_URL": url,
        "AUDIT_EXPORT_DIR": str(tmp / "exports"),
        "AUDIT_SECRET_KEY": "e2e-secret-0123456789abcdef0123456789",
    }
    engine = make_engine(url)
    migrate(engine)
    # The key the portal and the CLI find by default (beside the export folder).
    key = signing.load_or_create_key(tmp / "signing.key")
    evidence.attach(engine, evidence.Signer(key, Settings().log_origin))
    add_demo(engine, RECORDS, seed=5)
    with engine.connect() as conn:
        record_id = query.preview(conn, AuditFilter(), limit=1).rows[0]["id"]
    engine.dispose()
    bundle = tmp / "good" / "audit.csv"
    bundle.parent.mkdir()
    cli({**_clean_env(), **env}, "export", "--format", "csv", "-o", str(bundle))
    log = tmp / "streamlit.log"
    port = harness.free_port()
    proc = harness.start_streamlit(e2e_app_dir, port, env, log_path=log)
    try:
        yield Portal(f"http://127.0.0.1:{port}/", bundle, record_id)
    finally:
        harness.stop_process(proc)
        harness.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        if log.exists():
            (harness.ARTIFACTS_DIR / "verify-streamlit.log").write_text(log.read_text())


def _clean_env() -> dict[str, str]:
    """Our environment without settings of the portal or of Streamlit."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_", "STREAMLIT_"))}


def shot(page: Any, name: str) -> None:
    harness.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(700)  # the table draws on a canvas, after the verdict shows
    page.screenshot(path=str(harness.ARTIFACTS_DIR / f"verify-{name}.png"), full_page=True)


def open_verify(page: Any, portal: Portal, query: str = "") -> None:
    """Open the Verify page, after the landing page.

    The landing page first: until navigation.py has run once in the server, Streamlit
    serves a URL such as /verify from the pages/ folder as a page of its own, without
    the navigation script (seen here: "You are not signed in").
    """
    from playwright.sync_api import expect

    page.goto(portal.url)
    expect(page.get_by_role("heading", name="Explore", exact=True)).to_be_visible(timeout=30_000)
    page.goto(portal.url + "verify" + query)
    expect(page.get_by_role("heading", name="Verify", exact=True)).to_be_visible(timeout=30_000)


def upload(page: Any, label: str, path: Path) -> None:
    """Put a file into the uploader labelled `label`, and wait until it is listed."""
    from playwright.sync_api import expect

    box = page.get_by_role("region", name=label, exact=True)
    box.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(path))
    # Long names are shortened on screen; the remove button carries the whole name.
    remove = box.get_by_role("button", name=f"Remove {path.name}", exact=True)
    expect(remove).to_be_visible(timeout=30_000)


def upload_bundle(page: Any, file: Path) -> None:
    upload(page, "Export file", file)
    upload(page, "Manifest (.manifest.json)", Path(f"{file}.manifest.json"))
    upload(page, "Signature (.manifest.sig)", Path(f"{file}.manifest.sig"))


def alert(page: Any, text: str) -> str:
    from playwright.sync_api import expect

    found = page.locator("[data-testid=stAlert]").filter(has_text=text)
    expect(found).to_be_visible(timeout=60_000)
    return str(found.inner_text())


def test_a_good_bundle_is_verified_and_unusable_proofs_are_said_so(
    portal: Portal, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    open_verify(page, portal)
    upload_bundle(page, portal.bundle)
    verdict = alert(page, "Verified:")
    assert "all 11 checks passed" in verdict
    table = page.locator("[data-testid=stDataFrame]")
    expect(table).to_have_count(1)
    shot(page, "01-good")

    broken = tmp_path / "proofs.json"
    broken.write_text("{not json")
    upload(page, "Inclusion proofs (optional)", broken)
    message = alert(page, "cannot be checked")
    assert "proofs file proofs.json is not valid JSON" in message
    assert "audit-verify-" not in message  # no server path
    shot(page, "02-bad-proofs")


def test_a_bundle_with_a_flipped_byte_is_not_verified(
    portal: Portal, page: Any, tmp_path: Path
) -> None:
    copy = tmp_path / portal.bundle.name
    for suffix in ("", ".manifest.json", ".manifest.sig"):
        shutil.copyfile(f"{portal.bundle}{suffix}", f"{copy}{suffix}")
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))

    open_verify(page, portal)
    upload_bundle(page, copy)
    verdict = alert(page, "Not verified:")
    assert "file sha256" in verdict
    assert page.get_by_text("Verified:", exact=False).count() == 1  # only the failure
    shot(page, "03-tampered")


def test_a_record_id_gets_its_inclusion_proof(portal: Portal, page: Any) -> None:
    from playwright.sync_api import expect

    open_verify(page, portal, "?record=" + portal.record_id)
    code = page.locator("[data-testid=stCode]").filter(has_text='"leafIndex"')
    expect(code).to_be_visible(timeout=30_000)
    proof = json.loads(code.inner_text())
    assert proof["id"] == portal.record_id
    assert proof["treeSize"] >= RECORDS
    expect(page.get_by_role("button", name="Download proof")).to_be_visible()
