"""Negative vectors: every flipped byte, every truncation, extensions and swapped fields are
rejected with an InvalidEnvelope subclass, never another exception, never with plaintext."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealedbus import Reason
from sealedbus.core import merkle, wire

from ._support import (
    FAST,
    World,
    flip,
    reencode,
    rejected,
    shared_world,
    split,
    tampered_rejected,
    with_proof,
)

SUITE_TOPICS = ["orders", "vault"]  # x25519, x25519-mlkem768
MODES = ["single", "batch"]


def _envelopes(world: World, topic: str, mode: str, body: bytes = b"hello") -> list[bytes]:
    """Three envelopes of one session: three singles, or one batch of three."""
    sealer = world.sealer(batch_size=3)
    kwargs: dict[str, object] = {"headers": {"k": "v", "n": 7}, "content_type": "text/plain"}
    if mode == "single":
        return [sealer.seal(topic, body, ttl=600, **kwargs) for _ in range(3)]  # type: ignore[arg-type]
    out = [s.envelope for _ in range(3) for s in sealer.add(topic, body, ttl=600, **kwargs)]  # type: ignore[arg-type]
    assert len(out) == 3
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("topic", SUITE_TOPICS)
def test_every_byte_flip_is_rejected(world: World, topic: str, mode: str) -> None:
    first, target, _ = _envelopes(world, topic, mode)
    opener = world.opener()
    assert opener.open(topic, first).body == b"hello"  # session (and batch root) now cached
    header, signature, proof, ciphertext = split(target)
    assert header and len(signature) == 64 and ciphertext
    assert bool(proof) == (mode == "batch")
    for pos in range(len(target)):  # header, signature, proof and ciphertext, exhaustively
        for mask in (0x01, 0x80, 0xFF):
            tampered_rejected(opener, topic, flip(target, pos, mask))
    assert opener.open(topic, target).body == b"hello"  # the original still opens


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("topic", SUITE_TOPICS)
def test_big_envelope_flips_sampled(world: World, topic: str, mode: str) -> None:
    body = os.urandom(64 << 10)
    first, target, _ = _envelopes(world, topic, mode, body)
    opener = world.opener()
    opener.open(topic, first)
    header, signature, proof, _ = split(target)
    clear = len(header) + len(signature) + len(proof)
    tail = range(len(target) - 40, len(target))
    positions = [*range(clear), *range(clear, len(target), 397), *tail]
    for pos in positions:
        tampered_rejected(opener, topic, flip(target, pos))
    assert opener.open(topic, target).body == body


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("topic", SUITE_TOPICS)
def test_every_truncation_is_rejected(world: World, topic: str, mode: str) -> None:
    first, target, _ = _envelopes(world, topic, mode)
    opener = world.opener()
    opener.open(topic, first)
    reasons = {tampered_rejected(opener, topic, target[:n]).reason for n in range(len(target))}
    assert Reason.NOT_ENVELOPE in reasons and Reason.MALFORMED in reasons
    assert opener.open(topic, target).body == b"hello"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("topic", SUITE_TOPICS)
def test_extensions_are_rejected(world: World, topic: str, mode: str) -> None:
    first, target, other = _envelopes(world, topic, mode)
    opener = world.opener()
    opener.open(topic, first)
    for suffix in (b"\x00", b"\x00" * 16, os.urandom(1), os.urandom(100), target, other):
        tampered_rejected(opener, topic, target + suffix)
    assert opener.open(topic, target).body == b"hello"


@pytest.mark.parametrize("topic", SUITE_TOPICS)
def test_batch_proof_fields_rejected_after_root_cached(world: World, topic: str) -> None:
    sealer = world.sealer(batch_size=5)
    out = [s.envelope for i in range(5) for s in sealer.add(topic, b"m%d" % i)]
    opener = world.opener()
    assert opener.open(topic, out[0]).body == b"m0"  # the root of this batch is now trusted
    target = out[3]
    proof = wire.parse(target).proof
    assert proof is not None and proof.size == 5
    for index in range(5):
        if index != proof.index:
            tampered_rejected(opener, topic, with_proof(target, index, 5, proof.path))
    for size in (4, 6, 8, 0xFFFF):
        tampered_rejected(opener, topic, with_proof(target, proof.index, size, proof.path))
    for i in range(len(proof.path)):
        path = list(proof.path)
        path[i] = flip(path[i], 0)
        exc = tampered_rejected(opener, topic, with_proof(target, proof.index, 5, path))
        assert exc.reason is Reason.BAD_SIGNATURE
    tampered_rejected(opener, topic, with_proof(target, proof.index, 5, proof.path[:-1]))
    tampered_rejected(opener, topic, with_proof(target, proof.index, 5, [*proof.path, b"\0" * 32]))
    header, signature, proof_bytes, ciphertext = split(target)
    for pos in range(64):
        forged = header + flip(signature, pos) + proof_bytes + ciphertext
        assert tampered_rejected(opener, topic, forged).reason is Reason.BAD_SIGNATURE
    assert [opener.open(topic, e).body for e in out[1:]] == [b"m1", b"m2", b"m3", b"m4"]


# -- swapped fields -------------------------------------------------------------------------


def test_open_under_another_topic_of_the_same_producer(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x")
    opener = world.opener()
    rejected(lambda: opener.open("mirror", envelope), Reason.BAD_SIGNATURE)
    assert opener.open("orders", envelope).body == b"x"


def test_open_under_a_topic_the_sender_may_not_produce_to(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x")
    rejected(lambda: world.opener().open("audit", envelope), Reason.SENDER_NOT_ALLOWED)


@pytest.mark.parametrize("topic", SUITE_TOPICS)
def test_swapped_epoch(world: World, topic: str) -> None:
    envelope = world.sealer().seal(topic, b"x")
    assert wire.parse(envelope).header.epoch == 0
    assert world.ks.rotate(topic) == 1
    opener = world.opener()
    rejected(lambda: opener.open(topic, reencode(envelope, epoch=99)), Reason.EPOCH_UNKNOWN)
    tampered_rejected(opener, topic, reencode(envelope, epoch=1))
    assert opener.open(topic, envelope).body == b"x"


def test_swapped_epoch_is_a_bad_signature(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x")
    world.ks.rotate("orders")
    opener = world.opener()
    rejected(lambda: opener.open("orders", reencode(envelope, epoch=1)), Reason.BAD_SIGNATURE)


def test_swapped_sender(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x")
    other = wire.parse(world.sealer("producer2").seal("orders", b"y")).header.cert_id
    opener = world.opener()
    rejected(lambda: opener.open("orders", reencode(envelope, cert_id=other)), Reason.BAD_SIGNATURE)
    unknown = os.urandom(16)
    rejected(
        lambda: opener.open("orders", reencode(envelope, cert_id=unknown)), Reason.UNKNOWN_SENDER
    )


def test_swapped_session(world: World) -> None:
    mine = world.sealer().seal("orders", b"x")
    theirs = world.sealer().seal("orders", b"y")  # another sealer: another session, same seq 0
    session = wire.parse(theirs).header.session_id
    opener = world.opener()
    assert opener.open("orders", theirs).body == b"y"  # that session is cached now
    swapped = reencode(mine, session_id=session)
    rejected(lambda: opener.open("orders", swapped), Reason.BAD_SIGNATURE)
    assert opener.open("orders", mine).body == b"x"  # same seq, other session: not a duplicate


def test_swapped_hybrid_session(world: World) -> None:
    mine = world.sealer().seal("vault", b"x")
    theirs = wire.parse(world.sealer().seal("vault", b"y")).header
    opener = world.opener()
    tampered_rejected(
        opener,
        "vault",
        reencode(mine, session_id=theirs.session_id, encapsulation=theirs.encapsulation),
    )
    tampered_rejected(opener, "vault", reencode(mine, session_id=theirs.session_id))
    tampered_rejected(opener, "vault", reencode(mine, encapsulation=theirs.encapsulation))


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 1},
        {"sent_at_ms": 1},  # relative: added to the original below
        {"ttl_ms": 1},
        {"content_type": "text/html"},
        {"batch": True},
    ],
    ids=lambda c: next(iter(c)),
)
def test_swapped_header_field(world: World, change: dict[str, object]) -> None:
    envelope = world.sealer().seal("orders", b"x", content_type="text/plain", ttl=60)
    h = wire.parse(envelope).header
    if "sent_at_ms" in change:
        change = {"sent_at_ms": h.sent_at_ms + 1}
    if "ttl_ms" in change:
        change = {"ttl_ms": h.ttl_ms + 1}
    tampered_rejected(world.opener(), "orders", reencode(envelope, **change))


def test_batch_proof_from_another_batch(world: World) -> None:
    sealer = world.sealer(batch_size=4)
    a = [s.envelope for i in range(4) for s in sealer.add("orders", b"a%d" % i)]
    b = [s.envelope for i in range(4) for s in sealer.add("orders", b"b%d" % i)]
    opener = world.opener()
    assert opener.open("orders", a[0]).body == b"a0"  # batch a's root is trusted now
    _, a_sig, a_proof, _ = split(a[1])
    b_head, _, _, b_ct = split(b[1])
    pa = wire.parse(a[1]).proof
    assert pa is not None
    rejected(
        lambda: opener.open("orders", with_proof(b[1], pa.index, pa.size, pa.path)),
        Reason.BAD_SIGNATURE,
    )
    rejected(lambda: opener.open("orders", b_head + a_sig + a_proof + b_ct), Reason.BAD_SIGNATURE)
    assert [opener.open("orders", e).body for e in b] == [b"b0", b"b1", b"b2", b"b3"]


def test_single_signature_cannot_stand_in_for_a_batch(world: World) -> None:
    single = world.sealer().seal("orders", b"x")
    header, signature, _, ciphertext = split(single)
    h = wire.parse(single).header
    as_batch = reencode(single, batch=True)
    head = as_batch[: len(header)]
    leaf_only = head + signature + wire.BATCH_FIXED.pack(0, 1) + ciphertext
    rejected(lambda: world.opener().open("orders", leaf_only), Reason.BAD_SIGNATURE)
    assert h.batch is False
    assert merkle.path_length(0, 1) == 0


@FAST
@given(
    topic=st.sampled_from(SUITE_TOPICS),
    mode=st.sampled_from(MODES),
    body=st.binary(max_size=512),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_random_multi_byte_edits_are_rejected(
    topic: str, mode: str, body: bytes, edits: list[tuple[int, int]]
) -> None:
    world = shared_world()
    first, target, _ = _envelopes(world, topic, mode, body)
    opener = world.opener()
    opener.open(topic, first)
    mutated = bytearray(target)
    for pos, mask in edits:
        mutated[pos % len(mutated)] ^= mask
    if bytes(mutated) == target:  # two edits cancelled out
        return
    tampered_rejected(opener, topic, bytes(mutated))
    assert opener.open(topic, target).body == body
