"""End to end: sign in to the portal through a real OIDC provider, then sign out.

Runs ``streamlit run app.py`` (repo root, or ``$E2E_APP_DIR``) with an
``[auth]`` section pointing at the dev provider in ``oidc/provider.mjs``,
and drives Debian's chromium with Playwright. Screenshots and server logs
go to ``tests/artifacts/``.

Run: ``.venv/bin/python -m pytest -m e2e tests/e2e -q``
(needs /usr/bin/chromium and node/npm: ``scripts/install-browser.sh``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import SignInStack

EMAIL = "auditor.one@example.com"
SIGN_IN = re.compile(r"Sign in", re.IGNORECASE)
SIGN_OUT = re.compile(r"Sign out", re.IGNORECASE)


def _shot(page: Any, artifacts_dir: Path, name: str) -> None:
    page.screenshot(path=str(artifacts_dir / f"oidc-signin-{name}.png"), full_page=True)


@pytest.mark.e2e
def test_sign_in_and_out_through_oidc(
    signin_stack: SignInStack, page: Any, artifacts_dir: Path
) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    stack = signin_stack
    for stale in artifacts_dir.glob("oidc-signin-*.png"):
        stale.unlink()
    try:
        # --- signed out: the portal offers a sign-in button -----------------
        page.goto(stack.app_url)
        app = page.locator("[data-testid=stApp]")
        sign_in = page.get_by_role("button", name=SIGN_IN)
        expect(sign_in).to_be_visible(timeout=20_000)
        expect(app.get_by_text(EMAIL)).to_have_count(0)
        _shot(page, artifacts_dir, "01-signed-out")

        # --- the provider's development login page --------------------------
        sign_in.click()
        page.wait_for_url(f"{stack.provider_url}/**")
        login = page.locator("input[name=login]")
        expect(login).to_be_visible()
        login.fill(EMAIL)
        page.locator("input[name=password]").fill("any-password")
        _shot(page, artifacts_dir, "02-provider-login")
        page.locator("button[type=submit]").click()

        # --- consent (first login of an account), then back to the portal ---
        # (The provider's consent page also prints the account id in a debug
        # block, so look for the email inside the Streamlit app only.)
        consent = page.get_by_role("button", name="Continue")
        signed_in_email = app.get_by_text(EMAIL).first
        expect(consent.or_(signed_in_email).first).to_be_visible()
        if consent.is_visible():
            _shot(page, artifacts_dir, "03-provider-consent")
            consent.click()
        page.wait_for_url(f"{stack.app_url}**")
        expect(signed_in_email).to_be_visible(timeout=20_000)
        sign_out = page.get_by_role("button", name=SIGN_OUT)
        expect(sign_out).to_be_visible()
        _shot(page, artifacts_dir, "04-signed-in")

        # --- sign out: RP-initiated logout at the provider, then back -------
        sign_out.click()
        page.wait_for_url(re.compile(re.escape(stack.provider_url) + r"/session/end"))
        confirm = page.get_by_role("button", name="Yes, sign me out")
        expect(confirm).to_be_visible()
        _shot(page, artifacts_dir, "05-provider-logout")
        confirm.click()
        page.wait_for_url(f"{stack.app_url}**")
        expect(page.get_by_role("button", name=SIGN_IN)).to_be_visible(timeout=20_000)
        expect(app.get_by_text(EMAIL)).to_have_count(0)
        _shot(page, artifacts_dir, "06-signed-out-again")
    except (AssertionError, PlaywrightError) as exc:
        try:
            _shot(page, artifacts_dir, "failure")
            where = page.url
        except PlaywrightError:
            where = "<page unavailable>"
        raise AssertionError(f"{exc}\nbrowser at: {where}\n{stack.logs()}") from exc
