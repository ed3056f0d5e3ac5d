"""Saved views: named filters kept in the database, shared by link, never wider than whoever
opens them, every save and delete in the audit log. The library, the migration, and the
Explore page and sidebar under AppTest, on both engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import streamlit as st
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, delete, inspect, select
from streamlit.testing.v1 import AppTest

from audit_core import access, query, saved_views, service
from audit_core.access import LOCAL_ADMIN, AccessDeniedError, Principal
from audit_core.config import Settings
from audit_core.db import MIGRATIONS_DIR, make_engine, migrate
from audit_core.filters import AuditFilter
from audit_core.models import AUDIT, SAVED_VIEWS
from audit_core.saved_views import SavedViewError, SavedViewNotFoundError

from .conftest import add_demo, installed
from .markup import rendered
from .test_pages import (
    ADMIN,
    LIMIT,
    app,
    assert_literal,
    button,
    count,
    matching,
    no_exception,
    signed_in,
)

VIEWER = Principal("vera@example.com", "viewer", frozenset({"production"}), "10.0.0.7")
AUDITOR = Principal("ann@example.com", "auditor", frozenset({"production", "payments"}))
PAYMENTS = AuditFilter.parse(action="user.*", namespace="payments")
EVERYWHERE = AuditFilter.parse(action="user.*")


@pytest.fixture(autouse=True)
def no_views(engine: Engine) -> Iterator[None]:
    """No saved view before or after each test: the session's PostgreSQL database keeps
    rows that conftest.reset does not know of yet."""
    with engine.begin() as conn:
        conn.execute(delete(SAVED_VIEWS))
    yield
    with engine.begin() as conn:
        conn.execute(delete(SAVED_VIEWS))


@pytest.fixture
def portal_env(settings: Settings, engine: Engine) -> Iterator[Settings]:
    """Install a context on the test database for the pages (as tests/test_pages.py does)."""
    settings = replace(settings, sync_export_limit=LIMIT)
    st.cache_resource.clear()
    st.cache_data.clear()
    with installed(settings):
        yield settings
    st.cache_resource.clear()
    st.cache_data.clear()


def logged(engine: Engine, action: str) -> list[tuple[str, str, str, str]]:
    """(user, role, resource, resourceType) of the log's records with this action."""
    t = AUDIT
    stmt = select(t.c.user, t.c.role, t.c.resource, t.c.resourceType).where(t.c.action == action)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt.order_by(t.c.seq))]  # type: ignore[misc]


def views_of(engine: Engine, who: Principal) -> list[str]:
    with engine.connect() as conn:
        return [v.name for v in saved_views.list_for(conn, who)]


# ---------------------------------------------------------------------------- the library


def test_a_view_is_saved_listed_opened_and_deleted_each_audited(
    engine: Engine, settings: Settings
) -> None:
    view = saved_views.create(engine, ADMIN, "  Payments logins  ", PAYMENTS, settings=settings)
    assert view.name == "Payments logins" and view.owner == ADMIN.email
    assert len(view.view_id) >= 16  # random: one link does not lead to another
    with engine.connect() as conn:
        got = saved_views.get(conn, ADMIN, view.view_id)
    assert (got.view_id, got.owner, got.name, got.filter) == (
        view.view_id,
        ADMIN.email,
        "Payments logins",
        PAYMENTS,
    )
    assert views_of(engine, ADMIN) == ["Payments logins"]
    (saved,) = logged(engine, "portal.view.save")
    assert saved[:2] == (ADMIN.email, "admin")
    assert saved[2].startswith(f"{view.view_id}: 'Payments logins' of {ADMIN.email}: ")
    assert saved[2].endswith(PAYMENTS.describe())
    assert saved[3] == "SavedView"
    saved_views.delete(engine, ADMIN, view.view_id, settings=settings)
    assert views_of(engine, ADMIN) == []
    (deleted,) = logged(engine, "portal.view.delete")
    assert deleted[0] == ADMIN.email and deleted[3] == "SavedView"
    assert deleted[2].startswith(view.view_id)
    with engine.connect() as conn, pytest.raises(SavedViewNotFoundError):
        saved_views.get(conn, ADMIN, view.view_id)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "give the view a name"),
        ("   ", "give the view a name"),
        ("x" * 81, "at most 80 characters"),
        ("two\nlines", "control or invisible"),
        ("tab\there", "control or invisible"),
        ("nul\x00", "control or invisible"),
        ("del\x7f", "control or invisible"),
        ("c1\x85", "control or invisible"),
        ("evil\u202etxt.exe", "control or invisible"),  # a right-to-left override
        ("zero\u200bwidth", "control or invisible"),
        ("line\u2028sep", "control or invisible"),
    ],
)
def test_a_bad_name_is_refused_and_nothing_is_written(
    engine: Engine, name: str, message: str
) -> None:
    with pytest.raises(SavedViewError, match=message):
        saved_views.create(engine, ADMIN, name, EVERYWHERE)
    assert views_of(engine, ADMIN) == []
    assert logged(engine, "portal.view.save") == []


def test_names_may_be_any_script_and_80_characters(engine: Engine) -> None:
    for name in ("Überwachung März", "監査ログ", "x" * 80, "**not bold** [x](y)"):
        saved_views.create(engine, ADMIN, name, EVERYWHERE)
    assert len(views_of(engine, ADMIN)) == 4


def test_one_name_once_per_owner(engine: Engine) -> None:
    saved_views.create(engine, ADMIN, "Logins", EVERYWHERE)
    with pytest.raises(SavedViewError, match="already have a view named 'Logins'"):
        saved_views.create(engine, ADMIN, "Logins", PAYMENTS)
    saved_views.create(engine, AUDITOR, "Logins", PAYMENTS)  # another owner may
    assert views_of(engine, AUDITOR) == ["Logins"]


def test_no_one_saves_a_filter_they_may_not_read(engine: Engine) -> None:
    with pytest.raises(AccessDeniedError, match="no access to namespace payments"):
        saved_views.create(engine, VIEWER, "Not mine", PAYMENTS)
    assert views_of(engine, ADMIN) == []


def test_opening_a_view_never_widens_the_openers_grants(engine: Engine) -> None:
    add_demo(engine, 600)
    narrow = saved_views.create(engine, ADMIN, "Payments", PAYMENTS)
    wide = saved_views.create(engine, ADMIN, "Everywhere", EVERYWHERE)
    with engine.connect() as conn:
        with pytest.raises(AccessDeniedError, match="no access to namespace payments"):
            saved_views.get(conn, VIEWER, narrow.view_id)
        assert saved_views.get(conn, AUDITOR, narrow.view_id).filter == PAYMENTS
        opened = saved_views.get(conn, VIEWER, wide.view_id)
        # Read as every read is: only the viewer's namespaces.
        theirs = service.count(conn, VIEWER, opened.filter)
        everything = service.count(conn, ADMIN, opened.filter)
        production = query.count(conn, EVERYWHERE.with_namespaces(["production"]))
    assert theirs == production < everything


def test_only_the_owner_or_an_admin_deletes(engine: Engine, settings: Settings) -> None:
    mine = saved_views.create(engine, AUDITOR, "Mine", PAYMENTS, settings=settings)
    with pytest.raises(AccessDeniedError, match="only its owner or an admin"):
        saved_views.delete(engine, VIEWER, mine.view_id, settings=settings)
    assert views_of(engine, AUDITOR) == ["Mine"]
    assert logged(engine, "portal.view.delete") == []
    saved_views.delete(engine, ADMIN, mine.view_id, settings=settings)
    assert views_of(engine, AUDITOR) == []
    (deleted,) = logged(engine, "portal.view.delete")
    assert deleted[0] == ADMIN.email  # the admin who deleted it, not its owner
    assert f"of {AUDITOR.email}" in deleted[2]


def test_people_list_their_own_views_and_admins_everyones(engine: Engine) -> None:
    saved_views.create(engine, AUDITOR, "b", PAYMENTS)
    saved_views.create(engine, AUDITOR, "a", EVERYWHERE)
    saved_views.create(engine, ADMIN, "z", EVERYWHERE)
    saved_views.create(engine, VIEWER, "v", EVERYWHERE)
    assert views_of(engine, AUDITOR) == ["a", "b"]
    assert views_of(engine, VIEWER) == ["v"]
    with engine.connect() as conn:
        listed = [(v.owner, v.name) for v in saved_views.list_for(conn, ADMIN)]
    assert listed == [
        (ADMIN.email, "z"),
        (AUDITOR.email, "a"),
        (AUDITOR.email, "b"),
        (VIEWER.email, "v"),
    ]


@pytest.mark.parametrize("view_id", ["", "nope", "x" * 500, "' OR 1=1 --"])
def test_an_unknown_view_is_not_found(engine: Engine, view_id: str) -> None:
    with engine.connect() as conn, pytest.raises(SavedViewNotFoundError):
        saved_views.get(conn, ADMIN, view_id)
    with pytest.raises(SavedViewNotFoundError):
        saved_views.delete(engine, ADMIN, view_id)


def test_the_migration_adds_and_drops_the_table(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/fresh.db")
    migrate(engine)
    assert "saved_views" in inspect(engine).get_table_names()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    assert "saved_views" not in inspect(engine).get_table_names()
    migrate(engine)
    saved_views.create(engine, LOCAL_ADMIN, "After a round trip", EVERYWHERE)
    engine.dispose()


# ---------------------------------------------------------------------------- the page


def sidebar_links(at: AppTest) -> list[tuple[str, str]]:
    """The sidebar's saved-view links: (label as shown, query string)."""
    links = [n for n in at.sidebar if n.type == "page_link"]
    return [(rendered(n.proto.label).text, n.proto.query_string) for n in links]


def save_view(at: AppTest, name: str) -> AppTest:
    at.text_input(key="explore_view_name").set_value(name)
    return button(at, "Save view").click().run()


def only_view(engine: Engine) -> saved_views.SavedView:
    with engine.connect() as conn:
        (view,) = saved_views.list_for(conn, LOCAL_ADMIN)
    return view


def test_save_a_filter_and_find_it_in_the_sidebar(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 500)
    at = app(query_params={"action": "user.*"}).run()
    assert sidebar_links(at) == []
    save_view(at, "User changes")
    no_exception(at)
    view = only_view(engine)
    assert (view.name, view.owner, view.filter) == (
        "User changes",
        LOCAL_ADMIN.email,
        AuditFilter.parse(action="user.*"),
    )
    assert any("Saved view User changes" in rendered(s.value).text for s in at.success)
    assert sidebar_links(at) == [("User changes", f"view={view.view_id}")]
    assert at.text_input(key="explore_view_name").value == ""
    assert any(f"?view={view.view_id}" in c.value for c in at.code)  # its link to share
    assert [r[0] for r in logged(engine, "portal.view.save")] == [LOCAL_ADMIN.email]


def test_a_bad_name_is_told_on_the_page(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 50)
    at = save_view(app().run(), "bad\u202ename")
    no_exception(at)
    assert any("control or invisible" in rendered(e.value).text for e in at.error)
    assert sidebar_links(at) == []


def test_a_view_link_reopens_explore_with_its_filter(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 700)
    with engine.connect() as conn:
        ns = query.distinct_values(conn, "namespace")[0]
    flt = AuditFilter.parse(start="2020-01-01", action="runbook.*", namespace=ns)
    view = saved_views.create(engine, ADMIN, "Runbooks", flt)
    at = app(query_params={"view": view.view_id}).run()
    no_exception(at)
    assert at.multiselect(key="explore_action").value == ["runbook.*"]
    assert at.multiselect(key="explore_namespace").value == [ns]
    assert at.text_input(key="explore_from").value == "2020-01-01T00:00:00Z"
    assert matching(at) == count(engine, LOCAL_ADMIN, **flt.to_params()) > 0
    assert dict(at.query_params) == flt.to_params()  # the URL now says what is applied
    assert any(f"Saved view Runbooks by {ADMIN.email}" in rendered(i.value).text for i in at.info)
    # Changed, then opened again from its link in the same session: applied again.
    at.multiselect(key="explore_action").set_value([])
    button(at, "Apply filters").click().run()
    assert matching(at) > count(engine, LOCAL_ADMIN, **flt.to_params())
    at.query_params["view"] = view.view_id
    at.run()
    assert at.multiselect(key="explore_action").value == ["runbook.*"]
    assert matching(at) == count(engine, LOCAL_ADMIN, **flt.to_params())


@pytest.mark.parametrize("view_id", ["deleted-or-never", "x" * 300])
def test_a_link_to_no_view_says_so(portal_env: Settings, engine: Engine, view_id: str) -> None:
    add_demo(engine, 50)
    at = app(query_params={"view": view_id}).run()
    no_exception(at)
    assert any("No saved view" in rendered(e.value).text for e in at.error)
    assert matching(at) == 50  # the filter is left as it was
    assert "view" not in at.query_params


def test_an_admins_shared_view_of_a_namespace_a_viewer_lacks_is_refused(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 400)
    access.upsert_user(engine, VIEWER.email, "viewer", "production", ADMIN)
    view = saved_views.create(engine, ADMIN, "Payments", PAYMENTS)
    at = app(user=signed_in(VIEWER.email), query_params={"view": view.view_id}).run()
    no_exception(at)
    assert any("no access to namespace payments" in rendered(e.value).text for e in at.error)
    assert at.multiselect(key="explore_namespace").value == []  # nothing of the view applied
    viewer = Principal(VIEWER.email, "viewer", frozenset({"production"}))
    assert matching(at) == count(engine, viewer)
    refusals = [r for r in logged(engine, "portal.access_denied") if r[0] == VIEWER.email]
    assert len(refusals) == 1 and view.view_id in refusals[0][2]
    assert sidebar_links(at) == []  # not theirs: not listed


def test_a_shared_view_of_every_namespace_shows_a_viewer_only_theirs(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 400)
    access.upsert_user(engine, VIEWER.email, "viewer", "production", ADMIN)
    view = saved_views.create(engine, ADMIN, "Logins", EVERYWHERE)
    at = app(user=signed_in(VIEWER.email), query_params={"view": view.view_id}).run()
    no_exception(at)
    viewer = Principal(VIEWER.email, "viewer", frozenset({"production"}))
    assert matching(at) == count(engine, viewer, action="user.*")
    assert matching(at) < count(engine, ADMIN, action="user.*")


def test_the_owner_deletes_a_view_from_explore(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 100)
    view = saved_views.create(engine, LOCAL_ADMIN, "Old", EVERYWHERE)
    at = app().run()
    assert sidebar_links(at) == [("Old", f"view={view.view_id}")]
    button(at, "Delete view").click().run()
    no_exception(at)
    assert views_of(engine, LOCAL_ADMIN) == []
    assert sidebar_links(at) == []
    assert any("Deleted view Old" in rendered(s.value).text for s in at.success)
    (deleted,) = logged(engine, "portal.view.delete")
    assert deleted[0] == LOCAL_ADMIN.email


def test_a_non_owner_is_offered_no_delete_and_refused_one(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 100)
    access.upsert_user(engine, ADMIN.email, "admin", "*", ADMIN)
    access.upsert_user(engine, "ada@example.com", "admin", "*", ADMIN)
    access.upsert_user(engine, AUDITOR.email, "auditor", "production,payments", ADMIN)
    view = saved_views.create(engine, ADMIN, "Shared", PAYMENTS)
    # Shared with an auditor by its link: opened, its link shown, Delete greyed out.
    at = app(user=signed_in(AUDITOR.email), query_params={"view": view.view_id}).run()
    no_exception(at)
    assert any(f"?view={view.view_id}" in c.value for c in at.code)
    assert button(at, "Delete view").disabled
    assert "Only its owner or an admin" in button(at, "Delete view").help
    # An admin, demoted while the page is open, clicks the Delete they were offered.
    at = app(user=signed_in("ada@example.com"), query_params={"view": view.view_id}).run()
    offered = button(at, "Delete view")
    assert not offered.disabled
    access.upsert_user(engine, "ada@example.com", "auditor", "production,payments", ADMIN)
    # The server's navigation.py resolves who is acting on every run; AppTest reruns only
    # the page (a pages/ folder sits beside the script), so set what it would resolve.
    at.session_state["portal_principal"] = Principal(
        "ada@example.com", "auditor", frozenset({"production", "payments"})
    )
    offered.click().run()
    no_exception(at)
    # The page asks the library with who they are now: the button is disabled for them,
    # so Streamlit drops the click (and saved_views.delete would refuse it: tested above).
    assert views_of(engine, ADMIN) == ["Shared"]
    assert logged(engine, "portal.view.delete") == []
    assert button(at, "Delete view").disabled


def test_an_admin_sees_and_deletes_everyones_views(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 100)
    access.upsert_user(engine, AUDITOR.email, "auditor", "production,payments", ADMIN)
    saved_views.create(engine, AUDITOR, "Theirs", PAYMENTS)
    at = app().run()  # local mode: the local admin
    assert [label for label, _ in sidebar_links(at)] == [f"Theirs · {AUDITOR.email}"]
    button(at, "Delete view").click().run()
    assert views_of(engine, AUDITOR) == []
    (deleted,) = logged(engine, "portal.view.delete")
    assert deleted[0] == LOCAL_ADMIN.email


def test_view_names_and_owners_show_as_literal_text(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 50)
    hostile = "**Verified** [open](https://evil.example/x) mallory@evil.example :smile:"
    saved_views.create(engine, LOCAL_ADMIN, hostile, EVERYWHERE)
    at = app().run()
    assert sidebar_links(at)[0][0] == hostile
    assert_literal(at, hostile)
    view = only_view(engine)
    at = app(query_params={"view": view.view_id}).run()
    assert_literal(at, hostile)
