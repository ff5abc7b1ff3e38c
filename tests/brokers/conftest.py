"""Fixtures for the broker tests: one driver per broker (real RabbitMQ and Kafka come from
``-p tests.services``) and a world on each (``_support.World``: a key service with one producer
and one consumer, a metrics recorder)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.brokers._support import World, make_world
from tests.brokers.drivers import Driver, MemoryDriver


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
REAL_BROKERS = DRIVERS[1:]


@pytest.fixture(params=REAL_BROKERS)
def driver(request: pytest.FixtureRequest) -> Driver:
    """Each real broker in turn (tests of what a real client library does, or of a real KDS)."""
    d: Driver = request.getfixturevalue(request.param)
    return d


@pytest.fixture(params=DRIVERS)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    w = make_world(request.getfixturevalue(request.param))
    yield w
    w.close()
