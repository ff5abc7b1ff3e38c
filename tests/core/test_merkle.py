"""Merkle trees: build and verify agree everywhere; wrong paths fail; RFC 6962 domain separation."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealedbus.core import merkle

from ._support import FAST, flip


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(b"leaf %d" % i) for i in range(n)]


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written independently of merkle.build."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


@pytest.mark.parametrize("size", range(1, 71))
def test_build_and_root_from_path_agree(size: int) -> None:
    leaves = _leaves(size)
    root, paths = merkle.build(leaves)
    assert root == _reference_root(leaves)
    assert len(paths) == size
    for index, (leaf, path) in enumerate(zip(leaves, paths, strict=True)):
        assert merkle.path_length(index, size) == len(path)
        assert merkle.root_from_path(index, size, leaf, path) == root


@pytest.mark.parametrize("size", [2, 3, 5, 8, 13, 64, 70])
def test_wrong_paths_and_indices_rejected(size: int) -> None:
    leaves = _leaves(size)
    root, paths = merkle.build(leaves)
    for index, (leaf, path) in enumerate(zip(leaves, paths, strict=True)):
        for other in range(size):  # another index with this path: never the same root
            if other == index:
                continue
            with contextlib.suppress(ValueError):  # ValueError: the path does not fit that index
                assert merkle.root_from_path(other, size, leaf, path) != root
        for i in range(len(path)):
            bad = list(path)
            bad[i] = flip(bad[i], 31, 0x01)
            assert merkle.root_from_path(index, size, leaf, bad) != root
        assert merkle.root_from_path(index, size, flip(leaf, 0), path) != root
        with pytest.raises(ValueError):
            merkle.root_from_path(index, size, leaf, [*path, leaf])
        if path:
            with pytest.raises(ValueError):
                merkle.root_from_path(index, size, leaf, path[:-1])
        # A path can fit trees of other sizes and lead to the same root there: the size is bound
        # by the root signature (wire.root_signing_input), see test_tamper.


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 1), (5, 5), (-1, 3), (70, 70)])
def test_index_out_of_range(index: int, size: int) -> None:
    with pytest.raises(ValueError):
        merkle.path_length(index, size)
    with pytest.raises(ValueError):
        merkle.root_from_path(index, size, b"\0" * 32, [])


def test_empty_tree_refused() -> None:
    with pytest.raises(ValueError):
        merkle.build([])


def test_rfc6962_domain_separation() -> None:
    a, b = b"alpha", b"beta"
    assert merkle.leaf_hash(a) == hashlib.sha256(b"\x00" + a).digest()
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    la, lb = merkle.leaf_hash(a), merkle.leaf_hash(b)
    root, paths = merkle.build([la, lb])
    assert root == hashlib.sha256(b"\x01" + la + lb).digest()
    assert paths == [[lb], [la]]
    # an inner node cannot pose as a leaf: the 64-byte concatenation hashes differently as data
    assert merkle.leaf_hash(la + lb) != root


def test_single_leaf_tree() -> None:
    leaf = merkle.leaf_hash(b"only")
    assert merkle.build([leaf]) == (leaf, [[]])
    assert merkle.path_length(0, 1) == 0
    assert merkle.root_from_path(0, 1, leaf, []) == leaf


def test_largest_tree_paths_stay_short() -> None:
    size = merkle.MAX_TREE_SIZE
    assert max(merkle.path_length(i, size) for i in (0, 1, 32767, 65533, 65534)) <= 16


@FAST
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=300), st.data())
def test_build_verify_property(data_leaves: list[bytes], data: st.DataObject) -> None:
    leaves = [merkle.leaf_hash(d) for d in data_leaves]
    root, paths = merkle.build(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    assert merkle.root_from_path(index, len(leaves), leaves[index], paths[index]) == root
