"""Regression tests for the security hardening issue (8), each named after the weakness it
closes, on the in-process key service (the network KDS has its own in tests/kds)."""

from __future__ import annotations

import os

import pytest

from sealedbus import AccessDenied, InvalidEnvelope, Reason
from sealedbus.core import merkle, wire
from sealedbus.core.signed import COMPROMISE, RevocationList
from sealedbus.errors import ConfigurationError
from sealedbus.keys import authority

from ._support import World, rejected


def _junk_sessions(envelope: bytes, count: int) -> list[bytes]:
    """``envelope`` with its session key replaced by random ones: each asks for an X25519
    exchange and a key schedule, and none carries a valid signature."""
    end = wire.HEADER_HEAD.size
    start = end - wire.SESSION_ID_LEN
    return [
        envelope[:start] + os.urandom(wire.SESSION_ID_LEN) + envelope[end:] for _ in range(count)
    ]


def test_unauthenticated_sessions_do_not_fill_the_opener_cache(world: World) -> None:
    """Sessions were cached when joined, before the signature was checked: junk envelopes with
    a known sender's certificate id filled the 100k-entry cache (65k added 250 MB)."""
    opener = world.opener()
    good = world.sealer().seal("orders", b"x")
    for junk in _junk_sessions(good, 50):
        with pytest.raises(InvalidEnvelope) as refused:
            opener.open("orders", junk)
        assert refused.value.reason is Reason.BAD_SIGNATURE
    assert len(opener._sessions._d) == 0
    assert opener.open("orders", good).body == b"x"
    assert len(opener._sessions._d) == 1  # the verified one is cached


def test_merkle_path_cache_is_small_for_unauthenticated_positions() -> None:
    """``path_ranges`` is asked for (index, size) pairs read from envelopes before their root
    signature is known good: its process-wide cache held 65,536 of them."""
    for index in range(5000):
        merkle.path_ranges(index, merkle.MAX_TREE_SIZE)
    assert len(merkle._PATH_RANGES) <= 4096


def test_reenrolling_a_name_needs_replace_and_stops_the_old_key(world: World) -> None:
    """Re-enrolling replaced a member's keys silently (issue 15 item 2); now it is refused
    unless asked to replace, and the old key source is told why it stopped working."""
    with pytest.raises(ConfigurationError, match="already enrolled"):
        world.ks.enroll("producer")
    old_sealer = world.sealer()
    before = old_sealer.seal("orders", b"sent before the replacement")
    world.clock.advance(5)
    replaced = world.members["producer"]
    world.members["producer"] = world.ks.enroll("producer", replace=True)
    with pytest.raises(AccessDenied, match="key replaced by a later enrollment"):
        replaced.identity(world.clock.ms, refresh=True)
    opener = world.opener()
    assert opener.open("orders", before).body == b"sent before the replacement"  # retired
    after = world.sealer().seal("orders", b"new key")
    assert opener.open("orders", after).body == b"new key"


def test_a_key_replaced_as_compromised_signs_nothing_any_more(world: World) -> None:
    """Re-keying is how an operator answers a suspected exposure: the old certificates must
    stop counting, backdated or not (issue 8 item 4)."""
    before = world.sealer().seal("orders", b"sent before the exposure was noticed")
    world.clock.advance(5)
    world.members["producer"] = world.ks.enroll("producer", replace=True, compromised=True)
    rejected(lambda: world.opener().open("orders", before), Reason.SENDER_REVOKED)


def test_retiring_a_member_keeps_what_it_sent_before(world: World) -> None:
    """Revocation was always retroactive; retirement (not compromise) refuses only what is
    stamped from the revocation on, so queued messages of a decommissioned service still open."""
    sealer = world.sealer()
    before = sealer.seal("orders", b"queued")
    world.clock.advance(5)
    at_revocation = sealer.seal("orders", b"stamped when it was retired")
    world.ks.revoke("producer", compromised=False)
    opener = world.opener()
    assert opener.open("orders", before).body == b"queued"
    rejected(lambda: opener.open("orders", at_revocation), Reason.SENDER_REVOKED)


def test_a_compromised_member_cannot_backdate(world: World) -> None:
    """With a stolen key, sent-at is the attacker's word: compromise refuses everything."""
    before = world.sealer().seal("orders", b"sealed before the theft was noticed")
    world.clock.advance(5)
    world.ks.revoke("producer")  # the default: key compromise
    rejected(lambda: world.opener().open("orders", before), Reason.SENDER_REVOKED)


def test_revocation_entries_are_deduplicated_and_covered() -> None:
    """Every removal appended every certificate the member ever had, again (issue 8 item 2)."""
    empty = RevocationList(0, 0)
    one = authority.withdraw(empty, "svc", "orders", 10, 1)
    assert authority.withdraw(one, "svc", "orders", 10, 2) is one
    assert authority.withdraw(one, "svc", "orders", 5, 2) is one
    raised = authority.withdraw(one, "svc", "orders", 12, 3)
    assert raised.withdrawn == (("svc", "orders", 12),)
    retired = authority.revoke(empty, "svc", 10, 100, compromised=False)
    assert authority.revoke(retired, "svc", 9, 200, compromised=False) is retired
    compromised = authority.revoke(retired, "svc", 10, 300, compromised=True)
    assert compromised.members == (("svc", 10, COMPROMISE),)
    later = authority.revoke(compromised, "svc", 20, 400, compromised=False)
    assert later.members == (("svc", 10, COMPROMISE), ("svc", 20, 400))


def test_revocation_entries_are_pruned_after_certificates_and_retention_pass() -> None:
    revocations = authority.revoke(RevocationList(0, 0), "svc", 10, 100, compromised=True)
    horizon = authority.revocation_horizon(1_000, 5_000)
    kept = authority.prune(revocations, lambda member, up_to: horizon, horizon)
    assert kept is revocations
    pruned = authority.prune(revocations, lambda member, up_to: horizon, horizon + 1)
    assert pruned.members == () and pruned.serial == revocations.serial + 1


def test_topic_max_age_is_validated() -> None:
    with pytest.raises(ValueError, match="maximum message age"):
        authority.TopicPolicy("t", frozenset(), frozenset(), max_age_ms=10)
    assert authority.TopicPolicy("t", frozenset(), frozenset(), max_age_ms=0).max_age_ms == 0


def test_session_keys_of_destroyed_epochs_leave_the_opener_unused(world: World) -> None:
    """Destroyed epochs' session keys stayed in the opener's cache until next used."""
    opener = world.opener()
    opener.open("orders", world.sealer().seal("orders", b"x"))
    assert len(opener._sessions._d) == 1
    world.clock.advance(8 * 86_400 + 120)  # past rotation + retention
    opener.open("mirror", world.sealer().seal("mirror", b"a new epoch on another topic"))
    assert [key[0] for key in opener._sessions._d] == ["mirror"]
