"""An in-memory broker: the embedded default and the shipped test double.

Topics are append-only logs. Each consumer group reads a topic once, at least once: a record
handed out by ``poll`` stays in flight until ``ack``; ``nack`` (or closing the subscription)
puts it back for the group's next ``poll``. Thread-safe; ``poll`` can block with a timeout.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Record:
    """One message as the broker holds it."""

    topic: str
    offset: int
    value: bytes
    key: bytes | None = None
    headers: dict[str, bytes] = field(default_factory=dict)
    timestamp: float = 0.0
    redelivered: bool = False


@dataclass
class _Group:
    next_offset: int = 0
    retry: deque[int] = field(default_factory=deque)
    in_flight: set[int] = field(default_factory=set)


class MemoryBus:
    """Thread-safe topics with any number of consumer groups and at-least-once delivery."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._logs: dict[str, list[Record]] = {}
        self._groups: dict[tuple[str, str], _Group] = {}

    def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: dict[str, bytes] | None = None,
    ) -> int:
        """Append a record; returns its offset."""
        with self._cond:
            log = self._logs.setdefault(topic, [])
            log.append(Record(topic, len(log), bytes(value), key, dict(headers or {}), time.time()))
            self._cond.notify_all()
            return len(log) - 1

    def records(self, topic: str) -> list[Record]:
        """Everything the broker holds for ``topic`` (what an operator or a backup would see)."""
        with self._cond:
            return list(self._logs.get(topic, ()))

    def subscribe(self, topic: str, group: str) -> Subscription:
        """Join ``group`` on ``topic``; members of one group share its records."""
        with self._cond:
            self._groups.setdefault((topic, group), _Group())
        return Subscription(self, topic, group)

    def _poll(self, topic: str, group: str, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        with self._cond:
            g = self._groups[(topic, group)]
            while True:
                log = self._logs.get(topic, [])
                out: list[Record] = []
                while g.retry and len(out) < max_records:
                    off = g.retry.popleft()
                    g.in_flight.add(off)
                    r = log[off]
                    out.append(Record(r.topic, r.offset, r.value, r.key, r.headers, r.timestamp,
                                      redelivered=True))
                while g.next_offset < len(log) and len(out) < max_records:
                    g.in_flight.add(g.next_offset)
                    out.append(log[g.next_offset])
                    g.next_offset += 1
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._cond.wait(remaining)

    def _settle(self, topic: str, group: str, offset: int, *, requeue: bool) -> None:
        with self._cond:
            g = self._groups[(topic, group)]
            if offset not in g.in_flight:
                raise ValueError(f"record {offset} of {topic!r} is not in flight for {group!r}")
            g.in_flight.discard(offset)
            if requeue:
                g.retry.append(offset)
                self._cond.notify_all()

    def lag(self, topic: str, group: str) -> int:
        """Records of ``topic`` not yet acknowledged by ``group``."""
        with self._cond:
            g = self._groups[(topic, group)]
            return len(self._logs.get(topic, ())) - g.next_offset + len(g.retry) + len(g.in_flight)


class Subscription:
    """One consumer's handle on a group. Not shared between threads (make one per thread)."""

    def __init__(self, bus: MemoryBus, topic: str, group: str) -> None:
        self.bus = bus
        self.topic = topic
        self.group = group
        self._mine: set[int] = set()

    def poll(self, timeout: float = 0.0, max_records: int = 500) -> list[Record]:
        records = self.bus._poll(self.topic, self.group, max_records, timeout)
        self._mine.update(r.offset for r in records)
        return records

    def ack(self, record: Record) -> None:
        self.bus._settle(self.topic, self.group, record.offset, requeue=False)
        self._mine.discard(record.offset)

    def nack(self, record: Record) -> None:
        """Give the record back; the group sees it again on its next poll."""
        self.bus._settle(self.topic, self.group, record.offset, requeue=True)
        self._mine.discard(record.offset)

    def close(self) -> None:
        """Give back everything still in flight (as a broker does when a consumer dies)."""
        for offset in sorted(self._mine):
            self.bus._settle(self.topic, self.group, offset, requeue=True)
        self._mine.clear()
