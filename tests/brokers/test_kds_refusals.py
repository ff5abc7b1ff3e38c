"""Issue 15.1 and issue 8's notes, with the real KDS (app, service and SQLite store, reached
through KeyServiceClient) and the real brokers: a consumer whose key may not read the topic
(not granted, or revoked) raises, dead-letters nothing and leaves every message for the right
consumer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sealedbus.errors import AccessDenied, KeyServiceError, KeyServiceUnavailable
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.brokers.drivers import WAIT, Driver
from tests.clock import Clock
from tests.kds._harness import AsgiTransport, Kds, running_kds


@pytest.fixture
def kds(tmp_path: Path) -> Iterator[Kds]:
    with running_kds(tmp_path, Clock(time.time())) as k:  # brokers and sealers read the real clock
        yield k


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


class Switch(httpx.BaseTransport):
    """A transport to the KDS that can be cut: while ``down``, every request fails to connect
    (as when the KDS process is gone)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.down = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)


@pytest.mark.kafka
def test_junk_during_a_kds_outage_holds_only_its_partition(kds: Kds, kafka_driver: Driver) -> None:
    """Issue 9.3 with the real KDS client: an envelope from a sender the consumer has not seen
    must wait for the KDS; the cached-key messages of the other partitions keep flowing."""
    from kafka import KafkaProducer

    from sealedbus.brokers.kafka import SealedKafkaProducer
    from tests.brokers._support import drain_all
    from tests.brokers.drivers import KafkaDriver, KafkaReceiver

    assert isinstance(kafka_driver, KafkaDriver)
    bootstrap = kafka_driver.bootstrap
    topic = kafka_driver.new_topic()
    kds.admin.create_topic(topic, producers=["p", "stranger"], consumers=["c"])
    switch = Switch(AsgiTransport(kds.app))
    cut = httpx.Client(transport=switch, base_url="http://testserver")
    consumer_keys = kds.member("c", http=cut, outage_backoff=0.2)
    producer = SealedKafkaProducer(
        KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5), Sealer(kds.member("p"))
    )
    stranger = SealedKafkaProducer(
        KafkaProducer(bootstrap_servers=bootstrap), Sealer(kds.member("stranger"))
    )
    receiver = KafkaReceiver(bootstrap, topic, Opener(consumer_keys))
    try:
        producer.send(topic, b"-1", partition=1).get(timeout=WAIT)
        assert drain_all(receiver, 1, WAIT) == [-1]  # the consumer now holds p's keys
        switch.down = True
        stranger.send(topic, b"1000", partition=0).get(timeout=WAIT)  # unknown to the consumer
        for i in range(300):
            producer.send(topic, f"{i}".encode(), partition=i % 2 + 1)
        producer.send(topic, b"2000", partition=0)
        producer.flush(timeout=WAIT)
        got: list[int] = []
        waits = 0
        deadline = time.monotonic() + WAIT
        while len(got) < 300 and time.monotonic() < deadline:
            try:
                drain_all(receiver, 300 - len(got), 2.0, into=got)
            except KeyServiceUnavailable:
                waits += 1
        assert sorted(got) == list(range(300))
        print(f"KeyServiceUnavailable raised {waits} time(s) while the others flowed")
        switch.down = False
        rest: list[int] = []
        deadline = time.monotonic() + WAIT
        while len(rest) < 2 and time.monotonic() < deadline:
            try:
                drain_all(receiver, 2 - len(rest), 2.0, into=rest)
            except KeyServiceUnavailable:  # a retry inside the client's outage backoff
                time.sleep(0.2)
    finally:
        receiver.close()
        producer.close(timeout=WAIT)
        stranger.close(timeout=WAIT)
        cut.close()
    assert rest == [1000, 2000]
    assert kafka_driver.dead_letters(topic) == []
