"""AuditFilter: parsing, validation, SQL shape and description, as a table."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from audit_core.filters import AuditFilter, FilterError, parse_format
from audit_core.models import AuditRecord

T = AuditRecord.__table__


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, AuditFilter()),
        ({"start": "2026-03-01"}, AuditFilter(start=utc(2026, 3, 1))),
        ({"start": "2026-03-01T02:00:00+02:00"}, AuditFilter(start=utc(2026, 3, 1))),
        ({"end": "2026-03-19T16:00:00Z"}, AuditFilter(end=utc(2026, 3, 19, 16))),
        ({"start": "2026-03-01T00:00:00.5Z"}, AuditFilter(start=utc(2026, 3, 1, 0, 0, 0, 500000))),
        ({"action": "runbook.create"}, AuditFilter(actions=("runbook.create",))),
        (
            {"action": "runbook.*, incident.acknowledge"},
            AuditFilter(actions=("incident.acknowledge",), action_prefixes=("runbook.",)),
        ),
        ({"action": "*"}, AuditFilter(action_prefixes=("",))),
        (
            {"user": "Admin@Empresa.com,admin@empresa.com"},
            AuditFilter(users=("admin@empresa.com",)),
        ),
        ({"namespace": "production,staging"}, AuditFilter(namespaces=("production", "staging"))),
        ({"namespace": " , production ,"}, AuditFilter(namespaces=("production",))),
        (
            {"action": ["runbook.*", "user.login"]},
            AuditFilter(actions=("user.login",), action_prefixes=("runbook.",)),
        ),
    ],
)
def test_parse_accepts(kwargs: dict[str, str], expected: AuditFilter) -> None:
    assert AuditFilter.parse(**kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"start": "yesterday"}, "from", "ISO 8601"),
        ({"start": "2026-13-01"}, "from", "ISO 8601"),
        ({"end": "2026-02-30T00:00:00Z"}, "to", "ISO 8601"),
        ({"start": "2026-03-02", "end": "2026-03-01"}, "from", "earlier than"),
        ({"start": "2026-03-01", "end": "2026-03-01"}, "from", "earlier than"),
        ({"action": "run*book"}, "action", "'*'"),
        ({"action": "runbook*"}, "action", "family"),
        ({"user": "a\x00b"}, "user", "control character"),
        ({"namespace": "prod\nuction"}, "namespace", "control character"),
        # Around a value, too: refused, never stripped away.
        ({"namespace": "\r\nproduction"}, "namespace", "control character"),
        ({"user": "a@b.c\t"}, "user", "control character"),
        ({"action": "runbook.*,\x00"}, "action", "control character"),
        ({"start": "2026-03-01\r\n"}, "from", "control character"),
        ({"end": "\n"}, "to", "control character"),
        ({"namespace": "x" * 201}, "namespace", "longer than 200"),
        ({"user": "a," * 600}, "user", "longer than 1000"),
        ({"namespace": ",".join(f"n{i}" for i in range(51))}, "namespace", "more than 50"),
    ],
)
def test_parse_refuses_with_clear_message(kwargs: dict[str, str], field: str, message: str) -> None:
    with pytest.raises(FilterError) as err:
        AuditFilter.parse(**kwargs)
    assert err.value.field == field
    assert message in str(err.value)


def test_round_trip_through_params_and_json() -> None:
    flt = AuditFilter.parse(
        start="2026-03-01",
        end="2026-03-19T16:00:00Z",
        action="runbook.*,user.login",
        user="A@b.c",
        namespace="production",
    )
    assert AuditFilter.from_params(flt.to_params()) == flt
    assert AuditFilter.from_json(flt.to_json()) == flt


def _sql(flt: AuditFilter, dialect: object, **kw: bool) -> tuple[str, dict[str, object]]:
    compiled = flt.clause(T, **kw).compile(dialect=dialect)  # type: ignore[arg-type]
    return str(compiled), dict(compiled.params)


def test_clause_uses_bound_parameters_only() -> None:
    evil = "production' OR '1'='1"
    sql, params = _sql(AuditFilter.parse(namespace=evil, user="x'--"), sqlite.dialect())
    assert evil not in sql and "x'--" not in sql
    assert params == {"namespace_1": [evil], "user_lc_1": ["x'--"]}


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()])
def test_prefix_is_an_index_range_or_like(dialect: object) -> None:
    flt = AuditFilter.parse(action="runbook.*")
    sql, params = _sql(flt, dialect)
    assert "LIKE" not in sql.upper()
    assert sorted(params.values()) == ["runbook.", "runbook/"]
    sql, params = _sql(flt, dialect, prefix_as_range=False)
    assert "LIKE" in sql.upper() and list(params.values()) == ["runbook.%"]


def test_like_form_escapes_wildcards_in_the_prefix() -> None:
    sql, params = _sql(AuditFilter.parse(action="a_b%.*"), sqlite.dialect(), prefix_as_range=False)
    assert list(params.values()) == ["a\\_b\\%.%"]


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({}, "All records"),
        ({"start": "2026-03-01"}, "From 2026-03-01T00:00:00Z"),
        (
            {"start": "2026-03-01", "end": "2026-03-02"},
            "From 2026-03-01T00:00:00Z to 2026-03-02T00:00:00Z",
        ),
        ({"end": "2026-03-02"}, "Before 2026-03-02T00:00:00Z"),
        (
            {"action": "runbook.*", "namespace": "production,staging"},
            "Action runbook.*; namespace in production, staging",
        ),
        ({"user": "A@B.com"}, "User a@b.com"),
    ],
)
def test_describe_is_one_readable_line(kwargs: dict[str, str], text: str) -> None:
    assert AuditFilter.parse(**kwargs).describe() == text


@pytest.mark.parametrize(
    ("raw", "fmt"), [(None, "csv"), ("CSV", "csv"), ("json", "json"), ("jsonl", "jsonl")]
)
def test_parse_format(raw: str | None, fmt: str) -> None:
    assert parse_format(raw) == fmt


def test_parse_format_refuses_unknown() -> None:
    with pytest.raises(FilterError, match="csv, json, jsonl"):
        parse_format("xml")


@pytest.mark.parametrize("raw", ["\r\ncsv", "csv\r\n", "\tjson", "jsonl\x00", "\x7fcsv"])
def test_parse_format_refuses_control_characters_around_the_name(raw: str) -> None:
    with pytest.raises(FilterError, match="control character") as err:
        parse_format(raw)
    assert err.value.field == "format"


def test_spaces_around_values_are_still_trimmed() -> None:
    assert parse_format(" json ") == "json"
    flt = AuditFilter.parse(namespace=" production ", start=" 2026-03-01 ")
    assert flt == AuditFilter(start=utc(2026, 3, 1), namespaces=("production",))
