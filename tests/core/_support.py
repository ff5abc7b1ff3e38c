"""Shared helpers: an injectable clock, a small world of members and topics, and assertions about
rejected envelopes. Tests import these directly; fixtures in ``conftest.py`` wrap them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from sealedbus import InvalidEnvelope, LocalKeyService, Opener, Reason, Sealer
from sealedbus.core import wire
from sealedbus.errors import (
    DuplicateEnvelope,
    ExpiredEnvelope,
    MalformedEnvelope,
    NotAnEnvelope,
    UnauthenticEnvelope,
    UnopenableEnvelope,
)
from sealedbus.keys.local import LocalMember
from tests.clock import Clock

FAST = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Which exception class carries which reason: a reason raised under the wrong class is a bug too.
REASON_CLASS: dict[Reason, type[InvalidEnvelope]] = {
    Reason.NOT_ENVELOPE: NotAnEnvelope,
    Reason.MALFORMED: MalformedEnvelope,
    Reason.TOO_LARGE: MalformedEnvelope,
    Reason.VERSION: MalformedEnvelope,
    Reason.SUITE: MalformedEnvelope,
    Reason.EXPIRED: ExpiredEnvelope,
    Reason.FROM_FUTURE: ExpiredEnvelope,
    Reason.OUTSIDE_EPOCH: ExpiredEnvelope,
    Reason.DUPLICATE: DuplicateEnvelope,
    Reason.TOO_OLD: DuplicateEnvelope,
    Reason.UNKNOWN_SENDER: UnauthenticEnvelope,
    Reason.SENDER_REVOKED: UnauthenticEnvelope,
    Reason.SENDER_NOT_ALLOWED: UnauthenticEnvelope,
    Reason.CERTIFICATE_EXPIRED: UnauthenticEnvelope,
    Reason.BAD_SIGNATURE: UnauthenticEnvelope,
    Reason.NOT_GRANTED: UnopenableEnvelope,
    Reason.EPOCH_UNKNOWN: UnopenableEnvelope,
    Reason.EPOCH_DESTROYED: UnopenableEnvelope,
    Reason.DECRYPT_FAILED: UnopenableEnvelope,
    Reason.SUBJECT_ERASED: UnopenableEnvelope,
}

# A tampered envelope may fail any check, except these two: they are only reached by envelopes
# that authenticated, so seeing one for a modified envelope means the modification went unnoticed.
ACCEPTED_ONLY_AFTER_AUTH = frozenset({Reason.DUPLICATE, Reason.TOO_OLD})


MEMBERS = ("producer", "producer2", "consumer", "consumer2", "outsider")

# name -> (producers, consumers, suite)
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "orders": (("producer", "producer2"), ("consumer", "consumer2"), "x25519"),
    "vault": (("producer",), ("consumer",), "x25519-mlkem768"),
    "mirror": (("producer",), ("consumer",), "x25519"),  # same members as "orders"
    "audit": (("producer2",), ("consumer",), "x25519"),  # "producer" may not produce here
}


@dataclass
class World:
    """A key service with enrolled members; builds sealers and openers on the shared clock."""

    clock: Clock
    ks: LocalKeyService
    members: dict[str, LocalMember]

    def enroll(self, name: str) -> LocalMember:
        # "consumer" reads the hybrid topic, whose epochs go only to hybrid receive keys
        suite = "x25519-mlkem768" if name == "consumer" else "x25519"
        self.members[name] = self.ks.enroll(name, suite=suite)
        return self.members[name]

    def sealer(self, member: str = "producer", **kwargs: Any) -> Sealer:
        kwargs.setdefault("clock", self.clock)
        return Sealer(self.members[member], **kwargs)

    def opener(self, member: str = "consumer", **kwargs: Any) -> Opener:
        kwargs.setdefault("clock", self.clock)
        return Opener(self.members[member], **kwargs)


def make_world(
    *,
    clock: Clock | None = None,
    topics: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] | None = None,
    members: Iterable[str] = MEMBERS,
    rotation_period: float = 3600.0,
    retention: float = 7 * 86_400.0,
    history: bool = False,
) -> World:
    clock = clock or Clock()
    ks = LocalKeyService(clock=clock)
    world = World(clock, ks, {})
    for name in members:
        world.enroll(name)
    for name, (producers, consumers, suite) in (TOPICS if topics is None else topics).items():
        ks.create_topic(
            name,
            producers=producers,
            consumers=consumers,
            suite=suite,
            rotation_period=rotation_period,
            retention=retention,
            history=history,
        )
    return world


@cache
def shared_world() -> World:
    """One world whose clock never moves, for property tests (built once per test session)."""
    return make_world()


def rejected(call: Callable[[], object], reason: Reason | None = None) -> InvalidEnvelope:
    """Assert that ``call`` raises an InvalidEnvelope subclass (nothing else, and returns nothing),
    that the class matches the reason, and, when given, that the reason is ``reason``."""
    with pytest.raises(InvalidEnvelope) as info:
        call()
    exc = info.value
    assert isinstance(exc.reason, Reason)
    assert type(exc) is REASON_CLASS[exc.reason], f"{type(exc).__name__} with {exc.reason}"
    if reason is not None:
        assert exc.reason is reason, f"expected {reason.value}, got {exc!r}"
    return exc


def tampered_rejected(opener: Opener, topic: str, data: bytes) -> InvalidEnvelope:
    """A modified envelope must fail before it could count as opened."""
    exc = rejected(lambda: opener.open(topic, data))
    assert exc.reason not in ACCEPTED_ONLY_AFTER_AUTH, f"modified envelope authenticated: {exc!r}"
    return exc


def reencode(envelope: bytes, **changes: Any) -> bytes:
    """The envelope with some header fields changed and everything after the header kept."""
    parsed = wire.parse(envelope)
    header = dataclasses.replace(parsed.header, **changes)
    return header.encode() + envelope[len(parsed.header_bytes) :]


def split(envelope: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(header, signature, batch proof, ciphertext); the proof is empty for single envelopes."""
    parsed = wire.parse(envelope)
    header_end = len(parsed.header_bytes)
    sig_end = header_end + wire.SIGNATURE_LEN
    ct_start = len(envelope) - len(parsed.ciphertext)
    return (
        envelope[:header_end],
        envelope[header_end:sig_end],
        envelope[sig_end:ct_start],
        envelope[ct_start:],
    )


def with_proof(envelope: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    """A batch envelope with its proof replaced (the path is not checked against the sizes)."""
    header, signature, _, ciphertext = split(envelope)
    return header + signature + wire.BATCH_FIXED.pack(index, size) + b"".join(path) + ciphertext


def flip(data: bytes, pos: int, mask: int = 0xFF) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]
