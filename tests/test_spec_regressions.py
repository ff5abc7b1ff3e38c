"""Regression tests for malformed-input behaviour that SPEC.md now pins, named after the
weakness each one closes."""

from __future__ import annotations

import struct

import pytest

from sealedbus.core import envelope
from sealedbus.errors import MalformedEnvelope, Reason


def test_second_encoding_of_no_headers_is_refused() -> None:
    """No headers have exactly one encoding (h = 0). An opener that also took an empty map
    (h = 1, 0x80) gave the signed plaintext of one message two byte forms."""
    assert envelope.decode_inner(b"\x00\x00body") == ({}, b"body")
    with pytest.raises(MalformedEnvelope) as info:
        envelope.decode_inner(struct.pack(">H", 1) + b"\x80body")
    assert info.value.reason is Reason.MALFORMED
