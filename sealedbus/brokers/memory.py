"""An in-memory broker: the embedded default and the shipped test double.

Topics are append-only logs. Each consumer group reads a topic once, at least once: a record
handed out by ``poll`` stays in flight until ``ack``; ``nack`` (or closing the subscription)
puts it back for the group's next ``poll``. Thread-safe; ``poll`` can block with a timeout.

``MemoryProducer`` and ``MemoryConsumer`` seal and open on top of it with the same contract as the
RabbitMQ and Kafka adapters: duplicates are acknowledged and counted, never delivered; messages
that do not open go to a dead-letter topic (``<topic>.dlq`` unless configured) with the reason in
the ``x-sealedbus-reason`` header; ``KeyServiceUnavailable`` (or a refusal of this reader, such
as ``AccessDenied``) puts the records back and is raised, never dead-letters them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from sealedbus.brokers._common import (
    KeyTokenizer,
    OpenedRecord,
    check_bound_key,
    check_headers,
    dead_letter_headers,
    is_duplicate,
    reader_refusal,
    report_dead_letter,
    tokenize_key,
)
from sealedbus.core.envelope import HeaderValue
from sealedbus.errors import ConfigurationError, InvalidEnvelope, SealedbusError
from sealedbus.opener import OpenedMessage, Opener
from sealedbus.sealer import Sealed, Sealer


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
                    out.append(
                        Record(
                            r.topic,
                            r.offset,
                            r.value,
                            r.key,
                            r.headers,
                            r.timestamp,
                            redelivered=True,
                        )
                    )
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


class MemoryProducer:
    """Seals each message and appends it to a ``MemoryBus`` topic.

    One signature per message by default. With ``batch=True`` messages join the sealer's Merkle
    batch and are appended together, in order, once it holds ``Sealer.batch_size`` messages or on
    ``flush()``; ``send`` then returns the offset of the last record appended (-1 when the message
    is still waiting). Give a batching producer a ``Sealer`` of its own and ``flush()`` when done.
    """

    def __init__(
        self,
        bus: MemoryBus,
        sealer: Sealer,
        *,
        key_tokenizer: KeyTokenizer | None = None,
        batch: bool = False,
    ) -> None:
        self.bus = bus
        self.sealer = sealer
        self.key_tokenizer = key_tokenizer
        self.batch = batch

    def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        content_type: str = "",
        ttl: float | None = None,
        subject: str | None = None,
    ) -> int:
        """Seal ``value`` with ``headers`` for ``topic`` and publish it; returns the offset.
        ``subject``: seal it for a data subject, erasable on its own (``Sealer.seal``)."""
        clear_key, sealed_headers = tokenize_key(
            self.key_tokenizer, topic, key, check_headers(headers)
        )
        if not self.batch:
            data = self.sealer.seal(
                topic,
                value,
                headers=sealed_headers,
                content_type=content_type,
                ttl=ttl,
                subject=subject,
            )
            return self.bus.publish(topic, data, key=clear_key)
        ready = self.sealer.add(
            topic,
            value,
            headers=sealed_headers,
            content_type=content_type,
            ttl=ttl,
            context=clear_key,
            subject=subject,
        )
        return self._publish(ready)

    def flush(self) -> int:
        """Append the open batch now; returns the last offset appended (-1 if none)."""
        return self._publish(self.sealer.flush()) if self.batch else -1

    def _publish(self, batch: list[Sealed]) -> int:
        offset = -1
        for sealed in batch:
            if sealed.context is not None and not isinstance(sealed.context, bytes):
                raise ConfigurationError("the sealer's batch holds another adapter's messages")
            offset = self.bus.publish(sealed.topic, sealed.envelope, key=sealed.context)
        return offset


@dataclass(frozen=True, slots=True)
class Delivery(OpenedRecord):
    """An opened message and the record it came in."""

    message: OpenedMessage
    record: Record


class MemoryConsumer:
    """Opens what a consumer group reads from one topic. ``poll`` returns only messages that passed
    every check; ``ack`` them when done, or ``nack`` them to have them delivered again."""

    def __init__(
        self,
        bus: MemoryBus,
        opener: Opener,
        topic: str,
        group: str,
        *,
        dead_letter_topic: str | None = None,
    ) -> None:
        self.bus = bus
        self.opener = opener
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic or f"{topic}.dlq"
        self._sub = bus.subscribe(topic, group)

    def poll(self, timeout: float = 0.0, max_records: int = 500) -> list[Delivery]:
        """Up to ``max_records`` opened messages, waiting at most ``timeout`` seconds for any.

        Raises KeyServiceUnavailable (or another retryable error) when keys cannot be had and
        nothing opened; the records concerned go back to the group. A refusal of this reader
        (AccessDenied: not granted, revoked; Refused, UntrustedResponse) puts back every record
        of this poll, releases the messages already opened in it (so they open again) and is
        raised; nothing is dead-lettered.
        """
        records = self._sub.poll(timeout, max_records)
        out: list[Delivery] = []
        for i, record in enumerate(records):
            try:
                message = self.opener.open(self.topic, record.value)
                try:
                    check_bound_key(message.headers, record.key)
                except InvalidEnvelope as exc:
                    self.opener.release(message)
                    self.opener.metrics.rejected(self.topic, exc.reason.value)
                    raise
            except SealedbusError as exc:
                stop = reader_refusal(self.topic, exc)
                if stop is None and isinstance(exc, InvalidEnvelope):
                    if not is_duplicate(exc):
                        self._dead_letter(record, exc)
                    self._sub.ack(record)
                    continue
                for rest in records[i:]:
                    self._sub.nack(rest)
                if stop is not None and stop.retryable and out:
                    return out
                if stop is None or stop.retryable:
                    raise
                for delivery in out:
                    self.opener.release(delivery.message)
                    self._sub.nack(delivery.record)
                if stop is exc:
                    raise
                raise stop from exc
            out.append(Delivery(message, record))
        return out

    def ack(self, delivery: Delivery) -> None:
        self._sub.ack(delivery.record)

    def nack(self, delivery: Delivery) -> None:
        """Give the message back: it is delivered again (and accepted again) later."""
        self.opener.release(delivery.message)
        self._sub.nack(delivery.record)

    def close(self) -> None:
        """Give back everything not acknowledged (as a broker does when a consumer goes away)."""
        self._sub.close()

    def _dead_letter(self, record: Record, exc: InvalidEnvelope) -> None:
        extra = {k: v.encode() for k, v in dead_letter_headers(self.topic, exc).items()}
        headers = {**record.headers, **extra}
        self.bus.publish(self.dead_letter_topic, record.value, key=record.key, headers=headers)
        report_dead_letter(self.opener, self.topic, exc, record.value)
