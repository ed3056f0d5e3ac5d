"""Admin: portal users and their grants, API tokens, current settings and worker status."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from audit_core import access, jobs, views
from audit_core.access import Principal
from pages import common

FLASH_KEY = "admin_flash"  # (section, Markdown message): the previous run's confirmation
NEW_TOKEN_KEY = "admin_new_token"  # the plaintext of a token just created, for one run
CONFIRMED = ":material/check_circle:"


def _done(section: str, message: str) -> None:
    """Confirm a change on the next run and start it: st.rerun() would lose a message now."""
    st.session_state[FLASH_KEY] = (section, message)
    st.rerun()


def _confirmation(section: str) -> None:
    """Show, once, the confirmation the previous run left for this section."""
    flash = st.session_state.get(FLASH_KEY)
    if not flash or flash[0] != section:
        return
    del st.session_state[FLASH_KEY]
    st.toast(flash[1], icon=CONFIRMED)
    st.success(flash[1], icon=CONFIRMED)


def _refused(exc: Exception) -> None:
    """A refusal stays on the page beside the form, whose input is kept (it may quote it)."""
    st.error(views.md(str(exc)))


def _list_users() -> list[access.UserInfo]:
    """Every portal user, active or not (read once per run for both sections)."""
    with common.ctx().engine.connect() as conn:
        return access.list_users(conn)


def _users(who: Principal, users: list[access.UserInfo]) -> None:
    """The users and their grants; add, change or remove one."""
    ctx = common.ctx()
    st.header("Users and grants")
    _confirmation("users")
    if users:
        st.dataframe(views.users_frame(users), hide_index=True, width="stretch")
    else:
        st.info(
            "No portal users yet. Add one below; AUDIT_ADMINS bootstrap admins appear "
            "here after their first sign-in."
        )
    with st.form("admin_user_form", clear_on_submit=False):
        c_email, c_role, c_ns = st.columns([3, 2, 3])  # "auditor" whole at 1024 px
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
            _refused(exc)
        else:
            before = next((u for u in users if u.email == info.email), None)
            _done("users", views.user_saved_message(before, info))
    active = [u.email for u in users if u.active]
    if active:
        _pick_and_act(
            "Remove a user",
            active,
            "admin_remove",
            "choose a user",
            "Remove",
            lambda email: views.user_removed_message(
                access.remove_user(ctx.engine, email, who, settings=ctx.settings)
            ),
            "users",
        )


def _new_token() -> None:
    """The token created in the previous run, shown this once with a copy button."""
    plaintext = st.session_state.pop(NEW_TOKEN_KEY, None)
    if plaintext:
        st.warning(views.TOKEN_SHOWN_ONCE, icon=":material/key:")
        st.code(plaintext, language=None)  # st.code carries the copy button


def _token_form(who: Principal, users: list[access.UserInfo]) -> None:
    """Issue a token to an active portal user picked from the list."""
    ctx = common.ctx()
    active = [u.email for u in users if u.active]
    if not active:
        st.caption("Tokens are issued to active portal users: add one above first.")
        return
    with st.form("admin_token_form"):
        c_email, c_days = st.columns([3, 1])
        email = c_email.selectbox(
            "Token for", active, index=None, key="admin_token_email", placeholder="choose a user"
        )
        days = c_days.number_input(
            "Expires in days",
            min_value=1,
            max_value=access.MAX_TOKEN_DAYS,
            value=90,
            key="admin_token_days",
        )
        create = st.form_submit_button("Create token", type="primary")
    if not create:
        return
    if email is None:
        st.error("Choose the user the token is for.")
        return
    try:
        plaintext, info = access.create_token(
            ctx.engine, email, who, expires_in_days=int(days), settings=ctx.settings
        )
    except (access.UserError, access.AccessDeniedError) as exc:
        _refused(exc)
    else:
        st.session_state[NEW_TOKEN_KEY] = plaintext
        _done("tokens", views.token_created_message(info))


def _tokens(who: Principal, users: list[access.UserInfo]) -> None:
    """API tokens: the one just created (once), a form to issue one, the list, revoke."""
    ctx = common.ctx()
    st.header("API tokens")
    _confirmation("tokens")
    _new_token()
    _token_form(who, users)
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
            lambda prefix: views.token_revoked_message(
                access.revoke_token(ctx.engine, prefix, who, settings=ctx.settings)
            ),
            "tokens",
        )


def _pick_and_act(
    label: str,
    options: list[str],
    key: str,
    placeholder: str,
    button: str,
    act: Callable[[str], str],
    section: str,
) -> None:
    """A picker with a button beside it: `act` returns the confirmation; a refusal stays."""
    c_pick, c_go = st.columns([4, 1])
    chosen = c_pick.selectbox(
        label, options, index=None, key=f"{key}_pick", placeholder=placeholder
    )
    c_go.write("")
    if c_go.button(button, key=key, disabled=chosen is None):
        try:
            message = act(chosen or "")
        except (access.UserError, access.AccessDeniedError) as exc:
            _refused(exc)
        else:
            _done(section, message)


def _settings(who: Principal) -> None:
    ctx = common.ctx()
    st.header("Settings and worker")
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
_people = _list_users()
_users(who, _people)
_tokens(who, _people)
_settings(who)
