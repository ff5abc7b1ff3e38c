"""The key-service semantics, one suite run against both back ends (``LocalKeyService`` and the
KDS, see ``_backends.py``): schedules, sessions, policy changes, retention, access windows, deny
by default, revocation, certificates. What only one back end has (the KDS's roles and HTTP
answers, LocalKeyService's argument checks) is tested next to it: ``tests/keys/test_local.py``,
``tests/kds/test_kds_semantics.py``."""

from __future__ import annotations

import pytest

from sealedbus import AccessDenied, KeySource, Opener, Reason, Sealer
from sealedbus.brokers._common import KeyTokenizer
from sealedbus.core import wire
from sealedbus.errors import UnauthenticEnvelope, UnknownTopic, UnopenableEnvelope
from tests.clock import Clock
from tests.core._support import reencode, rejected
from tests.kds._harness import settle

from ._backends import Backend, World, populate

PERIOD = 100.0  # publish-ahead is a tenth of it: 10 s
RETENTION = 300.0


@pytest.fixture
def world(ks: Backend) -> World:
    """Five members and four topics (one of the hybrid suite) on the back end under test."""
    return populate(ks)


@pytest.fixture
def short(ks: Backend) -> World:
    """A world whose topics rotate every 100 s and destroy keys 300 s after an epoch ends."""
    return populate(ks, rotation_period=PERIOD, retention=RETENTION)


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


@pytest.mark.parametrize("topic", ["orders", "vault"])
def test_shred_reaches_a_running_opener_within_its_refresh(
    world: World, clock: Clock, topic: str
) -> None:
    """Regression (issue 14): an opener running before a topic shred kept its sessions (and the
    KDS client its epoch keys) until destroy_after, so it opened the topic's earlier messages
    until restarted. Now it refuses them within the client's epoch refresh (10 s) and the
    opener's revocation check (1 s)."""
    sealer, opener = world.sealer(), world.opener()
    first, kept = sealer.seal(topic, b"first"), sealer.seal(topic, b"kept")
    assert opener.open(topic, first).body == b"first"
    fresh = world.ks.shred_topic(topic)
    clock.advance(10)  # the KDS client asks what is gone, in the background of this open:
    after = sealer.seal(topic, b"after")
    assert _epoch(after) == fresh
    assert opener.open(topic, after).body == b"after"
    settle()
    clock.advance(1)  # and the opener hears of it at its next revocation check
    rejected(lambda: opener.open(topic, kept), Reason.EPOCH_DESTROYED)
    rejected(lambda: world.opener().open(topic, kept), Reason.EPOCH_DESTROYED)
    assert opener.open(topic, sealer.seal(topic, b"still")).body == b"still"


def test_retention_applies_to_a_new_consumer_with_history(ks: Backend, clock: Clock) -> None:
    world = populate(ks, rotation_period=PERIOD, retention=RETENTION, history=True)
    envelope = world.sealer().seal("orders", b"x")
    world.enroll("late")
    clock.advance(PERIOD + RETENTION)
    world.ks.set_policy("orders", consumers=["consumer", "late"])
    rejected(lambda: world.opener("late").open("orders", envelope), Reason.EPOCH_DESTROYED)


@pytest.mark.parametrize("history", [False, True])
def test_consumer_access_window(ks: Backend, clock: Clock, history: bool) -> None:
    world = populate(ks, rotation_period=PERIOD, retention=RETENTION, history=history)
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


def test_tick_destroys_without_being_asked(short: World, clock: Clock) -> None:
    clock.advance(PERIOD + RETENTION)
    short.ks.tick()
    epochs = short.ks.epochs("orders")
    assert epochs[0].destroyed
    assert not epochs[-1].destroyed


def test_certificates_renew_as_they_age(ks: Backend, clock: Clock) -> None:
    ks.set_certificate_lifetime(100)
    p, c = ks.enroll("p"), ks.enroll("c")
    ks.create_topic("t", producers=["p"], consumers=["c"])
    sealer = Sealer(p, clock=clock)
    first = sealer.seal("t", b"1")
    clock.advance(60)  # past half the lifetime: the next identity check renews
    sealer.seal("t", b"renews (a KDS client: in the background)")
    settle()
    clock.advance(1)  # the sealer asks its key source again
    second = sealer.seal("t", b"2")
    assert wire.parse(first).header.cert_id != wire.parse(second).header.cert_id
    clock.advance(59)  # the first certificate has expired; what it signed while valid still opens
    opener = Opener(c, clock=clock)
    assert [opener.open("t", e).body for e in (first, second)] == [b"1", b"2"]


def test_certificate_with_exactly_half_its_lifetime_left_is_reissued(
    ks: Backend, clock: Clock
) -> None:
    """LocalKeyService kept such a certificate where the KDS reissued it; both now apply
    ``authority.needs_reissue``."""
    ks.set_certificate_lifetime(100)
    ks.enroll("p")
    ks.create_topic("t", producers=["p"])
    first = ks.certificate("p")
    clock.advance(49)
    assert ks.certificate("p").serial == first.serial
    clock.advance(1)
    assert ks.certificate("p").serial > first.serial


# -- from the KDS's semantics tests, now run on both -------------------------------------------


def pair(ks: Backend, **topic: object) -> tuple[Sealer, Opener]:
    ks.create_topic("orders", producers=["p"], consumers=["c"], **topic)  # type: ignore[arg-type]
    return Sealer(ks.enroll("p"), clock=ks.clock), Opener(ks.enroll("c"), clock=ks.clock)


def test_round_trip_keeps_body_sender_and_headers(ks: Backend) -> None:
    sealer, opener = pair(ks)
    assert isinstance(sealer.keys, KeySource)
    message = opener.open("orders", sealer.seal("orders", b"hello", headers={"k": "v"}))
    assert (message.body, message.sender, message.headers) == (b"hello", "p", {"k": "v"})


def test_hybrid_suite_round_trips_for_hybrid_receive_keys_only(ks: Backend) -> None:
    ks.create_topic("orders", producers=["p"], consumers=["c", "classic"], suite="x25519-mlkem768")
    sealer = Sealer(ks.enroll("p"), clock=ks.clock)
    opener = Opener(ks.enroll("c", suite="x25519-mlkem768"), clock=ks.clock)
    assert opener.open("orders", sealer.seal("orders", b"pq")).body == b"pq"
    classic = Opener(ks.enroll("classic"), clock=ks.clock)  # an X25519 receive key
    with pytest.raises(UnopenableEnvelope, match="hybrid receive keys") as refused:
        classic.open("orders", sealer.seal("orders", b"pq"))
    assert refused.value.reason is Reason.NOT_GRANTED


def test_deny_by_default_with_reasons(ks: Backend) -> None:
    sealer, _ = pair(ks)
    stranger = ks.enroll("stranger")
    with pytest.raises(AccessDenied, match="may not produce"):
        Sealer(stranger, clock=ks.clock).seal("orders", b"x")
    with pytest.raises(UnopenableEnvelope) as refused:
        Opener(stranger, clock=ks.clock).open("orders", sealer.seal("orders", b"x"))
    assert refused.value.reason is Reason.NOT_GRANTED
    with pytest.raises(UnknownTopic):
        sealer.seal("nope", b"x")
    # a producer gets public keys only: asking for a grant is refused with a reason
    epoch = sealer.keys.sealing_epoch("orders", ks.clock.ms)
    with pytest.raises(UnopenableEnvelope, match="may not consume") as refused:
        sealer.keys.epoch_keys("orders", epoch.epoch, ks.clock.ms)
    assert refused.value.reason is Reason.NOT_GRANTED


def test_consumer_added_later_gets_no_earlier_epochs_unless_history(ks: Backend) -> None:
    for history in (False, True):
        topic = f"t{int(history)}"
        ks.create_topic(
            topic,
            producers=["p"],
            consumers=[],
            history=history,
            rotation_period=60,
            retention=3600,
        )
        ks.set_policy(topic, producers=[f"p-{topic}"])
        sealer = Sealer(ks.enroll(f"p-{topic}"), clock=ks.clock)
        old = sealer.seal(topic, b"before")
        ks.clock.advance(61)
        ks.tick()
        ks.set_policy(topic, consumers=[f"c-{topic}"])
        opener = Opener(ks.enroll(f"c-{topic}"), clock=ks.clock)
        if history:
            assert opener.open(topic, old).body == b"before"
        else:
            with pytest.raises(UnopenableEnvelope, match="predates") as refused:
                opener.open(topic, old)
            assert refused.value.reason is Reason.NOT_GRANTED
        assert opener.open(topic, sealer.seal(topic, b"after")).body == b"after"


def test_no_failed_open_across_rotations_under_load(ks: Backend) -> None:
    sealer, opener = pair(ks, rotation_period=10, retention=100)
    epochs_seen = set()
    for _ in range(400):  # 40 s of traffic in 0.1 s steps: four rotations
        ks.clock.advance(0.1)
        ks.tick()
        message = opener.open("orders", sealer.seal("orders", b"m"))
        epochs_seen.add(message.epoch)
    assert len(epochs_seen) >= 4


def test_forced_rotation_refuses_the_withdrawn_epoch(ks: Backend) -> None:
    ks.create_topic("orders", producers=["p"], consumers=["c"], rotation_period=100)
    ks.clock.advance(95)
    ks.tick()
    assert ks.rotate("orders") == 2
    states = {e.epoch: e.destroyed for e in ks.epochs("orders")}
    assert states == {0: False, 1: True, 2: False}
    consumer = ks.enroll("c")
    with pytest.raises(UnopenableEnvelope) as refused:
        consumer.epoch_keys("orders", 1, ks.clock.ms)
    assert refused.value.reason is Reason.EPOCH_DESTROYED


def test_removing_a_consumer_rotates_at_once(ks: Backend) -> None:
    sealer, opener = pair(ks)
    ks.set_policy("orders", consumers=["c2"])
    ks.set_policy("orders", consumers=["c2"])  # no removal: no rotation
    assert len(ks.epochs("orders")) == 2
    ks.clock.advance(11)  # past the producer's epoch refresh interval
    sealer.seal("orders", b"refreshes the epoch off the hot path")
    settle()
    ks.clock.advance(1)  # the sealer asks its key source again
    envelope = sealer.seal("orders", b"after removal")
    with pytest.raises(UnopenableEnvelope) as refused:
        opener.open("orders", envelope)
    assert refused.value.reason is Reason.NOT_GRANTED
    newcomer = Opener(ks.enroll("c2"), clock=ks.clock)
    assert newcomer.open("orders", envelope).epoch == 1


def test_revoking_a_member_rotates_and_refuses_it(ks: Backend) -> None:
    sealer, opener = pair(ks)
    ks.create_topic("other", producers=["p"], consumers=["x"])
    envelope = sealer.seal("orders", b"signed by p")
    ks.revoke("c")
    assert len(ks.epochs("orders")) == 2 and len(ks.epochs("other")) == 1
    with pytest.raises(AccessDenied, match="revoked"):
        ks.enroll("c")
    with pytest.raises(UnopenableEnvelope, match="revoked") as refused:
        opener.keys.epoch_keys("orders", 1, ks.clock.ms)
    assert refused.value.reason is Reason.NOT_GRANTED
    ks.revoke("p")
    ks.clock.advance(31)  # past the revocation list refresh interval
    reader = Opener(ks.enroll("r"), clock=ks.clock)
    ks.set_policy("orders", consumers=["r"])
    with pytest.raises(UnauthenticEnvelope) as unauthentic:
        reader.open("orders", envelope)
    assert unauthentic.value.reason is Reason.SENDER_REVOKED


def test_producer_added_later_seals_at_once(ks: Backend) -> None:
    ks.create_topic("a", producers=["p"], consumers=["c"])
    sealer = Sealer(ks.enroll("p"), clock=ks.clock)
    opener = Opener(ks.enroll("c"), clock=ks.clock)
    sealer.seal("a", b"first")
    ks.create_topic("b", producers=["p"], consumers=["c"])
    assert opener.open("b", sealer.seal("b", b"new topic")).body == b"new topic"


def test_topic_key_is_shared_by_the_topics_members_only(ks: Backend) -> None:
    sealer, opener = pair(ks)
    producer_key = sealer.keys.topic_key("orders", ks.clock.ms)
    assert producer_key == opener.keys.topic_key("orders", ks.clock.ms)
    assert len(producer_key) == 32
    token = KeyTokenizer.from_keys(sealer.keys).tokenize("orders", b"patient-42")
    assert token == KeyTokenizer.from_keys(opener.keys).tokenize("orders", b"patient-42")
    with pytest.raises(AccessDenied):
        ks.enroll("stranger").topic_key("orders", ks.clock.ms)
    with pytest.raises(UnknownTopic):
        sealer.keys.topic_key("nope", ks.clock.ms)


def test_removed_producer_is_withdrawn_from_the_topic_only(ks: Backend) -> None:
    ks.create_topic("orders", producers=["p", "p2"], consumers=["c"])
    ks.create_topic("audit", producers=["p2"], consumers=["c"])
    p2 = ks.enroll("p2")
    sealer = Sealer(p2, clock=ks.clock)
    opener = Opener(ks.enroll("c"), clock=ks.clock)
    before = sealer.seal("orders", b"before")
    elsewhere = sealer.seal("audit", b"elsewhere")
    ks.set_policy("orders", producers=["p"])
    after = sealer.seal("orders", b"after")  # the sealer still holds the old certificate
    fresh = Opener(ks.enroll("c2"), clock=ks.clock)
    ks.set_policy("orders", consumers=["c", "c2"])
    for envelope in (before, after):  # withdrawn: backdating sent_at would not help either
        with pytest.raises(UnauthenticEnvelope) as refused:
            fresh.open("orders", envelope)
        assert refused.value.reason is Reason.SENDER_NOT_ALLOWED
    assert opener.open("audit", elsewhere).body == b"elsewhere"
