"""RFC 6962 / RFC 9162 Merkle tree over the ledger, computed from stored perfect-subtree nodes.

The ledger keeps every *perfect subtree node* and nothing else: the node ``(level, index)`` is
the hash of leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0 holds the leaf hashes.
Every hash the RFC recursion needs, MTH of ``D[a:b]``, is the right fold of at most
``log2(b - a) + 1`` such nodes, so a root or a proof never reads the leaves of a large tree:

* ``root(n)`` reads ``popcount(n) <= log2(n) + 1`` nodes;
* ``inclusion_proof`` reads at most ``2 * log2(n) + 1`` nodes: one perfect sibling per level,
  except the right-hand sibling met where the path first turns left, a ragged range of up to
  ``log2(n)`` nodes (below that turn every subtree is perfect);
* ``consistency_proof`` reads at most ``2 * log2(n) + 2`` nodes, by the same argument plus the
  old tree's own subtree hash.

Each of these first works out the keys it needs, fetches them with one ``get_nodes`` call
(so a database-backed source answers in one round trip), then hashes. A key the source does
not return means the store is incomplete or was tampered with: ``IntegrityError``.

Argument errors of proof *generation* (an index past the tree, old size above new size) are
the caller's mistakes and raise ``ValueError``; anything wrong during *verification* (proofs
and roots come from elsewhere) raises ``IntegrityError``.

Pure functions over bytes; no I/O here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Protocol

from custody.domain.errors import IntegrityError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MemoryNodes",
    "NodeKey",
    "NodeSource",
    "TreeBuilder",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "nodes_to_store_on_append",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH of the empty tree (RFC 9162 §2.1.1): the hash of the empty string, without prefix."""

NodeKey = tuple[int, int]
"""``(level, index)`` of a perfect subtree node."""


def leaf_hash(data: bytes) -> bytes:
    """Hash of one entry; the 0x00 prefix keeps leaves and interior nodes in separate domains."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node; the 0x01 prefix prevents second-preimage tricks with leaves."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class NodeSource(Protocol):
    """Where perfect subtree nodes are read from (a database table, a dict, a synthetic source)."""

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        """Return the stored hash of each key; a missing key is simply absent from the result."""
        ...


# --------------------------------------------------------------------------- range arithmetic


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (n >= 2): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_keys(lo: int, hi: int) -> list[NodeKey]:
    """Perfect nodes covering ``D[lo:hi]``, left to right, in strictly decreasing sizes.

    The RFC recursion only asks for ranges that start on a boundary of their largest piece,
    which is what makes the right fold of these nodes equal to MTH(D[lo:hi]).
    """
    keys: list[NodeKey] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        if lo & ((1 << level) - 1):
            raise AssertionError(f"range [{lo}, {hi}) is not aligned to its subtrees")
        keys.append((level, lo >> level))
        lo += 1 << level
    return keys


def _fetch(source: NodeSource, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
    """One ``get_nodes`` call for every key needed; refuse an incomplete or malformed answer."""
    if not keys:
        return {}
    unique = list(dict.fromkeys(keys))
    found = source.get_nodes(unique)
    for key in unique:
        value = found.get(key)
        if value is None:
            raise IntegrityError(f"ledger tree node {key} is missing from the store")
        if len(value) != HASH_SIZE:
            raise IntegrityError(f"ledger tree node {key} is not a {HASH_SIZE}-byte hash")
    return found


def _fold(keys: Sequence[NodeKey], nodes: Mapping[NodeKey, bytes]) -> bytes:
    """MTH of a range from its perfect nodes (left to right): H(P1, H(P2, ... Pk))."""
    acc = nodes[keys[-1]]
    for key in reversed(keys[:-1]):
        acc = node_hash(nodes[key], acc)
    return acc


def _check_size(size: int, what: str = "size") -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"tree {what} must be a non-negative integer, got {size!r}")


# --------------------------------------------------------------------------- building


def nodes_to_store_on_append(index: int, leaf: bytes, source: NodeSource) -> list[tuple[int, int, bytes]]:
    """The perfect nodes that exist once leaf ``index`` is appended, as ``(level, index, hash)``.

    ``(0, index, leaf)`` first, then each parent the new leaf completes. The left siblings
    (``t`` of them, ``t`` = trailing one-bits of ``index``, so at most log2(n)) are fetched
    in one call, so appending costs O(log n) reads and writes and never rereads leaves.
    """
    _check_size(index, "index")
    if len(leaf) != HASH_SIZE:
        raise ValueError(f"leaf hash must be {HASH_SIZE} bytes")
    siblings: list[NodeKey] = []
    level = 0
    while (index >> level) & 1:
        siblings.append((level, (index >> level) - 1))
        level += 1
    fetched = _fetch(source, siblings)
    out = [(0, index, leaf)]
    acc = leaf
    for level, key in enumerate(siblings, start=1):
        acc = node_hash(fetched[key], acc)
        out.append((level, index >> level, acc))
    return out


def root(size: int, source: NodeSource) -> bytes:
    """MTH of the first ``size`` leaves, from the ``popcount(size)`` perfect nodes that cover them."""
    _check_size(size)
    if size == 0:
        return EMPTY_ROOT
    keys = _range_keys(0, size)
    return _fold(keys, _fetch(source, keys))


# --------------------------------------------------------------------------- proofs


def _inclusion_plan(index: int, size: int) -> list[list[NodeKey]]:
    """The node keys behind each PATH element (RFC 9162 §2.1.3.1), leaf-side first."""
    steps: list[list[NodeKey]] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            steps.append(_range_keys(lo + k, hi))
            hi = lo + k
        else:
            steps.append(_range_keys(lo, lo + k))
            lo += k
            m -= k
    steps.reverse()
    return steps


def _consistency_plan(old_size: int, new_size: int) -> list[list[NodeKey]]:
    """The node keys behind each PROOF element (RFC 9162 §2.1.4.1), in proof order."""
    steps: list[list[NodeKey]] = []
    lo, m, n, whole_old = 0, old_size, new_size, True
    while m != n:
        k = _split(n)
        if m <= k:
            steps.append(_range_keys(lo + k, lo + n))
            n = k
        else:
            steps.append(_range_keys(lo, lo + k))
            lo += k
            m -= k
            n -= k
            whole_old = False
    if not whole_old:
        steps.append(_range_keys(lo, lo + m))
    steps.reverse()
    return steps


def _materialize(plan: list[list[NodeKey]], source: NodeSource) -> list[bytes]:
    nodes = _fetch(source, [key for step in plan for key in step])
    return [_fold(step, nodes) for step in plan]


def inclusion_proof(index: int, size: int, source: NodeSource) -> list[bytes]:
    """Audit path for leaf ``index`` in the tree of ``size`` leaves, RFC 9162 §2.1.3.1 order."""
    _check_size(index, "index")
    _check_size(size)
    if index >= size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    return _materialize(_inclusion_plan(index, size), source)


def consistency_proof(old_size: int, new_size: int, source: NodeSource) -> list[bytes]:
    """Proof that the first ``old_size`` leaves are a prefix of the ``new_size`` tree (§2.1.4.1).

    ``old_size`` must be positive: the empty tree is consistent with every tree and the RFC
    defines no proof for it, so callers skip the proof in that case.
    """
    _check_size(old_size, "old size")
    _check_size(new_size, "new size")
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    return _materialize(_consistency_plan(old_size, new_size), source)


# --------------------------------------------------------------------------- verification


def _check_hashes(proof: Sequence[bytes], *named: tuple[str, bytes]) -> None:
    for label, value in named:
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise IntegrityError(f"{label} is not a {HASH_SIZE}-byte hash")
    for element in proof:
        if not isinstance(element, bytes) or len(element) != HASH_SIZE:
            raise IntegrityError(f"proof element is not a {HASH_SIZE}-byte hash")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf`` sits at ``index`` in the tree of ``size`` leaves with this ``root``.

    RFC 9162 §2.1.3.2. The proof length is pinned by (index, size): a proof with extra or
    missing elements fails, as does any wrong index, size, leaf or root.
    """
    if not (_is_int(index) and _is_int(size) and 0 <= index < size):
        raise IntegrityError(f"inclusion proof for leaf {index!r} in a tree of size {size!r} is impossible")
    _check_hashes(proof, ("leaf hash", leaf), ("root hash", root))
    fn, sn = index, size - 1
    acc = leaf
    for element in proof:
        if sn == 0:
            raise IntegrityError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            acc = node_hash(element, acc)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            acc = node_hash(acc, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise IntegrityError("inclusion proof is shorter than the tree is deep")
    if not hmac.compare_digest(acc, root):
        raise IntegrityError("inclusion proof does not lead to the expected root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the ``old_size`` tree with ``old_root`` is a prefix of the ``new_size`` tree.

    RFC 9162 §2.1.4.2. Equal sizes need an empty proof and equal roots. ``old_size`` 0 is
    refused, as in ``consistency_proof``: there is nothing to prove about an empty tree.
    """
    if not (_is_int(old_size) and _is_int(new_size) and 0 < old_size <= new_size):
        raise IntegrityError(f"consistency proof from size {old_size!r} to size {new_size!r} is impossible")
    _check_hashes(proof, ("old root hash", old_root), ("new root hash", new_root))
    if old_size == new_size:
        if proof:
            raise IntegrityError("consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise IntegrityError("trees of equal size have different roots")
        return
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise IntegrityError("consistency proof is empty")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for element in path[1:]:
        if sn == 0:
            raise IntegrityError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(element, fr)
            sr = node_hash(element, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise IntegrityError("consistency proof is shorter than the tree is deep")
    if not hmac.compare_digest(fr, old_root):
        raise IntegrityError("consistency proof does not lead to the old root")
    if not hmac.compare_digest(sr, new_root):
        raise IntegrityError("consistency proof does not lead to the new root")


# --------------------------------------------------------------------------- helpers


class MemoryNodes(NodeSource):
    """A dict-backed ``NodeSource`` for tests and offline tools (no persistence)."""

    def __init__(self) -> None:
        self.nodes: dict[NodeKey, bytes] = {}
        self.size = 0

    def get_nodes(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]:
        return {key: self.nodes[key] for key in keys if key in self.nodes}

    def append(self, data: bytes) -> int:
        """Append one entry (hashed as a leaf) and return its index."""
        index = self.size
        for level, position, value in nodes_to_store_on_append(index, leaf_hash(data), self):
            self.nodes[(level, position)] = value
        self.size += 1
        return index

    def root(self) -> bytes:
        """Root of everything appended so far."""
        return root(self.size, self)


class TreeBuilder:
    """One pass over leaves in order, in O(log n) memory.

    Yields every perfect-subtree node as it completes and gives the root of the leaves so
    far; used to recompute and check a stored tree of millions of events. It keeps only the right frontier: the roots of the maximal perfect subtrees of the
    leaves seen so far, one per set bit of the size.
    """

    def __init__(self) -> None:
        self._frontier: list[tuple[int, bytes]] = []  # (level, hash), levels strictly decreasing
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def push(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add the next leaf hash; return the nodes it completes, ``(0, i, leaf)`` first."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes")
        index = self._size
        completed = [(0, index, leaf)]
        level, acc = 0, leaf
        while self._frontier and self._frontier[-1][0] == level:
            _, left = self._frontier.pop()
            acc = node_hash(left, acc)
            level += 1
            completed.append((level, index >> level, acc))
        self._frontier.append((level, acc))
        self._size += 1
        return completed

    def root(self) -> bytes:
        """MTH of the leaves pushed so far."""
        if not self._frontier:
            return EMPTY_ROOT
        acc = self._frontier[-1][1]
        for _, value in reversed(self._frontier[:-1]):
            acc = node_hash(value, acc)
        return acc
