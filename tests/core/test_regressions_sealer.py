"""Regression tests of the sealer (``sealedbus/sealer.py``), each named after the weakness it
closes."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealedbus import KeySource
from sealedbus.core import backend, suites, wire
from sealedbus.core.suites import Suite
from sealedbus.errors import (
    AccessDenied,
    ConfigurationError,
    KeyServiceError,
    KeyServiceUnavailable,
)
from sealedbus.sealer import MAX_SESSION_MESSAGES, Sealer
from tests.vectors.generate import FixedRng

from ._support import World, make_world


def test_nonce_reuse_impossible_across_sessions(world: World) -> None:
    sealer = world.sealer(max_session_messages=4)
    envelopes = [sealer.seal("orders", b"%d" % i) for i in range(20)]
    headers = [wire.parse(e).header for e in envelopes]
    assert len({(h.session_id, h.seq) for h in headers}) == 20
    sessions = {h.session_id for h in headers}
    assert len(sessions) == 5
    epoch = world.members["consumer"].epoch_keys("orders", 0, world.clock.ms)
    joined = [suites.join_session(Suite.X25519, b"orders", 0, epoch.keys, s, b"") for s in sessions]
    # every session has its own key (commitment stands in for it) and nonce base
    assert len({k.commitment for k in joined}) == len({k.nonce_base for k in joined}) == 5
    nonces = {(k.commitment, k.nonce(seq)) for k in joined for seq in range(4)}
    assert len(nonces) == 20
    # the counter cannot run past the session limit, so a nonce cannot wrap within a session
    with pytest.raises(ConfigurationError):
        Sealer(world.members["producer"], max_session_messages=MAX_SESSION_MESSAGES + 1)
    assert MAX_SESSION_MESSAGES <= wire.MAX_SEQUENCE


def test_nonce_counter_is_injective_within_a_session() -> None:
    epoch = suites.keypair_from_seed(Suite.X25519, os.urandom(32))
    keys = suites.start_session(Suite.X25519, b"t", 0, epoch.public, os.urandom(32))
    assert len({keys.nonce(s) for s in range(10_000)}) == 10_000


@pytest.mark.parametrize(
    "headers",
    [
        {"a": 1.5},
        {"a": None},
        {"a": [1, 2]},
        {"a": {"b": 1}},
        {b"k": "v"},
        {1: "v"},
        {"a": 2**64},
        {"a": -(2**63) - 1},
    ],
    ids=["float", "none", "list", "map", "bytes-key", "int-key", "too-big", "too-small"],
)
def test_headers_the_opener_refuses_cannot_be_sealed(world: World, headers: object) -> None:
    """Fail at the producer, not silently at every consumer (where it would be dead-lettered)."""
    sealer = world.sealer()
    with pytest.raises(ConfigurationError):
        sealer.seal("orders", b"x", headers=headers)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        sealer.add("orders", b"x", headers=headers)  # type: ignore[arg-type]
    assert sealer.pending == 0
    assert world.opener().open("orders", sealer.seal("orders", b"ok")).body == b"ok"


def test_forked_sealer_does_not_reuse_nonces(world: World) -> None:
    """A child process continuing its parent's session would repeat (session, seq) pairs."""
    sealer = world.sealer()
    sealer.seal("orders", b"parent warms up the session")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: seal one message and hand it back
        try:
            os.write(write_end, sealer.seal("orders", b"child"))
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    child = os.read(read_end, 1 << 16)
    os.close(read_end)
    assert status == 0 and child
    parent = sealer.seal("orders", b"parent")
    child_header, parent_header = wire.parse(child).header, wire.parse(parent).header
    assert child_header.session_id != parent_header.session_id


def test_failed_batch_signature_keeps_the_batch(world: World) -> None:
    class FailingOnce:
        def __init__(self, inner: KeySource) -> None:
            self.inner, self.fail = inner, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def identity(self, now_ms: int, refresh: bool = False) -> Any:
            if self.fail:
                self.fail = False
                raise KeyServiceUnavailable("down")
            return self.inner.identity(now_ms, refresh)

    keys = FailingOnce(world.members["producer"])
    sealer = Sealer(keys, batch_size=10, clock=world.clock, epoch_check_interval=0.001)
    sealer.add("orders", b"a")
    sealer.add("orders", b"b")
    world.clock.advance(1)
    keys.fail = True
    with pytest.raises(KeyServiceUnavailable):
        sealer.flush()
    assert sealer.pending == 2
    opener = world.opener()
    assert [opener.open("orders", s.envelope).body for s in sealer.flush()] == [b"a", b"b"]


class _NoShortcut(dict[str, Any]):
    """A Sealer's fast-path table that never keeps an entry: every message takes the full path."""

    def __setitem__(self, key: str, value: Any) -> None:
        pass


ARGUMENTS: dict[str, dict[str, Any]] = {
    "ttl": {"ttl": 5.0},
    "type": {"content_type": "text/plain"},
    "headers": {"headers": {"k": 1}},
    "empty": {"headers": {}},
    # as SealedChannel.basic_publish seals them: the routing key bound, the content type sealed
    "bound": {"headers": {"sealedbus.broker-key": b"orders.eu"}, "content_type": "app/json"},
    "many": {
        "headers": {"a": "\u00e9", "b": b"\x00", "n": -(2**63), "m": 2**64 - 1},
        "content_type": "text/plain; charset=utf-8",
        "ttl": 0.25,
    },
    "subject": {"subject": "P-1"},
    "subject+headers": {"subject": "P-2", "headers": {"k": "v"}, "content_type": "t"},
}
KINDS = ["plain", "plain", "ttl", "type", "headers", "empty", "bound", "bound", "many"]
steps = st.lists(
    st.tuples(
        st.sampled_from([*KINDS, "subject", "subject+headers", "seal", "seal+bound", "seal+many"]),
        st.sampled_from(["orders", "mirror", "audit"]),  # "audit": only after a policy change
        st.integers(-300, 700),  # ms the clock moves first (a wall clock may step back)
        st.sampled_from([None, None, None, "rotate", "policy"]),  # and what changes first
    ),
    min_size=1,
    max_size=40,
)


def _outcome(sealer: Sealer, kind: str, topic: str, kwargs: dict[str, Any]) -> object:
    try:
        if kind.startswith("seal"):
            return sealer.seal(topic, b"one", **kwargs)
        return [(s.topic, s.envelope) for s in sealer.add(topic, b"m", **kwargs)]
    except KeyServiceError as exc:  # refused (not a producer) or no epoch (clock set back)
        return repr(exc)


@pytest.mark.parametrize("core", ["pure", "native"] if backend.NATIVE else ["pure"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps)
def test_fast_path_cannot_outlive_a_check_the_full_path_makes(
    core: str, steps: list[tuple[str, str, int, str | None]]
) -> None:
    """``add`` and ``seal`` skip the identity, certificate, epoch and session checks for a topic
    until the earliest moment one of them could change; sealed with the shortcut, every
    envelope must be the one the full path seals, across epoch checks, rotations, certificates
    reissued, session age and message limits, with and without sealed headers, content type
    and ttl (the shortcut carries them as the full path does)."""
    world = make_world()
    sealers = [
        Sealer(
            world.members["producer"],
            clock=world.clock,
            rng=FixedRng("fast path"),
            core=core,
            batch_size=3,
            max_session_messages=5,
            max_session_seconds=1.5,
            epoch_check_interval=1.0,
        )
        for _ in range(2)
    ]
    sealers[1]._fast = _NoShortcut()
    producers = ["producer2"]
    for kind, topic, advance_ms, change in steps:
        world.clock.advance(advance_ms / 1000)
        if change == "rotate":
            world.ks.rotate(topic)
        elif change == "policy":  # the producer's certificate is reissued (another topic)
            producers = ["producer2"] if len(producers) == 2 else ["producer2", "producer"]
            world.ks.set_policy("audit", producers=producers)
        kwargs = ARGUMENTS.get(kind.removeprefix("seal+"), {})
        out = [_outcome(s, kind, topic, kwargs) for s in sealers]
        assert out[0] == out[1]
    assert [(b.topic, b.envelope) for b in sealers[0].flush()] == [
        (b.topic, b.envelope) for b in sealers[1].flush()
    ]


def test_fast_path_ends_when_the_producer_is_removed(world: World) -> None:
    """A producer removed from a topic is refused at the next epoch check, shortcut or not."""
    sealer = world.sealer(batch_size=100, epoch_check_interval=1.0)
    for _ in range(3):
        sealer.add("orders", b"x")
        sealer.seal("orders", b"x")
    world.ks.set_policy("orders", producers=["producer2"])
    world.clock.advance(1.0)
    with pytest.raises(AccessDenied):
        sealer.add("orders", b"x")
    with pytest.raises(AccessDenied):
        sealer.seal("orders", b"x")


def test_fast_path_seals_headers_content_type_and_ttl(world: World) -> None:
    """Messages with sealed headers, a content type or a ttl (every RabbitMQ publish binds its
    routing key in the headers) take the topic's fast path, and still carry exactly what the
    caller sealed: a fast path that dropped or reused them would open with other headers."""
    sealer = world.sealer(batch_size=4)
    sealer.seal("orders", b"warm")
    sealer.add("orders", b"warm")
    sealer.flush()

    def no_full_path(*_: object, **__: object) -> None:
        raise AssertionError("took the full path")

    sealer._draft = no_full_path  # type: ignore[assignment, method-assign]
    sent: list[tuple[dict[str, Any], str, float | None]] = [
        ({"sealedbus.broker-key": b"a.b", "n": 1}, "app/json", None),
        ({"sealedbus.broker-key": b"a.c", "n": 1}, "", 5.0),
        ({}, "text/plain", None),
    ]
    with pytest.raises(ConfigurationError):  # refused before it is given a sequence number
        sealer.add("orders", b"x", headers={"big": 2**64})
    with pytest.raises(ConfigurationError):
        sealer.add("orders", b"x", headers={"flag": True})
    for h, t, ttl in sent:
        assert sealer.add("orders", b"batch", headers=h, content_type=t, ttl=ttl) == []
    envelopes = [s.envelope for s in sealer.flush()]
    envelopes += [
        sealer.seal("orders", b"single", headers=h, content_type=t, ttl=ttl) for h, t, ttl in sent
    ]
    opener = world.opener()
    opened = [opener.open("orders", e) for e in envelopes]
    expected = [*sent, *sent]
    assert [(m.headers, m.content_type, m.expires_at is not None) for m in opened] == [
        (h, t, ttl is not None) for h, t, ttl in expected
    ]
