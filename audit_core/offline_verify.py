#!/usr/bin/env python3
"""Check a signed audit export offline, with nothing but the portal's public key.

    python offline_verify.py FILE --key portal.pub.pem|keys.json [--manifest M] [--sig S]
                             [--proofs P] [--checkpoint C --consistency-proof F]
    python offline_verify.py --segments DIR --key portal.pub.pem|keys.json

M defaults to FILE.manifest.json and S to FILE.manifest.sig. Each check prints one line,
"ok <check>: <reason>" or "FAIL <check>: <reason>", in this order: manifest signature,
manifest format, file name, file bytes, file sha256, records parse, record count, record ids,
record checksums, checkpoint signature, checkpoint snapshot, then one "inclusion proof" line
per proof in P, then "kept checkpoint" and "consistency" when C and F are given.

--segments DIR checks a delivery folder: each segment as above, its "leaf range", the
ranges contiguous from the first with no gap or duplicate ("segments contiguous"), and, when
they start at leaf 0, that all leaves hash to the root the last segment's checkpoint signs
("segments tree"). A filtered delivery's segments (their manifests' query states actions,
users or namespaces) hold only the matching records of their ranges: each record is checked
against that filter ("records match filter"), every segment must state the same one
("segments filter": filtered and unfiltered segments do not mix), and the Merkle root is
not checked, since it needs every leaf: that each range holds every matching record rests on
the portal's signature, and any record can be checked against the signed checkpoint with an
inclusion proof (`python -m audit_core prove ID > P`, then SEGMENT --proofs P).

Exit status: 0 every check passed; 1 a check failed (the FAIL line names it, and nothing after
it is checked); 2 the input cannot be used (a missing or unreadable file, a key file that holds
no key, malformed JSON), said in one line on stderr.

This file is deliberately standalone: Python 3.11+ and the `cryptography` package only.
Formats: C2SP tlog-checkpoint in a C2SP signed-note (Ed25519), RFC 9162 §2.1 Merkle proofs,
a detached raw Ed25519 signature over the manifest's exact bytes.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import gzip
import hashlib
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn, cast
from urllib.parse import urlencode

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FIELDS = (
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
# CSV cells the exporter may have prefixed with one quote against formula injection.
FREE_TEXT = tuple(f for f in FIELDS if f not in ("id", "timestamp", "checksum"))
FORMATS = ("csv", "json", "jsonl")
SIG_PREFIX = "\u2014 "  # C2SP signed-note: an em dash and a space open each signature line
ED25519_TYPE = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
CHUNK = 1 << 20
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Check:
    """One verified (or failed) property of the bundle, as one printable row."""

    name: str
    ok: bool
    reason: str

    def line(self) -> str:
        """Return the check as the CLI prints it: 'ok|FAIL <name>: <reason>'."""
        reason = " ".join(self.reason.splitlines())
        return f"{'ok' if self.ok else 'FAIL'} {self.name}: {reason}"


class UnusableInputError(Exception):
    """Input that cannot be checked at all (exit status 2)."""


class NoteError(ValueError):
    """A signed note that does not parse, or that no given key signed."""


@dataclass(frozen=True)
class InclusionProof:
    """One inclusion answer as the API returns it."""

    id: str
    leaf_index: int
    tree_size: int
    path: list[bytes]
    checkpoint: str


@dataclass(frozen=True)
class ConsistencyProof:
    """One consistency answer as the API returns it."""

    first: int
    second: int
    path: list[bytes]
    checkpoint: str | None


@dataclass(frozen=True)
class Manifest:
    """The parts of an export manifest that the checks compare against."""

    file_name: str
    file_bytes: int
    file_sha256: str
    count: int
    first_id: str | None
    last_id: str | None
    tree_size: int
    root_hash: bytes
    checkpoint: str
    fmt: str | None


@dataclass(frozen=True)
class Bundle:
    """Everything the checks need, loaded and shape-checked up front."""

    file_path: Path
    manifest: bytes
    signature: bytes
    keys: list[Ed25519PublicKey]
    key_label: str
    proofs: list[InclusionProof]
    kept: str | None
    consistency: ConsistencyProof | None


# --- hashing: RFC 9162 §2.1 and the record checksum ------------------------------------------


def _sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def leaf_hash(digest: bytes) -> bytes:
    """Return the RFC 9162 leaf hash of a record: SHA-256(0x00 || checksum digest)."""
    return _sha256(b"\x00", digest)


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01", left, right)


def record_checksum(record: dict[str, str]) -> str:
    """Return sha256:<hex> over the canonical JSON of a record's nine non-checksum fields."""
    canon = {k: record[k] for k in CHECKED_FIELDS}
    data = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(data.encode("utf-8")).hexdigest()


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """Check an inclusion proof of leaf at index in the tree of size (RFC 9162 §2.1.3.2)."""
    if index < 0 or index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> bool:
    """Check that tree first is a prefix of tree second (RFC 9162 §2.1.4.2)."""
    if first < 0 or second < first:
        return False
    if first == second:
        return not path and first_root == second_root
    if first == 0:
        # The empty tree is a prefix of every tree; its proof is empty.
        return not path and first_root == EMPTY_ROOT
    if not path:
        return False
    nodes = list(path)
    if first & (first - 1) == 0:
        nodes.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root


# --- signed notes (C2SP signed-note + tlog-checkpoint) ---------------------------------------


def raw_public(key: Ed25519PublicKey) -> bytes:
    """Return the 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(origin: str, public: bytes) -> bytes:
    """Return the C2SP signed-note key id: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    return _sha256(origin.encode("utf-8"), b"\n", ED25519_TYPE, public)[:4]


def _b64(text: str) -> bytes | None:
    """Decode standard padded base64, refusing any other spelling of the same bytes."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    if not note.endswith("\n"):
        raise NoteError("a signed note ends with a newline")
    if any(c < " " and c != "\n" for c in note):
        raise NoteError("a signed note has no control characters but newlines")
    sep = note.rfind("\n\n")
    if sep < 0:
        raise NoteError("no blank line separates the note's text from its signatures")
    body, lines = note[: sep + 1], note[sep + 2 : -1].split("\n")
    signatures = []
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"signature line {line!r} does not start with an em dash and a space")
        name, _, blob_text = line[len(SIG_PREFIX) :].partition(" ")
        blob = _b64(blob_text)
        if not name or blob is None or len(blob) < 5:
            raise NoteError(f"signature line {line!r} is not '— <name> <base64>'")
        signatures.append((name, blob))
    return body, signatures


def _checkpoint_fields(body: str) -> tuple[str, int, bytes]:
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("a checkpoint has an origin, a tree size and a root hash line")
    origin, size_text, root_text = lines[:3]
    if not origin:
        raise NoteError("the checkpoint's origin line is empty")
    if not _DECIMAL.match(size_text):
        raise NoteError(f"tree size {size_text!r} is not a decimal number")
    root = _b64(root_text)
    if root is None or len(root) != 32:
        raise NoteError(f"root hash {root_text!r} is not 32 bytes of base64")
    return origin, int(size_text), root


def open_note(
    note: str, keys: Sequence[Ed25519PublicKey], name: str | None = None
) -> tuple[str, str]:
    """Return (signer name, text) of a signed note that one of keys signed (under name)."""
    text, signatures = _split_note(note)
    message = text.encode("utf-8")
    tried = False
    for signer, blob in signatures:
        if name is not None and signer != name:
            continue
        for key in keys:
            if key_id(signer, raw_public(key)) != blob[:4]:
                continue  # signed-note: signatures by unknown keys (e.g. witnesses) are ignored
            tried = True
            try:
                key.verify(blob[4:], message)
            except InvalidSignature:
                continue
            return signer, text
    if tried:
        raise NoteError("the signature by the given key does not verify over the note's text")
    ids = ", ".join(f"{signer} {blob[:4].hex()}" for signer, blob in signatures)
    raise NoteError(f"no signature by the given key under {name or 'any name'!r} (found: {ids})")


def verify_note(note: str, keys: Sequence[Ed25519PublicKey]) -> tuple[str, int, bytes]:
    """Return (origin, tree size, root) of a checkpoint note that one of keys signed."""
    text, _ = _split_note(note)
    origin, size, root = _checkpoint_fields(text)
    # C2SP tlog-checkpoint: the log signs under its own origin.
    open_note(note, keys, origin)
    return origin, size, root


# --- loading inputs (any failure here is exit 2) ---------------------------------------------


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnusableInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key would let two readers see two different records; refuse it.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _loads(data: bytes | str) -> Any:
    return json.loads(data, object_pairs_hook=_no_duplicates)


def _read_json(path: Path, what: str) -> Any:
    data = _read_bytes(path, what)
    try:
        return _loads(data)
    except ValueError as exc:
        raise UnusableInputError(f"{what} {path} is not valid JSON: {exc}") from None


def load_keys(path: Path) -> list[Ed25519PublicKey]:
    """Read Ed25519 public keys from a SubjectPublicKeyInfo PEM file or a JWKS."""
    data = _read_bytes(path, "key file")
    if data.lstrip().startswith(b"-----BEGIN"):
        return [_pem_key(path, data)]
    try:
        doc = _loads(data)
    except ValueError:
        raise UnusableInputError(
            f"key file {path} is neither a PEM public key nor a JWKS (JSON)"
        ) from None
    return _jwks_keys(path, doc)


def _pem_key(path: Path, data: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise UnusableInputError(
            f"key file {path} holds no PEM public key (expected 'BEGIN PUBLIC KEY')"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise UnusableInputError(f"key file {path} holds a public key that is not Ed25519")
    return key


def _jwks_keys(path: Path, doc: Any) -> list[Ed25519PublicKey]:
    entries = doc.get("keys", [doc]) if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise UnusableInputError(f'key file {path} is not a JWKS (an object {{"keys": [...]}})')
    keys = []
    for jwk in entries:
        if isinstance(jwk, dict) and jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            keys.append(_jwk_key(path, jwk))
    if not keys:
        raise UnusableInputError(f"key file {path} holds no Ed25519 (OKP) key")
    return keys


def _jwk_key(path: Path, jwk: dict[str, Any]) -> Ed25519PublicKey:
    x = jwk.get("x")
    raw = None
    if isinstance(x, str) and _B64URL.match(x):
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
    if raw is None or len(raw) != 32:
        raise UnusableInputError(f"key file {path}: a JWK's 'x' is not 32 bytes of base64url")
    return Ed25519PublicKey.from_public_bytes(raw)


def _hashes(value: Any, where: str) -> list[bytes]:
    if not isinstance(value, list):
        raise UnusableInputError(f"{where} must be a list of base64 hashes")
    out = []
    for item in value:
        raw = _b64(item) if isinstance(item, str) else None
        if raw is None or len(raw) != 32:
            raise UnusableInputError(f"{where}: {item!r} is not a 32-byte base64 hash")
        out.append(raw)
    return out


def _count(value: Any) -> int | None:
    """Return value if it is a non-negative JSON integer (not a boolean)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return cast(int, value) if ok else None


def load_proofs(path: Path) -> list[InclusionProof]:
    """Read a JSON array of inclusion answers (a single answer object is accepted too)."""
    doc = _read_json(path, "proofs file")
    items = [doc] if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise UnusableInputError(f"proofs file {path} must hold a JSON array of inclusion proofs")
    return [_inclusion(item, f"proofs file {path}, entry {n}") for n, item in enumerate(items, 1)]


def _inclusion(item: Any, where: str) -> InclusionProof:
    if not isinstance(item, dict):
        raise UnusableInputError(f"{where} is not an object")
    index, size = _count(item.get("leafIndex")), _count(item.get("treeSize"))
    rid, note = item.get("id"), item.get("checkpoint")
    if not isinstance(rid, str) or index is None or size is None or not isinstance(note, str):
        raise UnusableInputError(
            f"{where} needs id, leafIndex, treeSize, inclusionPath and checkpoint"
        )
    path = _hashes(item.get("inclusionPath"), f"{where} inclusionPath")
    return InclusionProof(rid, index, size, path, note)


def load_consistency(path: Path) -> ConsistencyProof:
    """Read one consistency answer: {"from", "to", "consistencyPath", "checkpoint"}."""
    doc = _read_json(path, "consistency proof")
    where = f"consistency proof {path}"
    if not isinstance(doc, dict):
        raise UnusableInputError(f"{where} is not a JSON object")
    first, second, note = _count(doc.get("from")), _count(doc.get("to")), doc.get("checkpoint")
    if first is None or second is None or not (note is None or isinstance(note, str)):
        raise UnusableInputError(f"{where} needs from, to, consistencyPath (and a checkpoint)")
    return ConsistencyProof(first, second, _hashes(doc.get("consistencyPath"), where), note)


def _read_note(path: Path) -> str:
    data = _read_bytes(path, "checkpoint")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnusableInputError(f"checkpoint {path} is not UTF-8 text") from None
    # A note saved on Windows may have CRLF line ends; the signature covers the LF text.
    return text.replace("\r\n", "\n")


def load_bundle(
    file_path: Path,
    manifest_path: Path,
    sig_path: Path,
    key_path: Path,
    proofs_path: Path | None = None,
    checkpoint_path: Path | None = None,
    consistency_path: Path | None = None,
) -> Bundle:
    """Read and shape-check every input, raising UnusableInputError for the first bad one."""
    if (checkpoint_path is None) != (consistency_path is None):
        raise UnusableInputError("--checkpoint and --consistency-proof go together")
    try:
        with open(file_path, "rb"):
            pass
    except OSError as exc:
        raise UnusableInputError(f"cannot read {file_path}: {exc.strerror or exc}") from None
    manifest = _read_bytes(manifest_path, "manifest")
    signature = _read_bytes(sig_path, "signature")
    keys = load_keys(key_path)
    return Bundle(
        file_path=file_path,
        manifest=manifest,
        signature=signature,
        keys=keys,
        key_label=key_path.name,
        proofs=load_proofs(proofs_path) if proofs_path else [],
        kept=_read_note(checkpoint_path) if checkpoint_path else None,
        consistency=load_consistency(consistency_path) if consistency_path else None,
    )


# --- the manifest ----------------------------------------------------------------------------


def _field(doc: Any, dotted: str, kind: type | tuple[type, ...]) -> Any:
    value = doc
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"it has no {dotted}")
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"its {dotted} has the wrong type")
    return value


def parse_manifest(data: bytes) -> Manifest:
    """Parse an AuditExportManifest, raising ValueError naming what is wrong."""
    doc = _loads(data)
    if not isinstance(doc, dict) or doc.get("apiVersion") != "v1":
        raise ValueError("it is not a v1 object")
    if doc.get("kind") != "AuditExportManifest":
        raise ValueError(f"its kind is {doc.get('kind')!r}, not 'AuditExportManifest'")
    sha = _field(doc, "file.sha256", str)
    root = _b64(_field(doc, "snapshot.rootHash", str))
    if not _HEX64.match(sha):
        raise ValueError("its file.sha256 is not 64 lowercase hex digits")
    if root is None or len(root) != 32:
        raise ValueError("its snapshot.rootHash is not 32 bytes of base64")
    sizes = [_count(_field(doc, k, int)) for k in ("file.bytes", "records.count")]
    tree_size = _count(_field(doc, "snapshot.treeSize", int))
    if None in sizes or tree_size is None:
        raise ValueError("it has a negative size or count")
    query = doc.get("query")
    fmt = query.get("format") if isinstance(query, dict) else None
    return Manifest(
        file_name=_field(doc, "file.name", str),
        file_bytes=cast(int, sizes[0]),
        file_sha256=sha,
        count=cast(int, sizes[1]),
        first_id=_field(doc, "records.firstId", (str, type(None))),
        last_id=_field(doc, "records.lastId", (str, type(None))),
        tree_size=tree_size,
        root_hash=root,
        checkpoint=_field(doc, "checkpoint", str),
        fmt=fmt if fmt in FORMATS else None,
    )


# --- reading the records ---------------------------------------------------------------------


class RecordsError(ValueError):
    """An exported file whose records cannot be read."""


@dataclass
class Scan:
    """What one streaming pass over the records found."""

    count: int = 0
    first_id: str | None = None
    last_id: str | None = None
    bad_count: int = 0
    first_bad: str | None = None
    declared_total: int | None = None
    gzip: bool = False
    digests: dict[str, bytes] = field(default_factory=dict)


def _record(item: Any, where: str) -> dict[str, str]:
    if not isinstance(item, dict) or set(item) != set(FIELDS):
        raise RecordsError(f"{where} does not have exactly the fields {','.join(FIELDS)}")
    if not all(isinstance(v, str) for v in item.values()):
        raise RecordsError(f"{where} has a value that is not a string")
    return cast(dict[str, str], item)


def _csv_records(fh: IO[bytes]) -> Iterator[dict[str, str]]:
    text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
    reader = csv.reader(text, strict=True)
    header = next(reader, None)
    if header != list(FIELDS):
        raise RecordsError(f"the CSV header is {header!r}, not {','.join(FIELDS)}")
    for row in reader:
        if len(row) != len(FIELDS):
            raise RecordsError(f"CSV line {reader.line_num} has {len(row)} cells, not 10")
        rec = dict(zip(FIELDS, row, strict=True))
        for name in FREE_TEXT:
            # The exporter put one quote before a formula-like (or quoted) cell; undo just that.
            if rec[name].startswith("'"):
                rec[name] = rec[name][1:]
        yield rec


def _json_records(fh: IO[bytes], scan: Scan) -> Iterator[dict[str, str]]:
    try:
        doc = _loads(fh.read())
    except ValueError as exc:
        raise RecordsError(f"the file is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "AuditExport":
        raise RecordsError("the file is not an AuditExport envelope")
    metadata, records = doc.get("metadata"), doc.get("records")
    if doc.get("apiVersion") != "v1" or not isinstance(metadata, dict):
        raise RecordsError("the envelope has no v1 apiVersion and metadata")
    if not isinstance(records, list):
        raise RecordsError("the envelope's records is not a list")
    if "totalRecords" in metadata:
        scan.declared_total = _count(metadata["totalRecords"])
        if scan.declared_total is None:
            raise RecordsError("the envelope's metadata.totalRecords is not a count")
    for n, item in enumerate(records, 1):
        yield _record(item, f"record {n}")


def _jsonl_records(fh: IO[bytes]) -> Iterator[dict[str, str]]:
    for n, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            item = _loads(line)
        except ValueError as exc:
            raise RecordsError(f"line {n} is not JSON: {exc}") from None
        yield _record(item, f"line {n}")


def _records(fh: IO[bytes], fmt: str, scan: Scan) -> Iterator[dict[str, str]]:
    if fmt == "csv":
        return _csv_records(fh)
    if fmt == "json":
        return _json_records(fh, scan)
    return _jsonl_records(fh)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_data(path: Path) -> IO[bytes]:
    # Job files may be gzipped (name ending .gz); the manifest hashes the compressed bytes.
    return cast(IO[bytes], gzip.open(path, "rb")) if _is_gzip(path) else open(path, "rb")


def scan_records(path: Path, fmt: str, wanted: set[str]) -> Scan:
    """Read every record once: count, first/last id, checksums, digests of wanted ids."""
    scan = Scan()
    try:
        scan.gzip = _is_gzip(path)
        with _open_data(path) as fh:
            for rec in _records(fh, fmt, scan):
                _tally(scan, rec, wanted)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RecordsError(f"after record {scan.count}: {exc}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise RecordsError(f"the gzip stream is damaged: {exc}") from None
    except OSError as exc:
        raise UnusableInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return scan


def _tally(scan: Scan, rec: dict[str, str], wanted: set[str]) -> None:
    scan.count += 1
    if scan.first_id is None:
        scan.first_id = rec["id"]
    scan.last_id = rec["id"]
    expected = record_checksum(rec)
    if rec["checksum"] != expected:
        scan.bad_count += 1
        if scan.first_bad is None:
            scan.first_bad = (
                f"record {rec['id']!r} (#{scan.count}) carries {rec['checksum']!r}, "
                f"its fields hash to {expected!r}"
            )
    elif rec["id"] in wanted:
        scan.digests[rec["id"]] = bytes.fromhex(expected.removeprefix("sha256:"))


def _format(manifest: Manifest, path: Path) -> str | None:
    if manifest.fmt:
        return manifest.fmt
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json")):
        if name.endswith(ext):
            return fmt
    return None


# --- the checks, in order --------------------------------------------------------------------


def _ok(name: str, reason: str) -> Check:
    return Check(name, True, reason)


def _fail(name: str, reason: str) -> Check:
    return Check(name, False, reason)


def check_signature(b: Bundle) -> Check:
    """Check the detached raw Ed25519 signature over the manifest's exact bytes."""
    name = "manifest signature"
    if len(b.signature) != 64:
        return _fail(name, f"the signature file has {len(b.signature)} bytes, not 64")
    for key in b.keys:
        try:
            key.verify(b.signature, b.manifest)
        except InvalidSignature:
            continue
        return _ok(name, f"Ed25519 over the {len(b.manifest)} manifest bytes, key {b.key_label}")
    return _fail(name, f"does not verify with {b.key_label}: wrong key, or altered manifest/sig")


def check_manifest(b: Bundle) -> tuple[Check, Manifest | None]:
    """Parse the (signed) manifest."""
    try:
        manifest = parse_manifest(b.manifest)
    except ValueError as exc:
        return _fail("manifest format", f"not an AuditExportManifest: {exc}"), None
    return _ok("manifest format", "an AuditExportManifest v1"), manifest


def check_file(b: Bundle, m: Manifest) -> list[Check]:
    """Check the file's base name, size and SHA-256 against the manifest."""
    name = b.file_path.name
    if name != m.file_name:
        return [_fail("file name", f"the file is {name!r}, the manifest names {m.file_name!r}")]
    done = [_ok("file name", repr(name))]
    try:
        size = b.file_path.stat().st_size
    except OSError as exc:
        raise UnusableInputError(f"cannot read {b.file_path}: {exc.strerror or exc}") from None
    if size != m.file_bytes:
        msg = f"the file has {size} bytes, the manifest says {m.file_bytes}"
        return [*done, _fail("file bytes", msg)]
    done.append(_ok("file bytes", str(size)))
    digest = _file_sha256(b.file_path)
    if digest != m.file_sha256:
        msg = f"the file hashes to {digest}, the manifest says {m.file_sha256}"
        return [*done, _fail("file sha256", msg)]
    return [*done, _ok("file sha256", digest)]


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                sha.update(chunk)
    except OSError as exc:
        raise UnusableInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return sha.hexdigest()


def check_records(b: Bundle, m: Manifest) -> tuple[list[Check], Scan | None]:
    """Parse every record, then check count, first/last id and each checksum."""
    fmt = _format(m, b.file_path)
    if fmt is None:
        reason = "cannot tell the format (no query.format, unknown extension)"
        return [_fail("records parse", reason)], None
    try:
        scan = scan_records(b.file_path, fmt, {p.id for p in b.proofs})
    except RecordsError as exc:
        return [_fail("records parse", f"{fmt}: {exc}")], None
    packed = " in gzip" if scan.gzip else ""
    done = [_ok("records parse", f"{scan.count} {fmt} records{packed}")]
    for check in _record_checks(scan, m):
        done.append(check)
        if not check.ok:
            return done, None
    return done, scan


def _record_checks(scan: Scan, m: Manifest) -> Iterator[Check]:
    if scan.count != m.count:
        yield _fail("record count", f"the file holds {scan.count}, the manifest says {m.count}")
    elif scan.declared_total not in (None, scan.count):
        yield _fail("record count", f"the envelope's totalRecords is {scan.declared_total}")
    else:
        yield _ok("record count", str(scan.count))
    if (scan.first_id, scan.last_id) != (m.first_id, m.last_id):
        found, said = f"{scan.first_id!r}..{scan.last_id!r}", f"{m.first_id!r}..{m.last_id!r}"
        yield _fail("record ids", f"the file runs {found}, the manifest says {said}")
    else:
        yield _ok("record ids", f"first {scan.first_id!r}, last {scan.last_id!r}")
    if scan.first_bad is not None:
        yield _fail("record checksums", f"{scan.bad_count} wrong; first: {scan.first_bad}")
    else:
        yield _ok("record checksums", f"all {scan.count} match their fields")


def check_checkpoint(b: Bundle, m: Manifest) -> tuple[list[Check], str | None]:
    """Check the manifest's checkpoint note is signed and names the manifest's snapshot."""
    try:
        origin, size, root = verify_note(m.checkpoint, b.keys)
    except NoteError as exc:
        return [_fail("checkpoint signature", str(exc))], None
    done = [_ok("checkpoint signature", f"signed note of {origin!r}, key id {_kid(b, origin)}")]
    if (size, root) != (m.tree_size, m.root_hash):
        reason = f"the note is of tree size {size}, the snapshot of {m.tree_size} (or roots differ)"
        return [*done, _fail("checkpoint snapshot", reason)], None
    root_b64 = base64.b64encode(root).decode("ascii")
    return [*done, _ok("checkpoint snapshot", f"tree size {size}, root {root_b64}")], origin


def _kid(b: Bundle, origin: str) -> str:
    return ", ".join(key_id(origin, raw_public(k)).hex() for k in b.keys)


def check_inclusion(b: Bundle, proof: InclusionProof, origin: str, scan: Scan) -> Check:
    """Check that one record of the file is a leaf of a signed tree head."""
    name, rid = "inclusion proof", proof.id
    digest = scan.digests.get(rid)
    if digest is None:
        return _fail(name, f"record {rid!r} is not in the file")
    try:
        note_origin, size, root = verify_note(proof.checkpoint, b.keys)
    except NoteError as exc:
        return _fail(name, f"{rid!r}: its checkpoint: {exc}")
    if note_origin != origin:
        return _fail(name, f"{rid!r}: its checkpoint is of log {note_origin!r}, not {origin!r}")
    if size != proof.tree_size:
        return _fail(name, f"{rid!r}: treeSize {proof.tree_size}, its checkpoint's {size}")
    if not verify_inclusion(leaf_hash(digest), proof.leaf_index, size, proof.path, root):
        return _fail(name, f"{rid!r}: the path does not lead to the root of tree size {size}")
    return _ok(name, f"{rid!r} is leaf {proof.leaf_index} of the signed tree of size {size}")


def check_kept(b: Bundle, m: Manifest, origin: str) -> list[Check]:
    """Check the auditor's kept checkpoint and its consistency with the manifest's."""
    assert b.kept is not None and b.consistency is not None
    try:
        kept_origin, kept_size, kept_root = verify_note(b.kept, b.keys)
    except NoteError as exc:
        return [_fail("kept checkpoint", str(exc))]
    if kept_origin != origin:
        return [_fail("kept checkpoint", f"it is of log {kept_origin!r}, not {origin!r}")]
    done = [_ok("kept checkpoint", f"signed note of tree size {kept_size}")]
    heads = sorted([(kept_size, kept_root), (m.tree_size, m.root_hash)], key=lambda h: h[0])
    return [*done, _consistency(b, b.consistency, heads[0], heads[1])]


def _consistency(
    b: Bundle, proof: ConsistencyProof, old: tuple[int, bytes], new: tuple[int, bytes]
) -> Check:
    name = "consistency"
    if (proof.first, proof.second) != (old[0], new[0]):
        reason = f"the proof is from {proof.first} to {proof.second}, not {old[0]} to {new[0]}"
        return _fail(name, reason)
    if proof.checkpoint is not None:
        try:
            head = verify_note(proof.checkpoint, b.keys)[1:]
        except NoteError as exc:
            return _fail(name, f"the proof's checkpoint: {exc}")
        if head != new:
            return _fail(name, f"the proof's checkpoint is not the signed head of size {new[0]}")
    if not verify_consistency(old[0], new[0], old[1], new[1], proof.path):
        return _fail(name, f"tree {old[0]} is not a prefix of tree {new[0]}: history was changed")
    return _ok(name, f"tree {old[0]} is a prefix of tree {new[0]} (append-only)")


def _checks(b: Bundle) -> Iterator[Check]:
    signature = check_signature(b)
    yield signature
    if not signature.ok:
        return
    parsed, m = check_manifest(b)
    yield parsed
    if m is None:
        return
    files = check_file(b, m)
    yield from files
    if not files[-1].ok:
        return
    records, scan = check_records(b, m)
    yield from records
    if scan is None:
        return
    notes, origin = check_checkpoint(b, m)
    yield from notes
    if origin is None:
        return
    for proof in b.proofs:
        inclusion = check_inclusion(b, proof, origin, scan)
        yield inclusion
        if not inclusion.ok:
            return
    if b.kept is not None:
        yield from check_kept(b, m, origin)


def iter_checks(
    file_path: Path | str,
    manifest_path: Path | str | None,
    sig_path: Path | str | None,
    key_path: Path | str,
    proofs_path: Path | str | None = None,
    checkpoint_path: Path | str | None = None,
    consistency_path: Path | str | None = None,
) -> Iterator[Check]:
    """Yield each check in order, ending with the first that fails."""
    # None for the manifest or signature means FILE.manifest.json / FILE.manifest.sig.
    file_path = Path(file_path)
    bundle = load_bundle(
        file_path,
        Path(manifest_path or f"{file_path}.manifest.json"),
        Path(sig_path or f"{file_path}.manifest.sig"),
        Path(key_path),
        Path(proofs_path) if proofs_path else None,
        Path(checkpoint_path) if checkpoint_path else None,
        Path(consistency_path) if consistency_path else None,
    )
    yield from _checks(bundle)


def verify_bundle(
    file_path: Path | str,
    manifest_path: Path | str | None,
    sig_path: Path | str | None,
    key_path: Path | str,
    proofs_path: Path | str | None = None,
    checkpoint_path: Path | str | None = None,
    consistency_path: Path | str | None = None,
) -> list[Check]:
    """Run every check; the list ends at the first failure. Raises UnusableInputError."""
    return list(
        iter_checks(
            file_path,
            manifest_path,
            sig_path,
            key_path,
            proofs_path,
            checkpoint_path,
            consistency_path,
        )
    )


# --- a folder of delivered segments ---------------------------------------------------------

SEGMENT_RE = re.compile(r"^log-(\d+)-(\d+)\.jsonl\.gz$")


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 MTH over leaf hashes (the tree splits at the largest power of two < n)."""
    if not leaves:
        return _sha256(b"")

    def mth(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaves[lo]
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    return mth(0, len(leaves))


def _segments(folder: Path) -> list[tuple[int, int, Path]]:
    if not folder.is_dir():
        raise UnusableInputError(f"{folder} is not a folder")
    found = []
    for path in folder.iterdir():
        m = SEGMENT_RE.match(path.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), path))
    if not found:
        raise UnusableInputError(f"{folder} holds no segment named log-<first>-<last>.jsonl.gz")
    return sorted(found)


def _segment_leaves(path: Path) -> list[bytes]:
    """The leaf hashes of a segment's records, in order (their checksums were checked)."""
    with gzip.open(path, "rb") as fh:
        return [
            leaf_hash(bytes.fromhex(_loads(line)["checksum"].removeprefix("sha256:")))
            for line in fh
            if line.strip()
        ]


def _segment_range(doc: Any) -> tuple[Any, Any, Any]:
    """(records.firstLeaf, records.lastLeaf, snapshot.treeSize) of a parsed manifest."""
    records = doc.get("records") if isinstance(doc, dict) else None
    snapshot = doc.get("snapshot") if isinstance(doc, dict) else None
    if not isinstance(records, dict) or not isinstance(snapshot, dict):
        return None, None, None
    return records.get("firstLeaf"), records.get("lastLeaf"), snapshot.get("treeSize")


@dataclass(frozen=True)
class SegmentFilter:
    """The filter a segment's manifest states: its query's action, user, namespace lists."""

    actions: frozenset[str]
    users: frozenset[str]
    namespaces: frozenset[str]

    @property
    def filtered(self) -> bool:
        return bool(self.actions or self.users or self.namespaces)

    def text(self) -> str:
        """As the portal writes it (`action=user.*&namespace=payments`)."""
        given = [("action", self.actions), ("user", self.users), ("namespace", self.namespaces)]
        text = urlencode([(k, ",".join(sorted(v))) for k, v in given if v], safe="*,@:/")
        return text or "no filter (every record)"

    def mismatch(self, rec: dict[str, str]) -> str | None:
        """The field of a record outside the filter (None: it matches). Actions are exact
        names or a family `prefix.*` (a lone `*` is every action), users any case."""
        if self.actions and not any(
            rec["action"].startswith(a[:-1]) if a.endswith("*") else rec["action"] == a
            for a in self.actions
        ):
            return "action"
        if self.users and rec["user"].lower() not in self.users:
            return "user"
        if self.namespaces and rec["namespace"] not in self.namespaces:
            return "namespace"
        return None


def segment_filter(doc: Any) -> SegmentFilter:
    """The filter a parsed segment manifest states, raising ValueError naming what is wrong."""
    query = doc.get("query") if isinstance(doc, dict) else None
    if not isinstance(query, dict):
        raise ValueError("its manifest has no query")
    lists = []
    for key in ("action", "user", "namespace"):
        values = query.get(key)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"its manifest's query.{key} is not a list of strings")
        lists.append(frozenset(values))
    return SegmentFilter(lists[0], frozenset(u.lower() for u in lists[1]), lists[2])


def _filter_mismatch(path: Path, flt: SegmentFilter) -> tuple[int, str | None]:
    """(records read, the first outside the filter, said in a sentence or None)."""
    n = 0
    with gzip.open(path, "rb") as fh:
        for rec in _jsonl_records(cast(IO[bytes], fh)):
            n += 1
            field_name = flt.mismatch(rec)
            if field_name is not None:
                value = rec[field_name]
                return n, f"record {rec['id']!r} (#{n}) has {field_name} {value!r}"
    return n, None


def iter_segment_checks(folder: Path | str, key_path: Path | str) -> Iterator[Check]:
    """Check a delivery folder: each segment as a bundle, their leaf ranges contiguous with
    no gap and no duplicate, and (when they start at leaf 0) the Merkle root of every
    leaf against the last segment's signed snapshot. Segments of a filtered delivery: every
    record against the filter their manifests state alike, and no Merkle root (that needs
    every leaf; completeness rests on the portal's signature). Ends at the first failure."""
    segments = _segments(Path(folder))
    expected = segments[0][0]
    leaves: list[bytes] = []
    root = size = None
    stated: tuple[str, SegmentFilter] | None = None  # the first segment's name and filter
    for first, last, path in segments:
        if first != expected:
            what = "a gap" if first > expected else "an overlap or a duplicate"
            yield _fail(
                "segments contiguous",
                f"{path.name} starts at leaf {first}, expected {expected}: {what}",
            )
            return
        for check in iter_checks(path, None, None, key_path):
            yield Check(f"{path.name}: {check.name}", check.ok, check.reason)
            if not check.ok:
                return
        data = _read_bytes(Path(f"{path}.manifest.json"), "manifest")
        doc = _loads(data)
        got = _segment_range(doc)
        if got[:2] != (first, last) or got[2] != last + 1:
            yield _fail(
                f"{path.name}: leaf range",
                f"its manifest says leaves {got[0]}-{got[1]} "
                f"at tree size {got[2]}, its name {first}-{last}",
            )
            return
        yield _ok(f"{path.name}: leaf range", f"leaves {first}-{last}, signed")
        try:
            flt = segment_filter(doc)
        except ValueError as exc:
            yield _fail(f"{path.name}: records match filter", str(exc))
            return
        if stated is None:
            stated = (path.name, flt)
        elif flt != stated[1]:
            yield _fail(
                "segments filter",
                f"{path.name} holds {flt.text()}, {stated[0]} {stated[1].text()}: the "
                "segments of one folder are one delivery's, filtered alike",
            )
            return
        if flt.filtered:
            n, bad = _filter_mismatch(path, flt)
            if bad is not None:
                yield _fail(
                    f"{path.name}: records match filter",
                    f"{bad}, outside the filter its manifest states, {flt.text()}",
                )
                return
            yield _ok(f"{path.name}: records match filter", f"all {n} match {flt.text()}")
        elif segments[0][0] == 0:
            leaves.extend(_segment_leaves(path))
        root = parse_manifest(data).root_hash
        size = last + 1
        expected = last + 1
    start = segments[0][0]
    yield _ok(
        "segments contiguous",
        f"{len(segments)} segment(s) cover leaves {start}-{expected - 1}, no gap, no duplicate",
    )
    if stated is not None and stated[1].filtered:
        yield _ok(
            "segments filter",
            f"every segment holds only records matching {stated[1].text()} (checked one by one)",
        )
        yield _ok(
            "segments tree",
            "not checked: the segments hold only the records matching their filter, and the "
            "Merkle root needs every leaf; that each leaf range holds every matching record "
            "rests on the portal's signature of its manifest, and any record can be checked "
            "against the signed checkpoint with an inclusion proof "
            "(python -m audit_core prove ID)",
        )
        return
    if start != 0:
        yield _ok("segments tree", f"not checked: the first segment starts at leaf {start}")
        return
    if len(leaves) != size or merkle_root(leaves) != root:
        yield _fail(
            "segments tree",
            f"the {len(leaves)} leaves do not hash to the signed root of the tree of {size}",
        )
        return
    yield _ok("segments tree", f"the {size} leaves hash to the signed root of that tree")


# --- command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the caller may be a script reading stderr.
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="offline_verify.py",
        description="Check a signed audit export offline with the portal's public key.",
    )
    p.add_argument(
        "file", type=Path, nargs="?", help="the exported file (.csv, .json, .jsonl, maybe .gz)"
    )
    p.add_argument("--segments", type=Path, metavar="DIR", help="check a delivery folder instead")
    p.add_argument("--manifest", type=Path, help="default: FILE.manifest.json")
    p.add_argument("--sig", type=Path, help="default: FILE.manifest.sig")
    p.add_argument("--key", type=Path, required=True, help="portal.pub.pem or keys.json (JWKS)")
    p.add_argument("--proofs", type=Path, help="JSON array of inclusion proofs")
    p.add_argument("--checkpoint", type=Path, help="a signed checkpoint note you kept")
    p.add_argument("--consistency-proof", type=Path, help="consistency proof for --checkpoint")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks, print one line each; return 0, 1 (a check failed) or 2 (bad input)."""
    args = _parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")  # odd bytes in a file never crash us
    if (args.file is None) == (args.segments is None):
        print("offline_verify: give FILE or --segments DIR (one of them)", file=sys.stderr)
        return 2
    try:
        checks = (
            iter_segment_checks(args.segments, args.key)
            if args.segments
            else iter_checks(
                args.file,
                args.manifest,
                args.sig,
                args.key,
                args.proofs,
                args.checkpoint,
                args.consistency_proof,
            )
        )
        for check in checks:
            print(check.line(), flush=True)
            if not check.ok:
                return 1
    except UnusableInputError as exc:
        print(f"offline_verify: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - an auditor gets one line, never a traceback
        print(f"offline_verify: cannot check ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
