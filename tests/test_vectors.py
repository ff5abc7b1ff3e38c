"""Known-answer vectors (SPEC.md section 9): the code must reproduce them byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealedbus.core import suites
from sealedbus.core.signed import Certificate, EpochDescription, RevocationList
from sealedbus.core.suites import Suite
from sealedbus.errors import InvalidEnvelope
from sealedbus.keys import authority
from sealedbus.opener import Opener
from tests.vectors.generate import CASES, T0_MS, VectorKeys, _schedule_values, seal_case, seed

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors/envelopes.json").read_text())
NEGATIVE: list[dict[str, str]] = json.loads(
    (Path(__file__).parent / "vectors/negative.json").read_text()
)
OBJECTS: dict[str, str] = json.loads((Path(__file__).parent / "vectors/objects.json").read_text())


pytestmark = pytest.mark.usefixtures("each_core")  # both cores reproduce every vector


def _opener(keys: VectorKeys) -> Opener:
    return Opener(keys, clock=lambda: T0_MS / 1000)


def test_fixed_keys_match_vectors() -> None:
    keys = VectorKeys()
    root = Ed25519PublicKey.from_public_bytes(bytes.fromhex(VECTORS["root_public_key"]))
    assert keys.root.public_key() == root
    cert = Certificate.verify(bytes.fromhex(VECTORS["certificate"]), root)
    assert cert == keys.cert
    assert cert.cert_id.hex() == VECTORS["certificate_id"]
    description = EpochDescription.verify(bytes.fromhex(VECTORS["epoch_description"]), root)
    assert description.public_key.hex() == VECTORS["epoch_public_key"]
    assert keys.epoch.private.hex() == VECTORS["epoch_private_key"]
    # Ed25519 is deterministic: re-signing pins every label, field order and encoding
    assert keys.cert.sign(keys.root).hex() == VECTORS["certificate"]
    assert keys.description.sign(keys.root).hex() == VECTORS["epoch_description"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_sealing_reproduces_vector(case: dict[str, Any]) -> None:
    source = next(c for c in CASES if c["name"] == case["name"])
    envelopes = seal_case(source, VectorKeys())
    assert [e.hex() for e in envelopes] == case["envelopes"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_key_schedule_intermediates(case: dict[str, Any]) -> None:
    keys = VectorKeys()
    values = _schedule_values(
        keys.epoch_keys("orders", 7, T0_MS), "orders", seed(f"{case['name']} 1", 32)
    )
    assert values == case["key_schedule"]
    assert bytes.fromhex(case["envelopes"][0])[25:57].hex() == values["session_id"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vectors_open_to_their_inputs(case: dict[str, Any]) -> None:
    opener = _opener(VectorKeys())
    for message, env in zip(case["messages"], case["envelopes"], strict=True):
        opened = opener.open("orders", bytes.fromhex(env))
        assert opened.body.hex() == message["body"]
        assert opened.headers == message.get("headers", {})
        assert opened.content_type == message.get("content_type", "")
        assert opened.sender == "orders-api"
        assert opened.epoch == VECTORS["epoch"]


@pytest.mark.parametrize("vector", NEGATIVE, ids=lambda v: v["name"])
def test_negative_vector_refused_with_reason(vector: dict[str, str]) -> None:
    opener, data = _opener(VectorKeys()), bytes.fromhex(vector["envelope"])
    if vector.get("open_first"):
        opener.open("orders", data)
    with pytest.raises(InvalidEnvelope) as info:
        opener.open(vector.get("topic", "orders"), data)
    assert info.value.reason.value == vector["reason"]


def test_grant_and_topic_key_vectors_open_with_the_consumer_key() -> None:
    keys = VectorKeys()
    root = keys.root.public_key()
    receive = suites.keypair_from_seed(
        Suite.X25519, bytes.fromhex(OBJECTS["consumer_receive_private"])
    )
    granted = authority.open_grant(
        root, bytes.fromhex(OBJECTS["grant"]), keys.description, "billing", receive
    )
    assert granted.private.hex() == VECTORS["epoch_private_key"]
    topic_key = authority.open_topic_key(
        root, bytes.fromhex(OBJECTS["topic_key_grant"]), "orders", "billing", receive
    )
    assert topic_key.hex() == OBJECTS["topic_key"]
    cert = Certificate.verify(bytes.fromhex(OBJECTS["consumer_certificate"]), root)
    with pytest.raises(authority.GrantError):  # bound to its member
        authority.open_grant(root, bytes.fromhex(OBJECTS["grant"]), keys.description, "x", receive)
    assert cert.member == "billing"


def test_revocation_list_vector() -> None:
    keys = VectorKeys()
    expected = RevocationList(T0_MS, 3, (keys.cert.cert_id,), ("mallory",))
    assert expected.sign(keys.root).hex() == OBJECTS["revocation_list"]
    got = RevocationList.verify(bytes.fromhex(OBJECTS["revocation_list"]), keys.root.public_key())
    assert got.revokes(keys.cert)


def test_hybrid_suite_vector_opens() -> None:
    keys = VectorKeys(topic="vault", suite=Suite.HYBRID)
    assert keys.epoch.private.hex() == OBJECTS["hybrid_epoch_private_key"]
    assert keys.epoch.public.hex() == OBJECTS["hybrid_epoch_public_key"]
    assert keys.description.sign(keys.root).hex() == OBJECTS["hybrid_epoch_description"]
    envelope = bytes.fromhex(OBJECTS["hybrid_envelope"])
    assert len(envelope) == len(b"pq") + 156 + 1168
    assert _opener(keys).open("vault", envelope).body == b"pq"


def test_vectors_are_bound_to_their_topic() -> None:
    env = bytes.fromhex(VECTORS["cases"][0]["envelopes"][0])
    keys = VectorKeys(topic="invoices")
    with pytest.raises(InvalidEnvelope):
        _opener(keys).open("invoices", env)
