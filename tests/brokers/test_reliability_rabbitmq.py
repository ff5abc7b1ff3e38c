"""Reliability on a real RabbitMQ broker (issues 9, 8.5 and 15.1): retries after a cut
connection stay duplicates, a dead letter that cannot be delivered is parked rather than retried
forever, a waiting envelope costs the others nothing, a moved routing key is refused. Every
test counts delivered, dead-lettered and duplicated messages exactly, with bounded waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from sealedbus.brokers._common import Undeliverable, UndeliverablePolicy
from sealedbus.brokers.rabbitmq import BatchNotPublished, SealedChannel
from sealedbus.errors import BrokerError, KeyServiceUnavailable, Reason
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.brokers._support import OutageKeys, World, consumer, make_world, producer, queued
from tests.brokers.drivers import WAIT, Driver
from tests.brokers.faults import CutProxy

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def world(rabbit_driver: Driver) -> Iterator[World]:
    w = make_world(rabbit_driver)
    yield w
    w.close()


@pytest.fixture
def connect(amqp_url: str) -> Iterator[Any]:
    made: list[Any] = []

    def open_connection(url: str = amqp_url) -> Any:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        made.append(connection)
        return connection

    yield open_connection
    for connection in made:
        if connection.is_open:
            connection.close()


def take(
    channel: SealedChannel, queue: str, timeout: float = 3.0, into: list[bytes] | None = None
) -> list[bytes]:
    """Everything that arrives until ``timeout`` seconds pass without a delivery (acked), added
    to ``into`` as it comes (kept when the consumer raises midway)."""
    out = [] if into is None else into
    for method, _, message in channel.consume(queue, inactivity_timeout=timeout):
        if method is None or message is None:
            break
        out.append(message.body)
        channel.basic_ack(method.delivery_tag)
    channel.cancel()
    return out


# -- issue 9.4: a republish after a connection cut ----------------------------------------------


def test_republish_after_a_lost_confirm_is_dropped_as_a_duplicate(
    world: World, connect: Any, amqp_url: str
) -> None:
    parts = urlsplit(amqp_url)
    proxy = CutProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    try:
        via_proxy = urlunsplit(
            parts._replace(netloc=f"{parts.netloc.split('@')[0]}@127.0.0.1:{proxy.port}")
        )
        pub = producer(world, connect(via_proxy))
        for i in range(3):
            pub.basic_publish(world.topic, "", f"m{i}".encode(), ref=f"order-{i}")
        proxy.swallow_replies()  # the broker gets m3, its confirm never comes back...
        threading.Timer(1.0, proxy.cut).start()  # ...and the connection drops
        with pytest.raises(BatchNotPublished) as lost:
            pub.basic_publish(world.topic, "", b"m3", ref="order-3")
    finally:
        proxy.close()
    assert lost.value.retryable
    assert [u.ref for u in lost.value.unpublished] == ["order-3"]  # the application's own id
    again = producer(world, connect())  # a new connection
    again.republish(lost.value.unpublished)  # the same sealed bytes, not sealed again
    connection = connect()
    assert queued(connection, f"{world.topic}.q") == 5  # m3 reached the broker twice
    got = take(consumer(world, connection), f"{world.topic}.q")
    assert sorted(got) == [b"m0", b"m1", b"m2", b"m3"]  # delivered once each
    assert world.metrics.rejections() == {"duplicate": 1}
    assert world.driver.dead_letters(world.topic) == []


# -- issue 9.3: a dead letter that cannot be delivered ------------------------------------------


def test_an_undeliverable_dead_letter_is_parked_and_skipped_not_requeued_forever(
    world: World, connect: Any, tmp_path: Path
) -> None:
    connection = connect()
    nowhere = f"{world.topic}.dlx-unbound"
    connection.channel().exchange_declare(nowhere, "fanout")  # no queue: mandatory fails
    world.driver.send_raw(world.topic, b"junk")
    pub = producer(world, connection)
    for i in range(3):
        pub.basic_publish(world.topic, "", f"m{i}".encode())
    parked: list[Undeliverable] = []
    sub = SealedChannel(
        connection.channel(),
        opener=world.opener(),
        dead_letter_exchange=nowhere,
        declare_dead_letter=False,
        undeliverable=UndeliverablePolicy(attempts=3, park_dir=tmp_path, on_park=parked.append),
    )
    got: list[bytes] = []
    raised = 0
    deadline = time.monotonic() + WAIT
    while (len(got) < 3 or sub.skipped < 1) and time.monotonic() < deadline:
        try:
            take(sub, f"{world.topic}.q", 1.0, into=got)
        except BrokerError as exc:  # retried, then parked: retryable for the application
            assert exc.retryable
            raised += 1
    assert sorted(got) == [b"m0", b"m1", b"m2"]
    assert raised == 2  # attempts - 1 times back to the queue, then parked
    assert sub.skipped == 1 and [p.reason for p in parked] == [Reason.NOT_ENVELOPE.value]
    assert len(list(tmp_path.iterdir())) == 2  # the value and its .reason
    assert queued(connection, f"{world.topic}.q") == 0


# -- issue 9.3: the waiting envelope costs the others nothing -----------------------------------


def test_a_requeued_waiting_envelope_costs_the_others_nothing(world: World, connect: Any) -> None:
    keys = OutageKeys(world.consumer)
    stranger = world.keys.enroll("stranger")
    world.keys.set_policy(world.topic, producers=["producer", "stranger"], consumers=["consumer"])
    connection = connect()
    pub = producer(world, connection)
    pub.basic_publish(world.topic, "", b"-1")
    sub = consumer(world, connection, Opener(keys, metrics=world.metrics))
    sub.channel.basic_qos(prefetch_count=50)
    assert take(sub, f"{world.topic}.q", 1.0) == [b"-1"]  # this sender's keys are cached now
    keys.down = True
    waiting = SealedChannel(connection.channel(), sealer=Sealer(stranger))
    waiting.confirm_delivery()
    waiting.basic_publish(world.topic, "", b"1000")  # its sender needs the KDS
    for i in range(300):
        pub.basic_publish(world.topic, "", f"{i}".encode())
    got: list[bytes] = []
    requeued = 0
    deadline = time.monotonic() + WAIT
    while len(got) < 300 and time.monotonic() < deadline:
        try:
            take(sub, f"{world.topic}.q", 0.5, into=got)
        except KeyServiceUnavailable:  # requeued; the consumer's prefetched others go on
            requeued += 1
    assert sorted(int(b) for b in got) == list(range(300))
    assert requeued >= 1
    keys.down = False
    got += take(sub, f"{world.topic}.q", 1.0)
    print(f"waiting envelope requeued {requeued} times; others delivered: {len(got) - 1}")
    assert requeued <= 20  # about once per prefetched window (50): no spin
    assert len(got) == 301 and got[-1] == b"1000"
    assert world.driver.dead_letters(world.topic) == []
    assert world.metrics.rejections() == {}


# -- issue 8.5: the routing key is authenticated ------------------------------------------------


def test_delivery_under_another_routing_key_is_refused(world: World, connect: Any) -> None:
    connection = connect()
    pub = producer(world, connection)
    pub.basic_publish(world.topic, "alice", b"for alice")
    ch = connection.channel()
    method, props, envelope = ch.basic_get(f"{world.topic}.tap", auto_ack=True)
    assert method is not None and method.routing_key == "alice"
    ch.queue_purge(f"{world.topic}.q")
    ch.basic_publish(world.topic, "bob", envelope, props)  # the broker moves it to bob
    pub.basic_publish(world.topic, "carol", b"for carol")
    sub = consumer(world, connection)
    got = []
    for m, _, message in sub.consume(f"{world.topic}.q", inactivity_timeout=2.0):
        if m is None or message is None:
            break
        got.append((m.routing_key, message.body, message.headers))
        sub.basic_ack(m.delivery_tag)
    assert got == [("carol", b"for carol", {})]  # reserved headers are not shown
    assert [r for r, _ in world.driver.dead_letters(world.topic)] == [Reason.BAD_SIGNATURE.value]
