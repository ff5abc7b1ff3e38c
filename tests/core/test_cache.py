"""The one bounded-cache policy (``core/cache.py``): at most ``size`` entries, oldest out first."""

from __future__ import annotations

import pytest

from sealedbus.core.cache import BoundedCache


def test_a_full_cache_forgets_the_oldest_entry() -> None:
    cache: BoundedCache[int, str] = BoundedCache(3)
    for i in range(5):
        cache.put(i, str(i))
    assert len(cache) == 3
    assert [cache.get(i) for i in range(5)] == [None, None, "2", "3", "4"]


def test_setdefault_keeps_what_is_held_and_respects_the_bound() -> None:
    cache: BoundedCache[str, list[int]] = BoundedCache(2)
    held = cache.setdefault("a", [1])
    assert cache.setdefault("a", [2]) is held
    cache.setdefault("b", [])
    cache.setdefault("c", [])
    assert "a" not in cache and len(cache) == 2


def test_drop_if_and_pop() -> None:
    cache: BoundedCache[int, int] = BoundedCache(10)
    for i in range(6):
        cache.put(i, i)
    cache.drop_if(lambda v: v % 2 == 0)
    cache.pop(1)
    cache.pop(99)  # absent: nothing happens
    assert sorted(k for k in range(6) if k in cache) == [3, 5]


def test_size_zero_holds_nothing_and_negative_is_refused() -> None:
    empty: BoundedCache[int, int] = BoundedCache(0)
    empty.put(1, 1)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="negative"):
        BoundedCache(-1)
