"""The log's Merkle tree in the database (RFC 9162), read and extended in O(log n).

Leaves are the records in insertion order (`audit_records.leaf`, dense from 0); a leaf's
hash comes from the record's own checksum, so leaves are never stored twice. Stored are
the hashes of complete subtrees of 2**TILE_LEVEL leaves and up (`merkle_nodes`), about
one row per 128 records; anything smaller is hashed from at most 256 checksums read as
one index range (merkle.py has the algorithms).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, bindparam, insert, select, tuple_

from . import merkle
from .models import AUDIT, NODES

CHECKSUM_PREFIX = "sha256:"


def leaf_of(checksum: str) -> bytes:
    """The leaf hash of a record: SHA-256(0x00 || the 32 bytes of its checksum digest)."""
    return merkle.leaf_hash(bytes.fromhex(checksum[len(CHECKSUM_PREFIX) :]))


_LEAVES = (  # built once: every append reads the last partial tile's leaves
    select(AUDIT.c.leaf, AUDIT.c.checksum)
    .where(AUDIT.c.leaf >= bindparam("start"), AUDIT.c.leaf < bindparam("end"))
    .order_by(AUDIT.c.leaf)
)


class DbSource:
    """A merkle.NodeSource over the records and merkle_nodes of one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def leaves(self, start: int, end: int) -> list[bytes]:
        rows = self.conn.execute(_LEAVES, {"start": start, "end": end}).all()
        if [r.leaf for r in rows] != list(range(start, end)):
            raise LookupError(f"the log has no records for every leaf in [{start}, {end})")
        return [leaf_of(r.checksum) for r in rows]

    def nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The stored hashes of these (level, index) keys, in one query (a row-value IN):
        a root or a proof needs about one key per level, and a query per level cost more
        than the reads themselves (half of an append's time went to two roots' queries)."""
        found: dict[tuple[int, int], bytes] = {}
        cols = tuple_(NODES.c.level, NODES.c.idx)
        for i in range(0, len(keys), 400):  # SQLite allows 32k parameters; stay well under
            chunk = [tuple(k) for k in keys[i : i + 400]]
            rows = self.conn.execute(
                select(NODES.c.level, NODES.c.idx, NODES.c.hash).where(cols.in_(chunk))
            ).all()
            found.update({(int(r.level), int(r.idx)): bytes(r.hash) for r in rows})
        return found


def extend(conn: Connection, old_size: int, new_leaves: Sequence[bytes]) -> None:
    """Store the subtrees that the leaves appended after old_size complete."""
    done = merkle.new_nodes(DbSource(conn), old_size, new_leaves)
    if done:
        conn.execute(insert(NODES), [{"level": lv, "idx": i, "hash": h} for lv, i, h in done])


def root(conn: Connection, size: int) -> bytes:
    """The tree's root at any size up to the current one."""
    return merkle.root(DbSource(conn), size)


def roots(conn: Connection, sizes: Sequence[int]) -> list[bytes]:
    """The roots at several sizes in one pass (an append checks the old and signs the new)."""
    return merkle.roots(DbSource(conn), sizes)


def inclusion_path(conn: Connection, index: int, size: int) -> list[bytes]:
    return merkle.inclusion_path(DbSource(conn), index, size)


def consistency_path(conn: Connection, m: int, n: int) -> list[bytes]:
    return merkle.consistency_path(DbSource(conn), m, n)


class Builder:
    """Build the stored nodes of a whole tree from its leaves in order, in flat memory."""

    def __init__(self, tile_level: int = merkle.TILE_LEVEL) -> None:
        self.tile_level = tile_level
        self.size = 0
        self._tile: list[bytes] = []
        self._stack: list[tuple[int, bytes]] = []  # (level, hash) of complete subtrees
        self.nodes: list[tuple[int, int, bytes]] = []

    def add(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self._tile.append(leaf)
            self.size += 1
            if len(self._tile) == 1 << self.tile_level:
                self._push(self.tile_level, _perfect(self._tile))
                self._tile = []

    def _push(self, level: int, digest: bytes) -> None:
        self.nodes.append((level, (self.size >> level) - 1, digest))
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            level, digest = level + 1, merkle.node_hash(left, digest)
            self.nodes.append((level, (self.size >> level) - 1, digest))
        self._stack.append((level, digest))

    def take(self) -> list[tuple[int, int, bytes]]:
        """The nodes completed since the last take (to store them in batches)."""
        out, self.nodes = self.nodes, []
        return out


def _perfect(hashes: list[bytes]) -> bytes:
    while len(hashes) > 1:
        hashes = [merkle.node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]
