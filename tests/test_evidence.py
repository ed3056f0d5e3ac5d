"""Evidence on both engines: proofs checked by an independent RFC 9162 verifier written here,
checkpoints checked from the note and the public key alone, every tamper case named by
verify, a cut log refusing appends, and CLI manifests checked by OpenSSL and the verifier."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, delete, insert, select, text, update

from audit_core import evidence, store
from audit_core.integrity import verify
from audit_core.models import AUDIT as T
from audit_core.models import HEAD, NODES
from audit_core.record import compute_checksum

from .conftest import add_demo, seed_record

ROOT = Path(__file__).resolve().parent.parent
EDGE_SIZES = [1, 2, 3, 7, 8, 9, 255, 256, 257, 511, 512, 513]


# --- an independent RFC 9162 verifier (section 2.1.3.2 and 2.1.4.2), not the project's ---


def h_leaf(digest: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + digest).digest()


def h_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def rfc_verify_inclusion(
    leaf: bytes, index: int, size: int, path: list[bytes], root: bytes
) -> bool:
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = h_node(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = h_node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc_verify_consistency(
    first: int, second: int, path: list[bytes], first_root: bytes, second_root: bytes
) -> bool:
    if first == second:
        return not path and first_root == second_root
    if not path:
        return False
    if first & (first - 1) == 0:  # a power of two: the old root starts the path
        path = [first_root, *path]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = h_node(c, fr)
            sr = h_node(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = h_node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


def rfc_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return h_node(rfc_root(leaves[:k]), rfc_root(leaves[k:]))


def open_checkpoint(note: str, public: bytes) -> tuple[str, int, bytes]:
    """C2SP signed-note + tlog-checkpoint, from the text and the raw public key alone."""
    body, _, sigs = note.partition("\n\n")
    origin, size, root_b64 = body.split("\n")
    assert note.endswith("\n") and body.count("\n") == 2
    key_id = hashlib.sha256(origin.encode() + b"\n\x01" + public).digest()[:4]
    for line in sigs.rstrip("\n").split("\n"):
        dash, name, blob_b64 = line.split(" ")
        blob = base64.b64decode(blob_b64)
        if dash == "\u2014" and name == origin and blob[:4] == key_id:
            Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], (body + "\n").encode())
            return origin, int(size), base64.b64decode(root_b64)
    raise AssertionError("no signature by the portal's key")


# --- helpers ---------------------------------------------------------------------------


def public_of(engine: Engine) -> bytes:
    signer = evidence.signer_for(engine)
    assert signer is not None
    return signer.public


def digests(engine: Engine) -> list[bytes]:
    with engine.connect() as conn:
        rows = conn.execute(select(T.c.checksum).order_by(T.c.leaf)).scalars()
        return [bytes.fromhex(c.removeprefix("sha256:")) for c in rows]


def ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(T.c.id).order_by(T.c.leaf)).scalars())


def check(engine: Engine) -> Any:
    with engine.connect() as conn:
        return verify(conn)


def b64s(values: list[str]) -> list[bytes]:
    return [base64.b64decode(v) for v in values]


# --- proofs ----------------------------------------------------------------------------


def test_proofs_at_the_rfc_edge_sizes_verify_independently(engine: Engine) -> None:
    add_demo(engine, max(EDGE_SIZES), seed=31)
    leaves = [h_leaf(d) for d in digests(engine)]
    names, public = ids(engine), public_of(engine)
    with engine.begin() as conn:
        for size in EDGE_SIZES:
            for index in sorted({0, size // 2, size - 1}):
                answer = evidence.inclusion(conn, names[index], size)
                assert (answer["leafIndex"], answer["treeSize"]) == (index, size)
                _, signed_size, root = open_checkpoint(answer["checkpoint"], public)
                assert signed_size == size and root == rfc_root(leaves[:size])
                path = b64s(answer["inclusionPath"])
                assert rfc_verify_inclusion(leaves[index], index, size, path, root)
                assert not rfc_verify_inclusion(leaves[index], index ^ 1, size, path, root)
        for first in EDGE_SIZES:
            for second in (s for s in EDGE_SIZES if s >= first):
                answer = evidence.consistency(conn, first, second)
                path = b64s(answer["consistencyPath"])
                old, new = rfc_root(leaves[:first]), rfc_root(leaves[:second])
                assert rfc_verify_consistency(first, second, path, old, new), (first, second)
                if first < second:
                    assert not rfc_verify_consistency(first, second, path, new, new)


def test_the_signed_head_is_a_c2sp_checkpoint_of_the_current_tree(engine: Engine) -> None:
    add_demo(engine, 40, seed=32)
    with engine.begin() as conn:
        head = evidence.read_head(conn)
        kept = evidence.checkpoint(conn, "on-demand")
    assert head.note is not None
    for note in (head.note, kept):
        origin, size, root = open_checkpoint(note, public_of(engine))
        assert origin == "audit-export-portal" and size == 40
        assert root == rfc_root([h_leaf(d) for d in digests(engine)])
    forged = head.note.replace("\n40\n", "\n39\n")
    with pytest.raises(InvalidSignature):
        open_checkpoint(forged, public_of(engine))


def test_a_proof_for_an_unknown_record_or_a_size_too_large_is_refused(engine: Engine) -> None:
    add_demo(engine, 10, seed=33)
    with engine.begin() as conn:
        with pytest.raises(evidence.NotFoundError):
            evidence.inclusion(conn, "audit-19990101-001")
        with pytest.raises(evidence.BadRequestError):
            evidence.inclusion(conn, ids(engine)[9], 9)  # the record is leaf 9: size > 9
        with pytest.raises(evidence.BadRequestError):
            evidence.consistency(conn, 3, 11)


# --- tampering: each case named ------------------------------------------------------


def test_a_forged_row_with_a_key_at_or_below_zero_is_named(engine: Engine) -> None:
    add_demo(engine, 20, seed=34)
    forged = seed_record(1, id="audit-20000101-001")
    with engine.begin() as conn:
        conn.execute(
            insert(T).values(
                seq=0,
                id=forged["id"],
                ts=0,
                timestamp=forged["timestamp"],
                action=forged["action"],
                user=forged["user"],
                user_lc=forged["user"],
                role=forged["role"],
                resource=forged["resource"],
                resourceType=forged["resourceType"],
                namespace=forged["namespace"],
                sourceIP=forged["sourceIP"],
                checksum=forged["checksum"],
                chain="0" * 64,
            )
        )
    result = check(engine)
    assert not result.ok and result.bad_id == forged["id"]
    assert "no place in the Merkle tree" in (result.reason or "")


def test_a_forged_row_given_the_next_leaf_is_named(engine: Engine) -> None:
    add_demo(engine, 20, seed=35)
    with engine.connect() as conn:
        row = dict(conn.execute(select(T).order_by(T.c.seq).limit(1)).one()._mapping)
    row.update(seq=-5, id="audit-20000101-002", leaf=20)
    with engine.begin() as conn:
        conn.execute(insert(T).values(**row))
    result = check(engine)
    assert not result.ok and result.bad_id == "audit-20000101-002", result


@pytest.mark.parametrize(
    ("column", "value", "named"),
    [("ts", 0, "search column ts"), ("user_lc", "someone.else@empresa.com", "user_lc")],
)
def test_edited_search_columns_are_named(
    engine: Engine, column: str, value: object, named: str
) -> None:
    add_demo(engine, 20, seed=36)
    victim = ids(engine)[7]
    with engine.begin() as conn:
        conn.execute(update(T).where(T.c.id == victim).values({column: value}))
    result = check(engine)
    assert result.bad_id == victim and named in (result.reason or ""), result


def test_an_edited_checksum_is_named(engine: Engine) -> None:
    add_demo(engine, 20, seed=37)
    victim = ids(engine)[3]
    with engine.begin() as conn:
        conn.execute(update(T).where(T.c.id == victim).values(checksum="sha256:" + "0" * 64))
    result = check(engine)
    assert result.bad_id == victim and "checksum" in (result.reason or "")


def cut_tail(engine: Engine, keep: int) -> None:
    """Delete every record after `keep` and fix everything but the signatures."""
    with engine.begin() as conn:
        last = conn.execute(select(T.c.seq, T.c.chain).where(T.c.leaf == keep - 1)).one()
        conn.execute(delete(T).where(T.c.leaf >= keep))
        conn.execute(delete(NODES))
        store.rebuild_day_counts(conn)
    rebuild_tree(engine)
    with engine.begin() as conn:
        conn.execute(update(HEAD).values(last_seq=last.seq, last_hash=last.chain, tree_size=keep))
        from audit_core import tree

        conn.execute(update(HEAD).values(tree_root=tree.root(conn, keep)))


def rebuild_tree(engine: Engine) -> None:
    from audit_core import tree

    builder = tree.Builder()
    with engine.begin() as conn:
        conn.execute(delete(NODES))
        builder.add(
            tree.leaf_of(c) for c in conn.execute(select(T.c.checksum).order_by(T.c.leaf)).scalars()
        )
        nodes = builder.take()
        if nodes:
            conn.execute(insert(NODES), [{"level": a, "idx": b, "hash": h} for a, b, h in nodes])


def test_a_deleted_tail_with_the_head_fixed_is_named(engine: Engine) -> None:
    add_demo(engine, 300, seed=38)
    cut_tail(engine, 290)
    result = check(engine)
    assert not result.ok and result.place == "signed head", result
    assert "tail was cut" in (result.reason or "")


def test_a_cut_log_refuses_appends(engine: Engine) -> None:
    add_demo(engine, 300, seed=39)
    cut_tail(engine, 290)
    with pytest.raises(evidence.LogTamperedError), engine.begin() as conn:
        store.append(conn, generate_one())


def generate_one() -> list[Any]:
    from audit_core.record import normalize

    return [normalize(seed_record(7, id="audit-20300101-001"))]


def test_rewritten_history_is_named(engine: Engine) -> None:
    """Change an old record and redo every checksum, chain link and subtree: only the
    signatures cannot be redone, and verify says so."""
    add_demo(engine, 300, seed=40)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(T).order_by(T.c.leaf))]
    rows[5]["resource"] = "nothing-to-see-here"
    fields = ("id", "timestamp", "action", "user", "role", "resource", "resourceType")
    fields += ("namespace", "sourceIP")
    prev = "0" * 64
    from audit_core.record import chain_next

    with engine.begin() as conn:
        for row in rows:
            row["checksum"] = compute_checksum({f: row[f] for f in fields})
            prev = chain_next(prev, row["checksum"])
            conn.execute(
                update(T)
                .where(T.c.seq == row["seq"])
                .values(resource=row["resource"], checksum=row["checksum"], chain=prev)
            )
        conn.execute(update(HEAD).values(last_hash=prev))
    rebuild_tree(engine)
    with engine.begin() as conn:
        from audit_core import tree

        conn.execute(update(HEAD).values(tree_root=tree.root(conn, 300)))
    result = check(engine)
    assert not result.ok and result.place == "signed head", result
    assert "history rewritten" in (result.reason or "")


def test_recount_does_not_launder_a_cut_log(engine: Engine, env: dict[str, str]) -> None:
    add_demo(engine, 300, seed=41)
    cut_tail(engine, 280)
    cmd = [sys.executable, "-m", "audit_core", "verify", "--recount"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED at signed head" in done.stdout and "day counts rebuilt" in done.stdout


def test_the_migration_builds_the_tree_for_a_store_made_before_it(engine: Engine) -> None:
    add_demo(engine, 700, seed=42)
    with engine.connect() as conn:
        want = evidence.read_head(conn)
    from .test_day_counts import downgrade

    downgrade(engine, "0003")
    with engine.begin() as conn:  # keys with gaps, as PostgreSQL's sequences leave them
        conn.execute(text("UPDATE audit_records SET seq = -seq"))
        conn.execute(text("UPDATE audit_records SET seq = -seq * 3"))
    from audit_core.db import migrate

    migrate(engine)
    with engine.connect() as conn:
        head = evidence.read_head(conn)
        assert (head.size, head.root) == (want.size, want.root)
    assert check(engine).ok


# --- the CLI's manifests ---------------------------------------------------------------


def run(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, check=False, timeout=120
    )


def test_a_cli_export_is_checked_by_openssl_and_the_verifier_alone(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    add_demo(engine, 120, seed=43)
    out = tmp_path / "q.csv"
    done = run(env, "-m", "audit_core", "export", "--format", "csv", "-o", str(out))
    assert done.returncode == 0, done.stderr
    pem = tmp_path / "portal.pub.pem"
    pem.write_bytes(run(env, "-m", "audit_core", "keys", "--pem").stdout)
    manifest = json.loads((tmp_path / "q.csv.manifest.json").read_bytes())
    assert manifest["records"]["count"] == 120 and manifest["requestedBy"]["channel"] == "cli"
    assert manifest["file"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    openssl = [
        "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin",
        "-in", str(tmp_path / "q.csv.manifest.json"),
        "-sigfile", str(tmp_path / "q.csv.manifest.sig"),
    ]  # fmt: skip
    assert subprocess.run(openssl, capture_output=True, check=False).returncode == 0
    alone = tmp_path / "auditor"
    alone.mkdir()
    for name in ("q.csv", "q.csv.manifest.json", "q.csv.manifest.sig", "portal.pub.pem"):
        shutil.copy(tmp_path / name, alone / name)
    shutil.copy(ROOT / "audit_core" / "offline_verify.py", alone / "offline_verify.py")
    good = run(env, "-I", "offline_verify.py", "q.csv", "--key", "portal.pub.pem", cwd=alone)
    assert good.returncode == 0, good.stdout + good.stderr
    data = bytearray((alone / "q.csv").read_bytes())
    data[200] ^= 1
    (alone / "q.csv").write_bytes(bytes(data))
    bad = run(env, "-I", "offline_verify.py", "q.csv", "--key", "portal.pub.pem", cwd=alone)
    assert bad.returncode == 1 and b"FAIL file sha256" in bad.stdout, bad.stdout
    assert subprocess.run(openssl, capture_output=True, check=False).returncode == 0


def test_manifests_chain_in_signing_order(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    add_demo(engine, 30, seed=44)
    made = []
    for n in range(3):
        out = tmp_path / f"e{n}.jsonl"
        assert (
            run(env, "-m", "audit_core", "export", "--format", "jsonl", "-o", str(out)).returncode
            == 0
        )
        made.append((tmp_path / f"e{n}.jsonl.manifest.json").read_bytes())
    previous = [json.loads(m)["previousManifest"] for m in made]
    assert previous[0] is None
    assert previous[1:] == [hashlib.sha256(m).hexdigest() for m in made[:2]]
