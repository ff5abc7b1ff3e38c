"""Sliding replay windows, one per producer session, in a bounded LRU map."""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum


class Seen(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    TOO_OLD = "too_old"


class ReplayWindow:
    """Sequence numbers seen for one session: the highest, and a bitmap of the ``size`` below it."""

    __slots__ = ("_bits", "_highest", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._highest = -1
        self._bits = 0  # bit i set: sequence (highest - i) was seen

    def check(self, seq: int) -> Seen:
        if seq > self._highest:
            return Seen.NEW
        offset = self._highest - seq
        if offset >= self.size:
            return Seen.TOO_OLD
        return Seen.DUPLICATE if self._bits >> offset & 1 else Seen.NEW

    def mark(self, seq: int) -> None:
        """Record ``seq`` (call only after ``check`` returned NEW)."""
        if seq > self._highest:
            shift = seq - self._highest  # a jump past the window forgets it: no jump-wide bitmap
            self._bits = (self._bits << shift) | 1 if shift < self.size else 1
            self._highest = seq
            if self._bits.bit_length() > 2 * self.size:  # trim now and then, not on every mark
                self._bits &= (1 << self.size) - 1
        else:
            self._bits |= 1 << (self._highest - seq)

    def unmark(self, seq: int) -> None:
        """Forget ``seq`` again (the application did not take the message; it will come back)."""
        offset = self._highest - seq
        if 0 <= offset < self.size:
            self._bits &= ~(1 << offset)


class ReplayGuard:
    """Replay windows keyed by session id, keeping the ``max_sessions`` most recently used."""

    def __init__(self, window: int = 4096, max_sessions: int = 100_000) -> None:
        if window < 1 or max_sessions < 1:
            raise ValueError("window and max_sessions must be positive")
        self.window = window
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[bytes, ReplayWindow] = OrderedDict()

    def check(self, session: bytes, seq: int) -> Seen:
        w = self._sessions.get(session)
        return Seen.NEW if w is None else w.check(seq)

    def mark(self, session: bytes, seq: int) -> None:
        w = self._sessions.get(session)
        if w is None:
            w = self._sessions[session] = ReplayWindow(self.window)
            if len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(session)
        w.mark(seq)

    def unmark(self, session: bytes, seq: int) -> None:
        w = self._sessions.get(session)
        if w is not None:
            w.unmark(seq)
