"""SPEC.md 5.4 against the twelve edge cases of "Taming the many EdDSAs": single and batch
verification of the native core accept exactly the same signatures, and the pure core never
accepts one the native core refuses."""

from __future__ import annotations

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


@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c["index"]))
def test_pure_rule(case: dict[str, Any]) -> None:
    assert backend.pure_ed25519_verify(*_triple(case)) is case["accept_pure"]
    assert not case["accept_pure"] or case["accept_native"]  # pure is never the laxer one


@native
@pytest.mark.parametrize("case", CASES, ids=lambda c: str(c["index"]))
def test_native_single_and_batch_agree(case: dict[str, Any]) -> None:
    n = backend._native
    triple = _triple(case)
    assert n.ed25519_verify(*triple) is case["accept_native"]
    # the batch equation draws random coefficients: ask it many times, alone and among
    # honest signatures (one key or several)
    for round_ in range(16):
        assert n.ed25519_batch_equation([triple]) is case["accept_native"]
        mixed = [_honest(0), triple, _honest(1), _honest(0)]
        assert n.ed25519_batch_equation(mixed[round_ % 2 :]) is case["accept_native"]


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
