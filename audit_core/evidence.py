"""The log as evidence: its signing key, the signed tree head, checkpoints, proofs, manifests.

DESIGN.md "Evidence" is the contract. Every append re-signs the tree head in its own
transaction (`advance_head`), after checking that the tree it extends still has the root
the previous signed head names; checkpoints are kept signed notes (periodic, for every
export at its snapshot, on demand); proofs are RFC 9162 paths; manifests are canonical
JSON with a detached raw Ed25519 signature, chained by `previousManifest`.
"""

from __future__ import annotations

import base64
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update

from . import signing, tree
from .config import Settings
from .errors import AuditError, BadRequestError, NotFoundError
from .models import AUDIT, CHECKPOINTS, HEAD, MANIFESTS

CHANNELS = signing.CHANNELS


@dataclass(frozen=True)
class Signer:
    """The log's Ed25519 key and its origin line (DESIGN.md "Evidence")."""

    key: Ed25519PrivateKey
    origin: str

    @property
    def public(self) -> bytes:
        return signing.raw_public(self.key)

    @property
    def key_id(self) -> bytes:
        return signing.key_id(self.origin, self.public)

    def checkpoint(self, size: int, root: bytes) -> str:
        return signing.sign_checkpoint(self.key, self.origin, size, root)

    def jwks(self) -> dict[str, Any]:
        return signing.jwks(self.key, self.origin)

    def public_pem(self) -> bytes:
        return signing.public_pem(self.key)


class LogTamperedError(AuditError):
    """The stored tree no longer matches its own signed head: nothing more is appended."""

    reason = "LogIntegrity"


class NoSignerError(AuditError):
    """Something needed the signing key on an engine that has none attached."""


def load_signer(settings: Settings) -> Signer:
    """The signing key: AUDIT_SIGNING_KEY_FILE (must be readable), else made beside the secret."""
    if settings.signing_key_file is not None:
        key = signing.load_key(settings.signing_key_file)
    else:
        key = signing.load_or_create_key(settings.key_path)
    return Signer(key, settings.log_origin)


# The signer of each engine, so every append (whoever calls store.append) signs the new head.
_signers: weakref.WeakKeyDictionary[Engine, Signer] = weakref.WeakKeyDictionary()


def attach(engine: Engine, signer: Signer) -> None:
    """Make `signer` sign the tree heads of appends through `engine`."""
    _signers[engine] = signer


def signer_for(conn: Connection | Engine) -> Signer | None:
    """The signer attached to the connection's engine, if any."""
    return _signers.get(conn if isinstance(conn, Engine) else conn.engine)


def require_signer(conn: Connection | Engine) -> Signer:
    signer = signer_for(conn)
    if signer is None:
        raise NoSignerError("no signing key is attached to this database connection")
    return signer


# ------------------------------------------------------------------------ the tree head


@dataclass(frozen=True)
class Head:
    size: int
    root: bytes | None
    note: str | None


def note_head(note: str) -> tuple[str, int, bytes]:
    """(origin, size, root) from a checkpoint note's body; the signature is not checked."""
    lines = note.split("\n")
    if len(lines) < 4 or not lines[1].isdigit():
        raise BadRequestError("not a checkpoint note")
    return lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)


_READ_HEAD = select(HEAD.c.tree_size, HEAD.c.tree_root, HEAD.c.signed_head).where(HEAD.c.id == 1)
_ADVANCE = (
    update(HEAD)
    .where(HEAD.c.id == 1)
    .values(
        tree_size=bindparam("b_size"),
        tree_root=bindparam("b_root"),
        signed_head=bindparam("b_note"),
    )
)
_ADVANCE_UNSIGNED = (
    update(HEAD)
    .where(HEAD.c.id == 1)
    .values(tree_size=bindparam("b_size"), tree_root=bindparam("b_root"))
)


def read_head(conn: Connection) -> Head:
    row = conn.execute(_READ_HEAD).one()
    root = None if row.tree_root is None else bytes(row.tree_root)
    return Head(int(row.tree_size or 0), root, row.signed_head)


def check_head(conn: Connection, head: Head, new_size: int | None = None) -> bytes | None:
    """Refuse to extend a tree that no longer has the root its newest signed head names.

    O(log n): the root at the signed size is recomputed from the stored subtrees and the
    records of the last partial tile. A tree cut or rewritten below the signed size fails.
    With `new_size` (an append's rows already in, same transaction), the new tree's root
    is computed in the same pass and returned, for advance_head.
    """
    if head.note is None:
        return None if new_size is None else tree.root(conn, new_size)
    _, size, root = note_head(head.note)
    new_root = None
    try:
        if new_size is None:
            intact = size <= head.size and tree.root(conn, size) == root
        else:
            old_root, new_root = tree.roots(conn, [size, new_size])
            intact = size <= head.size and old_root == root
    except LookupError:  # leaves the signed tree holds are gone from the log
        intact = False
    if not intact:
        raise LogTamperedError(
            f"the log no longer matches its signed head (size {size}): nothing was appended; "
            "run `python -m audit_core verify`"
        )
    return new_root


def advance_head(conn: Connection, size: int, root: bytes | None = None) -> None:
    """Record the tree's new size and root, and sign them when a signer is attached."""
    root = tree.root(conn, size) if root is None else root
    values: dict[str, Any] = {"b_size": size, "b_root": root}
    signer = signer_for(conn)
    if signer is None:
        conn.execute(_ADVANCE_UNSIGNED, values)
    else:
        conn.execute(_ADVANCE, {**values, "b_note": signer.checkpoint(size, root)})


# ------------------------------------------------------------------------- checkpoints


def size_at(conn: Connection, upto_seq: int) -> int:
    """The tree size at a snapshot bound (records with key <= upto_seq)."""
    leaf = conn.execute(
        select(AUDIT.c.leaf).where(AUDIT.c.seq <= upto_seq).order_by(AUDIT.c.seq.desc()).limit(1)
    ).scalar()
    return 0 if leaf is None else int(leaf) + 1


def checkpoint(conn: Connection, reason: str, size: int | None = None) -> str:
    """Sign and keep a checkpoint at `size` (default: the current tree); return its note."""
    signer = require_signer(conn)
    head = read_head(conn)
    size = head.size if size is None else size
    if not 0 <= size <= head.size:
        raise BadRequestError(f"size must be between 0 and the tree size {head.size}")
    root = tree.root(conn, size)
    note = signer.checkpoint(size, root)
    conn.execute(
        insert(CHECKPOINTS).values(
            tree_size=size, root=root, note=note, reason=reason, created_at=datetime.now(UTC)
        )
    )
    return note


def note_at(conn: Connection, size: int | None = None) -> str:
    """A signed note at `size`: the newest kept one of that size, else made (on demand)."""
    if size is None:
        head = read_head(conn)
        if head.note is not None and note_head(head.note)[1] == head.size:
            return head.note
        size = head.size
    kept = conn.execute(
        select(CHECKPOINTS.c.note)
        .where(CHECKPOINTS.c.tree_size == size)
        .order_by(CHECKPOINTS.c.id.desc())
        .limit(1)
    ).scalar()
    return str(kept) if kept is not None else checkpoint(conn, "on-demand", size)


def checkpoint_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(CHECKPOINTS)).scalar_one())


def checkpoint_if_grown(engine: Engine) -> str | None:
    """The worker's periodic checkpoint: one when the tree grew since the last kept one."""
    with engine.begin() as conn:
        size = read_head(conn).size
        last = conn.execute(select(func.max(CHECKPOINTS.c.tree_size))).scalar()
        if size == 0 or (last is not None and int(last) >= size):
            return None
        return checkpoint(conn, "periodic", size)


# ------------------------------------------------------------------------------ proofs


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def inclusion(conn: Connection, record_id: str, size: int | None = None) -> dict[str, Any]:
    """The inclusion answer of DESIGN.md for a record (scoping is the caller's job)."""
    leaf = conn.execute(select(AUDIT.c.leaf).where(AUDIT.c.id == record_id)).scalar()
    if leaf is None:
        raise NotFoundError(f"no record {record_id}")
    head = read_head(conn)
    size = head.size if size is None else size
    if not int(leaf) < size <= head.size:
        raise BadRequestError(
            f"size must be above the record's leaf index {leaf} and at most {head.size}"
        )
    return {
        "id": record_id,
        "leafIndex": int(leaf),
        "treeSize": size,
        "inclusionPath": _b64(tree.inclusion_path(conn, int(leaf), size)),
        "checkpoint": note_at(conn, size),
    }


def consistency(conn: Connection, first: int, second: int | None = None) -> dict[str, Any]:
    """The consistency answer of DESIGN.md from size `first` to `second` (default: newest)."""
    head = read_head(conn)
    second = head.size if second is None else second
    if not 0 < first <= second <= head.size:
        raise BadRequestError(f"sizes must satisfy 0 < from <= to <= {head.size}")
    return {
        "from": first,
        "to": second,
        "consistencyPath": _b64(tree.consistency_path(conn, first, second)),
        "checkpoint": note_at(conn, second),
    }


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class SignedManifest:
    export_id: str
    manifest: bytes
    signature: bytes


def sign_manifest(
    conn: Connection,
    *,
    export_id: str,
    exported_at: str,
    requested_by: dict[str, str],
    query: dict[str, Any],
    upto_seq: int,
    count: int,
    first_id: str | None,
    last_id: str | None,
    file_name: str,
    file_bytes: int,
    file_sha256: str,
    leaves: tuple[int, int] | None = None,
) -> SignedManifest:
    """Sign an export's manifest at its snapshot, chained to the previous one, and keep it.

    `leaves` (first, last): a delivery segment's leaf range, kept in its `records`.

    The caller holds the log's append lock (store.lock_head), so manifests chain in
    signing order.
    """
    signer = require_signer(conn)
    size = size_at(conn, upto_seq)
    note = note_at(conn, size)
    previous = conn.execute(select(HEAD.c.last_manifest).where(HEAD.c.id == 1)).scalar()
    manifest = signing.build_manifest(
        export_id=export_id,
        exported_at=exported_at,
        requested_by=requested_by,
        query=query,
        tree_size=size,
        root_hash=note_head(note)[2],
        checkpoint=note,
        count=count,
        first_id=first_id,
        last_id=last_id,
        file_name=file_name,
        file_bytes=file_bytes,
        file_sha256=file_sha256,
        previous_manifest=previous,
        leaves=leaves,
    )
    signature = signing.sign_bytes(signer.key, manifest)
    digest = signing.manifest_digest(manifest)
    conn.execute(
        insert(MANIFESTS).values(
            export_id=export_id,
            requested_by=requested_by["user"].lower(),
            channel=requested_by["channel"],
            file_name=file_name[:255],
            manifest=manifest,
            signature=signature,
            sha256=digest,
            created_at=datetime.now(UTC),
        )
    )
    conn.execute(update(HEAD).where(HEAD.c.id == 1).values(last_manifest=digest))
    return SignedManifest(export_id, manifest, signature)


def manifest_for(
    conn: Connection, export_id: str, requested_by: str | None = None
) -> SignedManifest | None:
    """An export's newest signed manifest; with `requested_by`, only if that person asked."""
    stmt = select(MANIFESTS.c.manifest, MANIFESTS.c.signature).where(
        MANIFESTS.c.export_id == export_id
    )
    if requested_by is not None:
        stmt = stmt.where(MANIFESTS.c.requested_by == requested_by.lower())
    row = conn.execute(stmt.order_by(MANIFESTS.c.created_at.desc()).limit(1)).first()
    return None if row is None else SignedManifest(export_id, bytes(row[0]), bytes(row[1]))
