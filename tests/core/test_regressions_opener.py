"""Regression tests of the opener (``sealedbus/opener.py``) and what it is granted, each named
after the weakness it closes."""

from __future__ import annotations

import os

import pytest

from sealedbus import AccessDenied, Reason
from sealedbus.core import envelope, suites, wire
from sealedbus.core.signed import EpochDescription
from sealedbus.core.suites import Suite
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


def test_hybrid_epochs_are_never_granted_under_a_classical_receive_key() -> None:
    """A grant sealed to an X25519 receive key would hand a post-quantum epoch key to whoever
    records key-service traffic today and owns a quantum computer later."""
    w = make_world(topics={"vault": (("producer",), ("consumer", "consumer2"), "x25519-mlkem768")})
    envelope_ = w.sealer().seal("vault", b"pq")
    assert w.opener("consumer").open("vault", envelope_).body == b"pq"  # hybrid receive key
    rejected(lambda: w.opener("consumer2").open("vault", envelope_), Reason.NOT_GRANTED)
