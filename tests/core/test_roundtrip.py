"""Hypothesis round trips: whatever goes into a sealer comes out of an opener unchanged, in both
signing modes and both suites."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from sealedbus import Opener, Sealed
from sealedbus.core import wire
from sealedbus.core.envelope import HeaderValue

from ._support import FAST, shared_world, split

TOPICS = ("orders", "vault")  # x25519 and x25519-mlkem768

header_values: st.SearchStrategy[HeaderValue] = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
headers_st = st.dictionaries(st.text(max_size=16), header_values, max_size=6)
content_types = st.text(max_size=60).filter(lambda s: len(s.encode()) <= wire.MAX_CONTENT_TYPE)
bodies = st.binary(max_size=65_536)
small_bodies = st.binary(max_size=2_048)
BIG = bytes(range(256)) * 256  # 64 KiB


def _check(
    opener: Opener, sealed: Sealed, body: bytes, headers: dict[str, HeaderValue], content_type: str
) -> None:
    msg = opener.open(sealed.topic, sealed.envelope)
    assert msg.body == body
    assert msg.headers == headers
    assert msg.content_type == content_type
    assert msg.topic == sealed.topic
    assert msg.sender == "producer"
    assert len(body) < 16 or body not in split(sealed.envelope)[3]  # the broker sees ciphertext


@FAST
@given(
    topic=st.sampled_from(TOPICS),
    body=bodies,
    headers=headers_st,
    content_type=content_types,
)
@example(topic="orders", body=b"", headers={}, content_type="")
@example(topic="vault", body=b"", headers={}, content_type="")
@example(topic="orders", body=BIG, headers={"a": b"\x00" * 40, "b": -(2**63)}, content_type="x")
@example(topic="vault", body=BIG, headers={"": 2**64 - 1}, content_type="é" * 127)
def test_single_round_trip(
    topic: str, body: bytes, headers: dict[str, HeaderValue], content_type: str
) -> None:
    world = shared_world()
    sealer, opener = world.sealer(), world.opener()
    envelope = sealer.seal(topic, body, headers=headers, content_type=content_type, ttl=60)
    _check(opener, Sealed(topic, envelope), body, headers, content_type)


@FAST
@given(
    batch_size=st.sampled_from([1, 2, 3, 5, 7, 64]),
    messages=st.lists(
        st.tuples(st.sampled_from(TOPICS), small_bodies, headers_st, content_types),
        min_size=1,
        max_size=70,
    ),
    data=st.data(),
)
def test_batch_round_trip(
    batch_size: int,
    messages: list[tuple[str, bytes, dict[str, HeaderValue], str]],
    data: st.DataObject,
) -> None:
    world = shared_world()
    sealer, opener = world.sealer(batch_size=batch_size), world.opener()
    out: list[Sealed] = []
    for i, (topic, body, headers, content_type) in enumerate(messages):
        got = sealer.add(topic, body, headers=headers, content_type=content_type, context=i)
        assert len(got) in (0, batch_size)
        out += got
    out += sealer.flush()
    assert sealer.pending == 0
    assert sealer.flush() == []
    assert [s.context for s in out] == list(range(len(messages)))
    for i, s in enumerate(out):
        proof = wire.parse(s.envelope).proof
        assert proof is not None
        full_batches = len(messages) // batch_size * batch_size
        expected_size = batch_size if i < full_batches else len(messages) - full_batches
        assert (proof.index, proof.size) == (i % batch_size, expected_size)
    # consumers see the envelopes in any order (competing consumers, redelivery)
    for i in data.draw(st.permutations(range(len(out)))):
        topic, body, headers, content_type = messages[i]
        _check(opener, out[i], body, headers, content_type)


@FAST
@given(topic=st.sampled_from(TOPICS), size=st.sampled_from([1, 2, 3, 5, 64]))
def test_every_batch_envelope_verifies_alone(topic: str, size: int) -> None:
    world = shared_world()
    sealer = world.sealer(batch_size=size)
    out: list[Sealed] = []
    for i in range(size):
        out += sealer.add(topic, b"m%d" % i)
    assert len(out) == size
    for i, s in enumerate(out):  # a fresh opener each: no cached root to lean on
        assert world.opener().open(topic, s.envelope).body == b"m%d" % i


@FAST
@given(topic=st.sampled_from(TOPICS), bodies_=st.lists(small_bodies, min_size=1, max_size=5))
def test_mixed_modes_share_one_session(topic: str, bodies_: list[bytes]) -> None:
    world = shared_world()
    sealer, opener = world.sealer(batch_size=2), world.opener()
    singles = [sealer.seal(topic, b) for b in bodies_]
    batched = [s.envelope for b in bodies_ for s in sealer.add(topic, b)] + [
        s.envelope for s in sealer.flush()
    ]
    sessions = {wire.parse(e).header.session_id for e in singles + batched}
    seqs = [wire.parse(e).header.seq for e in singles + batched]
    assert len(sessions) == 1
    assert sorted(seqs) == list(range(2 * len(bodies_)))
    assert [opener.open(topic, e).body for e in singles + batched] == bodies_ + bodies_
