"""Objects the authority signs: tampering, kind confusion and a wrong root all fail verification."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealedbus.core import signed, suites
from sealedbus.core.signed import (
    Certificate,
    EpochDescription,
    Grant,
    RevocationList,
    SignatureError,
)
from sealedbus.core.suites import Suite
from sealedbus.keys import authority
from sealedbus.keys.identity import MemberIdentity

from ._support import flip, make_world

ROOT = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
OTHER_ROOT = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
RECEIVE = suites.keypair_from_seed(Suite.X25519, b"\x03" * 32)

CERT = Certificate(
    member="svc",
    identity_public=Ed25519PrivateKey.from_private_bytes(b"\x04" * 32)
    .public_key()
    .public_bytes_raw(),
    receive_suite=Suite.X25519,
    receive_public=RECEIVE.public,
    produce=("a", "b"),
    consume=("c",),
    not_before_ms=1,
    not_after_ms=2,
    serial=3,
)
EPOCH = EpochDescription("a", 4, Suite.X25519, b"\x05" * 32, 10, 20, 30)
GRANT = Grant("a", 4, "svc", EPOCH.digest, b"\x06" * 80)
REVOCATIONS = RevocationList(7, 8, (("bad", 9, 0),), (("svc", "b", 3),))
OBJECTS: list[Any] = [CERT, EPOCH, GRANT, REVOCATIONS]
IDS = ["certificate", "epoch", "grant", "revocations"]


@pytest.mark.parametrize("obj", OBJECTS, ids=IDS)
def test_round_trip(obj: Any) -> None:
    assert type(obj).verify(obj.sign(ROOT), ROOT.public_key()) == obj


@pytest.mark.parametrize("obj", OBJECTS, ids=IDS)
def test_every_byte_flip_fails(obj: Any) -> None:
    data = obj.sign(ROOT)
    for pos in range(len(data)):
        for mask in (0x01, 0xFF):
            with pytest.raises(SignatureError):
                type(obj).verify(flip(data, pos, mask), ROOT.public_key())
    for n in range(len(data)):
        with pytest.raises(SignatureError):
            type(obj).verify(data[:n], ROOT.public_key())
    with pytest.raises(SignatureError):
        type(obj).verify(data + b"\x00", ROOT.public_key())


@pytest.mark.parametrize("obj", OBJECTS, ids=IDS)
def test_tampered_field_fails(obj: Any) -> None:
    body, signature = msgpack.unpackb(obj.sign(ROOT))
    fields = msgpack.unpackb(body)
    for i in range(1, len(fields)):  # every field but the format number
        changed = list(fields)
        value = changed[i]
        changed[i] = (
            value + 1
            if isinstance(value, int)
            else value + "x"
            if isinstance(value, str)
            else value + b"x"
            if isinstance(value, bytes)
            else [*value, value[0] if value else "x"]
        )
        forged = msgpack.packb([msgpack.packb(changed), signature])
        with pytest.raises(SignatureError):
            type(obj).verify(forged, ROOT.public_key())


@pytest.mark.parametrize("obj", OBJECTS, ids=IDS)
def test_wrong_root(obj: Any) -> None:
    with pytest.raises(SignatureError):
        type(obj).verify(obj.sign(OTHER_ROOT), ROOT.public_key())


@pytest.mark.parametrize("obj", OBJECTS, ids=IDS)
def test_one_kind_cannot_pass_for_another(obj: Any) -> None:
    data = obj.sign(ROOT)
    for kind in (Certificate, EpochDescription, Grant, RevocationList):
        if kind is not type(obj):
            with pytest.raises(SignatureError):
                kind.verify(data, ROOT.public_key())


def test_labels_are_distinct() -> None:
    labels = [Certificate.LABEL, EpochDescription.LABEL, Grant.LABEL, RevocationList.LABEL]
    assert len(set(labels)) == 4
    assert all(label.endswith(b"\x00") for label in labels)  # none is a prefix of another


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgpack.packb(5),
        msgpack.packb([b"x"]),
        msgpack.packb([b"x", b"y", b"z"]),
        msgpack.packb(["text body", b"\0" * 64]),
        msgpack.packb([b"body", "text signature"]),
        msgpack.packb({"a": 1}),
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
        b"\x91" * 100_000,  # deeply nested arrays
        bytes(signed.MAX_SIGNED_OBJECT + 1),
    ],
)
def test_garbage_is_a_signature_error(data: bytes) -> None:
    with pytest.raises(SignatureError):
        Certificate.verify(data, ROOT.public_key())


def test_unknown_format_fails_even_when_signed() -> None:
    body = msgpack.packb([2, "a", 4, 1, b"\x05" * 32, 10, 20, 30])
    data = msgpack.packb([body, ROOT.sign(EpochDescription.LABEL + body)])
    with pytest.raises(SignatureError):
        EpochDescription.verify(data, ROOT.public_key())


def test_fingerprint() -> None:
    assert signed.fingerprint(b"k").startswith("sha256:")
    assert len(signed.fingerprint(b"k")) == len("sha256:") + 64


def test_revocation_list_revokes_by_member_and_serial() -> None:
    assert not REVOCATIONS.revokes(CERT, 0)
    assert RevocationList(0, 1, (("svc", 3, 0),)).revokes(CERT, 0)  # compromise: any time
    assert RevocationList(0, 1, (("svc", 3, 0),)).revokes(CERT, 1 << 50)
    assert not RevocationList(0, 1, (("svc", 2, 0),)).revokes(CERT, 0)  # later certificate
    assert not RevocationList(0, 1, (("other", 3, 0),)).revokes(CERT, 0)


def test_retirement_refuses_only_envelopes_sent_from_its_time() -> None:
    retired = RevocationList(0, 1, (("svc", 3, 500),))
    assert not retired.revokes(CERT, 499)
    assert retired.revokes(CERT, 500)


def test_withdrawal_is_per_topic_up_to_a_serial() -> None:
    assert REVOCATIONS.withdraws(CERT, "b")
    assert not REVOCATIONS.withdraws(CERT, "a")
    assert not RevocationList(0, 1, (), (("svc", "b", 2),)).withdraws(CERT, "b")


def test_grant_bound_to_epoch_and_member() -> None:
    description, keys = authority.new_epoch(
        authority.TopicPolicy("a", frozenset(), frozenset()), 0, 0, os.urandom(32)
    )
    grant = authority.seal_grant(ROOT, description, keys, CERT)
    assert authority.open_grant(ROOT.public_key(), grant, description, "svc", RECEIVE) == keys
    with pytest.raises(authority.GrantError):
        authority.open_grant(ROOT.public_key(), grant, description, "someone-else", RECEIVE)
    other, _ = authority.new_epoch(
        authority.TopicPolicy("a", frozenset(), frozenset()), 1, 0, os.urandom(32)
    )
    with pytest.raises(authority.GrantError):
        authority.open_grant(ROOT.public_key(), grant, other, "svc", RECEIVE)
    wrong_receive = suites.keypair_from_seed(Suite.X25519, b"\x07" * 32)
    with pytest.raises(authority.GrantError):
        authority.open_grant(ROOT.public_key(), grant, description, "svc", wrong_receive)
    with pytest.raises(SignatureError):
        authority.open_grant(OTHER_ROOT.public_key(), grant, description, "svc", RECEIVE)


def test_key_service_objects_verify_under_its_root() -> None:
    world = make_world()
    root = Ed25519PrivateKey.from_private_bytes(b"\0" * 32).public_key()  # not the service's
    member = world.members["producer"]
    _, cert = member.identity(world.clock.ms)
    assert Certificate.verify(cert.sign(world.ks._root), member._root) == cert
    with pytest.raises(SignatureError):
        Certificate.verify(cert.sign(world.ks._root), root)


def test_topic_key_grant_binds_topic_and_member_and_root() -> None:
    root = Ed25519PrivateKey.generate()
    member = MemberIdentity.generate("billing", os.urandom)
    cert = authority.issue_certificate(
        "billing",
        member.identity_public,
        member.receive.suite,
        member.receive.public,
        [],
        ["orders"],
        0,
        1000,
        1,
    )
    key = os.urandom(32)
    sealed = authority.seal_topic_key(root, "orders", cert, key)
    assert (
        authority.open_topic_key(root.public_key(), sealed, "orders", "billing", member.receive)
        == key
    )
    other = MemberIdentity.generate("other", os.urandom)
    refused = [
        (root.public_key(), sealed, "invoices", "billing", member.receive),  # another topic
        (root.public_key(), sealed, "orders", "other", member.receive),  # another member
        (root.public_key(), sealed, "orders", "billing", other.receive),  # wrong receive key
        (Ed25519PrivateKey.generate().public_key(), sealed, "orders", "billing", member.receive),
        (
            root.public_key(),
            sealed[:-1] + bytes([sealed[-1] ^ 1]),
            "orders",
            "billing",
            member.receive,
        ),
    ]
    for args in refused:
        with pytest.raises(authority.GrantError):
            authority.open_topic_key(*args)


def test_an_epoch_description_signed_before_max_age_existed_still_verifies() -> None:
    """KDS databases hold descriptions of seven fields; they carry no maximum age (0)."""
    root = Ed25519PrivateKey.generate()
    body = msgpack.packb([1, "a", 4, 1, b"\x05" * 32, 10, 20, 30], use_bin_type=True)
    signed = msgpack.packb([body, root.sign(EpochDescription.LABEL + body)], use_bin_type=True)
    old = EpochDescription.verify(signed, root.public_key())
    assert (old.max_age_ms, old.destroy_after_ms) == (0, 30)
    assert old.digest == hashlib.sha256(body).digest()  # over the bytes that were signed
    with pytest.raises(SignatureError):
        bad = msgpack.packb([1, "a", 4, 1, b"\x05" * 32, 10, 20, 30, -1], use_bin_type=True)
        EpochDescription.verify(
            msgpack.packb([bad, root.sign(EpochDescription.LABEL + bad)], use_bin_type=True),
            root.public_key(),
        )
