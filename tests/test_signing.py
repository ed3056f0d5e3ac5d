"""Signing: the key file, C2SP signed-note checkpoints, JWKS, canonical manifests, hashing."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit_core import offline_verify, signing
from audit_core.record import compute_checksum
from audit_core.signing import SigningKeyError, load_or_create_key, raw_public

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "audit-export-portal"

# The worked example of golang.org/x/mod/sumdb/note (the signed-note reference implementation).
GO_SIGNER = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"  # 0x01 || Ed25519 seed
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZ"
    "SNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def go_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(GO_SIGNER)[1:])


def pem_of(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- the key file -------------------------------------------------------------------------------


def test_a_missing_key_is_created_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "data" / "signing.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert raw_public(load_or_create_key(path)) == raw_public(key)
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temporary left


def test_the_key_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_key(tmp_path / "signing.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "signing.key").stat().st_mode) == 0o600


def test_an_existing_key_is_used_as_it_is(tmp_path: Path) -> None:
    path, mine = tmp_path / "signing.key", Ed25519PrivateKey.generate()
    path.write_bytes(pem_of(mine))
    assert raw_public(load_or_create_key(path)) == raw_public(mine)


def test_load_key_never_creates(tmp_path: Path) -> None:
    path = tmp_path / "configured.key"
    with pytest.raises(SigningKeyError, match="does not exist"):
        signing.load_key(path)
    assert not path.exists()
    mine = Ed25519PrivateKey.generate()
    path.write_bytes(pem_of(mine))
    assert raw_public(signing.load_key(path)) == raw_public(mine)


def test_losing_the_creation_race_reads_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, winner = tmp_path / "signing.key", Ed25519PrivateKey.generate()
    real_link = os.link

    def link_after_the_winner(src: str, dst: str) -> None:
        Path(dst).write_bytes(pem_of(winner))  # another process gets there first
        real_link(src, dst)

    monkeypatch.setattr(signing.os, "link", link_after_the_winner)
    assert raw_public(load_or_create_key(path)) == raw_public(winner)
    assert path.read_bytes() == pem_of(winner)


def test_processes_racing_to_create_the_key_all_end_with_one(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    start = time.time() + 2  # every process waits for the same instant, then creates
    script = (
        "import sys, time; from pathlib import Path;"
        "from audit_core.signing import load_or_create_key, raw_public;"
        "time.sleep(max(0, float(sys.argv[2]) - time.time()));"
        "print(raw_public(load_or_create_key(Path(sys.argv[1]))).hex())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    seen = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert seen == {raw_public(load_or_create_key(path)).hex()}


def test_an_unreadable_key_path_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.mkdir()  # reading a directory fails for every user, root included
    with pytest.raises(SigningKeyError, match=re.escape(str(path))) as info:
        load_or_create_key(path)
    assert isinstance(info.value, ValueError) and "AUDIT_SIGNING_KEY_FILE" in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_key_without_read_permission_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(pem_of(Ed25519PrivateKey.generate()))
    path.chmod(0)
    with pytest.raises(SigningKeyError, match="cannot be read"):
        load_or_create_key(path)


@pytest.mark.parametrize(
    "content",
    [
        b"not a key at all\n",
        b"",
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
        signing.public_pem(Ed25519PrivateKey.generate()),
    ],
    ids=["garbage", "empty", "ec-p256", "encrypted", "public-only"],
)
def test_a_file_that_is_no_ed25519_pkcs8_key_is_refused_and_kept(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(content)
    with pytest.raises(SigningKeyError, match=re.escape(str(path))):
        load_or_create_key(path)
    assert path.read_bytes() == content  # never overwritten: it may be someone's real key


def test_an_uncreatable_key_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only_filesystem(path: Path, data: bytes) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(signing, "_write_new", read_only_filesystem)  # root ignores modes
    with pytest.raises(SigningKeyError, match="cannot be created .*Permission denied"):
        load_or_create_key(tmp_path / "signing.key")
    assert not (tmp_path / "signing.key").exists()


# --- key ids and signed notes -------------------------------------------------------------------


def test_key_id_is_the_c2sp_formula() -> None:
    public = raw_public(Ed25519PrivateKey.generate())
    expected = hashlib.sha256(ORIGIN.encode() + b"\x0a" + b"\x01" + public).digest()[:4]
    assert signing.key_id(ORIGIN, public) == expected


def test_key_id_matches_the_go_reference_vector() -> None:
    name, key_hash, key_b64 = GO_VERIFIER.split("+")
    encoded = base64.b64decode(key_b64)
    assert encoded[0] == 1 and encoded[1:] == raw_public(go_key())
    assert signing.key_id(name, encoded[1:]).hex() == key_hash


def test_sign_note_reproduces_the_go_reference_note_byte_for_byte() -> None:
    assert signing.sign_note(go_key(), "PeterNeumann", GO_TEXT) == GO_NOTE


def test_a_checkpoint_is_exactly_the_c2sp_signed_note() -> None:
    key, root = Ed25519PrivateKey.generate(), hashlib.sha256(b"root").digest()
    note = signing.sign_checkpoint(key, ORIGIN, 1234, root)
    body = f"{ORIGIN}\n1234\n{base64.b64encode(root).decode()}\n"
    assert signing.note_body(ORIGIN, 1234, root) == body
    match = re.fullmatch(re.escape(body) + "\n\u2014 " + re.escape(ORIGIN) + r" (\S+)\n", note)
    assert match is not None
    assert note.encode("utf-8")[len(body) + 1 : len(body) + 5] == "\u2014 ".encode()


def test_a_checkpoint_verifies_from_its_text_and_the_public_key_alone() -> None:
    key = Ed25519PrivateKey.generate()
    note = signing.sign_checkpoint(key, ORIGIN, 7, bytes(range(32)))
    pem = signing.public_pem(key)
    # Only the note's text and the PEM from here on, read the way an outside tool would.
    public = serialization.load_pem_public_key(pem)
    assert isinstance(public, Ed25519PublicKey)
    text, sig_line = note.split("\n\n")
    assert sig_line.endswith("\n") and sig_line.count("\n") == 1
    name, blob_b64 = sig_line.removeprefix("\u2014 ").rstrip("\n").split(" ")
    blob = base64.b64decode(blob_b64, validate=True)
    origin, size, root_b64 = text.split("\n")
    assert (name, origin, size) == (ORIGIN, ORIGIN, "7")
    assert base64.b64decode(root_b64) == bytes(range(32))
    assert len(blob) == 68
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert blob[:4] == hashlib.sha256(origin.encode() + b"\n\x01" + raw).digest()[:4]
    public.verify(blob[4:], (text + "\n").encode("utf-8"))  # raises if it does not verify
    assert offline_verify.verify_note(note, [public]) == (ORIGIN, 7, bytes(range(32)))


@pytest.mark.parametrize("origin", ["", "has space", "a+b", "tab\there", "new\nline"])
def test_an_origin_that_cannot_name_a_key_is_refused(origin: str) -> None:
    with pytest.raises(ValueError):
        signing.sign_checkpoint(Ed25519PrivateKey.generate(), origin, 1, bytes(32))


def test_a_bad_size_or_root_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    for size, root in ((-1, bytes(32)), (True, bytes(32)), (1, bytes(31))):
        with pytest.raises(ValueError):
            signing.sign_checkpoint(key, ORIGIN, size, root)


# --- public keys --------------------------------------------------------------------------------


def test_jwks_round_trips_to_the_same_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    doc = signing.jwks(key.public_key(), ORIGIN)
    assert list(doc) == ["keys"] and len(doc["keys"]) == 1
    jwk = doc["keys"][0]
    assert {k: jwk[k] for k in ("kty", "crv", "alg", "use")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
    }
    assert "=" not in jwk["x"] and re.fullmatch(r"[A-Za-z0-9_-]{43}", jwk["x"])
    raw = base64.urlsafe_b64decode(jwk["x"] + "=")
    assert raw == raw_public(key)
    assert jwk["kid"] == signing.key_id(ORIGIN, raw).hex() and len(jwk["kid"]) == 8
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(doc))
    (loaded,) = offline_verify.load_keys(path)
    assert raw_public(loaded) == raw
    note = signing.sign_checkpoint(key, ORIGIN, 3, bytes(32))
    assert offline_verify.verify_note(note, [loaded])[1] == 3


def test_public_pem_is_subject_public_key_info() -> None:
    key = Ed25519PrivateKey.generate()
    pem = signing.public_pem(key)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert pem == signing.public_pem(key.public_key())
    loaded = serialization.load_pem_public_key(pem)
    assert isinstance(loaded, Ed25519PublicKey) and raw_public(loaded) == raw_public(key)


# --- manifests ----------------------------------------------------------------------------------


def manifest_args(**changes: object) -> dict[str, object]:
    key, root = Ed25519PrivateKey.generate(), hashlib.sha256(b"r").digest()
    args: dict[str, object] = {
        "export_id": "export-20260319-001",
        "exported_at": "2026-03-19T16:00:00Z",
        "requested_by": {"user": "josé@empresa.com", "role": "auditor", "channel": "cli"},
        "query": {
            "from": None,
            "to": "2026-03-19T16:00:00Z",
            "action": ("runbook.*",),
            "user": [],
            "namespace": ["production"],
            "format": "csv",
            "description": "action=runbook.* namespace=production",
        },
        "tree_size": 42,
        "root_hash": root,
        "checkpoint": signing.sign_checkpoint(key, ORIGIN, 42, root),
        "count": 2,
        "first_id": "audit-20260301-001",
        "last_id": "audit-20260301-002",
        "file_name": "/tmp/out/audit-export-20260319.csv",
        "file_bytes": 321,
        "file_sha256": hashlib.sha256(b"file").hexdigest(),
        "previous_manifest": None,
    }
    args.update(changes)
    return args


def test_canonical_json_is_the_record_checksum_rule() -> None:
    fields = {
        "id": "audit-20260301-001",
        "timestamp": "2026-03-01T00:05:00Z",
        "action": "runbook.create",
        "user": "josé@empresa.com",
        "role": "admin",
        "resource": 'runbook "disk" ünïcode',
        "resourceType": "Runbook",
        "namespace": "production",
        "sourceIP": "10.0.1.10",
    }
    data = signing.canonical_json(fields)
    assert compute_checksum(fields) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert "josé".encode() in data and b", " not in data and b": " not in data


def test_a_manifest_has_exactly_the_design_keys_in_canonical_form() -> None:
    data = signing.build_manifest(**manifest_args())  # type: ignore[arg-type]
    doc = json.loads(data)
    assert signing.canonical_json(doc) == data
    assert set(doc) == {
        "apiVersion",
        "kind",
        "exportId",
        "exportedAt",
        "requestedBy",
        "query",
        "snapshot",
        "checkpoint",
        "records",
        "file",
        "previousManifest",
    }
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "AuditExportManifest")
    assert set(doc["requestedBy"]) == {"user", "role", "channel"}
    assert set(doc["query"]) == {"from", "to", "action", "user", "namespace", "format"} | {
        "description"
    }
    assert doc["query"]["action"] == ["runbook.*"] and doc["query"]["from"] is None
    assert doc["snapshot"] == {
        "treeSize": 42,
        "rootHash": base64.b64encode(hashlib.sha256(b"r").digest()).decode(),
    }
    assert doc["records"] == {
        "count": 2,
        "firstId": "audit-20260301-001",
        "lastId": "audit-20260301-002",
    }
    assert doc["file"]["name"] == "audit-export-20260319.csv"  # the base name only
    assert doc["previousManifest"] is None
    assert "josé".encode() in data  # UTF-8, not \u-escaped


def test_a_manifest_chains_to_the_previous_one() -> None:
    first = signing.build_manifest(**manifest_args())  # type: ignore[arg-type]
    digest = signing.manifest_digest(first)
    second = signing.build_manifest(**manifest_args(previous_manifest=digest))  # type: ignore[arg-type]
    assert json.loads(second)["previousManifest"] == hashlib.sha256(first).hexdigest()


@pytest.mark.parametrize(
    "changes",
    [
        {"requested_by": {"user": "a", "role": "auditor", "channel": "email"}},
        {"requested_by": {"user": "a", "role": "auditor"}},
        {"query": {"from": None}},
        {"file_sha256": "ABC"},
        {"previous_manifest": "nothex"},
        {"tree_size": 41},  # the checkpoint is of tree 42
        {"count": 0},  # but first and last ids given
    ],
    ids=["channel", "requested-by-keys", "query-keys", "sha", "previous", "checkpoint", "count"],
)
def test_a_manifest_that_would_not_verify_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        signing.build_manifest(**manifest_args(**changes))  # type: ignore[arg-type]


def test_sign_bytes_is_a_raw_64_byte_ed25519_signature() -> None:
    key = Ed25519PrivateKey.generate()
    data = signing.build_manifest(**manifest_args())  # type: ignore[arg-type]
    signature = signing.sign_bytes(key, data)
    assert len(signature) == 64
    key.public_key().verify(signature, data)


# --- hashing while writing ----------------------------------------------------------------------


def test_hashing_sink_counts_and_hashes_what_it_passes_on() -> None:
    out = io.BytesIO()
    sink = signing.HashingSink(out)
    for chunk in (b"id,timestamp\r\n", bytearray(b"a,b\r\n"), memoryview(b"c,d\r\n")):
        sink.write(chunk)
    sink.flush()
    assert out.getvalue() == b"id,timestamp\r\na,b\r\nc,d\r\n"
    assert sink.size == len(out.getvalue())
    assert sink.hexdigest() == hashlib.sha256(out.getvalue()).hexdigest()


def test_hashing_sink_under_gzip_hashes_the_compressed_bytes() -> None:
    out = io.BytesIO()
    sink = signing.HashingSink(out)
    with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0) as gz:  # type: ignore[arg-type]
        gz.write(b"x" * 100_000)
    assert sink.size == len(out.getvalue()) and gzip.decompress(out.getvalue()) == b"x" * 100_000
    assert sink.hexdigest() == hashlib.sha256(out.getvalue()).hexdigest()


def test_hashing_sink_without_a_file_only_hashes() -> None:
    sink = signing.HashingSink()
    assert sink.write(b"abc") == 3 and sink.size == 3
    assert sink.hexdigest() == hashlib.sha256(b"abc").hexdigest()
