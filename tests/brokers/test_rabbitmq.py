"""RabbitMQ-specific behaviour of ``SealedChannel`` against a real broker."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from sealedbus.brokers._common import SEALED_CONTENT_TYPE
from sealedbus.brokers.rabbitmq import BatchNotPublished, SealedChannel, Unpublished
from sealedbus.core import wire
from sealedbus.errors import (
    AccessDenied,
    BrokerError,
    ConfigurationError,
    KeyServiceUnavailable,
    Reason,
    Refused,
    UntrustedResponse,
)
from sealedbus.keys.source import EpochKeys
from sealedbus.opener import Opener
from tests.brokers._support import FlakyKeys, World, consumer, drain, make_world, producer, queued
from tests.brokers.drivers import WAIT, Driver, RabbitDriver

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def world(rabbit_driver: Driver) -> Iterator[World]:
    w = make_world(rabbit_driver)
    yield w
    w.close()


@pytest.fixture
def connect(amqp_url: str) -> Iterator[Any]:
    made: list[Any] = []

    def open_connection() -> Any:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        made.append(connection)
        return connection

    yield open_connection
    for connection in made:
        if connection.is_open:
            connection.close()


def test_properties_are_sealed_and_expiration_follows_the_envelope(
    world: World, connect: Any
) -> None:
    pub = producer(world, connect())
    props = pika.BasicProperties(
        headers={"patient": "p-1"},
        content_type="application/json",
        expiration="60000",
        correlation_id="c-1",
        delivery_mode=2,
    )
    pub.basic_publish(world.topic, "rk", b'{"x": 1}', props)
    assert props.headers == {"patient": "p-1"} and props.content_type == "application/json"
    raw_method, raw_props, raw_body = pub.channel.basic_get(f"{world.topic}.tap", auto_ack=True)
    assert raw_method is not None
    assert raw_props.headers is None and raw_props.content_type == SEALED_CONTENT_TYPE
    assert raw_props.expiration == "60000" and raw_props.correlation_id == "c-1"
    assert b"p-1" not in raw_body and b'{"x": 1}' not in raw_body

    sub = consumer(world, connect())
    [(method, got_props, message)] = drain(sub, f"{world.topic}.q", 1)
    sub.basic_ack(method.delivery_tag)
    assert message.body == b'{"x": 1}' and message.headers == {"patient": "p-1"}
    assert message.content_type == "application/json"
    assert message.expires_at is not None and message.expires_at - message.sent_at == 60
    assert got_props.correlation_id == "c-1" and method.exchange == world.topic


def test_publisher_confirms_report_unroutable(world: World, connect: Any) -> None:
    connection = connect()
    connection.channel().exchange_declare(f"{world.topic}.nowhere", "direct")
    world.keys.create_topic(f"{world.topic}.nowhere", producers=["producer"])
    pub = producer(world, connection)
    with pytest.raises(BrokerError) as info:
        pub.basic_publish(f"{world.topic}.nowhere", "rk", b"x", mandatory=True)
    assert not info.value.retryable
    assert isinstance(info.value.__cause__, pika.exceptions.UnroutableError)


def test_default_exchange_needs_an_explicit_topic(world: World, connect: Any) -> None:
    connection = connect()
    with pytest.raises(ConfigurationError):
        producer(world, connection).basic_publish("", f"{world.topic}.q", b"x")
    mapped = SealedChannel(connection.channel(), sealer=world.sealer(), topics={"": world.topic})
    mapped.basic_publish("", f"{world.topic}.q", b"via the default exchange")
    sub = SealedChannel(
        connection.channel(),
        opener=world.opener(),
        topics={"": world.topic},
        dead_letter_exchange=f"{world.topic}.dlx",
    )
    [(method, _, message)] = drain(sub, f"{world.topic}.q", 1)
    sub.basic_ack(method.delivery_tag)
    assert message.body == b"via the default exchange"


def test_callback_consumer_and_a_raising_callback_requeues(world: World, connect: Any) -> None:
    pub = producer(world, connect())
    for i in range(3):
        pub.basic_publish(world.topic, "", f"m{i}".encode())
    sub = consumer(world, connect())
    seen: list[bytes] = []

    def on_message(ch: SealedChannel, method: Any, _props: Any, message: Any) -> None:
        if message.body == b"m1" and b"m1" not in seen:
            seen.append(message.body)
            raise RuntimeError("application failed")
        seen.append(message.body)
        ch.basic_ack(method.delivery_tag)
        if len(seen) == 4:
            ch.stop_consuming()

    sub.channel.basic_qos(prefetch_count=1)  # one at a time: the requeued m1 comes back next
    sub.basic_consume(f"{world.topic}.q", on_message)
    with pytest.raises(RuntimeError, match="application failed"):
        sub.start_consuming()
    sub.channel.connection.call_later(WAIT, sub.channel.stop_consuming)  # bound the wait
    sub.start_consuming()
    assert seen == [b"m0", b"m1", b"m1", b"m2"]
    assert world.metrics.rejections() == {}


def test_nack_gives_a_message_back_and_it_is_accepted_again(world: World, connect: Any) -> None:
    producer(world, connect()).basic_publish(world.topic, "", b"again")
    sub = consumer(world, connect())
    [(method, _, message)] = drain(sub, f"{world.topic}.q", 1)
    sub.basic_nack(method.delivery_tag, requeue=True)
    [(method2, _, message2)] = drain(sub, f"{world.topic}.q", 1)
    sub.basic_ack(method2.delivery_tag)
    assert method2.redelivered and message2.body == message.body == b"again"
    assert world.metrics.rejections() == {}


def test_key_service_outage_requeues_instead_of_dead_lettering(world: World, connect: Any) -> None:
    producer(world, connect()).basic_publish(world.topic, "", b"keep me")
    opener = Opener(FlakyKeys(world.consumer, failures=1), metrics=world.metrics)
    sub = consumer(world, connect(), opener)
    with pytest.raises(KeyServiceUnavailable):
        drain(sub, f"{world.topic}.q", 1)
    sub.cancel()
    [(method, _, message)] = drain(sub, f"{world.topic}.q", 1)
    sub.basic_ack(method.delivery_tag)
    assert message.body == b"keep me"
    assert world.driver.dead_letters(world.topic) == []


def test_moved_to_another_exchange_is_dead_lettered(world: World, connect: Any) -> None:
    other = world.new_topic()
    producer(world, connect()).basic_publish(world.topic, "", b"for the first exchange")
    raw = connect().channel()
    method, props, body = raw.basic_get(f"{world.topic}.tap", auto_ack=True)
    assert method is not None
    raw.basic_publish(other, "", body, props)  # an operator's shovel, or an attacker
    pub_other = SealedChannel(connect().channel(), sealer=world.sealer())
    pub_other.basic_publish(other, "", b"sentinel")
    sub = SealedChannel(
        connect().channel(), opener=world.opener(), dead_letter_exchange=f"{other}.dlx"
    )
    [(method, _, message)] = drain(sub, f"{other}.q", 1)
    sub.basic_ack(method.delivery_tag)
    assert message.body == b"sentinel"
    dead = world.driver.dead_letters(other)
    assert dead == [(Reason.BAD_SIGNATURE.value, body)]


def test_moved_to_another_routing_key_is_dead_lettered(world: World, connect: Any) -> None:
    """The routing key is sealed into every envelope (``bind_key``) and checked on delivery: a
    broker or shovel re-publishing it under another routing key cannot pass it off as sent
    there. What reaches the application carries only its own headers."""
    pub = producer(world, connect())
    props = pika.BasicProperties(headers={"h": "v"}, content_type="text/plain")
    pub.basic_publish(world.topic, "orders.eu", b"for orders.eu", props)
    raw = connect().channel()
    method, raw_props, body = raw.basic_get(f"{world.topic}.q", auto_ack=True)  # intercepted
    assert method is not None and method.routing_key == "orders.eu"
    raw.confirm_delivery()  # in the queue before the sentinel
    raw.basic_publish(world.topic, "orders.us", body, raw_props)  # same exchange, other key
    pub.basic_publish(world.topic, "orders.eu", b"sentinel", props)
    sub = consumer(world, connect())
    [(method, _, message)] = drain(sub, f"{world.topic}.q", 1)
    sub.basic_ack(method.delivery_tag)
    assert (method.routing_key, message.body, message.headers, message.content_type) == (
        "orders.eu",
        b"sentinel",
        {"h": "v"},
        "text/plain",
    )
    assert world.driver.dead_letters(world.topic) == [(Reason.BAD_SIGNATURE.value, body)]


def test_tls_with_the_test_ca(world: World, amqp_tls: Any) -> None:
    params = pika.URLParameters(amqp_tls.url)
    params.ssl_options = pika.SSLOptions(amqp_tls.ssl_context(), amqp_tls.server_hostname)
    connection = pika.BlockingConnection(params)
    try:
        pub = producer(world, connection)
        pub.basic_publish(world.topic, "", b"over tls")
        sub = consumer(world, connection)
        [(method, _, message)] = drain(sub, f"{world.topic}.q", 1)
        sub.basic_ack(method.delivery_tag)
        assert message.body == b"over tls"
    finally:
        connection.close()
    untrusting = pika.URLParameters(amqp_tls.url)
    untrusting.ssl_options = pika.SSLOptions(ssl.create_default_context(), "localhost")
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError)):
        pika.BlockingConnection(untrusting)  # the broker's certificate is from the test CA


@pytest.mark.slow
def test_broker_restart_mid_stream_loses_nothing_and_repeats_nothing(
    world: World, amqp_url: str, rabbitmq_service: Any
) -> None:
    assert isinstance(world.driver, RabbitDriver)
    total = 300
    queue = f"{world.topic}.q"

    def publish(start: int, stop: int) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        pub = producer(world, connection)
        for i in range(start, stop):
            persistent = pika.BasicProperties(delivery_mode=2)
            pub.basic_publish(world.topic, "", str(i).encode(), persistent)
        connection.close()

    publish(0, total // 2)
    opener = world.opener()  # survives reconnects: its replay window drops redeliveries
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    sub = consumer(world, connection, opener)
    sub.channel.basic_qos(prefetch_count=50)
    handed: list[int] = []
    for method, _, message in sub.consume(queue, inactivity_timeout=WAIT):
        assert method is not None and message is not None
        handed.append(int(message.body))
        if len(handed) <= 80:  # the last 20 are handed over but their acks die with the broker
            sub.basic_ack(method.delivery_tag)
        if len(handed) == 100:
            break

    rabbitmq_service.restart()
    world.driver.reconnect()
    with pytest.raises(BrokerError) as info:
        sub.basic_ack(0, multiple=True)
        drain(sub, queue, 1)
    assert info.value.retryable

    publish(total // 2, total)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        sub = consumer(world, connection, opener)
        for method, _, message in sub.consume(queue, inactivity_timeout=WAIT):
            assert method is not None and message is not None
            handed.append(int(message.body))
            sub.basic_ack(method.delivery_tag)
            if len(handed) == total:
                break
    finally:
        connection.close()
    assert sorted(handed) == list(range(total))  # each exactly once
    rejected = world.metrics.rejections()  # the 20 came back and were dropped as duplicates
    assert set(rejected) == {Reason.DUPLICATE.value} and rejected[Reason.DUPLICATE.value] >= 20


def where(unpublished: list[Unpublished]) -> list[tuple[str, str]]:
    return [(u.exchange, u.routing_key) for u in unpublished]


def batch_producer(world: World, connection: Any, batch_size: int, linger: float) -> SealedChannel:
    return SealedChannel(
        connection.channel(), sealer=world.sealer(batch_size=batch_size), linger=linger
    )


def test_batch_signing_keeps_order_and_flushes_a_partial_batch(world: World, connect: Any) -> None:
    connection = connect()
    pub = batch_producer(world, connection, batch_size=8, linger=WAIT)  # only size or flush()
    for i in range(20):
        pub.basic_publish(world.topic, "", f"m{i}".encode())
    connection.process_data_events(0.2)
    assert queued(connection, f"{world.topic}.tap") == 16  # two full batches; 4 still open
    pub.flush()
    connection.process_data_events(0.2)
    assert queued(connection, f"{world.topic}.tap") == 20

    stored = world.driver.stored(world.topic, 20)
    proofs = [wire.parse(raw).proof for raw in stored]
    assert [p.size for p in proofs if p is not None] == [8] * 16 + [4] * 4
    assert [p.index for p in proofs if p is not None] == [*range(8), *range(8), *range(4)]

    sub = consumer(world, connect())
    got = drain(sub, f"{world.topic}.q", 20)
    sub.basic_ack(0, multiple=True)
    assert [message.body for _, _, message in got] == [f"m{i}".encode() for i in range(20)]
    assert world.metrics.rejections() == {}


def test_batch_linger_closes_a_batch_by_timer_and_at_the_next_publish(
    world: World, connect: Any
) -> None:
    connection = connect()
    pub = batch_producer(world, connection, batch_size=64, linger=0.05)
    for i in range(3):
        pub.basic_publish(world.topic, "", f"t{i}".encode())
    connection.sleep(0.3)  # pika dispatches the linger timer while it pumps events
    assert queued(connection, f"{world.topic}.tap") == 3
    pub.basic_publish(world.topic, "", b"old")
    time.sleep(0.1)  # no event pumping: the age check at the next publish closes the batch
    pub.basic_publish(world.topic, "", b"new")
    assert queued(connection, f"{world.topic}.tap") == 5  # "old" and "new", "new" opened it
    pub.close()
    sub = consumer(world, connect())
    got = drain(sub, f"{world.topic}.q", 5)
    sub.basic_ack(0, multiple=True)
    assert [m.body for _, _, m in got] == [b"t0", b"t1", b"t2", b"old", b"new"]


def test_tampered_batch_member_is_dead_lettered_and_the_rest_open(
    world: World, connect: Any
) -> None:
    connection = connect()
    pub = batch_producer(world, connection, batch_size=4, linger=WAIT)
    for i in range(4):
        pub.basic_publish(world.topic, "", f"b{i}".encode())
    raw = connect().channel()
    raw.queue_purge(f"{world.topic}.q")
    stored = world.driver.stored(world.topic, 4)
    tampered = bytearray(stored[2])
    tampered[-1] ^= 1
    for i, data in enumerate(stored):
        raw.basic_publish(world.topic, "", bytes(tampered) if i == 2 else data)
    sub = consumer(world, connect())
    got = drain(sub, f"{world.topic}.q", 3)
    sub.basic_ack(0, multiple=True)
    assert [m.body for _, _, m in got] == [b"b0", b"b1", b"b3"]
    dead = world.driver.dead_letters(world.topic)
    assert [data for _, data in dead] == [bytes(tampered)]
    assert dead[0][0] in (Reason.BAD_SIGNATURE.value, Reason.DECRYPT_FAILED.value)


def test_negative_linger_is_refused(world: World, connect: Any) -> None:
    with pytest.raises(ConfigurationError):
        SealedChannel(connect().channel(), sealer=world.sealer(), linger=-1)


# -- review fixes -----------------------------------------------------------------------------


class RefusingKeys(FlakyKeys):
    """A key source whose epoch keys fail with ``error`` the first ``failures`` times."""

    def __init__(self, inner: Any, failures: int, error: Exception) -> None:
        super().__init__(inner, failures)
        self.error = error

    def epoch_keys(self, topic: str, epoch: int, now_ms: int) -> EpochKeys:
        if self.failures:
            self.failures -= 1
            raise self.error
        result: EpochKeys = self.inner.epoch_keys(topic, epoch, now_ms)
        return result


def test_a_failed_batch_member_does_not_drop_the_rest(world: World, connect: Any) -> None:
    connection = connect()
    nowhere = world.topic + ".nobind"
    world.driver.admin.exchange_declare(nowhere, "direct")  # type: ignore[attr-defined]
    world.keys.create_topic(nowhere, producers=["producer"], consumers=["consumer"])
    pub = batch_producer(world, connection, batch_size=4, linger=60.0)
    pub.confirm_delivery()
    pub.basic_publish(world.topic, "", b"a1")
    pub.basic_publish(nowhere, "nowhere", b"unroutable", mandatory=True)
    pub.basic_publish(world.topic, "", b"a2")
    with pytest.raises(BatchNotPublished) as raised:
        pub.basic_publish(world.topic, "", b"a3")  # fills the batch
    assert where(raised.value.unpublished) == [
        (nowhere, "nowhere"),
        (world.topic, ""),
        (world.topic, ""),
    ]
    assert not raised.value.retryable  # the unroutable one is given up...
    assert where(pub.unpublished) == [(world.topic, ""), (world.topic, "")]  # ...the rest kept
    pub.flush()
    assert pub.unpublished == []
    sub = consumer(world, connection)
    assert [m.body for _, _, m in drain(sub, f"{world.topic}.q", 3)] == [b"a1", b"a2", b"a3"]


def test_close_refuses_to_drop_sealed_messages_it_cannot_publish(
    world: World, connect: Any
) -> None:
    pub = batch_producer(world, connect(), batch_size=64, linger=60.0)
    pub.basic_publish(world.topic, "", b"waiting")
    pub.channel.close()
    with pytest.raises(BatchNotPublished) as raised:
        pub.close()
    assert where(raised.value.unpublished) == [(world.topic, "")]


@pytest.mark.parametrize(
    "error",
    [AccessDenied("renewing"), UntrustedResponse("HTML page"), Refused(403, "denied", "not now")],
)
def test_other_key_service_errors_requeue(world: World, connect: Any, error: Exception) -> None:
    pub = producer(world, connect())
    pub.basic_publish(world.topic, "", b"m0")
    pub.basic_publish(world.topic, "", b"m1")
    opener = Opener(RefusingKeys(world.consumer, 1, error), metrics=world.metrics)
    sub = consumer(world, connect(), opener)
    sub.channel.basic_qos(prefetch_count=1)  # an unsettled delivery would stall the channel
    with pytest.raises(type(error)):
        for _ in sub.consume(f"{world.topic}.q", inactivity_timeout=WAIT):
            pass
    got: list[bytes] = []
    for method, _, message in sub.consume(f"{world.topic}.q", inactivity_timeout=WAIT):
        assert method is not None and message is not None, "nothing came back in time"
        got.append(message.body)
        sub.basic_ack(method.delivery_tag)
        if len(got) == 2:
            break
    assert got == [b"m0", b"m1"]
    assert world.driver.dead_letters(world.topic) == []


def test_a_callback_that_acks_then_raises_keeps_the_channel(world: World, connect: Any) -> None:
    pub = producer(world, connect())
    pub.basic_publish(world.topic, "", b"n0")
    pub.basic_publish(world.topic, "", b"n1")
    sub = consumer(world, connect())
    seen: list[bytes] = []

    def on_message(ch: SealedChannel, method: Any, _props: Any, message: Any) -> None:
        seen.append(message.body)
        ch.basic_ack(method.delivery_tag)
        if message.body == b"n0":
            raise RuntimeError("after the ack")
        ch.stop_consuming()

    sub.channel.basic_qos(prefetch_count=1)
    sub.basic_consume(f"{world.topic}.q", on_message)
    with pytest.raises(RuntimeError, match="after the ack"):
        sub.start_consuming()
    sub.channel.connection.call_later(WAIT, sub.channel.stop_consuming)  # bound the wait
    sub.start_consuming()  # a nack of the acked tag would have closed the channel (406)
    assert sub.channel.is_open
    assert seen == [b"n0", b"n1"]
    assert queued(connect(), f"{world.topic}.q") == 0


def test_closing_with_unacked_deliveries_releases_them(world: World, connect: Any) -> None:
    connection = connect()
    pub = producer(world, connection)
    for i in range(3):
        pub.basic_publish(world.topic, "", f"m{i}".encode())
    opener = world.opener()
    first = consumer(world, connection, opener)
    assert [m.body for _, _, m in drain(first, f"{world.topic}.q", 1)] == [b"m0"]  # not acked
    first.cancel()
    first.close()  # the broker requeues m0
    second = consumer(world, connection, opener)  # the same opener, as recommended
    got = drain(second, f"{world.topic}.q", 3)
    for method, _, _ in got:
        second.basic_ack(method.delivery_tag)
    assert sorted(m.body for _, _, m in got) == [b"m0", b"m1", b"m2"]
    assert world.metrics.rejections() == {}


def test_dead_letters_are_persistent(world: World, connect: Any) -> None:
    connection = connect()
    world.driver.send_raw(world.topic, b"plain text")  # transient
    sub = consumer(world, connection)
    for method, _, _ in sub.consume(f"{world.topic}.q", inactivity_timeout=1.0):
        if method is None:
            break
    sub.cancel()
    method, props, body = connection.channel().basic_get(f"{world.topic}.dlx", auto_ack=True)
    assert body == b"plain text" and props.delivery_mode == 2


def test_pika_argument_errors_become_broker_errors(world: World, connect: Any) -> None:
    sub = consumer(world, connect())
    queue = f"{world.topic}.q"
    assert next(sub.consume(queue, inactivity_timeout=0.1)) == (None, None, None)
    with pytest.raises(BrokerError):  # pika: ValueError, other params on the same queue
        next(sub.consume(queue, exclusive=True, inactivity_timeout=0.1))
