"""The one bounded-cache policy of sealedbus: a map of at most ``size`` entries that forgets the
oldest-inserted entry to make room for a new one. The opener's sessions and senders, the verified
Merkle trees and inclusion-path shapes, and the KDS client's certificates all use it, so every
cache that input from the network can fill has the same bound and the same eviction.

Reads take no lock (a dict read is atomic); writes do, so threads may share a cache. Pure: no
clock, no I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most ``size`` entries (0: none); putting a new key into a full cache evicts the oldest
    one."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("a cache's size cannot be negative")
        self.size = size
        self._d: dict[K, V] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def get(self, key: K) -> V | None:
        return self._d.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._d[key] = value
            self._evict()

    def setdefault(self, key: K, default: V) -> V:
        """The value held for ``key``; ``default``, now held, when there was none."""
        with self._lock:
            value = self._d.setdefault(key, default)
            self._evict()
            return value

    def pop(self, key: K) -> None:
        with self._lock:
            self._d.pop(key, None)

    def drop_if(self, stale: Callable[[V], bool]) -> None:
        """Forget every entry whose value is ``stale``."""
        with self._lock:
            self._d = {k: v for k, v in self._d.items() if not stale(v)}

    def _evict(self) -> None:
        while len(self._d) > self.size:
            del self._d[next(iter(self._d))]
