"""Runs opening vectors (tests/vectors/README.md) against the reference implementation.

Everything an opener needs comes from the vector files: ``keys.json`` (the fixed world: root,
certificates, epochs, revocation lists) and each vector's ``opener`` settings. A second
implementation's harness does what this module does, in its own language.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedbus.core import suites
from sealedbus.core.signed import Certificate, EpochDescription, RevocationList, SubjectKey
from sealedbus.core.suites import Suite
from sealedbus.errors import InvalidEnvelope, Reason, UnauthenticEnvelope, UnopenableEnvelope
from sealedbus.keys.source import EpochKeys
from sealedbus.opener import OpenedMessage, Opener

HERE = Path(__file__).parent


def load(name: str) -> Any:
    return json.loads((HERE / name).read_text())


class VectorKeySource:
    """The key source an opening vector describes: the certificates the authority would return
    by id, the epochs the consumer holds keys for, the key source's refusals, and the revocation
    list in force. Anything else is unknown (``unknown_sender`` / ``epoch_unknown``)."""

    def __init__(self, world: dict[str, Any], settings: dict[str, Any]) -> None:
        self.root = Ed25519PublicKey.from_public_bytes(bytes.fromhex(settings["root_public_key"]))
        self._member = settings["consumer"]
        certs = [
            Certificate.verify(bytes.fromhex(world["certificates"][n]["signed"]), self.root)
            for n in settings["certificates"]
        ]
        self._certs = {c.cert_id: c for c in certs}
        self._epochs: dict[tuple[str, int], EpochKeys] = {}
        for name in settings["epochs"]:
            e = world["epochs"][name]
            description = EpochDescription.verify(bytes.fromhex(e["description"]), self.root)
            keys = suites.keypair_from_seed(description.suite, bytes.fromhex(e["private_key"]))
            assert keys.public == description.public_key
            self._epochs[(description.topic, description.epoch)] = EpochKeys(description, keys)
        self._refusals = {
            (r["topic"], r["epoch"]): Reason(r["reason"]) for r in settings["refusals"]
        }
        self._subjects = {
            (k["topic"], bytes.fromhex(k["subject_key_id"])): bytes.fromhex(k["private_key"])
            for k in (world["subject_keys"][n] for n in settings["subject_keys"])
        }
        self._subject_refusals = {
            (r["topic"], bytes.fromhex(r["subject_key_id"])): Reason(r["reason"])
            for r in settings["subject_refusals"]
        }
        self._revocations = RevocationList.verify(
            bytes.fromhex(world["revocation_lists"][settings["revocation_list"]]), self.root
        )

    @property
    def member(self) -> str:
        return str(self._member)

    def identity(self, now_ms: int, refresh: bool = False) -> tuple[Ed25519PrivateKey, Certificate]:
        raise NotImplementedError("openers only")

    def sealing_epoch(self, topic: str, now_ms: int) -> EpochDescription:
        raise NotImplementedError("openers only")

    def topic_key(self, topic: str, now_ms: int) -> bytes:
        raise NotImplementedError("openers only")

    def epoch_keys(self, topic: str, epoch: int, now_ms: int) -> EpochKeys:
        refusal = self._refusals.get((topic, epoch))
        if refusal is not None:
            raise UnopenableEnvelope(refusal)
        keys = self._epochs.get((topic, epoch))
        if keys is None:
            raise UnopenableEnvelope(Reason.EPOCH_UNKNOWN)
        return keys

    def subject_key(self, topic: str, subject: str, now_ms: int) -> SubjectKey:
        raise NotImplementedError("openers only")

    def subject_private_key(self, topic: str, subject_key_id: bytes, now_ms: int) -> bytes:
        """A refusal of the settings, else the subject key held, else ``bad_signature``: the
        authority never issued that id (SPEC.md 6.11)."""
        refusal = self._subject_refusals.get((topic, subject_key_id))
        if refusal is not None:
            raise UnopenableEnvelope(refusal)
        private = self._subjects.get((topic, subject_key_id))
        if private is None:
            raise UnauthenticEnvelope(Reason.BAD_SIGNATURE, "no such subject key")
        return private

    def sender_certificate(self, cert_id: bytes, now_ms: int) -> Certificate | None:
        return self._certs.get(cert_id)

    def revocations(self, now_ms: int) -> RevocationList:
        return self._revocations


def opener(world: dict[str, Any], settings: dict[str, Any]) -> Opener:
    """A fresh opener (empty replay state and caches) configured as ``settings`` say."""
    max_age = settings["max_age_ms"]
    return Opener(
        VectorKeySource(world, settings),
        suites=[Suite(s) for s in settings["suites"]],
        replay_window=settings["replay_window"],
        max_sessions=settings["max_sessions"],
        clock_skew=settings["skew_ms"] / 1000,
        max_age=None if max_age is None else max_age / 1000,
        max_envelope=settings["max_envelope"],
        plaintext_passthrough=settings["plaintext_passthrough"],
        clock=lambda: settings["now_ms"] / 1000,
    )


def run(world: dict[str, Any], vector: dict[str, Any]) -> OpenedMessage | InvalidEnvelope:
    """Open ``vector``'s envelope as its settings say: the opened message, or the refusal.

    Raises AssertionError when an envelope of ``opened_before`` (or the envelope itself, with
    ``open_first``) does not open: the vector is then broken, not the opener."""
    o = opener(world, vector["opener"])
    topic, data = vector["topic"], bytes.fromhex(vector["envelope"])
    for before in vector["opened_before"]:
        o.open(topic, bytes.fromhex(before))
    if vector["open_first"]:
        o.open(topic, data)
    try:
        return o.open(topic, data)
    except InvalidEnvelope as exc:
        return exc
