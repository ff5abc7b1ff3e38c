"""Every error sealedbus raises, in one tree.

    SealedbusError                     root of everything below
    ├── InvalidEnvelope                an envelope failed a check; ``.reason`` says which (a Reason)
    │   ├── NotAnEnvelope              the bytes carry no sealedbus magic prefix
    │   ├── MalformedEnvelope          unknown version or suite, bad length, unparsable field
    │   ├── ExpiredEnvelope            past its expiry, or sent too far in the future
    │   ├── DuplicateEnvelope          already opened (replay); adapters acknowledge and count it
    │   ├── UnauthenticEnvelope        sender unknown, revoked, not allowed, or signature wrong
    │   └── UnopenableEnvelope         no key for it here (not granted, destroyed, subject
    │                                  erased) or AEAD failed
    ├── KeyServiceError                the key service refused or could not answer
    │   ├── AccessDenied               policy forbids this member this action (deny by default)
    │   ├── UnknownTopic               no such topic
    │   ├── Refused                    the KDS answered 4xx; ``status``, ``reason`` (a KdsCode)
    │   ├── UntrustedResponse          a KDS answer failed verification against the pinned root
    │   │   └── AuditRollback          the KDS's signed audit head went backwards (a rollback)
    │   └── KeyServiceUnavailable      key service unreachable and the cache ran out (retryable)
    │       └── StaleRevocations       the held revocation list is too old to trust (retryable)
    ├── ConfigurationError             the caller passed something that cannot work (a ValueError)
    ├── SecretError                    a secret file is missing, unsafe or unreadable (a ValueError)
    └── BrokerError                    a broker client failed; ``.retryable`` says whether to retry
        └── BatchNotPublished          (sealedbus.brokers.rabbitmq) some sealed messages of a
                                       batch were not published; it holds them to publish again

Errors carry no secrets: messages name topics, epochs and members, never key bytes or plaintext.
The reason codes (``Reason``) and the check each one stands for are listed in SPEC.md section 8.
The KDS's refusal codes (``KdsCode``) are shared by the KDS and its clients; ``KDS_REFUSALS`` is
the one table saying what each means to a member's client (``refusal_error``).
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
    SUBJECT_ERASED = "subject_erased"


class KdsCode(StrEnum):
    """Machine-readable code of every KDS refusal: the ``error`` field of its JSON answer, the
    ``code`` of the server's ``ServiceError`` and the ``reason`` of the client's ``Refused``
    (stable: used in metrics, the audit log and scripts)."""

    # authentication
    UNAUTHENTICATED = "unauthenticated"
    BAD_SIGNATURE = "bad_signature"
    STALE_REQUEST = "stale_request"
    REPLAYED_REQUEST = "replayed_request"
    KEY_REPLACED = "key_replaced"
    MEMBER_REVOKED = "member_revoked"
    # admins: second factor and sessions
    BAD_TOTP = "bad_totp"
    TOTP_REUSED = "totp_reused"
    TOTP_LOCKED = "totp_locked"
    BAD_SESSION = "bad_session"
    UNKNOWN_SESSION = "unknown_session"
    # enrollment and tokens
    BAD_ENROLLMENT = "bad_enrollment"
    WEAK_KEY = "weak_key"  # an Ed25519 key of small order or not canonically encoded
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a refusal code, not a secret
    TOKEN_USED = "token_used"  # noqa: S105 - a refusal code, not a secret
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - a refusal code, not a secret
    TOKEN_EXISTS = "token_exists"  # noqa: S105 - a refusal code, not a secret
    MEMBER_ENROLLED = "member_enrolled"
    UNKNOWN_MEMBER = "unknown_member"
    UNKNOWN_CERTIFICATE = "unknown_certificate"
    # topics, epochs and policy
    ACCESS_DENIED = "access_denied"
    NOT_GRANTED = "not_granted"
    UNKNOWN_TOPIC = "unknown_topic"
    TOPIC_EXISTS = "topic_exists"
    EPOCH_UNKNOWN = "epoch_unknown"
    EPOCH_DESTROYED = "epoch_destroyed"
    PREDATES_ACCESS = "predates_access"  # the epoch ended before this member's access began
    NO_EPOCH = "no_epoch"
    # subjects (per-subject erasure)
    SUBJECT_ERASED = "subject_erased"
    UNKNOWN_SUBJECT_KEY = "unknown_subject_key"
    # the request itself, and the service
    INVALID_REQUEST = "invalid_request"
    INVALID_NAME = "invalid_name"
    INVALID_POLICY = "invalid_policy"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    NOT_READY = "not_ready"
    INTERNAL_ERROR = "internal_error"
    # an answer without a code this client knows (another version, a proxy's error page)
    REFUSED = "refused"

    @classmethod
    def parse(cls, code: object) -> KdsCode:
        """The code a KDS answer names; ``REFUSED`` for one this client does not know."""
        try:
            return cls(str(code))
        except ValueError:
            return cls.REFUSED


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
    """This member holds no key for it (not granted, destroyed) or decryption failed;
    ``refusal`` is the key service's code (a KdsCode) when a key service refused the key."""

    default_reason = Reason.DECRYPT_FAILED

    def __init__(
        self, reason: Reason | None = None, detail: str = "", *, refusal: KdsCode | None = None
    ) -> None:
        super().__init__(reason, detail)
        self.refusal = refusal


class KeyServiceError(SealedbusError):
    """The key service refused a request or could not answer it."""


class AccessDenied(KeyServiceError):
    """Policy forbids this member this action on this topic (deny by default)."""


class UnknownTopic(KeyServiceError):
    """The topic does not exist in the key service."""


class Refused(KeyServiceError):
    """The KDS answered with a 4xx refusal: ``reason`` (a KdsCode) says why, ``status`` is the
    HTTP status, ``code`` the code as the KDS sent it and ``detail`` its text for people."""

    def __init__(self, status: int, code: str, detail: str = "") -> None:
        super().__init__(f"KDS refused ({status} {code}): {detail}")
        self.status = status
        self.code = code
        self.reason: KdsCode = KdsCode.parse(code)
        self.detail = detail


class UntrustedResponse(KeyServiceError):
    """A KDS answer did not verify under the pinned root key or does not match the question:
    someone between the client and the KDS altered it. Nothing from it was used."""


class AuditRollback(UntrustedResponse):
    """The KDS published an audit head behind one this client saw before (a lower sequence, or
    the same sequence with another hash): its database was rolled back or forked. The client
    refuses that KDS from then on; not retryable: an operator must look."""


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


class SecretError(SealedbusError, ValueError):
    """A secret file is missing, unsafe or does not parse; or a wrapped value does not open."""


class BrokerError(SealedbusError):
    """A broker client failed; ``retryable`` tells whether the same call may succeed later."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


# What each KDS refusal means to a member's client: the KeyServiceError it raises, and, when the
# refusal answered a request for an epoch's keys (a grant), the Reason the envelope cannot be
# opened for (an UnopenableEnvelope, which adapters dead-letter); None: the KeyServiceError then
# too. The one place the client interprets refusals (``refusal_error``).
KDS_REFUSALS: dict[KdsCode, tuple[type[KeyServiceError], Reason | None]] = {
    KdsCode.UNAUTHENTICATED: (AccessDenied, None),
    KdsCode.BAD_SIGNATURE: (AccessDenied, None),
    KdsCode.STALE_REQUEST: (AccessDenied, None),
    KdsCode.REPLAYED_REQUEST: (AccessDenied, None),
    KdsCode.KEY_REPLACED: (AccessDenied, None),
    KdsCode.MEMBER_REVOKED: (AccessDenied, Reason.NOT_GRANTED),
    KdsCode.BAD_TOTP: (AccessDenied, None),
    KdsCode.TOTP_REUSED: (AccessDenied, None),
    KdsCode.TOTP_LOCKED: (AccessDenied, None),
    KdsCode.BAD_SESSION: (AccessDenied, None),
    KdsCode.UNKNOWN_SESSION: (AccessDenied, None),
    KdsCode.BAD_ENROLLMENT: (AccessDenied, None),
    KdsCode.WEAK_KEY: (AccessDenied, None),
    KdsCode.INVALID_TOKEN: (AccessDenied, None),
    KdsCode.TOKEN_USED: (AccessDenied, None),
    KdsCode.TOKEN_EXPIRED: (AccessDenied, None),
    KdsCode.TOKEN_EXISTS: (AccessDenied, None),
    KdsCode.MEMBER_ENROLLED: (AccessDenied, None),
    KdsCode.UNKNOWN_MEMBER: (AccessDenied, None),
    KdsCode.UNKNOWN_CERTIFICATE: (AccessDenied, None),
    KdsCode.ACCESS_DENIED: (AccessDenied, Reason.NOT_GRANTED),
    KdsCode.NOT_GRANTED: (AccessDenied, Reason.NOT_GRANTED),
    KdsCode.UNKNOWN_TOPIC: (UnknownTopic, Reason.EPOCH_UNKNOWN),
    KdsCode.TOPIC_EXISTS: (AccessDenied, None),
    KdsCode.EPOCH_UNKNOWN: (UnknownTopic, Reason.EPOCH_UNKNOWN),
    KdsCode.EPOCH_DESTROYED: (AccessDenied, Reason.EPOCH_DESTROYED),
    KdsCode.PREDATES_ACCESS: (AccessDenied, Reason.NOT_GRANTED),
    KdsCode.NO_EPOCH: (AccessDenied, None),
    KdsCode.SUBJECT_ERASED: (AccessDenied, Reason.SUBJECT_ERASED),
    KdsCode.UNKNOWN_SUBJECT_KEY: (AccessDenied, Reason.BAD_SIGNATURE),
    KdsCode.INVALID_REQUEST: (AccessDenied, None),
    KdsCode.INVALID_NAME: (AccessDenied, None),
    KdsCode.INVALID_POLICY: (AccessDenied, None),
    KdsCode.TOO_LARGE: (AccessDenied, None),
    KdsCode.RATE_LIMITED: (AccessDenied, None),
    KdsCode.NOT_READY: (AccessDenied, None),
    KdsCode.INTERNAL_ERROR: (AccessDenied, None),
    KdsCode.REFUSED: (AccessDenied, None),
}


def refusal_error(refused: Refused, *, grant: bool = False) -> SealedbusError:
    """The error a member's client raises for ``refused`` (see ``KDS_REFUSALS``); ``grant``:
    the refusal answered a request for an epoch's keys, to open an envelope with."""
    cls, reason = KDS_REFUSALS[refused.reason]
    if grant and reason is not None:
        if reason is Reason.BAD_SIGNATURE:  # a subject key id the authority never issued
            return UnauthenticEnvelope(reason, refused.detail)
        return UnopenableEnvelope(reason, refused.detail, refusal=refused.reason)
    return cls(refused.detail)
