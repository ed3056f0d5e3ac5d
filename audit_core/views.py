"""What the portal's pages show, without Streamlit: filter input <-> URL, pickers, frames.

Pages read widgets, call these and `service`, and render. Everything here is plain
Python (and pandas), so it is tested without a browser.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import pandas as pd
from sqlalchemy import Engine

from . import evidence, formats, query, service
from .access import AccessDeniedError, Principal, TokenInfo, UserInfo
from .config import Settings
from .filters import AuditFilter, FilterError
from .jobs import JobInfo
from .record import FIELDS, FREE_TEXT, compute_checksum, format_instant, parse_instant
from .worker import THREAD_NAME

T = TypeVar("T")
LIST_PARAMS = ("action", "user", "namespace")
PREVIEW_ROWS = 500
# The record's fields with the time first and the id last; the checksum is shown on select.
PREVIEW_COLUMNS = (
    "timestamp",
    *FREE_TEXT,
    "id",
)


# Every ASCII punctuation character: CommonMark renders any of them literally when it is
# backslash-escaped, and each is, or starts, some markup somewhere: emphasis, links and
# images, HTML tags and entities, tables, Streamlit's `:color[...]` directives, `$math$`.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# What escaping cannot stop. Streamlit's Markdown (1.67) finds GitHub's bare autolinks
# (`https://...`, `www.x.y`, `a@b.c`) and `:emoji:` shortcodes in the text *after*
# parsing, escapes already undone, so a word holding one goes in a code span instead,
# whose text nothing rewrites.
_REWRITTEN = re.compile(r"@|https?://|www\.|:[\w+-][\w+-]*:", re.IGNORECASE)
_WHITESPACE = re.compile(r"(\s+)")
_BACKTICKS = re.compile(r"`+")
_ICONS = ":material/"  # Streamlit rewrites this everywhere in a body, code spans included


def md(value: object) -> str:
    """`value` as Markdown that shows exactly its text, for a value inside a sentence.

    Anything from the log or from a person (a record field, an email, a filter value, an
    error message quoting input) goes into Streamlit's Markdown bodies, labels and table
    cells through this or `code`, never as it is (DESIGN.md "Values from the log are
    data"). Punctuation is escaped; a word Streamlit would turn into a link or an emoji
    whatever its escapes is shown as a code span.
    """
    words = _WHITESPACE.split(str(value))
    return "".join(code(w) if _REWRITTEN.search(w) else _PUNCTUATION.sub(r"\\\1", w) for w in words)


def code(value: object) -> str:
    """`value` as a Markdown code span: monospace and literal (ids, checksums, addresses).

    Nothing inside a code span is interpreted, and the fence is one backtick longer than
    any run in the value, so a backtick cannot close it. A code span would turn line
    breaks into spaces and Streamlit rewrites `:material/` even inside one: such values
    are split there, the pieces in spans and the rest escaped.
    """
    text = str(value)
    if not text.strip() or "\n" in text or "\r" in text:
        return md(text)
    if _ICONS in text:
        return _PUNCTUATION.sub(r"\\\1", _ICONS).join(
            code(p) if p else "" for p in text.split(_ICONS)
        )
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    # A span's content loses one space at each end when it has one at both; and a
    # backtick next to the fence would lengthen it. Pad, and the padding is what goes.
    pad = text[0] in "` " or text[-1] in "` "
    return f"{fence} {text} {fence}" if pad else f"{fence}{text}{fence}"


@dataclass(frozen=True)
class FilterInput:
    """The Explore page's filter widgets' values, as typed or picked."""

    start: str = ""
    end: str = ""
    actions: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()

    @classmethod
    def from_query(cls, params: Mapping[str, str | Sequence[str]]) -> FilterInput:
        """Read a URL's query parameters (the API's names; lists comma-separated)."""

        def text(name: str) -> str:
            raw = params.get(name, "")
            return (raw if isinstance(raw, str) else ",".join(raw)).strip()

        def values(name: str) -> tuple[str, ...]:
            raw = params.get(name, "")
            items = [raw] if isinstance(raw, str) else list(raw)
            parts = [p for item in items for p in item.split(",")]
            return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))

        return cls(text("from"), text("to"), values("action"), values("user"), values("namespace"))

    def to_query(self) -> dict[str, str]:
        """The values as query parameters (only those set), so a copied link reopens them."""
        out = {
            "from": self.start.strip(),
            "to": self.end.strip(),
            "action": ",".join(self.actions),
            "user": ",".join(self.users),
            "namespace": ",".join(self.namespaces),
        }
        return {k: v for k, v in out.items() if v}

    def parse(self) -> tuple[AuditFilter | None, dict[str, str]]:
        """Validate each field, then the whole; return (filter or None, field -> message)."""
        errors: dict[str, str] = {}
        checks: tuple[tuple[str, dict[str, Any]], ...] = (
            ("from", {"start": self.start}),
            ("to", {"end": self.end}),
            ("action", {"action": list(self.actions)}),
            ("user", {"user": list(self.users)}),
            ("namespace", {"namespace": list(self.namespaces)}),
        )
        for name, kwargs in checks:
            try:
                AuditFilter.parse(**kwargs)
            except FilterError as exc:
                errors[exc.field or name] = str(exc)
        if errors:
            return None, errors
        try:
            flt = AuditFilter.parse(
                start=self.start,
                end=self.end,
                action=list(self.actions),
                user=list(self.users),
                namespace=list(self.namespaces),
            )
        except FilterError as exc:
            return None, {exc.field or "from": str(exc)}
        return flt, {}


def family(action: str) -> str:
    """The family of an action: 'runbook' for 'runbook.execute'."""
    return action.split(".", 1)[0]


def action_options(actions: Iterable[str], keep: Iterable[str] = ()) -> list[str]:
    """Actions grouped by family, each family led by its 'family.*' choice.

    `keep` adds values (e.g. from a URL) that are not among the known actions, so a
    restored filter never silently loses a term.
    """
    known = sorted(set(actions))
    by_family: dict[str, list[str]] = {}
    for a in known:
        by_family.setdefault(family(a), []).append(a)
    out: list[str] = []
    for fam in sorted(by_family):
        members = by_family[fam]
        if len(members) > 1 or members[0] != fam:
            out.append(f"{fam}.*")
        out.extend(members)
    return with_kept(out, keep)


def action_label(option: str) -> str:
    """How an action choice reads in the picker."""
    if option.endswith(".*"):
        return f"{option}  (every {option[:-2]} action)"
    return f"  {option}"


def with_kept(options: Iterable[str], keep: Iterable[str]) -> list[str]:
    """Options plus any kept values they lack (in the order given)."""
    out = list(options)
    out.extend(v for v in keep if v not in out)
    return out


def preview_frame(rows: Sequence[Mapping[str, str]]) -> pd.DataFrame:
    """The preview table: newest first, the columns an auditor scans first."""
    frame = pd.DataFrame(list(rows), columns=list(FIELDS))
    return frame[list(PREVIEW_COLUMNS)]


def record_detail(row: Mapping[str, str]) -> tuple[list[tuple[str, str]], bool]:
    """A record's fields in the seed's order, and whether its checksum matches its fields."""
    return [(f, str(row.get(f, ""))) for f in FIELDS], compute_checksum(row) == row["checksum"]


MONOSPACE_FIELDS = frozenset({"id", "checksum", "sourceIP"})
# A table cell breaks lines only at spaces, so a longer word would run out of sight; a code
# span breaks anywhere (it is how the 71-character checksum wraps).
LONG_WORD = 32


def record_table(fields: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """The record panel's field/value table. st.table renders Markdown in every cell, so
    each value goes in literal: monospace for the id, checksum and address, and for a value
    with a word too long to wrap; escaped else."""
    return {
        "field": [f for f, _ in fields],
        "value": [code(v) if f in MONOSPACE_FIELDS or _long_word(v) else md(v) for f, v in fields],
    }


def _long_word(value: str) -> bool:
    return any(len(w) > LONG_WORD for w in value.split())


def histogram_frame(buckets: Iterable[tuple[int, str, int]], by: str) -> pd.DataFrame:
    """(bucket start in µs, key, count) -> a frame with time (UTC), the key column and count."""
    rows = [(datetime.fromtimestamp(b / 1_000_000, UTC), k, n) for b, k, n in buckets]
    frame = pd.DataFrame(rows, columns=["time", by, "records"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame


def facet_frame(pairs: Iterable[tuple[str, int]], name: str) -> pd.DataFrame:
    return pd.DataFrame(list(pairs), columns=[name, "records"])


def bucket_for(first: str | None, last: str | None) -> str:
    """Hourly bars for up to three days of records, daily beyond."""
    if not first or not last:
        return "day"
    span = parse_instant(last) - parse_instant(first)
    return "hour" if span.total_seconds() <= 3 * 86_400 else "day"


def human_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - loop always returns


def time_left(expires_at: datetime | None, now: datetime | None = None) -> str:
    """'5h 12m' until expiry, 'expired' after, '' when unknown."""
    if expires_at is None:
        return ""
    now = now or datetime.now(UTC)
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    seconds = int((expires_at - now).total_seconds())
    if seconds <= 0:
        return "expired"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{max(rest // 60, 1)}m"


def progress(rows_written: int | None, estimated: int | None, state: str) -> float:
    """A job's progress as 0..1 (completed jobs are full)."""
    if state == "completed":
        return 1.0
    if not estimated:
        return 0.0
    return max(0.0, min(1.0, (rows_written or 0) / estimated))


def describe_namespaces(namespaces: frozenset[str] | None) -> str:
    return "every namespace" if namespaces is None else (", ".join(sorted(namespaces)) or "none")


def export_bytes(
    engine: Engine,
    who: Principal,
    flt: AuditFilter,
    fmt: str,
    settings: Settings,
    file_name: str | None = None,
) -> bytes:
    """Build an immediate (at or under the limit) export file in memory; audited as 'ui'.

    The portal's download buttons call this only when clicked. With `file_name` (the name
    the browser saves it under) and a signing key, its manifest is signed and kept: the
    Exports page lists it beside the person's other signed exports.
    """
    with engine.connect() as conn:
        plan = service.plan_export(conn, who, flt, fmt)
    manifest = None
    if file_name is not None and evidence.signer_for(engine) is not None:
        manifest = service.ManifestRequest(file_name, flt.describe())
    chunks = service.export_chunks(engine, who, plan, settings, channel="ui", manifest=manifest)
    return b"".join(chunks)


def when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def users_frame(users: Iterable[Any]) -> pd.DataFrame:
    """Portal users as the Admin page lists them."""
    return pd.DataFrame(
        [
            (u.email, u.role, u.grants, "active" if u.active else "removed", when(u.updated_at))
            for u in users
        ],
        columns=["email", "role", "namespaces", "status", "changed"],
    )


def tokens_frame(tokens: Iterable[Any]) -> pd.DataFrame:
    """API tokens by prefix (the secret part is never stored, so never shown)."""
    return pd.DataFrame(
        [
            (
                t.prefix,
                t.email,
                when(t.expires_at),
                when(t.last_used_at) or "never",
                "revoked " + when(t.revoked_at) if t.revoked_at else "active",
            )
            for t in tokens
        ],
        columns=["prefix", "owner", "expires", "last used", "status"],
    )


@dataclass(frozen=True)
class WorkerStatus:
    threads: int
    jobs: str


def worker_status(recent_jobs: Iterable[Any]) -> WorkerStatus:
    """Live export worker threads in this process, and recent jobs counted by state."""
    alive = sum(1 for t in threading.enumerate() if t.name.startswith(THREAD_NAME) and t.is_alive())
    counts: dict[str, int] = {}
    for job in recent_jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    text = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"
    return WorkerStatus(alive, text)


@dataclass(frozen=True)
class ExploreData:
    """Everything the Explore page shows for one filter, read in one go."""

    summary: query.Summary
    facets: dict[str, list[tuple[str, int]]]
    bucket: str
    histogram: list[tuple[int, str, int]]  # by action family
    first_page: query.Page


def _read(engine: Engine, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with engine.connect() as conn:
        return fn(conn, *args, **kwargs)


def explore_data(engine: Engine, who: Principal, flt: AuditFilter) -> ExploreData:
    """Read summary, facets, histogram and the newest page, two reads at a time.

    Each thread has its own connection: the database does the work (sqlite3 and
    psycopg release the GIL), so on two cores the page waits for the slower chain
    (summary, then the histogram whose bucket it decides) rather than for the sum.
    """

    def summary_and_histogram() -> tuple[query.Summary, str, list[tuple[int, str, int]]]:
        with engine.connect() as conn:
            s = service.summary(conn, who, flt)
            bucket = bucket_for(s.first, s.last)
            hist = service.histogram(conn, who, flt, bucket=bucket) if s.total else []
        return s, bucket, hist

    def facets_and_page() -> tuple[dict[str, list[tuple[str, int]]], query.Page]:
        with engine.connect() as conn:
            page = service.preview(conn, who, flt, limit=PREVIEW_ROWS)
            facets = service.facets(conn, who, flt) if page.rows else {}
        return facets, page

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="explore") as pool:
        second = pool.submit(facets_and_page)
        s, bucket, hist = summary_and_histogram()
        facets, page = second.result()
    return ExploreData(s, facets, bucket, hist, page)


def pickers(engine: Engine, who: Principal) -> dict[str, list[str]]:
    """Distinct actions, users and namespaces the principal may see, read side by side."""
    columns = ("action", "user", "namespace")
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="pickers") as pool:
        futures = {c: pool.submit(_distinct, engine, who, c) for c in columns}
        return {c: f.result() for c, f in futures.items()}


def _distinct(engine: Engine, who: Principal, column: str) -> list[str]:
    try:
        return _read(engine, service.distinct_values, who, column)
    except AccessDeniedError:  # no grants at all: nothing to offer
        return []


# ---------------------------------------------------------------------------- the record panel

RECORD_PARAM = "record"
# Every query parameter Explore reads; anything else in its URL is named on the page.
EXPLORE_PARAMS = ("from", "to", "action", "user", "namespace", RECORD_PARAM)


def record_by_id(engine: Engine, who: Principal, record_id: str) -> dict[str, str] | None:
    """The record with this id if the principal may see it, else None (service.visible_record)."""
    return _read(engine, service.visible_record, who, record_id)


def no_record_message(record_id: str) -> str:
    """What an unknown id and a record outside the grants both answer (Markdown, literal id)."""
    return f"No record {code(record_id)} that you may see."


def record_json(row: Mapping[str, str]) -> bytes:
    """The record's line in a JSON Lines export, newline included: the writer's own bytes."""
    return b"".join(formats.jsonl_chunks([[tuple(str(row[f]) for f in FIELDS)]]))


def record_link(base_url: str | None, record_id: str) -> str:
    """The link that opens the record panel for this record (relative without a base)."""
    return f"{(base_url or '').split('?', 1)[0]}?{RECORD_PARAM}={quote(record_id, safe='')}"


def row_of(rows: Sequence[Mapping[str, Any]], record_id: str | None) -> int | None:
    """The position of the record in a preview page's rows, or None when it is not there."""
    if record_id is None:
        return None
    return next((i for i, r in enumerate(rows) if r.get("id") == record_id), None)


# ---------------------------------------------------------------------------- the URL's truth


def unknown_params(params: Mapping[str, object]) -> list[str]:
    """The URL's query parameters Explore does not read (a typo such as `frm`), sorted."""
    return sorted(name for name in params if name not in EXPLORE_PARAMS)


def unknown_params_message(names: Sequence[str]) -> str:
    """A warning naming the ignored parameters, literally (Markdown)."""
    listed = ", ".join(code(n) for n in names)
    known = ", ".join(code(p) for p in EXPLORE_PARAMS)
    one = len(names) == 1
    what = f"parameter {listed} means" if one else f"parameters {listed} mean"
    was = "was" if one else "were"
    return f"The link's {what} nothing here and {was} ignored (Explore reads {known})."


def _term_matches(field: str, term: str, known: Sequence[str]) -> bool:
    if field == "action" and term.endswith("*"):
        stem = term[:-1]
        return any(a.startswith(stem) for a in known)
    if field == "user":
        return term.lower() in {k.lower() for k in known}
    return term in known


def unmatched_terms(
    typed: FilterInput, known: Mapping[str, Sequence[str]], who: Principal | None = None
) -> dict[str, list[str]]:
    """Filter values that match no action, user or namespace the principal may see.

    A namespace outside `who`'s grants is left out: asking for it is refused, not unmatched.
    """
    terms = {"action": typed.actions, "user": typed.users, "namespace": typed.namespaces}
    out: dict[str, list[str]] = {}
    for field, values in terms.items():
        missing = [v for v in values if not _term_matches(field, v, known.get(field, ()))]
        if field == "namespace" and who is not None:
            missing = [v for v in missing if who.may_see(v)]
        if missing:
            out[field] = missing
    return out


def unmatched_message(field: str, values: Sequence[str]) -> str:
    """A warning naming filter values that match nothing known, literally (Markdown)."""
    listed = ", ".join(code(v) for v in values)
    what = "them" if len(values) > 1 else "it"
    return (
        f"No record you may see has the {field} {listed}: nothing can match {what}. "
        "Check the spelling, or pick from the list."
    )


UNMATCHED_NOTE = "  (matches no record)"


def picker_label(option: str, missing: Iterable[str], base: Callable[[str], str] = str) -> str:
    """A picker choice's label, marked when it matches no record (kept from a URL or typed)."""
    return option + UNMATCHED_NOTE if option in set(missing) else base(option)


# ---------------------------------------------------------------------------- admin feedback

TOKEN_SHOWN_ONCE = (
    "Copy this token now: it is shown only once. The portal keeps only its hash, so no one "
    "can show it again; if it is lost, revoke it and create another."
)


def user_saved_message(before: UserInfo | None, after: UserInfo) -> str:
    """What saving a user did, as Markdown: the email literal, each change from -> to."""
    who, grants = code(after.email), md(describe_namespaces(after.namespaces))
    if before is None or not before.active:
        verb = "Added" if before is None else "Re-added"
        return f"{verb} {who} as {md(after.role)} on {grants}."
    changes = []
    if before.role != after.role:
        changes.append(f"role {md(before.role)} → {md(after.role)}")
    if before.namespaces != after.namespaces:
        changes.append(f"namespaces {md(describe_namespaces(before.namespaces))} → {grants}")
    if not changes:
        return f"No change: {who} is already {md(after.role)} on {grants}."
    return f"Saved {who}: {'; '.join(changes)}."


def user_removed_message(info: UserInfo) -> str:
    """The confirmation of a removal (Markdown, email literal)."""
    return (
        f"Removed {code(info.email)}: they can no longer sign in, and their API tokens "
        "stop working now."
    )


def token_created_message(info: TokenInfo) -> str:
    """The confirmation of a new token: its visible prefix, owner and expiry (Markdown)."""
    return (
        f"Created API token {code(info.prefix)} for {code(info.email)}; "
        f"it expires {md(when(info.expires_at))}."
    )


def token_revoked_message(info: TokenInfo) -> str:
    """The confirmation of a revocation (Markdown, prefix and owner literal)."""
    return f"Revoked API token {code(info.prefix)} of {code(info.email)}: it stops working now."


# ---------------------------------------------------------------------------- job cards

# The state whose time finished_at holds: an expired job's is when it completed.
_FINISHED = {
    "completed": "completed",
    "expired": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def duration(seconds: float) -> str:
    """An elapsed time as a person reads it: '42s', '3m 05s', '2h 04m'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}m {s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def job_times(job: JobInfo) -> str:
    """'Requested … · started … · completed …' (UTC), leaving out steps not reached.

    A queued job's started_at may be a failed attempt's, waiting for its retry: not shown.
    """
    parts = [f"Requested {when(job.created_at)}"]
    if job.started_at is not None and job.state != "queued":
        parts.append(f"started {when(job.started_at)}")
    finished = _FINISHED.get(job.state)
    if finished and job.finished_at is not None:
        parts.append(f"{finished} {when(job.finished_at)}")
    return " · ".join(parts)


def job_elapsed(job: JobInfo, now: datetime | None = None) -> str:
    """How long the job has waited, run or took: 'waiting 12s', 'running 1m 05s', 'took 42s'."""
    now = now or datetime.now(UTC)
    if job.state == "queued":
        return f"waiting {duration((now - job.created_at).total_seconds())}"
    if job.started_at is None:
        return ""
    if job.state == "processing":
        return f"running {duration((now - job.started_at).total_seconds())}"
    if job.finished_at is not None and job.state != "cancelled":
        return f"took {duration((job.finished_at - job.started_at).total_seconds())}"
    return ""


def job_progress_text(job: JobInfo, now: datetime | None = None) -> str:
    """The progress bar's line: rows written of the estimate (as the worker last reported)."""
    elapsed = job_elapsed(job, now)
    if job.state == "queued":
        return f"Waiting for a worker · {elapsed}"
    percent = int(progress(job.rows_written, job.estimated_records, job.state) * 100)
    rows = f"{job.rows_written:,} of {job.estimated_records:,} rows ({percent}%)"
    return f"{rows} · {elapsed}" if elapsed else rows


# ---------------------------------------------------------------------------- time, picked

# Explore's time presets, in the order offered; "custom" keeps From and To as typed.
TIME_PRESETS = {
    "custom": "Custom: From and To",
    "last_hour": "Last hour",
    "last_24_hours": "Last 24 hours",
    "last_7_days": "Last 7 days",
    "last_30_days": "Last 30 days",
    "this_month": "This month",
    "last_month": "Last month",
    "this_quarter": "This quarter",
}
_ROLLING = {
    "last_hour": timedelta(hours=1),
    "last_24_hours": timedelta(days=1),
    "last_7_days": timedelta(days=7),
    "last_30_days": timedelta(days=30),
}
# The date-and-time pickers' range (naive UTC, as st.datetime_input holds it).
PICKER_MIN = datetime(1970, 1, 1)
PICKER_MAX = datetime(2099, 12, 31, 23, 59)


def preset_range(name: str, now: datetime) -> tuple[datetime, datetime]:
    """A preset's [start, end) at `now`, as absolute UTC instants in whole seconds.

    The range ends with the second `now` falls in (its end is the next second), so a
    record stamped in it is in, and a range is never empty. The last N hours or days
    count back from there; this month and this quarter start on their first day (UTC);
    last month is the whole calendar month before this one.
    """
    if now.tzinfo is None:
        raise ValueError("now must be an aware instant")
    now = now.astimezone(UTC)
    end = now.replace(microsecond=0) + timedelta(seconds=1)
    month = datetime(now.year, now.month, 1, tzinfo=UTC)
    if name in _ROLLING:
        return end - _ROLLING[name], end
    if name == "this_month":
        return month, end
    if name == "last_month":
        return _months_before(month, 1), month
    if name == "this_quarter":
        return _months_before(month, (now.month - 1) % 3), end
    raise ValueError(f"unknown time preset {name!r}")


def _months_before(month: datetime, n: int) -> datetime:
    """The first instant of the month `n` months before `month` (itself a month's first)."""
    index = month.year * 12 + month.month - 1 - n
    return month.replace(year=index // 12, month=index % 12 + 1)


def preset_text(name: str, now: datetime) -> tuple[str, str]:
    """A preset's From and To as the API writes instants (what the URL then holds)."""
    start, end = preset_range(name, now)
    return format_instant(start), format_instant(end)


def picker_value(text: str) -> datetime | None:
    """What a date-and-time picker shows for a From or To text: naive UTC, or empty.

    To the minute, as a picker holds it (the text keeps the seconds). Empty for text
    that is not an instant, or outside the pickers' range: the text stays the truth and
    its own error says what is wrong with it.
    """
    try:
        at = parse_instant(text).replace(tzinfo=None, second=0, microsecond=0)
    except (ValueError, OverflowError):
        return None
    return at if PICKER_MIN <= at <= PICKER_MAX else None


def picked_text(value: datetime | None) -> str:
    """A picker's value (naive UTC) as From or To text; empty for an empty picker."""
    return "" if value is None else format_instant(value.replace(tzinfo=UTC))


def reconcile_time(text: str, picked: datetime | None, shown: datetime | None) -> str:
    """From or To after Apply: the picker's time if the person moved it, else the text.

    `shown` is what the picker was given to show: a picker still showing it was not
    touched, so the text (typed, to the second) stands.
    """
    return text if picked == shown else picked_text(picked)


# ---------------------------------------------------------------------------- saved views

VIEW_PARAM = "view"


def view_link(base_url: str | None, view_id: str) -> str:
    """The link that opens a saved view on Explore (relative without a base)."""
    return f"{(base_url or '').split('?', 1)[0]}?{VIEW_PARAM}={quote(view_id, safe='')}"


def view_label(name: str, owner: str, who: Principal) -> str:
    """A saved view as a link or choice reads: its name, and its owner when not `who`."""
    return name if owner == who.email else f"{name} · {owner}"


# ---------------------------------------------------------------------------- preview order

# What an auditor scans first, kept at the left of the preview at any width: when, what,
# who, where. The rest follows, scrolled to on a narrow window.
PREVIEW_KEY_COLUMNS = ("timestamp", "action", "user", "namespace")


def preview_order() -> list[str]:
    """The preview's columns as shown: the key columns first, then the others."""
    rest = [c for c in PREVIEW_COLUMNS if c not in PREVIEW_KEY_COLUMNS]
    return [*PREVIEW_KEY_COLUMNS, *rest]


# ---------------------------------------------------------------------------- chart text

_BUCKET_FORMAT = {"hour": "%Y-%m-%d %H:00 UTC", "day": "%Y-%m-%d"}


def activity_summary(buckets: Iterable[tuple[int, str, int]], bucket: str) -> str:
    """The activity chart in words (Markdown): its busiest bar, the total and the span."""
    per: dict[int, int] = {}
    for start, _key, n in buckets:
        per[start] = per.get(start, 0) + n
    if not per:
        return "No records to chart."
    busiest = max(sorted(per), key=lambda b: per[b])
    step = 3_600_000_000 if bucket == "hour" else 86_400_000_000
    span = (max(per) - min(per)) // step + 1
    unit = bucket if span == 1 else f"{bucket}s"
    fmt = _BUCKET_FORMAT.get(bucket, _BUCKET_FORMAT["day"])
    at = datetime.fromtimestamp(busiest / 1_000_000, UTC).strftime(fmt)
    total = sum(per.values())
    return md(
        f"Busiest {bucket}: {at}, {_records(per[busiest])}. {_records(total)} over {span:,} {unit}."
    )


def _records(n: int) -> str:
    return f"{n:,} record" if n == 1 else f"{n:,} records"


def top_summary(pairs: Sequence[tuple[str, int]], name: str) -> str:
    """A top-N bar chart in words (Markdown, values literal): each bar and its count."""
    if not pairs:
        return md(f"No {name} to chart.")
    listed = ", ".join(f"{md(value)} ({n:,})" for value, n in pairs)
    return f"Top {md(name)}s by records: {listed}."
