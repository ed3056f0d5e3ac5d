"""The portal's navigation script: who is here, which pages they get, the frame around them."""

from __future__ import annotations

import streamlit as st

from audit_core import access, views
from audit_core.access import Principal
from pages import common

st.set_page_config(page_title="Audit Export Portal", page_icon=common.FAVICON, layout="wide")


def sign_in_page() -> None:
    st.title("Audit Export Portal")
    st.write("Filter, preview and export your organisation's audit log.")
    st.write("Sign in with your organisation account to continue.")
    try:
        providers = access.login_providers(st.secrets) or ["default"]
    except Exception:  # noqa: BLE001 - unreadable secrets: let st.login report the problem
        providers = ["default"]
    for name in providers:
        label = "Sign in" if len(providers) == 1 else f"Sign in with {views.md(name.title())}"
        if st.button(label, type="primary", key=f"portal_sign_in_{name}"):
            if name == "default":
                st.login()
            else:
                st.login(name)


def no_access_page() -> None:
    email = str(st.user.get("email") or "")
    st.title("No access yet")
    st.markdown(
        f"You are signed in as {views.code(email)}, but this portal has no grant for that "
        "account. Ask a portal admin to add you with a role and the namespaces you audit."
    )
    if st.button("Sign out", key="portal_sign_out_denied"):
        st.logout()


def _resolve() -> tuple[Principal | None, bool]:
    """(principal or None, signed in with OIDC); records sign-ins and refusals once a session."""
    if not common.auth_on():
        return common.local_principal(), False
    if not st.user.get("is_logged_in", False):
        return None, False
    email = str(st.user.get("email") or "").strip().lower()
    ctx = common.ctx()
    ip = common.source_ip()
    who = None
    if email:
        with ctx.engine.connect() as conn:
            who = access.principal_for(conn, email, ctx.settings, source_ip=ip)
    seen = st.session_state.get("portal_recorded")
    if who is not None and seen != ("signin", email):
        access.signed_in(ctx.engine, who, ctx.settings)
        st.session_state["portal_recorded"] = ("signin", email)
    elif who is None and seen != ("denied", email):
        access.denied(ctx.engine, email or "(no email)", "", "portal", ip, ctx.settings)
        st.session_state["portal_recorded"] = ("denied", email)
    return who, True


who, signed_in = _resolve()
st.session_state[common.PRINCIPAL_KEY] = who
st.session_state[common.SIGNED_IN_KEY] = signed_in
if who is None:
    page = st.navigation(
        [st.Page(no_access_page if signed_in else sign_in_page, title="Sign in", default=True)],
        position="hidden",
    )
else:
    pages = [
        st.Page("pages/explore.py", title="Explore", icon=":material/search:", default=True),
        st.Page(
            "pages/exports.py", title="Exports", icon=":material/download:", url_path="exports"
        ),
        st.Page("pages/verify.py", title="Verify", icon=":material/verified:", url_path="verify"),
    ]
    if who.is_admin:
        pages += [
            st.Page(
                "pages/admin.py",
                title="Admin",
                icon=":material/admin_panel_settings:",
                url_path="admin",
            ),
            st.Page(
                "pages/ingest.py", title="Ingest", icon=":material/upload_file:", url_path="ingest"
            ),
        ]
    page = st.navigation(pages)
    st.session_state[common.NAV_KEY] = True  # the frame may link to Explore (saved views)
page.run()
