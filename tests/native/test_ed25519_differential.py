"""SPEC.md 5.4, differentially: on signatures whose key and R carry small-order components
(made with libsodium's point operations), and on byte-level mutations of them, the pure core
(OpenSSL), the native core's single verification and its batch path (``open_many``) give the
same verdict for every signature."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealedbus.core import backend

nacl = pytest.importorskip("nacl.bindings")
pytestmark = pytest.mark.skipif(backend.NATIVE is None, reason="native core not built")

TORSION = backend.SMALL_ORDER_POINTS  # the identity first
Triple = tuple[bytes, bytes, bytes]


def _scalar(seed: bytes) -> bytes:
    reduced: bytes = nacl.crypto_core_ed25519_scalar_reduce(hashlib.sha512(seed).digest())
    return reduced


def _sign(a_seed: bytes, r_seed: bytes, t_a: int, t_r: int, message: bytes) -> Triple:
    """An Ed25519 signature with key A = [a]B + T_A and R = [r]B + T_R: the cofactored
    equation always holds; the cofactorless one exactly when T_R + [k]T_A is the identity."""
    a, r = _scalar(a_seed), _scalar(r_seed)
    public = nacl.crypto_core_ed25519_add(
        nacl.crypto_scalarmult_ed25519_base_noclamp(a), TORSION[t_a]
    )
    big_r = nacl.crypto_core_ed25519_add(
        nacl.crypto_scalarmult_ed25519_base_noclamp(r), TORSION[t_r]
    )
    k = nacl.crypto_core_ed25519_scalar_reduce(hashlib.sha512(big_r + public + message).digest())
    s = nacl.crypto_core_ed25519_scalar_add(r, nacl.crypto_core_ed25519_scalar_mul(k, a))
    return public, big_r + s, message


signatures = st.builds(
    _sign,
    st.binary(min_size=1, max_size=4),
    st.binary(min_size=1, max_size=4),
    # mostly torsion-free (honest) keys and R, so that batches form
    st.one_of(st.just(0), st.integers(0, 7)),
    st.one_of(st.just(0), st.integers(0, 7)),
    st.binary(max_size=16),
)


def _mutate(triple: Triple, where: int, index: int, xor: int) -> Triple:
    parts = list(triple)
    part = parts[where]
    if part:
        i = index % len(part)
        parts[where] = part[:i] + bytes([part[i] ^ xor]) + part[i + 1 :]
    return parts[0], parts[1], parts[2]


triples = st.one_of(
    signatures,
    st.builds(_mutate, signatures, st.integers(0, 2), st.integers(0, 95), st.integers(1, 255)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(triples, min_size=1, max_size=8))
def test_pure_native_single_and_native_batch_agree(items: list[Triple]) -> None:
    n = backend._native
    pure = [backend.pure_ed25519_verify(*t) for t in items]
    assert [n.ed25519_verify(*t) for t in items] == pure
    assert n.ed25519_verify_many(items) == pure
    if n.ed25519_batch_equation(items):
        assert all(pure)


def test_the_generator_makes_each_kind_of_case() -> None:
    """The property above is not vacuous: honest signatures batch; a torsioned R makes the
    cofactorless equation fail (and the signature unbatchable); a torsioned A with a matching
    R can make it hold."""
    n = backend._native
    honest = [_sign(b"a", bytes([i]), 0, 0, b"m") for i in range(4)]
    assert n.ed25519_batch_equation(honest)
    torsioned_r = _sign(b"a", b"r", 0, 4, b"m")
    assert not backend.pure_ed25519_verify(*torsioned_r)
    assert not n.ed25519_verify(*torsioned_r)
    assert n.ed25519_verify_many([*honest, torsioned_r]) == [True] * 4 + [False]
    # T_A of order 2 (y = -1): [k]T_A is the identity when k is even
    candidates = [_sign(b"a", bytes([i]), 1, 0, b"m") for i in range(64)]
    even = next(t for t in candidates if backend.pure_ed25519_verify(*t))
    assert n.ed25519_verify(*even)
    assert not n.ed25519_batch_equation([even, *honest])
    assert n.ed25519_verify_many([even, *honest]) == [True] * 5
