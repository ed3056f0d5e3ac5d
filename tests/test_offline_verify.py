"""The offline verifier: good bundles pass alone; each kind of tampering fails at its check."""

from __future__ import annotations

import ast
import base64
import csv
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_core import offline_verify as ov
from audit_core import signing
from audit_core.record import FIELDS, compute_checksum

ORIGIN = "audit-export-portal"
VERIFIER = Path(ov.__file__)
LOG_SIZE, SNAPSHOT, KEPT = 20, 13, 7  # the log now, at the export, and the auditor's old head
EXPORTED = slice(3, 10)  # the export's records are leaves 3..9 of the log
BASE_CHECKS = [
    "manifest signature",
    "manifest format",
    "file name",
    "file bytes",
    "file sha256",
    "records parse",
    "record count",
    "record ids",
    "record checksums",
    "checkpoint signature",
    "checkpoint snapshot",
]
FULL_CHECKS = [*BASE_CHECKS, "inclusion proof", "inclusion proof", "inclusion proof"] + [
    "kept checkpoint",
    "consistency",
]

# --- an independent RFC 9162 tree: the recursive definitions, nothing clever ------------------


def _h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over leaf inputs."""
    if not leaves:
        return _h()
    if len(leaves) == 1:
        return _h(b"\x00", leaves[0])
    k = _split(len(leaves))
    return _h(b"\x01", mth(leaves[:k]), mth(leaves[k:]))


def inclusion_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n])."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return inclusion_path(m, leaves[:k]) + [mth(leaves[k:])]
    return inclusion_path(m - k, leaves[k:]) + [mth(leaves[:k])]


def consistency_path(m: int, leaves: list[bytes], whole: bool = True) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b)."""
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = _split(n)
    if m <= k:
        return consistency_path(m, leaves[:k], whole) + [mth(leaves[k:])]
    return consistency_path(m - k, leaves[k:], False) + [mth(leaves[:k])]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- records and the files the portal writes --------------------------------------------------

TRICKY = [
    {"user": '=HYPERLINK("http://evil","x")'},
    {"resource": "'already quoted"},
    {"resource": 'line one\nline two, with "quotes"'},
    {"role": "+admin", "namespace": "@team"},
    {"action": "\tcmd", "sourceIP": "-1"},
    {"user": "josé.ñúñez@empresa.com", "resource": "日本語のリソース"},
    {"resource": "''two quotes"},
]


def make_log(n: int) -> list[dict[str, str]]:
    log = []
    for i in range(n):
        rec = {
            "id": f"audit-20260301-{i + 1:03d}",
            "timestamp": f"2026-03-01T00:{i:02d}:00Z",
            "action": "runbook.create",
            "user": "admin@empresa.com",
            "role": "admin",
            "resource": f"runbook-{i}",
            "resourceType": "Runbook",
            "namespace": "production",
            "sourceIP": "10.0.1.10",
        }
        rec.update(TRICKY[i % len(TRICKY)])  # every tricky value lands in the export
        rec["checksum"] = compute_checksum(rec)
        log.append(rec)
    return log


def neutralise(cell: str) -> str:
    return "'" + cell if cell.startswith(("=", "+", "-", "@", "\t", "\r", "\n", "'")) else cell


def write_csv(records: list[dict[str, str]]) -> bytes:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(FIELDS)
    keep = ("id", "timestamp", "checksum")
    for r in records:
        out.writerow([r[f] if f in keep else neutralise(r[f]) for f in FIELDS])
    return buf.getvalue().encode("utf-8")


def write_json(records: list[dict[str, str]]) -> bytes:
    metadata = {
        "exportedAt": "2026-03-19T16:00:00Z",
        "from": None,
        "to": "2026-03-19T16:00:00Z",
        "totalRecords": len(records),
        "format": "json",
    }
    envelope = {"apiVersion": "v1", "kind": "AuditExport", "metadata": metadata}
    envelope["records"] = [{f: r[f] for f in FIELDS} for r in records]
    return json.dumps(envelope, ensure_ascii=False, indent=1).encode("utf-8")


def write_jsonl(records: list[dict[str, str]]) -> bytes:
    lines = [json.dumps({f: r[f] for f in FIELDS}, ensure_ascii=False) for r in records]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def portal_writer(fmt: str) -> Callable[[list[dict[str, str]]], bytes]:
    """The portal's own streaming writers, so the verifier is checked against real output."""
    from audit_core import formats

    def write(records: list[dict[str, str]]) -> bytes:
        rows = [tuple(r[f] for f in FIELDS) for r in records]
        if fmt == "csv":
            chunks = formats.csv_chunks([rows])
        elif fmt == "json":
            meta = formats.export_metadata(
                exported_at="2026-03-19T16:00:00Z",
                start=None,
                end="2026-03-19T16:00:00Z",
                total=len(rows),
                description="all",
            )
            chunks = formats.json_chunks([rows], meta)
        else:
            chunks = formats.jsonl_chunks([rows])
        return b"".join(chunks)

    return write


WRITERS = {"csv": write_csv, "json": write_json, "jsonl": write_jsonl}

# --- a whole bundle in a directory of its own -------------------------------------------------


@dataclass
class Bundle:
    dir: Path
    file: Path
    key: Ed25519PrivateKey
    log: list[dict[str, str]]
    leaves: list[bytes]

    @property
    def manifest(self) -> Path:
        return self.dir / (self.file.name + ".manifest.json")

    @property
    def sig(self) -> Path:
        return self.dir / (self.file.name + ".manifest.sig")

    def head(self, size: int) -> str:
        return signing.sign_checkpoint(self.key, ORIGIN, size, mth(self.leaves[:size]))

    def resign(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """Change the manifest and sign it again: the portal's key vouches for the change."""
        doc = json.loads(self.manifest.read_bytes())
        edit(doc)
        data = signing.canonical_json(doc)
        self.manifest.write_bytes(data)
        self.sig.write_bytes(signing.sign_bytes(self.key, data))

    def rewrite(self, data: bytes) -> None:
        """Replace the file and re-sign a manifest that matches it (a portal that lies)."""
        self.file.write_bytes(data)

        def match(doc: dict[str, Any]) -> None:
            doc["file"]["bytes"] = len(data)
            doc["file"]["sha256"] = hashlib.sha256(data).hexdigest()

        self.resign(match)

    def verify(self, **extra: Any) -> list[ov.Check]:
        return ov.verify_bundle(self.file, None, None, self.dir / "portal.pub.pem", **extra)

    def full(self) -> dict[str, Path]:
        """The optional inputs: proofs, the kept checkpoint and its consistency proof."""
        return {
            "proofs_path": self.dir / "proofs.json",
            "checkpoint_path": self.dir / "kept.checkpoint",
            "consistency_path": self.dir / "consistency.json",
        }


def inclusion_answer(b: Bundle, index: int, size: int) -> dict[str, Any]:
    return {
        "id": b.log[index]["id"],
        "leafIndex": index,
        "treeSize": size,
        "inclusionPath": [b64(h) for h in inclusion_path(index, b.leaves[:size])],
        "checkpoint": b.head(size),
    }


def consistency_answer(b: Bundle, m: int, n: int) -> dict[str, Any]:
    path = consistency_path(m, b.leaves[:n]) if 0 < m < n else []
    return {"from": m, "to": n, "consistencyPath": [b64(h) for h in path], "checkpoint": b.head(n)}


def build(
    root: Path,
    fmt: str = "csv",
    *,
    gz: bool = False,
    writer: Callable[[list[dict[str, str]]], bytes] | None = None,
) -> Bundle:
    """Write a signed export, its manifest, keys, proofs and an old checkpoint into root."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(VERIFIER, root / "offline_verify.py")
    key, log = Ed25519PrivateKey.generate(), make_log(LOG_SIZE)
    leaves = [bytes.fromhex(r["checksum"].removeprefix("sha256:")) for r in log]
    data = (writer or WRITERS[fmt])(log[EXPORTED])
    name = f"audit-export-20260319.{fmt}" + (".gz" if gz else "")
    if gz:
        data = gzip.compress(data, mtime=0)
    b = Bundle(root, root / name, key, log, leaves)
    b.file.write_bytes(data)
    manifest = signing.build_manifest(
        export_id="export-20260319-001",
        exported_at="2026-03-19T16:00:00Z",
        requested_by={"user": "auditor@empresa.com", "role": "auditor", "channel": "job"},
        query={
            "from": None,
            "to": "2026-03-19T16:00:00Z",
            "action": [],
            "user": [],
            "namespace": [],
            "format": fmt,
            "description": f"format={fmt}",
        },
        tree_size=SNAPSHOT,
        root_hash=mth(leaves[:SNAPSHOT]),
        checkpoint=b.head(SNAPSHOT),
        count=len(log[EXPORTED]),
        first_id=log[EXPORTED][0]["id"],
        last_id=log[EXPORTED][-1]["id"],
        file_name=name,
        file_bytes=len(data),
        file_sha256=hashlib.sha256(data).hexdigest(),
        previous_manifest=None,
    )
    b.manifest.write_bytes(manifest)
    b.sig.write_bytes(signing.sign_bytes(key, manifest))
    (root / "portal.pub.pem").write_bytes(signing.public_pem(key))
    (root / "keys.json").write_text(json.dumps(signing.jwks(key.public_key(), ORIGIN)))
    proofs = [inclusion_answer(b, 3, SNAPSHOT), inclusion_answer(b, 9, SNAPSHOT)]
    proofs.append(inclusion_answer(b, 5, LOG_SIZE))  # a later head proves inclusion too
    (root / "proofs.json").write_text(json.dumps(proofs))
    (root / "kept.checkpoint").write_text(b.head(KEPT))
    (root / "consistency.json").write_text(json.dumps(consistency_answer(b, KEPT, SNAPSHOT)))
    return b


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return build(tmp_path / "bundle")


def run(b: Bundle, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the copied verifier alone: isolated mode, from the bundle's own directory."""
    return subprocess.run(
        [sys.executable, "-I", "offline_verify.py", *args],
        cwd=b.dir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def names(checks: list[ov.Check]) -> list[str]:
    return [c.name for c in checks]


def failed(checks: list[ov.Check]) -> str:
    """The name of the failing check, which must be the last one returned."""
    assert checks and all(c.ok for c in checks[:-1]) and not checks[-1].ok, checks
    return checks[-1].name


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


FULL_ARGS = [
    "--proofs",
    "proofs.json",
    "--checkpoint",
    "kept.checkpoint",
    "--consistency-proof",
    "consistency.json",
]

# --- the command line, run alone ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "gz"),
    [("csv", False), ("json", False), ("jsonl", False), ("csv", True), ("jsonl", True)],
    ids=["csv", "json", "jsonl", "csv.gz", "jsonl.gz"],
)
def test_a_good_bundle_passes_every_check_alone(tmp_path: Path, fmt: str, gz: bool) -> None:
    b = build(tmp_path / "bundle", fmt, gz=gz)
    result = run(b, b.file.name, "--key", "portal.pub.pem", *FULL_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert all(line.startswith("ok ") for line in lines)
    assert [line[3:].split(":")[0] for line in lines] == FULL_CHECKS


def test_the_minimal_command_checks_the_base_set(bundle: Bundle) -> None:
    result = run(bundle, bundle.file.name, "--key", "portal.pub.pem")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        f"ok {n}" for n in BASE_CHECKS
    ]


def test_the_jwks_works_as_the_key(bundle: Bundle) -> None:
    result = run(bundle, bundle.file.name, "--key", "keys.json", *FULL_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_explicit_manifest_and_signature_paths(bundle: Bundle) -> None:
    bundle.manifest.rename(bundle.dir / "m.json")
    bundle.sig.rename(bundle.dir / "m.sig")
    args = ["--manifest", "m.json", "--sig", "m.sig", "--key", "portal.pub.pem"]
    assert run(bundle, bundle.file.name, *args).returncode == 0


def test_the_verifier_imports_only_the_standard_library_and_cryptography() -> None:
    tree = ast.parse(VERIFIER.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            roots.add((node.module or "").split(".")[0])
    assert roots - set(sys.stdlib_module_names) == {"cryptography"}


@pytest.mark.parametrize(
    ("target", "expected"),
    [("file", "file sha256"), ("manifest", "manifest signature"), ("sig", "manifest signature")],
)
def test_a_flipped_byte_fails_naming_the_check(bundle: Bundle, target: str, expected: str) -> None:
    path = {"file": bundle.file, "manifest": bundle.manifest, "sig": bundle.sig}[target]
    flip(path, path.stat().st_size // 2)
    result = run(bundle, bundle.file.name, "--key", "portal.pub.pem")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"FAIL {expected}: ")
    assert all(line.startswith("ok ") for line in result.stdout.splitlines()[:-1])


def test_a_wrong_key_fails_the_signature(bundle: Bundle) -> None:
    other = bundle.dir / "other.pub.pem"
    other.write_bytes(signing.public_pem(Ed25519PrivateKey.generate()))
    result = run(bundle, bundle.file.name, "--key", other.name)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [result.stdout.splitlines()[0]]
    assert result.stdout.startswith("FAIL manifest signature: ")


def assert_unusable(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and words in result.stderr


def test_a_missing_file_is_unusable_input(bundle: Bundle) -> None:
    assert_unusable(run(bundle, "nope.csv", "--key", "portal.pub.pem"), "nope.csv")
    bundle.sig.unlink()
    assert_unusable(run(bundle, bundle.file.name, "--key", "portal.pub.pem"), "signature")


@pytest.mark.parametrize(
    "content",
    [b"garbage\n", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", b'{"keys":[]}'],
    ids=["garbage", "bad-pem", "empty-jwks"],
)
def test_a_key_file_that_is_no_key_is_unusable_input(bundle: Bundle, content: bytes) -> None:
    (bundle.dir / "bad.key").write_bytes(content)
    assert_unusable(run(bundle, bundle.file.name, "--key", "bad.key"), "bad.key")


def test_a_private_key_given_as_the_key_is_unusable_input(bundle: Bundle) -> None:
    pem = signing._pkcs8(bundle.key)
    (bundle.dir / "signing.key").write_bytes(pem)
    assert_unusable(run(bundle, bundle.file.name, "--key", "signing.key"), "PUBLIC KEY")


def test_malformed_proofs_are_unusable_input(bundle: Bundle) -> None:
    (bundle.dir / "proofs.json").write_text("[{not json")
    args = ["--key", "portal.pub.pem", "--proofs", "proofs.json"]
    assert_unusable(run(bundle, bundle.file.name, *args), "not valid JSON")
    (bundle.dir / "proofs.json").write_text('[{"id": "x"}]')
    assert_unusable(run(bundle, bundle.file.name, *args), "leafIndex")


def test_usage_errors_are_one_line_and_status_2(bundle: Bundle) -> None:
    assert_unusable(run(bundle, bundle.file.name), "--key")
    args = ["--key", "portal.pub.pem", "--checkpoint", "kept.checkpoint"]
    assert_unusable(run(bundle, bundle.file.name, *args), "--consistency-proof")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_manifest_signature_verifies_with_plain_openssl(bundle: Bundle) -> None:
    def openssl() -> subprocess.CompletedProcess[str]:
        command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "portal.pub.pem"]
        command += ["-rawin", "-in", bundle.manifest.name, "-sigfile", bundle.sig.name]
        return subprocess.run(command, cwd=bundle.dir, capture_output=True, text=True, timeout=60)

    good = openssl()
    assert good.returncode == 0 and "Signature Verified Successfully" in good.stdout
    flip(bundle.manifest, 10)
    assert openssl().returncode != 0


# --- each check in-process, reached by a portal that signs what it should not ---------------


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_the_portals_own_writers_verify(tmp_path: Path, fmt: str) -> None:
    b = build(tmp_path / "b", fmt, writer=portal_writer(fmt))
    checks = b.verify(**b.full())
    assert all(c.ok for c in checks) and names(checks) == FULL_CHECKS, checks


def test_csv_cells_lose_exactly_one_leading_quote(bundle: Bundle) -> None:
    data = bundle.file.read_bytes()
    assert b"'=HYPERLINK" in data and b"'''two quotes" in data and b"'\tcmd" in data
    assert all(c.ok for c in bundle.verify())


def test_a_record_with_a_wrong_checksum_fails_record_checksums(bundle: Bundle) -> None:
    text = bundle.file.read_text(encoding="utf-8")
    bundle.rewrite(text.replace("runbook-4", "runbook-X").encode("utf-8"))
    checks = bundle.verify()
    assert failed(checks) == "record checksums"
    assert "audit-20260301-005" in checks[-1].reason and "1 wrong" in checks[-1].reason


def test_a_dropped_record_fails_record_count(bundle: Bundle) -> None:
    records = bundle.log[EXPORTED]
    bundle.rewrite(write_csv(records[:2] + records[3:]))
    assert failed(bundle.verify()) == "record count"


def test_the_envelopes_total_must_match_its_records(tmp_path: Path) -> None:
    b = build(tmp_path / "b", "json")
    doc = json.loads(b.file.read_bytes())
    doc["metadata"]["totalRecords"] += 1
    b.rewrite(json.dumps(doc).encode())
    assert failed(b.verify()) == "record count"


def test_a_wrong_last_id_fails_record_ids(bundle: Bundle) -> None:
    bundle.resign(lambda d: d["records"].update(lastId="audit-20260301-099"))
    assert failed(bundle.verify()) == "record ids"


def test_a_renamed_file_fails_file_name(bundle: Bundle) -> None:
    renamed = bundle.dir / "renamed.csv"
    bundle.file.rename(renamed)
    checks = ov.verify_bundle(renamed, bundle.manifest, bundle.sig, bundle.dir / "portal.pub.pem")
    assert failed(checks) == "file name"


def test_a_truncated_file_fails_file_bytes(bundle: Bundle) -> None:
    bundle.file.write_bytes(bundle.file.read_bytes()[:-5])
    assert failed(bundle.verify()) == "file bytes"


@pytest.mark.parametrize(
    "data",
    [
        b"id,timestamp,action\r\na,b,c\r\n",
        write_csv([]).replace(b"sourceIP", b"sourceIp"),
        write_csv(make_log(2)) + b"only,three,cells\r\n",
        b"\xff\xfe not utf-8",
    ],
    ids=["short-header", "header-case", "short-row", "not-utf8"],
)
def test_an_unreadable_csv_fails_records_parse(bundle: Bundle, data: bytes) -> None:
    bundle.rewrite(data)
    assert failed(bundle.verify()) == "records parse"


@pytest.mark.parametrize(
    "line",
    [b"{not json}\n", b'{"id": "x"}\n', b'{"id":"a","id":"b"}\n'],
    ids=["not-json", "missing-fields", "duplicate-key"],
)
def test_an_unreadable_jsonl_fails_records_parse(tmp_path: Path, line: bytes) -> None:
    b = build(tmp_path / "b", "jsonl")
    b.rewrite(b.file.read_bytes() + line)
    assert failed(b.verify()) == "records parse"


def test_a_damaged_gzip_fails_records_parse(tmp_path: Path) -> None:
    b = build(tmp_path / "b", "csv", gz=True)
    b.rewrite(b.file.read_bytes()[:-12])
    assert failed(b.verify()) == "records parse"


def test_a_signed_non_manifest_fails_manifest_format(bundle: Bundle) -> None:
    bundle.resign(lambda d: d.update(kind="Something"))
    assert failed(bundle.verify()) == "manifest format"
    bundle.manifest.write_bytes(b"not json")
    bundle.sig.write_bytes(signing.sign_bytes(bundle.key, b"not json"))
    assert failed(bundle.verify()) == "manifest format"


def test_a_checkpoint_by_another_key_fails_checkpoint_signature(bundle: Bundle) -> None:
    root = mth(bundle.leaves[:SNAPSHOT])
    forged = signing.sign_checkpoint(Ed25519PrivateKey.generate(), ORIGIN, SNAPSHOT, root)
    bundle.resign(lambda d: d.update(checkpoint=forged))
    assert failed(bundle.verify()) == "checkpoint signature"


def test_a_checkpoint_of_another_head_fails_checkpoint_snapshot(bundle: Bundle) -> None:
    bundle.resign(lambda d: d.update(checkpoint=bundle.head(SNAPSHOT + 1)))
    assert failed(bundle.verify()) == "checkpoint snapshot"


def test_a_record_not_in_the_file_fails_its_inclusion_proof(bundle: Bundle) -> None:
    proofs = [inclusion_answer(bundle, 0, SNAPSHOT)]  # leaf 0 is in the log, not the export
    (bundle.dir / "proofs.json").write_text(json.dumps(proofs))
    checks = bundle.verify(proofs_path=bundle.dir / "proofs.json")
    assert failed(checks) == "inclusion proof" and "not in the file" in checks[-1].reason


@pytest.mark.parametrize("damage", ["path", "index", "size", "forged-note", "other-origin"])
def test_a_bad_inclusion_proof_fails(bundle: Bundle, damage: str) -> None:
    answer = inclusion_answer(bundle, 4, SNAPSHOT)
    if damage == "path":
        answer["inclusionPath"][1] = b64(hashlib.sha256(b"x").digest())
    elif damage == "index":
        answer["leafIndex"] = 5
    elif damage == "size":
        answer["treeSize"] = SNAPSHOT + 1
    elif damage == "forged-note":
        stranger = Ed25519PrivateKey.generate()
        answer["checkpoint"] = signing.sign_checkpoint(
            stranger, ORIGIN, SNAPSHOT, mth(bundle.leaves[:SNAPSHOT])
        )
    else:
        root = mth(bundle.leaves[:SNAPSHOT])
        answer["checkpoint"] = signing.sign_checkpoint(bundle.key, "other-log", SNAPSHOT, root)
    (bundle.dir / "proofs.json").write_text(json.dumps([answer]))
    assert failed(bundle.verify(proofs_path=bundle.dir / "proofs.json")) == "inclusion proof"


def test_a_forked_history_fails_consistency(bundle: Bundle) -> None:
    # The portal signed a different tree of size 7 before: the log was rewritten since.
    forked = list(bundle.leaves)
    forked[2] = hashlib.sha256(b"a record that was later removed").digest()
    kept = signing.sign_checkpoint(bundle.key, ORIGIN, KEPT, mth(forked[:KEPT]))
    (bundle.dir / "kept.checkpoint").write_text(kept)
    checks = bundle.verify(**bundle.full())
    assert failed(checks) == "consistency" and "not a prefix" in checks[-1].reason


def test_a_tampered_consistency_path_fails(bundle: Bundle) -> None:
    answer = consistency_answer(bundle, KEPT, SNAPSHOT)
    answer["consistencyPath"][0] = b64(bytes(32))
    (bundle.dir / "consistency.json").write_text(json.dumps(answer))
    assert failed(bundle.verify(**bundle.full())) == "consistency"


def test_a_consistency_proof_between_other_sizes_fails(bundle: Bundle) -> None:
    (bundle.dir / "consistency.json").write_text(json.dumps(consistency_answer(bundle, 6, 13)))
    assert failed(bundle.verify(**bundle.full())) == "consistency"


def test_a_kept_checkpoint_by_a_stranger_fails(bundle: Bundle) -> None:
    stranger = Ed25519PrivateKey.generate()
    kept = signing.sign_checkpoint(stranger, ORIGIN, KEPT, mth(bundle.leaves[:KEPT]))
    (bundle.dir / "kept.checkpoint").write_text(kept)
    assert failed(bundle.verify(**bundle.full())) == "kept checkpoint"


@pytest.mark.parametrize("kept", [0, 1, 8, SNAPSHOT, LOG_SIZE])
def test_a_kept_checkpoint_older_equal_or_newer_is_consistent(bundle: Bundle, kept: int) -> None:
    (bundle.dir / "kept.checkpoint").write_text(bundle.head(kept).replace("\n", "\r\n"))
    pair = (kept, SNAPSHOT) if kept <= SNAPSHOT else (SNAPSHOT, kept)
    (bundle.dir / "consistency.json").write_text(json.dumps(consistency_answer(bundle, *pair)))
    checks = bundle.verify(**bundle.full())
    assert all(c.ok for c in checks) and names(checks) == FULL_CHECKS, checks


def test_verify_bundle_stops_at_the_first_failure(bundle: Bundle) -> None:
    flip(bundle.sig, 0)
    assert names(bundle.verify(**bundle.full())) == ["manifest signature"]


def test_check_lines_are_one_line_each() -> None:
    assert ov.Check("x", False, "two\nlines").line() == "FAIL x: two lines"
    assert ov.Check("x", True, "fine").line() == "ok x: fine"


# --- RFC 9162 algorithms against the independent tree ----------------------------------------


def test_the_test_tree_matches_the_certificate_transparency_vector() -> None:
    leaves = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657"]
    leaves.append("606162636465666768696a6b6c6d6e6f")
    root = mth([bytes.fromhex(x) for x in leaves])
    assert root.hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def leaves_of(n: int) -> list[bytes]:
    return [hashlib.sha256(str(i).encode()).digest() for i in range(n)]


@pytest.mark.parametrize("n", range(1, 34))
def test_every_inclusion_proof_verifies_and_no_other(n: int) -> None:
    leaves = leaves_of(n)
    root = mth(leaves)
    for m in range(n):
        leaf, path = _h(b"\x00", leaves[m]), inclusion_path(m, leaves)
        assert ov.verify_inclusion(leaf, m, n, path, root)
        assert not ov.verify_inclusion(leaf, m, n, [*path, root], root)
        assert not ov.verify_inclusion(leaf, m, n, path, _h(root))
        if n > 1:
            assert not ov.verify_inclusion(leaf, (m + 1) % n, n, path, root)
            assert not ov.verify_inclusion(leaf, m, n, path[:-1], root)


@pytest.mark.parametrize("n", range(1, 34))
def test_every_consistency_proof_verifies_and_no_other(n: int) -> None:
    leaves = leaves_of(n)
    second = mth(leaves)
    for m in range(1, n + 1):
        first, path = mth(leaves[:m]), consistency_path(m, leaves)
        assert ov.verify_consistency(m, n, first, second, path)
        assert not ov.verify_consistency(m, n, _h(first), second, path)
        assert not ov.verify_consistency(m, n, first, _h(second), path)
        if path:
            assert not ov.verify_consistency(m, n, first, second, path[:-1])
            assert not ov.verify_consistency(m, n, first, second, [bytes(32), *path[1:]])


def test_consistency_edge_cases() -> None:
    empty = hashlib.sha256(b"").digest()
    root = mth(leaves_of(5))
    assert ov.verify_consistency(0, 5, empty, root, [])
    assert not ov.verify_consistency(0, 5, root, root, [])
    assert ov.verify_consistency(5, 5, root, root, [])
    assert not ov.verify_consistency(5, 5, root, root, [root])
    assert not ov.verify_consistency(5, 4, root, root, [root])
    assert not ov.verify_inclusion(root, 0, 0, [], root)


# --- signed notes -------------------------------------------------------------------------------

GO_VERIFIER_KEY = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
GO_NOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZ"
    "SNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_open_note_reads_the_go_reference_note() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(GO_VERIFIER_KEY)
    name, text = ov.open_note(GO_NOTE, [key])
    assert name == "PeterNeumann" and text.startswith("If you think") and text.endswith(".\n")
    assert ov.key_id("PeterNeumann", GO_VERIFIER_KEY).hex() == "c74f20a3"


def test_a_witness_cosignature_is_ignored(bundle: Bundle) -> None:
    witness = Ed25519PrivateKey.generate()
    note = bundle.head(SNAPSHOT)
    cosigned = signing.sign_note(witness, "witness.example", note.split("\n\n")[0] + "\n")
    note += cosigned.split("\n\n")[1]
    keys = ov.load_keys(bundle.dir / "portal.pub.pem")
    assert ov.verify_note(note, keys)[1] == SNAPSHOT


@pytest.mark.parametrize(
    "damage",
    [
        lambda n: n.replace("\u2014", "-"),  # an ASCII hyphen is not the em dash
        lambda n: n.replace("\n13\n", "\n14\n"),  # the size changed after signing
        lambda n: n.rstrip("\n"),  # no final newline
        lambda n: n.replace("\n\n", "\n"),  # no blank line
        lambda n: n.replace(ORIGIN + " ", "someone-else ", 1),  # signed under another name
        lambda n: n.replace("\n", "\r\n"),  # a control character
        lambda n: n[: n.rindex(" ") + 1] + "!!!\n",  # not base64
    ],
    ids=["hyphen", "size", "newline", "blank", "name", "cr", "base64"],
)
def test_a_damaged_checkpoint_note_is_refused(bundle: Bundle, damage: Callable[[str], str]) -> None:
    keys = ov.load_keys(bundle.dir / "portal.pub.pem")
    with pytest.raises(ov.NoteError):
        ov.verify_note(damage(bundle.head(SNAPSHOT)), keys)
