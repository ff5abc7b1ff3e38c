"""Sliding replay windows, one per producer session and scope, in bounded maps.

A *scope* is a stretch of the broker inside which a session's messages keep their order: a
Kafka partition (the adapter passes the partition number), or ``None`` for the whole topic (a
RabbitMQ queue, the in-memory bus). Each scope has its own window, so a consumer catching up on
one partition's backlog after another's never finds the older partition's messages "too old"
(SPEC.md section 7, step 10). A message seen in one scope is still a duplicate in every other
scope of its session while it is inside the session's last ``window`` sequence numbers over all
scopes (one more window per session, so the check costs the same for any number of
partitions): a copy moved by the broker to another partition is dropped.

A window can start from a *floor* (state carried over from before a restart or a rebalance): the
sequence numbers at or below it count as opened in that scope, but only there, since the floor
says nothing about which exact numbers were opened.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from enum import Enum
from functools import lru_cache


class Seen(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    TOO_OLD = "too_old"


@lru_cache(maxsize=4096)  # asked per message (Kafka's replay state, floors) of few sessions
def session_digest(cert_id: bytes, epoch: int, session_id: bytes) -> bytes:
    """8 bytes naming a producer session of a topic in carried-over replay state (a collision
    needs 2**32 sessions at once; it could only make a message look already opened)."""
    h = hashlib.sha256(b"sealedbus/1 replay session\x00")
    h.update(cert_id)
    h.update(epoch.to_bytes(8, "big"))
    h.update(session_id)
    return h.digest()[:8]


class ReplayWindow:
    """Sequence numbers seen for one session: the highest, and a bitmap of the ``size`` below it.
    ``floor``: sequence numbers at or below it count as seen (carried-over state), though only
    ``check(..., exact=True)`` callers learn that they were not seen here exactly."""

    __slots__ = ("_bits", "_highest", "floor", "size")

    def __init__(self, size: int, floor: int = -1) -> None:
        self.size = size
        self._highest = floor
        self._bits = 0  # bit i set: sequence (highest - i) was seen
        self.floor = floor

    def check(self, seq: int, exact: bool = False) -> Seen:
        if seq > self._highest:
            return Seen.NEW
        offset = self._highest - seq
        if offset >= self.size:
            return Seen.TOO_OLD
        if self._bits >> offset & 1 or (not exact and seq <= self.floor):
            return Seen.DUPLICATE
        return Seen.NEW

    def mark(self, seq: int) -> None:
        """Record ``seq`` (call only after ``check`` returned NEW)."""
        if seq > self._highest:
            shift = seq - self._highest  # a jump past the window forgets it: no jump-wide bitmap
            self._bits = (self._bits << shift) | 1 if shift < self.size else 1
            self._highest = seq
            if self._bits.bit_length() > 2 * self.size:  # trim now and then, not on every mark
                self._bits &= (1 << self.size) - 1
        elif self._highest - seq < self.size:  # below the window: nothing to remember
            self._bits |= 1 << (self._highest - seq)

    def unmark(self, seq: int) -> None:
        """Forget ``seq`` again (the application did not take the message; it will come back)."""
        offset = self._highest - seq
        if 0 <= offset < self.size:
            self._bits &= ~(1 << offset)

    def lift(self, floor: int) -> None:
        """Count everything at or below ``floor`` as seen (state handled elsewhere meanwhile)."""
        if floor <= self.floor:
            return
        self.floor = floor
        if floor > self._highest:
            shift = floor - self._highest
            self._bits = self._bits << shift if shift < self.size else 0
            self._highest = floor


_Scopes = dict[Hashable, ReplayWindow]
_EVERY = ("sealedbus every scope",)  # the window over all scopes of a session (never a scope)


class ReplayGuard:
    """Replay windows per producer session and scope, grouped by sender (a topic and a
    certificate).

    Memory is bounded twice: each sender keeps at most ``max_sessions_per_sender`` sessions (its
    least recently used go first), and all senders together at most ``max_sessions`` windows
    (taken from the sender holding the most). A producer that floods sessions therefore evicts
    only its own windows, never another sender's; what an evicted window forgets, the message's
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
        self._senders: dict[Hashable, OrderedDict[Hashable, _Scopes]] = {}
        self._count = 0  # windows held, over every sender, session and scope

    def _scopes(self, sender: Hashable, session: Hashable) -> _Scopes | None:
        sessions = self._senders.get(sender)
        return None if sessions is None else sessions.get(session)

    def check(
        self,
        sender: Hashable,
        session: Hashable,
        seq: int,
        scope: Hashable = None,
        floor: int = -1,
    ) -> Seen:
        """Whether ``seq`` of this session was opened in ``scope`` (or, exactly, in another
        scope). ``floor`` seeds a window this guard does not hold yet (see ``mark``)."""
        scopes = self._scopes(sender, session)
        if scopes is None:
            return ReplayWindow(self.window, floor).check(seq) if floor >= 0 else Seen.NEW
        own = scopes.get(scope)
        if own is not None:
            own.lift(floor)
            seen = own.check(seq)
        else:
            seen = ReplayWindow(self.window, floor).check(seq) if floor >= 0 else Seen.NEW
        every = scopes.get(_EVERY)
        if (
            seen is Seen.NEW
            and every is not None
            and every.check(seq, exact=True) is Seen.DUPLICATE
        ):
            return Seen.DUPLICATE  # opened in another scope: a copy moved there
        return seen

    def mark(
        self,
        sender: Hashable,
        session: Hashable,
        seq: int,
        scope: Hashable = None,
        floor: int = -1,
    ) -> None:
        """Record ``seq`` as opened in ``scope``; a new window starts at ``floor``."""
        sessions = self._senders.setdefault(sender, OrderedDict())
        scopes = sessions.get(session)
        if scopes is None:
            scopes = sessions[session] = {}
            if len(sessions) > self.max_sessions_per_sender:
                self._evict(sender)
        else:
            sessions.move_to_end(session)
        w = scopes.get(scope)
        if w is None:
            w = scopes[scope] = ReplayWindow(self.window, floor)
            self._count += 1
        else:
            w.lift(floor)
        w.mark(seq)
        if scope is not None:
            every = scopes.get(_EVERY)
            if every is None:
                every = scopes[_EVERY] = ReplayWindow(self.window)
                self._count += 1
            every.mark(seq)
        if self._count > self.max_sessions:
            self._evict(max(self._senders, key=lambda k: len(self._senders[k])))

    def admit(
        self,
        sender: Hashable,
        session: Hashable,
        seq: int,
        scope: Hashable = None,
        floor: int = -1,
    ) -> Seen:
        """``check``, then ``mark`` when it was NEW: one step, as an opener takes it. The usual
        case (a window held, ``seq`` past everything seen, no floor to lift) costs a few lookups."""
        sessions = self._senders.get(sender)
        scopes = None if sessions is None else sessions.get(session)
        if scopes is not None and self._count <= self.max_sessions:  # else mark evicts
            own, every = scopes.get(scope), scopes.get(_EVERY)
            if (
                own is not None
                and floor <= own.floor
                and seq > own._highest
                and (every is None or seq > every._highest)
                and (scope is None or every is not None)
            ):
                sessions.move_to_end(session)  # type: ignore[union-attr]
                own.mark(seq)
                if scope is not None:
                    every.mark(seq)  # type: ignore[union-attr]
                return Seen.NEW
        seen = self.check(sender, session, seq, scope, floor)
        if seen is Seen.NEW:
            self.mark(sender, session, seq, scope, floor)
        return seen

    def unmark(self, sender: Hashable, session: Hashable, seq: int, scope: Hashable = None) -> None:
        scopes = self._scopes(sender, session)
        if scopes is None:
            return
        for key in (scope, _EVERY) if scope is not None else (scope,):
            w = scopes.get(key)
            if w is not None:
                w.unmark(seq)

    def _evict(self, sender: Hashable) -> None:
        sessions = self._senders[sender]
        _, scopes = sessions.popitem(last=False)
        self._count -= len(scopes)
        if not sessions:
            del self._senders[sender]
