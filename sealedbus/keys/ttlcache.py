"""A small bounded cache whose entries expire: how sealers cache subject public keys and openers
subject private keys (SPEC.md 4.5). Time comes in as an argument (milliseconds), so tests move it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most ``size`` entries, each for ``ttl_ms`` after it was put; least recently used first
    out. ``ttl_ms`` 0 caches nothing."""

    def __init__(self, size: int, ttl_ms: int) -> None:
        if size < 1 or ttl_ms < 0:
            raise ValueError("a cache holds at least one entry for a non-negative time")
        self.size = size
        self.ttl_ms = ttl_ms
        self._d: OrderedDict[K, tuple[int, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, now_ms: int) -> tuple[bool, V | None]:
        """``(True, value)`` for a live entry, else ``(False, None)`` (an expired one goes)."""
        with self._lock:
            held = self._d.get(key)
            if held is None:
                return False, None
            if now_ms >= held[0]:
                del self._d[key]
                return False, None
            self._d.move_to_end(key)
            return True, held[1]

    def put(self, key: K, value: V, now_ms: int) -> None:
        if self.ttl_ms == 0:
            return
        with self._lock:
            self._d[key] = (now_ms + self.ttl_ms, value)
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def drop_keys(self, stale: Callable[[K], bool]) -> None:
        """Forget every entry whose key is ``stale``."""
        with self._lock:
            for key in [k for k in self._d if stale(k)]:
                del self._d[key]

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)
