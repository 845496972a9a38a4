"""Tests for the RFC 6962 / RFC 9162 Merkle tree over stored perfect-subtree nodes.

Known answers are the RFC 6962 test data published with transparency-dev/merkle
(testonly/constants.go and proof/verify_test.go, inherited from certificate-transparency-go):
eight leaves, every perfect-subtree node hash, the roots for sizes 0..8, and a few
inclusion and consistency proofs. Random trees are cross-checked against pymerkle.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import pymerkle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.control.ledger import merkle
from custody.control.ledger.merkle import (
    EMPTY_ROOT,
    MemoryNodes,
    NodeKey,
    TreeBuilder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_to_store_on_append,
    root,
    verify_consistency,
    verify_inclusion,
)
from custody.domain.errors import IntegrityError

h = bytes.fromhex

LEAVES = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]

ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# (0-based leaf index, tree size, proof)
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(entries: Sequence[bytes]) -> MemoryNodes:
    store = MemoryNodes()
    for entry in entries:
        store.append(entry)
    return store


def entries_of(n: int, salt: int = 0) -> list[bytes]:
    return [f"{salt}:{i}".encode() for i in range(n)]


def flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, straight from the definition, over leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def reference_consistency(m: int, leaves: Sequence[bytes], whole: bool = True) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF, straight from the definition."""
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return reference_consistency(m, leaves[:k], whole) + [mth(leaves[k:])]
    return reference_consistency(m - k, leaves[k:], False) + [mth(leaves[:k])]


class CountingSource:
    """Synthetic source for a tree of ``size`` leaves: fake but deterministic node hashes.

    It records every call and refuses keys that are not perfect nodes of that tree, so the
    counting tests also check that only real nodes are asked for.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls: list[list[NodeKey]] = []

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        self.calls.append(list(keys))
        for level, index in keys:
            assert level >= 0 and index >= 0 and (index + 1) << level <= self.size, (level, index)
        return {key: hashlib.sha256(f"{key[0]}/{key[1]}".encode()).digest() for key in keys}


# --------------------------------------------------------------------------- known answers


def test_hash_primitives() -> None:
    assert leaf_hash(b"") == h(NODE_HASHES[0][0])
    assert node_hash(h(NODE_HASHES[0][0]), h(NODE_HASHES[0][1])) == h(NODE_HASHES[1][0])
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_known_node_hashes_are_what_the_store_holds() -> None:
    store = build(LEAVES)
    expected = {(lvl, i): h(v) for lvl, row in enumerate(NODE_HASHES) for i, v in enumerate(row)}
    assert store.nodes == expected


@pytest.mark.parametrize("size", range(9))
def test_known_roots(size: int) -> None:
    store = build(LEAVES[:size])
    assert root(size, store) == h(ROOTS[size])
    assert root(size, build(LEAVES)) == h(ROOTS[size])


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_known_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    store = build(LEAVES)
    expected = [h(p) for p in proof]
    assert inclusion_proof(index, size, store) == expected
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, expected, h(ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_known_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    store = build(LEAVES)
    expected = [h(p) for p in proof]
    assert consistency_proof(old, new, store) == expected
    verify_consistency(old, new, h(ROOTS[old]), h(ROOTS[new]), expected)


# --------------------------------------------------------------------------- pymerkle cross-check


@FAST
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=200))
def test_roots_and_paths_match_pymerkle(entries: list[bytes]) -> None:
    ours = build(entries)
    theirs = pymerkle.InmemoryTree(algorithm="sha256")
    for entry in entries:
        theirs.append_entry(entry)
    n = len(entries)
    assert root(0, ours) == theirs.get_root(0)
    for size in range(1, n + 1):
        assert root(size, ours) == theirs.get_root(size)
    for index in range(n):
        path = theirs.prove_inclusion(index + 1, n).path
        assert path[0] == leaf_hash(entries[index])
        assert inclusion_proof(index, n, ours) == list(path[1:])


# --------------------------------------------------------------------------- properties


@FAST
@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=2**16))
def test_every_inclusion_proof_verifies(n: int, salt: int) -> None:
    entries = entries_of(n, salt)
    store = build(entries)
    top = root(n, store)
    for index, entry in enumerate(entries):
        verify_inclusion(leaf_hash(entry), index, n, inclusion_proof(index, n, store), top)


@FAST
@given(st.integers(min_value=1, max_value=32), st.integers(min_value=0, max_value=2**16))
def test_every_consistency_proof_verifies_and_matches_the_rfc(n: int, salt: int) -> None:
    entries = entries_of(n, salt)
    store = build(entries)
    leaves = [leaf_hash(e) for e in entries]
    roots = [root(size, store) for size in range(n + 1)]
    for new in range(1, n + 1):
        assert roots[new] == mth(leaves[:new])
        for old in range(1, new + 1):
            proof = consistency_proof(old, new, store)
            assert proof == reference_consistency(old, leaves[:new])
            verify_consistency(old, new, roots[old], roots[new], proof)


@FAST
@given(st.data())
def test_tampered_inclusion_proofs_fail(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=2, max_value=300), label="size")
    index = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
    store = build(entries_of(n))
    leaf = store.nodes[(0, index)]
    top = root(n, store)
    proof = inclusion_proof(index, n, store)
    verify_inclusion(leaf, index, n, proof, top)

    at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="element")
    byte = data.draw(st.integers(min_value=0, max_value=31), label="byte")
    bad_proof = list(proof)
    bad_proof[at] = flip(bad_proof[at], byte)
    wrong_index = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda i: i != index))
    attempts = [
        (leaf, index, n, bad_proof, top),
        (leaf, wrong_index, n, proof, top),
        (leaf, index, n * 2, proof, top),
        (leaf, index, n, proof, flip(top, byte)),
        (flip(leaf, byte), index, n, proof, top),
        (leaf, index, n, proof[:-1], top),
        (leaf, index, n, [*proof, top], top),
        (leaf, index, n, [top, *proof], top),
        (leaf, n, n, proof, top),
    ]
    if index < n // 2:
        attempts.append((leaf, index, n // 2, proof, top))
    for attempt in attempts:
        with pytest.raises(IntegrityError):
            verify_inclusion(*attempt)


@FAST
@given(st.data())
def test_tampered_consistency_proofs_fail(data: st.DataObject) -> None:
    new = data.draw(st.integers(min_value=2, max_value=200), label="new")
    old = data.draw(st.integers(min_value=1, max_value=new - 1), label="old")
    store = build(entries_of(new))
    old_root, new_root = root(old, store), root(new, store)
    proof = consistency_proof(old, new, store)
    verify_consistency(old, new, old_root, new_root, proof)

    at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="element")
    byte = data.draw(st.integers(min_value=0, max_value=31), label="byte")
    bad_proof = list(proof)
    bad_proof[at] = flip(bad_proof[at], byte)
    attempts = [
        (old, new, old_root, new_root, bad_proof),
        (old, new, flip(old_root, byte), new_root, proof),
        (old, new, old_root, flip(new_root, byte), proof),
        (old, new, new_root, old_root, proof),
        (old, new, old_root, new_root, []),
        (old, new, old_root, new_root, proof[:-1]),
        (old, new, old_root, new_root, [*proof, new_root]),
        (old, new, old_root, new_root, [proof[0], *proof]),
        (old, new * 2, old_root, new_root, proof),
        (new, old, new_root, old_root, proof),
        (old + 1, new, old_root, new_root, proof),
    ]
    if old > 1:
        attempts.append((old - 1, new, old_root, new_root, proof))
    for attempt in attempts:
        with pytest.raises(IntegrityError):
            verify_consistency(*attempt)


@FAST
@given(st.integers(min_value=0, max_value=600), st.integers(min_value=0, max_value=2**16))
def test_tree_builder_matches_the_store_at_every_size(n: int, salt: int) -> None:
    store = MemoryNodes()
    builder = TreeBuilder()
    assert builder.root() == root(0, store) == EMPTY_ROOT
    for entry in entries_of(n, salt):
        leaf = leaf_hash(entry)
        expected = nodes_to_store_on_append(store.size, leaf, store)
        assert builder.push(leaf) == expected
        store.append(entry)
        assert builder.size == store.size
        assert builder.root() == root(store.size, store)
    assert len(store.nodes) == 2 * n - bin(n).count("1")


def test_tree_builder_memory_stays_logarithmic() -> None:
    builder = TreeBuilder()
    for i in range(5000):
        builder.push(leaf_hash(i.to_bytes(4, "big")))
        assert len(builder._frontier) == bin(builder.size).count("1")


# --------------------------------------------------------------------------- cost bounds


N = 1_000_000
BOUND = 2 * math.log2(N) + 2


def test_root_reads_popcount_nodes_in_one_call() -> None:
    source = CountingSource(N)
    root(N, source)
    assert len(source.calls) == 1
    assert len(source.calls[0]) == bin(N).count("1")


@pytest.mark.parametrize("index", [0, 1, 2**19 - 1, 2**19, 999_998, N - 1, 123_457])
def test_inclusion_proof_reads_log_n_nodes_in_one_call(index: int) -> None:
    source = CountingSource(N)
    proof = inclusion_proof(index, N, source)
    assert len(source.calls) == 1
    assert len(source.calls[0]) <= BOUND
    assert len(proof) <= math.ceil(math.log2(N))


@pytest.mark.parametrize(
    ("old", "new"), [(1, N), (N - 1, N), (2**19, N), (2**19 + 1, N), (777_777, N), (999, 1000), (N, N)]
)
def test_consistency_proof_reads_log_n_nodes_in_one_call(old: int, new: int) -> None:
    source = CountingSource(new)
    consistency_proof(old, new, source)
    assert len(source.calls) <= 1
    assert all(len(call) <= BOUND for call in source.calls)


@given(st.integers(min_value=2, max_value=N), st.data())
@settings(max_examples=200, deadline=None)
def test_proof_costs_are_logarithmic_for_any_shape(n: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    old = data.draw(st.integers(min_value=1, max_value=n))
    bound = 2 * math.log2(n) + 2
    for produce in (lambda s: inclusion_proof(index, n, s), lambda s: consistency_proof(old, n, s)):
        source = CountingSource(n)
        produce(source)
        assert len(source.calls) <= 1
        assert sum(len(call) for call in source.calls) <= bound


def test_append_reads_left_siblings_in_one_call() -> None:
    index = 2**20 - 1
    source = CountingSource(index)
    created = nodes_to_store_on_append(index, leaf_hash(b"x"), source)
    assert len(source.calls) == 1
    assert len(source.calls[0]) == 20
    assert [(lvl, i) for lvl, i, _ in created] == [(lvl, index >> lvl) for lvl in range(21)]
    even = CountingSource(10)
    assert len(nodes_to_store_on_append(10, leaf_hash(b"x"), even)) == 1
    assert even.calls == []


# --------------------------------------------------------------------------- store damage and arguments


def test_missing_or_malformed_node_is_an_integrity_error() -> None:
    store = build(LEAVES)
    del store.nodes[(1, 2)]
    with pytest.raises(IntegrityError):
        root(6, store)
    with pytest.raises(IntegrityError):
        inclusion_proof(0, 6, store)
    store = build(LEAVES)
    store.nodes[(2, 1)] = b"short"
    with pytest.raises(IntegrityError):
        consistency_proof(4, 8, store)
    with pytest.raises(IntegrityError):
        root(8, MemoryNodes())


def test_generation_rejects_impossible_arguments() -> None:
    store = build(LEAVES)
    for call in (
        lambda: inclusion_proof(8, 8, store),
        lambda: inclusion_proof(-1, 8, store),
        lambda: inclusion_proof(0, 0, store),
        lambda: consistency_proof(0, 8, store),
        lambda: consistency_proof(5, 4, store),
        lambda: root(-1, store),
        lambda: nodes_to_store_on_append(0, b"short", store),
        lambda: TreeBuilder().push(b"short"),
    ):
        with pytest.raises(ValueError):
            call()


def test_verification_rejects_impossible_arguments() -> None:
    leaf, top = leaf_hash(b"a"), leaf_hash(b"a")
    verify_inclusion(leaf, 0, 1, [], top)
    for args in ((leaf, 1, 1, [], top), (leaf, 0, 0, [], top), (leaf, -1, 1, [], top), (leaf[:31], 0, 1, [], top)):
        with pytest.raises(IntegrityError):
            verify_inclusion(*args)
    with pytest.raises(IntegrityError):
        verify_inclusion(leaf, 0, 2, [b"\x00" * 31], top)
    verify_consistency(1, 1, top, top, [])
    for cargs in (
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, []),
        (0, 1, EMPTY_ROOT, top, []),
        (1, 1, top, EMPTY_ROOT, []),
        (1, 1, top, top, [top]),
        (2, 1, top, top, []),
        (1, 2, top, top, []),
    ):
        with pytest.raises(IntegrityError):
            verify_consistency(*cargs)


def test_module_exports() -> None:
    assert set(merkle.__all__) <= set(dir(merkle))
