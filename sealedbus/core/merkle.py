"""Merkle trees with RFC 6962 / RFC 9162 domain separation, for batch signatures.

Leaf hash ``SHA-256(0x00 || data)``, node hash ``SHA-256(0x01 || left || right)``; the tree over
n leaves splits at the largest power of two below n; inclusion paths list siblings bottom-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

from sealedbus.core.cache import BoundedCache

MAX_TREE_SIZE = 0xFFFF


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def build(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """Root and the inclusion path of every leaf, for a non-empty list of leaf hashes."""
    n = len(leaves)
    if n == 0:
        raise ValueError("a Merkle tree needs at least one leaf")
    if n == 1:
        return leaves[0], [[]]
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two strictly below n
    left, left_paths = build(leaves[:k])
    right, right_paths = build(leaves[k:])
    paths = [[*p, right] for p in left_paths] + [[*p, left] for p in right_paths]
    return node_hash(left, right), paths


Range = tuple[int, int]  # leaves [start, end) under a node


_PATH_RANGES: BoundedCache[tuple[int, int], tuple[tuple[Range, Range, bool], ...]] = BoundedCache(
    1024  # (index, size) come from unauthenticated envelopes: a small bound
)


def path_ranges(index: int, size: int) -> tuple[tuple[Range, Range, bool], ...]:
    """For each sibling on leaf ``index``'s inclusion path, bottom-up: the range of the node the
    walk is at, the sibling's range, and whether the sibling is on the left. Cached for the
    last 1,024 pairs (the batches in flight use a few sizes); at most 16 levels each."""
    cached = _PATH_RANGES.get((index, size))
    if cached is None:
        cached = _path_ranges(index, size)
        _PATH_RANGES.put((index, size), cached)
    return cached


def _path_ranges(index: int, size: int) -> tuple[tuple[Range, Range, bool], ...]:
    if not 0 <= index < size:
        raise ValueError("leaf index out of range")
    out: list[tuple[Range, Range, bool]] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + (1 << ((end - start - 1).bit_length() - 1))
        if index < mid:
            out.append(((start, mid), (mid, end), False))
            end = mid
        else:
            out.append(((mid, end), (start, mid), True))
            start = mid
    return tuple(reversed(out))


class VerifiedTrees:
    """Nodes of batch trees whose root signature has been verified, by position.

    An envelope whose leaf and path meet a known node of its tree, with every higher sibling of
    its path equal byte for byte to the known node at that position, belongs to that tree: the
    walk stops there instead of hashing up to the root. Every byte of the path is still
    compared, so no changed envelope passes. Pure state; bounded to ``max_trees`` trees.
    """

    def __init__(self, max_trees: int = 4096) -> None:
        self.max_trees = max_trees
        self._trees: BoundedCache[Hashable, dict[Range, bytes]] = BoundedCache(max_trees)

    def contains(
        self, tree: Hashable, index: int, size: int, leaf: bytes, path: list[bytes]
    ) -> bool:
        """Whether ``leaf`` is in the verified tree ``tree`` (False: unknown, verify in full)."""
        known = self._trees.get(tree)
        if known is None:
            return False
        ranges = path_ranges(index, size)
        if len(path) != len(ranges):
            return False
        learned: list[tuple[Range, bytes]] = []
        r = leaf
        for level, (node, sibling, left) in enumerate(ranges):
            if known.get(node) == r:
                for j in range(level, len(ranges)):
                    if path[j] != known.get(ranges[j][1]):
                        return False
                known.update(learned)
                return True
            learned.append((node, r))
            learned.append((sibling, path[level]))
            r = node_hash(path[level], r) if left else node_hash(r, path[level])
        if known.get((0, size)) == r:
            known.update(learned)
            return True
        return False

    def add(self, tree: Hashable, index: int, size: int, leaf: bytes, path: list[bytes]) -> None:
        """Record a leaf, its path and the root they lead to, once the root signature verified."""
        known: dict[Range, bytes] = {}
        r = leaf
        for (node, sibling, left), p in zip(path_ranges(index, size), path, strict=True):
            known[node] = r
            known[sibling] = p
            r = node_hash(p, r) if left else node_hash(r, p)
        known[(0, size)] = r
        self._trees.setdefault(tree, {}).update(known)


def path_length(index: int, size: int) -> int:
    """Number of siblings in the inclusion path of leaf ``index`` in a tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError("leaf index out of range")
    fn, sn, count = index, size - 1, 0
    while sn > 0:
        count += 1
        if fn == sn and not fn & 1:
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
    return count


def root_from_path(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes:
    """Recompute the root from one leaf and its path (RFC 9162 section 2.1.3.2).

    Raises ValueError when the path does not fit the index and size.
    """
    if not 0 <= index < size:
        raise ValueError("leaf index out of range")
    fn, sn, r = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            raise ValueError("inclusion path too long")
        if fn & 1 or fn == sn:
            r = node_hash(sibling, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("inclusion path too short")
    return r
