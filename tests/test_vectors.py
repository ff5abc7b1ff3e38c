"""Known-answer vectors (SPEC.md section 9, tests/vectors/README.md): the code must reproduce
them byte for byte, and open or refuse each opening vector exactly as it says."""

from __future__ import annotations

import inspect
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealedbus.core import suites, wire
from sealedbus.core.replay import ReplayGuard
from sealedbus.core.signed import COMPROMISE, Certificate, EpochDescription, RevocationList
from sealedbus.core.suites import Suite
from sealedbus.errors import InvalidEnvelope
from sealedbus.keys import authority
from sealedbus.opener import Opener
from tests.core._support import REASON_CLASS
from tests.vectors import runner
from tests.vectors.generate import (
    CASES,
    T0_MS,
    VECTOR_SET,
    WORLD,
    VectorKeys,
    _schedule_values,
    build,
    ed25519_cases,
    hybrid_schedule,
    negative,
    objects,
    opened_json,
    seal_case,
    seed,
    signature_inputs,
    subject_schedules,
)

KEYS: dict[str, Any] = runner.load("keys.json")
VECTORS: dict[str, Any] = runner.load("envelopes.json")
NEGATIVE: dict[str, Any] = runner.load("negative.json")
OBJECTS: dict[str, Any] = runner.load("objects.json")
ED25519: dict[str, Any] = runner.load("ed25519.json")
ROOT = Ed25519PublicKey.from_public_bytes(bytes.fromhex(KEYS["root"]["public_key"]))
HYBRID_SUBJECTS = [bytes.fromhex(e) for e in OBJECTS["hybrid_subject_envelopes"]]


pytestmark = pytest.mark.usefixtures("each_core")  # both cores reproduce every vector


def test_files_are_one_vector_set() -> None:
    for data in (KEYS, VECTORS, NEGATIVE, OBJECTS, ED25519):
        assert data["vector_set"] == VECTOR_SET


def test_keys_file_is_what_the_generator_derives() -> None:
    # every key and signed object is deterministic (Ed25519 signatures too): exact equality
    assert WORLD.to_json() == KEYS


def test_keys_file_is_self_consistent() -> None:
    serials = [c["serial"] for c in KEYS["certificates"].values()]
    assert len(serials) == len(set(serials))
    for c in KEYS["certificates"].values():
        cert = Certificate.verify(bytes.fromhex(c["signed"]), ROOT)
        assert cert.cert_id.hex() == c["id"]
        assert (cert.member, cert.serial, list(cert.produce)) == (
            c["member"],
            c["serial"],
            c["produce"],
        )
        member = KEYS["members"][cert.member]
        assert cert.identity_public.hex() == member["identity_public_key"]
    for e in KEYS["epochs"].values():
        description = EpochDescription.verify(bytes.fromhex(e["description"]), ROOT)
        keys = suites.keypair_from_seed(description.suite, bytes.fromhex(e["private_key"]))
        assert keys.public.hex() == e["public_key"] == description.public_key.hex()
        assert description.digest.hex() == e["description_digest"]
    for m in KEYS["members"].values():
        suite = Suite(m["receive_suite"])
        pair = suites.keypair_from_seed(suite, bytes.fromhex(m["receive_private_key"]))
        assert pair.public.hex() == m["receive_public_key"]


def test_fixed_keys_match_vectors() -> None:
    keys = VectorKeys()
    root = Ed25519PublicKey.from_public_bytes(bytes.fromhex(VECTORS["root_public_key"]))
    assert WORLD.root.public_key() == root
    cert = Certificate.verify(bytes.fromhex(VECTORS["certificate"]), root)
    assert cert == keys.cert
    assert (
        cert.cert_id.hex() == VECTORS["certificate_id"] == KEYS["certificates"]["orders-api"]["id"]
    )
    description = EpochDescription.verify(bytes.fromhex(VECTORS["epoch_description"]), root)
    assert description.public_key.hex() == VECTORS["epoch_public_key"]
    assert VECTORS["epoch_private_key"] == KEYS["epochs"]["orders/7"]["private_key"]
    assert VECTORS["epoch_description"] == KEYS["epochs"]["orders/7"]["description"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_sealing_reproduces_vector(case: dict[str, Any]) -> None:
    source = next(c for c in CASES if c["name"] == case["name"])
    envelopes = seal_case(source, VectorKeys())
    assert [e.hex() for e in envelopes] == case["envelopes"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_key_schedule_intermediates(case: dict[str, Any]) -> None:
    values = _schedule_values(WORLD.epochs["orders/7"], "orders", seed(f"{case['name']} 1", 32))
    assert values == case["key_schedule"]
    assert bytes.fromhex(case["envelopes"][0])[25:57].hex() == values["session_id"]


@pytest.mark.parametrize(
    "case", [c for c in VECTORS["cases"] if "subject_schedules" in c], ids=lambda c: c["name"]
)
def test_subject_key_schedule_intermediates(case: dict[str, Any]) -> None:
    envelopes = [bytes.fromhex(e) for e in case["envelopes"]]
    assert subject_schedules(case["name"], envelopes) == case["subject_schedules"]
    for message, env, values in zip(
        case["messages"], envelopes, case["subject_schedules"], strict=True
    ):
        h = wire.parse(env).header
        assert (values is None) == ("subject" not in message) == (not h.subject)
        if values is not None:  # SPEC.md 2.3: the 48 bytes after the content type
            at = 74 + len(message.get("content_type", ""))
            assert env[at : at + 48].hex() == (
                values["subject_key_id"] + values["subject_encapsulation"]
            )
            name = f"orders/{message['subject']}"
            assert values["subject_key_id"] == KEYS["subject_keys"][name]["subject_key_id"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_signature_inputs(case: dict[str, Any]) -> None:
    envelopes = [bytes.fromhex(e) for e in case["envelopes"]]
    assert signature_inputs(envelopes, seed(f"{case['name']} 1")) == case["signatures"]
    root_signatures = {wire.parse(e).signature for e in envelopes}
    if case["mode"] == "batch":  # one root, one signature, over what SPEC.md 5.3 says
        (signature,) = root_signatures
        root = bytes.fromhex(case["signatures"]["root"])
        size = struct.pack(">H", len(envelopes))
        WORLD.members["orders-api"].identity.public_key().verify(
            signature, b"sealedbus/1 batch root\x00" + size + root
        )


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vectors_open_to_their_inputs(case: dict[str, Any]) -> None:
    opener = runner.opener(KEYS, VECTORS["opener"])
    for message, env in zip(case["messages"], case["envelopes"], strict=True):
        opened = opener.open(VECTORS["topic"], bytes.fromhex(env))
        assert opened.body.hex() == message["body"]
        assert opened.headers == message.get("headers", {})
        assert opened.content_type == message.get("content_type", "")
        assert opened.sender == "orders-api"
        assert opened.epoch == VECTORS["epoch"]
        assert opened.sequence == message["seq"]
        assert opened.sent_at * 1000 == message["sent_at_ms"]
        ttl = message["ttl_ms"]
        assert opened.expires_at == (None if ttl == 0 else (message["sent_at_ms"] + ttl) / 1000)


@pytest.mark.parametrize("vector", NEGATIVE["vectors"], ids=lambda v: v["name"])
def test_opening_vector(vector: dict[str, Any]) -> None:
    got = runner.run(KEYS, vector)
    if vector["reason"] is None:
        assert not isinstance(got, InvalidEnvelope), got
        assert opened_json(got) == vector["opens_to"]
    else:
        assert isinstance(got, InvalidEnvelope), got
        assert got.reason.value == vector["reason"]
        assert type(got) is REASON_CLASS[got.reason]


def test_opening_vectors_are_what_the_generator_derives() -> None:
    """Everything but HPKE's randomness is deterministic: regenerating from the stored hybrid
    envelope gives the stored file, so no vector can be edited by hand."""
    regenerated = negative(VECTORS, bytes.fromhex(OBJECTS["hybrid_envelope"]), HYBRID_SUBJECTS)
    stored = [
        {k: v for k, v in vector.items() if k != "opens_to"} for vector in NEGATIVE["vectors"]
    ]
    assert regenerated == stored


def test_every_vector_names_its_settings() -> None:
    keys = set(VECTORS["opener"])
    for vector in NEGATIVE["vectors"]:
        assert set(vector["opener"]) == keys
        assert isinstance(vector["open_first"], bool)
        assert set(vector["opener"]["certificates"]) <= set(KEYS["certificates"])
        assert set(vector["opener"]["epochs"]) <= set(KEYS["epochs"])
        assert vector["opener"]["revocation_list"] in KEYS["revocation_lists"]
        assert set(vector["opener"]["subject_keys"]) <= set(KEYS["subject_keys"])


def test_grant_vectors_open_with_the_member_receive_key() -> None:
    for prefix in ("", "hybrid_"):
        member = OBJECTS[f"{prefix}grant_member"]
        epoch = KEYS["epochs"][OBJECTS[f"{prefix}grant_epoch"]]
        description = EpochDescription.verify(bytes.fromhex(epoch["description"]), ROOT)
        m = KEYS["members"][member]
        receive = suites.keypair_from_seed(
            Suite(m["receive_suite"]), bytes.fromhex(m["receive_private_key"])
        )
        grant = bytes.fromhex(OBJECTS[f"{prefix}grant"])
        granted = authority.open_grant(ROOT, grant, description, member, receive)
        assert granted.private.hex() == OBJECTS[f"{prefix}grant_plaintext"] == epoch["private_key"]
        with pytest.raises(authority.GrantError):  # bound to its member
            authority.open_grant(ROOT, grant, description, "x", receive)
    receive = suites.keypair_from_seed(
        Suite.X25519, bytes.fromhex(OBJECTS["consumer_receive_private"])
    )
    topic_key = authority.open_topic_key(
        ROOT, bytes.fromhex(OBJECTS["topic_key_grant"]), "orders", "billing", receive
    )
    assert topic_key.hex() == OBJECTS["topic_key"]
    cert = Certificate.verify(bytes.fromhex(OBJECTS["consumer_certificate"]), ROOT)
    assert cert.member == "billing"
    subject = KEYS["subject_keys"][OBJECTS["subject_key_grant_subject"]]
    key_id = bytes.fromhex(subject["subject_key_id"])
    grant = bytes.fromhex(OBJECTS["subject_key_grant"])
    private = authority.open_subject_grant(ROOT, grant, "orders", key_id, "billing", receive)
    assert private.hex() == subject["private_key"]
    with pytest.raises(authority.GrantError):  # bound to its subject key and member
        authority.open_subject_grant(ROOT, grant, "orders", bytes(16), "billing", receive)
    with pytest.raises(authority.GrantError):
        authority.open_subject_grant(ROOT, grant, "orders", key_id, "x", receive)


def test_subject_key_objects() -> None:
    for name, k in KEYS["subject_keys"].items():
        key = authority.check_subject_key(ROOT, bytes.fromhex(k["signed"]), k["topic"])
        assert name == f"{k['topic']}/{k['subject']}"
        assert key.subject_key_id.hex() == k["subject_key_id"]
        pair = suites.keypair_from_seed(Suite.X25519, bytes.fromhex(k["private_key"]))
        assert pair.public == key.public_key
        assert k["subject"].encode() not in bytes.fromhex(k["signed"])  # it names no subject
        with pytest.raises(authority.GrantError):
            authority.check_subject_key(ROOT, bytes.fromhex(k["signed"]), "invoices")


def test_revocation_list_vector() -> None:
    expected = RevocationList(T0_MS, 3, (("mallory", 9, COMPROMISE), ("orders-api", 1, COMPROMISE)))
    assert expected.sign(WORLD.root).hex() == OBJECTS["revocation_list_signed"]
    assert KEYS["revocation_lists"][OBJECTS["revocation_list"]] == OBJECTS["revocation_list_signed"]
    got = RevocationList.verify(bytes.fromhex(OBJECTS["revocation_list_signed"]), ROOT)
    assert got.revokes(WORLD.certs["orders-api"], T0_MS)  # serial 1, key compromise: always
    assert not got.revokes(WORLD.certs["orders-api long"], T0_MS)  # serial 5: a later certificate


def test_retirement_revokes_only_what_was_sent_from_its_time_on() -> None:
    retired = RevocationList.verify(
        bytes.fromhex(KEYS["revocation_lists"]["retires orders-api from T0 + 1 s"]), ROOT
    )
    cert = WORLD.certs["orders-api"]
    assert not retired.revokes(cert, T0_MS + 999)
    assert retired.revokes(cert, T0_MS + 1000)
    withdrawn = RevocationList.verify(
        bytes.fromhex(KEYS["revocation_lists"]["withdraws orders-api from orders"]), ROOT
    )
    assert withdrawn.withdraws(cert, "orders") and not withdrawn.withdraws(cert, "invoices")
    assert not withdrawn.withdraws(WORLD.certs["orders-api long"], "orders")


def test_hybrid_suite_vector_opens() -> None:
    vault = KEYS["epochs"]["vault/7"]
    assert vault["private_key"] == OBJECTS["hybrid_epoch_private_key"]
    assert vault["public_key"] == OBJECTS["hybrid_epoch_public_key"]
    assert vault["description"] == OBJECTS["hybrid_epoch_description"]
    assert OBJECTS["hybrid_sender_certificate"] == KEYS["certificates"]["vault-api"]["signed"]
    envelope = bytes.fromhex(OBJECTS["hybrid_envelope"])
    expected = OBJECTS["hybrid_envelope_plaintext"]
    assert envelope[9:25].hex() == KEYS["certificates"]["vault-api"]["id"]
    opened = runner.opener(KEYS, OBJECTS["hybrid_envelope_opener"]).open(
        OBJECTS["hybrid_envelope_topic"], envelope
    )
    assert opened.body.hex() == expected["body"]
    assert opened.headers == expected["headers"]
    assert opened.sender == expected["sender"]
    assert (opened.sequence, opened.sent_at * 1000) == (expected["seq"], expected["sent_at_ms"])


def test_hybrid_key_schedule_intermediates() -> None:
    values = OBJECTS["hybrid_key_schedule"]
    assert values["ikm"] == seed("hybrid 1").hex()  # the sealer's first random draw
    envelope = bytes.fromhex(OBJECTS["hybrid_envelope"])
    assert hybrid_schedule(WORLD.epochs["vault/7"], "vault", envelope) == values


def test_vectors_are_bound_to_their_topic() -> None:
    env = bytes.fromhex(VECTORS["cases"][0]["envelopes"][0])
    settings = dict(VECTORS["opener"], epochs=[])
    with pytest.raises(InvalidEnvelope):
        runner.opener(KEYS, settings).open("invoices", env)


def test_ed25519_edge_case_verdicts() -> None:
    """The reference's verdicts on the published Ed25519 edge cases (cofactorless, S < L) are
    what the file says; a cryptography upgrade that changes one fails here, not silently."""
    assert ed25519_cases() == ED25519["cases"]
    assert [c["index"] for c in ED25519["cases"] if c["accepted"]] == [6]


def test_default_settings_are_the_reference_defaults() -> None:
    """The vectors' default opener settings (README.md, SPEC.md 7.11) are the Opener's."""
    params = inspect.signature(Opener).parameters
    default = VECTORS["opener"]
    assert default["suites"] == [int(s) for s in params["suites"].default]
    assert default["skew_ms"] == params["clock_skew"].default * 1000
    assert default["max_age_ms"] is params["max_age"].default is None
    assert default["max_envelope"] == params["max_envelope"].default
    assert default["replay_window"] == params["replay_window"].default
    assert default["max_sessions"] == params["max_sessions"].default
    guard = inspect.signature(ReplayGuard).parameters
    assert default["max_sessions_per_sender"] == guard["max_sessions_per_sender"].default
    assert default["plaintext_passthrough"] is params["plaintext_passthrough"].default is False


def test_vector_files_are_what_the_generator_writes() -> None:
    """Every file is exactly the generator's output (the randomized objects taken from the
    stored file, which the other tests open): no hand edit survives."""
    assert build() == VECTORS
    assert objects(bytes.fromhex(OBJECTS["hybrid_envelope"]), HYBRID_SUBJECTS, OBJECTS) == OBJECTS
    assert ED25519["cases"] == ed25519_cases()
