"""Fixtures for the broker tests: a key service with one producer and one consumer, a metrics
recorder, and one driver per broker (real RabbitMQ and Kafka come from ``-p tests.services``)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from sealedbus.keys.local import LocalKeyService, LocalMember
from sealedbus.metrics import NoMetrics
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.brokers.drivers import Driver, MemoryDriver, Receiver, Sender


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


@pytest.fixture(scope="session")
def memory_driver() -> MemoryDriver:
    return MemoryDriver()


@pytest.fixture(scope="session")
def rabbit_driver(amqp_url: str) -> Iterator[Driver]:
    from tests.brokers.drivers import RabbitDriver

    driver = RabbitDriver(amqp_url)
    yield driver
    driver.close()


@pytest.fixture(scope="session")
def kafka_driver(kafka_bootstrap: str) -> Iterator[Driver]:
    from tests.brokers.drivers import KafkaDriver

    driver = KafkaDriver(kafka_bootstrap)
    yield driver
    driver.close()


DRIVERS = [
    pytest.param("memory_driver", id="memory"),
    pytest.param("rabbit_driver", id="rabbitmq", marks=pytest.mark.rabbitmq),
    pytest.param("kafka_driver", id="kafka", marks=pytest.mark.kafka),
]


def make_world(driver: Driver) -> World:
    keys = LocalKeyService()
    producer, consumer = keys.enroll("producer"), keys.enroll("consumer")
    topic = driver.new_topic()
    keys.create_topic(topic, producers=["producer"], consumers=["consumer"])
    return World(driver, keys, producer, consumer, topic)


@pytest.fixture(params=DRIVERS)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    w = make_world(request.getfixturevalue(request.param))
    yield w
    w.close()
