"""The key-service rules in ``keys/authority.py`` on their own (pure: state and time in, the
decision out). The semantics suite checks that both back ends apply them."""

from __future__ import annotations

import os

import pytest

from sealedbus.core.backend import SMALL_ORDER_POINTS
from sealedbus.core.signed import Certificate
from sealedbus.core.suites import Suite
from sealedbus.keys import authority
from sealedbus.keys.authority import EpochInfo, GrantRefusal, TopicPolicy

POLICY = TopicPolicy("orders", frozenset({"p"}), frozenset({"c"}), rotation_ms=100_000)
AHEAD = authority.publish_ahead_ms(POLICY)  # 10 s


def _epoch(n: int, start: int, *, destroyed: bool = False) -> EpochInfo:
    return EpochInfo("orders", n, start, start + 100_000, start + 200_000, destroyed)


def test_first_epoch_starts_now() -> None:
    assert authority.next_epoch_start(POLICY, None, 5) == 5


def test_next_epoch_is_published_ahead_and_starts_when_the_latest_ends() -> None:
    assert authority.next_epoch_start(POLICY, 100_000, 100_000 - AHEAD - 1) is None
    assert authority.next_epoch_start(POLICY, 100_000, 100_000 - AHEAD) == 100_000
    assert authority.next_epoch_start(POLICY, 100_000, 99_999) == 100_000


def test_idle_topic_starts_afresh_at_now() -> None:
    assert authority.next_epoch_start(POLICY, 100_000, 100_000) == 100_000
    assert authority.next_epoch_start(POLICY, 100_000, 750_000) == 750_000


def test_rotation_withdraws_only_live_epochs_published_ahead() -> None:
    epochs = [_epoch(0, 0), _epoch(1, 100_000), _epoch(2, 200_000, destroyed=True)]
    assert authority.withdrawn_by_rotation(epochs, 95_000) == (1,)
    assert authority.withdrawn_by_rotation(epochs, 100_000) == ()  # epoch 1 is in use now


@pytest.mark.parametrize(
    ("since", "epoch", "now", "revoked", "refusal"),
    [
        (0, _epoch(0, 0), 1, False, None),
        (None, _epoch(0, 0), 1, False, GrantRefusal.NOT_CONSUMER),
        (0, _epoch(0, 0), 1, True, GrantRefusal.REVOKED),
        (0, None, 1, False, GrantRefusal.UNKNOWN_EPOCH),
        (0, _epoch(0, 0, destroyed=True), 1, False, GrantRefusal.DESTROYED),
        (0, _epoch(0, 0), 200_000, False, GrantRefusal.DESTROYED),  # past retention, no tick
        (100_000, _epoch(0, 0), 150_000, False, GrantRefusal.PREDATES),
        (99_999, _epoch(0, 0), 150_000, False, None),  # access began inside the epoch
    ],
)
def test_who_may_receive_an_epoch_key(
    since: int | None, epoch: EpochInfo | None, now: int, revoked: bool, refusal: object
) -> None:
    assert authority.grant_refusal(POLICY, since, epoch, now, revoked=revoked) is refusal


def test_history_topics_grant_epochs_from_before_access() -> None:
    history = TopicPolicy("orders", frozenset(), frozenset({"c"}), history=True)
    assert authority.grant_refusal(history, 120_000, _epoch(0, 0), 150_000) is None


def _cert(produce: list[str], consume: list[str], now: int, lifetime: int) -> Certificate:
    return authority.issue_certificate(
        "m",
        bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
        Suite.X25519,
        os.urandom(32),
        produce,
        consume,
        now,
        lifetime,
        1,
    )


def test_certificate_reissued_once_half_its_lifetime_is_gone() -> None:
    cert = _cert(["a"], [], 0, 1000)
    assert authority.needs_reissue(None, ["a"], [], 0, 1000)
    assert not authority.needs_reissue(cert, ["a"], [], 499, 1000)
    assert authority.needs_reissue(cert, ["a"], [], 500, 1000)


def test_certificate_reissued_when_its_topics_change() -> None:
    cert = _cert(["b", "a"], ["c"], 0, 1000)
    assert not authority.needs_reissue(cert, ["a", "b"], ["c"], 1, 1000)
    assert authority.needs_reissue(cert, ["a"], ["c"], 1, 1000)
    assert authority.needs_reissue(cert, ["a", "b"], [], 1, 1000)


@pytest.mark.parametrize(
    "point",
    [*SMALL_ORDER_POINTS, b"\xee" + b"\xff" * 30 + b"\x7f"],  # the last: y = p + 1, non-canonical
    ids=lambda p: p.hex()[:8],
)
def test_no_certificate_for_a_small_order_or_non_canonical_identity_key(point: bytes) -> None:
    """Both back ends issue certificates here: an identity key anyone can sign as (a point of
    small order, SPEC.md 5.4) is refused, whoever asks."""
    with pytest.raises(ValueError, match=r"small order|not canonically|public key"):
        authority.issue_certificate("m", point, Suite.X25519, os.urandom(32), [], [], 0, 1000, 1)
