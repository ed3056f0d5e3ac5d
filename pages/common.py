"""What every page shares: the cached context, who is acting, and cached reads.

Not a page itself (navigation.py lists the pages). No SQL here: reads go through
`audit_core.service`, which scopes every filter to the principal first.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import streamlit as st

from audit_core import access, context, query, saved_views, service, views
from audit_core.access import LOCAL_ADMIN, Principal
from audit_core.context import Context
from audit_core.filters import AuditFilter

PRINCIPAL_KEY = "portal_principal"
SIGNED_IN_KEY = "portal_signed_in"
NAV_KEY = "portal_nav"  # set by navigation.py once Explore is a page links may name
LOCAL_BANNER = "Sign-in is off: local mode, everyone here is the local admin"
# The favicon, drawn here: Streamlit fetches a `:material/...:` page icon's favicon from
# fonts.gstatic.com (its frontend builds that URL), and the portal asks nothing of any host
# but its own. An SVG becomes a data: URL in the page itself.
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
    '<rect width="24" height="24" rx="5" fill="#1f4e79"/>'
    '<path d="M6 12.5l4 4 8-9" fill="none" stroke="#fff" stroke-width="2.6" '
    'stroke-linecap="round" stroke-linejoin="round"/></svg>'
)
CACHE_TTL = 30  # seconds: new records show up within half a minute
CACHE_ENTRIES = 256


def ctx() -> Context:
    """The context the server built at start-up (settings, engine, mode)."""
    return context.current()


def auth_on() -> bool:
    """True when `[auth]` is configured, so people sign in with OIDC."""
    try:
        return access.auth_configured(st.secrets)
    except Exception:  # noqa: BLE001 - no secrets file at all means no [auth]
        return False


def source_ip() -> str:
    try:
        ip = st.context.ip_address
    except Exception:  # noqa: BLE001 - not available outside a browser session
        return ""
    return ip if isinstance(ip, str) else ""  # AppTest's stand-in is not a string


def local_principal() -> Principal:
    return replace(LOCAL_ADMIN, source_ip=source_ip() or LOCAL_ADMIN.source_ip)


def frame(*, admins_only: bool = False) -> Principal:
    """Open a page: who is acting (from navigation.py), the sidebar, the mode banners.

    Each page calls this first, so the banner and identity are on every page. A page
    for admins refuses anyone else and stops.
    """
    who = st.session_state.get(PRINCIPAL_KEY)
    if not isinstance(who, Principal):
        st.error("You are not signed in.")
        st.stop()
    signed_in = bool(st.session_state.get(SIGNED_IN_KEY))
    with st.sidebar:
        # Who is here, as literal text: an email in Markdown would become a mailto: link.
        st.markdown(views.code(who.email) if signed_in else "**Local admin**")
        st.caption(f"Role: {views.md(who.role)}")
        st.caption(f"Namespaces: {views.md(views.describe_namespaces(who.namespaces))}")
        if signed_in and st.button("Sign out", key="portal_sign_out"):
            st.logout()
        _saved_view_links(who)
    if not auth_on():
        st.info(LOCAL_BANNER, icon=":material/lock_open:")
    if ctx().demo:
        st.caption("Demo data: generated records, because no AUDIT_DATABASE_URL is configured.")
    if admins_only and not who.is_admin:
        st.error("This page is for portal admins.")
        st.stop()
    return who


def _saved_view_links(who: Principal) -> None:
    """The views `who` saved (an admin: everyone's), each a link reopening Explore with it.

    Names and owners are shown literally. Only under navigation.py: a page run on its own
    has no Explore page to link to.
    """
    if not st.session_state.get(NAV_KEY):
        return
    with ctx().engine.connect() as conn:
        found = saved_views.list_for(conn, who)
    st.markdown("**Saved views**")
    if not found:
        st.caption("None yet: name and save a filter on Explore.")
    for view in found:
        label = views.md(views.view_label(view.name, view.owner, who))
        st.page_link(
            "pages/explore.py",
            label=label,
            icon=":material/bookmark:",
            query_params={views.VIEW_PARAM: view.view_id},
            help=label,  # a link's label stays on one line: a long name is whole here
            width="stretch",
        )


def refused(who: Principal, message: str, what: str) -> None:
    """Show a refusal beside the widget and audit it once per session and message.

    The message may quote what was asked for (a namespace from the URL): shown literally.
    """
    st.error(views.md(message))
    seen: set[str] = st.session_state.setdefault("portal_refusals", set())
    if message not in seen:
        seen.add(message)
        c = ctx()
        access.denied(
            c.engine, who.email, who.role, f"ui {what}: {message}", who.source_ip, c.settings
        )


# --------------------------------------------------------------------------
# Cached reads, keyed by database, principal and filter (never by session).
# --------------------------------------------------------------------------


def _who_key(who: Principal) -> tuple[str, str, tuple[str, ...] | None]:
    ns = None if who.namespaces is None else tuple(sorted(who.namespaces))
    return who.email, who.role, ns


def _who(key: tuple[str, str, tuple[str, ...] | None]) -> Principal:
    email, role, ns = key
    return Principal(email, role, None if ns is None else frozenset(ns))


@st.cache_data(ttl=CACHE_TTL, max_entries=CACHE_ENTRIES, show_spinner=False)
def _explore(url: str, who: Any, flt: str) -> views.ExploreData:
    return views.explore_data(ctx().engine, _who(who), AuditFilter.from_json(flt))


@st.cache_data(ttl=CACHE_TTL, max_entries=CACHE_ENTRIES, show_spinner=False)
def _histogram(url: str, who: Any, flt: str, bucket: str, by: str) -> list[tuple[int, str, int]]:
    with ctx().engine.connect() as conn:
        return service.histogram(conn, _who(who), AuditFilter.from_json(flt), bucket=bucket, by=by)


@st.cache_data(ttl=CACHE_TTL, max_entries=CACHE_ENTRIES, show_spinner=False)
def _preview(url: str, who: Any, flt: str, after: str | None) -> query.Page:
    with ctx().engine.connect() as conn:
        return service.preview(conn, _who(who), AuditFilter.from_json(flt), after=after)


@st.cache_data(ttl=CACHE_TTL, max_entries=CACHE_ENTRIES, show_spinner=False)
def _record(url: str, who: Any, record_id: str) -> dict[str, str] | None:
    return views.record_by_id(ctx().engine, _who(who), record_id)


@st.cache_data(ttl=60, max_entries=CACHE_ENTRIES, show_spinner=False)
def _pickers(url: str, who: Any) -> dict[str, list[str]]:
    return views.pickers(ctx().engine, _who(who))


def explore(who: Principal, flt: AuditFilter) -> views.ExploreData:
    """Summary, facets, daily or hourly activity by family, and the newest page."""
    return _explore(ctx().settings.database_url, _who_key(who), flt.to_json())


def histogram(who: Principal, flt: AuditFilter, bucket: str, by: str) -> list[tuple[int, str, int]]:
    return _histogram(ctx().settings.database_url, _who_key(who), flt.to_json(), bucket, by)


def preview(who: Principal, flt: AuditFilter, after: str | None) -> query.Page:
    return _preview(ctx().settings.database_url, _who_key(who), flt.to_json(), after)


def record(who: Principal, record_id: str) -> dict[str, str] | None:
    """The record with this id if `who` may see it; None for an unknown id and for one
    outside the grants alike."""
    return _record(ctx().settings.database_url, _who_key(who), record_id)


def pickers(who: Principal) -> dict[str, list[str]]:
    """Choices for the filter widgets: the actions, users and namespaces the principal sees."""
    return _pickers(ctx().settings.database_url, _who_key(who))


def forget_reads() -> None:
    """Drop cached reads (after an ingest changes the log)."""
    for fn in (_explore, _histogram, _preview, _record, _pickers):
        fn.clear()
