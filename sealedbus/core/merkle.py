"""Merkle trees with RFC 6962 / RFC 9162 domain separation, for batch signatures.

Leaf hash ``SHA-256(0x00 || data)``, node hash ``SHA-256(0x01 || left || right)``; the tree over
n leaves splits at the largest power of two below n; inclusion paths list siblings bottom-up.
"""

from __future__ import annotations

import hashlib

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
