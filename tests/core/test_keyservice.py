"""LocalKeyService semantics on an injected clock: schedules, sessions, policy changes, retention,
access windows, deny by default."""

from __future__ import annotations

import pytest

from sealedbus import AccessDenied, KeySource, LocalKeyService, Opener, Reason, Sealer
from sealedbus.core import wire
from sealedbus.errors import ConfigurationError, KeyServiceUnavailable, UnknownTopic

from ._support import Clock, World, make_world, reencode, rejected

PERIOD = 100.0  # publish-ahead is a tenth of it: 10 s
RETENTION = 300.0


@pytest.fixture
def short(clock: Clock) -> World:
    """A world whose topics rotate every 100 s and destroy keys 300 s after an epoch ends."""
    return make_world(clock=clock, rotation_period=PERIOD, retention=RETENTION)


def _epoch(envelope: bytes) -> int:
    return wire.parse(envelope).header.epoch


def _session(envelope: bytes) -> bytes:
    return wire.parse(envelope).header.session_id


def test_members_are_key_sources(world: World) -> None:
    for member in world.members.values():
        assert isinstance(member, KeySource)


def test_next_epoch_published_ahead(short: World, clock: Clock) -> None:
    clock.advance(PERIOD - 11)
    assert [e.epoch for e in short.ks.epochs("orders")] == [0]
    clock.advance(1)
    epochs = short.ks.epochs("orders")
    assert [e.epoch for e in epochs] == [0, 1]
    assert epochs[1].not_before_ms == epochs[0].not_after_ms == int((clock.t + 10) * 1000)
    assert not any(e.destroyed for e in epochs)
    assert epochs[0].destroy_after_ms == epochs[0].not_after_ms + int(RETENTION * 1000)


@pytest.mark.parametrize("topic", ["orders", "vault"])
def test_sealer_switches_at_the_boundary_and_opener_opens_both(
    short: World, clock: Clock, topic: str
) -> None:
    sealer, opener = short.sealer(), short.opener()
    clock.advance(PERIOD - 0.5)
    last_old = sealer.seal(topic, b"old")
    clock.advance(0.5)  # less than the sealer's check interval: the epoch end still switches
    first_new = sealer.seal(topic, b"new")
    assert (_epoch(last_old), _epoch(first_new)) == (0, 1)
    assert _session(last_old) != _session(first_new)
    assert opener.open(topic, first_new).epoch == 1
    assert opener.open(topic, last_old).epoch == 0


def test_epoch_keeps_counting_across_many_periods(short: World, clock: Clock) -> None:
    sealer, opener = short.sealer(), short.opener()
    seen = []
    for _ in range(5):
        envelope = sealer.seal("orders", b"x")
        seen.append(_epoch(envelope))
        assert opener.open("orders", envelope).body == b"x"
        clock.advance(PERIOD)
    assert seen == sorted(seen) and len(set(seen)) == 5


def test_session_rotates_after_max_messages(world: World) -> None:
    sealer, opener = world.sealer(max_session_messages=3), world.opener()
    envelopes = [sealer.seal("orders", b"%d" % i) for i in range(7)]
    headers = [wire.parse(e).header for e in envelopes]
    assert [h.seq for h in headers] == [0, 1, 2, 0, 1, 2, 0]
    sessions = [h.session_id for h in headers]
    assert len(set(sessions)) == 3
    assert sessions[0] == sessions[2] != sessions[3] == sessions[5] != sessions[6]
    assert [opener.open("orders", e).body for e in envelopes] == [b"%d" % i for i in range(7)]


def test_session_rotates_after_max_seconds(world: World, clock: Clock) -> None:
    sealer, opener = world.sealer(max_session_seconds=10), world.opener()
    first = sealer.seal("orders", b"a")
    clock.advance(9.5)
    second = sealer.seal("orders", b"b")
    clock.advance(0.5)
    third = sealer.seal("orders", b"c")
    assert _session(first) == _session(second) != _session(third)
    assert wire.parse(third).header.seq == 0
    assert [opener.open("orders", e).body for e in (first, second, third)] == [b"a", b"b", b"c"]


def test_manual_rotate(world: World, clock: Clock) -> None:
    sealer, opener = world.sealer(), world.opener()
    before = sealer.seal("orders", b"before")
    assert world.ks.rotate("orders") == 1
    clock.advance(1.0)  # the sealer asks the key service again after epoch_check_interval
    after = sealer.seal("orders", b"after")
    assert (_epoch(before), _epoch(after)) == (0, 1)
    assert opener.open("orders", after).body == b"after"
    assert opener.open("orders", before).body == b"before"
    with pytest.raises(UnknownTopic):
        world.ks.rotate("nope")


def test_rotate_withdraws_an_epoch_published_ahead(short: World, clock: Clock) -> None:
    clock.advance(PERIOD - 5)
    assert [e.epoch for e in short.ks.epochs("orders")] == [0, 1]
    assert short.ks.rotate("orders") == 2
    epochs = {e.epoch: e for e in short.ks.epochs("orders")}
    assert epochs[1].destroyed and not epochs[2].destroyed
    assert _epoch(short.sealer().seal("orders", b"x")) == 2


def test_removed_consumer_cannot_open_the_new_epoch(world: World, clock: Clock) -> None:
    sealer = world.sealer()
    stays, leaves = world.opener("consumer"), world.opener("consumer2")
    old = sealer.seal("orders", b"old")
    assert leaves.open("orders", old).body == b"old"
    world.ks.set_policy("orders", consumers=["consumer"])
    assert [e.epoch for e in world.ks.epochs("orders")] == [0, 1]  # removal rotated at once
    clock.advance(1.0)
    new = sealer.seal("orders", b"new")
    assert _epoch(new) == 1
    assert stays.open("orders", new).body == b"new"
    rejected(lambda: leaves.open("orders", new), Reason.NOT_GRANTED)
    rejected(lambda: world.opener("consumer2").open("orders", new), Reason.NOT_GRANTED)


def test_adding_a_producer_lets_it_seal(world: World, clock: Clock) -> None:
    with pytest.raises(AccessDenied):
        world.sealer("outsider").seal("mirror", b"x")
    world.ks.set_policy("mirror", producers=["producer", "outsider"])
    envelope = world.sealer("outsider").seal("mirror", b"x")
    assert world.opener().open("mirror", envelope).sender == "outsider"


def test_revoking_a_consumer_rotates_its_topics(world: World) -> None:
    world.ks.revoke("consumer2")
    assert [e.epoch for e in world.ks.epochs("orders")] == [0, 1]
    assert [e.epoch for e in world.ks.epochs("mirror")] == [0]  # consumer2 never read it
    envelope = world.sealer().seal("orders", b"x")
    rejected(lambda: world.opener("consumer2").open("orders", envelope), Reason.NOT_GRANTED)


@pytest.mark.parametrize("topic", ["orders", "vault"])
def test_retention_destroys_epoch_keys(short: World, clock: Clock, topic: str) -> None:
    sealer, opener = short.sealer(), short.opener()
    clock.advance(10)
    opened = sealer.seal(topic, b"opened")
    kept = sealer.seal(topic, b"kept")  # same session: the opener has it cached
    assert opener.open(topic, opened).body == b"opened"
    destroy_at = short.ks.epochs(topic)[0].destroy_after_ms / 1000
    clock.t = destroy_at - 1
    fresh_before = short.opener()
    assert fresh_before.open(topic, opened).body == b"opened"
    clock.t = destroy_at
    assert short.ks.epochs(topic)[0].destroyed
    rejected(lambda: opener.open(topic, kept), Reason.EPOCH_DESTROYED)
    rejected(lambda: fresh_before.open(topic, kept), Reason.EPOCH_DESTROYED)
    rejected(lambda: short.opener().open(topic, kept), Reason.EPOCH_DESTROYED)
    short.enroll("late")
    short.ks.set_policy(topic, consumers=["consumer", "late"])
    rejected(lambda: short.opener("late").open(topic, kept), Reason.EPOCH_DESTROYED)
    # the current epoch is unaffected
    assert opener.open(topic, sealer.seal(topic, b"now")).body == b"now"


def test_retention_applies_to_a_new_consumer_with_history(clock: Clock) -> None:
    world = make_world(clock=clock, rotation_period=PERIOD, retention=RETENTION, history=True)
    envelope = world.sealer().seal("orders", b"x")
    world.enroll("late")
    clock.advance(PERIOD + RETENTION)
    world.ks.set_policy("orders", consumers=["consumer", "late"])
    rejected(lambda: world.opener("late").open("orders", envelope), Reason.EPOCH_DESTROYED)


@pytest.mark.parametrize("history", [False, True])
def test_consumer_access_window(clock: Clock, history: bool) -> None:
    world = make_world(clock=clock, rotation_period=PERIOD, retention=RETENTION, history=history)
    sealer = world.sealer()
    clock.advance(10)
    old = sealer.seal("orders", b"old")
    clock.advance(PERIOD)  # epoch 0 ended
    current = sealer.seal("orders", b"current")
    assert (_epoch(old), _epoch(current)) == (0, 1)
    world.enroll("late")
    world.ks.set_policy("orders", consumers=["consumer", "consumer2", "late"])
    late = world.opener("late")
    assert late.open("orders", current).body == b"current"  # the epoch it was added in
    if history:
        assert late.open("orders", old).body == b"old"
    else:
        rejected(lambda: late.open("orders", old), Reason.NOT_GRANTED)
    assert world.opener().open("orders", old).body == b"old"  # an earlier consumer still can


def test_deny_by_default(world: World) -> None:
    world.ks.create_topic("empty")
    with pytest.raises(AccessDenied):
        world.sealer().seal("empty", b"x")
    world.ks.create_topic("write-only", producers=["producer"])
    envelope = world.sealer().seal("write-only", b"x")
    for member in world.members:
        rejected(
            lambda m=member: world.opener(m).open("write-only", envelope),  # type: ignore[misc]
            Reason.NOT_GRANTED,
        )


def test_unknown_epoch(world: World) -> None:
    envelope = world.sealer().seal("orders", b"x")
    rejected(
        lambda: world.opener().open("orders", reencode(envelope, epoch=7)), Reason.EPOCH_UNKNOWN
    )


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


def test_tick_destroys_without_being_asked(short: World, clock: Clock) -> None:
    clock.advance(PERIOD + RETENTION)
    short.ks.tick()
    epochs = short.ks.epochs("orders")
    assert epochs[0].destroyed
    assert not epochs[-1].destroyed


def test_certificates_renew_as_they_age(clock: Clock) -> None:
    ks = LocalKeyService(clock=clock, certificate_lifetime=100)
    p, c = ks.enroll("p"), ks.enroll("c")
    ks.create_topic("t", producers=["p"], consumers=["c"])
    sealer = Sealer(p, clock=clock)
    first = sealer.seal("t", b"1")
    clock.advance(60)  # past half the lifetime: the next identity check renews
    second = sealer.seal("t", b"2")
    assert wire.parse(first).header.cert_id != wire.parse(second).header.cert_id
    clock.advance(60)  # the first certificate has expired; what it signed while valid still opens
    opener = Opener(c, clock=clock)
    assert [opener.open("t", e).body for e in (first, second)] == [b"1", b"2"]


def test_certificate_with_exactly_half_its_lifetime_left_is_reissued(clock: Clock) -> None:
    """LocalKeyService kept such a certificate where the KDS reissued it; both now apply
    ``authority.needs_reissue``."""
    ks = LocalKeyService(clock=clock, certificate_lifetime=100)
    p = ks.enroll("p")
    ks.create_topic("t", producers=["p"])
    first = p.identity(clock.ms)[1]
    clock.advance(50)
    assert p.identity(clock.ms)[1].serial > first.serial


def test_sealing_before_the_first_epoch_is_a_clear_retryable_error() -> None:
    t = [1_000_000.0]
    ks = LocalKeyService(clock=lambda: t[0])
    ks.create_topic("orders", producers=["p"], consumers=["c"])
    sealer = Sealer(ks.enroll("p"), clock=lambda: t[0] - 3600)  # an hour behind
    with pytest.raises(KeyServiceUnavailable, match="no epoch yet") as info:
        sealer.seal("orders", b"x")
    assert info.value.retryable
