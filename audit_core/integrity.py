"""Prove the log unchanged: every row, its search columns, the chain, the tree and its heads.

`verify` walks every record in leaf order, whatever its key, and fails naming what broke:
a row with no place in the tree (inserted around the portal), a gap or reordering in the
leaves, a checksum that does not match the fields, search columns (`ts`, `user_lc`) that
disagree with the record's own fields, a broken chain; then the stored subtrees against
the rows, the signed tree head and every kept checkpoint against the tree, and the day
counts against the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, func, select

from . import evidence, tree
from .models import AUDIT as T
from .models import CHECKPOINTS, HEAD, NODES
from .offline_verify import NoteError, verify_note
from .record import FIELDS, chain_next, compute_checksum, parse_instant, to_micros
from .store import day_counts_differ

BATCH = 10_000


@dataclass(frozen=True)
class VerifyResult:
    checked: int
    bad_id: str | None = None
    reason: str | None = None
    place: str = "end of the log"  # where it failed, when no single record is to blame

    @property
    def ok(self) -> bool:
        return self.bad_id is None and self.reason is None


def verify(
    conn: Connection,
    progress: Callable[[int], None] | None = None,
    keys: list[Ed25519PublicKey] | None = None,
) -> VerifyResult:
    """Check the whole log; return the first thing that breaks, named (see module doc)."""
    keys = keys if keys is not None else _attached_keys(conn)
    orphan = conn.execute(
        select(T.c.id, T.c.seq).where(T.c.leaf.is_(None)).order_by(T.c.seq).limit(1)
    ).first()
    if orphan is not None:
        return VerifyResult(
            0,
            orphan.id,
            f"it (key {orphan.seq}) has no place in the Merkle tree: it was written "
            "around the portal's append, not through it",
        )
    builder = tree.Builder()
    walked = _walk(conn, builder, progress)
    if isinstance(walked, VerifyResult):
        return walked
    checked, prev = walked
    if count_rows(conn) != checked:
        stray = conn.execute(
            select(T.c.id, T.c.leaf).where((T.c.leaf < 0) | (T.c.leaf >= checked)).limit(1)
        ).first()
        return VerifyResult(
            checked,
            None if stray is None else stray.id,
            f"it sits at leaf {None if stray is None else stray.leaf}, outside the tree's "
            f"{checked} dense leaves: it was written around the portal's append",
        )
    head = evidence.read_head(conn)
    tip = conn.execute(select(HEAD.c.last_hash).where(HEAD.c.id == 1)).scalar()
    if tip != prev:
        return VerifyResult(
            checked,
            None,
            "the newest records do not reach the chain's recorded tip "
            "(records were removed from the end)",
        )
    if head.size != checked:
        return VerifyResult(
            checked,
            None,
            f"the log holds {checked} records but its tree head records {head.size} "
            "(records were removed from the end, or added around the portal)",
        )
    for check in (_nodes, _heads):
        failed = check(conn, builder, head, keys)
        if failed:
            return VerifyResult(checked, None, failed[1], place=failed[0])
    if day_counts_differ(conn):
        return VerifyResult(
            checked,
            None,
            "they do not match the records, so counts shown may be wrong; "
            "`python -m audit_core verify --recount` rebuilds them from the records",
            place="day counts",
        )
    return VerifyResult(checked)


def _attached_keys(conn: Connection) -> list[Ed25519PublicKey]:
    signer = evidence.signer_for(conn)
    return [] if signer is None else [signer.key.public_key()]


def _walk(
    conn: Connection, builder: tree.Builder, progress: Callable[[int], None] | None
) -> tuple[int, str] | VerifyResult:
    """Every record in leaf order: place, key order, checksum, search columns, chain."""
    cols = [T.c.leaf, T.c.seq, T.c.ts, T.c.user_lc, T.c.chain, *(T.c[f] for f in FIELDS)]
    prev, last_seq, checked = "0" * 64, None, 0
    while True:
        rows = conn.execute(
            select(*cols).where(T.c.leaf >= checked).order_by(T.c.leaf).limit(BATCH)
        ).all()
        if not rows:
            return checked, prev
        for row in rows:
            fields = dict(zip(FIELDS, row[5:], strict=True))
            bad = _row_problem(row, fields, checked, last_seq)
            if bad is None:
                prev = chain_next(prev, fields["checksum"])
                if prev != row.chain:
                    bad = (
                        "the hash chain breaks here (a record before it was removed, "
                        "inserted or changed)"
                    )
            if bad is None:
                bad = _search_problem(row, fields)
            if bad is not None:
                return VerifyResult(checked, fields["id"], bad)
            last_seq = row.seq
            checked += 1
        builder.add(tree.leaf_of(str(r[-1])) for r in rows)
        if progress:
            progress(checked)


def _row_problem(
    row: object, fields: dict[str, str], index: int, last_seq: int | None
) -> str | None:
    leaf, seq = row[0], row[1]  # type: ignore[index]
    if leaf != index:
        return f"leaf {index} is missing before it: a record was removed from the tree"
    if last_seq is not None and seq <= last_seq:
        return f"its key {seq} is out of insertion order: it was moved or inserted"
    if compute_checksum(fields) != fields["checksum"]:
        return "its fields do not match its checksum"
    return None


def _search_problem(row: object, fields: dict[str, str]) -> str | None:
    """The columns filters read agree with the record's own fields."""
    ts, user_lc = row[2], row[3]  # type: ignore[index]
    try:
        real_ts = to_micros(parse_instant(fields["timestamp"]))
    except ValueError:
        return "its timestamp does not parse"
    if ts != real_ts:
        return "its search column ts does not match its timestamp (time filters would misplace it)"
    if user_lc != fields["user"].lower():
        return "its search column user_lc does not match its user (user filters would miss it)"
    return None


def _nodes(
    conn: Connection, builder: tree.Builder, head: evidence.Head, keys: list[Ed25519PublicKey]
) -> tuple[str, str] | None:
    """The stored subtrees are exactly those the rows give."""
    built = {(lv, i): h for lv, i, h in builder.take()}
    stored = {
        (int(r.level), int(r.idx)): bytes(r.hash)
        for r in conn.execute(select(NODES.c.level, NODES.c.idx, NODES.c.hash))
    }
    if built == stored:
        return None
    wrong = sorted(set(built) ^ set(stored) | {k for k in built if stored.get(k) != built[k]})
    level, idx = wrong[0]
    first = idx << level
    return (
        "Merkle tree",
        f"the stored subtree over leaves {first}..{first + (1 << level) - 1} does not match "
        f"the records ({len(wrong)} subtrees differ)",
    )


def _heads(
    conn: Connection, builder: tree.Builder, head: evidence.Head, keys: list[Ed25519PublicKey]
) -> tuple[str, str] | None:
    """The signed head and every kept checkpoint are signed and match the tree."""
    if head.size == 0:
        return None
    root = tree.root(conn, head.size)
    if head.root != root:
        return ("tree head", "the recorded root does not match the tree of the records")
    if head.note is None:
        return ("signed head", "the log has records but no signed tree head")
    notes = [("signed head", head.note)]
    notes += [
        (f"checkpoint {r.id}", str(r.note))
        for r in conn.execute(select(CHECKPOINTS.c.id, CHECKPOINTS.c.note).order_by("id"))
    ]
    for place, note in notes:
        problem = _note_problem(conn, note, head.size, keys)
        if problem:
            return (place, problem)
    _, size, _ = evidence.note_head(head.note)
    if size != head.size:
        return (
            "signed head",
            f"records after leaf {size - 1} were appended without the signing key "
            f"(signed size {size}, log size {head.size})",
        )
    return None


def _note_problem(
    conn: Connection, note: str, size_now: int, keys: list[Ed25519PublicKey]
) -> str | None:
    try:
        _, size, root = verify_note(note, keys) if keys else evidence.note_head(note)
    except (NoteError, ValueError) as exc:
        return f"its signature does not verify with the portal's key ({exc})"
    if size > size_now:
        return f"it signs {size} records but the log holds {size_now} (the tail was cut)"
    if tree.root(conn, size) != root:
        return f"the tree at size {size} no longer has the root it signed (history rewritten)"
    return None


def count_rows(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(T)).scalar_one())
