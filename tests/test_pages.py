"""The portal's pages under Streamlit's AppTest, on both engines, for every role."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import Engine, func, select
from streamlit.testing.v1 import AppTest

from audit_core import access, context, jobs, offline_verify, query, service, signing, store, views
from audit_core.access import LOCAL_ADMIN, Principal
from audit_core.config import Settings
from audit_core.demo import generate
from audit_core.filters import AuditFilter
from audit_core.formats import jsonl_chunks
from audit_core.models import AuditRecord
from audit_core.record import FIELDS, normalize
from audit_core.worker import Worker

from .conftest import add_demo, installed, seed_record
from .markup import rendered

ROOT = Path(__file__).resolve().parents[1]
NAV = str(ROOT / "navigation.py")
LIMIT = 300  # immediate download limit in these tests
AUTH = {
    "auth": {
        "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
        "cookie_secret": "test-cookie-secret",
        "client_id": "portal",
        "client_secret": "secret",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
    }
}
ADMIN = Principal("boss@example.com", "admin", None, "127.0.0.1")


@pytest.fixture
def portal_env(settings: Settings, engine: Engine) -> Iterator[Settings]:
    """Install a context on the test database for the pages, with a small download limit."""
    settings = replace(settings, sync_export_limit=LIMIT)
    st.cache_resource.clear()
    st.cache_data.clear()
    with installed(settings):
        yield settings
    st.cache_resource.clear()
    st.cache_data.clear()


def app(user: dict[str, Any] | None = None, query_params: dict[str, str] | None = None) -> AppTest:
    """An AppTest of the navigation script: local mode, or [auth] with `user` signed in."""
    at = AppTest.from_file(NAV, default_timeout=60)
    if user is not None:
        at.secrets = json.loads(json.dumps(AUTH))
        at.user = user
    if query_params:
        at.query_params.update(query_params)
    return at


def signed_in(email: str) -> dict[str, Any]:
    return {"is_logged_in": True, "email": email}


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def matching(at: AppTest) -> int:
    return int(metric(at, "Matching records").replace(",", ""))


def button(at: AppTest, label: str) -> Any:
    return next(b for b in at.button if b.label == label)


def has_button(at: AppTest, label: str) -> bool:
    return any(b.label == label for b in at.button)


def count(engine: Engine, who: Principal, **params: str) -> int:
    with engine.connect() as conn:
        return service.count(conn, who, AuditFilter.from_params(params))


def apply(at: AppTest) -> AppTest:
    return button(at, "Apply filters").click().run()


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ---------------------------------------------------------------------------- Explore


def test_landing_page_counts_everything_and_says_local_mode(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 800)
    at = app().run()
    no_exception(at)
    assert at.title[0].value == "Explore"
    assert any("Sign-in is off: local mode" in i.value for i in at.info)
    assert matching(at) == 800
    assert "Local admin" in " ".join(m.value for m in at.sidebar.markdown)
    assert [r.value for r in at.error] == []


def test_filters_change_the_count_as_the_library_says(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 900)
    at = app().run()
    at.multiselect(key="explore_action").set_value(["runbook.*"])
    apply(at)
    no_exception(at)
    assert matching(at) == count(engine, LOCAL_ADMIN, action="runbook.*")
    with engine.connect() as conn:
        ns = query.distinct_values(conn, "namespace")[0]
        start = query.preview(conn, AuditFilter(), limit=300).rows[-1]["timestamp"]
    at.multiselect(key="explore_namespace").set_value([ns])
    at.text_input(key="explore_from").set_value(start)
    apply(at)
    expected = count(engine, LOCAL_ADMIN, action="runbook.*", namespace=ns, **{"from": start})
    assert matching(at) == expected
    assert 0 < expected < 900
    assert at.query_params == {"action": "runbook.*", "namespace": ns, "from": start}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("explore_from", "yesterday", "from must be an ISO 8601"),
        ("explore_to", "2026-13-45", "to must be an ISO 8601"),
    ],
)
def test_invalid_input_shows_an_error_and_runs_no_query(
    portal_env: Settings, engine: Engine, key: str, value: str, message: str
) -> None:
    add_demo(engine, 50)
    at = app().run()
    at.text_input(key=key).set_value(value)
    apply(at)
    no_exception(at)
    assert [e.value for e in at.error if message in e.value]
    assert not at.metric  # no summary: the query did not run
    assert not at.dataframe


def test_from_after_to_is_refused(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 50)
    at = app(query_params={"from": "2026-03-02", "to": "2026-03-01"}).run()
    no_exception(at)
    assert any("earlier than to" in e.value for e in at.error)
    assert not at.metric


def test_a_query_param_url_restores_the_filters(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 700)
    with engine.connect() as conn:
        users = query.distinct_values(conn, "user")[:2]
    params = {"action": "user.*,secret.read", "user": ",".join(users), "to": "2030-01-01"}
    at = app(query_params=params).run()
    no_exception(at)
    assert at.multiselect(key="explore_action").value == ["user.*", "secret.read"]
    assert at.multiselect(key="explore_user").value == users
    assert at.text_input(key="explore_to").value == "2030-01-01"
    assert matching(at) == count(engine, LOCAL_ADMIN, **params)
    assert at.query_params == params


def test_an_unknown_user_in_the_url_is_kept_and_matches_nothing(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 100)
    at = app(query_params={"user": "Nobody@Example.com"}).run()
    no_exception(at)
    assert at.multiselect(key="explore_user").value == ["Nobody@Example.com"]
    assert matching(at) == 0
    assert any("No records match" in i.value for i in at.info)


def test_empty_database_gets_an_empty_state(portal_env: Settings) -> None:
    at = app().run()
    no_exception(at)
    assert matching(at) == 0
    assert any("The audit log is empty" in i.value for i in at.info)


def test_preview_pages_older_by_keyset_and_shows_a_selected_record(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 1200)
    at = app().run()
    first = at.dataframe[0].value
    assert len(first) == 500
    with engine.connect() as conn:
        newest = query.preview(conn, AuditFilter(), limit=1000).rows
    assert list(first["id"]) == [r["id"] for r in newest[:500]]
    button(at, "Older").click().run()
    second = at.dataframe[0].value
    assert list(second["id"]) == [r["id"] for r in newest[500:1000]]
    select_row(at, 2)
    no_exception(at)
    shown = at.table[0].value
    assert list(shown["field"]) == list(FIELDS)
    assert [rendered(v).text for v in shown["value"]] == [newest[502][f] for f in FIELDS]
    assert any("Checksum matches" in s.value for s in at.success)


def test_under_the_limit_offers_three_downloads(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, LIMIT)
    at = app().run()
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download CSV", "Download JSON", "Download JSON Lines"]
    assert not has_button(at, "Queue export")


def test_over_the_limit_queues_a_job(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, LIMIT + 1)
    at = app().run()
    assert not at.get("download_button")
    assert any(f"{LIMIT + 1:,} records match" in i.value for i in at.info)
    button(at, "Queue export").click().run()
    no_exception(at)
    with engine.connect() as conn:
        found = jobs.list_for(conn, LOCAL_ADMIN)
    assert [j.estimated_records for j in found] == [LIMIT + 1]
    assert any(found[0].job_id in s.value for s in at.success)


# ---------------------------------------------------------------------------- roles


def test_signed_out_visitors_see_only_a_sign_in_button(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 20)
    at = app(user={"is_logged_in": False}).run()
    no_exception(at)
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.metric
    assert not any("local mode" in i.value for i in at.info)


def test_several_providers_get_one_button_each(portal_env: Settings) -> None:
    at = AppTest.from_file(NAV, default_timeout=60)
    provider = {k: v for k, v in AUTH["auth"].items() if k not in ("redirect_uri", "cookie_secret")}
    at.secrets = {
        "auth": {
            "redirect_uri": AUTH["auth"]["redirect_uri"],
            "cookie_secret": "x",
            "okta": dict(provider),
            "google": dict(provider),
        }
    }
    at.user = {"is_logged_in": False}
    at.run()
    no_exception(at)
    assert [b.label for b in at.button] == ["Sign in with Okta", "Sign in with Google"]


def test_an_unknown_account_is_refused_politely_and_audited_once(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 20)
    at = app(user=signed_in("stranger@example.com")).run()
    at.run()
    no_exception(at)
    assert at.title[0].value == "No access yet"
    assert not at.metric
    assert actions(engine, "portal.access_denied") == ["stranger@example.com"]


def test_sign_in_is_recorded_once_per_session(portal_env: Settings, engine: Engine) -> None:
    access.upsert_user(engine, "ann@example.com", "auditor", "*", ADMIN)
    at = app(user=signed_in("ann@example.com")).run()
    at.run()
    no_exception(at)
    assert actions(engine, "portal.signin") == ["ann@example.com"]
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "ann@example.com" in sidebar
    assert has_button(at, "Sign out")


def test_viewers_see_their_namespaces_and_no_export_controls(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 600)
    with engine.connect() as conn:
        ns = query.distinct_values(conn, "namespace")[:2]
    access.upsert_user(engine, "vera@example.com", "viewer", ",".join(ns), ADMIN)
    at = app(user=signed_in("vera@example.com")).run()
    no_exception(at)
    viewer = Principal("vera@example.com", "viewer", frozenset(ns))
    assert (
        matching(at) == count(engine, viewer) == count(engine, LOCAL_ADMIN, namespace=",".join(ns))
    )
    assert at.multiselect(key="explore_namespace").options == sorted(ns)
    assert not at.get("download_button")
    assert not has_button(at, "Queue export")
    assert not any(h.value == "Export" for h in [*at.header, *at.subheader])


def test_a_viewer_asking_for_another_namespace_is_told_no(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 300)
    access.upsert_user(engine, "vera@example.com", "viewer", "production", ADMIN)
    at = app(user=signed_in("vera@example.com"), query_params={"namespace": "payments"}).run()
    no_exception(at)
    assert any("no access to namespace payments" in e.value for e in at.error)
    assert not at.metric
    at.run()  # the same refusal again in this session is not audited twice
    assert actions(engine, "portal.access_denied") == ["vera@example.com"]


def test_auditors_get_downloads(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 100)
    access.upsert_user(engine, "ann@example.com", "auditor", "*", ADMIN)
    at = app(user=signed_in("ann@example.com")).run()
    assert len(at.get("download_button")) == 3


@pytest.mark.parametrize("page", ["pages/admin.py", "pages/ingest.py"])
@pytest.mark.parametrize("role", ["auditor", "viewer"])
def test_non_admins_cannot_open_admin_or_ingest(
    portal_env: Settings, engine: Engine, page: str, role: str
) -> None:
    access.upsert_user(engine, "pat@example.com", role, "production", ADMIN)
    at = app(user=signed_in("pat@example.com")).run()
    no_exception(at)
    with pytest.raises(ValueError, match="not a registered page|Could not find"):
        at.switch_page(page)
    # The page guards itself too, should it ever be reached directly.
    direct = AppTest.from_file(str(ROOT / page), default_timeout=60)
    direct.session_state["portal_principal"] = Principal("pat@example.com", role, None)
    direct.run()
    assert [e.value for e in direct.error] == ["This page is for portal admins."]
    assert not direct.button and not direct.get("file_uploader")


# ---------------------------------------------------------------------------- other pages


@pytest.mark.parametrize("page", ["pages/exports.py", "pages/admin.py", "pages/ingest.py"])
def test_every_page_renders_for_the_local_admin(portal_env: Settings, page: str) -> None:
    at = app().run()
    at.switch_page(page).run()
    no_exception(at)
    assert any("Sign-in is off: local mode" in i.value for i in at.info)


def test_exports_page_lists_cancels_and_links_jobs(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 400)
    with engine.connect() as conn:
        plan = service.plan_export(conn, LOCAL_ADMIN, AuditFilter(), "csv")
    job = jobs.enqueue(engine, plan, LOCAL_ADMIN, portal_env)
    at = app().run()
    at.switch_page("pages/exports.py").run()
    no_exception(at)
    assert any(job.job_id in m.value for m in at.markdown)
    button(at, "Cancel").click().run()
    no_exception(at)
    with engine.connect() as conn:
        assert jobs.get_for(conn, job.job_id, LOCAL_ADMIN).state == "cancelled"  # type: ignore[union-attr]
    assert not has_button(at, "Cancel")


def test_auditors_see_only_their_own_jobs_and_a_signed_link_when_done(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 400)
    ann = Principal("ann@example.com", "auditor", None)
    bob = Principal("bob@example.com", "auditor", None)
    for who in (ann, bob):
        access.upsert_user(engine, who.email, "auditor", "*", ADMIN)
    with engine.connect() as conn:
        plan = service.plan_export(conn, ann, AuditFilter(), "jsonl")
    mine = jobs.enqueue(engine, plan, ann, portal_env)
    theirs = jobs.enqueue(engine, plan, bob, portal_env)
    Worker(engine, portal_env).run_until_idle()
    at = app(user=signed_in(ann.email)).run()
    at.switch_page("pages/exports.py").run()
    no_exception(at)
    text = " ".join(m.value for m in at.markdown)
    assert mine.job_id in text and theirs.job_id not in text
    assert "completed" in text
    assert not at.text_input  # only admins filter by person
    urls = [b.proto.url for b in at.get("link_button")]
    assert len(urls) == 3  # the file, its manifest and its signature
    base = f"/api/v1/audit/export/download/{mine.job_id}"
    assert [u.split("?")[0] for u in urls] == [base, base + "/manifest", base + "/manifest.sig"]
    assert all("?sig=" in u for u in urls)
    assert not has_button(at, "Cancel")


def test_a_download_from_explore_is_signed_and_offered_on_the_exports_page(
    portal_env: Settings, engine: Engine, tmp_path: Path
) -> None:
    add_demo(engine, 40)
    ann = Principal("ann@example.com", "auditor", None)
    bob = Principal("bob@example.com", "auditor", None)
    for who in (ann, bob):
        access.upsert_user(engine, who.email, "auditor", "*", ADMIN)
    ctx = context.current()
    name = "audit-log-ann.csv"
    data = views.export_bytes(ctx.engine, ann, AuditFilter(), "csv", ctx.settings, name)
    with engine.connect() as conn:
        (item,) = service.signed_exports(conn, ann)
        assert service.signed_exports(conn, bob) == []
        signed = service.manifest_for(conn, item.export_id, ann)
    assert (item.file_name, item.channel, item.requested_by) == (name, "ui", ann.email)
    assert signed is not None
    (tmp_path / name).write_bytes(data)
    (tmp_path / (name + ".manifest.json")).write_bytes(signed.manifest)
    (tmp_path / (name + ".manifest.sig")).write_bytes(signed.signature)
    assert ctx.signer is not None
    (tmp_path / "key.pem").write_bytes(signing.public_pem(ctx.signer.key))
    checks = offline_verify.verify_bundle(
        tmp_path / name,
        tmp_path / (name + ".manifest.json"),
        tmp_path / (name + ".manifest.sig"),
        tmp_path / "key.pem",
    )
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]

    at = app(user=signed_in(ann.email)).run()
    at.switch_page("pages/exports.py").run()
    no_exception(at)
    assert any(item.export_id in m.value and name in m.value for m in at.markdown)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Manifest", "Signature"]
    other = app(user=signed_in(bob.email)).run()
    other.switch_page("pages/exports.py").run()
    assert not other.get("download_button")
    assert any("No signed exports yet" in c.value for c in other.caption)


def test_admin_page_adds_a_user_and_shows_a_token_once(
    portal_env: Settings, engine: Engine
) -> None:
    at = app().run()
    at.switch_page("pages/admin.py").run()
    at.text_input(key="admin_user_email").set_value("new@example.com")
    at.selectbox(key="admin_user_role").set_value("viewer")
    at.text_input(key="admin_user_ns").set_value("production, staging")
    button(at, "Save user").click().run()
    no_exception(at)
    with engine.connect() as conn:
        users = {u.email: u for u in access.list_users(conn)}
    assert users["new@example.com"].namespaces == frozenset({"production", "staging"})
    at.selectbox(key="admin_token_email").set_value("new@example.com")
    button(at, "Create token").click().run()
    no_exception(at)
    shown = [c.value for c in at.code]
    assert len(shown) == 1 and shown[0].startswith("aep_")
    assert access.authenticate_token(engine, shown[0]).email == "new@example.com"
    at.run()
    assert not at.code  # shown once


def test_admin_page_refuses_a_bad_grant(portal_env: Settings) -> None:
    at = app().run()
    at.switch_page("pages/admin.py").run()
    at.text_input(key="admin_user_email").set_value("not-an-email")
    button(at, "Save user").click().run()
    no_exception(at)
    assert at.error


def _jsonl(n: int, seed: int) -> bytes:
    rows = [tuple(getattr(r, f) for f in FIELDS) for r in generate(n, seed=seed)]
    return b"".join(jsonl_chunks([rows]))


def test_ingest_checks_then_adds_on_confirm(portal_env: Settings, engine: Engine) -> None:
    at = app().run()
    at.switch_page("pages/ingest.py").run()
    at.get("file_uploader")[0].upload("batch.jsonl", _jsonl(40, seed=5), "application/x-ndjson")
    at.run()
    no_exception(at)
    assert metric(at, "New") == "40"
    assert stored(engine) == 0
    button(at, "Add 40 records").click().run()
    no_exception(at)
    assert stored(engine) == 40
    assert any("Added 40 records" in s.value for s in at.success)


def test_ingest_shows_refused_records_and_adds_nothing(
    portal_env: Settings, engine: Engine
) -> None:
    lines = _jsonl(3, seed=6).splitlines()
    bad = json.loads(lines[1])
    bad["user"] = "someone.else@example.com"  # the checksum no longer matches
    data = b"\n".join([lines[0], json.dumps(bad).encode(), lines[2]]) + b"\n"
    at = app().run()
    at.switch_page("pages/ingest.py").run()
    at.get("file_uploader")[0].upload("bad.jsonl", data, "application/x-ndjson")
    at.run()
    no_exception(at)
    assert metric(at, "Refused") == "1"
    assert list(at.dataframe[0].value["record"]) == [2]
    assert not any(b.label.startswith("Add ") for b in at.button)
    assert stored(engine) == 0


# ---------------------------------------------------------------------------- helpers


def actions(engine: Engine, action: str) -> list[str]:
    t = AuditRecord.__table__
    with engine.connect() as conn:
        return list(conn.execute(select(t.c.user).where(t.c.action == action)).scalars())


def stored(engine: Engine) -> int:
    """Records in the log from files, not the portal's own (an ingest audits itself)."""
    t = AuditRecord.__table__
    own = Settings().self_namespace
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(t.c.namespace != own)).scalar_one())


def test_filters_survive_a_visit_to_another_page(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 300)
    at = app(query_params={"action": "user.*"}).run()
    before = matching(at)
    at.switch_page("pages/exports.py").run()
    at.switch_page("pages/explore.py").run()
    no_exception(at)
    assert at.multiselect(key="explore_action").value == ["user.*"]
    assert matching(at) == before == count(engine, LOCAL_ADMIN, action="user.*")


# ---------------------------------------------------------------------------- values are data

# Records and people whose values are Markdown, HTML, e-mail addresses and URLs: every page
# must show them as the literal text they are (DESIGN.md "Values from the log are data").
EVIL_EMAIL = "mallory@evil.example"  # a bare address: Markdown makes it a mailto: link
HOSTILE = {
    "resource": "**Checksum verified by Security** [open the evidence](https://evil.example/phish)",
    "resourceType": "<img src=x onerror=alert(1)>",
    "user": EVIL_EMAIL,
    "role": "_admin_ <b>root</b>",
    "namespace": "ns_[x](javascript:alert(1))_",
    "sourceIP": "`10.0.0.1` www.evil.example",
}
SECOND = {**HOSTILE, "resource": "[click](javascript:alert(document.cookie)) :smile: $x^2$"}
# An address the portal accepts for a person, with Markdown in it.
LINKED_EMAIL = "**eve**_[x](https://evil.example)@evil.example"
# Made of record or user text only: none may end up inside a link, bold or italics.
FRAGMENTS = ("Checksum verified", "open the evidence", "evil", "onerror", "javascript", "mallory")
LITERAL_TYPES = {"text", "code", "dataframe", "json", "arrow_data_frame"}


def markdown_bodies(at: AppTest) -> list[str]:
    """Every string the page gave Streamlit's Markdown: bodies, labels, help, table cells."""
    bodies: list[str] = []
    for root in (at.main, at.sidebar):
        for node in root:
            if node.type in LITERAL_TYPES:
                continue
            if node.type == "table":
                frame = node.value
                bodies += [str(c) for c in frame.columns]
                bodies += [str(v) for row in frame.itertuples(index=False) for v in row]
                continue
            for name in ("body", "label", "help"):
                value = getattr(getattr(node, "proto", None), name, None)
                if isinstance(value, str) and value:
                    bodies.append(value)
            label = getattr(node, "label", None)  # expanders, tabs
            if isinstance(label, str) and label:
                bodies.append(label)
    return bodies


def assert_literal(at: AppTest, *values: str) -> str:
    """No body makes a link, image, HTML or emphasis of the values; each shows as itself.

    Returns all the text shown, for further checks.
    """
    no_exception(at)
    shown = []
    for body in markdown_bodies(at):
        r = rendered(body)
        assert not r.tags, (body, r.tags)
        marked = " ".join(r.marked)
        assert not [f for f in FRAGMENTS if f in marked], (body, r.marked)
        assert not r.rewritten(), (body, r.rewritten())
        shown.append(r.text)
    text = "\n".join(shown)
    for value in values:
        assert value in text, (value, text)
    return text


def plant(engine: Engine, *records: dict[str, str]) -> None:
    with engine.begin() as conn:
        store.append(conn, [normalize(seed_record(n + 1, **r)) for n, r in enumerate(records)])


def select_row(at: AppTest, row: int) -> AppTest:
    at.session_state["explore_table"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    return at.run()


def test_explore_shows_hostile_record_values_as_literal_text(
    portal_env: Settings, engine: Engine
) -> None:
    plant(engine, HOSTILE, SECOND)
    add_demo(engine, 30)
    at = app(query_params={"user": EVIL_EMAIL, "namespace": HOSTILE["namespace"]}).run()
    assert matching(at) == 2
    text = assert_literal(at, EVIL_EMAIL, HOSTILE["namespace"])  # the filter's caption
    assert f"User {EVIL_EMAIL}; namespace {HOSTILE['namespace']}" in text
    for row, record in ((0, SECOND), (1, HOSTILE)):
        select_row(at, row)
        assert_literal(at, *record.values())
        cells = [rendered(v).text for v in at.table[0].value["value"]]
        assert cells[3:9] == [record[f] for f in FIELDS[3:9]]


def test_errors_quoting_hostile_input_show_it_literally(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 30)
    bad = "[go](https://evil.example/x)*y"
    at = app(query_params={"action": bad}).run()
    assert any("may only come last" in rendered(e.value).text for e in at.error)
    assert_literal(at, bad)
    access.upsert_user(engine, "vera@example.com", "viewer", "production", ADMIN)
    at = app(
        user=signed_in("vera@example.com"),
        query_params={"namespace": "**[x](https://evil.example)**"},
    ).run()
    assert any("no access to namespace" in rendered(e.value).text for e in at.error)
    assert_literal(at, "**[x](https://evil.example)**")


def test_the_signed_in_email_and_the_no_access_page_are_literal(
    portal_env: Settings, engine: Engine
) -> None:
    plant(engine, HOSTILE)
    access.upsert_user(engine, EVIL_EMAIL, "auditor", HOSTILE["namespace"], ADMIN)
    at = app(user=signed_in(EVIL_EMAIL)).run()
    assert matching(at) == 1
    sidebar = " ".join(rendered(m.value).text for m in at.sidebar.markdown)
    assert EVIL_EMAIL in sidebar
    assert_literal(at, EVIL_EMAIL, HOSTILE["namespace"])
    stranger = app(user=signed_in(LINKED_EMAIL)).run()
    assert stranger.title[0].value == "No access yet"
    assert_literal(stranger, LINKED_EMAIL.lower())


def test_exports_and_admin_show_people_and_filters_literally(
    portal_env: Settings, engine: Engine
) -> None:
    plant(engine, HOSTILE, SECOND)
    mallory = Principal(EVIL_EMAIL, "admin", None)
    flt = AuditFilter.from_params({"user": EVIL_EMAIL, "namespace": HOSTILE["namespace"]})
    with engine.connect() as conn:
        plan = service.plan_export(conn, mallory, flt, "csv")
    job = jobs.enqueue(engine, plan, mallory, portal_env)
    at = app().run()
    at.switch_page("pages/exports.py").run()
    assert_literal(at, job.job_id, EVIL_EMAIL, HOSTILE["namespace"])

    at.switch_page("pages/admin.py").run()
    at.text_input(key="admin_user_email").set_value(LINKED_EMAIL)
    at.selectbox(key="admin_user_role").set_value("viewer")
    at.text_input(key="admin_user_ns").set_value(HOSTILE["namespace"])
    button(at, "Save user").click().run()
    assert_literal(at, LINKED_EMAIL.lower(), HOSTILE["namespace"])
    assert any(LINKED_EMAIL.lower() in rendered(s.value).text for s in at.success)
    at.selectbox(key="admin_token_email").set_value(LINKED_EMAIL.lower())
    button(at, "Create token").click().run()
    assert any(LINKED_EMAIL.lower() in rendered(s.value).text for s in at.success)
    assert_literal(at, LINKED_EMAIL.lower())
