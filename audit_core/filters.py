"""AuditFilter: one parser for from/to/action/user/namespace, shared by UI, API and CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, or_, true

from .errors import BadRequestError
from .record import format_instant, parse_instant, to_micros

FORMATS = ("csv", "json", "jsonl")
MAX_PARAM = 1000  # characters in one query parameter
MAX_VALUE = 200  # characters in one comma-separated value
MAX_VALUES = 50  # values in one comma list
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FilterError(BadRequestError):
    """Bad filter input; message is fit to show the person who typed it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def refuse_control(name: str, raw: str) -> None:
    """Refuse a value with a control character anywhere, even around it (CR/LF, tab, NUL)."""
    if _CONTROL.search(raw):
        raise FilterError(f"{name} contains a control character", name)


def _split(name: str, raw: str | Iterable[str] | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    parts = raw.split(",") if isinstance(raw, str) else [p for r in raw for p in r.split(",")]
    if isinstance(raw, str) and len(raw) > MAX_PARAM:
        raise FilterError(f"{name} is longer than {MAX_PARAM} characters", name)
    values: list[str] = []
    for part in parts:
        # Checked before the spaces are trimmed: a CR/LF or tab around a value is refused,
        # never quietly stripped (str.strip would remove it).
        refuse_control(name, part)
        value = part.strip(" ")
        if not value:
            continue
        if len(value) > MAX_VALUE:
            raise FilterError(f"{name} value is longer than {MAX_VALUE} characters", name)
        if value not in values:
            values.append(value)
    if len(values) > MAX_VALUES:
        raise FilterError(f"{name} lists more than {MAX_VALUES} values", name)
    return tuple(values)


def _instant(name: str, raw: str | datetime | None) -> datetime | None:
    if raw is None:
        return None
    if isinstance(raw, datetime):
        return parse_instant(raw.isoformat())
    refuse_control(name, raw)
    if not raw.strip(" "):
        return None
    if len(raw) > 64:
        raise FilterError(f"{name} is not an ISO 8601 date or time", name)
    try:
        return parse_instant(raw)
    except (ValueError, OverflowError):  # OverflowError: an offset past year 1 or 9999
        raise FilterError(
            f"{name} must be an ISO 8601 date or time such as 2026-03-01T00:00:00Z, got {raw!r}",
            name,
        ) from None


@dataclass(frozen=True)
class AuditFilter:
    """A validated filter: [start, end) in UTC, actions, prefixes, users, namespaces."""

    start: datetime | None = None
    end: datetime | None = None
    actions: tuple[str, ...] = ()
    action_prefixes: tuple[str, ...] = ()  # "runbook." for runbook.*
    users: tuple[str, ...] = ()  # lower-case
    namespaces: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        *,
        start: str | datetime | None = None,
        end: str | datetime | None = None,
        action: str | Iterable[str] | None = None,
        user: str | Iterable[str] | None = None,
        namespace: str | Iterable[str] | None = None,
    ) -> AuditFilter:
        """Validate raw input (query parameters, widget values, CLI options)."""
        s = _instant("from", start)
        e = _instant("to", end)
        if s is not None and e is not None and s >= e:
            raise FilterError("from must be earlier than to (the range is [from, to))", "from")
        exact: list[str] = []
        prefixes: list[str] = []
        for a in _split("action", action):
            if a.endswith("*"):
                stem = a[:-1]
                if "*" in stem or (stem and not stem.endswith(".")):
                    raise FilterError(
                        f"action {a!r}: a wildcard may only end a family, as in runbook.*",
                        "action",
                    )
                prefixes.append(stem)
            elif "*" in a:
                raise FilterError(f"action {a!r}: '*' may only come last", "action")
            else:
                exact.append(a)
        users = tuple(dict.fromkeys(u.lower() for u in _split("user", user)))
        return cls(
            start=s,
            end=e,
            actions=tuple(exact),
            action_prefixes=tuple(prefixes),
            users=users,
            namespaces=_split("namespace", namespace),
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AuditFilter:
        """Parse the API's query parameter names (from, to, action, user, namespace)."""
        return cls.parse(
            start=params.get("from"),
            end=params.get("to"),
            action=params.get("action"),
            user=params.get("user"),
            namespace=params.get("namespace"),
        )

    def with_namespaces(self, namespaces: Iterable[str]) -> AuditFilter:
        return replace(self, namespaces=tuple(namespaces))

    def with_end(self, end: datetime) -> AuditFilter:
        return replace(self, end=end)

    @property
    def action_terms(self) -> tuple[str, ...]:
        return self.actions + tuple(p + "*" for p in self.action_prefixes)

    def to_params(self) -> dict[str, str]:
        """The filter as API query parameters (only those set)."""
        out: dict[str, str] = {}
        if self.start:
            out["from"] = format_instant(self.start)
        if self.end:
            out["to"] = format_instant(self.end)
        if self.action_terms:
            out["action"] = ",".join(self.action_terms)
        if self.users:
            out["user"] = ",".join(self.users)
        if self.namespaces:
            out["namespace"] = ",".join(self.namespaces)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_params(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AuditFilter:
        return cls.from_params(json.loads(text))

    def clause(self, table: Table, *, prefix_as_range: bool = True) -> ColumnElement[bool]:
        """Return a WHERE clause with bound parameters.

        prefix_as_range writes runbook.* as action >= 'runbook.' AND action < 'runbook/',
        which an index can count through; LIKE lets SQLite walk the timestamp index
        instead, which is the faster plan for "newest N" (see BENCHMARKS.md).
        """
        c = table.c
        parts: list[ColumnElement[bool]] = []
        if self.start is not None:
            parts.append(c.ts >= to_micros(self.start))
        if self.end is not None:
            parts.append(c.ts < to_micros(self.end))
        if self.actions or self.action_prefixes:
            alts: list[ColumnElement[bool]] = []
            if self.actions:
                alts.append(c.action.in_(self.actions))
            for p in self.action_prefixes:
                if not p:
                    alts.append(true())
                elif prefix_as_range:
                    alts.append(and_(c.action >= p, c.action < p[:-1] + chr(ord(p[-1]) + 1)))
                else:
                    escaped = p.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                    alts.append(c.action.like(escaped + "%", escape="\\"))
            parts.append(or_(*alts) if len(alts) > 1 else alts[0])
        if self.users:
            parts.append(c.user_lc.in_(self.users))
        if self.namespaces:
            parts.append(c.namespace.in_(self.namespaces))
        if not parts:
            return true()
        return and_(*parts) if len(parts) > 1 else parts[0]

    def describe(self) -> str:
        """One line a person can read: what this filter selects."""
        bits = []
        if self.start and self.end:
            bits.append(f"from {format_instant(self.start)} to {format_instant(self.end)}")
        elif self.start:
            bits.append(f"from {format_instant(self.start)}")
        elif self.end:
            bits.append(f"before {format_instant(self.end)}")
        if self.action_terms:
            bits.append("action " + _or(self.action_terms))
        if self.users:
            bits.append("user " + _or(self.users))
        if self.namespaces:
            bits.append("namespace " + _or(self.namespaces))
        if not bits:
            return "All records"
        text = "; ".join(bits)
        return text[0].upper() + text[1:]


def _or(values: tuple[str, ...]) -> str:
    return values[0] if len(values) == 1 else "in " + ", ".join(values)


def parse_format(raw: str | None, default: str = "csv") -> str:
    """Validate a format name (csv, json, jsonl; any case, spaces around allowed)."""
    if raw:
        refuse_control("format", raw)
    value = (raw or default).strip(" ").lower()
    if value not in FORMATS:
        raise FilterError(f"format must be one of csv, json, jsonl; got {raw!r}", "format")
    return value
