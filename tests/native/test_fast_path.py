"""The native opener's fast path (``_native/src/fast.rs``): once a sender and a session have
opened through every Python check, later envelopes of theirs are parsed, checked, verified and
decrypted in one native call. It may only accept what the reference path accepts: everything
else goes back to the Python steps, which name the refusal. These tests warm an opener (so the
fast path holds the sender and the session), then compare its verdicts with the pure core's."""

from __future__ import annotations

from dataclasses import MISSING, field, fields, make_dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealedbus.core import backend
from sealedbus.errors import InvalidEnvelope, Reason
from sealedbus.opener import OpenedMessage, Opener
from sealedbus.sealer import Sealer
from tests.clock import Clock
from tests.core._support import make_world, rejected
from tests.native.test_differential import _mutate, mutations
from tests.vectors.generate import T0_MS, FixedRng, VectorKeys

pytestmark = pytest.mark.skipif(backend.NATIVE is None, reason="native core not built")
KEYS = VectorKeys()
_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sealed(batch: bool, n: int, ttl: float | None = None) -> list[bytes]:
    """n + 1 envelopes of one session; the first one warms the openers."""
    sealer = Sealer(KEYS, clock=lambda: T0_MS / 1000, rng=FixedRng("fast"), core="pure")
    if not batch:
        return [sealer.seal("orders", b"m%d" % i, ttl=ttl) for i in range(n + 1)]
    for i in range(n + 1):
        sealer.add("orders", b"m%d" % i, ttl=ttl, headers={"i": i})
    return [s.envelope for s in sealer.flush()]


def _verdict(r: Any) -> str:
    return r.reason.value if isinstance(r, InvalidEnvelope) else f"opened {r.body!r} {r.headers!r}"


def _warm_verdicts(
    core: str, warm: bytes, envelopes: list[bytes], many: bool, clock: Clock, **kwargs: Any
) -> list[str]:
    opener = Opener(KEYS, clock=clock, core=core, **kwargs)
    at = clock.t
    clock.t = T0_MS / 1000
    assert not isinstance(opener.open_many([("orders", warm)] * 1)[0], InvalidEnvelope)
    clock.t = at
    if core == "native":
        assert opener._fast is not None and len(opener._fast) == 2  # the sender and the session
    if many:
        return [_verdict(r) for r in opener.open_many([("orders", e) for e in envelopes])]
    out = []
    for e in envelopes:
        try:
            out.append(_verdict(opener.open("orders", e)))
        except InvalidEnvelope as exc:
            out.append(_verdict(exc))
    return out


def test_the_fast_path_takes_what_it_was_given() -> None:
    warm, *envelopes = _sealed(batch=True, n=8)
    opener = Opener(KEYS, clock=lambda: T0_MS / 1000, core="native")
    assert opener._open_fast([("orders", e) for e in envelopes]) == ([None] * 8, False)  # none
    opener.open("orders", warm)
    taken, final = opener._open_fast([("orders", e) for e in envelopes])
    assert final  # opened, sealed headers decoded, admitted by the replay window
    assert [(m.body, m.headers) for m in taken] == [(b"m%d" % i, {"i": i}) for i in range(1, 9)]
    assert opener._open_fast([("audit", e) for e in envelopes]) == ([None] * 8, False)  # topic
    again = opener.open_many([("orders", e) for e in envelopes])
    assert [getattr(r, "reason", r) for r in again] == [Reason.DUPLICATE] * 8


@_settings
@given(
    batch=st.booleans(),
    hows=st.lists(mutations, min_size=1, max_size=6),
    replay=st.booleans(),
    many=st.booleans(),
)
def test_a_warm_fast_path_refuses_a_mutation_as_the_pure_core(
    batch: bool, hows: list[tuple[str, int, int]], replay: bool, many: bool
) -> None:
    warm, *envelopes = _sealed(batch, 6)
    mutated = [_mutate(envelopes[k % len(envelopes)], how) for k, how in enumerate(hows)]
    mutated += envelopes[:2] + (envelopes[:1] if replay else [])  # the last one: a duplicate
    clock = Clock(T0_MS / 1000)
    pure = _warm_verdicts("pure", warm, mutated, many=False, clock=clock)
    assert _warm_verdicts("native", warm, mutated, many=many, clock=clock) == pure


def test_the_fast_path_admits_in_order_through_the_openers_replay_windows() -> None:
    """Without sealed headers the fast path finishes the envelopes: step 10 included, through
    the replay windows the Python steps and ``release`` use."""
    warm, *envelopes = _sealed(batch=False, n=4)
    opener = Opener(KEYS, clock=lambda: T0_MS / 1000, core="native")
    opener.open("orders", warm)
    items = [("orders", e) for e in envelopes[:3]] + [("orders", envelopes[1])]
    opened = opener.open_many(items)
    assert [_verdict(r) for r in opened] == [
        "opened b'm1' {}",
        "opened b'm2' {}",
        "opened b'm3' {}",
        "duplicate",
    ]
    assert opener._open_fast([("orders", envelopes[0])]) == ([1], True)  # a duplicate
    rejected(lambda: opener.open("orders", warm), Reason.DUPLICATE)  # the slow path's window
    first = opened[0]
    assert isinstance(first, OpenedMessage)
    opener.release(first)  # not taken: its redelivery opens, on the fast path
    assert _verdict(opener.open_many([("orders", envelopes[0])] * 2)[0]) == "opened b'm1' {}"
    assert [_verdict(r) for r in opener.open_many([("orders", envelopes[3])] * 2)] == [
        "opened b'm4' {}",
        "duplicate",
    ]


def test_the_fast_path_keeps_the_batch_order_past_a_message_it_leaves() -> None:
    """A message the fast path leaves to the Python steps (sealed for a subject: same session,
    same counter) stops its admitting: the window sees the batch in order, so a message one
    window ahead does not make the earlier one too old."""
    world = make_world()
    sealer = world.sealer(core="pure")
    warm = sealer.seal("orders", b"m0")
    left = sealer.seal("orders", b"m1", subject="P-1", headers={"h": 1})
    items = [("orders", left), ("orders", sealer.seal("orders", b"m2"))]
    verdicts = {}
    for core in ("pure", "native"):
        opener = world.opener(core=core, replay_window=1)
        opener.open("orders", warm)
        verdicts[core] = [_verdict(r) for r in opener.open_many(items)]
    assert verdicts["native"] == verdicts["pure"] == ["opened b'm1' {'h': 1}", "opened b'm2' {}"]


# Around every time limit of SPEC.md 7: the clock skew (120 s), the ttl, the opener's max_age
# and the epoch's window (VectorKeys: the hour from T0).
_OFFSETS = st.one_of(
    st.sampled_from([-120_001, -120_000, 0, 5_000, 125_000, 3_600_000, 3_720_000, 3_720_001]),
    st.integers(-200_000, 4_000_000),
)


@_settings
@given(
    offset_ms=_OFFSETS,
    ttl=st.none() | st.sampled_from([1.0, 5.0, 60.0]),
    max_age=st.none() | st.sampled_from([1.0, 30.0]),
    batch=st.booleans(),
    many=st.booleans(),
)
def test_a_warm_fast_path_keeps_every_time_limit(
    offset_ms: int, ttl: float | None, max_age: float | None, batch: bool, many: bool
) -> None:
    warm, *envelopes = _sealed(batch, 3, ttl=ttl)
    verdicts = []
    for core in ("pure", "native"):
        clock = Clock((T0_MS + offset_ms) / 1000)
        verdicts.append(
            _warm_verdicts(core, warm, envelopes, many=many, clock=clock, max_age=max_age)
        )
    assert verdicts[0] == verdicts[1]


def test_fast_path_never_outlives_a_revocation() -> None:
    """A sender handed to the fast path is refused as soon as the opener's revocation list
    names it (next refresh), as on the reference path."""
    world = make_world()
    sealer = world.sealer(core="native")
    opener = world.opener("consumer2", core="native", revocation_check_interval=1.0)
    envelopes = [sealer.seal("orders", b"x%d" % i) for i in range(3)]
    opener.open("orders", envelopes[0])
    assert opener._open_fast([("orders", envelopes[1])])[0] is not None
    world.ks.revoke("producer")
    world.clock.advance(1.5)
    rejected(lambda: opener.open("orders", envelopes[1]), Reason.SENDER_REVOKED)
    result = opener.open_many([("orders", envelopes[2]), ("orders", envelopes[1])])
    assert [getattr(r, "reason", None) for r in result] == [Reason.SENDER_REVOKED] * 2


def test_fast_path_never_outlives_a_withdrawal() -> None:
    world = make_world()
    sealer = world.sealer(core="native")
    opener = world.opener("consumer2", core="native", revocation_check_interval=1.0)
    batch = [sealer.add("orders", b"x%d" % i) for i in range(3)]
    envelopes = [s.envelope for s in sealer.flush()]
    assert batch == [[], [], []]
    opener.open("orders", envelopes[0])
    world.ks.set_policy("orders", producers=["producer2"])
    world.clock.advance(1.5)
    rejected(lambda: opener.open("orders", envelopes[1]), Reason.SENDER_NOT_ALLOWED)


def test_fast_path_forgets_a_destroyed_epoch() -> None:
    world = make_world(rotation_period=60.0, retention=120.0)
    sealer = world.sealer(core="native")
    opener = world.opener("consumer2", core="native")
    envelopes = [sealer.seal("orders", b"x%d" % i) for i in range(2)]
    opener.open("orders", envelopes[0])
    world.clock.advance(400)
    world.ks.tick()
    rejected(lambda: opener.open("orders", envelopes[1]))


def test_fast_path_follows_the_openers_public_settings() -> None:
    """``max_envelope`` and ``suites`` are public attributes: changed after the fast path was
    warmed, they still decide."""
    warm, *envelopes = _sealed(batch=True, n=2)
    opener = Opener(KEYS, clock=lambda: T0_MS / 1000, core="native")
    opener.open("orders", warm)
    opener.max_envelope = 100
    rejected(lambda: opener.open("orders", envelopes[0]), Reason.TOO_LARGE)
    opener.max_envelope = 1 << 20
    opener.suites = frozenset()
    rejected(lambda: opener.open("orders", envelopes[1]), Reason.SUITE)


@pytest.mark.parametrize("bad", [0, 3, 7])
def test_a_cold_batch_checks_each_envelopes_path_on_its_own(bad: int) -> None:
    """A batch opened cold checks its tree's root once, then takes the cache's short walk for
    the tree's other envelopes: one with a changed path or ciphertext, first or later, is
    refused alone, as on the reference path."""
    warm, *envelopes = _sealed(batch=True, n=8)
    envelopes[bad] = envelopes[bad][:-40] + bytes([envelopes[bad][-40] ^ 1]) + envelopes[bad][-39:]
    path_flip = bytearray(envelopes[(bad + 1) % 8])
    path_flip[len(path_flip) // 2] ^= 0x80
    items = [("orders", e) for e in [warm, *envelopes, bytes(path_flip)]]
    verdicts = {}
    for core in ("pure", "native"):
        opener = Opener(KEYS, clock=lambda: T0_MS / 1000, core=core)
        # not warm=True: its first envelope alone would make the tree known before the rest
        verdicts[core] = [_verdict(r) for r in opener._open_many(items, warm=False)]
    assert verdicts["native"] == verdicts["pure"]
    assert verdicts["native"][bad + 1] == "bad_signature"
    assert sum(v.startswith("opened") for v in verdicts["native"]) == 8


def test_the_fast_path_admits_with_the_floors_carried_over() -> None:
    """``restore_replay`` floors (by ``OpenedMessage.replay_digest``) count on the fast path as
    on the Python steps: at or below the floor a duplicate in its scope, not in another."""
    warm, *envelopes = _sealed(batch=False, n=8)
    verdicts = {}
    for core in ("pure", "native"):
        opener = Opener(KEYS, clock=lambda: T0_MS / 1000, core=core)
        first = opener.open("orders", warm, scope=1)  # warm: sender and session known
        opener.restore_replay("orders", 0, {first.replay_digest: first.sequence + 4})
        if core == "native":
            assert len(opener._fast) == 2  # the rest take the fast path
        items = [("orders", e, 0) for e in envelopes] + [("orders", envelopes[2], 1)]
        verdicts[core] = [_verdict(r) for r in opener.open_many(items)]
    assert verdicts["native"] == verdicts["pure"]
    assert verdicts["native"][:5] == ["duplicate"] * 4 + ["opened b'm5' {}"]
    assert verdicts["native"][-1] == "opened b'm3' {}"  # a floor is not exact: not elsewhere


def test_replays_are_caught_once_the_fast_path_holds_the_windows_own_keys() -> None:
    """The Python steps make a session's replay window under their own key tuples; the fast path
    then takes the window's key objects (found by identity from the next call on). Whichever
    objects it looks up with, the window must stay the one window of the session."""
    warm, *envelopes = _sealed(batch=False, n=8)
    opener = Opener(KEYS, clock=lambda: T0_MS / 1000, core="native")
    opener.open("orders", warm)  # the window: made by the Python steps
    now = T0_MS
    _, _, sender_key, session_key = opener._fast.open(
        [("orders", envelopes[0])], now, opener._trees
    )[0][0]
    first = opener.open_many([("orders", e) for e in envelopes[:4]])  # the keys taken here
    _, _, held_sender, held_session = opener._fast.open(
        [("orders", envelopes[0])], now, opener._trees
    )[0][0]
    assert (held_sender, held_session) == (sender_key, session_key)
    assert held_sender is not sender_key and held_session is not session_key
    later = opener.open_many([("orders", e) for e in envelopes[4:]])  # found by identity
    assert [_verdict(r) for r in first + later] == [f"opened b'm{i}' {{}}" for i in range(1, 9)]
    again = opener.open_many([("orders", e) for e in [warm, *envelopes]])
    assert [getattr(r, "reason", r) for r in again] == [Reason.DUPLICATE] * 9
    rejected(lambda: opener.open("orders", envelopes[5]), Reason.DUPLICATE)  # the slow path's
    message = later[1]
    assert isinstance(message, OpenedMessage)
    opener.release(message)  # the Python side's keys: the same window
    assert [_verdict(r) for r in opener.open_many([("orders", envelopes[5])] * 2)] == [
        "opened b'm6' {}",
        "duplicate",
    ]


def test_the_fast_path_builds_any_message_type_as_its_init_would() -> None:
    """The fast path fills the message type's slots through their descriptors; a type without
    slots (fields in the instance dict) gets the same fields through generic setattr."""

    # OpenedMessage's fields, without slots: the test follows the type when a field is added
    plain_fields: list[Any] = [
        (f.name, f.type) if f.default is MISSING else (f.name, f.type, field(default=f.default))
        for f in fields(OpenedMessage)
    ]
    Plain = make_dataclass("Plain", plain_fields, frozen=True)

    warm, *envelopes = _sealed(batch=False, n=3, ttl=60.0)
    slotted = Opener(KEYS, clock=lambda: T0_MS / 1000, core="native")
    plain = Opener(KEYS, clock=lambda: T0_MS / 1000, core="native")
    plain._fast = backend.NATIVE.new_open_table(  # type: ignore[union-attr]
        Plain, plain._skew_ms, plain._max_age_ms, plain.max_envelope
    )
    for opener in (slotted, plain):
        opener.open("orders", warm)
    items = [("orders", e, 7) for e in envelopes]
    fast = slotted.open_many(items)
    other: list[Any] = plain.open_many(items)
    assert all(type(p) is Plain for p in other)
    for m, p in zip(fast, other, strict=True):
        assert type(m) is OpenedMessage
        assert {f.name: getattr(m, f.name) for f in fields(m)} == vars(p)
        assert m.expires_at == m.sent_at + 60.0 and m.scope == 7
