"""The audit record: field order, timestamps, validation and the checksum."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import BadRequestError

FIELDS: tuple[str, ...] = (
    "id",
    "timestamp",
    "action",
    "user",
    "role",
    "resource",
    "resourceType",
    "namespace",
    "sourceIP",
    "checksum",
)
CHECKED_FIELDS = FIELDS[:-1]
ID_RE = re.compile(r"^audit-(\d{8})-(\d{3,})$")
# Fields whose values are free text: neutralised in CSV cells, checked for length at ingest.
FREE_TEXT: tuple[str, ...] = tuple(f for f in FIELDS if f not in ("id", "timestamp", "checksum"))
MAX_FIELD = {"resource": 4000}
DEFAULT_MAX = 320
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RecordError(BadRequestError):
    """A record that cannot be stored, with the reason in words."""


def parse_instant(text: str) -> datetime:
    """Parse ISO 8601 text into an aware UTC datetime; a date alone is midnight UTC."""
    s = text.strip()
    if not s:
        raise ValueError("empty timestamp")
    if s.endswith(("z", "Z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_instant(dt: datetime) -> str:
    """Write an instant as the export does: UTC, Z, fractions only when not zero."""
    dt = dt.astimezone(UTC)
    base = f"{dt.year:04d}-" + dt.strftime("%m-%dT%H:%M:%S")  # %Y does not pad years < 1000
    if dt.microsecond:
        base += "." + f"{dt.microsecond:06d}".rstrip("0")
    return base + "Z"


def to_micros(dt: datetime) -> int:
    delta = dt.astimezone(UTC) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    from datetime import timedelta

    return EPOCH + timedelta(microseconds=us)


def compute_checksum(fields: Mapping[str, str]) -> str:
    """Return sha256:<hex> over the canonical JSON of the nine non-checksum fields."""
    canon = {k: fields[k] for k in CHECKED_FIELDS}
    data = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(data.encode("utf-8")).hexdigest()


def chain_next(prev_hash: str, checksum: str) -> str:
    """Link one record into the hash chain after prev_hash."""
    return hashlib.sha256(f"{prev_hash}{checksum}".encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """A validated record, with exported values and the search columns derived."""

    id: str
    timestamp: str
    action: str
    user: str
    role: str
    resource: str
    resourceType: str  # noqa: N815 - the seed's name
    namespace: str
    sourceIP: str  # noqa: N815 - the seed's name
    checksum: str
    ts: int

    def as_dict(self) -> dict[str, str]:
        return {f: getattr(self, f) for f in FIELDS}


def normalize(raw: Mapping[str, object], *, require_checksum: bool = False) -> Record:
    """Validate one incoming record; compute or check its checksum."""
    if not isinstance(raw, Mapping):
        raise RecordError("a record must be an object with the seed's fields")
    unknown = set(raw) - set(FIELDS)
    if unknown:
        raise RecordError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    values: dict[str, str] = {}
    for name in CHECKED_FIELDS:
        value = raw.get(name)
        if value is None:
            raise RecordError(f"missing field {name!r}")
        if not isinstance(value, str):
            raise RecordError(f"field {name!r} must be a string")
        limit = MAX_FIELD.get(name, DEFAULT_MAX)
        if len(value) > limit:
            raise RecordError(f"field {name!r} is longer than {limit} characters")
        values[name] = value
    for name in ("id", "timestamp", "action", "user", "namespace"):
        if not values[name].strip():
            raise RecordError(f"field {name!r} is empty")
    if not ID_RE.match(values["id"]):
        raise RecordError(f"id {values['id']!r} is not of the form audit-YYYYMMDD-NNN")
    try:
        when = parse_instant(values["timestamp"])
    except ValueError as exc:
        raise RecordError(f"timestamp: {exc}") from None
    values["timestamp"] = format_instant(when)
    expected = compute_checksum(values)
    given = raw.get("checksum")
    if given in (None, ""):
        if require_checksum:
            raise RecordError("missing field 'checksum'")
    elif given != expected:
        raise RecordError(f"checksum mismatch: given {given!r}, computed {expected!r}")
    return Record(**values, checksum=expected, ts=to_micros(when))
