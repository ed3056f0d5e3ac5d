"""Fixtures for the browser (end-to-end) tests.

``E2E_APP_DIR`` (environment) points the tests at another app directory
(one holding ``app.py``); by default they run the portal in the repo root.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from audit_core.db import make_engine, migrate

from ..conftest import add_demo
from . import harness


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end browser test (chromium, node, live servers)"
    )


@pytest.fixture(scope="session")
def e2e_app_dir() -> Path:
    """Directory whose ``app.py`` the browser tests run (default: repo root)."""
    return Path(os.environ.get("E2E_APP_DIR") or harness.REPO_ROOT).resolve()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    harness.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return harness.ARTIFACTS_DIR


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    # Streamlit draws in steps (a chart after its data, on a busy 2-core machine seconds
    # later): every expect() waits up to 30 s, not Playwright's 5, before it fails.
    sync_api.expect.set_options(timeout=30_000)
    with sync_api.sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright_instance: Any) -> Iterator[Any]:
    browser = harness.launch_browser(playwright_instance)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh context per test: provider and app cookies share one jar."""
    context = harness.new_context(browser)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: Any) -> Any:
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


@dataclass
class SignInStack:
    """A running OIDC provider plus the app wired to it through ``[auth]``."""

    app_url: str
    provider_url: str
    app_port: int
    provider_port: int
    client_id: str
    work_dir: Path
    env: dict[str, str]
    app_log: Path
    provider_log: Path
    procs: list[Any] = field(default_factory=list)

    def logs(self, lines: int = 80) -> str:
        return (
            f"--- streamlit log ({self.app_log}) ---\n{harness.log_tail(self.app_log, lines)}\n"
            f"--- provider log ({self.provider_log}) ---\n"
            f"{harness.log_tail(self.provider_log, lines)}"
        )


@pytest.fixture
def signin_stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    e2e_app_dir: Path,
    artifacts_dir: Path,
) -> Iterator[SignInStack]:
    """Start the dev OIDC provider and ``streamlit run app.py`` with ``[auth]``.

    Secrets reach Streamlit through ``--secrets.files <tmp>/secrets.toml``;
    the app's own ``.streamlit/secrets.toml`` is never read or written.
    The server logs are copied to ``tests/artifacts/`` after the test.
    """
    if not (e2e_app_dir / "app.py").is_file():
        pytest.skip(f"no app.py in {e2e_app_dir}")

    app_port = harness.free_port()
    provider_port = harness.free_port()
    while provider_port == app_port:
        provider_port = harness.free_port()
    client_id = "audit-portal-e2e"
    client_secret = secrets.token_urlsafe(24)
    redirect_uri = f"http://127.0.0.1:{app_port}/oauth2callback"

    exports = tmp_path / "exports"
    exports.mkdir()
    env = {
        "AUDIT_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}",
        "AUDIT_EXPORT_DIR": str(exports),
        "AUDIT_ADMINS": "auditor.one@example.com",
        "AUDIT_SECRET_KEY": "test-secret-0123456789abcdef",
    }
    stack = SignInStack(
        app_url=f"http://127.0.0.1:{app_port}/",
        provider_url=f"http://127.0.0.1:{provider_port}",
        app_port=app_port,
        provider_port=provider_port,
        client_id=client_id,
        work_dir=tmp_path,
        env=env,
        app_log=tmp_path / "streamlit.log",
        provider_log=tmp_path / "provider.log",
    )
    try:
        stack.procs.append(
            harness.start_oidc_provider(
                provider_port,
                client_id,
                client_secret,
                redirect_uri,
                log_path=stack.provider_log,
            )
        )
        stack.procs.append(
            harness.start_streamlit(
                e2e_app_dir,
                app_port,
                env,
                harness.auth_secrets_toml(
                    app_port=app_port,
                    provider_port=provider_port,
                    client_id=client_id,
                    client_secret=client_secret,
                    cookie_secret=secrets.token_urlsafe(32),
                ),
                log_path=stack.app_log,
                secrets_path=tmp_path / "secrets" / "secrets.toml",
            )
        )
        yield stack
    finally:
        for proc in reversed(stack.procs):
            harness.stop_process(proc)
        prefix = request.node.name
        for log in (stack.app_log, stack.provider_log):
            if log.exists():
                shutil.copyfile(log, artifacts_dir / f"{prefix}-{log.name}")


@dataclass
class DemoPortal:
    url: str
    engine: Engine


@contextmanager
def demo_portal(
    tmp: Path, app_dir: Path, tag: str, records: int, seed: int
) -> Iterator[DemoPortal]:
    """`streamlit run app.py` on a free loopback port over a fresh SQLite database holding
    `records` demo records (immediate downloads up to 500); its log kept as an artifact."""
    url = f"sqlite:///{tmp / 'audit.db'}"
    engine = make_engine(url)
    migrate(engine)
    add_demo(engine, records, seed=seed)
    port = harness.free_port()
    env = {
        "AUDIT_DATABASE_URL": url,
        "AUDIT_EXPORT_DIR": str(tmp / "exports"),
        "AUDIT_SECRET_KEY": f"e2e-{tag}-0123456789abcdef0123456789",
        "AUDIT_SYNC_EXPORT_LIMIT": "500",
    }
    log = tmp / "streamlit.log"
    proc = harness.start_streamlit(app_dir, port, env, log_path=log)
    try:
        yield DemoPortal(f"http://127.0.0.1:{port}/", engine)
    finally:
        harness.stop_process(proc)
        harness.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        if log.exists():
            (harness.ARTIFACTS_DIR / f"{tag}-streamlit.log").write_text(log.read_text())
        engine.dispose()
