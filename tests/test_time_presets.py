"""Time picked, not typed: presets as absolute instants, date-and-time pickers, and Explore's
outline (headings in order, every chart told in words). Arithmetic with fixed `now` values;
the page under AppTest on both engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
import streamlit as st
from sqlalchemy import Engine

from audit_core import store, views
from audit_core.access import LOCAL_ADMIN
from audit_core.config import Settings
from audit_core.demo import generate
from audit_core.record import format_instant, parse_instant

from .conftest import add_demo, installed
from .markup import rendered
from .test_pages import LIMIT, app, apply, count, matching, no_exception


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


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# (preset, now, start, end): month and quarter edges, year ends, a leap February.
CASES = [
    (
        "last_hour",
        utc(2026, 3, 15, 12, 34, 56, 789000),
        "2026-03-15T11:34:57Z",
        "2026-03-15T12:34:57Z",
    ),
    ("last_hour", utc(2026, 1, 1, 0, 30), "2025-12-31T23:30:01Z", "2026-01-01T00:30:01Z"),
    ("last_24_hours", utc(2026, 3, 1, 0, 0, 0), "2026-02-28T00:00:01Z", "2026-03-01T00:00:01Z"),
    ("last_7_days", utc(2026, 1, 3, 8), "2025-12-27T08:00:01Z", "2026-01-03T08:00:01Z"),
    ("last_30_days", utc(2024, 3, 10, 12), "2024-02-09T12:00:01Z", "2024-03-10T12:00:01Z"),
    ("this_month", utc(2026, 3, 15, 9, 30), "2026-03-01T00:00:00Z", "2026-03-15T09:30:01Z"),
    ("this_month", utc(2026, 1, 1, 0, 0, 0), "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"),
    (
        "this_month",
        utc(2026, 1, 31, 23, 59, 59, 999999),
        "2026-01-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
    ),
    ("last_month", utc(2026, 1, 15), "2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z"),
    ("last_month", utc(2026, 3, 31, 23, 59, 59), "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"),
    ("last_month", utc(2024, 3, 1), "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"),
    ("last_month", utc(2026, 12, 1), "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
    ("this_quarter", utc(2026, 2, 14), "2026-01-01T00:00:00Z", "2026-02-14T00:00:01Z"),
    ("this_quarter", utc(2026, 4, 1, 0, 0, 0), "2026-04-01T00:00:00Z", "2026-04-01T00:00:01Z"),
    ("this_quarter", utc(2026, 6, 30, 23, 59, 59), "2026-04-01T00:00:00Z", "2026-07-01T00:00:00Z"),
    ("this_quarter", utc(2026, 9, 30, 12), "2026-07-01T00:00:00Z", "2026-09-30T12:00:01Z"),
    (
        "this_quarter",
        utc(2026, 12, 31, 23, 59, 59, 500000),
        "2026-10-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
    ),
]


@pytest.mark.parametrize(("preset", "now", "start", "end"), CASES)
def test_a_preset_is_an_absolute_half_open_range(
    preset: str, now: datetime, start: str, end: str
) -> None:
    assert views.preset_text(preset, now) == (start, end)
    first, last = views.preset_range(preset, now)
    assert first < last  # never empty, even at a period's first instant
    if preset == "last_month":
        assert last <= now  # the whole month before this one
    else:
        assert first <= now < last  # `now` itself is in the range


def test_a_preset_counts_in_utc_whatever_the_offset_of_now() -> None:
    # 01:00 on 1 January in UTC+2 is still 31 December in UTC.
    now = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert views.preset_text("this_month", now) == ("2025-12-01T00:00:00Z", "2025-12-31T23:00:01Z")
    assert views.preset_text("last_month", now) == ("2025-11-01T00:00:00Z", "2025-12-01T00:00:00Z")


@pytest.mark.parametrize("preset", sorted(set(views.TIME_PRESETS) - {"custom"}))
def test_every_preset_offered_resolves(preset: str) -> None:
    start, end = views.preset_range(preset, utc(2026, 5, 17, 6, 7, 8))
    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert start.microsecond == end.microsecond == 0


@pytest.mark.parametrize("name", ["custom", "yesterday", ""])
def test_custom_and_unknown_names_have_no_range(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time preset"):
        views.preset_range(name, utc(2026, 5, 17))


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        views.preset_range("last_hour", datetime(2026, 5, 17))


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("2026-03-01", datetime(2026, 3, 1)),
        ("2026-03-01T08:30:15.5Z", datetime(2026, 3, 1, 8, 30)),  # a picker holds minutes
        ("2026-03-01T10:30:00+02:00", datetime(2026, 3, 1, 8, 30)),
        ("", None),
        ("yesterday", None),
        ("1969-12-31T23:59:59Z", None),  # before the pickers' range: the text stands alone
        ("2100-01-01", None),
    ],
)
def test_a_picker_shows_its_texts_instant_in_utc(text: str, shown: datetime | None) -> None:
    assert views.picker_value(text) == shown


@pytest.mark.parametrize(
    ("text", "picked", "shown", "result"),
    [
        # Untouched: the text stands, to the second (a picker holds minutes).
        (
            "2026-03-01T08:30:15Z",
            datetime(2026, 3, 1, 8, 30, 15),
            datetime(2026, 3, 1, 8, 30, 15),
            "2026-03-01T08:30:15Z",
        ),
        ("typed anew", datetime(2026, 3, 1), datetime(2026, 3, 1), "typed anew"),
        # Moved: the picker's time, as the API writes instants.
        ("2026-03-01", datetime(2026, 3, 2, 9, 45), datetime(2026, 3, 1), "2026-03-02T09:45:00Z"),
        ("", datetime(2026, 3, 2, 9, 45), None, "2026-03-02T09:45:00Z"),
        # Cleared: the text goes too.
        ("2026-03-01", None, datetime(2026, 3, 1), ""),
    ],
)
def test_after_apply_a_moved_picker_replaces_its_text(
    text: str, picked: datetime | None, shown: datetime | None, result: str
) -> None:
    assert views.reconcile_time(text, picked, shown) == result


def test_the_charts_in_words() -> None:
    day = 86_400_000_000
    start = int(utc(2026, 3, 1).timestamp()) * 1_000_000
    buckets = [(start, "runbook", 3), (start, "user", 2), (start + 2 * day, "user", 9)]
    assert rendered(views.activity_summary(buckets, "day")).text == (
        "Busiest day: 2026-03-03, 9 records. 14 records over 3 days."
    )
    hour = [(start + 5 * 3_600_000_000, "user", 1)]
    assert rendered(views.activity_summary(hour, "hour")).text == (
        "Busiest hour: 2026-03-01 05:00 UTC, 1 record. 1 record over 1 hour."
    )
    assert rendered(views.activity_summary([], "day")).text == "No records to chart."
    top = views.top_summary([("a@x.example", 4), ("**b**", 1)], "user")
    assert rendered(top).text == "Top users by records: a@x.example (4), **b** (1)."
    assert not rendered(top).tags and not rendered(top).rewritten()


# ---------------------------------------------------------------------------- the page


def test_a_preset_puts_absolute_instants_in_the_url(
    portal_env: Settings,
    engine: Engine,
) -> None:
    with engine.begin() as conn:  # three days of records up to now: some in the last 24 hours
        store.append(conn, generate(600, seed=3, days=3))
    at = app().run()
    at.selectbox(key="explore_preset").set_value("last_24_hours")
    before = datetime.now(UTC)
    apply(at)
    after = datetime.now(UTC)
    no_exception(at)
    params = dict(at.query_params)
    start, end = parse_instant(params["from"]), parse_instant(params["to"])
    assert (params["from"], params["to"]) == (format_instant(start), format_instant(end))
    assert params["to"].endswith("Z") and "." not in params["to"]
    assert end - start == timedelta(hours=24)
    assert before.replace(microsecond=0) < end <= after + timedelta(seconds=1)
    expected = count(engine, LOCAL_ADMIN, **params)
    assert 0 < expected < 600
    assert matching(at) == expected
    # The fields hold the instants, the pickers show them, the preset is spent.
    assert at.text_input(key="explore_from").value == params["from"]
    shown = end.replace(tzinfo=None, second=0)  # a picker holds minutes
    assert at.datetime_input(key="explore_to_pick").value == shown
    assert at.selectbox(key="explore_preset").value == "custom"
    assert any("Last 24 hours, fixed when applied" in rendered(c.value).text for c in at.caption)
    # The same link, opened later, means the same range.
    again = app(query_params=params).run()
    assert matching(again) == expected


def test_the_half_open_rule_is_stated_on_the_page(portal_env: Settings) -> None:
    at = app().run()
    assert any("[From, To)" in rendered(c.value).text for c in at.caption)
    labels = [t.label for t in at.text_input]
    assert "From (UTC, included)" in labels and "To (UTC, not included)" in labels


def test_a_moved_picker_becomes_the_filters_instant(
    portal_env: Settings,
    engine: Engine,
) -> None:
    add_demo(engine, 300)
    at = app(query_params={"to": "2030-01-01T00:00:30Z"}).run()
    assert at.datetime_input(key="explore_to_pick").value == datetime(2030, 1, 1, 0, 0)
    picked = (datetime.now(UTC) - timedelta(days=2)).replace(tzinfo=None, second=0, microsecond=0)
    at.datetime_input(key="explore_from_pick").set_value(picked)
    apply(at)
    no_exception(at)
    wanted = format_instant(picked.replace(tzinfo=UTC))
    # The untouched To keeps its seconds; the moved From is the picker's minute.
    assert dict(at.query_params) == {"from": wanted, "to": "2030-01-01T00:00:30Z"}
    assert matching(at) == count(engine, LOCAL_ADMIN, **dict(at.query_params))


def test_headings_go_down_one_level_at_a_time_and_charts_have_words(
    portal_env: Settings,
    engine: Engine,
) -> None:
    add_demo(engine, 400)
    at = app().run()
    no_exception(at)
    level = {"title": 1, "header": 2, "subheader": 3}
    levels = [level[n.type] for n in at.main if n.type in level]
    assert levels[0] == 1
    assert all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False)), levels
    captions = [rendered(c.value).text for c in at.caption]
    assert any(c.startswith("Busiest ") and " records over " in c for c in captions)
    assert any(c.startswith("Top actions by records: ") for c in captions)
    assert any(c.startswith("Top users by records: ") for c in captions)
