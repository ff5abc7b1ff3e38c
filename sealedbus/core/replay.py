"""Sliding replay windows, one per producer session, in bounded maps."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
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
    """Replay windows per producer session, grouped by sender (a topic and a certificate).

    Memory is bounded twice: each sender keeps at most ``max_sessions_per_sender`` windows (its
    least recently used go first), and all senders together at most ``max_sessions`` (taken
    from the sender holding the most). A producer that floods sessions therefore evicts only
    its own windows, never another sender's; what an evicted window forgets, the message's
    expiry or the opener's ``max_age`` must cover (SPEC.md section 7, step 10).
    """

    def __init__(
        self, window: int = 4096, max_sessions: int = 100_000, max_sessions_per_sender: int = 1024
    ) -> None:
        if window < 1 or max_sessions < 1 or max_sessions_per_sender < 1:
            raise ValueError("window and session limits must be positive")
        self.window = window
        self.max_sessions = max_sessions
        self.max_sessions_per_sender = max_sessions_per_sender
        self._senders: dict[Hashable, OrderedDict[Hashable, ReplayWindow]] = {}
        self._count = 0

    def _window(self, sender: Hashable, session: Hashable) -> ReplayWindow | None:
        sessions = self._senders.get(sender)
        return None if sessions is None else sessions.get(session)

    def check(self, sender: Hashable, session: Hashable, seq: int) -> Seen:
        w = self._window(sender, session)
        return Seen.NEW if w is None else w.check(seq)

    def mark(self, sender: Hashable, session: Hashable, seq: int) -> None:
        sessions = self._senders.setdefault(sender, OrderedDict())
        w = sessions.get(session)
        if w is None:
            w = sessions[session] = ReplayWindow(self.window)
            self._count += 1
            if len(sessions) > self.max_sessions_per_sender:
                self._evict(sender)
            if self._count > self.max_sessions:
                self._evict(max(self._senders, key=lambda k: len(self._senders[k])))
        else:
            sessions.move_to_end(session)
        w.mark(seq)

    def unmark(self, sender: Hashable, session: Hashable, seq: int) -> None:
        w = self._window(sender, session)
        if w is not None:
            w.unmark(seq)

    def _evict(self, sender: Hashable) -> None:
        sessions = self._senders[sender]
        sessions.popitem(last=False)
        self._count -= 1
        if not sessions:
            del self._senders[sender]
