"""Issue 15.1 and issue 8's notes, with the real KDS (app, service and SQLite store, reached
through KeyServiceClient) and the real brokers: a consumer whose key may not read the topic
(not granted, or revoked) raises, dead-letters nothing and leaves every message for the right
consumer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealedbus.errors import AccessDenied, KeyServiceError
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.brokers.drivers import WAIT, Driver
from tests.kds._harness import Clock, Kds, make_kds

DRIVERS = [
    pytest.param("rabbit_driver", id="rabbitmq", marks=pytest.mark.rabbitmq),
    pytest.param("kafka_driver", id="kafka", marks=pytest.mark.kafka),
]


@pytest.fixture
def kds(tmp_path: Path) -> Iterator[Kds]:
    k = make_kds(tmp_path, clock=Clock(time.time()))  # brokers and sealers read the real clock
    yield k
    for client in k.clients:
        client.close()
    k.http.close()
    k.store.dispose()


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> Driver:
    d: Driver = request.getfixturevalue(request.param)
    return d


@pytest.mark.parametrize("refusal", ["not_granted", "revoked"])
def test_a_refused_consumer_leaves_every_message_for_the_right_one(
    kds: Kds, driver: Driver, refusal: str
) -> None:
    topic = driver.new_topic()
    kds.admin.create_topic(topic, producers=["p"], consumers=["c", "c2"])
    producer, right = kds.member("p"), kds.member("c")
    if refusal == "not_granted":
        wrong = kds.member("outsider")  # enrolled, but not among the topic's consumers
    else:
        wrong = kds.member("c2")
        kds.admin.revoke("c2")
    sender = driver.sender(topic, Sealer(producer))
    try:
        for i in range(5):
            sender.send(f"{i}".encode(), key=b"k")
    finally:
        sender.close()
    receiver = driver.receiver(topic, Opener(wrong))
    try:
        deadline = time.monotonic() + WAIT
        with pytest.raises(KeyServiceError) as refused:
            while time.monotonic() < deadline:
                assert receiver.poll_once() == []
        if refusal == "not_granted":
            assert isinstance(refused.value, AccessDenied)
            assert "may not read" in str(refused.value)
    finally:
        receiver.close()
    assert driver.dead_letters(topic) == []
    receiver = driver.receiver(topic, Opener(right))
    try:
        got = receiver.take(5)
    finally:
        receiver.close()
    assert sorted(g.body for g in got) == [f"{i}".encode() for i in range(5)]
    assert driver.dead_letters(topic) == []
