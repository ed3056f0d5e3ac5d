"""Settings from the environment: defaults, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_core.config import ConfigError, ObjectStore, Settings


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


def test_job_files_stay_in_the_folder_unless_a_bucket_is_named(tmp_path: Path) -> None:
    base = {"AUDIT_SECRET_KEY": "k", "AUDIT_EXPORT_DIR": str(tmp_path)}
    assert Settings.from_env(base).export_storage is None
    s = Settings.from_env(
        {
            **base,
            "AUDIT_EXPORT_STORAGE": "s3://audit-exports/portal/jobs/",
            "AUDIT_S3_ENDPOINT_URL": "http://127.0.0.1:8333/",
            "AWS_DEFAULT_REGION": "eu-west-1",
        }
    )
    assert s.export_storage == ObjectStore(
        "audit-exports", "portal/jobs", "http://127.0.0.1:8333", "eu-west-1"
    )
    assert s.export_storage.key("export-20260301-001.csv") == "portal/jobs/export-20260301-001.csv"
    only_bucket = Settings.from_env({**base, "AUDIT_EXPORT_STORAGE": "s3://audit-exports"})
    assert only_bucket.export_storage == ObjectStore("audit-exports")
    both = {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-west-1"}
    region = Settings.from_env({**base, "AUDIT_EXPORT_STORAGE": "s3://abc", **both})
    assert region.export_storage is not None and region.export_storage.region == "us-west-2"


@pytest.mark.parametrize(
    ("env", "name", "said"),
    [
        ({"AUDIT_EXPORT_STORAGE": "gs://bucket/x"}, "AUDIT_EXPORT_STORAGE", "must be s3://"),
        ({"AUDIT_EXPORT_STORAGE": "/srv/exports"}, "AUDIT_EXPORT_STORAGE", "must be s3://"),
        ({"AUDIT_EXPORT_STORAGE": "s3://Audit_Exports"}, "AUDIT_EXPORT_STORAGE", "bucket name"),
        ({"AUDIT_EXPORT_STORAGE": "s3://ab"}, "AUDIT_EXPORT_STORAGE", "bucket name"),
        ({"AUDIT_EXPORT_STORAGE": "s3://abc/a//b"}, "AUDIT_EXPORT_STORAGE", "prefix"),
        ({"AUDIT_EXPORT_STORAGE": "s3://abc/../b"}, "AUDIT_EXPORT_STORAGE", "prefix"),
        ({"AUDIT_EXPORT_STORAGE": "s3://abc/a b"}, "AUDIT_EXPORT_STORAGE", "prefix"),
        ({"AUDIT_EXPORT_STORAGE": "s3://abc/x?y=1"}, "AUDIT_EXPORT_STORAGE", "must be s3://"),
        ({"AUDIT_S3_ENDPOINT_URL": "http://127.0.0.1:8333"}, "AUDIT_S3_ENDPOINT_URL", "is set"),
        (
            {"AUDIT_EXPORT_STORAGE": "s3://abc", "AUDIT_S3_ENDPOINT_URL": "127.0.0.1:8333"},
            "AUDIT_S3_ENDPOINT_URL",
            "http:// or https://",
        ),
        (
            {"AUDIT_EXPORT_STORAGE": "s3://abc", "AUDIT_S3_ENDPOINT_URL": "http://h:99999"},
            "AUDIT_S3_ENDPOINT_URL",
            "http:// or https://",
        ),
        (
            {"AUDIT_EXPORT_STORAGE": "s3://abc", "AUDIT_S3_ENDPOINT_URL": "http://u:pw9@h:1"},
            "AUDIT_S3_ENDPOINT_URL",
            "must not carry credentials",
        ),
    ],
)
def test_bad_object_storage_settings_are_named_in_one_line(
    env: dict[str, str], name: str, said: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**env, "AUDIT_SECRET_KEY": "k", "AUDIT_EXPORT_DIR": str(tmp_path)})
    message = caught.value.message
    assert message.startswith(name) and said in message and "\n" not in message
    assert "pw9" not in message
