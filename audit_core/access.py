"""Principals, roles and namespace grants; portal users, API tokens, local mode.

The one place a filter is scoped to a person (scope), and the one place people and
their tokens are managed. Every change to a user or a token is written to the audit
log in the same transaction as the change itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, func, insert, select, update

from . import store
from .config import Settings
from .errors import (
    BadRequestError,
    ConfigError,
    ForbiddenError,
    TooManyRequestsError,
    UnauthorizedError,
)
from .filters import AuditFilter
from .models import ApiToken, PortalUser

ROLES = ("admin", "auditor", "viewer")


class AccessDeniedError(ForbiddenError):
    """The principal may not do this; the message says why, without leaking data."""


@dataclass(frozen=True)
class Principal:
    """Who is acting: email (or cli:<user>), role, and granted namespaces (None = all)."""

    email: str
    role: str
    namespaces: frozenset[str] | None = None
    source_ip: str = ""

    @property
    def can_export(self) -> bool:
        return self.role in ("admin", "auditor")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_see(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


def scope(principal: Principal, flt: AuditFilter) -> AuditFilter:
    """Intersect a filter's namespaces with the principal's grants.

    Asking for a namespace outside the grants is refused rather than silently emptied.
    """
    if principal.namespaces is None:
        return flt
    if flt.namespaces:
        outside = [n for n in flt.namespaces if n not in principal.namespaces]
        if outside:
            raise AccessDeniedError(f"you have no access to namespace {', '.join(outside)}")
        return flt
    if not principal.namespaces:
        raise AccessDeniedError("you have no namespace grants")
    return flt.with_namespaces(sorted(principal.namespaces))


NO_EXPORT = "your role may view records but not export them"


def require_export(who: Principal) -> None:
    """Refuse principals whose role may only view."""
    if not who.can_export:
        raise AccessDeniedError(NO_EXPORT)


LOCAL_ADMIN = Principal(email="local-admin", role="admin", namespaces=None, source_ip="127.0.0.1")

USERS = cast(Table, PortalUser.__table__)
TOKENS = cast(Table, ApiToken.__table__)
TOKEN_SCHEME = "aep"
_TOKEN_RE = re.compile(r"^aep_([0-9a-f]{8})_([A-Za-z0-9_-]{32,128})$")
_PREFIX_RE = re.compile(r"^(?:aep_)?([0-9a-f]{8})$")
_EMAIL_RE = re.compile(r"^[^@\s,]+@[^@\s,]+$")
_NAMESPACE_RE = re.compile(r"^[^\x00-\x1f\x7f,*]{1,200}$")
MAX_TOKEN_DAYS = 3650
# A token's last-used time is written at most this often, so a busy API client does not
# turn every request into a write.
LAST_USED_GRANULARITY = timedelta(minutes=1)


class UserError(BadRequestError):
    """A user or token request that cannot be carried out (bad email, role, grant, unknown)."""


class UnsafeLocalModeError(ConfigError):
    """Sign-in is off and the server would listen beyond loopback."""


# ---------------------------------------------------------------------------- users


@dataclass(frozen=True)
class UserInfo:
    """One portal user as stored: namespaces None means every namespace ('*')."""

    email: str
    role: str
    namespaces: frozenset[str] | None
    active: bool
    created_at: datetime
    updated_at: datetime

    @property
    def grants(self) -> str:
        return grants_text(self.namespaces)


def grants_text(namespaces: frozenset[str] | None) -> str:
    """Write grants as stored and shown: '*' or a sorted comma list."""
    return "*" if namespaces is None else ",".join(sorted(namespaces))


def parse_grants(raw: str | Iterable[str]) -> frozenset[str] | None:
    """Validate grants given as '*', 'a,b' or a list of names; None means every namespace."""
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    names = [p.strip() for p in parts if p and p.strip()]
    if names == ["*"]:
        return None
    if "*" in names:
        raise UserError("grant either '*' (every namespace) or a list of namespaces, not both")
    if not names:
        raise UserError("give at least one namespace, or '*' for every namespace")
    for name in names:
        if not _NAMESPACE_RE.match(name):
            raise UserError(f"namespace {name!r} is not a valid namespace name")
    return frozenset(names)


def normalize_email(email: str) -> str:
    """Lower-case and check an email address (the key of a portal user)."""
    value = (email or "").strip().lower()
    if len(value) > 320 or not _EMAIL_RE.match(value):
        raise UserError(f"{email!r} is not an email address")
    return value


def _user(row: Any) -> UserInfo:
    grants = None if row.namespaces == "*" else frozenset(filter(None, row.namespaces.split(",")))
    return UserInfo(row.email, row.role, grants, bool(row.active), row.created_at, row.updated_at)


def _get_user(conn: Connection, email: str) -> UserInfo | None:
    row = conn.execute(select(USERS).where(USERS.c.email == email)).first()
    return None if row is None else _user(row)


def _require_admin(actor: Principal, what: str) -> None:
    if not actor.is_admin:
        raise AccessDeniedError(f"only an administrator may {what}")


def record(
    conn: Connection,
    namespace: str,
    actor: Principal,
    *,
    action: str,
    resource: str,
    resource_type: str,
) -> None:
    """Write one of the portal's own audit records, acted by `actor` (who, role, address)."""
    store.log_event(
        conn,
        action=action,
        user=actor.email,
        role=actor.role,
        resource=resource,
        resource_type=resource_type,
        namespace=namespace,
        source_ip=actor.source_ip,
    )


def _describe(
    old: UserInfo | None, role: str | None, grants: frozenset[str] | None | str, active: bool
) -> str:
    was_role = old.role if old and old.active else "none"
    was_grants = old.grants if old and old.active else "none"
    now_role = role if active and role else "none"
    now_grants = grants if isinstance(grants, str) else grants_text(grants)
    return f"role {was_role} -> {now_role}; namespaces {was_grants} -> {now_grants}"


def upsert_user(
    engine: Engine,
    email: str,
    role: str,
    namespaces: str | Iterable[str],
    actor: Principal,
    *,
    settings: Settings | None = None,
) -> UserInfo:
    """Add a user or change their role and grants (re-activating a removed one); audited.

    Admins always see every namespace, so an admin must be granted '*'.
    A request that changes nothing writes nothing.
    """
    _require_admin(actor, "change portal users")
    email = normalize_email(email)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    grants = parse_grants(namespaces)
    if role == "admin" and grants is not None:
        raise UserError("an admin sees every namespace: grant '*'")
    ns = _self_namespace(settings)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        store.lock_head(conn)  # take the log's write lock first: serialises user changes
        old = _get_user(conn, email)
        if old and old.active and old.role == role and old.namespaces == grants:
            return old
        if old and old.active and old.role == "admin" and role != "admin":
            _keep_an_admin(conn, email, "make them a " + role)
        values = {
            "role": role,
            "namespaces": grants_text(grants),
            "active": True,
            "updated_at": now,
        }
        if old is None:
            conn.execute(insert(USERS).values(email=email, created_at=now, **values))
        else:
            conn.execute(update(USERS).where(USERS.c.email == email).values(**values))
        return _changed(conn, ns, actor, email, _describe(old, role, grants, True))


def remove_user(
    engine: Engine, email: str, actor: Principal, *, settings: Settings | None = None
) -> UserInfo:
    """Deactivate a user (their tokens stop working at once); audited.

    The row stays, so the history keeps its meaning and a bootstrap admin who was
    removed is not silently re-created at the next sign-in.
    """
    _require_admin(actor, "remove portal users")
    email = normalize_email(email)
    ns = _self_namespace(settings)
    with engine.begin() as conn:
        store.lock_head(conn)
        old = _get_user(conn, email)
        if old is None or not old.active:
            raise UserError(f"no active portal user {email}")
        if old.role == "admin":
            _keep_an_admin(conn, email, "remove them")
        conn.execute(
            update(USERS)
            .where(USERS.c.email == email)
            .values(active=False, updated_at=datetime.now(UTC))
        )
        return _changed(conn, ns, actor, email, f"removed; {_describe(old, None, 'none', False)}")


def _changed(conn: Connection, ns: str, actor: Principal, email: str, what: str) -> UserInfo:
    """Audit a change to a user (one portal.user.change record) and return them as now."""
    record(
        conn,
        ns,
        actor,
        action="portal.user.change",
        resource=f"{email}: {what}",
        resource_type="PortalUser",
    )
    info = _get_user(conn, email)
    assert info is not None
    return info


def _keep_an_admin(conn: Connection, email: str, change: str) -> None:
    """Refuse a change that would leave the portal with no active admin."""
    others = conn.execute(
        select(func.count())
        .select_from(USERS)
        .where(USERS.c.role == "admin", USERS.c.active.is_(True), USERS.c.email != email)
    ).scalar()
    if not others:
        raise UserError(
            f"{email} is the only active admin: make someone else an admin before you {change}"
        )


def export_refusal(conn: Connection, email: str, namespaces: Iterable[str]) -> str | None:
    """Why `email` may no longer export the namespaces given (none: all), or None.

    A background export runs with the access its requester has when it runs, not when it
    was queued: a portal user who was removed, made a viewer, or lost a namespace the job
    reads is refused. Operators with no user row (the CLI, local mode, an AUDIT_ADMINS
    admin who has not signed in yet) keep the access they acted with.
    """
    try:
        user = _get_user(conn, normalize_email(email))
    except UserError:
        return None
    if user is None:
        return None
    if not user.active:
        return f"{user.email} was removed from the portal after queueing this export"
    who = Principal(user.email, user.role, user.namespaces)
    if not who.can_export:
        return f"{user.email} is now a {user.role}, who cannot export"
    wanted = frozenset(namespaces)
    if user.namespaces is not None and not wanted:
        return f"{user.email} no longer sees every namespace"
    lost = sorted(ns for ns in wanted if not who.may_see(ns))
    if lost:
        return f"{user.email} is no longer granted namespace {', '.join(lost)}"
    return None


def list_users(conn: Connection) -> list[UserInfo]:
    """Every portal user, active or not, by email."""
    return [_user(r) for r in conn.execute(select(USERS).order_by(USERS.c.email)).all()]


def principal_for(
    conn: Connection, email: str, settings: Settings, source_ip: str = ""
) -> Principal | None:
    """Map a signed-in email to a principal; None when the person has no active grant.

    An email listed in settings.admins (AUDIT_ADMINS) that has no row yet becomes an
    admin with every namespace: the row is created and the change audited.
    """
    try:
        key = normalize_email(email)
    except UserError:
        return None
    user = _get_user(conn, key)
    if user is None and key in settings.admins:
        user = _bootstrap_admin(conn.engine, key, settings, source_ip)
    if user is None or not user.active:
        return None
    return Principal(key, user.role, user.namespaces, source_ip)


def _bootstrap_admin(engine: Engine, email: str, settings: Settings, source_ip: str) -> UserInfo:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        store.lock_head(conn)
        user = _get_user(conn, email)
        if user is not None:  # someone else bootstrapped (or removed) them meanwhile
            return user
        conn.execute(
            insert(USERS).values(
                email=email,
                role="admin",
                namespaces="*",
                active=True,
                created_at=now,
                updated_at=now,
            )
        )
        who = Principal(email, "admin", None, source_ip)
        record(
            conn,
            settings.self_namespace,
            who,
            action="portal.user.change",
            resource=(
                f"{email}: {_describe(None, 'admin', None, True)} (bootstrap from AUDIT_ADMINS)"
            ),
            resource_type="PortalUser",
        )
        user = _get_user(conn, email)
    assert user is not None
    return user


def _self_namespace(settings: Settings | None) -> str:
    """The namespace of the portal's own records (the default one when none is given)."""
    return (settings or Settings()).self_namespace


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenInfo:
    """What is shown about a token: never the secret, only its visible prefix."""

    prefix: str
    email: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime | None = None) -> str:
        """'active', 'expired' or 'revoked'."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= (now or datetime.now(UTC)):
            return "expired"
        return "active"


def _token(row: Any) -> TokenInfo:
    return TokenInfo(
        row.prefix,
        row.email,
        row.created_by,
        row.created_at,
        row.expires_at,
        row.last_used_at,
        row.revoked_at,
    )


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    engine: Engine,
    email: str,
    actor: Principal,
    *,
    expires_in_days: int = 90,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> tuple[str, TokenInfo]:
    """Issue an API token for an active user; return (plaintext, info). Audited.

    The plaintext `aep_<prefix>_<secret>` is returned once and never stored: the
    database keeps its SHA-256 and the visible prefix `aep_<prefix>`.
    """
    _require_admin(actor, "issue API tokens")
    email = normalize_email(email)
    if not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        raise UserError(f"expires-in-days must be between 1 and {MAX_TOKEN_DAYS}")
    now = now or datetime.now(UTC)
    expires = now + timedelta(days=expires_in_days)
    with engine.begin() as conn:
        store.lock_head(conn)
        user = _get_user(conn, email)
        if user is None or not user.active:
            raise UserError(f"no active portal user {email}; add them first")
        while True:  # 32-bit visible prefix: retry the rare collision
            short = secrets.token_hex(4)
            prefix = f"{TOKEN_SCHEME}_{short}"
            taken = conn.execute(select(TOKENS.c.id).where(TOKENS.c.prefix == prefix)).first()
            if taken is None:
                break
        plaintext = f"{prefix}_{secrets.token_urlsafe(32)}"
        conn.execute(
            insert(TOKENS).values(
                prefix=prefix,
                token_hash=_hash(plaintext),
                email=email,
                created_by=actor.email,
                created_at=now,
                expires_at=expires,
            )
        )
        record(
            conn,
            _self_namespace(settings),
            actor,
            action="portal.token.create",
            resource=f"{prefix} for {email}, expires {expires:%Y-%m-%dT%H:%M:%SZ}",
            resource_type="ApiToken",
        )
        row = conn.execute(select(TOKENS).where(TOKENS.c.prefix == prefix)).one()
    return plaintext, _token(row)


def bearer_token(authorization: str | None) -> str:
    """Take the token out of an `Authorization: Bearer <token>` header value ('' if none)."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


# A stand-in hash compared when the prefix is unknown, so that path costs the same.
_NO_HASH = _hash("aep_00000000_" + "x" * 43)


def authenticate_token(
    engine: Engine, token: str | None, source_ip: str = "", *, now: datetime | None = None
) -> Principal:
    """Return the principal a bearer token stands for, or raise UnauthorizedError.

    Refuses a missing, malformed, unknown, expired or revoked token and a token whose
    user was removed. The hash is compared in constant time.
    """
    if not token:
        raise UnauthorizedError("an API token is required: send Authorization: Bearer <token>")
    m = _TOKEN_RE.match(token.strip())
    if m is None:
        raise UnauthorizedError("the API token is malformed")
    plaintext = m.group(0)
    prefix = f"{TOKEN_SCHEME}_{m.group(1)}"
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        row = conn.execute(select(TOKENS).where(TOKENS.c.prefix == prefix)).first()
        stored = row.token_hash if row is not None else _NO_HASH
        matches = hmac.compare_digest(stored.encode(), _hash(plaintext).encode())
        if row is None or not matches:
            raise UnauthorizedError("the API token is not valid")
        if row.revoked_at is not None:
            raise UnauthorizedError(f"API token {prefix} was revoked")
        if row.expires_at <= now:
            raise UnauthorizedError(f"API token {prefix} has expired")
        user = _get_user(conn, row.email)
        last_used = row.last_used_at
    if user is None or not user.active:
        raise UnauthorizedError(f"API token {prefix} belongs to a user who no longer has access")
    if last_used is None or now - last_used >= LAST_USED_GRANULARITY:
        with engine.begin() as conn:
            conn.execute(update(TOKENS).where(TOKENS.c.prefix == prefix).values(last_used_at=now))
    return Principal(user.email, user.role, user.namespaces, source_ip)


def revoke_token(
    engine: Engine, prefix: str, actor: Principal, *, settings: Settings | None = None
) -> TokenInfo:
    """Revoke a token by its visible prefix (`aep_xxxxxxxx` or `xxxxxxxx`); audited.

    An admin may revoke any token, anyone else only their own. Revoking an already
    revoked token changes nothing and writes nothing.
    """
    m = _PREFIX_RE.match((prefix or "").strip().lower())
    if m is None:
        raise UserError(f"{prefix!r} is not a token prefix such as aep_1a2b3c4d")
    key = f"{TOKEN_SCHEME}_{m.group(1)}"
    with engine.begin() as conn:
        store.lock_head(conn)
        row = conn.execute(select(TOKENS).where(TOKENS.c.prefix == key)).first()
        if row is None or not (actor.is_admin or row.email == actor.email):
            raise UserError(f"no API token {key}")
        if row.revoked_at is not None:
            return _token(row)
        conn.execute(
            update(TOKENS).where(TOKENS.c.prefix == key).values(revoked_at=datetime.now(UTC))
        )
        record(
            conn,
            _self_namespace(settings),
            actor,
            action="portal.token.revoke",
            resource=f"{key} for {row.email}",
            resource_type="ApiToken",
        )
        row = conn.execute(select(TOKENS).where(TOKENS.c.prefix == key)).one()
    return _token(row)


def list_tokens(conn: Connection, who: Principal) -> list[TokenInfo]:
    """Tokens the principal may see: every token for an admin, otherwise their own."""
    stmt = select(TOKENS).order_by(TOKENS.c.created_at.desc(), TOKENS.c.id.desc())
    if not who.is_admin:
        stmt = stmt.where(TOKENS.c.email == who.email)
    return [_token(r) for r in conn.execute(stmt).all()]


# ------------------------------------------------------------------ audit of access


def denied(
    engine: Engine,
    who_email: str,
    role: str,
    what: str,
    source_ip: str,
    settings: Settings,
    *,
    resource_type: str = "PortalUser",
) -> None:
    """Write one portal.access_denied record: who tried what, from where."""
    with engine.begin() as conn:
        store.log_event(
            conn,
            action="portal.access_denied",
            user=who_email or "anonymous",
            role=role or "none",
            resource=what,
            resource_type=resource_type,
            namespace=settings.self_namespace,
            source_ip=source_ip,
        )


@dataclass
class _Repeats:
    """One (who, role, address, what) refused within a window; its first record is written."""

    started: float
    who: Principal
    what: str
    count: int = 0  # refusals after the first, not written yet


@dataclass
class _Strikes:
    """The refusals of one key (a token, an address) within a window, and requests turned away."""

    started: float
    limit: int
    refusals: int = 0
    turned_away: int = 0
    who: Principal | None = None  # the last one refused under this key


class RefusalGuard:
    """Recent refusals in this process: turns repeat offenders away, coalesces their records.

    A key ("token aep_1a2b3c4d", "address 10.0.0.5") refused its limit of times within a
    window is turned away (`check` raises TooManyRequestsError, 429) until that window ends.
    The first refusal of one (who, role, address, what) in a window is written at once as
    portal.access_denied; repeats within the window are only counted, and one summary
    record "<what> (repeated N times in 60 s)" is written once the window has closed (at the
    next refusal or `flush`), like the number of requests a key had turned away. At most
    `max_entries` of each are held (the oldest is written out early), so a flood costs a
    few rows and bounded memory; counts of a window still open when the process stops are lost.
    """

    def __init__(
        self,
        window: float,
        *,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._repeats: OrderedDict[tuple[str, str, str, str], _Repeats] = OrderedDict()
        self._strikes: OrderedDict[str, _Strikes] = OrderedDict()

    def check(self, keys: Iterable[str]) -> None:
        """Raise TooManyRequestsError when a key has had its limit of refusals in this window."""
        now = self._clock()
        with self._lock:
            for key in keys:
                s = self._strikes.get(key)
                if s is None or s.refusals < s.limit or now >= s.started + self.window:
                    continue
                s.turned_away += 1
                wait = max(1, math.ceil(s.started + self.window - now))
                raise TooManyRequestsError(
                    f"{key} was refused {s.refusals} times in {self.window:g} s; "
                    f"wait {wait} s before asking again",
                    retry_after=wait,
                )

    def refused(
        self, engine: Engine, settings: Settings, who: Principal, what: str, keys: Mapping[str, int]
    ) -> None:
        """Count one refusal of `who` against each key (its limit given) and audit it, coalesced."""
        now = self._clock()
        with self._lock:
            out = self._closed(now)
            for key, limit in keys.items():
                strikes = self._strikes.get(key)
                if strikes is None:
                    out += self._make_room(self._strikes)
                    strikes = self._strikes[key] = _Strikes(now, limit)
                strikes.refusals += 1
                strikes.who = who
            same = (who.email, who.role, who.source_ip, what)
            if (repeats := self._repeats.get(same)) is not None:
                repeats.count += 1
            else:
                out += self._make_room(self._repeats)
                self._repeats[same] = _Repeats(now, who, what)
                out.append((who, what))
        self._write(engine, settings, out)

    def due(self) -> bool:
        """True when a window has closed: `flush` then forgets it, writing what it leaves."""
        now = self._clock()
        with self._lock:
            return any(
                _opened(held) + self.window <= now for held in (self._repeats, self._strikes)
            )

    def flush(self, engine: Engine, settings: Settings) -> None:
        """Write the summaries of every window that has closed."""
        with self._lock:
            out = self._closed(self._clock())
        self._write(engine, settings, out)

    def _closed(self, now: float) -> list[tuple[Principal, str]]:
        """Forget the windows that have closed; return the summaries they leave to write.

        Both maps are in the order their windows opened, so the closed ones come first.
        """
        return self._pop_closed(self._repeats, now) + self._pop_closed(self._strikes, now)

    def _pop_closed(self, held: OrderedDict[Any, Any], now: float) -> list[tuple[Principal, str]]:
        out: list[tuple[Principal, str]] = []
        while _opened(held) + self.window <= now:
            out += self._summary(*held.popitem(last=False))
        return out

    def _make_room(self, held: OrderedDict[Any, Any]) -> list[tuple[Principal, str]]:
        return self._summary(*held.popitem(last=False)) if len(held) >= self.max_entries else []

    def _summary(self, key: Any, entry: _Repeats | _Strikes) -> list[tuple[Principal, str]]:
        span = f"{self.window:g} s"
        if isinstance(entry, _Repeats):
            if not entry.count:
                return []
            return [(entry.who, f"{entry.what} (repeated {entry.count} times in {span})")]
        if not entry.turned_away or entry.who is None:
            return []
        what = (
            f"api: {key} turned away {entry.turned_away} more requests (429) after "
            f"{entry.refusals} refusals in {span}"
        )
        return [(entry.who, what)]

    @staticmethod
    def _write(engine: Engine, settings: Settings, out: list[tuple[Principal, str]]) -> None:
        for who, what in out:
            denied(engine, who.email, who.role, what, who.source_ip, settings)


def _opened(held: Mapping[Any, _Repeats | _Strikes]) -> float:
    """When the oldest window held opened (never, for none held)."""
    return next(iter(held.values())).started if held else math.inf


def token_prefix(token: str | None) -> str | None:
    """The visible prefix (aep_xxxxxxxx) of a well-formed token, None for anything else."""
    m = _TOKEN_RE.match((token or "").strip())
    return f"{TOKEN_SCHEME}_{m.group(1)}" if m else None


def signed_in(engine: Engine, principal: Principal, settings: Settings) -> None:
    """Write one portal.signin record for a person who signed in to the portal."""
    with engine.begin() as conn:
        record(
            conn,
            settings.self_namespace,
            principal,
            action="portal.signin",
            resource=f"{principal.email}: namespaces {grants_text(principal.namespaces)}",
            resource_type="PortalUser",
        )


# ----------------------------------------------------------------------- local mode


def auth_configured(secrets_mapping: Mapping[str, Any] | None) -> bool:
    """True when the secrets hold a non-empty [auth] section (sign-in through st.login).

    Any [auth] counts: an incomplete one fails closed (sign-in errors), never open.
    Secrets that cannot be read (st.secrets raises when there is no secrets file) have
    no [auth].
    """
    if secrets_mapping is None:
        return False
    try:
        section = secrets_mapping.get("auth")
        return isinstance(section, Mapping) and len(section) > 0
    except Exception:  # noqa: BLE001 - unreadable secrets: no sign-in configured
        return False


def login_providers(secrets_mapping: Mapping[str, Any] | None) -> list[str]:
    """Names to pass to st.login: each [auth.<name>] with a client_id, or 'default'."""
    if not auth_configured(secrets_mapping):
        return []
    assert secrets_mapping is not None
    section = secrets_mapping["auth"]
    names = [
        str(name)
        for name, value in section.items()
        if isinstance(value, Mapping) and "client_id" in value
    ]
    if "client_id" in section:
        names.insert(0, "default")
    return names


def is_loopback(address: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (an empty address means every interface)."""
    host = (address or "").strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_local_mode(server_address: str | None, auth_configured: bool) -> None:
    """Refuse to serve local mode (one local admin, no sign-in) beyond loopback."""
    if auth_configured or is_loopback(server_address or ""):
        return
    shown = server_address or "(every interface)"
    raise UnsafeLocalModeError(
        f"refusing to start: sign-in is off (no [auth] in .streamlit/secrets.toml), so the "
        f"portal runs in local mode where everyone is an administrator, and server.address "
        f"is {shown}, which is not loopback. Set server.address to 127.0.0.1 or configure "
        f"[auth] (see .streamlit/secrets.toml.example)."
    )
