"""The published audit head (SPEC.md 6.12) against ``tests/vectors/audit_head.json``: the exact
object, the objects that must not verify, and a client's verdicts on a sequence of heads."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealedbus.core.signed import AuditHead, SignatureError
from tests.vectors import runner
from tests.vectors.generate import audit_heads

HEADS: dict[str, Any] = runner.load("audit_head.json")
KEYS: dict[str, Any] = runner.load("keys.json")
ROOT = Ed25519PublicKey.from_public_bytes(bytes.fromhex(KEYS["root"]["public_key"]))


def test_the_file_is_what_the_generator_writes() -> None:
    assert audit_heads() == HEADS


def test_the_exact_head_verifies_and_reads_as_stated() -> None:
    head = AuditHead.verify(bytes.fromhex(HEADS["signed"]), ROOT)
    expected = HEADS["head"]
    assert (head.sequence, head.chain_hash.hex(), head.issued_at_ms) == (
        expected["sequence"],
        expected["chain_hash"],
        expected["issued_at_ms"],
    )
    assert head.body.hex() == HEADS["body"]


@pytest.mark.parametrize("name", sorted(HEADS["refuse"]))
def test_a_forged_head_is_refused(name: str) -> None:
    with pytest.raises(SignatureError):
        AuditHead.verify(bytes.fromhex(HEADS["refuse"][name]), ROOT)


def test_a_client_refuses_a_head_behind_the_highest_it_accepted() -> None:
    highest: AuditHead | None = None
    for case in HEADS["sequences"]:
        head = AuditHead.verify(bytes.fromhex(case["head"]), ROOT)
        behind = highest is not None and head.behind(highest)
        assert ("refuse" if behind else "accept") == case["verdict"].split(":")[0], case
        if not behind and (highest is None or head.sequence > highest.sequence):
            highest = head
