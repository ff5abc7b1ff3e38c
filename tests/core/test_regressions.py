"""Regression tests, each named after the weakness it closes."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealedbus import AccessDenied, InvalidEnvelope, KeySource, Reason
from sealedbus.core import envelope, suites, wire
from sealedbus.core.replay import ReplayWindow, Seen
from sealedbus.core.signed import Certificate, EpochDescription, SignatureError
from sealedbus.core.suites import Suite
from sealedbus.errors import ConfigurationError, KeyServiceUnavailable, MalformedEnvelope
from sealedbus.sealer import MAX_SESSION_MESSAGES, Sealer
from tests.clock import Clock

from ._support import World, make_world, rejected, split, tampered_rejected, with_proof

# Curve25519 points of small order (and non-canonical encodings of them), little-endian.
LOW_ORDER_POINTS = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


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


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_all_zero_dh_rejected(world: World, point: bytes) -> None:
    envelope_ = world.sealer().seal("orders", b"x")
    forged = reencode_session(envelope_, point)
    rejected(lambda: world.opener().open("orders", forged), Reason.DECRYPT_FAILED)
    epoch = world.members["consumer"].epoch_keys("orders", 0, world.clock.ms)
    with pytest.raises(ValueError):
        suites.join_session(Suite.X25519, b"orders", 0, epoch.keys, point, b"")
    with pytest.raises(ValueError):  # a producer never starts a session against such a key
        suites.start_session(Suite.X25519, b"orders", 0, point, os.urandom(32))
    # OpenSSL refuses these already; the library's own all-zero check stays as a second line
    with pytest.raises(suites.WeakSharedSecret):
        suites._check_shared(bytes(32))
    suites._check_shared(b"\x01" + bytes(31))


def reencode_session(data: bytes, session_id: bytes) -> bytes:
    parsed = wire.parse(data)
    h = parsed.header
    header = wire.Header(
        h.suite,
        h.batch,
        h.epoch,
        h.cert_id,
        session_id,
        h.seq,
        h.sent_at_ms,
        h.ttl_ms,
        h.content_type,
        h.encapsulation,
    )
    return header.encode() + data[len(parsed.header_bytes) :]


def test_header_suite_cannot_downgrade(world: World) -> None:
    hybrid = world.sealer().seal("vault", b"x")
    classic = world.sealer().seal("orders", b"x")
    pq_only = world.opener(suites=["x25519-mlkem768"])
    rejected(lambda: pq_only.open("orders", classic), Reason.SUITE)
    # the suite byte of a hybrid envelope flipped to X25519, with and without a cached session
    opener = world.opener()
    header, rest = hybrid[:4], hybrid[4:]
    assert header[3] == Suite.HYBRID
    downgraded = header[:3] + bytes([Suite.X25519]) + rest
    tampered_rejected(opener, "vault", downgraded)
    assert opener.open("vault", hybrid).body == b"x"
    tampered_rejected(opener, "vault", downgraded)
    tampered_rejected(pq_only, "vault", downgraded)


def test_cached_session_does_not_skip_the_suite_check(world: World) -> None:
    """Even a properly signed envelope cannot claim another suite than its topic's, also when the
    opener already holds the session (the cache must not bypass the check on a cache miss)."""
    now = world.clock.ms
    signer, cert = world.members["producer"].identity(now)
    epoch = world.members["producer"].sealing_epoch("vault", now)
    keys = suites.start_session(
        Suite.HYBRID, b"vault", epoch.epoch, epoch.public_key, os.urandom(32)
    )
    ctx = envelope.SessionContext(b"vault", keys)

    def seal(suite: Suite, seq: int) -> bytes:
        encapsulation = keys.encapsulation if suite is Suite.HYBRID else b""
        header = wire.Header(
            suite, False, epoch.epoch, cert.cert_id, keys.session_id, seq, now, 0, "", encapsulation
        ).encode()
        return envelope.finish_single(
            signer, envelope.draft(ctx, header, seq, None, b"m%d" % seq, batch=False)
        )

    opener = world.opener()
    assert opener.open("vault", seal(Suite.HYBRID, 0)).body == b"m0"  # session now cached
    rejected(lambda: opener.open("vault", seal(Suite.X25519, 1)), Reason.SUITE)
    rejected(lambda: world.opener().open("vault", seal(Suite.X25519, 2)), Reason.SUITE)


def test_batch_signature_bytes_swapped_after_cache(world: World) -> None:
    sealer = world.sealer(batch_size=4)
    a = [s.envelope for i in range(4) for s in sealer.add("orders", b"a%d" % i)]
    b = [s.envelope for i in range(4) for s in sealer.add("orders", b"b%d" % i)]
    opener = world.opener()
    assert opener.open("orders", a[0]).body == b"a0"
    assert opener.open("orders", b[0]).body == b"b0"  # both roots verified and cached
    a_head, a_sig, a_proof, a_ct = split(a[1])
    _, b_sig, b_proof, _ = split(b[1])
    for forged in (
        a_head + b_sig + a_proof + a_ct,  # the other batch's (cached) signature
        a_head + b_sig + b_proof + a_ct,  # and its path
        a_head + a_sig[::-1] + a_proof + a_ct,
        a_head + a_sig[32:] + a_sig[:32] + a_proof + a_ct,  # R and S swapped
        a_head + bytes(64) + a_proof + a_ct,
    ):
        rejected(lambda f=forged: opener.open("orders", f), Reason.BAD_SIGNATURE)  # type: ignore[misc]
    proof = wire.parse(a[1]).proof
    assert proof is not None
    rejected(
        lambda: opener.open("orders", with_proof(a[1], 0, 4, proof.path)), Reason.BAD_SIGNATURE
    )
    assert [opener.open("orders", e).body for e in a[1:]] == [b"a1", b"a2", b"a3"]


def test_verified_root_is_bound_to_its_sender(world: World) -> None:
    sealer = world.sealer(batch_size=2)
    a0, a1 = (s.envelope for i in range(2) for s in sealer.add("orders", b"a%d" % i))
    opener = world.opener()
    opener.open("orders", a0)
    other = wire.parse(world.sealer("producer2").seal("orders", b"y")).header.cert_id
    h = wire.parse(a1).header
    relabelled = wire.Header(
        h.suite,
        h.batch,
        h.epoch,
        other,
        h.session_id,
        h.seq,
        h.sent_at_ms,
        h.ttl_ms,
        h.content_type,
        h.encapsulation,
    ).encode()
    rejected(
        lambda: opener.open("orders", relabelled + a1[len(split(a1)[0]) :]), Reason.BAD_SIGNATURE
    )


def test_commitment_blocks_resigning_by_another_producer(world: World) -> None:
    """producer2 takes producer's envelope, puts its own certificate in and signs it: it cannot,
    because the signed content includes a key commitment only key holders can compute."""
    original = world.sealer().seal("orders", b"secret")
    now = world.clock.ms
    signer, cert = world.members["producer2"].identity(now)
    parsed = wire.parse(original)
    h = parsed.header
    header = wire.Header(
        h.suite,
        h.batch,
        h.epoch,
        cert.cert_id,
        h.session_id,
        h.seq,
        h.sent_at_ms,
        h.ttl_ms,
        h.content_type,
        h.encapsulation,
    ).encode()
    for guess in (bytes(32), os.urandom(32)):
        content = wire.signed_content(b"orders", header, guess, parsed.ciphertext)
        forged = header + signer.sign(wire.SIGN_MESSAGE + content) + parsed.ciphertext
        rejected(
            lambda f=forged: world.opener().open("orders", f),  # type: ignore[misc]
            Reason.BAD_SIGNATURE,
        )


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


def test_inner_headers_with_non_string_keys_are_refused() -> None:
    packed = msgpack.packb({b"k": "v"}, use_bin_type=True)
    with pytest.raises(MalformedEnvelope):
        envelope.decode_inner(len(packed).to_bytes(2, "big") + packed + b"body")


def test_destroyed_epoch_not_served_from_opener_cache(clock: Clock) -> None:
    world = make_world(clock=clock, rotation_period=10, retention=10)
    sealer, opener = world.sealer(), world.opener()
    first, second = sealer.seal("orders", b"1"), sealer.seal("orders", b"2")
    opener.open("orders", first)
    clock.advance(20)
    rejected(lambda: opener.open("orders", second), Reason.EPOCH_DESTROYED)


def test_replay_into_another_topic_rejected(world: World) -> None:
    envelope_ = world.sealer().seal("orders", b"x")
    opener = world.opener()
    opener.open("orders", envelope_)
    rejected(lambda: opener.open("mirror", envelope_), Reason.BAD_SIGNATURE)


def test_removed_producer_cannot_keep_sending(world: World, clock: Clock) -> None:
    """Its certificate still lists the topic until it expires; the revocation list withdraws
    it from that topic at once (backdating sent_at does not help), and only from that topic."""
    sealer = world.sealer("producer2")
    sealer.seal("orders", b"warm up")
    elsewhere = sealer.seal("audit", b"still allowed here")
    world.ks.set_policy("orders", producers=["producer"])
    late = sealer.seal("orders", b"after removal")  # within the sealer's check interval
    rejected(lambda: world.opener().open("orders", late), Reason.SENDER_NOT_ALLOWED)
    assert world.opener().open("audit", elsewhere).body == b"still allowed here"
    clock.advance(2)
    with pytest.raises(AccessDenied):
        sealer.seal("orders", b"refused at the source too")
    world.ks.set_policy("orders", producers=["producer", "producer2"])  # back, with a new cert
    clock.advance(2)
    assert world.opener().open("orders", sealer.seal("orders", b"again")).body == b"again"


def test_properly_signed_envelope_outside_its_epoch_window_is_refused(world: World) -> None:
    """A producer fed a stale epoch (a replayed KDS answer) seals with it long after its window:
    the opener refuses, whether the session was cached or not."""
    member = world.members["producer"]

    def seal_at(epoch: EpochDescription, sent_at: int, seq: int) -> bytes:
        signer, cert = member.identity(world.clock.ms)
        keys = suites.start_session(
            Suite.X25519, b"orders", epoch.epoch, epoch.public_key, bytes(range(1, 33))
        )
        header = wire.Header(
            Suite.X25519,
            False,
            epoch.epoch,
            cert.cert_id,
            keys.session_id,
            seq,
            sent_at,
            0,
            "",
            b"",
        ).encode()
        ctx = envelope.SessionContext(b"orders", keys)
        return envelope.finish_single(
            signer, envelope.draft(ctx, header, seq, None, b"m", batch=False)
        )

    first = member.sealing_epoch("orders", world.clock.ms)
    inside = seal_at(first, world.clock.ms, 0)
    late = seal_at(first, first.not_after_ms + 121_000, 1)  # past the window and the skew
    world.clock.advance((first.not_after_ms - world.clock.ms) / 1000 + 200)
    second = member.sealing_epoch("orders", world.clock.ms)
    assert second.epoch == first.epoch + 1
    early = seal_at(second, second.not_before_ms - 121_000, 0)
    opener = world.opener()
    assert opener.open("orders", inside).body == b"m"  # session now cached
    rejected(lambda: opener.open("orders", late), Reason.OUTSIDE_EPOCH)
    rejected(lambda: world.opener().open("orders", late), Reason.OUTSIDE_EPOCH)
    rejected(lambda: opener.open("orders", early), Reason.OUTSIDE_EPOCH)


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


def test_hybrid_epochs_are_never_granted_under_a_classical_receive_key() -> None:
    """A grant sealed to an X25519 receive key would hand a post-quantum epoch key to whoever
    records key-service traffic today and owns a quantum computer later."""
    w = make_world(topics={"vault": (("producer",), ("consumer", "consumer2"), "x25519-mlkem768")})
    envelope_ = w.sealer().seal("vault", b"pq")
    assert w.opener("consumer").open("vault", envelope_).body == b"pq"  # hybrid receive key
    rejected(lambda: w.opener("consumer2").open("vault", envelope_), Reason.NOT_GRANTED)
