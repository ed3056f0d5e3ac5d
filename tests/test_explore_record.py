"""Explore's record panel, its links, what the URL asks for, and the empty portal (AppTest).

The panel follows a record's id, not a row number; `?record=<id>` opens it, scoped like every
read; values are shown whole and literally, the JSON exactly as a JSON Lines export writes it;
the page names URL parameters and filter values that mean nothing; an empty log says what to
do next. Both engines, as every page test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import Engine
from streamlit.commands.page_config import _get_favicon_string
from streamlit.testing.v1 import AppTest

from audit_core import access, export, query, views
from audit_core.access import LOCAL_ADMIN, Principal
from audit_core.config import Settings
from audit_core.filters import AuditFilter
from audit_core.record import FIELDS
from pages import common

from .conftest import add_demo, installed
from .markup import rendered
from .test_pages import (
    ADMIN,
    HOSTILE,
    SECOND,
    app,
    apply,
    assert_literal,
    button,
    no_exception,
    plant,
    select_row,
    signed_in,
)


@pytest.fixture
def portal_env(settings: Settings, engine: Engine) -> Iterator[Settings]:
    """Install a context on the test database for the pages (as tests/test_pages.py does)."""
    settings = replace(settings, sync_export_limit=300)
    st.cache_resource.clear()
    st.cache_data.clear()
    with installed(settings):
        yield settings
    st.cache_resource.clear()
    st.cache_data.clear()


def newest(engine: Engine, limit: int, **params: str) -> list[dict[str, str]]:
    """The newest `limit` records matching params, as the preview orders them."""
    with engine.connect() as conn:
        return query.preview(conn, AuditFilter.from_params(params), limit=limit).rows


def panel_id(at: AppTest) -> str | None:
    """The id in the record panel's heading, or None when no panel is shown."""
    heads = [rendered(m.value).text for m in at.markdown if m.value.startswith("**Record**")]
    assert len(heads) <= 1, heads
    return heads[0].removeprefix("Record").strip() if heads else None


def grid_rows(at: AppTest) -> list[int]:
    """The preview grid's selected rows."""
    return list(at.session_state["explore_table"]["selection"]["rows"])


def texts(elements: Any) -> list[str]:
    return [rendered(e.value).text for e in elements]


def codes(at: AppTest) -> list[str]:
    return [c.value for c in at.code]


# ---------------------------------------------------------------------------- 1. follows the id


def test_the_panel_keeps_its_record_when_the_filter_widens(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 900)
    everything = newest(engine, 500)
    to = everything[40]["timestamp"]
    narrow = newest(engine, 500, to=to)
    chosen = narrow[2]["id"]
    moved = views.row_of(everything, chosen)
    assert moved is not None and moved != 2  # a row number would now name another record
    at = app(query_params={"to": to}).run()
    select_row(at, 2)
    assert panel_id(at) == chosen
    assert at.query_params["record"] == chosen
    at.text_input(key="explore_to").set_value("")
    apply(at)
    no_exception(at)
    assert panel_id(at) == chosen
    assert grid_rows(at) == [moved]  # the grid ticks the record where it now is
    assert [rendered(v).text for v in at.table[0].value["value"]][0] == chosen


def test_a_record_that_left_the_rows_is_named_not_replaced_and_opens_anyway(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 900)
    to = newest(engine, 700)[600]["timestamp"]
    chosen = newest(engine, 1, to=to)[0]["id"]
    assert views.row_of(newest(engine, 500), chosen) is None  # off the widened first page
    at = app(query_params={"to": to}).run()
    select_row(at, 0)
    at.text_input(key="explore_to").set_value("")
    apply(at)
    no_exception(at)
    assert panel_id(at) is None and not at.table  # no other record in its place
    assert grid_rows(at) == []
    (left,) = [w for w in texts(at.warning) if "is not among the records shown" in w]
    assert chosen in left
    assert f"?record={chosen}" in codes(at)
    button(at, "Open it anyway").click().run()
    no_exception(at)
    assert panel_id(at) == chosen
    assert any("Opened by its link" in c for c in texts(at.caption))


def test_a_record_link_opens_its_panel_even_off_the_page(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 900)
    rows = newest(engine, 900)
    old, recent = rows[850], rows[3]
    at = app(query_params={"record": old["id"]}).run()
    no_exception(at)
    assert panel_id(at) == old["id"]
    assert [rendered(v).text for v in at.table[0].value["value"]] == [old[f] for f in FIELDS]
    assert grid_rows(at) == []
    at = app(query_params={"record": recent["id"]}).run()
    assert panel_id(at) == recent["id"]
    assert grid_rows(at) == [3]


def test_clearing_the_row_closes_the_panel_and_the_link(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 50)
    at = app().run()
    select_row(at, 4)
    assert at.query_params["record"] == newest(engine, 5)[4]["id"]
    at.session_state["explore_table"] = {"selection": {"rows": [], "columns": [], "cells": []}}
    at.run()
    assert panel_id(at) is None
    assert "record" not in at.query_params


def test_a_record_outside_the_grants_answers_like_an_unknown_id(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 300)
    with engine.connect() as conn:
        mine, other = query.distinct_values(conn, "namespace")[:2]
    inside = newest(engine, 1, namespace=mine)[0]["id"]
    outside = newest(engine, 1, namespace=other)[0]["id"]
    unknown = "audit-29990101-001"
    access.upsert_user(engine, "vera@example.com", "viewer", mine, ADMIN)
    answers = {}
    for rid in (outside, unknown):
        at = app(user=signed_in("vera@example.com"), query_params={"record": rid}).run()
        no_exception(at)
        assert panel_id(at) is None and not at.table
        answers[rid] = [e.replace(rid, "<id>") for e in texts(at.error)]
    assert answers[outside] == answers[unknown] == ["No record <id> that you may see."]
    at = app(user=signed_in("vera@example.com"), query_params={"record": inside}).run()
    assert panel_id(at) == inside


def test_record_by_id_is_scoped_like_every_read(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 100)
    row = newest(engine, 1)[0]
    rid, ns = row["id"], row["namespace"]
    assert views.record_by_id(engine, LOCAL_ADMIN, rid) == row
    assert views.record_by_id(engine, Principal("a@x.io", "viewer", frozenset({ns})), rid) == row
    for who in (
        Principal("b@x.io", "viewer", frozenset({ns + "-not"})),
        Principal("c@x.io", "auditor", frozenset()),  # no grants at all
    ):
        assert views.record_by_id(engine, who, rid) is None
    assert views.record_by_id(engine, LOCAL_ADMIN, "audit-29990101-001") is None
    assert views.record_by_id(engine, LOCAL_ADMIN, "x" * 10_000) is None


@pytest.mark.parametrize(
    ("base", "rid", "link"),
    [
        (
            "http://127.0.0.1:8501/",
            "audit-20260301-001",
            "http://127.0.0.1:8501/?record=audit-20260301-001",
        ),
        ("http://h:1/explore?x=1", "audit-1", "http://h:1/explore?record=audit-1"),
        (None, "a b&c=#", "?record=a%20b%26c%3D%23"),
    ],
)
def test_record_link(base: str | None, rid: str, link: str) -> None:
    assert views.record_link(base, rid) == link


# ---------------------------------------------------------------------------- 2. whole, literal


def test_a_word_too_long_to_wrap_goes_in_a_code_span_and_stays_literal() -> None:
    fields = [("action", "user.login"), ("resource", "x" * 33 + " *y*"), ("role", "a_b_")]
    cells = views.record_table(fields)["value"]
    assert cells[0] == "user\\.login" and cells[2] == "a\\_b\\_"
    assert cells[1].startswith("`") and rendered(cells[1]).text == fields[1][1]


LONG = {
    "resource": "a/" * 1995 + "end",  # 3,993 characters: the table and code show all of it
    "user": "Zoë.Ünïcødé@example.com",
    "sourceIP": "2001:db8::1",
}


def test_the_panel_shows_every_field_whole_literal_and_copyable(
    portal_env: Settings, engine: Engine
) -> None:
    plant(engine, LONG, HOSTILE, SECOND)
    for record in newest(engine, 3):
        at = app(query_params={"record": record["id"]}).run()
        assert panel_id(at) == record["id"]
        shown = codes(at)
        for field in FIELDS:
            assert record[field] in shown, field  # each its own copyable block
        assert views.record_json(record).decode().rstrip("\n") in shown
        assert f"?record={record['id']}" in shown
        assert [rendered(v).text for v in at.table[0].value["value"]] == [record[f] for f in FIELDS]
        assert_literal(at, *(record[f] for f in FIELDS[2:9]))


def test_the_record_json_is_byte_for_byte_its_export_line(engine: Engine) -> None:
    quoted = {"resource": 'say "hi" \\ tab\tline\u2028sep ☃', "role": "<b>&amp;</b>"}
    plant(engine, LONG, HOSTILE, quoted)
    with engine.connect() as conn:
        plan = export.plan(conn, AuditFilter(), "jsonl")
        lines = b"".join(export.chunks(conn, plan)).splitlines(keepends=True)
    records = newest(engine, 10)
    assert len(lines) == len(records) == 3
    for record in records:
        line = views.record_json(record)
        assert line in lines
        assert line.endswith(b"\n") and line.count(b"\n") == 1


# ---------------------------------------------------------------------------- 3. the URL's truth


def test_unknown_params_are_every_name_explore_does_not_read() -> None:
    params = {"frm": "1", "from": "2", "record": "3", "zzz": "4", "namespace": "5"}
    assert views.unknown_params(params) == ["frm", "zzz"]


def test_unknown_url_parameters_are_named_on_the_page(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 100)
    at = app(query_params={"frm": "2026-11-01", "action": "runbook.*"}).run()
    no_exception(at)
    (warning,) = texts(at.warning)
    assert "frm" in warning and "ignored" in warning
    assert at.multiselect(key="explore_action").value == ["runbook.*"]  # the rest still read
    at.multiselect(key="explore_action").set_value([])
    apply(at)
    assert not at.warning  # told once the filter is the person's own


@pytest.mark.parametrize(
    ("params", "field", "named"),
    [
        ({"action": "nope.*"}, "action", ["nope.*"]),
        ({"action": "runbook.*,runbook.nope"}, "action", ["runbook.nope"]),
        ({"user": "Nobody@Example.com"}, "user", ["Nobody@Example.com"]),
        ({"namespace": "atlantis"}, "namespace", ["atlantis"]),
    ],
)
def test_filter_values_that_match_nothing_are_named_and_marked(
    portal_env: Settings, engine: Engine, params: dict[str, str], field: str, named: list[str]
) -> None:
    add_demo(engine, 200)
    at = app(query_params=params).run()
    no_exception(at)
    (warning,) = texts(at.warning)
    assert f"has the {field} {', '.join(named)}:" in warning
    options = at.multiselect(key=f"explore_{field}").options
    for value in named:
        assert value + views.UNMATCHED_NOTE in options
    marked = [o.removesuffix(views.UNMATCHED_NOTE) for o in options if views.UNMATCHED_NOTE in o]
    assert marked == named  # and no known choice is marked


def test_known_filter_values_raise_no_warning(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 200)
    with engine.connect() as conn:
        user = query.distinct_values(conn, "user")[0]
    at = app(query_params={"action": "runbook.*", "user": user.upper()}).run()
    no_exception(at)
    assert not at.warning
    assert not [o for o in at.multiselect(key="explore_action").options if "matches no" in o]


def test_a_namespace_outside_the_grants_is_refused_not_called_unmatched(
    portal_env: Settings, engine: Engine
) -> None:
    add_demo(engine, 100)
    access.upsert_user(engine, "vera@example.com", "viewer", "production", ADMIN)
    at = app(user=signed_in("vera@example.com"), query_params={"namespace": "atlantis"}).run()
    assert any("no access to namespace atlantis" in e for e in texts(at.error))
    assert not at.warning


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        (views.FilterInput(actions=("runbook.*", "runbook.create")), {}),
        (views.FilterInput(actions=("*",)), {}),
        (views.FilterInput(actions=("run.*", "runbook")), {"action": ["run.*", "runbook"]}),
        (views.FilterInput(users=("ANN@X.IO", "bob@x.io")), {"user": ["bob@x.io"]}),
        (views.FilterInput(namespaces=("prod", "Prod")), {"namespace": ["Prod"]}),
    ],
)
def test_unmatched_terms(typed: views.FilterInput, expected: dict[str, list[str]]) -> None:
    known = {"action": ["runbook.create", "user.login"], "user": ["ann@x.io"]}
    assert views.unmatched_terms(typed, {**known, "namespace": ["prod"]}) == expected


# ---------------------------------------------------------------------------- 4. nothing fetched


def test_the_favicon_is_drawn_in_the_page_not_fetched() -> None:
    """A `:material/...:` page icon makes the browser fetch its favicon from Google."""
    assert _get_favicon_string(common.FAVICON).startswith("data:image/svg+xml;base64,")


# ---------------------------------------------------------------------------- 5. an empty portal


def test_an_empty_log_says_what_to_do_next(portal_env: Settings) -> None:
    at = app().run()
    no_exception(at)
    (info,) = [i for i in texts(at.info) if "audit log is empty" in i]
    assert "Ingest page" in info and "python -m audit_core ingest FILE" in info
    assert [p.proto.page for p in at.get("page_link")] == ["ingest"]
    assert any(views.md(c) and "start with the filter below" in c for c in texts(at.caption))


def test_an_empty_log_tells_a_viewer_who_loads_records(
    portal_env: Settings, engine: Engine
) -> None:
    access.upsert_user(engine, "vera@example.com", "viewer", "production", ADMIN)
    at = app(user=signed_in("vera@example.com")).run()
    no_exception(at)
    (info,) = [i for i in texts(at.info) if "namespaces holds a record" in i]
    assert "A portal admin loads records" in info and "audit_core ingest FILE" in info
    assert not at.get("page_link")  # the Ingest page is not theirs


def test_the_landing_page_says_what_the_portal_does(portal_env: Settings, engine: Engine) -> None:
    add_demo(engine, 20)
    at = app().run()
    assert at.title[0].value == "Explore"
    intro = at.caption[0].value
    assert intro.startswith("Filter your organisation's audit log") and intro.count(".") == 1
