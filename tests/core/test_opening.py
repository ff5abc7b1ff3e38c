"""The opening checks one by one: replay, expiry, who may open, who may send, allow-lists."""

from __future__ import annotations

from typing import Any

import pytest

from sealedbus import AccessDenied, LocalKeyService, Opener, Reason
from sealedbus.core import wire
from sealedbus.errors import ConfigurationError, DuplicateEnvelope, UnknownTopic
from tests.clock import Clock

from ._support import World, reencode, rejected

# -- replay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["orders", "vault"])
def test_same_envelope_twice_is_a_duplicate(world: World, topic: str) -> None:
    envelope = world.sealer().seal(topic, b"once")
    opener = world.opener()
    assert opener.open(topic, envelope).body == b"once"
    rejected(lambda: opener.open(topic, envelope), Reason.DUPLICATE)
    rejected(lambda: opener.open(topic, envelope), Reason.DUPLICATE)


def test_duplicate_in_batch_mode(world: World) -> None:
    sealer = world.sealer(batch_size=2)
    a, b = (s.envelope for i in range(2) for s in sealer.add("orders", b"%d" % i))
    opener = world.opener()
    opener.open("orders", a)
    opener.open("orders", b)
    rejected(lambda: opener.open("orders", b), Reason.DUPLICATE)
    rejected(lambda: opener.open("orders", a), Reason.DUPLICATE)


def test_far_out_of_window_sequence(world: World) -> None:
    sealer = world.sealer()
    envelopes = [sealer.seal("orders", b"%d" % i) for i in range(12)]
    opener = world.opener(replay_window=8)
    assert opener.open("orders", envelopes[11]).sequence == 11
    rejected(lambda: opener.open("orders", envelopes[0]), Reason.TOO_OLD)
    rejected(lambda: opener.open("orders", envelopes[3]), Reason.TOO_OLD)
    assert opener.open("orders", envelopes[4]).body == b"4"  # oldest one still inside the window
    assert opener.open("orders", envelopes[10]).body == b"10"  # out of order but new
    rejected(lambda: opener.open("orders", envelopes[10]), Reason.DUPLICATE)


def test_release_makes_a_redelivery_acceptable(world: World) -> None:
    envelope = world.sealer().seal("orders", b"retry me")
    opener = world.opener()
    message = opener.open("orders", envelope)
    rejected(lambda: opener.open("orders", envelope), Reason.DUPLICATE)
    opener.release(message)
    assert opener.open("orders", envelope).body == b"retry me"
    rejected(lambda: opener.open("orders", envelope), Reason.DUPLICATE)


def test_release_is_per_message(world: World) -> None:
    sealer = world.sealer()
    a, b = sealer.seal("orders", b"a"), sealer.seal("orders", b"b")
    opener = world.opener()
    ma = opener.open("orders", a)
    opener.open("orders", b)
    opener.release(ma)
    rejected(lambda: opener.open("orders", b), Reason.DUPLICATE)
    assert opener.open("orders", a).body == b"a"


def test_rejected_envelopes_do_not_count_as_seen(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x")
    opener = world.opener()
    rejected(lambda: opener.open("orders", envelope[:60]), Reason.MALFORMED)
    tampered = envelope[:-1] + bytes([envelope[-1] ^ 1])  # (setting it to 0 was a no-op 1 in 256)
    rejected(lambda: opener.open("orders", tampered), Reason.BAD_SIGNATURE)
    assert opener.open("orders", envelope).body == b"x"


# -- expiry and clocks ----------------------------------------------------------------------


def _opener_at(world: World, t: float, **kwargs: Any) -> Opener:
    return world.opener(clock=Clock(t), **kwargs)


def test_expired_with_injected_clock(world: World, clock: Clock) -> None:
    envelope = world.sealer().seal("orders", b"x", ttl=10)
    message = _opener_at(world, clock.t + 10 + 120 - 1).open("orders", envelope)  # skew allowed
    assert message.expires_at == clock.t + 10
    rejected(
        lambda: _opener_at(world, clock.t + 10 + 120 + 1).open("orders", envelope), Reason.EXPIRED
    )
    opener = _opener_at(world, clock.t + 11, clock_skew=0)
    rejected(lambda: opener.open("orders", envelope), Reason.EXPIRED)
    assert _opener_at(world, clock.t + 9, clock_skew=0).open("orders", envelope).body == b"x"


def test_no_ttl_never_expires_but_max_age_applies(world: World, clock: Clock) -> None:
    world.ks.create_topic(
        "unbounded", producers=["producer"], consumers=["consumer"], max_message_age=None
    )
    envelope = world.sealer().seal("unbounded", b"x")
    later = clock.t + 6 * 86_400
    assert _opener_at(world, later).open("unbounded", envelope).expires_at is None
    rejected(
        lambda: _opener_at(world, later, max_age=3600).open("unbounded", envelope),
        Reason.EXPIRED,
    )
    assert _opener_at(world, clock.t + 3000, max_age=3600).open("unbounded", envelope).body == b"x"


def test_replay_to_a_restarted_consumer_past_the_topic_max_age_is_refused(
    world: World, clock: Clock
) -> None:
    """Issue 8 item 7: a replay window lives in one opener's memory, so a restarted (or another)
    consumer accepted a replay for the whole retention (7 days). Each topic's maximum message
    age, signed into its epoch descriptions (default 24 h), now bounds that for every opener."""
    envelope = world.sealer().seal("orders", b"x")
    description = world.members["consumer"].epoch_keys("orders", 0, clock.ms).description
    assert description.max_age_ms == 86_400_000
    skew = 120
    restarted = _opener_at(world, clock.t + 86_400 + skew)  # a new opener: an empty window
    assert restarted.open("orders", envelope).body == b"x"
    replayed_later = _opener_at(world, clock.t + 86_400 + skew + 1)
    rejected(lambda: replayed_later.open("orders", envelope), Reason.EXPIRED)


def test_from_future_beyond_clock_skew(world: World, clock: Clock) -> None:
    ahead = Clock(clock.t + 121)
    envelope = world.sealer(clock=ahead).seal("orders", b"x")
    rejected(lambda: world.opener().open("orders", envelope), Reason.FROM_FUTURE)
    assert world.opener(clock_skew=130).open("orders", envelope).body == b"x"


def test_clock_skew_allowance_respected(world: World, clock: Clock) -> None:
    envelope = world.sealer(clock=Clock(clock.t + 119)).seal("orders", b"x")
    assert world.opener().open("orders", envelope).body == b"x"
    strict = world.opener(clock_skew=0)
    early = world.sealer(clock=Clock(clock.t + 1)).seal("orders", b"y")
    rejected(lambda: strict.open("orders", early), Reason.FROM_FUTURE)


def test_sent_before_certificate_validity(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x")
    h = wire.parse(envelope).header
    backdated = reencode(envelope, sent_at_ms=h.sent_at_ms - 3_600_000)
    rejected(lambda: world.opener().open("orders", backdated), Reason.CERTIFICATE_EXPIRED)


# -- who may open ---------------------------------------------------------------------------


def test_member_not_among_consumers_is_not_granted(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x")
    rejected(lambda: world.opener("outsider").open("orders", envelope), Reason.NOT_GRANTED)


@pytest.mark.parametrize("topic", ["orders", "vault"])
def test_producers_are_write_only(world: World, topic: str) -> None:
    envelope = world.sealer().seal(topic, b"x")
    rejected(lambda: world.opener("producer").open(topic, envelope), Reason.NOT_GRANTED)


def test_consumer_of_another_topic_is_not_granted(world: World) -> None:
    envelope = world.sealer().seal("mirror", b"x")
    rejected(lambda: world.opener("consumer2").open("mirror", envelope), Reason.NOT_GRANTED)


# -- who may send ---------------------------------------------------------------------------


def test_consumer_cannot_seal(world: World) -> None:
    with pytest.raises(AccessDenied):
        world.sealer("consumer").seal("orders", b"x")
    with pytest.raises(AccessDenied):
        world.sealer("producer").seal("audit", b"x")


def test_sealing_to_unknown_topic(world: World) -> None:
    with pytest.raises(UnknownTopic):
        world.sealer().seal("no-such-topic", b"x")


def test_sender_not_allowed_on_that_topic(world: World) -> None:
    envelope = world.sealer("producer2").seal("audit", b"x")
    assert world.opener().open("audit", envelope).sender == "producer2"
    rejected(lambda: world.opener().open("mirror", envelope), Reason.SENDER_NOT_ALLOWED)


def test_revoked_sender(world: World, clock: Clock) -> None:
    sealer = world.sealer("producer2")
    before = sealer.seal("orders", b"before")
    seen_before = world.opener()
    assert seen_before.open("orders", sealer.seal("orders", b"warm")).sender == "producer2"
    world.ks.revoke("producer2")
    rejected(lambda: world.opener().open("orders", before), Reason.SENDER_REVOKED)
    clock.advance(1.0)  # an opener that knew the sender re-checks revocation every second
    rejected(lambda: seen_before.open("orders", before), Reason.SENDER_REVOKED)
    with pytest.raises(AccessDenied):
        world.sealer("producer2").seal("orders", b"fresh sealer")
    with pytest.raises(AccessDenied):
        sealer.seal("orders", b"after")  # the old sealer re-checks every second too


def test_revoked_member_cannot_enroll_again(world: World) -> None:
    world.ks.revoke("outsider")
    with pytest.raises(AccessDenied):
        world.ks.enroll("outsider")


def test_unknown_sender_certificate(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x")
    forged = reencode(envelope, cert_id=b"\x42" * 16)
    rejected(lambda: world.opener().open("orders", forged), Reason.UNKNOWN_SENDER)


# -- allow-lists and limits -----------------------------------------------------------------


def test_suite_not_in_allow_list(world: World) -> None:
    classic = world.sealer().seal("orders", b"x")
    hybrid = world.sealer().seal("vault", b"x")
    pq_only = world.opener(suites=["x25519-mlkem768"])
    rejected(lambda: pq_only.open("orders", classic), Reason.SUITE)
    assert pq_only.open("vault", hybrid).body == b"x"
    classic_only = world.opener(suites=["x25519"])
    rejected(lambda: classic_only.open("vault", hybrid), Reason.SUITE)
    assert classic_only.open("orders", classic).body == b"x"


def test_plaintext_is_not_an_envelope(world: World) -> None:
    opener = world.opener()
    for data in (b"", b"{}", b"hello world", b"\x53", b"S\xb0" + bytes(200)):
        rejected(lambda d=data: opener.open("orders", d), Reason.NOT_ENVELOPE)  # type: ignore[misc]


def test_plaintext_passthrough(world: World) -> None:
    opener = world.opener(plaintext_passthrough=True)
    message = opener.open("orders", b"legacy")
    assert (message.body, message.sender, message.headers) == (b"legacy", None, {})
    envelope = world.sealer().seal("orders", b"sealed")
    assert opener.open("orders", envelope).sender == "producer"
    # passthrough never weakens checks on what claims to be an envelope
    rejected(lambda: opener.open("orders", envelope[:40]), Reason.MALFORMED)
    tampered = envelope[:-1] + bytes([envelope[-1] ^ 1])  # (setting it to 0 was a no-op 1 in 256)
    rejected(lambda: opener.open("orders", tampered), Reason.BAD_SIGNATURE)
    rejected(lambda: opener.open("orders", envelope), Reason.DUPLICATE)


def test_oversized_envelope(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x" * 1000)
    rejected(
        lambda: world.opener(max_envelope=len(envelope) - 1).open("orders", envelope),
        Reason.TOO_LARGE,
    )
    assert world.opener(max_envelope=len(envelope)).open("orders", envelope).body == b"x" * 1000
    rejected(lambda: world.opener(max_envelope=10).open("orders", b"y" * 11), Reason.TOO_LARGE)


def test_opened_message_fields(world: World, clock: Clock) -> None:
    envelope = world.sealer().seal(
        "orders", b"body", headers={"a": "1", "b": b"2", "c": 3}, content_type="application/x"
    )
    message = world.opener().open("orders", envelope)
    assert message.body == b"body"
    assert message.headers == {"a": "1", "b": b"2", "c": 3}
    assert message.content_type == "application/x"
    assert (message.topic, message.sender, message.epoch, message.sequence) == (
        "orders",
        "producer",
        0,
        0,
    )
    assert message.sent_at == clock.t
    assert message.expires_at is None
    header = wire.parse(envelope).header
    assert message.session == header.cert_id + header.session_id


# -- sealer arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 0x10000},
        {"max_session_messages": 0},
        {"max_session_seconds": 0},
        {"epoch_check_interval": -1},
        {"max_body": 0},
    ],
    ids=lambda k: next(iter(k)),
)
def test_sealer_refuses_unworkable_settings(world: World, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        world.sealer(**kwargs)


def test_sealer_refuses_unworkable_messages(world: World) -> None:
    sealer = world.sealer(max_body=10)
    with pytest.raises(ConfigurationError):
        sealer.seal("orders", b"x" * 11)
    with pytest.raises(ConfigurationError):
        sealer.seal("orders", b"x", content_type="x" * 256)
    for ttl in (0, -1, 0.0001, 50 * 86_400):
        with pytest.raises(ConfigurationError):
            sealer.seal("orders", b"x", ttl=ttl)
    with pytest.raises(ConfigurationError):
        sealer.seal("orders", b"x", headers={"big": b"\0" * 70_000})
    assert world.opener().open("orders", sealer.seal("orders", b"x" * 10)).body == b"x" * 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"suites": ["bogus"]},
        {"suites": []},
        {"replay_window": 0},
        {"max_sessions": 0},
        {"threads": 0},
        {"max_envelope": 0},
    ],
)
def test_bad_opener_settings_raise_configuration_error(kwargs: dict[str, object]) -> None:
    ks = LocalKeyService()
    with pytest.raises(ConfigurationError):
        Opener(ks.enroll("c"), **kwargs)  # type: ignore[arg-type]


def test_partition_scopes_accept_a_backlog_read_partition_by_partition() -> None:
    """Issue 9.1: sequence 4,999 of one partition before sequence 10 of another is fine."""
    from sealedbus.sealer import Sealer

    keys = LocalKeyService()
    producer, consumer = keys.enroll("p"), keys.enroll("c")
    keys.create_topic("t", producers=["p"], consumers=["c"])
    sealer = Sealer(producer, batch_size=64)
    envelopes = [sealer.seal("t", f"{i}".encode()) for i in range(300)]
    opener = Opener(consumer, replay_window=16)
    parts = {p: envelopes[p::3] for p in range(3)}
    opened = [opener.open("t", e, p).body for p in (2, 0, 1) for e in parts[p]]
    assert sorted(int(b) for b in opened) == list(range(300))
    shared = Opener(consumer, replay_window=16)  # without scopes: the old behaviour
    with pytest.raises(DuplicateEnvelope):
        for p in (2, 0, 1):
            for e in parts[p]:
                shared.open("t", e)


def test_restored_replay_state_drops_replays_after_a_restart() -> None:
    from sealedbus.sealer import Sealer

    keys = LocalKeyService()
    producer, consumer = keys.enroll("p"), keys.enroll("c")
    keys.create_topic("t", producers=["p"], consumers=["c"])
    sealer = Sealer(producer)
    envelopes = [sealer.seal("t", f"{i}".encode()) for i in range(5)]
    first = Opener(consumer)
    last = [first.open("t", e, 0) for e in envelopes[:4]][-1]
    restarted = Opener(consumer)
    restarted.restore_replay("t", 0, {last.replay_digest: last.sequence})
    with pytest.raises(DuplicateEnvelope):
        restarted.open("t", envelopes[1], 0)
    assert restarted.open("t", envelopes[4], 0).body == b"4"
    assert restarted.open("t", envelopes[1], 1).body == b"1"  # state is per partition
