"""SPEC.md 5.4 against the twelve edge cases of "Taming the many EdDSAs": both cores, and the
native core's single verification, its ``verify_many`` (what ``open_many`` decides) and its batch
equation, accept exactly the same signatures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedbus.core import backend

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "vectors/ed25519_speccheck.json").read_text()
)["cases"]
native = pytest.mark.skipif(backend.NATIVE is None, reason="native core not built")


def _triple(case: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    return tuple(bytes.fromhex(case[k]) for k in ("pub_key", "signature", "message"))  # type: ignore[return-value]


def _honest(i: int) -> tuple[bytes, bytes, bytes]:
    key = Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)
    msg = b"honest %d" % i
    return key.public_key().public_bytes_raw(), key.sign(msg), msg


def test_there_are_twelve_cases_and_openssl_reads_them_as_published() -> None:
    """The file holds the published cases: OpenSSL (through cryptography) gives the verdicts
    that results.md records for PyCA."""
    assert [c["index"] for c in CASES] == list(range(12))
    for case in CASES:
        public, signature, message = _triple(case)
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
            accepted = True
        except (InvalidSignature, ValueError):
            accepted = False
        assert accepted is case["reference"]["PyCA (OpenSSL)"], case["index"]


def test_only_case_3_verifies() -> None:
    """SPEC.md 5.4 says so; case 3 is the one mixed-order case whose cofactorless equation holds."""
    assert [c["index"] for c in CASES if c["accept"]] == [3]


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c["index"]))
def test_pure_rule(case: dict[str, Any]) -> None:
    assert backend.pure_ed25519_verify(*_triple(case)) is case["accept"]


@native
@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c["index"]))
def test_native_single_and_batch_agree_with_pure(case: dict[str, Any]) -> None:
    n = backend._native
    triple = _triple(case)
    assert n.ed25519_verify(*triple) is case["accept"]
    # every case has a point that is not torsion-free (or is refused before): never batched
    assert not n.ed25519_batch_equation([triple])
    # the batch equation draws random coefficients: ask many times, among honest signatures
    # (one key or several), what open_many would decide
    for round_ in range(16):
        mixed = [_honest(0), triple, _honest(1), _honest(0)][round_ % 2 :]
        expected = [case["accept"] if t is triple else True for t in mixed]
        assert n.ed25519_verify_many(mixed) == expected


@native
@pytest.mark.parametrize("index", [4, 5])
def test_mixed_order_signature_that_only_the_cofactored_equation_accepts_is_refused_by_both_cores(
    index: int,
) -> None:
    """Regression: the native core used to verify with the cofactored equation (single and
    batch), so a producer that enrolled a mixed-order key could make it accept envelopes the
    pure core refuses. Both now refuse, singly and among honest signatures in a batch."""
    triple = _triple(CASES[index])
    assert not backend.pure_ed25519_verify(*triple)
    assert not backend._native.ed25519_verify(*triple)
    for _ in range(8):
        assert backend._native.ed25519_verify_many([_honest(0), triple, _honest(1)]) == [
            True,
            False,
            True,
        ]


@native
def test_honest_signatures_pass_both_ways() -> None:
    n = backend._native
    honest = [_honest(i % 3) for i in range(10)]
    assert all(n.ed25519_verify(*t) for t in honest)
    assert all(backend.pure_ed25519_verify(*t) for t in honest)
    assert n.ed25519_batch_equation(honest)
    public, signature, message = honest[4]
    bad = (public, signature, message + b"!")
    assert not n.ed25519_verify(*bad)
    assert not n.ed25519_batch_equation([*honest, bad])


IDENTITY_POINT = bytes.fromhex("01" + "00" * 31)


@pytest.mark.parametrize("core", ["pure", "native"])
def test_small_order_identity_key_cannot_be_used_to_forge_any_message(core: str) -> None:
    """Regression: a certificate whose identity key is a small-order point (here the identity
    point) lets anyone sign anything: with A = 0, R = 0 and S = 0 satisfy [S]B = R + [k]A for
    every message, and OpenSSL alone accepts that. SPEC.md 5.4 refuses such keys (and R)."""
    if core == "native" and backend.NATIVE is None:
        pytest.skip("native core not built")
    from sealedbus.core import wire
    from sealedbus.core.signed import Certificate
    from sealedbus.errors import InvalidEnvelope, Reason
    from sealedbus.keys import authority
    from sealedbus.opener import Opener
    from sealedbus.sealer import Sealer
    from tests.vectors.generate import T0_MS, VectorKeys

    class OneCertificate(VectorKeys):  # the key source knows the small-order certificate
        def sender_certificate(self, cert_id: bytes, now_ms: int) -> Certificate | None:
            return self.cert if cert_id == self.cert.cert_id else None

    keys = OneCertificate()
    c = keys.cert
    # made by hand: authority.issue_certificate (both key services) refuses such a key now
    keys.cert = dataclasses.replace(c, identity_public=IDENTITY_POINT, consume=(), serial=2)
    with pytest.raises(ValueError, match="small order"):
        authority.issue_certificate(
            c.member, IDENTITY_POINT, c.receive_suite, c.receive_public, list(c.produce), [],
            T0_MS, 86_400_000, 2,
        )  # fmt: skip
    honest = Sealer(keys, clock=lambda: T0_MS / 1000, core=core).seal("orders", b"forged")
    end = len(wire.parse(honest).header_bytes)
    forged = honest[:end] + IDENTITY_POINT + bytes(32) + honest[end + 64 :]
    # the forgery is valid under the bare RFC 8032 equation, as OpenSSL checks it...
    assert _openssl_accepts(IDENTITY_POINT, forged[end : end + 64], b"any message")
    # ...and refused by both cores
    with pytest.raises(InvalidEnvelope) as info:
        Opener(keys, clock=lambda: T0_MS / 1000, core=core).open("orders", forged)
    assert info.value.reason is Reason.BAD_SIGNATURE


def _openssl_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
