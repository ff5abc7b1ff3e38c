"""SPEC.md 5.3's definition of path_length, checked against the tree the sealer builds and the
RFC 9162 loop the opener runs: three formulations, one number."""

from __future__ import annotations

from sealedbus.core import merkle


def spec_path_length(i: int, s: int) -> int:
    """The recursion of SPEC.md 5.3, transcribed."""
    if s == 1:
        return 0
    k = 1 << ((s - 1).bit_length() - 1)  # the largest power of two < s
    return 1 + (spec_path_length(i, k) if i < k else spec_path_length(i - k, s - k))


def test_path_length_definitions_agree() -> None:
    for s in range(1, 300):
        _, paths = merkle.build([bytes([n % 256]) * 32 for n in range(s)])
        for i in range(s):
            assert spec_path_length(i, s) == merkle.path_length(i, s) == len(paths[i]), (i, s)


def test_path_length_at_the_largest_tree() -> None:
    s = merkle.MAX_TREE_SIZE
    assert {merkle.path_length(i, s) for i in (0, s // 2, s - 1)} <= set(range(17))
    assert spec_path_length(s - 1, s) == merkle.path_length(s - 1, s)
