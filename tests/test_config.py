"""Settings from the environment: defaults, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_core.config import ConfigError, Settings


def test_defaults_use_embedded_sqlite_and_the_seed_limit(tmp_path: Path) -> None:
    s = Settings.from_env({"AUDIT_EXPORT_DIR": str(tmp_path / "exports")})
    assert s.database_url == "sqlite:///data/audit.db" and not s.database_configured
    assert (s.sync_export_limit, s.export_ttl_hours, s.self_namespace) == (
        10_000,
        6,
        "audit-portal",
    )
    assert s.engine_kind == "sqlite"


def test_local_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    env = {"AUDIT_EXPORT_DIR": str(tmp_path / "exports")}
    first = Settings.from_env(env).secret_key
    assert len(first) > 40
    assert Settings.from_env(env).secret_key == first
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


def test_overrides(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "AUDIT_DATABASE_URL": "postgresql+psycopg://u@h/db",
            "AUDIT_SYNC_EXPORT_LIMIT": "50",
            "AUDIT_ADMINS": " A@x.com, b@y.org ",
            "AUDIT_SECRET_KEY": "k" * 40,
            "AUDIT_EXPORT_DIR": str(tmp_path),
        }
    )
    assert s.database_configured and s.engine_kind == "postgresql"
    assert s.sync_export_limit == 50 and s.admins == ("a@x.com", "b@y.org")


@pytest.mark.parametrize(
    ("name", "value"), [("AUDIT_SYNC_EXPORT_LIMIT", "ten"), ("AUDIT_EXPORT_TTL_HOURS", "0")]
)
def test_bad_numbers_are_named(name: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value, "AUDIT_SECRET_KEY": "k", "AUDIT_EXPORT_DIR": str(tmp_path)})
