"""Regression tests for malformed-input behaviour that SPEC.md now pins, named after the
weakness each one closes."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealedbus.core import envelope
from sealedbus.core.signed import (
    Certificate,
    EpochDescription,
    Grant,
    RevocationList,
    SealingEpochAnswer,
    SignatureError,
    TopicKeyGrant,
    _field_types,
    _has_type,
)
from sealedbus.errors import MalformedEnvelope, Reason, UnopenableEnvelope
from tests.vectors import runner
from tests.vectors.generate import resign_hybrid, settings


def test_second_encoding_of_no_headers_is_refused() -> None:
    """No headers have exactly one encoding (h = 0). An opener that also took an empty map
    (h = 1, 0x80) gave the signed plaintext of one message two byte forms."""
    assert envelope.decode_inner(b"\x00\x00body") == ({}, b"body")
    with pytest.raises(MalformedEnvelope) as info:
        envelope.decode_inner(struct.pack(">H", 1) + b"\x80body")
    assert info.value.reason is Reason.MALFORMED


def _signed_with_fields(root: Ed25519PrivateKey, label: bytes, values: list[Any]) -> bytes:
    body = bytes(msgpack.packb(values, use_bin_type=True))
    return bytes(msgpack.packb([body, root.sign(label + body)], use_bin_type=True))


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([1, b"orders-api", bytes(32), 1, bytes(32), [], [], 0, 1, 1], id="bin member"),
        pytest.param([1, "orders-api", "x" * 32, 1, bytes(32), [], [], 0, 1, 1], id="str key"),
        pytest.param(
            [1, "orders-api", bytes(32), 1, bytes(32), [b"t"], [], 0, 1, 1], id="bin topic"
        ),
        pytest.param(
            [1, "orders-api", bytes(32), 1, bytes(32), [], [], 0, True, 1], id="bool time"
        ),
        pytest.param(
            [1, "orders-api", bytes(32), 1, bytes(32), [], [], 0, 1.0, 1], id="float time"
        ),
        pytest.param([1, "orders-api", bytes(32), 1, bytes(32), [], [], 0, 1], id="field missing"),
        pytest.param(
            [True, "orders-api", bytes(32), 1, bytes(32), [], [], 0, 1, 1], id="bool format"
        ),
        pytest.param([2, "orders-api", bytes(32), 1, bytes(32), [], [], 0, 1, 1], id="format 2"),
    ],
)
def test_mistyped_signed_object_is_refused(values: list[Any]) -> None:
    """A root-signed object whose field has another MessagePack type than SPEC.md 6 gives it
    (or an unknown format version) was taken as it came: refused, as a bad signature is."""
    root = Ed25519PrivateKey.from_private_bytes(bytes(32))
    valid = [1, "orders-api", bytes(32), 1, bytes(32), ["t"], [], 0, 1, 1]
    Certificate.verify(_signed_with_fields(root, Certificate.LABEL, valid), root.public_key())
    with pytest.raises(SignatureError):
        Certificate.verify(_signed_with_fields(root, Certificate.LABEL, values), root.public_key())


def test_mistyped_revocation_entry_is_refused() -> None:
    root = Ed25519PrivateKey.from_private_bytes(bytes(32))
    label = RevocationList.LABEL
    ok = _signed_with_fields(root, label, [1, 0, 1, [["m", 3, 0]], [["m", "t", 2]]])
    got = RevocationList.verify(ok, root.public_key())
    assert (got.members, got.withdrawn) == ((("m", 3, 0),), (("m", "t", 2),))
    for members, withdrawn in (
        ([["m", 3]], []),
        ([[b"m", 3, 0]], []),
        ([["m", "3", 0]], []),
        ([["m", 3, 1.0]], []),
        ([], [["m", "t"]]),
        ([], [["m", b"t", 2]]),
        ([], [["m", "t", True]]),
    ):
        bad = _signed_with_fields(root, label, [1, 0, 1, members, withdrawn])
        with pytest.raises(SignatureError):
            RevocationList.verify(bad, root.public_key())


def test_cached_hybrid_session_does_not_skip_the_encapsulation_check() -> None:
    """A suite-2 envelope carrying another encapsulation than its session id commits to was
    refused by a fresh opener (decrypt_failed) but opened by one that had joined the session:
    the session cache skipped the hash check of SPEC.md 4.2. Results must not depend on it."""
    world = runner.load("keys.json")
    hybrid = bytes.fromhex(runner.load("objects.json")["hybrid_envelope"])
    forged = resign_hybrid(hybrid, bytes(1168), seq=1)
    for warm in (False, True):
        opener = runner.opener(world, settings(consumer="archive"))
        if warm:
            opener.open("vault", hybrid)
        with pytest.raises(UnopenableEnvelope) as info:
            opener.open("vault", forged)
        assert info.value.reason is Reason.DECRYPT_FAILED


def test_every_signed_object_field_has_a_wire_type() -> None:
    """A field added to a signed object with an annotation the type check cannot map would
    make every such object unverifiable: caught here, at test time, not in production."""
    subclasses = [Certificate, EpochDescription, Grant, RevocationList, TopicKeyGrant]
    subclasses.append(SealingEpochAnswer)
    for cls in subclasses:
        for _, hint in _field_types(cls):
            _has_type(hint, None)  # raises NotImplementedError for an unmapped annotation
