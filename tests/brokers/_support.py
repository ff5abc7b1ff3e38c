"""Helpers the broker tests share (imported, never collected): the world one contract test runs
in, a metrics recorder, key sources that fail on purpose, and small per-broker helpers. Nothing
here imports pika or kafka at module level: the in-memory bus tests need neither."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sealedbus.core.signed import Certificate
from sealedbus.errors import KeyServiceUnavailable
from sealedbus.keys.local import LocalKeyService, LocalMember
from sealedbus.keys.source import EpochKeys
from sealedbus.metrics import NoMetrics
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.brokers.drivers import WAIT, Driver, KafkaReceiver, Receiver, Sender

if TYPE_CHECKING:
    from sealedbus.brokers.rabbitmq import SealedChannel


class RecordingMetrics(NoMetrics):
    """A thread-safe Metrics that counts what it is told (the reports it does not count, it
    drops as NoMetrics does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()

    def _add(self, kind: str, detail: str, n: int = 1) -> None:
        with self._lock:
            self.counts[(kind, detail)] += n

    def sealed(self, topic: str, count: int, payload_bytes: int, seconds: float) -> None:
        self._add("sealed", "", count)

    def opened(self, topic: str, payload_bytes: int, seconds: float) -> None:
        self._add("opened", "")

    def rejected(self, topic: str, reason: str) -> None:
        self._add("rejected", reason)

    def dead_lettered(self, topic: str, reason: str) -> None:
        self._add("dead_lettered", reason)

    def session_started(self, topic: str) -> None:
        self._add("session", "")

    def rejections(self) -> dict[str, int]:
        with self._lock:
            return {d: n for (k, d), n in self.counts.items() if k == "rejected"}


@dataclass
class World:
    """One fresh topic on one broker, with keys for a producer and a consumer."""

    driver: Driver
    keys: LocalKeyService
    producer: LocalMember
    consumer: LocalMember
    topic: str
    metrics: RecordingMetrics = field(default_factory=RecordingMetrics)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def sealer(self, **kwargs: object) -> Sealer:
        return Sealer(self.producer, **kwargs)  # type: ignore[arg-type]

    def opener(self, **kwargs: object) -> Opener:
        return Opener(self.consumer, metrics=self.metrics, **kwargs)  # type: ignore[arg-type]

    def sender(self, sealer: Sealer | None = None, topic: str | None = None) -> Sender:
        s = self.driver.sender(topic or self.topic, sealer or self.sealer())
        self._closers.append(s.close)
        return s

    def receiver(self, opener: Opener | None = None, topic: str | None = None) -> Receiver:
        r = self.driver.receiver(topic or self.topic, opener or self.opener())
        self._closers.append(r.close)
        return r

    def new_topic(self, producers: tuple[str, ...] = ("producer",)) -> str:
        topic = self.driver.new_topic()
        self.keys.create_topic(topic, producers=producers, consumers=["consumer"])
        return topic

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def make_world(driver: Driver) -> World:
    keys = LocalKeyService()
    producer, consumer = keys.enroll("producer"), keys.enroll("consumer")
    topic = driver.new_topic()
    keys.create_topic(topic, producers=["producer"], consumers=["consumer"])
    return World(driver, keys, producer, consumer, topic)


class FlakyKeys:
    """A key source whose epoch keys are unavailable the first ``failures`` times."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def member(self) -> str:
        return str(self.inner.member)

    def epoch_keys(self, topic: str, epoch: int, now_ms: int) -> EpochKeys:
        if self.failures:
            self.failures -= 1
            raise KeyServiceUnavailable("the key service is down")
        result: EpochKeys = self.inner.epoch_keys(topic, epoch, now_ms)
        return result


class OutageKeys:
    """The consumer's key source while the KDS is down: what is cached keeps working, anything
    new raises KeyServiceUnavailable (as KeyServiceClient does past its caches)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.certs: set[bytes] = set()
        self.epochs: set[tuple[str, int]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def member(self) -> str:
        return str(self.inner.member)

    def sender_certificate(self, cert_id: bytes, now_ms: int) -> Certificate | None:
        if self.down and cert_id not in self.certs:
            raise KeyServiceUnavailable("the key service is down")
        self.certs.add(cert_id)
        cert: Certificate | None = self.inner.sender_certificate(cert_id, now_ms)
        return cert

    def epoch_keys(self, topic: str, epoch: int, now_ms: int) -> EpochKeys:
        if self.down and (topic, epoch) not in self.epochs:
            raise KeyServiceUnavailable("the key service is down")
        self.epochs.add((topic, epoch))
        keys: EpochKeys = self.inner.epoch_keys(topic, epoch, now_ms)
        return keys


# -- RabbitMQ and Kafka -------------------------------------------------------------------------


def producer(world: World, connection: Any) -> SealedChannel:
    from sealedbus.brokers.rabbitmq import SealedChannel

    channel = SealedChannel(connection.channel(), sealer=world.sealer())
    channel.confirm_delivery()
    return channel


def consumer(world: World, connection: Any, opener: Opener | None = None) -> SealedChannel:
    from sealedbus.brokers.rabbitmq import SealedChannel

    return SealedChannel(
        connection.channel(),
        opener=opener or world.opener(),
        dead_letter_exchange=f"{world.topic}.dlx",
    )


def drain(channel: SealedChannel, queue: str, count: int) -> list[tuple[Any, Any, Any]]:
    out: list[tuple[Any, Any, Any]] = []
    for method, props, message in channel.consume(queue, inactivity_timeout=WAIT):
        assert method is not None, "nothing arrived in time"
        out.append((method, props, message))
        if len(out) == count:
            break
    return out


def queued(connection: Any, queue: str) -> int:
    return int(connection.channel().queue_declare(queue, passive=True).method.message_count)


def drain_all(
    receiver: KafkaReceiver, count: int, timeout: float = 120.0, into: list[int] | None = None
) -> list[int]:
    """Take up to ``count`` records (waiting at most ``timeout``); the bodies, in delivery order,
    added to ``into`` as they come (kept when the consumer raises midway). The iterator is kept
    across calls: a record counts as handled once the next is asked for."""
    got: list[int] = [] if into is None else into
    count += len(got)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        if receiver._records is None:
            receiver._records = iter(receiver.consumer)
        try:
            r = next(receiver._records, None)
        except BaseException:
            receiver._records = None
            raise
        if r is None:  # consumer_timeout_ms without records
            receiver._records = None
            continue
        got.append(int(r.value))
    return got
