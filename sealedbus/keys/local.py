"""The in-process key service: the embedded default, with the network KDS's semantics.

Topics have produce/consume policies (deny by default); epochs rotate on a schedule, the next one
published ahead; epoch private keys are destroyed after the retention window; removing a consumer
or revoking a member rotates its topics at once. Members get KDS-style signed certificates, and
consumers receive epoch keys as HPKE grants they open with their receive key, as over the network.

Time is read from the injected ``clock`` and schedules advance lazily whenever the service is
asked something, so no thread runs behind your back; ``tick()`` advances them explicitly.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealedbus.core.signed import Certificate, EpochDescription, RevocationList, SubjectKey
from sealedbus.core.suites import KeyPair, Suite
from sealedbus.errors import (
    AccessDenied,
    ConfigurationError,
    KeyServiceUnavailable,
    Reason,
    UnauthenticEnvelope,
    UnknownTopic,
    UnopenableEnvelope,
)
from sealedbus.keys import authority
from sealedbus.keys.authority import EpochInfo, TopicPolicy
from sealedbus.keys.identity import MemberIdentity
from sealedbus.keys.source import EpochKeys

Clock = Callable[[], float]
Rng = Callable[[int], bytes]


@dataclass
class _Epoch:
    description: EpochDescription
    keys: KeyPair | None  # None once destroyed


@dataclass
class _Subject:
    signed: bytes | None  # the root-signed SubjectKey; None once erased (a tombstone)
    private: bytes | None  # None once erased


@dataclass
class _Topic:
    policy: TopicPolicy
    token_key: bytes
    epochs: dict[int, _Epoch] = field(default_factory=dict)
    consumer_since: dict[str, int] = field(default_factory=dict)
    subject_ids: dict[bytes, bytes] = field(default_factory=dict)  # subject token -> key id
    subjects: dict[bytes, _Subject] = field(default_factory=dict)  # key id -> key or tombstone


def _info(record: _Epoch) -> EpochInfo:
    d = record.description
    return EpochInfo(
        d.topic, d.epoch, d.not_before_ms, d.not_after_ms, d.destroy_after_ms, record.keys is None
    )


# what a refused grant raises: the reason and its text (formatted with member, topic, epoch)
_GRANT_REFUSALS: dict[authority.GrantRefusal, tuple[Reason, str]] = {
    authority.GrantRefusal.REVOKED: (Reason.NOT_GRANTED, "member {member!r} is revoked"),
    authority.GrantRefusal.NOT_CONSUMER: (
        Reason.NOT_GRANTED,
        "{member!r} may not consume {topic!r}",
    ),
    authority.GrantRefusal.UNKNOWN_EPOCH: (Reason.EPOCH_UNKNOWN, "{topic!r} has no epoch {epoch}"),
    authority.GrantRefusal.DESTROYED: (Reason.EPOCH_DESTROYED, "{topic!r} epoch {epoch}"),
    authority.GrantRefusal.PREDATES: (Reason.NOT_GRANTED, "epoch {epoch} predates access"),
}


class LocalKeyService:
    """Key service living in this process. ``enroll()`` hands out a member's ``KeySource``."""

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        rng: Rng = os.urandom,
        certificate_lifetime: float = 86_400.0,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._root = Ed25519PrivateKey.from_private_bytes(rng(32))
        self._cert_lifetime_ms = int(certificate_lifetime * 1000)
        self._lock = threading.RLock()
        self._topics: dict[str, _Topic] = {}
        self._members: dict[str, MemberIdentity] = {}
        self._certs: dict[bytes, Certificate] = {}
        self._current_cert: dict[str, Certificate] = {}
        self._revoked: set[str] = set()
        self._revocations = RevocationList(0, 0)
        self._serial = 0

    # -- administration -------------------------------------------------------------------

    @property
    def root_public_key(self) -> bytes:
        return self._root.public_key().public_bytes_raw()

    def create_topic(
        self,
        name: str,
        *,
        producers: Iterable[str] = (),
        consumers: Iterable[str] = (),
        rotation_period: float = 3600.0,
        retention: float = 7 * 86_400.0,
        suite: str | Suite = Suite.X25519,
        history: bool = False,
        max_message_age: float | None = authority.DEFAULT_MAX_AGE_MS / 1000,
    ) -> None:
        """Create a topic. Nobody may produce or consume unless listed (deny by default).
        Openers refuse envelopes sent more than ``max_message_age`` seconds ago (None: no
        limit; the limit bounds replays to other or restarted consumers)."""
        try:
            policy = TopicPolicy(
                name=name,
                producers=frozenset(producers),
                consumers=frozenset(consumers),
                rotation_ms=int(rotation_period * 1000),
                retention_ms=int(retention * 1000),
                suite=Suite.parse(suite),
                history=history,
                max_age_ms=0 if max_message_age is None else int(max_message_age * 1000),
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        with self._lock:
            if name in self._topics:
                raise ConfigurationError(f"topic {name!r} exists")
            now = self._now_ms()
            topic = self._topics[name] = _Topic(policy, self._rng(32))
            topic.consumer_since = dict.fromkeys(policy.consumers, now)
            self._add_epoch(topic, now)

    def set_policy(
        self,
        name: str,
        *,
        producers: Iterable[str] | None = None,
        consumers: Iterable[str] | None = None,
    ) -> None:
        """Change who may produce or consume. Removing a consumer rotates the topic at once;
        removing a producer withdraws its certificates from the topic (revocation list)."""
        with self._lock:
            topic = self._topic(name)
            now = self._now_ms()
            change = authority.change_policy(topic.policy, producers, consumers)
            for member in change.added_consumers:
                topic.consumer_since[member] = now
            for member in change.removed_consumers:
                topic.consumer_since.pop(member, None)
            topic.policy = change.policy
            self._serial += 1  # certificates name what a member may do: they are reissued
            for member in change.removed_producers:
                serials = [
                    c.serial
                    for c in self._certs.values()
                    if c.member == member and name in c.produce
                ]
                if serials:
                    self._revocations = authority.withdraw(
                        self._revocations, member, name, max(serials), now
                    )
            if change.removed_consumers:
                self._rotate(topic, now)

    def rotate(self, name: str) -> int:
        """Start a new epoch now; returns its number."""
        with self._lock:
            return self._rotate(self._topic(name), self._now_ms())

    def revoke(self, member: str, *, compromised: bool = True) -> None:
        """Revoke a member: its certificates stop verifying and every topic it reads rotates.
        For key compromise (the default) every envelope it ever signed is refused; otherwise
        (retirement) only envelopes stamped from now on."""
        with self._lock:
            self._revoked.add(member)
            now = self._now_ms()
            self._revocations = authority.revoke(
                self._prune(now), member, self._serial, now, compromised=compromised
            )
            self._current_cert.pop(member, None)
            for topic in self._topics.values():
                if member in topic.policy.consumers:
                    self._rotate(topic, now)

    def enroll(
        self,
        name: str,
        suite: str | Suite = Suite.X25519,
        *,
        replace: bool = False,
        compromised: bool = False,
    ) -> LocalMember:
        """Enroll a service (new keys, certificate) and return its key source. An enrolled name
        is replaced only with ``replace=True``: its old key source stops working and its old
        certificates are revoked (retired: envelopes they signed before now still open; with
        ``compromised=True`` none do)."""
        with self._lock:
            if name in self._revoked:
                raise AccessDenied(f"member {name!r} is revoked")
            if name in self._members:
                if not replace:
                    raise ConfigurationError(
                        f"member {name!r} is already enrolled (replace=True replaces its keys "
                        "and revokes its old certificates)"
                    )
                now = self._now_ms()
                serials = [c.serial for c in self._certs.values() if c.member == name]
                if serials:
                    self._revocations = authority.revoke(
                        self._prune(now), name, max(serials), now, compromised=compromised
                    )
                self._current_cert.pop(name, None)
            ident = MemberIdentity.generate(name, self._rng, Suite.parse(suite))
            self._members[name] = ident
            return LocalMember(self, ident)

    def erase_subject(self, name: str, subject: str) -> bytes | None:
        """Crypto-shred one data subject on a topic: its private and public key are destroyed
        and only a tombstone of its key id stays, so openers refuse its envelopes with
        ``subject_erased`` (wherever copies sit). Returns the erased key id, or None when the
        subject had no key. A later seal for the subject makes a fresh key pair with a new id.
        Members that cached the key (60 s by default) may use it until their cache expires."""
        with self._lock:
            topic = self._topic(name)
            key_id = topic.subject_ids.pop(
                authority.subject_token(topic.token_key, name, subject), None
            )
            if key_id is not None:
                topic.subjects[key_id] = _Subject(None, None)
            return key_id

    def shred_topic(self, name: str) -> tuple[list[int], int]:
        """Destroy every key of topic ``name`` now, as ``admin topic shred`` does on the KDS:
        each epoch key still held (published ahead included) and every subject key, then start
        a fresh epoch. Returns (the destroyed epochs, the fresh one). Members drop their copies
        and openers their sessions at their next revocation check (``dropped_epochs``)."""
        with self._lock:
            topic = self._topic(name)
            destroyed = sorted(n for n, e in topic.epochs.items() if e.keys is not None)
            for number in destroyed:
                topic.epochs[number].keys = None
            for key_id in topic.subjects:
                topic.subjects[key_id] = _Subject(None, None)
            topic.subject_ids.clear()
            return destroyed, self._add_epoch(topic, self._now_ms())

    def epochs(self, name: str) -> list[EpochInfo]:
        with self._lock:
            topic = self._topic(name)
            self._advance(topic, self._now_ms())
            return [_info(e) for _, e in sorted(topic.epochs.items())]

    def tick(self) -> None:
        """Advance every topic's schedule to now: publish next epochs, destroy expired keys."""
        with self._lock:
            now = self._now_ms()
            for topic in self._topics.values():
                self._advance(topic, now)

    def _prune(self, now: int) -> RevocationList:
        """The revocation list without entries that can no longer refuse anything."""
        keep = max(
            (t.policy.rotation_ms + t.policy.retention_ms for t in self._topics.values()), default=0
        )

        def useful_until(member: str, up_to: int) -> int:
            last = max(
                (
                    c.not_after_ms
                    for c in self._certs.values()
                    if c.member == member and c.serial <= up_to
                ),
                default=None,
            )
            return authority.revocation_horizon(last, keep)

        return authority.prune(self._revocations, useful_until, now)

    # -- what members ask (through LocalMember) -----------------------------------------------

    def _check_key(self, identity: MemberIdentity) -> None:
        if self._members.get(identity.name) is not identity:
            raise AccessDenied(f"{identity.name!r}: key replaced by a later enrollment")

    def _certificate_for(self, member: str, now: int) -> Certificate:
        with self._lock:
            if member in self._revoked:
                raise AccessDenied(f"member {member!r} is revoked")
            cert = self._current_cert.get(member)
            produce = [t for t, s in self._topics.items() if member in s.policy.producers]
            consume = [t for t, s in self._topics.items() if member in s.policy.consumers]
            lifetime = self._cert_lifetime_ms
            if cert is not None and not authority.needs_reissue(
                cert, produce, consume, now, lifetime
            ):
                return cert
            ident = self._members[member]
            self._serial += 1
            cert = authority.issue_certificate(
                member,
                ident.identity_public,
                ident.receive.suite,
                ident.receive.public,
                produce,
                consume,
                now,
                lifetime,
                self._serial,
            )
            self._certs[cert.cert_id] = cert
            self._current_cert[member] = cert
            return cert

    def _sealing_epoch(self, member: str, name: str, now: int) -> EpochDescription:
        with self._lock:
            topic = self._topic(name)
            if member in self._revoked or member not in topic.policy.producers:
                raise AccessDenied(f"{member!r} may not produce to {name!r}")
            self._advance(topic, now)
            return self._current(topic, now).description

    def _grant(
        self, member: str, name: str, epoch: int, now: int
    ) -> tuple[EpochDescription, bytes]:
        with self._lock:
            topic = self._topics.get(name)
            if topic is None:
                raise UnopenableEnvelope(Reason.EPOCH_UNKNOWN, f"no topic {name!r}")
            self._advance(topic, now)
            record = topic.epochs.get(epoch)
            refusal = authority.grant_refusal(
                topic.policy,
                topic.consumer_since.get(member),
                None if record is None else _info(record),
                now,
                revoked=member in self._revoked,
            )
            if refusal is not None or record is None or record.keys is None:  # (those: refused)
                refusal = refusal or authority.GrantRefusal.DESTROYED
                reason, text = _GRANT_REFUSALS[refusal]
                raise UnopenableEnvelope(
                    reason,
                    text.format(member=member, topic=name, epoch=epoch),
                    refusal=authority.GRANT_REFUSAL_CODES[refusal],
                )
            cert = self._certificate_for(member, now)
            try:
                grant = authority.seal_grant(self._root, record.description, record.keys, cert)
            except authority.WeakReceiveKey as exc:
                raise UnopenableEnvelope(Reason.NOT_GRANTED, str(exc)) from None
            return record.description, grant

    def _topic_key(self, member: str, name: str) -> bytes:
        with self._lock:
            topic = self._topic(name)
            allowed = member in topic.policy.producers or member in topic.consumer_since
            if member in self._revoked or not allowed:
                raise AccessDenied(f"{member!r} neither produces to nor consumes {name!r}")
            return topic.token_key

    def _subject_key(self, member: str, name: str, subject: str, now: int) -> bytes:
        with self._lock:
            topic = self._topic(name)
            if member in self._revoked or member not in topic.policy.producers:
                raise AccessDenied(f"{member!r} may not produce to {name!r}")
            token = authority.subject_token(topic.token_key, name, subject)
            key_id = topic.subject_ids.get(token)
            if key_id is None:
                key_id = self._rng(16)
                key, pair = authority.new_subject_key(name, key_id, self._rng(32), now)
                topic.subjects[key_id] = _Subject(key.sign(self._root), pair.private)
                topic.subject_ids[token] = key_id
            signed = topic.subjects[key_id].signed
            assert signed is not None  # noqa: S101 - erasure drops the token with the key
            return signed

    def _subject_grant(self, member: str, name: str, key_id: bytes, now: int) -> bytes:
        with self._lock:
            topic = self._topics.get(name)
            if topic is None:
                raise UnopenableEnvelope(Reason.EPOCH_UNKNOWN, f"no topic {name!r}")
            if member in self._revoked or member not in topic.consumer_since:
                raise UnopenableEnvelope(Reason.NOT_GRANTED, f"{member!r} may not consume {name!r}")
            record = topic.subjects.get(key_id)
            if record is None:
                raise UnauthenticEnvelope(Reason.BAD_SIGNATURE, "no such subject key")
            if record.private is None:
                raise UnopenableEnvelope(Reason.SUBJECT_ERASED, f"subject key on {name!r}")
            cert = self._certificate_for(member, now)
            return authority.seal_subject_grant(self._root, name, key_id, record.private, cert)

    def _sender(self, cert_id: bytes) -> Certificate | None:
        with self._lock:
            return self._certs.get(cert_id)

    def _revocation_list(self) -> RevocationList:
        with self._lock:
            return self._revocations

    def _is_destroyed(self, name: str, epoch: int, now: int) -> bool:
        with self._lock:
            topic = self._topics.get(name)
            if topic is None:
                return True
            self._advance(topic, now)
            record = topic.epochs.get(epoch)
            return record is None or record.keys is None

    # -- schedule -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            raise UnknownTopic(f"no topic {name!r}")
        return topic

    def _add_epoch(self, topic: _Topic, not_before: int) -> int:
        number = max(topic.epochs, default=-1) + 1
        description, keys = authority.new_epoch(
            topic.policy, number, not_before, self._rng(topic.policy.suite.seed_len)
        )
        topic.epochs[number] = _Epoch(description, keys)
        return number

    def _current(self, topic: _Topic, now: int) -> _Epoch:
        live = [
            e
            for e in topic.epochs.values()
            if e.keys is not None and e.description.not_before_ms <= now
        ]
        if not live:  # the caller's clock is behind the topic's first epoch
            raise KeyServiceUnavailable(f"{topic.policy.name!r} has no epoch yet at {now} ms")
        return max(live, key=lambda e: e.description.epoch)

    def _advance(self, topic: _Topic, now: int) -> None:
        for record in topic.epochs.values():
            if record.keys is not None and now >= record.description.destroy_after_ms:
                record.keys = None  # the only reference: the key bytes go with it
        latest = topic.epochs[max(topic.epochs)].description
        start = authority.next_epoch_start(topic.policy, latest.not_after_ms, now)
        if start is not None:
            self._add_epoch(topic, start)

    def _rotate(self, topic: _Topic, now: int) -> int:
        infos = [_info(e) for e in topic.epochs.values()]
        for number in authority.withdrawn_by_rotation(infos, now):
            topic.epochs[number].keys = None  # published ahead but never used: withdraw it
        return self._add_epoch(topic, now)


class LocalMember:
    """One enrolled member's view of a LocalKeyService; implements ``KeySource``."""

    def __init__(self, service: LocalKeyService, identity: MemberIdentity) -> None:
        self._service = service
        self._identity = identity
        self._root = service._root.public_key()
        self._keys: dict[tuple[str, int], EpochKeys] = {}
        self._lock = threading.Lock()

    @property
    def member(self) -> str:
        return self._identity.name

    def identity(
        self, now_ms: int, refresh: bool = False
    ) -> tuple[Ed25519PrivateKey, Certificate]:  # always current: policy changes reissue it
        self._service._check_key(self._identity)
        return self._identity.signing_key, self._service._certificate_for(self.member, now_ms)

    def sealing_epoch(self, topic: str, now_ms: int) -> EpochDescription:
        self._service._check_key(self._identity)
        return self._service._sealing_epoch(self.member, topic, now_ms)

    def epoch_keys(self, topic: str, epoch: int, now_ms: int) -> EpochKeys:
        with self._lock:
            cached = self._keys.get((topic, epoch))
        if cached is not None and not self._service._is_destroyed(topic, epoch, now_ms):
            return cached
        with self._lock:
            self._keys.pop((topic, epoch), None)  # destroyed: drop our copy too
        self._service._check_key(self._identity)
        description, grant = self._service._grant(self.member, topic, epoch, now_ms)
        keys = EpochKeys(
            description,
            authority.open_grant(
                self._root, grant, description, self.member, self._identity.receive
            ),
        )
        with self._lock:
            self._keys[(topic, epoch)] = keys
        return keys

    def topic_key(self, topic: str, now_ms: int) -> bytes:
        self._service._check_key(self._identity)
        return self._service._topic_key(self.member, topic)

    def subject_key(self, topic: str, subject: str, now_ms: int) -> SubjectKey:
        self._service._check_key(self._identity)
        signed = self._service._subject_key(self.member, topic, subject, now_ms)
        return authority.check_subject_key(self._root, signed, topic)

    def subject_private_key(self, topic: str, subject_key_id: bytes, now_ms: int) -> bytes:
        self._service._check_key(self._identity)
        grant = self._service._subject_grant(self.member, topic, subject_key_id, now_ms)
        return authority.open_subject_grant(
            self._root, grant, topic, subject_key_id, self.member, self._identity.receive
        )

    def sender_certificate(self, cert_id: bytes, now_ms: int) -> Certificate | None:
        return self._service._sender(cert_id)

    def dropped_epochs(self, now_ms: int) -> frozenset[tuple[str, int]]:
        """Epoch keys held that the service destroyed before their time (``shred_topic``):
        dropped now, and named so the opener drops its sessions too."""
        with self._lock:
            held = list(self._keys)
        gone = frozenset(k for k in held if self._service._is_destroyed(*k, now_ms))
        with self._lock:
            for key in gone:
                self._keys.pop(key, None)
        return gone

    def revocations(self, now_ms: int) -> RevocationList:
        return self._service._revocation_list()
