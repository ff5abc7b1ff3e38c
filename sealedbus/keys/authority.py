"""What a key authority does, without storage: issue certificates, mint epochs, seal grants, and
the client side of those (open a grant, check an epoch). ``LocalKeyService`` and the network KDS
both build on these functions, so their semantics cannot drift apart.

Pure: keys, randomness and times come in as arguments.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedbus.core import suites
from sealedbus.core.backend import acceptable_point
from sealedbus.core.signed import (
    COMPROMISE,
    Certificate,
    EpochDescription,
    Grant,
    RevocationList,
    SignatureError,
    SubjectKey,
    SubjectKeyGrant,
    TopicKeyGrant,
    grant_info,
    subject_grant_info,
    topic_key_info,
)
from sealedbus.core.suites import KeyPair, Suite
from sealedbus.errors import KdsCode

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
DEFAULT_MAX_AGE_MS = DAY_MS
# How long past a revoked certificate's expiry, beyond the longest rotation plus retention of any
# topic, its revocation entry is kept: covers openers' clock skew allowance with a wide margin.
PRUNE_MARGIN_MS = DAY_MS


@dataclass(frozen=True)
class EpochInfo:
    """One epoch as an operator sees it (``LocalKeyService.epochs``, the KDS's ``epochs``)."""

    topic: str
    epoch: int
    not_before_ms: int
    not_after_ms: int
    destroy_after_ms: int
    destroyed: bool


@dataclass(frozen=True)
class TopicPolicy:
    """Who may do what on a topic and how its keys live; deny by default."""

    name: str
    producers: frozenset[str]
    consumers: frozenset[str]
    rotation_ms: int = HOUR_MS
    retention_ms: int = 7 * DAY_MS
    suite: Suite = Suite.X25519
    history: bool = False  # consumers may read epochs from before they were added
    # Openers refuse envelopes sent longer ago (signed into every epoch description): bounds how
    # long a replay to another consumer or a restarted one can be accepted. 0: no limit.
    max_age_ms: int = DEFAULT_MAX_AGE_MS

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode()) > 249:
            raise ValueError("topic names are 1 to 249 bytes")
        if self.rotation_ms < 1000:
            raise ValueError("rotation period must be at least one second")
        if self.retention_ms < self.rotation_ms:
            raise ValueError("retention must be at least one rotation period")
        if self.max_age_ms != 0 and self.max_age_ms < 1000:
            raise ValueError("maximum message age must be at least one second (or 0: no limit)")


@dataclass(frozen=True)
class PolicyChange:
    """What a policy change means: the new policy, consumers whose access starts now (their
    access window), consumers removed (the topic rotates at once) and producers removed (their
    certificates are withdrawn from the topic)."""

    policy: TopicPolicy
    added_consumers: frozenset[str]
    removed_consumers: frozenset[str]
    removed_producers: frozenset[str]


def change_policy(
    policy: TopicPolicy, producers: Iterable[str] | None, consumers: Iterable[str] | None
) -> PolicyChange:
    """Apply new producer and/or consumer lists (None: unchanged) to ``policy``."""
    new = policy
    if producers is not None:
        new = replace(new, producers=frozenset(producers))
    if consumers is not None:
        new = replace(new, consumers=frozenset(consumers))
    return PolicyChange(
        new,
        new.consumers - policy.consumers,
        policy.consumers - new.consumers,
        policy.producers - new.producers,
    )


def publish_ahead_ms(policy: TopicPolicy) -> int:
    """How long before an epoch starts its description is published (a tenth of the period)."""
    return max(policy.rotation_ms // 10, 1)


# -- the epoch schedule and who gets epoch keys: one rule for LocalKeyService and the KDS ---------


def next_epoch_start(
    policy: TopicPolicy, latest_not_after_ms: int | None, now_ms: int
) -> int | None:
    """When the epoch to publish now starts, or None when none is due. ``latest_not_after_ms``
    is when the topic's highest-numbered epoch ends (None: it has none). The next epoch is
    published ``publish_ahead_ms`` before the latest one ends and starts when it ends; a topic
    idle past a whole period starts afresh at now, with no backlog of epochs."""
    if latest_not_after_ms is None or now_ms >= latest_not_after_ms:
        return now_ms
    if now_ms >= latest_not_after_ms - publish_ahead_ms(policy):
        return latest_not_after_ms
    return None


def withdrawn_by_rotation(epochs: Iterable[EpochInfo], now_ms: int) -> tuple[int, ...]:
    """The epochs a forced rotation at ``now_ms`` withdraws: those published ahead (starting
    after now) and not yet destroyed; nothing was sealed to them. The new epoch starts at now."""
    return tuple(sorted(e.epoch for e in epochs if not e.destroyed and e.not_before_ms > now_ms))


class GrantRefusal(enum.Enum):
    """Why a member may not receive an epoch key (each back end words and raises its own)."""

    REVOKED = "revoked"  # the member is revoked
    NOT_CONSUMER = "not_consumer"  # not (or no longer) a consumer of the topic
    UNKNOWN_EPOCH = "unknown_epoch"
    DESTROYED = "destroyed"  # withdrawn, or past retention
    PREDATES = "predates"  # ended before the member's access began (and no history)


# the code each refusal is reported with (KDS answers; LocalKeyService's UnopenableEnvelope)
GRANT_REFUSAL_CODES: dict[GrantRefusal, KdsCode] = {
    GrantRefusal.REVOKED: KdsCode.MEMBER_REVOKED,
    GrantRefusal.NOT_CONSUMER: KdsCode.NOT_GRANTED,
    GrantRefusal.UNKNOWN_EPOCH: KdsCode.EPOCH_UNKNOWN,
    GrantRefusal.DESTROYED: KdsCode.EPOCH_DESTROYED,
    GrantRefusal.PREDATES: KdsCode.PREDATES_ACCESS,
}


def grant_refusal(
    policy: TopicPolicy,
    since_ms: int | None,
    epoch: EpochInfo | None,
    now_ms: int,
    *,
    revoked: bool = False,
) -> GrantRefusal | None:
    """Whether a member may receive the key of ``epoch`` (None: no such epoch) of the topic of
    ``policy``: None if it may. ``since_ms`` is since when it may consume the topic (None: it
    may not)."""
    if revoked:
        return GrantRefusal.REVOKED
    if since_ms is None:
        return GrantRefusal.NOT_CONSUMER
    if epoch is None:
        return GrantRefusal.UNKNOWN_EPOCH
    if epoch.destroyed or now_ms >= epoch.destroy_after_ms:
        return GrantRefusal.DESTROYED
    if not policy.history and epoch.not_after_ms <= since_ms:
        return GrantRefusal.PREDATES
    return None


def needs_reissue(
    cert: Certificate | None,
    produce: Iterable[str],
    consume: Iterable[str],
    now_ms: int,
    lifetime_ms: int,
) -> bool:
    """Whether a member's current certificate ``cert`` (None: it has none) must be replaced by a
    new one: when half its lifetime is gone, or when the topics it may produce to or consume
    changed (a certificate lists them)."""
    if cert is None or cert.not_after_ms - now_ms <= lifetime_ms // 2:
        return True
    return (cert.produce, cert.consume) != (tuple(sorted(produce)), tuple(sorted(consume)))


def new_epoch(
    policy: TopicPolicy, epoch: int, not_before_ms: int, seed: bytes
) -> tuple[EpochDescription, KeyPair]:
    keys = suites.keypair_from_seed(policy.suite, seed)
    description = EpochDescription(
        topic=policy.name,
        epoch=epoch,
        suite=policy.suite,
        public_key=keys.public,
        not_before_ms=not_before_ms,
        not_after_ms=not_before_ms + policy.rotation_ms,
        destroy_after_ms=not_before_ms + policy.rotation_ms + policy.retention_ms,
        max_age_ms=policy.max_age_ms,
    )
    return description, keys


def issue_certificate(
    member: str,
    identity_public: bytes,
    receive_suite: Suite,
    receive_public: bytes,
    produce: list[str],
    consume: list[str],
    now_ms: int,
    lifetime_ms: int,
    serial: int,
) -> Certificate:
    Ed25519PublicKey.from_public_bytes(identity_public)  # raises ValueError on a bad key
    if not acceptable_point(identity_public):  # anyone could sign as it (SPEC.md 5.4)
        raise ValueError("identity key is of small order or not canonically encoded")
    suites.check_public_key(receive_suite, receive_public)
    return Certificate(
        member=member,
        identity_public=identity_public,
        receive_suite=receive_suite,
        receive_public=receive_public,
        produce=tuple(sorted(produce)),
        consume=tuple(sorted(consume)),
        not_before_ms=now_ms - 60_000,  # a minute of clock skew
        not_after_ms=now_ms + lifetime_ms,
        serial=serial,
    )


class WeakReceiveKey(ValueError):
    """A hybrid (post-quantum) epoch would be granted under a classical receive key: whoever
    records the grant today could open it with a quantum computer later."""


def seal_grant(
    root: Ed25519PrivateKey, description: EpochDescription, keys: KeyPair, cert: Certificate
) -> bytes:
    """The epoch private key, HPKE-sealed to the member's receive key and signed by the root.

    Raises WeakReceiveKey when the epoch is of the hybrid suite and the receive key is not."""
    if description.suite is Suite.HYBRID and cert.receive_suite is not Suite.HYBRID:
        raise WeakReceiveKey(
            f"{cert.member!r} has an X25519 receive key; epochs of the hybrid suite are granted "
            "only to hybrid receive keys (enroll with suite x25519-mlkem768)"
        )
    info = grant_info(description.topic, description.epoch, cert.member, description.digest)
    sealed = suites.hpke_seal(cert.receive_suite, cert.receive_public, keys.private, info)
    grant = Grant(description.topic, description.epoch, cert.member, description.digest, sealed)
    return grant.sign(root)


def seal_topic_key(root: Ed25519PrivateKey, topic: str, cert: Certificate, key: bytes) -> bytes:
    """A topic's tokenization key, HPKE-sealed to the member's receive key, signed by the root."""
    info = topic_key_info(topic, cert.member)
    sealed = suites.hpke_seal(cert.receive_suite, cert.receive_public, key, info)
    return TopicKeyGrant(topic, cert.member, sealed).sign(root)


def open_topic_key(
    root: Ed25519PublicKey, data: bytes, topic: str, member: str, receive: KeyPair
) -> bytes:
    """Verify a topic key grant and its binding to ``topic`` and ``member``; return the key."""
    try:
        grant = TopicKeyGrant.verify(data, root)
    except SignatureError as exc:
        raise GrantError(str(exc)) from exc
    if (grant.topic, grant.member) != (topic, member):
        raise GrantError("topic key is for another topic or member")
    try:
        key = suites.hpke_open(
            receive.suite, receive.private, grant.sealed_key, topic_key_info(topic, member)
        )
    except (InvalidTag, ValueError) as exc:
        raise GrantError("topic key does not open with this receive key") from exc
    if len(key) != 32:
        raise GrantError("topic key must be 32 bytes")
    return key


class GrantError(ValueError):
    """A grant does not verify, does not match its epoch, or does not open."""


# -- subjects (SPEC.md 4.5, 6.9, 6.10): one X25519 key pair per (topic, subject) -------------------

SUBJECT_TOKEN_LABEL = b"sealedbus/1 subject token\x00"


def subject_token(token_key: bytes, topic: str, subject: str) -> bytes:
    """The keyed token an authority stores instead of a subject id: HMAC-SHA256 under its own
    secret over topic and subject, so the database never holds the subject in clear."""
    msg = SUBJECT_TOKEN_LABEL + bytes(msgpack.packb([topic, subject], use_bin_type=True))
    return hmac.digest(token_key, msg, "sha256")


def new_subject_key(
    topic: str, subject_key_id: bytes, seed: bytes, now_ms: int
) -> tuple[SubjectKey, KeyPair]:
    """A fresh subject key pair (``seed``: 32 random bytes, the private key) and the object
    producers get. ``subject_key_id``: 16 random bytes, never derived from the subject."""
    if len(subject_key_id) != suites.SUBJECT_KEY_ID_LEN:
        raise ValueError("a subject key id is 16 random bytes")
    keys = suites.keypair_from_seed(Suite.X25519, seed)
    return SubjectKey(topic, subject_key_id, keys.public, now_ms), keys


def seal_subject_grant(
    root: Ed25519PrivateKey, topic: str, subject_key_id: bytes, private: bytes, cert: Certificate
) -> bytes:
    """A subject private key, HPKE-sealed to the member's receive key and signed by the root."""
    info = subject_grant_info(topic, subject_key_id, cert.member)
    sealed = suites.hpke_seal(cert.receive_suite, cert.receive_public, private, info)
    return SubjectKeyGrant(topic, subject_key_id, cert.member, sealed).sign(root)


def open_subject_grant(
    root: Ed25519PublicKey,
    data: bytes,
    topic: str,
    subject_key_id: bytes,
    member: str,
    receive: KeyPair,
) -> bytes:
    """Verify a subject key grant and its binding; return the 32-byte subject private key."""
    try:
        grant = SubjectKeyGrant.verify(data, root)
    except SignatureError as exc:
        raise GrantError(str(exc)) from exc
    if (grant.topic, grant.subject_key_id, grant.member) != (topic, subject_key_id, member):
        raise GrantError("subject key grant is for another topic, subject key or member")
    info = subject_grant_info(topic, subject_key_id, member)
    try:
        private = suites.hpke_open(receive.suite, receive.private, grant.sealed_key, info)
    except (InvalidTag, ValueError) as exc:
        raise GrantError("subject key grant does not open with this receive key") from exc
    if len(private) != 32:
        raise GrantError("a subject private key is 32 bytes")
    return private


def check_subject_key(root: Ed25519PublicKey, data: bytes, topic: str) -> SubjectKey:
    """Verify a subject key object for ``topic``; raise GrantError otherwise."""
    try:
        key = SubjectKey.verify(data, root)
        suites.check_public_key(Suite.X25519, key.public_key)
    except (SignatureError, ValueError) as exc:
        raise GrantError(str(exc)) from exc
    if key.topic != topic or len(key.subject_key_id) != suites.SUBJECT_KEY_ID_LEN:
        raise GrantError("subject key is for another topic, or malformed")
    return key


def open_grant(
    root: Ed25519PublicKey,
    grant_bytes: bytes,
    description: EpochDescription,
    member: str,
    receive: KeyPair,
) -> KeyPair:
    """Verify a grant and its binding to ``description`` and ``member``; return the epoch keys."""
    grant = Grant.verify(grant_bytes, root)
    if (grant.topic, grant.epoch, grant.member, grant.description_digest) != (
        description.topic,
        description.epoch,
        member,
        description.digest,
    ):
        raise GrantError("grant is for another topic, epoch, member or epoch description")
    info = grant_info(grant.topic, grant.epoch, member, grant.description_digest)
    try:
        private = suites.hpke_open(receive.suite, receive.private, grant.sealed_key, info)
        keys = suites.keypair_from_seed(description.suite, private)
    except (InvalidTag, ValueError) as exc:
        raise GrantError("grant does not open with this receive key") from exc
    if keys.public != description.public_key:
        raise GrantError("granted private key does not match the epoch public key")
    return keys


# -- revocation lists: one rule for LocalKeyService and the KDS ----------------------------------


def revoke(
    revocations: RevocationList,
    member: str,
    up_to_serial: int,
    now_ms: int,
    *,
    compromised: bool,
) -> RevocationList:
    """``revocations`` plus the revocation of ``member``'s certificates up to ``up_to_serial``:
    for key compromise every envelope they signed is refused; for retirement only those sent
    from ``now_ms`` on. An entry that an existing one already covers changes nothing (the same
    list is returned); entries the new one covers are dropped."""
    since = COMPROMISE if compromised else now_ms

    def covers(a: tuple[int, int], b: tuple[int, int]) -> bool:  # (up_to, since) a covers b
        return a[0] >= b[0] and (a[1] == COMPROMISE or (b[1] != COMPROMISE and a[1] <= b[1]))

    mine = [(s, t) for m, s, t in revocations.members if m == member]
    if any(covers(e, (up_to_serial, since)) for e in mine):
        return revocations
    kept = tuple(
        e for e in revocations.members if e[0] != member or not covers((up_to_serial, since), e[1:])
    )
    return RevocationList(
        now_ms,
        revocations.serial + 1,
        (*kept, (member, up_to_serial, since)),
        revocations.withdrawn,
    )


def withdraw(
    revocations: RevocationList, member: str, topic: str, up_to_serial: int, now_ms: int
) -> RevocationList:
    """``revocations`` plus the withdrawal of ``member``'s certificates up to ``up_to_serial``
    from ``topic``: one entry per (member, topic), raised to the highest serial."""
    held = max((s for m, t, s in revocations.withdrawn if (m, t) == (member, topic)), default=-1)
    if held >= up_to_serial:
        return revocations
    kept = tuple(e for e in revocations.withdrawn if (e[0], e[1]) != (member, topic))
    return RevocationList(
        now_ms,
        revocations.serial + 1,
        revocations.members,
        (*kept, (member, topic, up_to_serial)),
    )


def prune(
    revocations: RevocationList, useful_until: Callable[[str, int], int], now_ms: int
) -> RevocationList:
    """Drop entries that can no longer refuse anything: ``useful_until(member, up_to_serial)``
    is when the last envelope any of those certificates signed stops opening anywhere (see
    ``revocation_horizon``). Returns the same list when nothing is dropped."""
    members = tuple(e for e in revocations.members if useful_until(e[0], e[1]) >= now_ms)
    withdrawn = tuple(e for e in revocations.withdrawn if useful_until(e[0], e[2]) >= now_ms)
    if (members, withdrawn) == (revocations.members, revocations.withdrawn):
        return revocations
    return RevocationList(now_ms, revocations.serial + 1, members, withdrawn)


def revocation_horizon(last_not_after_ms: int | None, longest_keep_ms: int) -> int:
    """Until when a revocation entry matters: an envelope is opened only if sent within its
    certificate's validity and inside its epoch's window (give or take the openers' skew), and
    only until that epoch is destroyed, a rotation plus retention later. ``last_not_after_ms`` is
    the latest expiry of the certificates the entry covers (None: it covers none: keep it as
    long as the others, it costs a few bytes); ``longest_keep_ms`` the longest rotation plus
    retention of any topic."""
    if last_not_after_ms is None:
        return 1 << 62
    return last_not_after_ms + longest_keep_ms + PRUNE_MARGIN_MS
