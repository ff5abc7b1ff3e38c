"""The KDS reproduces LocalKeyService's semantics over HTTP, with KeyServiceClient as the
KeySource behind unchanged Sealer and Opener objects."""

from __future__ import annotations

import pytest
from sqlalchemy import delete

from sealedbus import AccessDenied, KeySource, Opener, Reason, Sealer
from sealedbus.brokers._common import KeyTokenizer
from sealedbus.core.suites import Suite
from sealedbus.errors import Refused, UnauthenticEnvelope, UnknownTopic, UnopenableEnvelope
from sealedbus.kds.service import ServiceError
from sealedbus.kds.store import consumer_since
from sealedbus.keys import signing

from ._harness import Kds, settle


def pair(kds: Kds, **topic: object) -> tuple[Sealer, Opener]:
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"], **topic)  # type: ignore[arg-type]
    return Sealer(kds.member("p"), clock=kds.clock), Opener(kds.member("c"), clock=kds.clock)


def test_client_is_a_key_source_and_round_trips(kds: Kds) -> None:
    sealer, opener = pair(kds)
    assert isinstance(sealer.keys, KeySource)
    message = opener.open("orders", sealer.seal("orders", b"hello", headers={"k": "v"}))
    assert (message.body, message.sender, message.headers) == (b"hello", "p", {"k": "v"})


def test_hybrid_suite_round_trips_for_hybrid_receive_keys_only(kds: Kds) -> None:
    kds.admin.create_topic(
        "orders", producers=["p"], consumers=["c", "classic"], suite="x25519-mlkem768"
    )
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    opener = Opener(kds.member("c", suite=Suite.HYBRID), clock=kds.clock)
    assert opener.open("orders", sealer.seal("orders", b"pq")).body == b"pq"
    classic = Opener(kds.member("classic"), clock=kds.clock)  # an X25519 receive key
    with pytest.raises(UnopenableEnvelope, match="hybrid receive keys") as refused:
        classic.open("orders", sealer.seal("orders", b"pq"))
    assert refused.value.reason is Reason.NOT_GRANTED


def test_deny_by_default_with_reasons(kds: Kds) -> None:
    sealer, _ = pair(kds)
    stranger = kds.member("stranger")
    with pytest.raises(AccessDenied, match="may not produce"):
        Sealer(stranger, clock=kds.clock).seal("orders", b"x")
    with pytest.raises(UnopenableEnvelope) as refused:
        Opener(stranger, clock=kds.clock).open("orders", sealer.seal("orders", b"x"))
    assert refused.value.reason is Reason.NOT_GRANTED
    with pytest.raises(UnknownTopic):
        sealer.seal("nope", b"x")
    # a producer gets public keys only: asking for a grant is refused with a reason
    epoch = sealer.keys.sealing_epoch("orders", kds.clock_ms())
    with pytest.raises(UnopenableEnvelope, match="may not consume") as refused:
        sealer.keys.epoch_keys("orders", epoch.epoch, kds.clock_ms())
    assert refused.value.reason is Reason.NOT_GRANTED


def test_refusal_is_http_403_with_reason(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"])
    client = kds.member("c")
    response = client._http.http.build_request("GET", "/v1/topics/orders/sealing-epoch")
    response.headers.update(
        signing.sign_request(
            client._identity.signing_key,
            "c",
            "GET",
            response.url.raw_path,
            b"",
            kds.clock_ms(),
            bytes(16),
        )
    )
    answer = kds.http.send(response)
    assert answer.status_code == 403
    assert answer.json() == {"error": "access_denied", "reason": "'c' may not produce to 'orders'"}


def test_consumer_added_later_gets_no_earlier_epochs_unless_history(kds: Kds) -> None:
    for history in (False, True):
        topic = f"t{int(history)}"
        kds.admin.create_topic(
            topic, producers=["p"], consumers=[], history=history, rotation=60, retention=3600
        )
        kds.admin.set_policy(topic, producers=[f"p-{topic}"])
        sealer = Sealer(kds.member(f"p-{topic}"), clock=kds.clock)
        old = sealer.seal(topic, b"before")
        kds.clock.advance(61)
        kds.service.tick("test")
        kds.admin.set_policy(topic, consumers=[f"c-{topic}"])
        opener = Opener(kds.member(f"c-{topic}"), clock=kds.clock)
        if history:
            assert opener.open(topic, old).body == b"before"
        else:
            with pytest.raises(UnopenableEnvelope, match="predates") as refused:
                opener.open(topic, old)
            assert refused.value.reason is Reason.NOT_GRANTED
        assert opener.open(topic, sealer.seal(topic, b"after")).body == b"after"


def test_no_failed_open_across_rotations_under_load(kds: Kds) -> None:
    sealer, opener = pair(kds, rotation=10, retention=100)
    epochs_seen = set()
    for _ in range(400):  # 40 s of traffic in 0.1 s steps: four rotations
        kds.clock.advance(0.1)
        kds.service.tick("test")
        message = opener.open("orders", sealer.seal("orders", b"m"))
        epochs_seen.add(message.epoch)
    assert len(epochs_seen) >= 4


def test_next_epoch_is_published_ahead(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"], rotation=100)
    kds.clock.advance(91)  # inside the last tenth of the period
    kds.service.tick("test")
    epochs = kds.admin.epochs("orders")
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[1]["not_before_ms"] == epochs[0]["not_after_ms"]
    producer = kds.member("p")
    assert producer.sealing_epoch("orders", kds.clock_ms()).epoch == 0
    kds.clock.advance(9)  # the producer switches from its cache, without asking the KDS
    kds.http.close()
    assert producer.sealing_epoch("orders", kds.clock_ms()).epoch == 1


def test_forced_rotation_withdraws_the_epoch_published_ahead(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"], rotation=100)
    kds.clock.advance(95)
    kds.service.tick("test")
    assert kds.admin.rotate("orders") == 2
    states = {e["epoch"]: e["destroyed"] for e in kds.admin.epochs("orders")}
    assert states == {0: False, 1: True, 2: False}
    consumer = kds.member("c")
    with pytest.raises(UnopenableEnvelope) as refused:
        consumer.epoch_keys("orders", 1, kds.clock_ms())
    assert refused.value.reason is Reason.EPOCH_DESTROYED


def test_removing_a_consumer_rotates_at_once(kds: Kds) -> None:
    sealer, opener = pair(kds)
    kds.admin.set_policy("orders", consumers=["c2"])
    kds.admin.set_policy("orders", consumers=["c2"])  # no removal: no rotation
    epochs = kds.admin.epochs("orders")
    assert len(epochs) == 2
    kds.clock.advance(11)  # past the producer's epoch refresh interval
    sealer.seal("orders", b"refreshes the epoch off the hot path")
    settle()
    kds.clock.advance(1)  # the sealer asks its key source again
    envelope = sealer.seal("orders", b"after removal")
    with pytest.raises(UnopenableEnvelope) as refused:
        opener.open("orders", envelope)
    assert refused.value.reason is Reason.NOT_GRANTED
    newcomer = Opener(kds.member("c2"), clock=kds.clock)
    assert newcomer.open("orders", envelope).epoch == 1


def test_revoking_a_member_rotates_and_refuses_it(kds: Kds) -> None:
    sealer, opener = pair(kds)
    kds.admin.create_topic("other", producers=["p"], consumers=["x"])
    envelope = sealer.seal("orders", b"signed by p")
    kds.admin.revoke("c")
    assert len(kds.admin.epochs("orders")) == 2 and len(kds.admin.epochs("other")) == 1
    with pytest.raises(Refused, match="revoked"):
        kds.admin.create_token("c")
    with pytest.raises(UnopenableEnvelope, match="revoked"):
        opener.keys.epoch_keys("orders", 1, kds.clock_ms())
    kds.admin.revoke("p")
    kds.clock.advance(31)  # past the revocation list refresh interval
    reader = Opener(kds.member("r"), clock=kds.clock)
    kds.admin.set_policy("orders", consumers=["r"])
    with pytest.raises(UnauthenticEnvelope) as refused:
        reader.open("orders", envelope)
    assert refused.value.reason is Reason.SENDER_REVOKED


def test_roles_grant_access(kds: Kds) -> None:
    kds.admin.create_topic("billing", producers=["role:writers"], consumers=["role:auditors"])
    sealer = Sealer(kds.member("w1", roles=["writers"]), clock=kds.clock)
    opener = Opener(kds.member("a1", roles=["auditors"]), clock=kds.clock)
    assert opener.open("billing", sealer.seal("billing", b"r")).body == b"r"
    with pytest.raises(AccessDenied):
        Sealer(kds.member("a2", roles=["auditors"]), clock=kds.clock).seal("billing", b"r")


def test_producer_added_later_seals_at_once(kds: Kds) -> None:
    kds.admin.create_topic("a", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    opener = Opener(kds.member("c"), clock=kds.clock)
    sealer.seal("a", b"first")
    kds.admin.create_topic("b", producers=["p"], consumers=["c"])
    assert opener.open("b", sealer.seal("b", b"new topic")).body == b"new topic"


def test_topic_key_is_shared_by_the_topics_members_only(kds: Kds) -> None:
    sealer, opener = pair(kds)
    producer_key = sealer.keys.topic_key("orders", kds.clock_ms())
    assert producer_key == opener.keys.topic_key("orders", kds.clock_ms())
    assert len(producer_key) == 32
    token = KeyTokenizer.from_keys(sealer.keys).tokenize("orders", b"patient-42")
    assert token == KeyTokenizer.from_keys(opener.keys).tokenize("orders", b"patient-42")
    with pytest.raises(AccessDenied):
        kds.member("stranger").topic_key("orders", kds.clock_ms())
    with pytest.raises(UnknownTopic):
        sealer.keys.topic_key("nope", kds.clock_ms())


def test_a_member_joining_a_role_later_gets_no_earlier_epochs(kds: Kds) -> None:
    """The access window counts from when this member enrolled, not from when its role was
    added to the policy."""
    kds.admin.create_topic(
        "phi",
        producers=["p"],
        consumers=["role:auditors", "old"],
        rotation=60,
        retention=7 * 86_400,
        max_age=0,  # no maximum message age: a two-day-old message still opens
    )
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    veteran = Opener(kds.member("veteran", roles=["auditors"]), clock=kds.clock)
    before = sealer.seal("phi", b"sealed before the newcomer enrolled")
    kds.clock.advance(2 * 86_400)
    kds.service.tick("test")
    newcomer = Opener(kds.member("newcomer", roles=["auditors"]), clock=kds.clock)
    with pytest.raises(UnopenableEnvelope, match="predates") as refused:
        newcomer.open("phi", before)
    assert refused.value.reason is Reason.NOT_GRANTED
    assert veteran.open("phi", before).body == b"sealed before the newcomer enrolled"
    assert newcomer.open("phi", sealer.seal("phi", b"after")).body == b"after"
    with kds.store.write() as conn:  # no record of since when: deny, never "since forever"
        conn.execute(delete(consumer_since))
    with pytest.raises(ServiceError, match="may not consume"):
        kds.service.grant("veteran", "phi", 0)


def test_removed_producer_is_withdrawn_from_the_topic_only(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p", "p2"], consumers=["c"])
    kds.admin.create_topic("audit", producers=["p2"], consumers=["c"])
    p2 = kds.member("p2")
    sealer = Sealer(p2, clock=kds.clock)
    opener = Opener(kds.member("c"), clock=kds.clock)
    before = sealer.seal("orders", b"before")
    elsewhere = sealer.seal("audit", b"elsewhere")
    kds.admin.set_policy("orders", producers=["p"])
    after = sealer.seal("orders", b"after")  # the sealer still holds the old certificate
    fresh = Opener(kds.member("c2"), clock=kds.clock)
    kds.admin.set_policy("orders", consumers=["c", "c2"])
    for envelope in (before, after):  # withdrawn: backdating sent_at would not help either
        with pytest.raises(UnauthenticEnvelope) as refused:
            fresh.open("orders", envelope)
        assert refused.value.reason is Reason.SENDER_NOT_ALLOWED
    assert opener.open("audit", elsewhere).body == b"elsewhere"
