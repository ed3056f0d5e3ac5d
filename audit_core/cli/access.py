"""Command line for portal users and API tokens: `users add|list|remove`, `tokens ...`.

Operators act with full rights, recorded as cli:<os user>.
"""

from __future__ import annotations

import sys
from typing import Any

from ..access import (
    ROLES,
    create_token,
    list_tokens,
    list_users,
    remove_user,
    revoke_token,
    upsert_user,
)
from ..config import Settings
from .common import cli_principal, open_engine


def cmd_users_add(args: Any, settings: Settings) -> int:
    """Add a portal user or change their role and grants."""
    info = upsert_user(
        open_engine(settings),
        args.email,
        args.role,
        args.namespaces,
        cli_principal(),
        settings=settings,
    )
    print(f"{info.email}: {info.role}, namespaces {info.grants}")
    return 0


def cmd_users_list(args: Any, settings: Settings) -> int:
    """List portal users."""
    with open_engine(settings).connect() as conn:
        users = list_users(conn)
    for u in users:
        print(f"{u.email}\t{u.role}\t{u.grants}\t{'active' if u.active else 'removed'}")
    return 0


def cmd_users_remove(args: Any, settings: Settings) -> int:
    """Remove a portal user (their tokens stop working)."""
    info = remove_user(open_engine(settings), args.email, cli_principal(), settings=settings)
    print(f"{info.email}: removed")
    return 0


def cmd_tokens_create(args: Any, settings: Settings) -> int:
    """Issue an API token; the token is printed once on stdout."""
    plaintext, info = create_token(
        open_engine(settings),
        args.email,
        cli_principal(),
        expires_in_days=args.expires_in_days,
        settings=settings,
    )
    print(plaintext)
    print(
        f"token {info.prefix} for {info.email}, expires {info.expires_at:%Y-%m-%dT%H:%M:%SZ}"
        " (shown once: store it now)",
        file=sys.stderr,
    )
    return 0


def cmd_tokens_revoke(args: Any, settings: Settings) -> int:
    """Revoke an API token by its prefix."""
    info = revoke_token(open_engine(settings), args.prefix, cli_principal(), settings=settings)
    print(f"{info.prefix}: revoked")
    return 0


def cmd_tokens_list(args: Any, settings: Settings) -> int:
    """List API tokens (prefixes only)."""
    with open_engine(settings).connect() as conn:
        tokens = list_tokens(conn, cli_principal())
    for t in tokens:
        used = f"{t.last_used_at:%Y-%m-%dT%H:%M:%SZ}" if t.last_used_at else "never"
        print(
            f"{t.prefix}\t{t.email}\t{t.state()}\texpires "
            f"{t.expires_at:%Y-%m-%dT%H:%M:%SZ}\tlast used {used}"
        )
    return 0


def register(subparsers: Any) -> None:
    """Add `users add|list|remove` and `tokens create|revoke|list`."""
    users = subparsers.add_parser("users", help="manage portal users and namespace grants")
    us = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    a = us.add_parser("add", help="add a user or change their role and grants")
    a.add_argument("email", metavar="EMAIL")
    a.add_argument("--role", required=True, choices=ROLES, help="admin, auditor or viewer")
    a.add_argument(
        "--namespaces", required=True, help="comma-separated namespaces, or '*' for every namespace"
    )
    a.set_defaults(func=cmd_users_add)
    us.add_parser("list", help="list users").set_defaults(func=cmd_users_list)
    r = us.add_parser("remove", help="remove a user (their tokens stop working)")
    r.add_argument("email", metavar="EMAIL")
    r.set_defaults(func=cmd_users_remove)

    tokens = subparsers.add_parser("tokens", help="issue, list and revoke API tokens")
    ts = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    c = ts.add_parser("create", help="issue a token for a user (printed once)")
    c.add_argument("email", metavar="EMAIL")
    c.add_argument(
        "--expires-in-days",
        type=int,
        default=90,
        metavar="D",
        help="days until the token expires (default 90)",
    )
    c.set_defaults(func=cmd_tokens_create)
    v = ts.add_parser("revoke", help="revoke a token by its prefix")
    v.add_argument("prefix", metavar="TOKEN_PREFIX", help="e.g. aep_1a2b3c4d")
    v.set_defaults(func=cmd_tokens_revoke)
    ts.add_parser("list", help="list tokens").set_defaults(func=cmd_tokens_list)
