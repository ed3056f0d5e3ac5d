"""access: portal users and grants, sign-in mapping, the audit of access, local mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from audit_core import access
from audit_core.access import (
    AccessDeniedError,
    Principal,
    UnsafeLocalModeError,
    UserError,
)
from audit_core.config import Settings
from audit_core.errors import ConfigError
from audit_core.integrity import verify
from audit_core.models import AuditRecord

T = AuditRecord.__table__
ROOT = Path(__file__).resolve().parent.parent
ADMIN = Principal("boss@example.com", "admin", None, "198.51.100.4")
AUDITOR = Principal("aldo@example.com", "auditor", frozenset({"payments"}), "10.0.0.2")


def audit_count(engine: Engine, action: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(T.c.action == action)).scalar_one())


def last_record(engine: Engine, action: str) -> object:
    with engine.connect() as conn:
        return conn.execute(
            select(T).where(T.c.action == action).order_by(T.c.seq.desc()).limit(1)
        ).one()


# ----------------------------------------------------------------------------- users


def test_adding_a_user_writes_one_audited_change(engine: Engine, settings: Settings) -> None:
    info = access.upsert_user(
        engine, "Alice@Example.com", "auditor", ["payments", "billing"], ADMIN, settings=settings
    )
    assert (info.email, info.role, info.grants, info.active) == (
        "alice@example.com",
        "auditor",
        "billing,payments",
        True,
    )
    assert audit_count(engine, "portal.user.change") == 1
    row = last_record(engine, "portal.user.change")
    assert row.user == ADMIN.email and row.role == "admin"
    assert row.sourceIP == ADMIN.source_ip
    assert row.resourceType == "PortalUser"
    assert row.namespace == settings.self_namespace
    assert row.resource == (
        "alice@example.com: role none -> auditor; namespaces none -> billing,payments"
    )


def test_the_last_active_admin_cannot_be_demoted_or_removed(engine: Engine) -> None:
    access.upsert_user(engine, "root@example.com", "admin", "*", ADMIN)
    before = audit_count(engine, "portal.user.change")
    with pytest.raises(access.UserError, match="only active admin"):
        access.upsert_user(engine, "root@example.com", "viewer", "staging", ADMIN)
    with pytest.raises(access.UserError, match="only active admin"):
        access.remove_user(engine, "root@example.com", ADMIN)
    assert audit_count(engine, "portal.user.change") == before  # refused: nothing written
    access.upsert_user(engine, "second@example.com", "admin", "*", ADMIN)
    assert access.upsert_user(engine, "root@example.com", "viewer", "staging", ADMIN).role == (
        "viewer"
    )
    with pytest.raises(access.UserError, match="only active admin"):
        access.remove_user(engine, "second@example.com", ADMIN)


def test_changing_role_and_grants_records_old_and_new(engine: Engine, settings: Settings) -> None:
    access.upsert_user(engine, "a@example.com", "viewer", "staging", ADMIN, settings=settings)
    before = audit_count(engine, "portal.user.change")
    access.upsert_user(engine, "A@example.com", "auditor", "staging,payments", ADMIN)
    assert audit_count(engine, "portal.user.change") == before + 1
    assert last_record(engine, "portal.user.change").resource == (
        "a@example.com: role viewer -> auditor; namespaces staging -> payments,staging"
    )


def test_a_change_that_changes_nothing_writes_nothing(engine: Engine) -> None:
    access.upsert_user(engine, "a@example.com", "viewer", "staging", ADMIN)
    before = audit_count(engine, "portal.user.change")
    access.upsert_user(engine, "a@example.com", "viewer", ["staging"], ADMIN)
    assert audit_count(engine, "portal.user.change") == before


def test_removing_a_user_is_audited_and_ends_their_access(
    engine: Engine, settings: Settings
) -> None:
    access.upsert_user(engine, "a@example.com", "viewer", "staging", ADMIN)
    before = audit_count(engine, "portal.user.change")
    info = access.remove_user(engine, "A@EXAMPLE.COM", ADMIN)
    assert not info.active
    assert audit_count(engine, "portal.user.change") == before + 1
    assert last_record(engine, "portal.user.change").resource == (
        "a@example.com: removed; role viewer -> none; namespaces staging -> none"
    )
    with engine.connect() as conn:
        assert access.principal_for(conn, "a@example.com", settings) is None
        assert [u.email for u in access.list_users(conn)] == ["a@example.com"]
    with pytest.raises(UserError, match="no active portal user"):
        access.remove_user(engine, "a@example.com", ADMIN)


@pytest.mark.parametrize(
    ("email", "role", "namespaces", "message"),
    [
        ("not-an-email", "viewer", "a", "not an email"),
        ("a@example.com", "owner", "a", "role must be one of"),
        ("a@example.com", "viewer", "", "at least one namespace"),
        ("a@example.com", "viewer", "a,*", "not both"),
        ("a@example.com", "viewer", "bad\x01name", "not a valid namespace"),
        ("a@example.com", "admin", "payments", "grant '\\*'"),
    ],
)
def test_bad_user_requests_are_refused_and_write_nothing(
    engine: Engine, email: str, role: str, namespaces: str, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        access.upsert_user(engine, email, role, namespaces, ADMIN)
    assert audit_count(engine, "portal.user.change") == 0


def test_only_admins_manage_users(engine: Engine) -> None:
    with pytest.raises(AccessDeniedError):
        access.upsert_user(engine, "b@example.com", "viewer", "a", AUDITOR)
    access.upsert_user(engine, "b@example.com", "viewer", "a", ADMIN)
    with pytest.raises(AccessDeniedError):
        access.remove_user(engine, "b@example.com", AUDITOR)
    assert audit_count(engine, "portal.user.change") == 1


def test_principal_for_maps_an_email_any_case(engine: Engine, settings: Settings) -> None:
    access.upsert_user(engine, "a@example.com", "auditor", "payments,billing", ADMIN)
    with engine.connect() as conn:
        p = access.principal_for(conn, " A@Example.COM ", settings, source_ip="10.1.2.3")
        assert access.principal_for(conn, "stranger@example.com", settings) is None
        assert access.principal_for(conn, "", settings) is None
    assert p == Principal(
        "a@example.com", "auditor", frozenset({"payments", "billing"}), "10.1.2.3"
    )


def test_bootstrap_admin_is_created_once_and_audited(engine: Engine, settings: Settings) -> None:
    settings = Settings(
        database_url=settings.database_url,
        secret_key=settings.secret_key,
        admins=("root@example.com",),
    )
    with engine.connect() as conn:
        p = access.principal_for(conn, "Root@Example.com", settings, source_ip="10.9.9.9")
        again = access.principal_for(conn, "root@example.com", settings)
    assert p == Principal("root@example.com", "admin", None, "10.9.9.9")
    assert again is not None and again.is_admin
    assert audit_count(engine, "portal.user.change") == 1
    row = last_record(engine, "portal.user.change")
    assert row.user == "root@example.com" and row.sourceIP == "10.9.9.9"
    assert "bootstrap" in row.resource and "none -> admin" in row.resource
    # A removed bootstrap admin stays removed (once another admin exists to remove them).
    access.upsert_user(engine, "second@example.com", "admin", "*", ADMIN)
    access.remove_user(engine, "root@example.com", ADMIN)
    with engine.connect() as conn:
        assert access.principal_for(conn, "root@example.com", settings) is None
    assert audit_count(engine, "portal.user.change") == 3


# ------------------------------------------------------------------ audit of access


def test_sign_in_writes_one_record(engine: Engine, settings: Settings) -> None:
    access.signed_in(engine, AUDITOR, settings)
    assert audit_count(engine, "portal.signin") == 1
    row = last_record(engine, "portal.signin")
    assert (row.user, row.role, row.sourceIP, row.resourceType) == (
        AUDITOR.email,
        "auditor",
        "10.0.0.2",
        "PortalUser",
    )
    assert row.namespace == settings.self_namespace


def test_access_denied_writes_one_record(engine: Engine, settings: Settings) -> None:
    access.denied(engine, "eve@example.com", "", "sign-in: no grant", "203.0.113.9", settings)
    access.denied(engine, AUDITOR.email, AUDITOR.role, "namespace production", "10.0.0.2", settings)
    assert audit_count(engine, "portal.access_denied") == 2
    row = last_record(engine, "portal.access_denied")
    assert (row.user, row.role, row.resource, row.sourceIP) == (
        AUDITOR.email,
        "auditor",
        "namespace production",
        "10.0.0.2",
    )


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def denied_rows(engine: Engine) -> list[tuple[str, str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(T.c.user, T.c.role, T.c.resource, T.c.sourceIP)
            .where(T.c.action == "portal.access_denied")
            .order_by(T.c.seq)
        ).all()
    return [tuple(r) for r in rows]


VIEWER = Principal("vera@example.com", "viewer", frozenset({"payments"}), "10.0.0.7")
KEYS = {"token aep_1a2b3c4d": 3, "address 10.0.0.7": 9}


def test_repeated_refusals_are_one_record_and_one_summary_per_window(
    engine: Engine, settings: Settings
) -> None:
    clock = Clock()
    guard = access.RefusalGuard(60, clock=clock)
    for _ in range(5):
        guard.refused(engine, settings, VIEWER, "api export: no export", KEYS)
        clock.now += 1
    guard.refused(engine, settings, VIEWER, "api download: other", KEYS)  # another what
    guard.refused(engine, settings, AUDITOR, "api export: no export", KEYS)  # another who
    v, a = (VIEWER.email, "viewer", "10.0.0.7"), (AUDITOR.email, "auditor", "10.0.0.2")
    first = [
        (v[0], v[1], "api export: no export", v[2]),
        (v[0], v[1], "api download: other", v[2]),
        (a[0], a[1], "api export: no export", a[2]),
    ]
    assert denied_rows(engine) == first
    assert not guard.due()
    clock.now += 56  # the first window (opened at 1000) has closed
    assert guard.due()
    guard.flush(engine, settings)
    summary = (v[0], v[1], "api export: no export (repeated 4 times in 60 s)", v[2])
    assert denied_rows(engine) == [*first, summary]
    clock.now += 60
    guard.flush(engine, settings)  # the others were not repeated: nothing more to say
    assert denied_rows(engine) == [*first, summary]
    guard.refused(engine, settings, VIEWER, "api export: no export", KEYS)  # a new window
    assert denied_rows(engine)[-1] == first[0]


def test_a_key_refused_its_limit_is_turned_away_until_the_window_ends(
    engine: Engine, settings: Settings
) -> None:
    clock = Clock()
    guard = access.RefusalGuard(60, clock=clock)
    for _ in range(3):
        guard.check(KEYS)
        guard.refused(engine, settings, VIEWER, "api export: no export", KEYS)
    clock.now += 20
    for _ in range(4):
        with pytest.raises(access.TooManyRequestsError, match="token aep_1a2b3c4d") as err:
            guard.check(KEYS)
        assert err.value.retry_after == 40 and err.value.status == 429
    guard.check({"token aep_99999999": 3, "address 10.0.0.8": 9})  # others are not
    clock.now += 40
    guard.check(KEYS)  # the window has ended
    guard.flush(engine, settings)
    assert [r[2] for r in denied_rows(engine)] == [
        "api export: no export",
        "api export: no export (repeated 2 times in 60 s)",
        "api: token aep_1a2b3c4d turned away 4 more requests (429) after 3 refusals in 60 s",
    ]


def test_the_guard_holds_a_bounded_number_of_entries(engine: Engine, settings: Settings) -> None:
    clock = Clock()
    guard = access.RefusalGuard(60, max_entries=2, clock=clock)
    for what in ("a", "a", "b", "c", "d"):
        guard.refused(engine, settings, VIEWER, what, {f"token {what}": 3})
    # "a" made room for "c" while its window was open: its count was written out early.
    assert [r[2] for r in denied_rows(engine)] == [
        "a",
        "b",
        "a (repeated 1 times in 60 s)",
        "c",
        "d",
    ]
    assert len(guard._repeats) <= 2 and len(guard._strikes) <= 2


def test_a_zero_window_turns_coalescing_and_throttling_off(
    engine: Engine, settings: Settings
) -> None:
    guard = access.RefusalGuard(0)
    for _ in range(4):
        guard.check(KEYS)
        guard.refused(engine, settings, VIEWER, "x", KEYS)
    assert len(denied_rows(engine)) == 4


def test_refusal_settings_are_read_and_validated() -> None:
    assert (Settings().max_refusals, Settings().refusal_window_seconds) == (10, 60.0)
    env = {
        "AUDIT_MAX_REFUSALS": "25",
        "AUDIT_REFUSAL_WINDOW_SECONDS": "120",
        "AUDIT_SECRET_KEY": "k",
    }
    got = Settings.from_env(env)
    assert (got.max_refusals, got.refusal_window_seconds) == (25, 120.0)
    for name, bad in (("AUDIT_MAX_REFUSALS", "0"), ("AUDIT_REFUSAL_WINDOW_SECONDS", "-1")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: bad, "AUDIT_SECRET_KEY": "k"})


def test_token_prefix_reads_only_well_formed_tokens() -> None:
    assert access.token_prefix("aep_1a2b3c4d_" + "x" * 43) == "aep_1a2b3c4d"
    for bad in ("", None, "aep_1a2b3c4d", "aep_XYZ_" + "x" * 43, "Bearer aep_1a2b3c4d_xx"):
        assert access.token_prefix(bad) is None


def test_the_portals_own_records_keep_the_chain_intact(engine: Engine, settings: Settings) -> None:
    access.upsert_user(engine, "a@example.com", "viewer", "staging", ADMIN)
    access.signed_in(engine, ADMIN, settings)
    access.denied(engine, "x@example.com", "", "no grant", "1.2.3.4", settings)
    with engine.connect() as conn:
        result = verify(conn)
    assert result.ok and result.checked == 3


# ----------------------------------------------------------------------- local mode


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("192.168.1.10", False),
        ("portal.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert access.is_loopback(address) is loopback
    if loopback:
        access.check_local_mode(address, False)
    else:
        with pytest.raises(UnsafeLocalModeError, match="not loopback"):
            access.check_local_mode(address, False)
    access.check_local_mode(address, True)  # with sign-in, any address may be served


@pytest.mark.parametrize(
    ("secrets", "configured"),
    [
        (None, False),
        ({}, False),
        ({"other": {"x": 1}}, False),
        ({"auth": {}}, False),
        ({"auth": "yes"}, False),
        ({"auth": {"redirect_uri": "http://x/oauth2callback", "cookie_secret": "s"}}, True),
        ({"auth": {"okta": {"client_id": "c"}}}, True),
    ],
)
def test_auth_configured(secrets: dict[str, object] | None, configured: bool) -> None:
    assert access.auth_configured(secrets) is configured


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _streamlit(address: str, port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start `streamlit run app.py` from a folder with no secrets (so no [auth])."""
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.address", address, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    env = dict(env, HOME=str(cwd), PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_streamlit_refuses_to_serve_local_mode_on_every_interface(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = _free_port()
    proc = _streamlit("0.0.0.0", port, env, tmp_path)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "refusing to start: sign-in is off" in out
    assert "server.address is 0.0.0.0, which is not loopback" in out
    with pytest.raises(httpx.TransportError):  # nothing is left listening
        httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=5)


def test_streamlit_serves_local_mode_on_loopback(env: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    proc = _streamlit("127.0.0.1", port, env, tmp_path)
    try:
        healthy = False
        for _ in range(240):  # a hang guard, not a speed check
            if proc.poll() is not None:
                break
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=5).is_success
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            break
        assert healthy, proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_login_providers() -> None:
    assert access.login_providers(None) == []
    assert access.login_providers({"auth": {"client_id": "x", "redirect_uri": "r"}}) == ["default"]
    named = {"auth": {"redirect_uri": "r", "okta": {"client_id": "a"}, "client_kwargs": {}}}
    assert access.login_providers(named) == ["okta"]


def test_the_secrets_example_is_accepted_by_streamlit(tmp_path: Path) -> None:
    """Streamlit's own validator accepts every provider in .streamlit/secrets.toml.example."""
    (tmp_path / ".streamlit").mkdir()
    example = (ROOT / ".streamlit" / "secrets.toml.example").read_text()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(example)
    script = (
        "import tomllib, sys\n"
        "from streamlit.auth_util import validate_auth_credentials\n"
        "import streamlit as st\n"
        "from audit_core.access import auth_configured, login_providers\n"
        "assert auth_configured(st.secrets)\n"
        "names = login_providers(st.secrets)\n"
        "assert names == login_providers(tomllib.load(open('.streamlit/secrets.toml', 'rb')))\n"
        "for name in names:\n"
        "    validate_auth_credentials(name)\n"
        "print(','.join(names))\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "okta,microsoft,google,keycloak"


def test_auth_configured_reads_st_secrets_without_a_secrets_file(tmp_path: Path) -> None:
    """st.secrets raises when no secrets file exists; that means no [auth], not a crash."""
    script = (
        "import streamlit as st\n"
        "from audit_core.access import auth_configured\n"
        "print(auth_configured(st.secrets))\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "False\n"), r.stderr
