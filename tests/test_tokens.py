"""API tokens: shown once, stored as a hash, expire, revocable, audited; and their CLI."""

from __future__ import annotations

import getpass
import hashlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from audit_core import access
from audit_core.access import AccessDeniedError, Principal, UnauthorizedError, UserError
from audit_core.models import ApiToken, AuditRecord

T = AuditRecord.__table__
TOKENS = ApiToken.__table__
ADMIN = Principal("boss@example.com", "admin", None, "198.51.100.4")


def audit_count(engine: Engine, action: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(T.c.action == action)).scalar_one())


@pytest.fixture
def alice(engine: Engine) -> str:
    """An auditor granted one namespace."""
    access.upsert_user(engine, "alice@example.com", "auditor", "payments", ADMIN)
    return "alice@example.com"


def test_a_token_is_shown_once_and_stored_only_as_a_hash(engine: Engine, alice: str) -> None:
    plaintext, info = access.create_token(engine, "Alice@Example.com", ADMIN)
    assert plaintext.startswith(info.prefix + "_")
    assert info.prefix.startswith("aep_") and len(info.prefix) == 12
    assert info.email == alice and info.created_by == ADMIN.email
    assert info.state() == "active"
    assert timedelta(days=89) < info.expires_at - info.created_at <= timedelta(days=90)
    with engine.connect() as conn:
        row = conn.execute(select(TOKENS)).one()
    stored = " ".join(str(v) for v in row)
    assert plaintext not in stored and plaintext.split("_", 2)[2] not in stored
    assert row.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()


def test_creating_a_token_writes_one_audit_record(engine: Engine, alice: str) -> None:
    _, info = access.create_token(engine, alice, ADMIN, expires_in_days=7)
    assert audit_count(engine, "portal.token.create") == 1
    with engine.connect() as conn:
        row = conn.execute(select(T).where(T.c.action == "portal.token.create")).one()
    assert row.resource.startswith(f"{info.prefix} for {alice}")
    assert (row.user, row.role, row.resourceType, row.sourceIP) == (
        ADMIN.email,
        "admin",
        "ApiToken",
        ADMIN.source_ip,
    )


def test_a_valid_token_stands_for_its_user(engine: Engine, alice: str) -> None:
    plaintext, info = access.create_token(engine, alice, ADMIN)
    who = access.authenticate_token(engine, plaintext, "10.0.0.9")
    assert who == Principal(alice, "auditor", frozenset({"payments"}), "10.0.0.9")
    with engine.connect() as conn:
        (listed,) = access.list_tokens(conn, ADMIN)
    assert listed.prefix == info.prefix and listed.last_used_at is not None


def test_bearer_header_parsing() -> None:
    assert access.bearer_token("Bearer aep_x") == "aep_x"
    assert access.bearer_token("bearer   aep_x ") == "aep_x"
    assert access.bearer_token("Basic abc") == ""
    assert access.bearer_token(None) == ""


def _tamper(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: None, "token is required"),
        (lambda t: "", "token is required"),
        (lambda t: "not-a-token", "malformed"),
        (lambda t: t.replace("aep_", "xyz_"), "malformed"),
        (lambda t: "aep_00000000_" + t.split("_", 2)[2], "not valid"),
        (_tamper, "not valid"),
    ],
    ids=["none", "empty", "garbage", "scheme", "unknown-prefix", "tampered-secret"],
)
def test_bad_tokens_are_refused(engine: Engine, alice: str, make: object, message: str) -> None:
    plaintext, _ = access.create_token(engine, alice, ADMIN)
    with pytest.raises(UnauthorizedError, match=message):
        access.authenticate_token(engine, make(plaintext), "10.0.0.9")  # type: ignore[operator]


def test_an_expired_token_is_refused(engine: Engine, alice: str) -> None:
    past = datetime.now(UTC) - timedelta(days=3)
    plaintext, info = access.create_token(engine, alice, ADMIN, expires_in_days=2, now=past)
    assert info.state() == "expired"
    with pytest.raises(UnauthorizedError, match="expired"):
        access.authenticate_token(engine, plaintext, "10.0.0.9")
    # ...and one that is still valid today stops working the moment it expires.
    fresh, info = access.create_token(engine, alice, ADMIN, expires_in_days=1)
    access.authenticate_token(engine, fresh, "", now=info.expires_at - timedelta(seconds=1))
    with pytest.raises(UnauthorizedError, match="expired"):
        access.authenticate_token(engine, fresh, "", now=info.expires_at)


def test_a_revoked_token_is_refused_and_the_revocation_audited_once(
    engine: Engine, alice: str
) -> None:
    plaintext, info = access.create_token(engine, alice, ADMIN)
    access.authenticate_token(engine, plaintext, "")
    revoked = access.revoke_token(engine, info.prefix, ADMIN)
    assert revoked.state() == "revoked"
    with pytest.raises(UnauthorizedError, match="revoked"):
        access.authenticate_token(engine, plaintext, "")
    access.revoke_token(engine, info.prefix.removeprefix("aep_"), ADMIN)  # already revoked
    assert audit_count(engine, "portal.token.revoke") == 1
    with engine.connect() as conn:
        row = conn.execute(select(T).where(T.c.action == "portal.token.revoke")).one()
    assert row.resource.startswith(info.prefix) and row.resourceType == "ApiToken"


def test_a_removed_users_token_is_refused(engine: Engine, alice: str) -> None:
    plaintext, _ = access.create_token(engine, alice, ADMIN)
    access.remove_user(engine, alice, ADMIN)
    with pytest.raises(UnauthorizedError, match="no longer has access"):
        access.authenticate_token(engine, plaintext, "")


def test_role_changes_apply_to_existing_tokens(engine: Engine, alice: str) -> None:
    plaintext, _ = access.create_token(engine, alice, ADMIN)
    access.upsert_user(engine, alice, "viewer", "staging", ADMIN)
    who = access.authenticate_token(engine, plaintext, "")
    assert (who.role, who.namespaces) == ("viewer", frozenset({"staging"}))


def test_who_may_issue_list_and_revoke(engine: Engine, alice: str) -> None:
    access.upsert_user(engine, "bob@example.com", "viewer", "staging", ADMIN)
    bob = Principal("bob@example.com", "viewer", frozenset({"staging"}), "")
    me = Principal(alice, "auditor", frozenset({"payments"}), "")
    with pytest.raises(AccessDeniedError):
        access.create_token(engine, alice, me)
    _, mine = access.create_token(engine, alice, ADMIN)
    _, bobs = access.create_token(engine, "bob@example.com", ADMIN)
    with engine.connect() as conn:
        assert [t.prefix for t in access.list_tokens(conn, me)] == [mine.prefix]
        assert {t.prefix for t in access.list_tokens(conn, ADMIN)} == {mine.prefix, bobs.prefix}
    with pytest.raises(UserError, match="no API token"):
        access.revoke_token(engine, mine.prefix, bob)  # not his: looks unknown
    access.revoke_token(engine, mine.prefix, me)  # one's own token
    assert audit_count(engine, "portal.token.create") == 2
    assert audit_count(engine, "portal.token.revoke") == 1


@pytest.mark.parametrize(
    ("email", "days", "message"),
    [
        ("nobody@example.com", 90, "no active portal user"),
        ("alice@example.com", 0, "between 1 and"),
        ("alice@example.com", 100_000, "between 1 and"),
    ],
)
def test_bad_token_requests_are_refused_and_write_nothing(
    engine: Engine, alice: str, email: str, days: int, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        access.create_token(engine, email, ADMIN, expires_in_days=days)
    assert audit_count(engine, "portal.token.create") == 0


# ---------------------------------------------------------------------- command line


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit_core", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_manages_users_and_tokens(engine: Engine, env: dict[str, str]) -> None:
    actor = f"cli:{getpass.getuser()}"
    r = cli(env, "users", "add", "Carol@Example.com", "--role", "auditor", "--namespaces", "a,b")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "carol@example.com: auditor, namespaces a,b\n"
    r = cli(env, "users", "list")
    assert r.stdout == "carol@example.com\tauditor\ta,b\tactive\n"

    r = cli(env, "tokens", "create", "carol@example.com", "--expires-in-days", "5")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert r.stdout.count("\n") == 1 and token.startswith("aep_")
    assert "shown once" in r.stderr and token not in r.stderr
    assert access.authenticate_token(engine, token, "").email == "carol@example.com"

    prefix = token[:12]
    r = cli(env, "tokens", "revoke", prefix)
    assert (r.returncode, r.stdout) == (0, f"{prefix}: revoked\n")
    with pytest.raises(UnauthorizedError, match="revoked"):
        access.authenticate_token(engine, token, "")

    r = cli(env, "users", "remove", "carol@example.com")
    assert (r.returncode, r.stdout) == (0, "carol@example.com: removed\n")

    with engine.connect() as conn:
        rows = conn.execute(
            select(T.c.action, T.c.user, T.c.role)
            .where(T.c.action.like("portal.%"))
            .order_by(T.c.seq)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("portal.user.change", actor, "admin"),
        ("portal.token.create", actor, "admin"),
        ("portal.token.revoke", actor, "admin"),
        ("portal.user.change", actor, "admin"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("users", "add", "nope", "--role", "viewer", "--namespaces", "a"), "not an email"),
        (("users", "add", "a@x.io", "--role", "admin", "--namespaces", "a"), "grant '*'"),
        (("users", "remove", "ghost@example.com"), "no active portal user"),
        (("tokens", "create", "ghost@example.com"), "no active portal user"),
        (("tokens", "revoke", "aep_00000000"), "no API token"),
        (("tokens", "revoke", "what"), "not a token prefix"),
    ],
)
def test_cli_errors_are_one_line_with_status_2(
    engine: Engine, env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    r = cli(env, *args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert message in r.stderr
    assert r.stdout == ""
