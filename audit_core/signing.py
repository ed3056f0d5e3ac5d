"""The portal's Ed25519 key, C2SP signed-note checkpoints, JWKS and signed export manifests."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ConfigError

# C2SP signed-note: a signature line starts with an em dash (U+2014) and a space.
SIG_PREFIX = "\u2014 "
# C2SP signed-note signature type for Ed25519 keys, hashed into the key id.
ED25519_TYPE = b"\x01"
CHANNELS = ("ui", "api", "cli", "job")
REQUESTED_BY_KEYS = ("user", "role", "channel")
QUERY_KEYS = ("from", "to", "action", "user", "namespace", "format", "description")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_HELP = "point AUDIT_SIGNING_KEY_FILE at an Ed25519 private key in PKCS#8 PEM"


class SigningKeyError(ConfigError):
    """A signing key file that cannot be read, created or used."""


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Read the PKCS#8 PEM key at path, or create it (mode 0600) if there is none."""
    key = _read_key(path, missing_ok=True)
    if key is not None:
        return key
    key = Ed25519PrivateKey.generate()
    if _publish(path, _pkcs8(key)):
        return key
    # Another process created the file first: everyone must sign with the winner's key.
    winner = _read_key(path, missing_ok=False)
    assert winner is not None
    return winner


def load_key(path: Path) -> Ed25519PrivateKey:
    """Read the PKCS#8 PEM key at path; a missing file is an error (for a configured path)."""
    key = _read_key(path, missing_ok=True)
    if key is None:
        raise SigningKeyError(f"signing key {path} does not exist: create it, or {_KEY_HELP}")
    return key


def _pkcs8(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read_key(path: Path, *, missing_ok: bool) -> Ed25519PrivateKey | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise SigningKeyError(f"signing key {path}: vanished while being created") from None
    except OSError as exc:
        raise SigningKeyError(
            f"signing key {path} cannot be read ({exc.strerror or exc}): "
            f"fix its permissions, or {_KEY_HELP}"
        ) from None
    return _parse_key(path, data)


def _parse_key(path: Path, data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # TypeError: the key is encrypted; the portal has no passphrase to give.
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"signing key {path} is not an unencrypted Ed25519 PKCS#8 PEM key: "
            f"replace or remove it (a new one is generated when it is absent), or {_KEY_HELP}"
        )
    return key


def _publish(path: Path, data: bytes) -> bool:
    """Create path holding data, never replacing a file; False if one was already there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        _write_new(tmp, data)
        try:
            # link() is atomic and refuses to replace: readers never see a half-written key.
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # A filesystem without hard links: create the key in place, still exclusively.
            try:
                _write_new(path, data)
            except FileExistsError:
                return False
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise SigningKeyError(
            f"signing key {path} cannot be created ({exc.strerror or exc}): "
            f"make {path.parent} writable, or {_KEY_HELP}"
        ) from None
    return True


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # the umask may have taken our own read bit too
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Return the 32 raw bytes of the public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Return the public key as SubjectPublicKeyInfo PEM (what OpenSSL's -pubin reads)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(origin: str, public: bytes) -> bytes:
    """Return the C2SP signed-note key id: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    if len(public) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return hashlib.sha256(origin.encode("utf-8") + b"\n" + ED25519_TYPE + public).digest()[:4]


def _check_origin(origin: str) -> None:
    # C2SP signed-note key names: non-empty, no whitespace, no "+".
    if not origin or "+" in origin or any(c.isspace() for c in origin):
        raise ValueError(f"log origin {origin!r} must be non-empty, without spaces or '+'")


def note_body(origin: str, size: int, root: bytes) -> str:
    """Return the C2SP tlog-checkpoint body: origin, tree size, base64 root, each + newline."""
    _check_origin(origin)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"tree size must be a non-negative integer, not {size!r}")
    if len(root) != 32:
        raise ValueError("a root hash has 32 bytes")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode('ascii')}\n"


def sign_note(key: Ed25519PrivateKey, name: str, text: str) -> str:
    """Return text as a C2SP signed note with one Ed25519 signature line under name."""
    _check_origin(name)
    if not text.endswith("\n") or "\n\n" in text:
        raise ValueError("a note's text is non-empty lines, each ending in a newline")
    signature = key.sign(text.encode("utf-8"))
    blob = base64.b64encode(key_id(name, raw_public(key)) + signature).decode("ascii")
    return f"{text}\n{SIG_PREFIX}{name} {blob}\n"


def sign_checkpoint(key: Ed25519PrivateKey, origin: str, size: int, root: bytes) -> str:
    """Return the checkpoint as a C2SP signed note, signed by key under the log's origin."""
    return sign_note(key, origin, note_body(origin, size, root))


def jwks(public_key: Ed25519PublicKey | Ed25519PrivateKey, origin: str) -> dict[str, Any]:
    """Return the JWKS (RFC 8037 OKP key) for the public key; kid is the note's key id."""
    raw = raw_public(public_key)
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"),
        "kid": key_id(origin, raw).hex(),
        "alg": "EdDSA",
        "use": "sig",
    }
    return {"keys": [jwk]}


def canonical_json(obj: object) -> bytes:
    """Encode obj as the record checksum does: sorted keys, no spaces, UTF-8 unescaped."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def build_manifest(
    *,
    export_id: str,
    exported_at: str,
    requested_by: Mapping[str, str],
    query: Mapping[str, Any],
    tree_size: int,
    root_hash: bytes,
    checkpoint: str,
    count: int,
    first_id: str | None,
    last_id: str | None,
    file_name: str,
    file_bytes: int,
    file_sha256: str,
    previous_manifest: str | None,
    leaves: tuple[int, int] | None = None,
) -> bytes:
    """Return the canonical JSON bytes of an export manifest, exactly the DESIGN's keys.

    A delivery segment's manifest also carries its leaf range: `records.firstLeaf` and
    `records.lastLeaf` (`leaves`), and its snapshot is the tree of lastLeaf + 1 leaves; its
    count is the range's size, or at most that when its query has a filter.
    """
    _exact_keys("requestedBy", requested_by, REQUESTED_BY_KEYS)
    _exact_keys("query", query, QUERY_KEYS)
    if requested_by["channel"] not in CHANNELS:
        raise ValueError(f"requestedBy.channel must be one of {', '.join(CHANNELS)}")
    if not _HEX64.match(file_sha256):
        raise ValueError("file sha256 must be 64 lowercase hex digits")
    if previous_manifest is not None and not _HEX64.match(previous_manifest):
        raise ValueError("previousManifest must be 64 lowercase hex digits or None")
    if count < 0 or file_bytes < 0 or (count == 0) != (first_id is None and last_id is None):
        raise ValueError("records: a count of 0 has no first or last id, any other count has")
    if leaves is not None:
        # Every record of the range, or (a filtered delivery) the ones matching the query.
        span = leaves[1] - leaves[0] + 1
        filtered = any(query[k] for k in ("action", "user", "namespace"))
        if tree_size != leaves[1] + 1 or count > span or (count != span and not filtered):
            raise ValueError(
                "a segment holds leaves firstLeaf..lastLeaf (all of them, or the ones its "
                "filter matches) at the tree of lastLeaf + 1"
            )
    root_b64 = base64.b64encode(root_hash).decode("ascii")
    _check_note_head(checkpoint, tree_size, root_b64)
    manifest = {
        "apiVersion": "v1",
        "kind": "AuditExportManifest",
        "exportId": export_id,
        "exportedAt": exported_at,
        "requestedBy": {k: requested_by[k] for k in REQUESTED_BY_KEYS},
        "query": {k: _plain(query[k]) for k in QUERY_KEYS},
        "snapshot": {"treeSize": tree_size, "rootHash": root_b64},
        "checkpoint": checkpoint,
        "records": {"count": count, "firstId": first_id, "lastId": last_id}
        | ({} if leaves is None else {"firstLeaf": leaves[0], "lastLeaf": leaves[1]}),
        "file": {"name": os.path.basename(file_name), "bytes": file_bytes, "sha256": file_sha256},
        "previousManifest": previous_manifest,
    }
    return canonical_json(manifest)


def _exact_keys(what: str, given: Mapping[str, Any], expected: tuple[str, ...]) -> None:
    if set(given) != set(expected):
        raise ValueError(f"{what} must have exactly the keys {', '.join(expected)}")


def _plain(value: Any) -> Any:
    # Filter lists may arrive as tuples; JSON has only lists.
    return list(value) if isinstance(value, tuple) else value


def _check_note_head(checkpoint: str, tree_size: int, root_b64: str) -> None:
    # A manifest whose checkpoint names another tree head would never verify: refuse to sign it.
    lines = checkpoint.split("\n")
    if len(lines) < 3 or lines[1] != str(tree_size) or lines[2] != root_b64:
        raise ValueError("the checkpoint is not the signed note of the snapshot's tree head")


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """Return the raw 64-byte Ed25519 signature over data (the detached manifest signature)."""
    return key.sign(data)


def manifest_digest(manifest: bytes) -> str:
    """Return the hex SHA-256 of a manifest's bytes, the next manifest's previousManifest."""
    return hashlib.sha256(manifest).hexdigest()


class Writable(Protocol):
    """Where a HashingSink passes bytes on: a file, a storage PendingFile."""

    def write(self, data: bytes) -> object: ...


class HashingSink:
    """A write-only sink that counts and SHA-256-hashes bytes, passing them to fh if given."""

    def __init__(self, fh: Writable | None = None) -> None:
        self.fh = fh
        self.size = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Hash and count data, then write it on."""
        self.sha256.update(data)
        n = memoryview(data).nbytes
        self.size += n
        if self.fh is not None:
            self.fh.write(data)  # type: ignore[arg-type]  # files take any bytes-like
        return n

    def flush(self) -> None:
        """Flush the wrapped file, if it has a flush (a PendingFile is made durable by its
        finish())."""
        flush = getattr(self.fh, "flush", None)
        if flush is not None:
            flush()

    def hexdigest(self) -> str:
        """Return the hex SHA-256 of everything written so far."""
        return self.sha256.hexdigest()
