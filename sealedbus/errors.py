"""Every error sealedbus raises, in one tree.

    SealedbusError                     root of everything below
    ├── InvalidEnvelope                an envelope failed a check; ``.reason`` says which (a Reason)
    │   ├── NotAnEnvelope              the bytes carry no sealedbus magic prefix
    │   ├── MalformedEnvelope          unknown version or suite, bad length, unparsable field
    │   ├── ExpiredEnvelope            past its expiry, or sent too far in the future
    │   ├── DuplicateEnvelope          already opened (replay); adapters acknowledge and count it
    │   ├── UnauthenticEnvelope        sender unknown, revoked, not allowed, or signature wrong
    │   └── UnopenableEnvelope         no key for it here (not granted, destroyed) or AEAD failed
    ├── KeyServiceError                the key service refused or could not answer
    │   ├── AccessDenied               policy forbids this member this action (deny by default)
    │   ├── UnknownTopic               no such topic
    │   ├── Refused                    the KDS answered 4xx; ``status``, ``code``, ``reason``
    │   ├── UntrustedResponse          a KDS answer failed verification against the pinned root
    │   └── KeyServiceUnavailable      key service unreachable and the cache ran out (retryable)
    │       └── StaleRevocations       the held revocation list is too old to trust (retryable)
    ├── ConfigurationError             the caller passed something that cannot work
    └── BrokerError                    a broker client failed; ``.retryable`` says whether to retry

Errors carry no secrets: messages name topics, epochs and members, never key bytes or plaintext.
The reason codes (``Reason``) and the check each one stands for are listed in SPEC.md section 8.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Machine-readable reason carried by every InvalidEnvelope (stable: used in metrics, DLQ)."""

    NOT_ENVELOPE = "not_envelope"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    VERSION = "unsupported_version"
    SUITE = "suite_not_allowed"
    EXPIRED = "expired"
    FROM_FUTURE = "from_future"
    OUTSIDE_EPOCH = "outside_epoch_window"
    DUPLICATE = "duplicate"
    TOO_OLD = "outside_replay_window"
    UNKNOWN_SENDER = "unknown_sender"
    SENDER_REVOKED = "sender_revoked"
    SENDER_NOT_ALLOWED = "sender_not_allowed"
    CERTIFICATE_EXPIRED = "certificate_expired"
    BAD_SIGNATURE = "bad_signature"
    NOT_GRANTED = "not_granted"
    EPOCH_UNKNOWN = "epoch_unknown"
    EPOCH_DESTROYED = "epoch_destroyed"
    DECRYPT_FAILED = "decrypt_failed"


class SealedbusError(Exception):
    """Root of every error sealedbus raises."""

    retryable: bool = False


class InvalidEnvelope(SealedbusError):
    """An envelope failed a check; nothing of it reached the application."""

    default_reason: Reason = Reason.MALFORMED

    def __init__(self, reason: Reason | None = None, detail: str = "") -> None:
        self.reason: Reason = reason or self.default_reason
        self.detail = detail
        super().__init__(f"{self.reason.value}: {detail}" if detail else self.reason.value)


class NotAnEnvelope(InvalidEnvelope):
    """The bytes carry no sealedbus magic prefix (plaintext, or another format)."""

    default_reason = Reason.NOT_ENVELOPE


class MalformedEnvelope(InvalidEnvelope):
    """Unknown version or suite, wrong length, or a field that does not parse."""

    default_reason = Reason.MALFORMED


class ExpiredEnvelope(InvalidEnvelope):
    """Past its expiry, or stamped further in the future than the clock skew allows."""

    default_reason = Reason.EXPIRED


class DuplicateEnvelope(InvalidEnvelope):
    """Already opened by this opener (a replay or a redelivery after success)."""

    default_reason = Reason.DUPLICATE


class UnauthenticEnvelope(InvalidEnvelope):
    """The sender is unknown, revoked or not allowed here, or the signature is wrong."""

    default_reason = Reason.BAD_SIGNATURE


class UnopenableEnvelope(InvalidEnvelope):
    """This member holds no key for it (not granted, destroyed) or decryption failed."""

    default_reason = Reason.DECRYPT_FAILED


class KeyServiceError(SealedbusError):
    """The key service refused a request or could not answer it."""


class AccessDenied(KeyServiceError):
    """Policy forbids this member this action on this topic (deny by default)."""


class UnknownTopic(KeyServiceError):
    """The topic does not exist in the key service."""


class Refused(KeyServiceError):
    """The KDS answered with a 4xx refusal; ``status``, ``code`` and ``reason`` say why."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"KDS refused ({status} {code}): {reason}")
        self.status = status
        self.code = code
        self.reason = reason


class UntrustedResponse(KeyServiceError):
    """A KDS answer did not verify under the pinned root key or does not match the question:
    someone between the client and the KDS altered it. Nothing from it was used."""


class KeyServiceUnavailable(KeyServiceError):
    """The key service cannot be reached and cached keys no longer cover the request."""

    retryable = True


class StaleRevocations(KeyServiceUnavailable):
    """The revocation list this member holds is older than its maximum age and no newer one can
    be had: no envelope is opened until one can (a revoked sender would otherwise keep its
    voice while the KDS is cut off). Retryable: adapters put the message back, never
    dead-letter it."""


class ConfigurationError(SealedbusError, ValueError):
    """An argument or setting that cannot work (bad suite name, negative limit, ...)."""


class BrokerError(SealedbusError):
    """A broker client failed; ``retryable`` tells whether the same call may succeed later."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
