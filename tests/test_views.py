"""What the pages show, without Streamlit: filter input and URLs, pickers, frames, downloads."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from audit_core import export, query, views
from audit_core.access import LOCAL_ADMIN, AccessDeniedError, Principal
from audit_core.config import Settings
from audit_core.filters import AuditFilter
from audit_core.formats import CSV_HEADER
from audit_core.models import AuditRecord
from audit_core.record import FIELDS

from .conftest import add_demo
from .markup import rendered


@pytest.mark.parametrize(
    ("params", "typed"),
    [
        ({}, views.FilterInput()),
        (
            {"from": " 2026-03-01 ", "action": "runbook.*,user.login", "user": "A@x.com"},
            views.FilterInput(
                start="2026-03-01", actions=("runbook.*", "user.login"), users=("A@x.com",)
            ),
        ),
        ({"namespace": ["a,b", "b", "c"]}, views.FilterInput(namespaces=("a", "b", "c"))),
        ({"action": ",,"}, views.FilterInput()),
    ],
)
def test_filter_input_reads_a_url(params: dict[str, object], typed: views.FilterInput) -> None:
    assert views.FilterInput.from_query(params) == typed  # type: ignore[arg-type]


def test_filter_input_round_trips_through_the_url() -> None:
    typed = views.FilterInput(
        "2026-03-01", "2026-03-02T00:00:00Z", ("runbook.*",), ("a@x",), ("p",)
    )
    assert views.FilterInput.from_query(typed.to_query()) == typed
    assert views.FilterInput().to_query() == {}


@pytest.mark.parametrize(
    ("typed", "fields"),
    [
        (views.FilterInput(start="yesterday"), {"from"}),
        (views.FilterInput(end="2026-02-30"), {"to"}),
        (views.FilterInput(start="yesterday", end="tomorrow"), {"from", "to"}),
        (views.FilterInput(start="2026-03-02", end="2026-03-01"), {"from"}),
        (views.FilterInput(actions=("run*book",)), {"action"}),
        (views.FilterInput(users=("x" * 201,)), {"user"}),
        (views.FilterInput(namespaces=("bad\x01",)), {"namespace"}),
    ],
)
def test_each_bad_field_gets_its_own_message(typed: views.FilterInput, fields: set[str]) -> None:
    flt, errors = typed.parse()
    assert flt is None
    assert set(errors) == fields


def test_a_good_input_parses_to_the_shared_filter() -> None:
    typed = views.FilterInput("2026-03-01", "", ("runbook.*", "user.login"), ("A@X.com",), ())
    flt, errors = typed.parse()
    assert errors == {}
    assert flt == AuditFilter.parse(
        start="2026-03-01", action="runbook.*,user.login", user="a@x.com"
    )


def test_actions_are_grouped_by_family_with_wildcards_first() -> None:
    options = views.action_options(["user.login", "runbook.execute", "runbook.create", "deploy"])
    assert options == [
        "deploy",
        "runbook.*",
        "runbook.create",
        "runbook.execute",
        "user.*",
        "user.login",
    ]
    assert views.action_options(["a.b"], keep=["zz.*", "a.b"]) == ["a.*", "a.b", "zz.*"]


def test_record_detail_checks_the_checksum(engine: Engine) -> None:
    add_demo(engine, 3)
    with engine.connect() as conn:
        row = query.preview(conn, AuditFilter(), limit=1).rows[0]
    fields, ok = views.record_detail(row)
    assert [f for f, _ in fields][-1] == "checksum" and ok
    _, ok = views.record_detail({**row, "user": "someone@else"})
    assert not ok


def test_histogram_frame_is_in_utc() -> None:
    frame = views.histogram_frame([(86_400_000_000, "runbook", 3)], "family")
    assert list(frame.columns) == ["time", "family", "records"]
    assert frame["time"][0] == datetime(1970, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("first", "last", "bucket"),
    [
        (None, None, "day"),
        ("2026-03-01T00:00:00Z", "2026-03-03T23:00:00Z", "hour"),
        ("2026-03-01T00:00:00Z", "2026-03-09T00:00:00Z", "day"),
    ],
)
def test_bucket_width_follows_the_span(first: str | None, last: str | None, bucket: str) -> None:
    assert views.bucket_for(first, last) == bucket


def test_job_helpers() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert views.time_left(now + timedelta(hours=5, minutes=12), now) == "5h 12m"
    assert views.time_left(now + timedelta(seconds=20), now) == "1m"
    assert views.time_left(now - timedelta(seconds=1), now) == "expired"
    assert views.time_left(None, now) == ""
    assert views.progress(50, 200, "processing") == 0.25
    assert views.progress(0, 0, "queued") == 0.0
    assert views.progress(10, 200, "completed") == 1.0
    assert [views.human_size(n) for n in (None, 10, 2048, 5 * 1024**3)] == [
        "",
        "10 B",
        "2.0 KB",
        "5.0 GB",
    ]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_download_bytes_equal_a_direct_export_and_are_audited(
    engine: Engine, settings: Settings, fmt: str
) -> None:
    add_demo(engine, 250)
    flt = AuditFilter.parse(action="user.*")
    who = Principal("ann@example.com", "auditor", None, "10.0.0.9")
    data = views.export_bytes(engine, who, flt, fmt, settings)
    with engine.connect() as conn:
        plan = export.plan(conn, flt, fmt, upto_seq=query.max_seq(conn) - 1)
        n = query.count(conn, flt)
    if fmt == "csv":
        assert data.decode().startswith(CSV_HEADER)
        assert len(list(csv.reader(io.StringIO(data.decode())))) == n + 1
    elif fmt == "json":
        assert json.loads(data)["metadata"]["totalRecords"] == n == plan.total
    else:
        assert len(data.splitlines()) == n
    t = AuditRecord.__table__
    with engine.connect() as conn:
        logged = conn.execute(
            select(t.c.user, t.c.resource, t.c.sourceIP).where(t.c.action == "audit.export")
        ).all()
    assert len(logged) == 1
    assert logged[0].user == "ann@example.com" and logged[0].sourceIP == "10.0.0.9"
    assert logged[0].resource.startswith(f"ui {fmt} {n} rows")


def test_viewers_cannot_build_downloads(engine: Engine, settings: Settings) -> None:
    add_demo(engine, 5)
    viewer = Principal("vic@example.com", "viewer", None)
    with pytest.raises(AccessDeniedError):
        views.export_bytes(engine, viewer, AuditFilter(), "csv", settings)


def test_namespace_grants_read_back() -> None:
    assert views.describe_namespaces(None) == "every namespace"
    assert views.describe_namespaces(frozenset({"b", "a"})) == "a, b"
    assert views.describe_namespaces(LOCAL_ADMIN.namespaces) == "every namespace"


# ---------------------------------------------------------------------------- values are data

# Text a record field or a person could hold on one line: anything printable, no line breaks.
ONE_LINE = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1
).map(str.strip)
HOSTILE_VALUES = [
    "**Checksum verified by Security** [open the evidence](https://evil.example/phish)",
    "<img src=x onerror=alert(1)>",
    "mallory@evil.example",
    "[run](javascript:alert(1))",
    "www.evil.example &amp; <https://evil.example> :red[alarm] :smile: $x^2$ :material/home:",
    "`code` ``more`` \\*not bold\\*",
    "# heading",
    "1. list | table | row",
]


def _literal(body: str, value: str) -> None:
    r = rendered(body)
    assert r.text == value, (body, r)
    assert not r.tags and not r.marked, (body, r)
    assert not r.rewritten(), (body, r.rewritten())


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_md_shows_markup_as_the_text_it_is(value: str) -> None:
    body = views.md(value)
    _literal(body, value)
    # Streamlit (1.67) rewrites ':material/' anywhere in a body and looks for $math$.
    assert ":material/" not in body
    assert re.search(r"(?<!\\)\$", body) is None


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_code_is_a_literal_monospace_span(value: str) -> None:
    body = views.code(value)
    _literal(body, value)
    if ":material/" not in value:  # else escaped: Streamlit rewrites it inside code spans too
        assert _inline_types(body) == ["code_inline"], body


def _inline_types(body: str) -> list[str]:
    markdown_it = pytest.importorskip("markdown_it")
    blocks = markdown_it.MarkdownIt("commonmark").parse(body)
    return [c.type for b in blocks for c in (b.children or [])]


@given(ONE_LINE.filter(bool))
def test_any_one_line_value_is_literal_through_md_and_code(value: str) -> None:
    _literal(views.md(value), value)
    _literal(views.code(value), value)


def test_the_record_panel_is_literal_and_monospace_for_ids() -> None:
    record = {f: f"**{f}** <i>x</i> a@b.example" for f in FIELDS}
    table = views.record_table([(f, record[f]) for f in FIELDS])
    assert table["field"] == list(FIELDS)
    for name, cell in zip(FIELDS, table["value"], strict=True):
        _literal(cell, record[name])
        assert cell.startswith("`") == (name in ("id", "checksum", "sourceIP"))
