"""Regression tests of the core's parsers and state (``core/wire.py``, ``envelope.py``,
``replay.py``, ``signed.py``), each named after the weakness it closes."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealedbus import InvalidEnvelope, Reason
from sealedbus.core import backend, envelope, suites, wire
from sealedbus.core.replay import ReplayWindow, Seen
from sealedbus.core.signed import Certificate, SignatureError
from sealedbus.core.suites import Suite
from sealedbus.errors import MalformedEnvelope

from ._support import World, make_world, rejected


def _peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
    except (InvalidEnvelope, ValueError):
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_hostile_length_fields_do_not_allocate(world: World) -> None:
    valid = world.sealer().seal("orders", b"x")
    head = bytearray(valid[: wire.HEADER_FIXED.size])
    head[-1] = 255  # content-type length at its maximum, with nothing behind it
    batch_head = bytearray(valid[: wire.HEADER_FIXED.size])
    batch_head[4] |= wire.FLAG_BATCH
    batch_head[-1] = 0
    hybrid_head = bytearray(valid[: wire.HEADER_FIXED.size])
    hybrid_head[3] = Suite.HYBRID
    hostile = [
        bytes(head),
        bytes(head) + bytes(10),
        bytes(batch_head) + bytes(64) + wire.BATCH_FIXED.pack(0xFFFE, 0xFFFF),
        bytes(batch_head) + bytes(64) + wire.BATCH_FIXED.pack(0, 0),
        bytes(batch_head) + bytes(64) + wire.BATCH_FIXED.pack(0xFFFF, 0xFFFF),
        bytes(hybrid_head) + bytes(40),
    ]
    opener = world.opener()
    for data in hostile:
        with pytest.raises(MalformedEnvelope):
            wire.parse(data)
        rejected(lambda d=data: opener.open("orders", d), Reason.MALFORMED)  # type: ignore[misc]
        assert _peak_bytes(lambda d=data: wire.parse(d)) < 64 << 10  # type: ignore[misc]
        assert _peak_bytes(lambda d=data: opener.open("orders", d)) < 256 << 10  # type: ignore[misc]
    # inner header length larger than what the plaintext holds
    with pytest.raises(MalformedEnvelope):
        envelope.decode_inner(b"\xff\xff" + b"abc")
    # msgpack lengths claiming gigabytes inside signed objects
    root = world.members["consumer"]._root
    for data in (
        b"\xdd\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        msgpack.packb([b"\xdd\xff\xff\xff\xff", bytes(64)]),
    ):
        with pytest.raises(SignatureError):
            Certificate.verify(data, root)
        assert _peak_bytes(lambda d=data: Certificate.verify(d, root)) < 64 << 10  # type: ignore[misc]


def test_replay_window_far_jump_does_not_allocate() -> None:
    """An authenticated sender (a compromised producer) choosing a sequence number far ahead must
    not make the consumer build a bitmap as wide as the jump."""
    w = ReplayWindow(4096)
    w.mark(0)
    assert _peak_bytes(lambda: w.mark(1 << 28)) < 64 << 10
    assert w.check(1 << 28) is Seen.DUPLICATE
    assert w.check((1 << 28) - 1) is Seen.NEW
    assert w.check(0) is Seen.TOO_OLD
    assert _peak_bytes(lambda: w.mark(wire.MAX_SEQUENCE)) < 64 << 10


def test_inner_headers_with_non_string_keys_are_refused() -> None:
    packed = msgpack.packb({b"k": "v"}, use_bin_type=True)
    with pytest.raises(MalformedEnvelope):
        envelope.decode_inner(len(packed).to_bytes(2, "big") + packed + b"body")


def test_replay_state_cannot_be_poisoned_from_another_topic() -> None:
    """A member that produces and consumes its own topic can compute the DH for any session id
    it sees on the wire; replay windows must not be shared across topics or senders."""
    topics: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
        "orders": (("producer",), ("consumer",), "x25519"),
        "scratch": (("producer2",), ("consumer", "producer2"), "x25519"),
    }
    w = make_world(topics=topics)
    honest, opener = w.sealer("producer"), w.opener("consumer")
    first = honest.seal("orders", b"h1")
    assert opener.open("orders", first).body == b"h1"
    stolen_session = wire.parse(first).header.session_id
    mallory, now = w.members["producer2"], w.clock.ms
    signer, cert = mallory.identity(now)
    epoch = mallory.sealing_epoch("scratch", now)
    keys = suites.join_session(
        Suite.X25519,
        b"scratch",
        epoch.epoch,
        mallory.epoch_keys("scratch", epoch.epoch, now).keys,
        stolen_session,
        b"",
    )
    top = 0xFFFFFFFF
    header = wire.header_head(Suite.X25519, False, epoch.epoch, cert.cert_id, stolen_session)
    header += wire.header_tail(top, now, 0, b"", b"")
    ctx = envelope.SessionContext(b"scratch", keys)
    forged = envelope.finish_single(
        signer, envelope.draft(ctx, header, top, None, b"x", batch=False)
    )
    assert opener.open("scratch", forged).sender == "producer2"  # valid on its own topic
    for i in range(3):  # ...and it does not push the honest session out of its window
        assert opener.open("orders", honest.seal("orders", b"h%d" % i)).body == b"h%d" % i


def test_duplicate_or_boolean_sealed_headers_are_refused() -> None:
    # a map with the name "a" twice: fixmap of 2, then "a": "x", "a": "y"
    packed = b"\x82\xa1a\xa1x\xa1a\xa1y"
    with pytest.raises(MalformedEnvelope):
        envelope.decode_inner(len(packed).to_bytes(2, "big") + packed + b"body")
    # the same as a map 16 and a map 32 (msgpack keeps the last value of a name given twice)
    for packed in (
        b"\xde\x00\x02\xa1a\xa1x\xa1a\xa1y",
        b"\xdf\x00\x00\x00\x02\xa1a\xa1x\xa1a\xa1y",
    ):
        with pytest.raises(MalformedEnvelope):
            envelope.decode_inner(len(packed).to_bytes(2, "big") + packed + b"body")
        with pytest.raises(MalformedEnvelope):
            backend.decode_headers(packed)
    assert envelope.decode_inner(b"\x00\x07\xde\x00\x01\xa1a\xa1x") == ({"a": "x"}, b"")
    packed_bool = msgpack.packb({"flag": True})
    with pytest.raises(MalformedEnvelope):
        envelope.decode_inner(len(packed_bool).to_bytes(2, "big") + packed_bool)
    with pytest.raises(TypeError):
        envelope.encode_inner({"flag": True}, b"")


def test_certificate_id_hashes_the_signed_bytes_not_a_reencoding() -> None:
    """Another authority's msgpack encoder may choose longer integer forms; ids must follow the
    bytes that were signed, or certificate lookups break between implementations."""
    root = Ed25519PrivateKey.from_private_bytes(bytes(32))
    member = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32).public_key().public_bytes_raw()
    receive = suites.keypair_from_seed(Suite.X25519, bytes([2]) * 32)
    fields = [1, "m", member, 1, receive.public, ["t"], [], 0, 1000, 7]
    body = msgpack.packb(fields)
    longer = body[:-1] + b"\xcf" + (7).to_bytes(8, "big")  # serial 7 as a uint64
    assert msgpack.unpackb(longer) == fields
    signed_bytes = msgpack.packb([longer, root.sign(Certificate.LABEL + longer)])
    cert = Certificate.verify(signed_bytes, root.public_key())
    assert cert.serial == 7
    assert cert.cert_id == hashlib.sha256(longer).digest()[:16]


def test_sealed_headers_changed_by_one_reader_do_not_reach_the_next_message(world: World) -> None:
    """The headers of messages in a row are decoded once (``backend.decode_headers`` keeps the
    last): each message must still get a map of its own, and the kept one must not be the one
    handed out, or an application changing one message's headers would change the next's."""
    sealer, opener = world.sealer(), world.opener()
    sealed: dict[str, envelope.HeaderValue] = {"sealedbus.broker-key": b"k", "n": 1}
    for batch in (False, True):
        if batch:
            envelopes = [
                s.envelope for _ in range(3) for s in sealer.add("orders", b"m", headers=sealed)
            ]
            envelopes += [s.envelope for s in sealer.flush()]
        else:
            envelopes = [sealer.seal("orders", b"m", headers=sealed) for _ in range(3)]
        first, second, third = (opener.open("orders", e) for e in envelopes)
        first.headers["n"] = 2
        del second.headers["sealedbus.broker-key"]
        assert third.headers == sealed
        assert first.headers is not third.headers
    packed = envelope.pack_headers(sealed)
    decoded = backend.decode_headers(packed)
    decoded.clear()
    assert backend.decode_headers(packed) == sealed
    assert backend.decode_headers(envelope.pack_headers({"n": 1})) == {"n": 1}
    with pytest.raises(MalformedEnvelope):  # a refusal is not kept, nor does a kept map pass it
        backend.decode_headers(packed[:-1])
    assert backend.decode_headers(packed) == sealed
