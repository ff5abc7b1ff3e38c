"""One behaviour, two implementations: with the same injected randomness and clock the pure and
the native core seal byte-identical envelopes, and on the same mutated input both refuse with
the same reason (or both open it)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealedbus.core import backend
from sealedbus.errors import InvalidEnvelope
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.vectors.generate import T0_MS, FixedRng, VectorKeys

pytestmark = pytest.mark.skipif(backend.NATIVE is None, reason="native core not built")
KEYS = VectorKeys()
_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

header_values = st.one_of(
    st.text(max_size=20), st.binary(max_size=20), st.integers(-(2**63), 2**64 - 1)
)
messages = st.lists(
    st.tuples(
        st.binary(max_size=2048),  # body
        st.none() | st.dictionaries(st.text(max_size=8), header_values, max_size=3),
        st.text(max_size=12),  # content type
        st.none() | st.integers(1, 2**32 - 1),  # ttl in ms
        st.none() | st.sampled_from(["P-1", "P-2"]),  # sealed for a subject (SPEC.md 2.3)
    ),
    min_size=1,
    max_size=12,
)


def _seal(core: str, msgs: list[Any], batch: bool, label: str) -> list[bytes]:
    sealer = Sealer(
        KEYS, clock=lambda: T0_MS / 1000, rng=FixedRng(label), batch_size=0xFFFF, core=core
    )
    out: list[bytes] = []
    for body, headers, content_type, ttl, subject in msgs:
        kwargs: dict[str, Any] = {
            "headers": headers,
            "content_type": content_type,
            "ttl": None if ttl is None else ttl / 1000,
            "subject": subject,
        }
        if batch:
            sealer.add("orders", body, **kwargs)
        else:
            out.append(sealer.seal("orders", body, **kwargs))
    return [s.envelope for s in sealer.flush()] if batch else out


def _verdicts(core: str, envelopes: list[bytes], many: bool) -> list[str]:
    opener = Opener(KEYS, clock=lambda: T0_MS / 1000, core=core)
    if many:
        results: list[Any] = opener.open_many([("orders", e) for e in envelopes])
    else:
        results = []
        for e in envelopes:
            try:
                results.append(opener.open("orders", e))
            except InvalidEnvelope as exc:
                results.append(exc)
    return [
        r.reason.value if isinstance(r, InvalidEnvelope) else f"opened {r.body!r} {r.headers!r}"
        for r in results
    ]


@_settings
@given(msgs=messages, batch=st.booleans(), label=st.text(max_size=5))
def test_same_randomness_and_clock_give_identical_envelopes(
    msgs: list[Any], batch: bool, label: str
) -> None:
    pure = _seal("pure", msgs, batch, label)
    assert _seal("native", msgs, batch, label) == pure
    assert _verdicts("native", pure, many=True) == _verdicts("pure", pure, many=False)


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("extend"), st.integers(1, 40), st.integers(0, 255)),
    st.tuples(st.just("swap"), st.integers(0, 10_000), st.integers(0, 10_000)),
)


def _mutate(data: bytes, how: tuple[str, int, int]) -> bytes:
    kind, a, b = how
    if kind == "flip":
        i = a % len(data)
        return data[:i] + bytes([data[i] ^ b]) + data[i + 1 :]
    if kind == "truncate":
        return data[: a % len(data)]
    if kind == "extend":
        return data + bytes([b]) * a
    i, j = sorted((a % len(data), b % len(data)))
    return data[:i] + data[j : j + 1] + data[i + 1 : j] + data[i : i + 1] + data[j + 1 :]


@_settings
@given(
    msgs=messages,
    batch=st.booleans(),
    hows=st.lists(mutations, min_size=1, max_size=6),
    replay=st.booleans(),
)
def test_same_mutation_same_reason(
    msgs: list[Any], batch: bool, hows: list[tuple[str, int, int]], replay: bool
) -> None:
    envelopes = _seal("pure", msgs, batch, "mutations")
    mutated = [_mutate(envelopes[k % len(envelopes)], how) for k, how in enumerate(hows)]
    if replay:
        mutated.append(envelopes[0])
        mutated.append(envelopes[0])  # the second one is a duplicate
    pure = _verdicts("pure", mutated, many=False)
    assert _verdicts("native", mutated, many=False) == pure
    assert _verdicts("native", mutated, many=True) == pure
    assert _verdicts("pure", mutated, many=True) == pure
