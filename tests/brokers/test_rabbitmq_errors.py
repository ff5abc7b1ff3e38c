"""How ``SealedChannel`` names pika's failures: which are retryable, and what a failure in the
middle of a batch leaves to publish again (a stub channel: this is the logic, not the broker;
``test_reliability_rabbitmq.py`` breaks real connections)."""

from __future__ import annotations

from typing import Any

import pika.exceptions
import pytest

from sealedbus import LocalKeyService, Opener, Sealer
from sealedbus.brokers.rabbitmq import BatchNotPublished, SealedChannel, translate_errors
from sealedbus.errors import BrokerError, ConfigurationError


@pytest.mark.parametrize(
    ("raised", "retryable"),
    [
        (pika.exceptions.ProbableAuthenticationError("no"), False),  # a connection error too
        (pika.exceptions.AMQPConnectionError("lost"), True),
        (pika.exceptions.NackError([]), True),
        (pika.exceptions.UnroutableError([]), False),
        (ValueError("bad argument"), False),
    ],
)
def test_pikas_errors_become_broker_errors(raised: Exception, retryable: bool) -> None:
    with pytest.raises(BrokerError) as info, translate_errors("publishing"):
        raise raised
    assert info.value.retryable is retryable
    assert info.value.__cause__ is raised


def test_other_errors_pass_unchanged() -> None:
    with pytest.raises(ConfigurationError), translate_errors("publishing"):
        raise ConfigurationError("ours")  # a ValueError, but sealedbus's own
    with pytest.raises(RuntimeError), translate_errors("publishing"):
        raise RuntimeError("not pika's")


class _Channel:
    """Publishes into a list; the ``fail_at``-th publish raises ``error``."""

    def __init__(self, fail_at: int, error: Exception) -> None:
        self.published: list[bytes] = []
        self.fail_at, self.error = fail_at, error
        self.connection = self

    def call_later(self, delay: float, fn: Any) -> None:
        pass

    def basic_publish(self, exchange: str, key: str, body: bytes, *args: Any) -> None:
        if len(self.published) == self.fail_at:
            self.fail_at = -1
            raise self.error
        self.published.append(body)


def _channel(fail_at: int, error: Exception) -> tuple[SealedChannel, _Channel]:
    ks = LocalKeyService()
    ks.create_topic("t", producers=["p"], consumers=["c"])
    stub = _Channel(fail_at, error)
    return SealedChannel(stub, sealer=Sealer(ks.enroll("p"), batch_size=4), linger=1.0), stub


def test_a_retryable_failure_mid_batch_keeps_the_failed_message_and_the_rest() -> None:
    sealed, stub = _channel(2, pika.exceptions.AMQPConnectionError("lost"))
    for i in range(3):
        sealed.basic_publish("t", "rk", b"m%d" % i)
    with pytest.raises(BatchNotPublished) as info:
        sealed.basic_publish("t", "rk", b"m3")
    assert info.value.retryable
    assert len(stub.published) == 2
    assert [u.envelope for u in info.value.unpublished] == [u.envelope for u in sealed.unpublished]
    assert len(sealed.unpublished) == 2
    sealed.flush()  # the kept ones go first, in order
    assert len(stub.published) == 4 and not sealed.unpublished


def test_a_final_failure_mid_batch_drops_the_failed_message_only() -> None:
    sealed, stub = _channel(1, pika.exceptions.UnroutableError([]))
    for i in range(3):
        sealed.basic_publish("t", "rk", b"m%d" % i)
    with pytest.raises(BatchNotPublished) as info:
        sealed.basic_publish("t", "rk", b"m3")
    assert not info.value.retryable
    assert len(stub.published) == 1
    assert len(info.value.unpublished) == 3  # the failed one and the two after it
    assert len(sealed.unpublished) == 2  # retrying the unroutable one cannot help
    assert isinstance(info.value.__cause__, pika.exceptions.UnroutableError)


class _Deliveries:
    """A channel whose ``consume`` raises ``error`` at the first delivery."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.connection = self

    def channel(self) -> Any:
        return _Deliveries(self.error)

    def confirm_delivery(self) -> None:
        pass

    def consume(self, queue: str, **_: Any) -> Any:
        raise self.error
        yield  # a generator, as pika's


@pytest.mark.parametrize(
    ("raised", "retryable"),
    [(pika.exceptions.AMQPConnectionError("lost"), True), (ValueError("bad"), False)],
)
def test_a_failure_while_consuming_becomes_a_broker_error(
    raised: Exception, retryable: bool
) -> None:
    ks = LocalKeyService()
    ks.create_topic("t", producers=["p"], consumers=["c"])
    opener = Opener(ks.enroll("c"))
    channel = SealedChannel(_Deliveries(raised), opener=opener, declare_dead_letter=False)
    with pytest.raises(BrokerError) as info:
        next(channel.consume("q"))
    assert info.value.retryable is retryable
    assert info.value.__cause__ is raised
    other = SealedChannel(
        _Deliveries(RuntimeError("ours")), opener=opener, declare_dead_letter=False
    )
    with pytest.raises(RuntimeError):
        next(other.consume("q"))
