"""Every setting, read and validated in one place: `Settings.from_env()`.

No other module reads the environment: the server, the CLI and the workers build
`Settings` once and pass it down; tests construct `Settings(...)` directly.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from .errors import AuditError, ConfigError
from .filters import AuditFilter

DEFAULT_DATABASE_URL = "sqlite:///data/audit.db"


def _int(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _seconds(env: dict[str, str], name: str, default: float, scale: float = 1.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a number of at least 0, got {raw!r}")
    return value * scale


def _origin(raw: str) -> str:
    origin = raw.strip() or "audit-export-portal"
    if any(c.isspace() or c == "+" for c in origin) or not origin.isprintable():
        raise ConfigError(
            f"AUDIT_LOG_ORIGIN must be printable text without spaces or '+', got {raw!r}"
        )
    return origin


# S3's bucket naming rules (3-63 lowercase letters, digits, dots, hyphens; a letter or digit
# at each end), and the key characters AWS calls safe, for the prefix.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*")


@dataclass(frozen=True)
class ObjectStore:
    """Where job files go instead of the local folder: AUDIT_EXPORT_STORAGE=s3://bucket/prefix.

    Credentials are never held here: the S3 client reads them itself (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, shared config files, instance roles).
    """

    bucket: str
    prefix: str = ""  # without leading or trailing '/'; "" puts files at the bucket's top
    endpoint_url: str | None = None  # AUDIT_S3_ENDPOINT_URL; None: AWS itself
    region: str | None = None  # AWS_REGION, else AWS_DEFAULT_REGION; None: the client's own

    @property
    def url(self) -> str:
        """The setting as an operator writes it."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, name: str) -> str:
        """The object key of a job file."""
        return f"{self.prefix}/{name}" if self.prefix else name


def _object_store(env: dict[str, str]) -> ObjectStore | None:
    """Read AUDIT_EXPORT_STORAGE; None keeps files in the folder."""
    raw = env.get("AUDIT_EXPORT_STORAGE", "").strip()
    if not raw:
        return None
    scheme, sep, rest = raw.partition("://")
    if scheme.lower() != "s3" or not sep or any(c in rest for c in "?#"):
        raise ConfigError(
            "AUDIT_EXPORT_STORAGE must be s3://bucket or s3://bucket/prefix (unset: files stay "
            f"in AUDIT_EXPORT_DIR), got {raw!r}"
        )
    return _s3_location("AUDIT_EXPORT_STORAGE", rest, env)


def _s3_location(name: str, rest: str, env: dict[str, str]) -> ObjectStore:
    """The bucket and prefix of an s3:// URL (rest: what follows s3://), or a ConfigError
    naming the setting; the endpoint (AUDIT_S3_ENDPOINT_URL) and region from env."""
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{name}: {bucket!r} is not an S3 bucket name (3 to 63 lowercase "
            "letters, digits, dots and hyphens, a letter or digit at each end)"
        )
    prefix = prefix.strip("/")
    if prefix and (not _PREFIX.fullmatch(prefix) or {".", ".."} & set(prefix.split("/"))):
        raise ConfigError(
            f"{name}: the prefix {prefix!r} may hold only letters, digits, "
            "! _ . * ' ( ) - and single '/' between parts (no '.' or '..' parts)"
        )
    endpoint = _endpoint_url(env.get("AUDIT_S3_ENDPOINT_URL", "").strip())
    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
    return ObjectStore(bucket, prefix, endpoint, region or None)


def delivery_target(raw: str, env: dict[str, str], *, name: str) -> Path | ObjectStore:
    """Where a delivery goes: a folder, or s3://bucket[/prefix] (a ConfigError naming the
    setting, `name`, for any other URL or a bad bucket or prefix)."""
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    looks_like_url = bool(sep) or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", text) is not None
    if not looks_like_url:
        if not text:
            raise ConfigError(f"{name} must be a folder or s3://bucket/prefix, got {raw!r}")
        return Path(text)
    if scheme.lower() != "s3" or not sep or not rest or any(c in rest for c in "?#"):
        raise ConfigError(
            f"{name} must be a folder or s3://bucket or s3://bucket/prefix, got {raw!r}"
        )
    return _s3_location(name, rest, env)


def _delivery(env: dict[str, str], command_line: str | None) -> Path | ObjectStore | None:
    """AUDIT_DELIVERY_TO, or AUDIT_DELIVERY_DIR (its older name, for a folder only); a
    command line's `--to` takes the place of both."""
    if command_line is not None:
        return delivery_target(command_line, env, name="--to")
    to = env.get("AUDIT_DELIVERY_TO", "").strip()
    folder = env.get("AUDIT_DELIVERY_DIR", "").strip()
    target = delivery_target(to, env, name="AUDIT_DELIVERY_TO") if to else None
    if folder:
        if target is not None and target != Path(folder):
            raise ConfigError(
                f"AUDIT_DELIVERY_TO ({to!r}) and AUDIT_DELIVERY_DIR ({folder!r}) name different "
                "places: set AUDIT_DELIVERY_TO only (AUDIT_DELIVERY_DIR is its older name)"
            )
        target = Path(folder)
    return target


DELIVERY_FILTER_KEYS = ("action", "user", "namespace")


def delivery_filter(raw: str, *, name: str = "AUDIT_DELIVERY_FILTER") -> AuditFilter | None:
    """A delivery's filter written as a query string, `namespace=payments&action=user.*`
    (keys action, user, namespace; a key may repeat, values may be comma lists, as in the
    API), parsed with AuditFilter.parse; None for an empty value. Any other key, from/to
    included (a delivery is continuous), or a value AuditFilter refuses is a ConfigError
    naming the setting, `name`."""
    example = "such as namespace=payments&action=user.*"
    if any(c < " " or c == "\x7f" for c in raw):
        raise ConfigError(f"{name} contains a control character, got {raw!r}")
    text = raw.strip(" ")
    if not text:
        return None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ConfigError(f"{name} must be a query string {example}, got {raw!r}") from None
    given: dict[str, list[str]] = {}
    for key, value in pairs:
        if key in ("from", "to"):
            raise ConfigError(
                f"{name}: a delivery is continuous (every new record, by leaf), so it takes "
                f"no {key}; give action, user or namespace, {example}"
            )
        if key not in DELIVERY_FILTER_KEYS:
            raise ConfigError(
                f"{name}: unknown key {key!r}; give action, user or namespace, {example}"
            )
        given.setdefault(key, []).append(value)
    try:
        flt = AuditFilter.parse(
            action=given.get("action"), user=given.get("user"), namespace=given.get("namespace")
        )
    except AuditError as exc:
        raise ConfigError(f"{name}: {exc.message}") from None
    if not (flt.action_terms or flt.users or flt.namespaces):
        raise ConfigError(
            f"{name} {raw!r} names no action, user or namespace: unset it to deliver every record"
        )
    return flt


def _delivery_filter(
    env: dict[str, str], command_line: str | None, target: Path | ObjectStore | None
) -> AuditFilter | None:
    """AUDIT_DELIVERY_FILTER, for the worker's AUDIT_DELIVERY_TO; a command line's `deliver
    --to` takes the place of both (its filter is its own --action, --user, --namespace)."""
    if command_line is not None:
        return None
    flt = delivery_filter(env.get("AUDIT_DELIVERY_FILTER", ""))
    if flt is not None and target is None:
        raise ConfigError(
            "AUDIT_DELIVERY_FILTER is set but AUDIT_DELIVERY_TO is not: set AUDIT_DELIVERY_TO "
            "to a folder or s3://bucket/prefix, or unset AUDIT_DELIVERY_FILTER"
        )
    return flt


def _check_endpoint_used(env: dict[str, str], *targets: object) -> None:
    """AUDIT_S3_ENDPOINT_URL set while nothing goes to a bucket is a mistake: say so."""
    endpoint = _endpoint_url(env.get("AUDIT_S3_ENDPOINT_URL", "").strip())
    if endpoint is not None and not any(isinstance(t, ObjectStore) for t in targets):
        raise ConfigError(
            "AUDIT_S3_ENDPOINT_URL is set but neither AUDIT_EXPORT_STORAGE nor "
            "AUDIT_DELIVERY_TO is an s3:// URL: set one of them to s3://bucket/prefix, or "
            "unset AUDIT_S3_ENDPOINT_URL"
        )


def _endpoint_url(raw: str) -> str | None:
    """AUDIT_S3_ENDPOINT_URL: an http(s) URL of an S3-compatible server, or None."""
    if not raw:
        return None
    if "@" in raw:  # never echoed: it may hold a password
        raise ConfigError(
            "AUDIT_S3_ENDPOINT_URL must not carry credentials: give them in "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if not _is_server_url(raw):
        raise ConfigError(
            "AUDIT_S3_ENDPOINT_URL must be the http:// or https:// address of an S3 server, "
            f"such as https://s3.example.com or http://127.0.0.1:8333, got {raw!r}"
        )
    return raw.rstrip("/")


def _is_server_url(raw: str) -> bool:
    """http(s)://host[:port][/], and nothing else: no credentials, path, query or fragment."""
    try:
        parts = urlsplit(raw)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and (port is None or port > 0)
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
    )


@dataclass(frozen=True)
class Timing:
    """How a worker paces itself (AUDIT_WORKER_*); tests use short leases."""

    lease_seconds: float = 60.0
    heartbeat_seconds: float = 3.0
    poll_seconds: float = 2.0
    sweep_seconds: float = 60.0
    retry_seconds: float = 30.0  # a failed attempt waits this long, doubled each time
    batch_delay: float = 0.0  # test-only slow-down after each chunk

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Timing:
        """Read AUDIT_WORKER_LEASE_SECONDS, _HEARTBEAT_SECONDS, _POLL_SECONDS, _SWEEP_SECONDS,
        _RETRY_SECONDS and _BATCH_DELAY_MS."""
        env = dict(os.environ if env is None else env)
        return cls(
            lease_seconds=_seconds(env, "AUDIT_WORKER_LEASE_SECONDS", cls.lease_seconds),
            heartbeat_seconds=_seconds(
                env, "AUDIT_WORKER_HEARTBEAT_SECONDS", cls.heartbeat_seconds
            ),
            poll_seconds=_seconds(env, "AUDIT_WORKER_POLL_SECONDS", cls.poll_seconds),
            sweep_seconds=_seconds(env, "AUDIT_WORKER_SWEEP_SECONDS", cls.sweep_seconds),
            retry_seconds=_seconds(env, "AUDIT_WORKER_RETRY_SECONDS", cls.retry_seconds),
            batch_delay=_seconds(env, "AUDIT_WORKER_BATCH_DELAY_MS", 0.0, scale=1 / 1000),
        )


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    database_configured: bool = False
    export_dir: Path = Path("data/exports")
    # None: job files in export_dir (the embedded default); else in this bucket (storage.py)
    export_storage: ObjectStore | None = None
    sync_export_limit: int = 10_000
    # Export worker threads a portal process runs beside the pages and the API; 0 for a
    # portal host that only serves, with `python -m audit_core worker` on other hosts.
    portal_workers: int = 1
    export_ttl_hours: int = 6
    self_namespace: str = "audit-portal"
    admins: tuple[str, ...] = ()
    secret_key: str = field(default="", repr=False)
    max_concurrent_streams: int = 2
    max_queued_jobs: int = 5
    # Refusals (403) one API token may run into per window before it is turned away with
    # 429 until the window ends; one client address gets three times as many. Repeats of
    # one refusal within the window are written as one summary record (0 s: neither).
    max_refusals: int = 10
    refusal_window_seconds: float = 60.0
    timing: Timing = field(default_factory=Timing)
    signing_key_file: Path | None = None  # None: data/signing.key, made at first start
    log_origin: str = "audit-export-portal"
    checkpoint_seconds: float = 300.0
    # Where the worker delivers the log in signed segments (audit_core.delivery), every
    # delivery_seconds: a folder or a bucket (AUDIT_DELIVERY_TO); None: no scheduled delivery.
    # (AUDIT_DELIVERY_DIR, the older name of a folder's, is read into it too.)
    delivery_to: Path | ObjectStore | None = None
    delivery_seconds: float = 60.0
    # AUDIT_DELIVERY_FILTER: the worker delivers only the matching records of each leaf
    # range (None: every record).
    delivery_filter: AuditFilter | None = None

    @classmethod
    def from_env(
        cls, env: dict[str, str] | None = None, *, delivery_to: str | None = None
    ) -> Settings:
        """Read settings from environment variables (AUDIT_*).

        delivery_to: a command line's `deliver --to`, which takes the place of
        AUDIT_DELIVERY_TO and AUDIT_DELIVERY_DIR (and is named `--to` in its errors), and
        of AUDIT_DELIVERY_FILTER too (its filter is the command line's own).
        """
        env = dict(os.environ if env is None else env)
        export_storage = _object_store(env)
        delivery = _delivery(env, delivery_to)
        delivery_filter_ = _delivery_filter(env, delivery_to, delivery)
        _check_endpoint_used(env, export_storage, delivery)
        url = env.get("AUDIT_DATABASE_URL", "").strip()
        admins = tuple(
            a.strip().lower() for a in env.get("AUDIT_ADMINS", "").split(",") if a.strip()
        )
        export_dir = Path(env.get("AUDIT_EXPORT_DIR", "") or "data/exports")
        return cls(
            database_url=url or DEFAULT_DATABASE_URL,
            database_configured=bool(url),
            export_dir=export_dir,
            export_storage=export_storage,
            sync_export_limit=_int(env, "AUDIT_SYNC_EXPORT_LIMIT", 10_000),
            portal_workers=_int(env, "AUDIT_PORTAL_WORKERS", 1, minimum=0),
            export_ttl_hours=_int(env, "AUDIT_EXPORT_TTL_HOURS", 6),
            self_namespace=env.get("AUDIT_SELF_NAMESPACE", "") or "audit-portal",
            admins=admins,
            secret_key=env.get("AUDIT_SECRET_KEY", "") or _local_secret(export_dir),
            max_concurrent_streams=_int(env, "AUDIT_MAX_CONCURRENT_STREAMS", 2),
            max_queued_jobs=_int(env, "AUDIT_MAX_QUEUED_JOBS", 5),
            max_refusals=_int(env, "AUDIT_MAX_REFUSALS", 10),
            refusal_window_seconds=_seconds(env, "AUDIT_REFUSAL_WINDOW_SECONDS", 60.0),
            timing=Timing.from_env(env),
            signing_key_file=Path(key_file)
            if (key_file := env.get("AUDIT_SIGNING_KEY_FILE"))
            else None,
            log_origin=_origin(env.get("AUDIT_LOG_ORIGIN", "")),
            checkpoint_seconds=_seconds(env, "AUDIT_CHECKPOINT_SECONDS", 300.0),
            delivery_to=delivery,
            delivery_seconds=_seconds(env, "AUDIT_DELIVERY_SECONDS", 60.0),
            delivery_filter=delivery_filter_,
        )

    @property
    def key_path(self) -> Path:
        """The signing key: AUDIT_SIGNING_KEY_FILE, else beside the link secret."""
        return self.signing_key_file or self.export_dir.parent / "signing.key"

    @property
    def engine_kind(self) -> str:
        return self.database_url.split(":", 1)[0].split("+", 1)[0]


def _local_secret(export_dir: Path) -> str:
    """Return a per-installation signing secret kept beside the export files.

    Used only when AUDIT_SECRET_KEY is unset, so a single-host install works out of
    the box; several hosts must share AUDIT_SECRET_KEY.
    """
    path = export_dir.parent / "secret.key"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first
                pass
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"the link secret {path} cannot be made or read ({exc.strerror or exc}): set "
            "AUDIT_SECRET_KEY, or point AUDIT_EXPORT_DIR at a folder whose parent is writable"
        ) from None
