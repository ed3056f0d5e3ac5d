"""merkle: stored-subtree proofs equal a naive RFC 9162 reference, and cost O(log n) reads."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from functools import cache

import pytest

from audit_core import merkle
from audit_core.merkle import (
    EMPTY_ROOT,
    MemorySource,
    consistency_path,
    inclusion_path,
    leaf_hash,
    leaf_hash_of,
    new_nodes,
    node_hash,
    root,
    subtree,
    verify_consistency,
    verify_inclusion,
)

# --- An independent reference, straight from RFC 9162 §2.1 (no call into the module). ---


def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_k(n: int) -> int:
    """Largest power of two smaller than n, by counting up."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    if len(d) == 0:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return ref_leaf(d[0])
    k = ref_k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) <= 1:
        return []
    k = ref_k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = ref_k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# --- Fixtures: 32-byte digests as the portal's records have, and trees over them. ---

BIG = 1025
SMALL_SIZES = range(1, 71)
EDGE_SIZES = [127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025]
TILE_LEVELS = [merkle.TILE_LEVEL, 2, 1]


def digest(i: int) -> bytes:
    return hashlib.sha256(f"record {i}".encode()).digest()


DATA = [digest(i) for i in range(BIG)]
LEAVES = [leaf_hash(d) for d in DATA]


@cache
def tree(tile_level: int) -> MemorySource:
    return MemorySource(LEAVES, tile_level=tile_level)


@cache
def ref_root(n: int) -> bytes:
    return ref_mth(DATA[:n])


def sample(n: int, count: int = 12) -> list[int]:
    """Indexes 0..n-1: all for small n, the edges, tile borders and a seeded sample otherwise."""
    if n <= 70:
        return list(range(n))
    picks = {0, 1, n // 2, n - 2, n - 1, *(b for b in (3, 4, 255, 256, 257, 512) if b < n)}
    return sorted(picks | set(random.Random(n).sample(range(n), count)))


# --- Known vectors: RFC 6962 / 9162 test data from Certificate Transparency. ---

CT_DATA = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CT_CONSISTENCY = {
    (2, 8): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


@pytest.mark.parametrize("tile_level", [8, 2, 1])
def test_the_certificate_transparency_vectors(tile_level: int) -> None:
    src = MemorySource([leaf_hash_of(d) for d in CT_DATA], tile_level=tile_level)
    assert (
        root(src, 0)
        == EMPTY_ROOT
        == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    )
    assert [root(src, n).hex() for n in range(1, 9)] == CT_ROOTS
    for (index, size), path in CT_INCLUSION.items():
        assert [h.hex() for h in inclusion_path(src, index, size)] == path
    for (m, n), path in CT_CONSISTENCY.items():
        assert [h.hex() for h in consistency_path(src, m, n)] == path
        proof = [bytes.fromhex(h) for h in path]
        old, new = bytes.fromhex(CT_ROOTS[m - 1]), bytes.fromhex(CT_ROOTS[n - 1])
        assert verify_consistency(m, n, proof, old, new)


def test_the_reference_agrees_with_the_vectors() -> None:
    assert ref_mth(CT_DATA).hex() == CT_ROOTS[-1]
    assert [h.hex() for h in ref_path(5, CT_DATA)] == CT_INCLUSION[(5, 8)]
    assert [h.hex() for h in ref_proof(6, CT_DATA)] == CT_CONSISTENCY[(6, 8)]


def test_hash_primitives() -> None:
    d = digest(7)
    assert leaf_hash(d) == hashlib.sha256(b"\x00" + d).digest() == leaf_hash_of(d)
    assert node_hash(d, d[::-1]) == hashlib.sha256(b"\x01" + d + d[::-1]).digest()
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    with pytest.raises(ValueError):
        leaf_hash(d.hex().encode())  # the hex, not the raw digest


# --- The module equals the reference. ---


@pytest.mark.parametrize("tile_level", TILE_LEVELS)
def test_roots_equal_the_reference(tile_level: int) -> None:
    src = tree(tile_level)
    for n in [0, *SMALL_SIZES, *EDGE_SIZES]:
        assert root(src, n) == ref_root(n), n


@pytest.mark.parametrize("tile_level", TILE_LEVELS)
def test_inclusion_paths_equal_the_reference(tile_level: int) -> None:
    src = tree(tile_level)
    for n in [*SMALL_SIZES, *EDGE_SIZES]:
        for i in sample(n):
            path = inclusion_path(src, i, n)
            assert path == ref_path(i, DATA[:n]), (i, n)
            assert verify_inclusion(LEAVES[i], i, n, path, ref_root(n)), (i, n)


@pytest.mark.parametrize("tile_level", TILE_LEVELS)
def test_consistency_paths_equal_the_reference(tile_level: int) -> None:
    src = tree(tile_level)
    for n in [*SMALL_SIZES, *EDGE_SIZES]:
        for m in sample(n + 1)[1:]:
            path = consistency_path(src, m, n)
            assert path == (ref_proof(m, DATA[:n]) if m < n else []), (m, n)
            assert verify_consistency(m, n, path, ref_root(m), ref_root(n)), (m, n)


@pytest.mark.parametrize("tile_level", TILE_LEVELS)
def test_any_range_hashes_as_the_reference(tile_level: int) -> None:
    src = tree(tile_level)
    rng = random.Random(tile_level)
    for _ in range(60):
        a, b = sorted(rng.sample(range(BIG + 1), 2))
        assert subtree(src, a, b) == ref_mth(DATA[a:b]), (a, b)
    assert subtree(src, 5, 5) == EMPTY_ROOT


# --- Appending. ---


def expected_nodes(n: int, tile_level: int) -> dict[tuple[int, int], bytes]:
    """Every complete perfect subtree at a stored level, hashed by the reference."""
    out = {}
    level = tile_level
    while (1 << level) <= n:
        width = 1 << level
        for i in range(n // width):
            out[(level, i)] = ref_mth(DATA[i * width : (i + 1) * width])
        level += 1
    return out


@pytest.mark.parametrize("tile_level", TILE_LEVELS)
def test_appending_in_random_batches_equals_building_at_once(tile_level: int) -> None:
    rng = random.Random(99 + tile_level)
    src = MemorySource(tile_level=tile_level)
    while src.size < BIG:
        batch = rng.choice([0, 1, 2, 3, 7, 60, 255, 256, 257, 300])
        src.append(LEAVES[src.size : src.size + batch])
        assert root(src, src.size) == ref_root(src.size)
        assert src.stored() == expected_nodes(src.size, tile_level), src.size
    assert src.stored() == tree(tile_level).stored()


def test_one_append_spanning_many_tiles_from_an_unaligned_size() -> None:
    leaves = [leaf_hash_of(i.to_bytes(4, "big")) for i in range(6000)]
    once = MemorySource(leaves)
    src = MemorySource(leaves[:300])
    made = src.append(leaves[300:5300])
    assert [(lv, i) for lv, i, _ in made] == sorted(
        k for k in once.stored() if (k[1] + 1) << k[0] in range(301, 5301)
    )
    src.append(leaves[5300:])
    assert src.stored() == once.stored()
    assert (
        root(src, 6000) == root(once, 6000) == ref_mth([i.to_bytes(4, "big") for i in range(6000)])
    )


def test_appending_nothing_makes_nothing() -> None:
    src = tree(merkle.TILE_LEVEL)
    assert new_nodes(src, src.size, []) == []


# --- Verifiers reject what they should. ---


def flipped(path: list[bytes], at: int) -> list[bytes]:
    bad = list(path)
    bad[at] = bytes([bad[at][0] ^ 1]) + bad[at][1:]
    return bad


def test_inclusion_verifier_rejects_tampering() -> None:
    src = tree(2)
    for n in [1, 2, 3, 5, 8, 13, 64, 70, 257]:
        r = ref_root(n)
        for i in sample(n, count=4):
            path = inclusion_path(src, i, n)
            leaf = LEAVES[i]
            for at in range(len(path)):
                assert not verify_inclusion(leaf, i, n, flipped(path, at), r)
            assert not verify_inclusion(flipped([leaf], 0)[0], i, n, path, r)
            assert not verify_inclusion(leaf, i, n, path, flipped([r], 0)[0])
            for j in {i - 1, i + 1} & set(range(n)):
                assert not verify_inclusion(leaf, j, n, path, r), (i, j, n)
            for m in {n - 1, n + 1} - {0}:
                assert not verify_inclusion(leaf, i, m, path, ref_root(m)), (i, m, n)
            assert not verify_inclusion(leaf, i, n, [*path, bytes(32)], r)
            if path:
                assert not verify_inclusion(leaf, i, n, path[:-1], r)
    assert not verify_inclusion(LEAVES[0], 1, 1, [], ref_root(1))
    assert not verify_inclusion(LEAVES[0], -1, 1, [], ref_root(1))
    assert not verify_inclusion(LEAVES[0][:31], 0, 1, [], ref_root(1))


def test_consistency_verifier_rejects_tampering() -> None:
    src = tree(2)
    for n in [2, 3, 5, 8, 13, 64, 70, 257]:
        for m in sample(n, count=4)[1:]:
            path = consistency_path(src, m, n)
            old, new = ref_root(m), ref_root(n)
            for at in range(len(path)):
                assert not verify_consistency(m, n, flipped(path, at), old, new)
            assert not verify_consistency(m, n, path, flipped([old], 0)[0], new)
            assert not verify_consistency(m, n, path, old, flipped([new], 0)[0])
            assert not verify_consistency(m, n, path, new, old)
            for k in {m - 1, m + 1} & set(range(1, n)):
                assert not verify_consistency(k, n, path, ref_root(k), new), (m, k, n)
            for k in {n - 1, n + 1} - {m}:
                assert not verify_consistency(m, k, path, old, ref_root(k)), (m, n, k)
            assert not verify_consistency(m, n, [*path, bytes(32)], old, new)
            assert not verify_consistency(m, n, path[:-1], old, new)
    r4, r5 = ref_root(4), ref_root(5)
    assert verify_consistency(4, 4, [], r4, r4)
    assert not verify_consistency(4, 4, [], r4, r5)
    assert not verify_consistency(4, 4, [r4], r4, r4)
    assert not verify_consistency(5, 4, consistency_path(src, 4, 5), r5, r4)
    assert not verify_consistency(0, 4, [], EMPTY_ROOT, r4)


def test_generators_refuse_what_the_rfc_does_not_define() -> None:
    src = tree(merkle.TILE_LEVEL)
    for args in [(0, 0), (-1, 5), (5, 5), (0, BIG + 1)]:
        with pytest.raises((ValueError, LookupError)):
            inclusion_path(src, *args)
    for m, n in [(0, 5), (6, 5), (-1, 5)]:
        with pytest.raises(ValueError):
            consistency_path(src, m, n)
    assert consistency_path(src, 7, 7) == []
    with pytest.raises(IndexError):
        root(src, BIG + 1)


def test_a_missing_stored_node_is_an_error_not_a_wrong_hash() -> None:
    class Forgetful(MemorySource):
        def nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
            return {}

    src = Forgetful(LEAVES[:600])
    with pytest.raises(LookupError):
        root(src, 600)


# --- Read counts: proofs must not walk the log. ---


class Counting:
    """Wrap a source and count its calls and what they read."""

    def __init__(self, inner: MemorySource) -> None:
        self.inner = inner
        self.tile_level = inner.tile_level
        self.reset()

    def reset(self) -> None:
        self.leaf_calls = self.leaves_read = self.node_calls = self.nodes_read = 0

    def leaves(self, start: int, end: int) -> list[bytes]:
        self.leaf_calls += 1
        self.leaves_read += end - start
        return self.inner.leaves(start, end)

    def nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        self.node_calls += 1
        self.nodes_read += len(keys)
        return self.inner.nodes(keys)

    def worst(self, stats: dict[str, int]) -> None:
        for name in ("leaf_calls", "leaves_read", "node_calls", "nodes_read"):
            stats[name] = max(stats.get(name, 0), getattr(self, name))
        self.reset()


N = 100_000
LOG_N = N.bit_length()  # 17
TILE = 1 << merkle.TILE_LEVEL


@pytest.fixture(scope="module")
def counted() -> Counting:
    return Counting(MemorySource(leaf_hash_of(i.to_bytes(4, "big")) for i in range(N)))


def assert_logarithmic(stats: dict[str, int]) -> None:
    # A linear walk reads ~N leaves or ~N/256 nodes; these bounds are two tiles and 2 log n keys.
    assert stats["node_calls"] <= 1
    assert stats["nodes_read"] <= 2 * LOG_N
    assert stats["leaf_calls"] <= 2
    assert stats["leaves_read"] <= 2 * TILE


def test_proofs_at_100k_read_o_log_n(counted: Counting) -> None:
    stats: dict[str, int] = {}
    for size in [N, N - 1, 65_536, 65_537, 99_841]:
        root(counted, size)
        counted.worst(stats)
        for i in sample(size, count=40):
            inclusion_path(counted, i, size)
            counted.worst(stats)
            if i:
                consistency_path(counted, i, size)
                counted.worst(stats)
    print("proof reads at 100k (worst):", stats)
    assert_logarithmic(stats)


def test_appends_in_ingest_batches_read_o_log_n() -> None:
    leaves = [leaf_hash_of(i.to_bytes(4, "big")) for i in range(N)]
    src = Counting(MemorySource(tile_level=merkle.TILE_LEVEL))
    stats: dict[str, int] = {}
    for start in range(0, N, 5_000):
        batch = leaves[start : start + 5_000]
        made = new_nodes(src, start, batch)
        src.worst(stats)
        assert src.inner.append(batch) == made
    print("append reads per 5,000-leaf batch (worst):", stats)
    assert stats["leaves_read"] < TILE and stats["leaf_calls"] <= 1
    assert stats["node_calls"] <= 1 and stats["nodes_read"] <= LOG_N
    assert src.inner.stored() == MemorySource(leaves).stored()
