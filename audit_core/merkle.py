"""Compute the log's Merkle tree (RFC 9162 §2.1, SHA-256) from leaves and stored subtree hashes.

Storage: leaf hashes are not stored, the caller derives them from record checksums in leaf
order. What is stored is the hash of every complete perfect subtree at level >= TILE_LEVEL,
keyed (level, index), node (L, i) covering leaves [i * 2**L, (i + 1) * 2**L). A root at any
size, an inclusion proof and a consistency proof then read O(log n) nodes plus at most a few
hundred leaves, in one nodes() call and at most a couple of leaves() calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

TILE_LEVEL = 8
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Key = tuple[int, int]
Range = tuple[int, int]
Block = tuple[int, int]  # (first leaf, level): a perfect subtree of 2**level leaves


class NodeSource(Protocol):
    """Read one log's leaf hashes and stored subtree hashes.

    A source may carry a `tile_level` attribute (default TILE_LEVEL): the lowest stored level.
    """

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Return the leaf hashes of leaf indexes [start, end)."""
        ...

    def nodes(self, keys: Sequence[Key]) -> dict[Key, bytes]:
        """Return the stored hashes of these (level, index) keys, in one read."""
        ...


def leaf_hash(digest: bytes) -> bytes:
    """Hash a record's 32-byte checksum digest into its leaf."""
    # A hex string or a prefixed checksum passed by mistake would give leaves nobody can match.
    if len(digest) != HASH_SIZE:
        raise ValueError(f"a record digest is {HASH_SIZE} raw bytes, got {len(digest)}")
    return leaf_hash_of(digest)


def leaf_hash_of(data: bytes) -> bytes:
    """Hash any leaf input: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two children: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def subtree(source: NodeSource, start: int, end: int) -> bytes:
    """Return MTH(leaves[start:end]), reading stored nodes for aligned blocks."""
    # O(log n) reads when start is aligned as in every RFC range; an unaligned start still
    # gives the right hash but may read every leaf of the range.
    if not 0 <= start <= end:
        raise ValueError(f"bad leaf range [{start}, {end})")
    return _hash_ranges(source, [(start, end)])[0]


def root(source: NodeSource, size: int) -> bytes:
    """Return the root hash of the tree of the first `size` leaves."""
    if size < 0:
        raise ValueError(f"bad tree size {size}")
    return subtree(source, 0, size)


def roots(source: NodeSource, sizes: Sequence[int]) -> list[bytes]:
    """The roots at several tree sizes, sharing one nodes() read and their leaf reads."""
    if any(size < 0 for size in sizes):
        raise ValueError(f"bad tree sizes {list(sizes)}")
    return _hash_ranges(source, [(0, size) for size in sizes])


def inclusion_path(source: NodeSource, index: int, size: int) -> list[bytes]:
    """Return PATH(index, D[0:size]) of RFC 9162 §2.1.3.1."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    return _hash_ranges(source, _inclusion_ranges(index, size))


def consistency_path(source: NodeSource, m: int, n: int) -> list[bytes]:
    """Return PROOF(m, D[0:n]) of RFC 9162 §2.1.4.1 (empty when m == n)."""
    if not 0 < m <= n:
        raise ValueError(f"no consistency proof from size {m} to size {n}")
    return _hash_ranges(source, _consistency_ranges(m, n))


def new_nodes(
    source: NodeSource, old_size: int, new_leaves: Sequence[bytes]
) -> list[tuple[int, int, bytes]]:
    """Return (level, index, hash) of every stored node completed by appending new_leaves."""
    if old_size < 0:
        raise ValueError(f"bad tree size {old_size}")
    if any(len(h) != HASH_SIZE for h in new_leaves):
        raise ValueError(f"leaf hashes are {HASH_SIZE} bytes")
    tl = _tile_level(source)
    tier = _new_tiles(source, tl, old_size, new_leaves)
    old = _fetch_nodes(source, _old_left_children(tl, old_size, old_size + len(new_leaves)))
    out: list[tuple[int, int, bytes]] = []
    level = tl
    while tier:
        out.extend((level, i, h) for i, h in tier)
        here = dict(tier)
        # Each new right child completes its parent; its left sibling is new or already stored.
        tier = [
            (i // 2, node_hash(here.get(i - 1) or old[(level, i - 1)], h)) for i, h in tier if i % 2
        ]
        level += 1
    return out


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """Check an inclusion proof of a leaf hash (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size or not _all_hashes([leaf, root, *path]):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _strip_zeros(fn, sn)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(
    m: int, n: int, path: Sequence[bytes], old_root: bytes, new_root: bytes
) -> bool:
    """Check a consistency proof between tree sizes m and n (RFC 9162 §2.1.4.2)."""
    if not 0 < m <= n or not _all_hashes([old_root, new_root, *path]):
        return False
    if m == n:
        return not path and old_root == new_root
    if not path:
        return False
    # A power-of-two old tree is a node of the new one, so the proof leaves it out.
    hashes = [old_root, *path] if m & (m - 1) == 0 else list(path)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = hashes[0]
    for c in hashes[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            fn, sn = _strip_zeros(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root


class MemorySource:
    """Hold a whole tree in memory: its leaf hashes and the nodes new_nodes made."""

    def __init__(self, leaves: Iterable[bytes] = (), tile_level: int = TILE_LEVEL) -> None:
        """Build the tree of these leaf hashes."""
        if tile_level < 1:
            raise ValueError("tile_level must be at least 1")
        self.tile_level = tile_level
        self._leaves: list[bytes] = []
        self._nodes: dict[Key, bytes] = {}
        self.append(list(leaves))

    @property
    def size(self) -> int:
        """Return the number of leaves."""
        return len(self._leaves)

    def append(self, new_leaves: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
        """Append leaf hashes, store the nodes they complete and return those."""
        made = new_nodes(self, len(self._leaves), new_leaves)
        self._leaves.extend(new_leaves)
        self._nodes.update(((level, i), h) for level, i, h in made)
        return made

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Return the leaf hashes of leaf indexes [start, end)."""
        if not 0 <= start <= end <= len(self._leaves):
            raise IndexError(f"leaves [{start}, {end}) outside a tree of {len(self._leaves)}")
        return self._leaves[start:end]

    def nodes(self, keys: Sequence[Key]) -> dict[Key, bytes]:
        """Return the stored hashes of these keys that exist."""
        return {k: self._nodes[k] for k in keys if k in self._nodes}

    def stored(self) -> dict[Key, bytes]:
        """Return a copy of every stored node."""
        return dict(self._nodes)


def _tile_level(source: NodeSource) -> int:
    """Return the lowest stored level of this source."""
    level = getattr(source, "tile_level", TILE_LEVEL)
    if not isinstance(level, int) or level < 1:
        raise ValueError(f"bad tile_level {level!r}")
    return level


def _split(n: int) -> int:
    """Return the largest power of two smaller than n (n >= 2), RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_ranges(index: int, size: int) -> list[Range]:
    """Return the leaf ranges whose hashes make PATH(index, D[0:size]), in proof order."""
    out: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + _split(end - start)
        if index < mid:
            out.append((mid, end))
            end = mid
        else:
            out.append((start, mid))
            start = mid
    # The RFC emits the deepest sibling first; the walk went top down.
    return out[::-1]


def _consistency_ranges(m: int, n: int) -> list[Range]:
    """Return the leaf ranges whose hashes make PROOF(m, D[0:n]), in proof order."""
    out: list[Range] = []
    start, end, whole = 0, n, True
    while m - start < end - start:
        mid = start + _split(end - start)
        if m <= mid:
            out.append((mid, end))
            end = mid
        else:
            out.append((start, mid))
            start, whole = mid, False
    if not whole:
        out.append((start, end))
    return out[::-1]


def _blocks(start: int, end: int) -> list[Block]:
    """Split a range into RFC 9162's perfect subtrees, largest first."""
    out: list[Block] = []
    while start < end:
        level = (end - start).bit_length() - 1
        out.append((start, level))
        start += 1 << level
    return out


def _is_stored(block: Block, tl: int) -> bool:
    """Tell whether a perfect subtree is a stored node."""
    start, level = block
    return level >= tl and start % (1 << level) == 0


def _halves(block: Block) -> tuple[Block, Block]:
    """Return the two children of a perfect subtree."""
    start, level = block
    return (start, level - 1), (start + (1 << (level - 1)), level - 1)


def _collect(block: Block, tl: int, keys: set[Key], spans: list[Range]) -> None:
    """Note the stored node or the leaves that a perfect subtree's hash needs."""
    start, level = block
    if _is_stored(block, tl):
        keys.add((level, start >> level))
    elif level < tl:
        spans.append((start, start + (1 << level)))
    else:
        for half in _halves(block):
            _collect(half, tl, keys, spans)


def _block_hash(
    block: Block,
    tl: int,
    stored: dict[Key, bytes],
    leaves: dict[int, bytes],
    memo: dict[Block, bytes],
) -> bytes:
    """Hash a perfect subtree from what _collect asked for (once: `memo` keeps it, for the
    ranges that share it, as an append's old and new roots share the last tile's start)."""
    if (known := memo.get(block)) is not None:
        return known
    start, level = block
    if _is_stored(block, tl):
        digest = stored[(level, start >> level)]
    elif level < tl:
        digest = _perfect_root([leaves[i] for i in range(start, start + (1 << level))])
    else:
        left, right = _halves(block)
        digest = node_hash(
            _block_hash(left, tl, stored, leaves, memo),
            _block_hash(right, tl, stored, leaves, memo),
        )
    memo[block] = digest
    return digest


def _hash_ranges(source: NodeSource, ranges: Sequence[Range]) -> list[bytes]:
    """Return MTH of each leaf range, with one nodes() read and few leaves() reads."""
    tl = _tile_level(source)
    plans = [_blocks(start, end) for start, end in ranges]
    keys: set[Key] = set()
    spans: list[Range] = []
    for plan in plans:
        for block in plan:
            _collect(block, tl, keys, spans)
    stored = _fetch_nodes(source, sorted(keys))
    leaves = _read_leaves(source, spans, gap=1 << tl)
    memo: dict[Block, bytes] = {}
    return [_fold([_block_hash(b, tl, stored, leaves, memo) for b in plan]) for plan in plans]


def _fold(hashes: list[bytes]) -> bytes:
    """Combine a range's perfect subtrees right to left, as RFC 9162's recursion does."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _perfect_root(hashes: list[bytes]) -> bytes:
    """Hash a power-of-two run of leaf hashes pairwise up to its root."""
    while len(hashes) > 1:
        hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def _fetch_nodes(source: NodeSource, keys: Sequence[Key]) -> dict[Key, bytes]:
    """Read stored nodes in one call; fail if any is missing."""
    if not keys:
        return {}
    found = source.nodes(keys)
    missing = [k for k in keys if k not in found]
    if missing:
        raise LookupError(f"stored Merkle nodes missing (level, index): {missing[:5]}")
    return found


def _read_leaves(source: NodeSource, spans: list[Range], gap: int) -> dict[int, bytes]:
    """Read the leaves of these spans, joining spans less than `gap` apart into one call."""
    # Reading a few unneeded leaves (the proven one, say) is cheaper than another round trip.
    runs: list[list[int]] = []
    for start, end in sorted(spans):
        if runs and start - runs[-1][1] < gap:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    out: dict[int, bytes] = {}
    for start, end in runs:
        got = source.leaves(start, end)
        if len(got) != end - start:
            raise LookupError(f"leaves [{start}, {end}) answered {len(got)} hashes")
        out.update(zip(range(start, end), got, strict=True))
    return out


def _new_tiles(
    source: NodeSource, tl: int, old_size: int, new_leaves: Sequence[bytes]
) -> list[tuple[int, bytes]]:
    """Return (index, hash) of every tile (level tl node) that the appended leaves complete."""
    tile = 1 << tl
    first, last = old_size // tile, (old_size + len(new_leaves)) // tile
    if first >= last:
        return []
    head = first * tile
    # Only the first tile can hold leaves from before the append.
    run = [*(source.leaves(head, old_size) if head < old_size else []), *new_leaves]
    if len(run) != old_size + len(new_leaves) - head:
        raise LookupError(f"leaves [{head}, {old_size}) are not all stored")
    return [
        (i, _perfect_root(run[(i - first) * tile : (i - first + 1) * tile]))
        for i in range(first, last)
    ]


def _old_left_children(tl: int, old_size: int, new_size: int) -> list[Key]:
    """Return the stored nodes an append pairs with new right siblings (one a level at most)."""
    keys: list[Key] = []
    level = tl
    while (j := old_size >> (level + 1)) < new_size >> (level + 1):
        if (2 * j + 1) << level <= old_size:
            keys.append((level, 2 * j))
        level += 1
    return keys


def _all_hashes(values: Sequence[bytes]) -> bool:
    """Tell whether every value is a 32-byte hash."""
    return all(isinstance(v, bytes) and len(v) == HASH_SIZE for v in values)


def _strip_zeros(fn: int, sn: int) -> tuple[int, int]:
    """Shift both until fn's lowest bit is set or fn is 0 (RFC 9162 §2.1.3.2 step 4.b)."""
    while fn and not fn & 1:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn
