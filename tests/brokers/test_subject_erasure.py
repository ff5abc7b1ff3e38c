"""Per-subject erasure on a real broker (issue 14): one subject is erased mid-stream; its
messages, those already in the broker and those sealed while the producer still cached its key,
are refused with ``subject_erased`` and dead-lettered once the consumer's cache expired, and
every other subject's messages flow. Run against the in-memory bus, RabbitMQ and Kafka.

Time is an injected clock shared by the key service, the sealer and the opener, so the 60 s
subject key caches expire without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sealedbus.core import wire
from sealedbus.errors import Reason
from sealedbus.keys.local import LocalKeyService
from tests.brokers._support import World
from tests.brokers.conftest import DRIVERS
from tests.brokers.drivers import Driver

SENTINEL = b"sentinel: everything before me was handled"
KEY = b"k"


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=DRIVERS)
def erasable(request: pytest.FixtureRequest) -> Iterator[tuple[World, Clock]]:
    driver: Driver = request.getfixturevalue(request.param)
    clock = Clock()
    keys = LocalKeyService(clock=clock)
    producer, consumer = keys.enroll("producer"), keys.enroll("consumer")
    topic = driver.new_topic()
    keys.create_topic(topic, producers=["producer"], consumers=["consumer"])
    w = World(driver, keys, producer, consumer, topic)
    yield w, clock
    w.close()


def test_erased_subject_is_dead_lettered_and_the_others_flow(
    erasable: tuple[World, Clock],
) -> None:
    world, clock = erasable
    sealer = world.sealer(clock=clock)
    sender = world.sender(sealer)
    receiver = world.receiver(world.opener(clock=clock))

    # before: everything opens, and the consumer caches P-1's key
    sender.send(b"p1 first", key=KEY, subject="P-1")
    sender.send(b"p2 first", key=KEY, subject="P-2")
    sender.send(b"no subject", key=KEY)
    assert [g.body for g in receiver.take(3)] == [b"p1 first", b"p2 first", b"no subject"]

    # already in the broker when the subject is erased, read only after the caches expired
    sender.send(b"p1 queued", key=KEY, subject="P-1")
    sender.send(b"p2 queued", key=KEY, subject="P-2")
    erased = world.keys.erase_subject(world.topic, "P-1")
    assert erased is not None
    # sealed after the erasure by a producer that still caches P-1's public key: erased too
    sender.send(b"p1 after erasure", key=KEY, subject="P-1")
    sender.send(b"p2 after erasure", key=KEY, subject="P-2")

    clock.t += 61  # both caches expired: the consumer asks again and learns of the erasure
    # a later message for the same subject gets a fresh key (a new subject key id) and opens
    sender.send(b"p1 new key", key=KEY, subject="P-1")
    sender.send(SENTINEL, key=KEY)
    got = receiver.take(4)
    assert [g.body for g in got] == [b"p2 queued", b"p2 after erasure", b"p1 new key", SENTINEL]
    dead = world.driver.dead_letters(world.topic)
    assert [reason for reason, _ in dead] == [Reason.SUBJECT_ERASED.value] * 2
    for _, body in dead:  # the erased ones name the erased key, never the subject
        assert wire.parse(body).header.subject_key_id == erased
        assert b"P-1" not in body
    stored = world.driver.stored(world.topic, 9)
    fresh = wire.parse(stored[7]).header.subject_key_id
    assert fresh not in (erased, b"")
    assert world.metrics.rejections() == {Reason.SUBJECT_ERASED.value: 2}


def test_erased_subject_stays_erased_for_a_fresh_consumer(erasable: tuple[World, Clock]) -> None:
    """A consumer that never held the key (a new group, a replay from a backup) is refused at
    once: nothing to wait for."""
    world, clock = erasable
    sender = world.sender(world.sealer(clock=clock))
    sender.send(b"p1", key=KEY, subject="P-1")
    sender.send(b"p2", key=KEY, subject="P-2")
    world.keys.erase_subject(world.topic, "P-1")
    sender.send(SENTINEL, key=KEY)
    got = world.receiver(world.opener(clock=clock)).take(2)
    assert [g.body for g in got] == [b"p2", SENTINEL]
    assert [r for r, _ in world.driver.dead_letters(world.topic)] == [Reason.SUBJECT_ERASED.value]
