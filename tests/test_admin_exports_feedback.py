"""Feedback you can see: Admin confirms every change after its rerun; job cards say when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, update
from streamlit.testing.v1 import AppTest

from audit_core import access, context, jobs, service, views
from audit_core.access import LOCAL_ADMIN, UserInfo
from audit_core.errors import UnauthorizedError
from audit_core.filters import AuditFilter
from audit_core.worker import Worker

from .conftest import add_demo
from .markup import rendered
from .test_pages import (
    ADMIN,
    HOSTILE,
    LINKED_EMAIL,
    app,
    assert_literal,
    button,
    has_button,
    no_exception,
    portal_env,  # noqa: F401 - the fixture, named by `page`
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
page = pytest.mark.usefixtures("portal_env")  # a page test: the context on the test database


def admin_page() -> AppTest:
    """The Admin page for the local admin."""
    at = app().run()
    return at.switch_page("pages/admin.py").run()


def texts(elements: Any) -> list[str]:
    """What each Markdown element shows, escapes undone."""
    return [rendered(e.value).text for e in elements]


def save_user(at: AppTest, email: str, role: str, grants: str) -> AppTest:
    """Fill the user form and save it."""
    at.text_input(key="admin_user_email").set_value(email)
    at.selectbox(key="admin_user_role").set_value(role)
    at.text_input(key="admin_user_ns").set_value(grants)
    saved: AppTest = button(at, "Save user").click().run()
    return saved


def confirmed(at: AppTest) -> list[str]:
    """The persistent success lines, checked to be the toasts' messages too."""
    shown = texts(at.success)
    assert texts(at.toast) == shown
    return shown


def frame_column(at: AppTest, column: str, table: str) -> list[str]:
    """A column of the users table ('email') or the tokens table ('prefix')."""
    (frame,) = [d.value for d in at.dataframe if table in d.value.columns]
    return [str(v) for v in frame[column]]


# ---------------------------------------------------------------------------- users


@page
def test_a_saved_user_is_confirmed_after_the_rerun_once(engine: Engine) -> None:
    at = save_user(admin_page(), "new@example.com", "viewer", "production, staging")
    no_exception(at)
    assert confirmed(at) == ["Added new@example.com as viewer on production, staging."]
    assert frame_column(at, "email", "email") == ["new@example.com"]
    at.run()
    assert not at.success and not at.toast  # one-shot


@page
def test_changing_a_role_and_grants_says_what_changed(engine: Engine) -> None:
    access.upsert_user(engine, "pat@example.com", "viewer", "production", ADMIN)
    at = save_user(admin_page(), "Pat@Example.com", "auditor", "production,staging")
    no_exception(at)
    assert confirmed(at) == [
        "Saved pat@example.com: role viewer → auditor; namespaces production → production, staging."
    ]
    at = save_user(at, "pat@example.com", "auditor", "staging,production")
    assert confirmed(at) == [
        "No change: pat@example.com is already auditor on production, staging."
    ]


@page
def test_a_refused_save_keeps_the_input_and_confirms_nothing(engine: Engine) -> None:
    at = save_user(admin_page(), "new@example.com", "admin", "production")
    no_exception(at)
    assert texts(at.error) == ["an admin sees every namespace: grant '*'"]
    assert not at.success and not at.toast
    assert at.text_input(key="admin_user_email").value == "new@example.com"
    assert at.selectbox(key="admin_user_role").value == "admin"
    assert at.text_input(key="admin_user_ns").value == "production"
    with engine.connect() as conn:
        assert access.list_users(conn) == []


@page
def test_removing_a_user_confirms_and_drops_them_from_the_token_form(engine: Engine) -> None:
    for email in ("ann@example.com", "bob@example.com"):
        access.upsert_user(engine, email, "auditor", "*", ADMIN)
    at = admin_page()
    assert at.selectbox(key="admin_token_email").options == ["ann@example.com", "bob@example.com"]
    at.selectbox(key="admin_remove_pick").set_value("bob@example.com").run()
    button(at, "Remove").click().run()
    no_exception(at)
    assert confirmed(at) == [
        "Removed bob@example.com: they can no longer sign in, and their API tokens "
        "stop working now."
    ]
    assert frame_column(at, "status", "email") == ["active", "removed"]
    assert at.selectbox(key="admin_token_email").options == ["ann@example.com"]
    assert at.selectbox(key="admin_remove_pick").options == ["ann@example.com"]


# ---------------------------------------------------------------------------- tokens


@page
def test_a_new_token_is_shown_once_with_a_warning_and_listed(engine: Engine) -> None:
    access.upsert_user(engine, "new@example.com", "auditor", "*", ADMIN)
    at = admin_page()
    at.selectbox(key="admin_token_email").set_value("new@example.com")
    button(at, "Create token").click().run()
    no_exception(at)
    (token,) = [c.value for c in at.code]
    prefix = access.token_prefix(token)
    assert access.authenticate_token(engine, token).email == "new@example.com"
    (message,) = confirmed(at)
    assert message.startswith(f"Created API token {prefix} for new@example.com; it expires ")
    assert [w.value for w in at.warning] == [views.TOKEN_SHOWN_ONCE]
    assert "shown only once" in views.TOKEN_SHOWN_ONCE
    assert frame_column(at, "prefix", "prefix") == [prefix]
    at.run()
    assert not at.code and not at.warning and not at.success  # shown once
    assert frame_column(at, "prefix", "prefix") == [prefix]  # and still listed


@page
def test_a_token_needs_a_user_picked_from_the_list(engine: Engine) -> None:
    at = admin_page()
    assert not has_button(at, "Create token")  # no one to issue a token to yet
    assert any("add one above first" in c.value for c in at.caption)
    access.upsert_user(engine, "new@example.com", "auditor", "*", ADMIN)
    at.run()
    button(at, "Create token").click().run()
    no_exception(at)
    assert texts(at.error) == ["Choose the user the token is for."]
    assert not at.code and not at.success
    with engine.connect() as conn:
        assert access.list_tokens(conn, LOCAL_ADMIN) == []


@page
def test_revoking_a_token_confirms_and_stops_it(engine: Engine) -> None:
    access.upsert_user(engine, "new@example.com", "auditor", "*", ADMIN)
    token, info = access.create_token(engine, "new@example.com", ADMIN)
    at = admin_page()
    at.selectbox(key="admin_revoke_pick").set_value(info.prefix).run()
    button(at, "Revoke").click().run()
    no_exception(at)
    assert confirmed(at) == [
        f"Revoked API token {info.prefix} of new@example.com: it stops working now."
    ]
    assert frame_column(at, "status", "prefix")[0].startswith("revoked ")
    with pytest.raises(UnauthorizedError, match="revoked"):
        access.authenticate_token(engine, token)


@page
def test_confirmations_show_people_and_grants_literally(engine: Engine) -> None:
    at = save_user(admin_page(), LINKED_EMAIL, "viewer", HOSTILE["namespace"])
    assert_literal(at, LINKED_EMAIL.lower(), HOSTILE["namespace"])
    at.selectbox(key="admin_token_email").set_value(LINKED_EMAIL.lower())
    button(at, "Create token").click().run()
    assert any(LINKED_EMAIL.lower() in m for m in confirmed(at))
    assert_literal(at, LINKED_EMAIL.lower())


# ---------------------------------------------------------------------------- job cards


def set_job(engine: Engine, job_id: str, **values: Any) -> None:
    """Put a job's row in a given state (times, progress) as a worker would have."""
    with engine.begin() as conn:
        conn.execute(update(jobs.J).where(jobs.J.c.job_id == job_id).values(**values))


def queue(engine: Engine) -> jobs.JobInfo:
    """Queue an export of every record, for the local admin."""
    with engine.connect() as conn:
        plan = service.plan_export(conn, LOCAL_ADMIN, AuditFilter(), "csv")
    return jobs.enqueue(engine, plan, LOCAL_ADMIN, context.current().settings)


def exports_page() -> AppTest:
    at = app().run()
    return at.switch_page("pages/exports.py").run()


@page
def test_a_completed_card_shows_when_it_was_requested_started_and_completed(engine: Engine) -> None:
    add_demo(engine, 400)
    job = queue(engine)
    Worker(engine, context.current().settings).run_until_idle()
    set_job(
        engine,
        job.job_id,
        created_at=T0,
        started_at=T0 + timedelta(minutes=5),
        finished_at=T0 + timedelta(minutes=17, seconds=30),
    )
    at = exports_page()
    no_exception(at)
    assert (
        "Requested 2026-03-01 09:00 UTC · started 2026-03-01 09:05 UTC · "
        "completed 2026-03-01 09:17 UTC (took 12m 30s)"
    ) in texts(at.caption)
    assert job.filter_text.startswith("Before ")
    assert job.filter_text in texts(at.caption)  # the filter in words


@page
def test_a_running_card_shows_rows_written_and_time_running(engine: Engine) -> None:
    add_demo(engine, 400)
    job = queue(engine)
    now = datetime.now(UTC)
    set_job(
        engine,
        job.job_id,
        state="processing",
        started_at=now - timedelta(seconds=75),
        lease_owner="elsewhere",
        lease_expires_at=now + timedelta(minutes=5),
        rows_written=123,
    )
    at = exports_page()
    no_exception(at)
    (bar,) = at.get("progress")
    text = rendered(bar.proto.text).text
    assert text.startswith("123 of 400 rows (30%) · running 1m 1")  # 1m 15s, give or take
    assert bar.proto.value == 30
    assert any(c.startswith("Requested ") and " · started " in c for c in texts(at.caption))


@page
def test_cancelling_a_job_is_confirmed_after_the_rerun(engine: Engine) -> None:
    add_demo(engine, 400)
    job = queue(engine)
    at = exports_page()
    (bar,) = at.get("progress")
    assert rendered(bar.proto.text).text.startswith("Waiting for a worker · waiting ")
    button(at, "Cancel").click().run()
    no_exception(at)
    assert confirmed(at) == [f"Cancelled {job.job_id}."]
    at.run()
    assert not at.success


# ---------------------------------------------------------------------------- the texts


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-3, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m 00s"), (3599, "59m 59s"), (7440, "2h 04m")],
)
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    assert views.duration(seconds) == text


def job(state: str, **times: datetime | None) -> jobs.JobInfo:
    """A job in `state` with the given times (the rest as a fresh queued job)."""
    fields: dict[str, Any] = dict.fromkeys(jobs.JobInfo.__dataclass_fields__)
    fields.update(job_id="export-20260301-001", requested_by="ann@example.com", format="csv")
    fields.update(compression="none", estimated_records=200, rows_written=0, attempts=0)
    fields.update(filter_text="All records", created_at=T0, state=state, **times)
    return jobs.JobInfo(**fields)


STARTED, ENDED = T0 + timedelta(seconds=30), T0 + timedelta(minutes=2)


@pytest.mark.parametrize(
    ("state", "times", "expected", "elapsed"),
    [
        ("queued", {}, "Requested 2026-03-01 09:00 UTC", "waiting 5m 00s"),
        # a retry waiting: the failed attempt's start is not this run's
        ("queued", {"started_at": STARTED}, "Requested 2026-03-01 09:00 UTC", "waiting 5m 00s"),
        (
            "processing",
            {"started_at": STARTED},
            "Requested 2026-03-01 09:00 UTC · started 2026-03-01 09:00 UTC",
            "running 4m 30s",
        ),
        (
            "failed",
            {"started_at": STARTED, "finished_at": ENDED},
            "Requested 2026-03-01 09:00 UTC · started 2026-03-01 09:00 UTC · "
            "failed 2026-03-01 09:02 UTC",
            "took 1m 30s",
        ),
        (
            "cancelled",
            {"finished_at": ENDED},
            "Requested 2026-03-01 09:00 UTC · cancelled 2026-03-01 09:02 UTC",
            "",
        ),
        (
            "expired",
            {"started_at": STARTED, "finished_at": ENDED},
            "Requested 2026-03-01 09:00 UTC · started 2026-03-01 09:00 UTC · "
            "completed 2026-03-01 09:02 UTC",
            "took 1m 30s",
        ),
    ],
)
def test_job_times_name_the_steps_reached(
    state: str, times: dict[str, datetime], expected: str, elapsed: str
) -> None:
    j = job(state, **times)
    assert views.job_times(j) == expected
    assert views.job_elapsed(j, now=T0 + timedelta(minutes=5)) == elapsed


def user(role: str, grants: frozenset[str] | None, active: bool = True) -> UserInfo:
    return UserInfo("pat@example.com", role, grants, active, T0, T0)


@pytest.mark.parametrize(
    ("before", "after", "text"),
    [
        (None, user("admin", None), "Added pat@example.com as admin on every namespace."),
        (
            user("viewer", frozenset({"a"}), active=False),
            user("viewer", frozenset({"a"})),
            "Re-added pat@example.com as viewer on a.",
        ),
        (
            user("viewer", frozenset({"a"})),
            user("viewer", frozenset({"a", "b"})),
            "Saved pat@example.com: namespaces a → a, b.",
        ),
        (
            user("auditor", frozenset({"a"})),
            user("admin", None),
            "Saved pat@example.com: role auditor → admin; namespaces a → every namespace.",
        ),
    ],
)
def test_a_saved_user_message_says_what_changed(
    before: UserInfo | None, after: UserInfo, text: str
) -> None:
    assert rendered(views.user_saved_message(before, after)).text == text
