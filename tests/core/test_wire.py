"""Wire format v1: header encoding and parsing are inverses; each defect has its reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealedbus import Reason
from sealedbus.core import merkle, wire
from sealedbus.core.suites import HYBRID_ENCAPSULATION_LEN, Suite
from sealedbus.errors import MalformedEnvelope, NotAnEnvelope

from ._support import FAST, World


@st.composite
def headers(draw: st.DrawFn) -> wire.Header:
    suite = draw(st.sampled_from(list(Suite)))
    return wire.Header(
        suite=suite,
        batch=draw(st.booleans()),
        epoch=draw(st.integers(0, 2**32 - 1)),
        cert_id=draw(st.binary(min_size=16, max_size=16)),
        session_id=draw(st.binary(min_size=32, max_size=32)),
        seq=draw(st.integers(0, wire.MAX_SEQUENCE)),
        sent_at_ms=draw(st.integers(0, 2**64 - 1)),
        ttl_ms=draw(st.integers(0, wire.MAX_TTL_MS)),
        content_type=draw(st.text(max_size=80).filter(lambda s: len(s.encode()) <= 255)),
        encapsulation=draw(
            st.binary(min_size=suite.encapsulation_len, max_size=suite.encapsulation_len)
        ),
    )


@FAST
@given(header=headers(), size=st.integers(1, 300), ciphertext=st.binary(min_size=16))
def test_header_encode_parse_round_trip(header: wire.Header, size: int, ciphertext: bytes) -> None:
    signature = bytes(range(64))
    proof = b""
    path: list[bytes] = []
    if header.batch:
        index = size - 1
        path = [bytes([i]) * 32 for i in range(merkle.path_length(index, size))]
        proof = wire.BATCH_FIXED.pack(index, size) + b"".join(path)
    data = header.encode() + signature + proof + ciphertext
    parsed = wire.parse(data)
    assert parsed.header == header
    assert parsed.header_bytes == header.encode()
    assert parsed.signature == signature
    assert parsed.ciphertext == ciphertext
    if header.batch:
        assert parsed.proof is not None
        assert (parsed.proof.index, parsed.proof.size, parsed.proof.path) == (size - 1, size, path)
    else:
        assert parsed.proof is None


def _valid(world: World) -> bytes:
    return world.sealer().seal("orders", b"x", content_type="text/plain")


def _with_byte(data: bytes, pos: int, value: int) -> bytes:
    return data[:pos] + bytes([value]) + data[pos + 1 :]


def test_magic(world: World) -> None:
    data = _valid(world)
    assert wire.is_envelope(data) and not wire.is_envelope(b"{}")
    with pytest.raises(NotAnEnvelope):
        wire.parse(b"X" + data[1:])


@pytest.mark.parametrize(
    ("pos", "value", "reason"),
    [
        (2, 0, Reason.VERSION),
        (2, 2, Reason.VERSION),
        (3, 0, Reason.SUITE),
        (3, 3, Reason.SUITE),
        (4, 0x02, Reason.MALFORMED),  # reserved flag bits
        (4, 0x80, Reason.MALFORMED),
    ],
)
def test_defects_have_their_reason(world: World, pos: int, value: int, reason: Reason) -> None:
    with pytest.raises(MalformedEnvelope) as info:
        wire.parse(_with_byte(_valid(world), pos, value))
    assert info.value.reason is reason


def test_content_type_must_be_utf8(world: World) -> None:
    data = _valid(world)
    start = wire.HEADER_FIXED.size
    with pytest.raises(MalformedEnvelope) as info:
        wire.parse(data[:start] + b"\xff" + data[start + 1 :])
    assert info.value.reason is Reason.MALFORMED


def test_content_type_limit() -> None:
    header = wire.Header(Suite.X25519, False, 0, bytes(16), bytes(32), 0, 0, 0, "x" * 256, b"")
    with pytest.raises(ValueError):
        header.encode()


@pytest.mark.parametrize("suite", list(Suite))
@pytest.mark.parametrize("batch_size", [None, 1, 2, 3, 64])
def test_overhead_matches_real_envelopes(
    world: World, suite: Suite, batch_size: int | None
) -> None:
    topic = "orders" if suite is Suite.X25519 else "vault"
    body = b"b" * 100
    if batch_size is None:
        envelopes = [world.sealer().seal(topic, body, content_type="ct")]
    else:
        sealer = world.sealer(batch_size=batch_size)
        envelopes = [
            s.envelope
            for _ in range(batch_size)
            for s in sealer.add(topic, body, content_type="ct")
        ]
    longest = max(len(e) for e in envelopes)
    assert longest - len(body) == wire.overhead(suite, "ct", batch_size)


def test_hybrid_encapsulation_length() -> None:
    assert Suite.HYBRID.encapsulation_len == HYBRID_ENCAPSULATION_LEN == 1120 + 32 + 16
    assert Suite.X25519.encapsulation_len == 0


def test_suite_names() -> None:
    assert Suite.parse("x25519") is Suite.X25519
    assert Suite.parse("x25519-mlkem768") is Suite.HYBRID
    assert Suite.parse(2) is Suite.HYBRID
    with pytest.raises(ValueError):
        Suite.parse("aes")
