"""The interface through which sealers and openers get keys, on behalf of one member.

``LocalKeyService.enroll()`` returns one (in-process), ``KeyServiceClient`` is one (network KDS);
``Sealer`` and ``Opener`` accept either and cannot tell them apart. Both also implement the
optional ``DropsEpochs`` (how a topic shred reaches a running opener).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealedbus.core.signed import Certificate, EpochDescription, RevocationList, SubjectKey
from sealedbus.core.suites import KeyPair


@dataclass(frozen=True)
class EpochKeys:
    """An epoch's signed description and its key pair, as a consumer holds them."""

    description: EpochDescription
    keys: KeyPair


@runtime_checkable
class KeySource(Protocol):
    """Keys for one enrolled member. Times are milliseconds since the Unix epoch."""

    @property
    def member(self) -> str:
        """The member's service name."""
        ...

    def identity(self, now_ms: int, refresh: bool = False) -> tuple[Ed25519PrivateKey, Certificate]:
        """This member's signing key and a certificate valid at ``now_ms`` (renewed as needed;
        ``refresh`` asks for a new one now, e.g. when it lacks a topic the member may use)."""
        ...

    def sealing_epoch(self, topic: str, now_ms: int) -> EpochDescription:
        """The epoch producers seal with at ``now_ms`` (verified public part only).

        Raises AccessDenied, UnknownTopic, or KeyServiceUnavailable (retryable).
        """
        ...

    def epoch_keys(self, topic: str, epoch: int, now_ms: int) -> EpochKeys:
        """The keys of one epoch, for a member allowed to consume it; callers drop their copies
        at ``description.destroy_after_ms``.

        Raises UnopenableEnvelope (reason not_granted, epoch_unknown or epoch_destroyed), or
        KeyServiceUnavailable (retryable).
        """
        ...

    def topic_key(self, topic: str, now_ms: int) -> bytes:
        """A 32-byte secret shared by the topic's producers and consumers and stable across
        epochs: the HMAC key that tokenizes message keys (Kafka partitioning) so identifiers
        never reach the broker in clear. Raises AccessDenied, UnknownTopic or
        KeyServiceUnavailable."""
        ...

    def subject_key(self, topic: str, subject: str, now_ms: int) -> SubjectKey:
        """Producers: the verified public half of ``subject``'s key pair on ``topic`` (made on
        first use; after an erasure a fresh pair with a new id). Raises AccessDenied,
        UnknownTopic or KeyServiceUnavailable."""
        ...

    def subject_private_key(self, topic: str, subject_key_id: bytes, now_ms: int) -> bytes:
        """Consumers: the 32-byte private key of subject key ``subject_key_id`` on ``topic``.

        Raises UnopenableEnvelope (reason subject_erased, not_granted or epoch_unknown),
        UnauthenticEnvelope (bad_signature: the authority never issued that id for the topic)
        or KeyServiceUnavailable (retryable)."""
        ...

    def sender_certificate(self, cert_id: bytes, now_ms: int) -> Certificate | None:
        """The verified certificate with this id, or None when the authority never issued it."""
        ...

    def revocations(self, now_ms: int) -> RevocationList:
        """The authority's current revocation list, verified: revoked members' certificates (by
        serial; for key compromise or from a time on) and certificates withdrawn from a topic
        their member no longer produces to. Raises StaleRevocations (retryable) when the list
        held is too old to use and no fresh one can be had."""
        ...


@runtime_checkable
class DropsEpochs(Protocol):
    """The optional part of a ``KeySource``: both shipped sources have it (``KeyServiceClient``,
    ``LocalKeyService``'s members); an opener treats a source without it as one that never
    drops a key before its ``destroy_after``."""

    def dropped_epochs(self, now_ms: int) -> frozenset[tuple[str, int]]:
        """The (topic, epoch) pairs whose keys this source dropped since the last call because
        they stopped being live before their ``destroy_after`` (a topic shred), so that callers
        drop what they derived from them (an opener's sessions, its subject keys of the topic).
        """
        ...
