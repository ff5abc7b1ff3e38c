"""In-memory bus specifics: giving messages back, key-service outages, key tokenization."""

from __future__ import annotations

from typing import Any

import pytest

from sealedbus.brokers._common import KeyTokenizer
from sealedbus.brokers.memory import MemoryBus, MemoryConsumer, MemoryProducer
from sealedbus.errors import (
    AccessDenied,
    ConfigurationError,
    KeyServiceUnavailable,
    Refused,
    UntrustedResponse,
)
from sealedbus.opener import Opener
from tests.brokers._support import FlakyKeys, World, make_world
from tests.brokers.drivers import MemoryDriver


@pytest.fixture
def world() -> World:
    return make_world(MemoryDriver())


def bus_of(world: World) -> MemoryBus:
    assert isinstance(world.driver, MemoryDriver)
    return world.driver.bus


def test_nack_gives_back_and_the_redelivery_is_accepted(world: World) -> None:
    MemoryProducer(bus_of(world), world.sealer()).send(world.topic, b"again")
    consumer = MemoryConsumer(bus_of(world), world.opener(), world.topic, "g")
    [first] = consumer.poll(timeout=1)
    consumer.nack(first)
    [second] = consumer.poll(timeout=1)
    consumer.ack(second)
    assert second.record.redelivered and second.value == b"again"
    assert world.metrics.rejections() == {}


def test_key_service_outage_puts_records_back(world: World) -> None:
    MemoryProducer(bus_of(world), world.sealer()).send(world.topic, b"kept")
    opener = Opener(FlakyKeys(world.consumer, failures=1), metrics=world.metrics)
    consumer = MemoryConsumer(bus_of(world), opener, world.topic, "g")
    with pytest.raises(KeyServiceUnavailable):
        consumer.poll(timeout=1)
    [delivery] = consumer.poll(timeout=1)
    assert delivery.value == b"kept"
    assert bus_of(world).records(f"{world.topic}.dlq") == []


def test_tokenized_keys_stay_stable_and_come_back(world: World) -> None:
    tokenizer = KeyTokenizer.from_secret(bytes(range(32)))
    producer = MemoryProducer(bus_of(world), world.sealer(), key_tokenizer=tokenizer)
    for _ in range(2):
        producer.send(world.topic, b"x", key=b"patient-42")
    stored = bus_of(world).records(world.topic)
    assert stored[0].key == stored[1].key == tokenizer.tokenize(world.topic, b"patient-42")
    assert tokenizer.tokenize("other-topic", b"patient-42") != stored[0].key
    consumer = MemoryConsumer(bus_of(world), world.opener(), world.topic, "g")
    got = consumer.poll(timeout=1)
    assert [d.key for d in got] == [b"patient-42"] * 2 and got[0].headers == {}


@pytest.mark.parametrize("headers", [{"f": 1.5}, {"b": True}, {"sealedbus.key": b"x"}])
def test_unsealable_headers_are_refused_before_sending(
    world: World, headers: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError):
        MemoryProducer(bus_of(world), world.sealer()).send(
            world.topic,
            b"x",
            headers=headers,  # type: ignore[arg-type]
        )
    assert bus_of(world).records(world.topic) == []


def test_short_tokenization_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        KeyTokenizer.from_secret(b"short")


def test_tokenizer_from_the_key_service_agrees_between_members(world: World) -> None:
    producer_side = KeyTokenizer.from_keys(world.producer)
    consumer_side = KeyTokenizer.from_keys(world.consumer)
    token = producer_side.tokenize(world.topic, b"patient-42")
    assert token == consumer_side.tokenize(world.topic, b"patient-42")
    assert b"patient-42" not in token and len(token) == 32
    outsider = world.keys.enroll("outsider")
    with pytest.raises(AccessDenied):
        KeyTokenizer.from_keys(outsider).tokenize(world.topic, b"patient-42")


class FailsOnCall:
    """A key source whose revocation list fails with ``error`` on call number ``call``."""

    def __init__(self, inner: Any, error: Exception, call: int) -> None:
        self.inner = inner
        self.error = error
        self.call = call
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def member(self) -> str:
        return str(self.inner.member)

    def revocations(self, now_ms: int) -> Any:
        self.calls += 1
        if self.calls == self.call:
            raise self.error
        return self.inner.revocations(now_ms)


@pytest.mark.parametrize(
    "error",
    [
        AccessDenied("certificate renewing"),
        UntrustedResponse("an HTML error page"),
        Refused(403, "denied", "not now"),
    ],
)
def test_other_key_service_errors_mid_poll_lose_nothing(world: World, error: Exception) -> None:
    producer = MemoryProducer(bus_of(world), world.sealer())
    for i in range(4):
        producer.send(world.topic, f"m{i}".encode())
    opener = Opener(
        FailsOnCall(world.consumer, error, call=3),
        metrics=world.metrics,
        revocation_check_interval=0,
    )
    consumer = MemoryConsumer(bus_of(world), opener, world.topic, "g")
    with pytest.raises(type(error)):
        consumer.poll(timeout=1)  # m0 and m1 opened before m2 failed
    got = consumer.poll(timeout=1)
    assert sorted(d.value for d in got) == [b"m0", b"m1", b"m2", b"m3"]
    assert world.metrics.rejections() == {}
    assert bus_of(world).lag(world.topic, "g") == 4  # all in flight, none lost


def test_a_record_key_moved_or_stripped_by_the_broker_is_refused() -> None:
    """Issue 8.5: the record key is sealed and checked; what is not is called broker_key."""
    from sealedbus import LocalKeyService, Reason, Sealer

    keys = LocalKeyService()
    producer, consumer = keys.enroll("p"), keys.enroll("c")
    keys.create_topic("t", producers=["p"], consumers=["c"])
    bus = MemoryBus()
    MemoryProducer(bus, Sealer(producer)).send("t", b"alice's", key=b"alice")
    MemoryProducer(bus, Sealer(producer)).send("t", b"keyless")
    [alice, keyless] = bus.records("t")

    def deliver(value: bytes, key: bytes | None) -> list[tuple[bytes, Any, Any]] | str:
        """What a fresh consumer makes of one record the broker shows with ``key``."""
        other = MemoryBus()
        other.publish("t", value, key=key)
        got = MemoryConsumer(other, Opener(consumer), "t", "g").poll()
        dead = [r.headers["x-sealedbus-reason"].decode() for r in other.records("t.dlq")]
        return [(d.value, d.key, d.broker_key) for d in got] or "".join(dead)

    assert deliver(alice.value, b"alice") == [(b"alice's", b"alice", b"alice")]
    assert deliver(alice.value, b"bob") == Reason.BAD_SIGNATURE.value  # moved to another key
    assert deliver(alice.value, None) == Reason.BAD_SIGNATURE.value  # key stripped
    assert deliver(keyless.value, None) == [(b"keyless", None, None)]
    # a key added to a keyless record: shown as broker_key only, never as the sealed key
    assert deliver(keyless.value, b"mallory") == [(b"keyless", None, b"mallory")]
