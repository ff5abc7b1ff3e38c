"""Per-subject erasure (crypto-shredding, SPEC.md 2.3, 4.5, 6.9-6.11) with the in-process key
service: sealing for a subject, erasing it, and what every other party can or cannot open."""

from __future__ import annotations

import pytest

from sealedbus import Reason
from sealedbus.core import suites, wire
from sealedbus.errors import AccessDenied, ConfigurationError
from sealedbus.ops.inspect_cmd import describe
from tests.clock import Clock

from ._support import World, flip, reencode, rejected, tampered_rejected

TTL = 60.0  # the default subject key cache


def _subject_id(envelope: bytes) -> bytes:
    return wire.parse(envelope).header.subject_key_id


@pytest.mark.parametrize("topic", ["orders", "vault"])
def test_sealed_for_a_subject_opens_and_names_only_a_random_key_id(
    world: World, topic: str
) -> None:
    sealer, opener = world.sealer(), world.opener()
    env = sealer.seal(topic, b"lab result", subject="P-1", headers={"k": "v"})
    h = wire.parse(env).header
    assert h.subject and len(h.subject_key_id) == 16 and len(h.subject_encapsulation) == 32
    assert b"P-1" not in env
    opened = opener.open(topic, env)
    assert (opened.body, opened.headers) == (b"lab result", {"k": "v"})
    assert opened.subject_key_id == h.subject_key_id
    plain = opener.open(topic, sealer.seal(topic, b"no subject"))
    assert plain.subject_key_id is None
    # 48 bytes more than the same message sealed for no subject
    assert len(env) - len(sealer.seal(topic, b"lab result", headers={"k": "v"})) == 48


def test_one_session_serves_many_subjects_with_one_counter(world: World) -> None:
    sealer, opener = world.sealer(), world.opener()
    envs = [sealer.seal("orders", b"%d" % i, subject=f"P-{i % 3}") for i in range(9)]
    headers = [wire.parse(e).header for e in envs]
    assert len({h.session_id for h in headers}) == 1
    assert [h.seq for h in headers] == list(range(9))
    assert len({h.subject_key_id for h in headers}) == 3
    # one ephemeral per (session, subject): the same subject repeats its encapsulation
    assert headers[0].subject_encapsulation == headers[3].subject_encapsulation
    assert headers[0].subject_encapsulation != headers[1].subject_encapsulation
    assert [opener.open("orders", e).body for e in envs] == [b"%d" % i for i in range(9)]


def test_batch_mixes_subjects_and_plain_messages(world: World) -> None:
    sealer, opener = world.sealer(batch_size=64), world.opener()
    for i in range(5):
        sealer.add("orders", b"%d" % i, subject=None if i == 2 else f"P-{i % 2}")
    batch = sealer.flush()
    assert [opener.open("orders", s.envelope).body for s in batch] == [b"%d" % i for i in range(5)]


def test_erased_subject_is_refused_and_others_keep_opening(world: World, clock: Clock) -> None:
    sealer, opener = world.sealer(), world.opener()
    before = sealer.seal("orders", b"p1 before", subject="P-1")
    other = sealer.seal("orders", b"p2", subject="P-2")
    erased_id = world.ks.erase_subject("orders", "P-1")
    assert erased_id == _subject_id(before)
    # an opener that never held the key is refused at once
    rejected(lambda: opener.open("orders", before), Reason.SUBJECT_ERASED)
    assert opener.open("orders", other).body == b"p2"
    # a sealer that cached the public key keeps using it for up to the TTL: erased as well
    within = sealer.seal("orders", b"p1 within ttl", subject="P-1")
    assert _subject_id(within) == erased_id
    rejected(lambda: opener.open("orders", within), Reason.SUBJECT_ERASED)
    # after the TTL: a fresh key pair with a new id, which opens
    clock.advance(TTL)
    after = sealer.seal("orders", b"p1 after", subject="P-1")
    assert _subject_id(after) not in (erased_id, _subject_id(other))
    assert world.opener().open("orders", after).body == b"p1 after"
    rejected(lambda: world.opener().open("orders", before), Reason.SUBJECT_ERASED)
    assert world.ks.erase_subject("orders", "P-404") is None


def test_opener_that_cached_the_key_stops_within_the_ttl(world: World, clock: Clock) -> None:
    sealer, opener = world.sealer(), world.opener()
    first = sealer.seal("orders", b"1", subject="P-1")
    second = sealer.seal("orders", b"2", subject="P-1")
    third = world.sealer().seal("orders", b"3", subject="P-1")  # another session, same key
    assert opener.open("orders", first).body == b"1"
    world.ks.erase_subject("orders", "P-1")
    clock.advance(1)
    assert opener.open("orders", second).body == b"2"  # the subject session is cached
    clock.advance(TTL)
    rejected(lambda: opener.open("orders", third), Reason.SUBJECT_ERASED)


def test_short_ttl_setting(world: World) -> None:
    sealer = world.sealer(subject_cache_ttl=0)
    opener = world.opener(subject_cache_ttl=0)
    env = sealer.seal("orders", b"x", subject="P-1")
    world.ks.erase_subject("orders", "P-1")
    rejected(lambda: opener.open("orders", env), Reason.SUBJECT_ERASED)
    assert _subject_id(sealer.seal("orders", b"y", subject="P-1")) != _subject_id(env)
    with pytest.raises(ConfigurationError):
        world.sealer(subject_cache_ttl=-1)
    with pytest.raises(ConfigurationError):
        world.sealer().seal("orders", b"x", subject="")


def test_producer_cannot_open_its_subject_messages(world: World) -> None:
    env = world.sealer().seal("orders", b"x", subject="P-1")
    rejected(lambda: world.opener("producer").open("orders", env), Reason.NOT_GRANTED)
    producer = world.members["producer"]  # nor fetch the subject private key directly
    rejected(
        lambda: producer.subject_private_key("orders", _subject_id(env), world.clock.ms),
        Reason.NOT_GRANTED,
    )


def test_consumer_without_grant_is_not_granted(world: World) -> None:
    env = world.sealer().seal("orders", b"x", subject="P-1")
    rejected(lambda: world.opener("outsider").open("orders", env), Reason.NOT_GRANTED)
    outsider = world.members["outsider"]
    rejected(
        lambda: outsider.subject_private_key("orders", _subject_id(env), world.clock.ms),
        Reason.NOT_GRANTED,
    )


def test_consumer_cannot_fetch_subject_keys_to_seal(world: World) -> None:
    with pytest.raises(AccessDenied):
        world.members["consumer"].subject_key("orders", "P-1", world.clock.ms)


def test_tampered_subject_key_id_is_bad_signature(world: World) -> None:
    sealer, opener = world.sealer(), world.opener()
    env = sealer.seal("orders", b"x", subject="P-1")
    other = sealer.seal("orders", b"y", subject="P-2")
    rejected(lambda: opener.open("orders", flip(env, 74, 0x01)), Reason.BAD_SIGNATURE)
    swapped = reencode(env, subject_key_id=_subject_id(other))
    rejected(lambda: opener.open("orders", swapped), Reason.BAD_SIGNATURE)
    rejected(lambda: opener.open("orders", flip(env, 74 + 16 + 3, 0x01)), Reason.BAD_SIGNATURE)
    # the subject flag cleared or set: the header no longer parses the same way
    rejected(lambda: opener.open("orders", env[:4] + b"\x00" + env[5:]))
    assert opener.open("orders", env).body == b"x"


def test_small_order_subject_encapsulation_is_decrypt_failed(world: World) -> None:
    env = world.sealer().seal("orders", b"x", subject="P-1")
    bad = reencode(env, subject_encapsulation=bytes(32))
    rejected(lambda: world.opener().open("orders", bad), Reason.DECRYPT_FAILED)


def test_truncated_subject_fields_are_malformed(world: World) -> None:
    env = world.sealer().seal("orders", b"x", subject="P-1")
    rejected(lambda: world.opener().open("orders", env[: 74 + 47]), Reason.MALFORMED)


def test_subject_id_never_stored_in_clear(world: World) -> None:
    world.sealer().seal("orders", b"x", subject="patient-4711")
    topic = world.ks._topics["orders"]
    assert all(b"patient-4711" not in token for token in topic.subject_ids)
    assert "patient-4711" not in repr(topic.subject_ids)
    world.ks.erase_subject("orders", "patient-4711")
    assert not topic.subject_ids  # the token goes with the key
    (tombstone,) = topic.subjects.values()
    assert tombstone.private is None and tombstone.signed is None


def test_subject_key_is_per_topic(world: World) -> None:
    sealer = world.sealer()
    a = sealer.seal("orders", b"x", subject="P-1")
    b = sealer.seal("mirror", b"x", subject="P-1")
    assert _subject_id(a) != _subject_id(b)
    world.ks.erase_subject("orders", "P-1")
    rejected(lambda: world.opener().open("orders", a), Reason.SUBJECT_ERASED)
    assert world.opener().open("mirror", b).body == b"x"


def test_subject_schedule_is_the_spec_one(world: World) -> None:
    keys = suites.start_session(suites.Suite.X25519, b"t", 1, bytes(range(1, 33)), bytes(32))
    with pytest.raises(ValueError):
        suites.subject_decapsulate(bytes(range(32)), bytes(32))
    encap, ikm = suites.subject_encapsulate(
        bytes([7]) * 32, suites.keypair_from_seed(suites.Suite.X25519, bytes([9]) * 32).public
    )
    assert suites.subject_decapsulate(bytes([9]) * 32, encap) == ikm
    sub = suites.subject_session(keys, bytes(16), encap, ikm)
    assert sub.session_id == keys.session_id and sub.commitment != keys.commitment
    assert suites.subject_session(keys, bytes(16), encap, ikm).commitment == sub.commitment


def test_inspect_shows_the_subject_key_id_only(world: World) -> None:
    env = world.sealer().seal("orders", b"x", subject="patient-4711")
    fields = describe(env)
    assert fields["subject_key"] == _subject_id(env).hex()
    assert "patient-4711" not in repr(fields)
    assert "subject_key" not in describe(world.sealer().seal("orders", b"y"))


@pytest.mark.parametrize("batch", [False, True])
def test_every_byte_of_a_subject_envelope_is_protected(world: World, batch: bool) -> None:
    """Flip each byte of an envelope sealed for a subject: none opens, none counts as opened."""
    sealer = world.sealer()
    if batch:
        sealer.add("orders", b"a", subject="P-1")
        sealer.add("orders", b"b", subject="P-2")
        env = sealer.flush()[0].envelope
    else:
        env = sealer.seal("orders", b"body", subject="P-1", content_type="text/plain")
    opener = world.opener()
    for i in range(len(env)):
        tampered_rejected(opener, "orders", flip(env, i, 0x01))
    assert opener.open("orders", env).body in (b"a", b"body")
