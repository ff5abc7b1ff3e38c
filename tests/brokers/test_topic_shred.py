"""A topic shred on the brokers (issue 14: in memory, RabbitMQ, Kafka), with the real KDS
reached through KeyServiceClient: a consumer running before the shred, with the topic's earlier
messages still in the broker, refuses them as ``epoch_destroyed`` and dead-letters them without
a restart; messages sealed on the fresh epoch open.

Time is the KDS harness's hand-moved clock, shared by the KDS, the sealers and the opener: the
client's question about gone epochs comes due without sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sealedbus.core import wire
from sealedbus.errors import Reason
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.brokers.conftest import DRIVERS
from tests.brokers.drivers import Driver
from tests.clock import Clock
from tests.kds._harness import Kds, make_kds, settle

SENTINEL = b"sentinel: everything before me was handled"
MAX_AGE = 20.0  # the consumer's revocation_max_age: idle this long, it asks before opening


@pytest.fixture
def kds(tmp_path: Path) -> Iterator[Kds]:
    k = make_kds(tmp_path, clock=Clock())
    yield k
    settle()
    for client in k.clients:
        client.close()
    k.http.close()
    k.store.dispose()


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> Driver:
    d: Driver = request.getfixturevalue(request.param)
    return d


def test_a_running_consumer_dead_letters_a_shredded_topic_without_a_restart(
    kds: Kds, driver: Driver
) -> None:
    topic = driver.new_topic()
    kds.admin.create_topic(topic, producers=["p", "late"], consumers=["c"])
    sender = driver.sender(topic, Sealer(kds.member("p"), clock=kds.clock))
    consumer = Opener(kds.member("c", revocation_max_age=MAX_AGE), clock=kds.clock)
    receiver = driver.receiver(topic, consumer)
    late = None
    try:
        sender.send(b"before 0", key=b"k")
        assert [g.body for g in receiver.take(1)] == [b"before 0"]  # key and session cached
        sender.send(b"before 1", key=b"k")  # still in the broker when the topic is shredded
        sender.send(b"before 2", key=b"k")
        shredded = kds.admin.shred_topic(topic)
        kds.clock.advance(MAX_AGE)
        late = driver.sender(topic, Sealer(kds.member("late"), clock=kds.clock))
        late.send(b"after", key=b"k")
        late.send(SENTINEL, key=b"k")
        assert [g.body for g in receiver.take(2)] == [b"after", SENTINEL]
    finally:
        for closable in (sender, late, receiver):
            if closable is not None:
                closable.close()
    dead = driver.dead_letters(topic)
    assert [reason for reason, _ in dead] == [Reason.EPOCH_DESTROYED.value] * 2
    assert {wire.parse(body).header.epoch for _, body in dead} == {0}
    assert shredded["destroyed_epochs"] == [0] and shredded["fresh_epoch"] == 1
