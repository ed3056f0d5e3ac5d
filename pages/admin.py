"""Admin: portal users and their grants, API tokens, current settings and worker status."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from audit_core import access, jobs, views
from audit_core.access import Principal
from pages import common


def _users(who: Principal) -> None:
    ctx = common.ctx()
    st.subheader("Users and grants")
    saved = st.session_state.pop("admin_saved_user", None)
    if saved:  # kept across the rerun that shows the new list
        st.success(saved)
    with ctx.engine.connect() as conn:
        users = access.list_users(conn)
    if users:
        st.dataframe(views.users_frame(users), hide_index=True, width="stretch")
    else:
        st.info(
            "No portal users yet. Add one below; AUDIT_ADMINS bootstrap admins appear "
            "here after their first sign-in."
        )
    with st.form("admin_user_form", clear_on_submit=False):
        c_email, c_role, c_ns = st.columns([3, 1, 3])
        email = c_email.text_input("Email", key="admin_user_email")
        role = c_role.selectbox("Role", access.ROLES, index=1, key="admin_user_role")
        grants = c_ns.text_input(
            "Namespaces",
            key="admin_user_ns",
            placeholder="a, b  or  *",
            help="Comma-separated namespaces, or * for every namespace (admins always get *).",
        )
        save = st.form_submit_button("Save user", type="primary")
    if save:
        try:
            info = access.upsert_user(
                ctx.engine, email, role, grants or "", who, settings=ctx.settings
            )
        except (access.UserError, access.AccessDeniedError) as exc:
            st.error(views.md(str(exc)))
        else:
            st.session_state["admin_saved_user"] = (
                f"{views.code(info.email)} is now {views.md(info.role)} on {views.md(info.grants)}."
            )
            st.rerun()
    active = [u.email for u in users if u.active]
    if active:
        _pick_and_act(
            "Remove a user",
            active,
            "admin_remove",
            "choose a user",
            "Remove",
            lambda email: access.remove_user(ctx.engine, email, who, settings=ctx.settings),
        )


def _tokens(who: Principal) -> None:
    ctx = common.ctx()
    st.subheader("API tokens")
    issued = st.session_state.pop("admin_new_token", None)
    if issued:
        st.success(f"Token for {views.code(issued[1])}: copy it now, it is shown only once.")
        st.code(issued[0], language=None)
    with st.form("admin_token_form"):
        c_email, c_days = st.columns([3, 1])
        email = c_email.text_input("Token for (email of an active user)", key="admin_token_email")
        days = c_days.number_input(
            "Expires in days",
            min_value=1,
            max_value=access.MAX_TOKEN_DAYS,
            value=90,
            key="admin_token_days",
        )
        create = st.form_submit_button("Create token", type="primary")
    if create:
        try:
            plaintext, info = access.create_token(
                ctx.engine, email, who, expires_in_days=int(days), settings=ctx.settings
            )
        except (access.UserError, access.AccessDeniedError) as exc:
            st.error(views.md(str(exc)))
        else:
            st.session_state["admin_new_token"] = (plaintext, info.email)
            st.rerun()
    with ctx.engine.connect() as conn:
        tokens = access.list_tokens(conn, who)
    if not tokens:
        st.caption("No API tokens issued.")
        return
    st.dataframe(views.tokens_frame(tokens), hide_index=True, width="stretch")
    live = [t.prefix for t in tokens if t.revoked_at is None]
    if live:
        _pick_and_act(
            "Revoke a token",
            live,
            "admin_revoke",
            "choose a token prefix",
            "Revoke",
            lambda prefix: access.revoke_token(ctx.engine, prefix, who, settings=ctx.settings),
        )


def _pick_and_act(
    label: str,
    options: list[str],
    key: str,
    placeholder: str,
    button: str,
    act: Callable[[str], object],
) -> None:
    """A picker with a button beside it; the library call's refusal shows as an error."""
    c_pick, c_go = st.columns([4, 1])
    chosen = c_pick.selectbox(
        label, options, index=None, key=f"{key}_pick", placeholder=placeholder
    )
    c_go.write("")
    if c_go.button(button, key=key, disabled=chosen is None):
        try:
            act(chosen or "")
        except (access.UserError, access.AccessDeniedError) as exc:
            st.error(views.md(str(exc)))
        else:
            st.rerun()


def _settings(who: Principal) -> None:
    ctx = common.ctx()
    st.subheader("Settings and worker")
    s = ctx.settings
    with ctx.engine.connect() as conn:
        recent = jobs.list_for(conn, who, limit=100)
    status = views.worker_status(recent)
    values = [
        f"{s.sync_export_limit:,} records",
        f"{s.export_ttl_hours} hours",
        s.engine_kind,
        str(s.export_dir),
        s.self_namespace,
        "OIDC (st.login)" if common.auth_on() else "off (local mode)",
        str(status.threads),
        status.jobs,
    ]
    st.table(  # st.table renders Markdown in its cells: the values go in literally
        {
            "setting": [
                "Immediate download limit",
                "Export files expire after",
                "Database",
                "Export directory",
                "Own audit namespace",
                "Sign-in",
                "Export workers in this process",
                "Jobs (newest 100)",
            ],
            "value": [views.md(v) for v in values],
        }
    )


who = common.frame(admins_only=True)
st.title("Admin")
_users(who)
_tokens(who)
_settings(who)
