"""LocalKeyService on its own: what only the in-process back end has (its argument checks, a
member clock behind the service's). Its semantics are in the suite both back ends run,
``tests/keys/test_semantics.py``."""

from __future__ import annotations

import pytest

from sealedbus import LocalKeyService, Sealer
from sealedbus.errors import ConfigurationError, KeyServiceUnavailable, UnknownTopic
from tests.core._support import World, make_world


@pytest.fixture
def world() -> World:
    return make_world()


def test_configuration_errors(world: World) -> None:
    with pytest.raises(ConfigurationError):
        world.ks.create_topic("orders")  # exists
    with pytest.raises(ConfigurationError):
        world.ks.create_topic("fast", rotation_period=0.5)
    with pytest.raises(ConfigurationError):
        world.ks.create_topic("short-lived", rotation_period=100, retention=50)
    with pytest.raises(ConfigurationError):
        world.ks.create_topic("weird", suite="rsa")
    with pytest.raises(ConfigurationError):
        world.ks.create_topic("")
    with pytest.raises(ConfigurationError):
        world.ks.enroll("producer")  # already enrolled
    with pytest.raises(UnknownTopic):
        world.ks.epochs("nope")
    with pytest.raises(UnknownTopic):
        world.ks.set_policy("nope", consumers=[])


def test_sealing_before_the_first_epoch_is_a_clear_retryable_error() -> None:
    t = [1_000_000.0]
    ks = LocalKeyService(clock=lambda: t[0])
    ks.create_topic("orders", producers=["p"], consumers=["c"])
    sealer = Sealer(ks.enroll("p"), clock=lambda: t[0] - 3600)  # an hour behind
    with pytest.raises(KeyServiceUnavailable, match="no epoch yet") as info:
        sealer.seal("orders", b"x")
    assert info.value.retryable
