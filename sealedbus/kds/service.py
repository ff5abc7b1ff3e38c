"""What the KDS does, over its store: the semantics of ``LocalKeyService`` (deny by default,
epochs published ahead, forced rotation withdrawing pre-published epochs, consumer access windows,
destruction after retention, revocation rotating the member's topics), built on the same pure
functions in ``sealedbus.keys.authority``, plus enrollment, tokens, admins and the audit log.

Refusals raise ``ServiceError`` with the HTTP status, a stable code (``sealedbus.errors.KdsCode``)
and a reason for the caller.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Row, delete, func, insert, select, update

from sealedbus.core import suites
from sealedbus.core.signed import (
    Certificate,
    EpochDescription,
    RevocationList,
    SealingEpochAnswer,
    SignatureError,
)
from sealedbus.core.suites import Suite
from sealedbus.errors import KdsCode
from sealedbus.kds import audit, auth
from sealedbus.kds.secrets import MasterKeyring
from sealedbus.kds.store import (
    Store,
    admin_totp,
    admins,
    certificates,
    consumer_since,
    epoch_keys,
    epochs,
    heads,
    members,
    nonces,
    replaced_keys,
    revocations,
    tokens,
    topics,
)
from sealedbus.keys import authority, signing
from sealedbus.keys.authority import HOUR_MS, EpochInfo, TopicPolicy
from sealedbus.keys.signing import enrollment_message

LIVE, WITHDRAWN, DESTROYED = "live", "withdrawn", "destroyed"
TOTP_MAX_FAILURES = 5
TOTP_LOCKOUT_MS = 60_000
TOTP_MAX_LOCKOUT_MS = 3_600_000
ROLE_PREFIX = "role:"
PRUNE_EVERY_MS = 3_600_000  # how often tick() drops revocation entries that no longer matter


class ServiceError(Exception):
    """A refusal: HTTP ``status``, stable ``code`` (the KdsCode a client reads back as
    ``Refused.reason``) and a ``reason`` safe to show the caller."""

    def __init__(self, status: int, code: KdsCode, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class TickReport:
    published: int
    destroyed: int


def _key_context(topic: str, epoch: int) -> bytes:
    return bytes(msgpack.packb(["epoch key", topic, epoch], use_bin_type=True))


def _token_context(topic: str) -> bytes:
    return bytes(msgpack.packb(["token key", topic], use_bin_type=True))


def _entries(member: str, roles: Iterable[str]) -> frozenset[str]:
    """The policy entries that name this member: its name and ``role:R`` for each of its roles."""
    return frozenset([member, *(ROLE_PREFIX + r for r in roles)])


def _policy(row: Row[Any]) -> TopicPolicy:
    return TopicPolicy(
        name=row.name,
        producers=frozenset(json.loads(row.producers)),
        consumers=frozenset(json.loads(row.consumers)),
        rotation_ms=row.rotation_ms,
        retention_ms=row.retention_ms,
        suite=Suite(row.suite),
        history=row.history,
        max_age_ms=row.max_age_ms,
    )


def _needs_epoch(policy: TopicPolicy, latest_not_after: int | None, now: int) -> bool:
    return latest_not_after is None or now >= latest_not_after - authority.publish_ahead_ms(policy)


class KeyDistributionService:
    def __init__(
        self,
        store: Store,
        root: Ed25519PrivateKey,
        master: MasterKeyring,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        certificate_lifetime_ms: int = HOUR_MS,
        replica: str = "kds",
        totp_clock: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.root = root
        self.root_public = root.public_key()
        self.master = master
        self.clock = clock
        self.rng = rng  # every random value the service draws (keys, token keys, session ids)
        self.certificate_lifetime_ms = certificate_lifetime_ms
        self.replica = replica
        self.totp_clock = totp_clock or clock  # tests give TOTP codes a clock of their own
        self._compaction_pending = True  # also once after a start: an earlier run may have died
        self._next_prune_ms = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- admins and tokens -------------------------------------------------------------------

    def add_admin(self, name: str, identity_public: bytes, totp_secret: bytes) -> None:
        Ed25519PublicKey.from_public_bytes(identity_public)
        wrapped = self.master.wrap(totp_secret, b"admin totp " + name.encode())
        with self.store.write() as conn:
            conn.execute(delete(admins).where(admins.c.name == name))
            conn.execute(
                insert(admins).values(
                    name=name,
                    identity_public=identity_public,
                    totp_wrapped=wrapped,
                    key_id=self.master.key_id_of(wrapped),
                )
            )
            audit.append(
                conn, self.root, self.now_ms(), f"kds:{self.replica}", "admin.added", admin=name
            )

    def admin_credentials(self, name: str) -> tuple[Ed25519PublicKey, bytes] | None:
        with self.store.read() as conn:
            row = conn.execute(select(admins).where(admins.c.name == name)).first()
        if row is None:
            return None
        totp_secret = self.master.unwrap(row.totp_wrapped, b"admin totp " + name.encode())
        return Ed25519PublicKey.from_public_bytes(row.identity_public), totp_secret

    def check_totp(self, name: str, secret: bytes, code: str) -> None:
        """An admin's second factor (RFC 6238, one step of drift either way). Each time step is
        accepted once (RFC 6238 section 5.2: the step must be above the last one accepted), and
        ``TOTP_MAX_FAILURES`` wrong codes in a row lock the admin out for ``TOTP_LOCKOUT_MS``,
        doubling with every further wrong code. The state is in the database, shared by replicas.
        Only a request signed with the admin's key gets here, so no one else can lock it out."""
        now = self.now_ms()
        step = auth.totp_step(secret, code, self.totp_clock())
        refusal: ServiceError | None = None
        with self.store.write() as conn:
            row = conn.execute(select(admin_totp).where(admin_totp.c.name == name)).first()
            if row is None:
                conn.execute(
                    insert(admin_totp).values(
                        name=name, last_step=-1, failures=0, locked_until_ms=0
                    )
                )
            last, failures, locked = (
                (row.last_step, row.failures, row.locked_until_ms)
                if row is not None
                else (-1, 0, 0)
            )
            guard = update(admin_totp).where(admin_totp.c.name == name)
            if now < locked:
                wait = -(-(locked - now) // 1000)
                refusal = ServiceError(
                    429, KdsCode.TOTP_LOCKED, f"too many wrong TOTP codes; locked for {wait} s more"
                )
            elif step is None:
                failures += 1
                if failures >= TOTP_MAX_FAILURES:
                    locked = now + min(
                        TOTP_MAX_LOCKOUT_MS, TOTP_LOCKOUT_MS << (failures - TOTP_MAX_FAILURES)
                    )
                conn.execute(guard.values(failures=failures, locked_until_ms=locked))
                refusal = ServiceError(
                    401, KdsCode.BAD_TOTP, "second factor (TOTP) missing or wrong"
                )
            elif step <= last:
                refusal = ServiceError(
                    401,
                    KdsCode.TOTP_REUSED,
                    "this TOTP code was used already; wait for the next one",
                )
            else:
                conn.execute(guard.values(last_step=step, failures=0, locked_until_ms=0))
            if refusal is not None:
                audit.append(
                    conn, self.root, now, f"admin:{name}", "admin.totp_refused", code=refusal.code
                )
        if refusal is not None:
            raise refusal

    def create_token(
        self, actor: str, member: str, roles: list[str], ttl_ms: int, token_public: bytes
    ) -> None:
        """Record a one-time enrollment token for ``member``, named by its public key
        (``signing.token_key``). The admin's client made the token and keeps it: the KDS never
        sees it, so no proxy or log between them can enroll in the member's place."""
        if any(n.startswith(ROLE_PREFIX) for n in (member, *roles)):
            raise ServiceError(
                422,
                KdsCode.INVALID_NAME,
                f"member and role names may not start with {ROLE_PREFIX!r}",
            )
        try:
            Ed25519PublicKey.from_public_bytes(token_public)
        except ValueError:
            raise ServiceError(
                422, KdsCode.INVALID_REQUEST, "token_key is not an Ed25519 key"
            ) from None
        now = self.now_ms()
        with self.store.write() as conn:
            row = conn.execute(select(members.c.revoked).where(members.c.name == member)).first()
            if row is not None and row.revoked:
                raise ServiceError(409, KdsCode.MEMBER_REVOKED, f"member {member!r} is revoked")
            if conn.execute(
                select(tokens.c.member).where(tokens.c.token_hash == token_public)
            ).first():
                raise ServiceError(409, KdsCode.TOKEN_EXISTS, "a token with this key exists")
            conn.execute(
                insert(tokens).values(
                    token_hash=token_public,
                    member=member,
                    roles=json.dumps(sorted(roles)),
                    expires_ms=now + ttl_ms,
                    used_ms=None,
                )
            )
            audit.append(
                conn,
                self.root,
                now,
                actor,
                "token.created",
                member=member,
                roles=sorted(roles),
                expires_ms=now + ttl_ms,
            )

    def record(self, actor: str, action: str, **detail: Any) -> None:
        """Audit an act that changes nothing else (a refused enrollment, a wrong TOTP)."""
        with self.store.write() as conn:
            audit.append(conn, self.root, self.now_ms(), actor, action, **detail)

    # -- topics -----------------------------------------------------------------------------

    def create_topic(self, actor: str, policy: TopicPolicy) -> None:
        now = self.now_ms()
        token_key = self.master.wrap(self.rng(32), _token_context(policy.name))
        with self.store.write() as conn:
            if conn.execute(select(topics.c.name).where(topics.c.name == policy.name)).first():
                raise ServiceError(409, KdsCode.TOPIC_EXISTS, f"topic {policy.name!r} exists")
            conn.execute(
                insert(topics).values(
                    name=policy.name,
                    producers=json.dumps(sorted(policy.producers)),
                    consumers=json.dumps(sorted(policy.consumers)),
                    rotation_ms=policy.rotation_ms,
                    retention_ms=policy.retention_ms,
                    suite=int(policy.suite),
                    history=policy.history,
                    max_age_ms=policy.max_age_ms,
                    token_key=token_key,
                    key_id=self.master.key_id_of(token_key),
                )
            )
            for entry in policy.consumers:
                conn.execute(
                    insert(consumer_since).values(topic=policy.name, entry=entry, since_ms=now)
                )
            audit.append(
                conn,
                self.root,
                now,
                actor,
                "topic.created",
                topic=policy.name,
                producers=sorted(policy.producers),
                consumers=sorted(policy.consumers),
                rotation_ms=policy.rotation_ms,
                retention_ms=policy.retention_ms,
                suite=policy.suite.label,
                history=policy.history,
                max_age_ms=policy.max_age_ms,
            )
            self._add_epoch(conn, policy, now, now, actor)

    def set_policy(
        self, actor: str, name: str, producers: list[str] | None, consumers: list[str] | None
    ) -> None:
        """Change who may produce or consume. Removing a consumer rotates the topic at once;
        removing a producer withdraws its certificates from the topic (revocation list)."""
        now = self.now_ms()
        with self.store.write() as conn:
            former = self._policy(conn, name)
            change = authority.change_policy(former, producers, consumers)
            policy = change.policy
            for entry in change.added_consumers:
                conn.execute(insert(consumer_since).values(topic=name, entry=entry, since_ms=now))
            if change.removed_consumers:
                conn.execute(
                    delete(consumer_since).where(
                        consumer_since.c.topic == name,
                        consumer_since.c.entry.in_(change.removed_consumers),
                    )
                )
            conn.execute(
                update(topics)
                .where(topics.c.name == name)
                .values(
                    producers=json.dumps(sorted(policy.producers)),
                    consumers=json.dumps(sorted(policy.consumers)),
                )
            )
            audit.append(
                conn,
                self.root,
                now,
                actor,
                "topic.policy_changed",
                topic=name,
                producers=sorted(policy.producers),
                consumers=sorted(policy.consumers),
            )
            self._withdraw(conn, name, former.producers, policy.producers, now, actor)
            if change.removed_consumers:
                self._rotate(conn, policy, now, actor)

    def _withdraw(
        self,
        conn: Connection,
        topic: str,
        former: frozenset[str],
        now_producers: frozenset[str],
        now: int,
        actor: str,
    ) -> None:
        """Put the certificates of members who no longer produce to ``topic`` on the revocation
        list for that topic: they stay good for the members' other topics."""
        if not former - now_producers:
            return
        gone = [
            row.name
            for row in conn.execute(select(members.c.name, members.c.roles)).all()
            if former & _entries(row.name, json.loads(row.roles))
            and not now_producers & _entries(row.name, json.loads(row.roles))
        ]
        if not gone:
            return
        new = old = self._revocations(conn)
        for member in gone:  # one entry per (member, topic): up to its latest certificate
            latest = self._latest_serial(conn, member)
            if latest is not None:
                new = authority.withdraw(new, member, topic, latest, now)
        self._store_revocations(conn, old, new)
        audit.append(
            conn, self.root, now, actor, "producers.withdrawn", topic=topic, members=sorted(gone)
        )

    def topic(self, name: str) -> TopicPolicy:
        with self.store.read() as conn:
            return self._policy(conn, name)

    def topics(self) -> list[TopicPolicy]:
        with self.store.read() as conn:
            return [_policy(r) for r in conn.execute(select(topics).order_by(topics.c.name))]

    def rotate(self, actor: str, name: str) -> int:
        """Start a new epoch now (withdrawing any published ahead); returns its number."""
        with self.store.write() as conn:
            return self._rotate(conn, self._policy(conn, name), self.now_ms(), actor)

    def epochs(self, name: str) -> list[EpochInfo]:
        with self.store.read() as conn:
            self._policy(conn, name)
            rows = conn.execute(
                select(epochs).where(epochs.c.topic == name).order_by(epochs.c.epoch)
            )
            return [
                EpochInfo(
                    name,
                    r.epoch,
                    r.not_before_ms,
                    r.not_after_ms,
                    r.destroy_after_ms,
                    r.state != LIVE,
                )
                for r in rows
            ]

    # -- members ----------------------------------------------------------------------------

    def revoke(self, actor: str, member: str, *, compromised: bool = True) -> None:
        """Revoke a member: its certificates stop verifying and every topic it reads rotates.
        For key compromise (the default) every envelope it signed is refused, whatever its
        sent-at time; for retirement only envelopes stamped from now on."""
        now = self.now_ms()
        with self.store.write() as conn:
            row = conn.execute(select(members).where(members.c.name == member)).first()
            if row is None:
                raise ServiceError(404, KdsCode.UNKNOWN_MEMBER, f"no member {member!r}")
            conn.execute(update(members).where(members.c.name == member).values(revoked=True))
            serial = conn.execute(select(heads.c.seq).where(heads.c.name == "serial")).scalar_one()
            old = self._revocations(conn)
            self._store_revocations(
                conn, old, authority.revoke(old, member, serial, now, compromised=compromised)
            )
            audit.append(
                conn,
                self.root,
                now,
                actor,
                "member.revoked",
                member=member,
                compromised=compromised,
            )
            names = _entries(member, json.loads(row.roles))
            for t in conn.execute(select(topics)).all():
                policy = _policy(t)
                if policy.consumers & names:
                    self._rotate(conn, policy, now, actor)

    def member_key(self, name: str) -> tuple[Ed25519PublicKey, bool] | None:
        """The identity key requests from ``name`` must be signed with and whether the member is
        revoked; None for no such member (the API answers both the same until the signature
        verifies, so names cannot be probed)."""
        with self.store.read() as conn:
            row = conn.execute(select(members).where(members.c.name == name)).first()
        if row is None:
            return None
        return Ed25519PublicKey.from_public_bytes(row.identity_public), bool(row.revoked)

    def replaced_keys(self, name: str) -> list[Ed25519PublicKey]:
        """Identity keys of ``name`` that a later enrollment replaced (to name that in a
        refusal when one of them signs a request; they authenticate nothing)."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(replaced_keys.c.identity_public).where(replaced_keys.c.member == name)
            ).scalars()
            return [Ed25519PublicKey.from_public_bytes(k) for k in rows]

    def remember_nonce(self, principal: str, nonce: str, expires_ms: int) -> bool:
        """False when this principal used this nonce before (a replayed request)."""
        return self.store.insert_unique(
            nonces, {"principal": principal, "nonce": nonce, "expires_ms": expires_ms}
        )

    def enroll(
        self,
        token_public: bytes,
        member: str,
        identity_public: bytes,
        receive_suite: Suite,
        receive_public: bytes,
        timestamp_ms: int,
        token_proof: bytes,
        proof: bytes,
        replace: int = signing.REPLACE_NONE,
    ) -> bytes:
        """Redeem a one-time token, named by its public key (``signing.token_key``): check that the
        token's key and the new identity key both signed this enrollment, record the member's
        keys and return its signed certificate. An enrolled member is replaced only when the
        enrollment asks to (``replace``, signed): its old certificates are then revoked, as
        retirement or as key compromise, and its old key gets ``key_replaced`` refusals."""
        message = enrollment_message(
            token_public,
            member,
            identity_public,
            int(receive_suite),
            receive_public,
            timestamp_ms,
            replace,
        )
        try:
            identity = Ed25519PublicKey.from_public_bytes(identity_public)
            suites.check_public_key(receive_suite, receive_public)
            identity.verify(proof, message)
            Ed25519PublicKey.from_public_bytes(token_public).verify(token_proof, message)
        except (ValueError, InvalidSignature):
            raise ServiceError(
                400,
                KdsCode.BAD_ENROLLMENT,
                "keys malformed, or the enrollment not "
                "signed by both the token and the identity key",
            ) from None
        now = self.now_ms()
        if abs(now - timestamp_ms) > signing.MAX_SKEW_MS:
            raise ServiceError(
                401, KdsCode.STALE_REQUEST, "timestamp outside the allowed clock skew"
            )
        with self.store.write() as conn:
            row = conn.execute(select(tokens).where(tokens.c.token_hash == token_public)).first()
            if row is None or row.member != member:
                raise ServiceError(
                    401, KdsCode.INVALID_TOKEN, "unknown token, or one for another name"
                )
            if row.used_ms is not None:
                raise ServiceError(
                    401, KdsCode.TOKEN_USED, "this enrollment token was already used"
                )
            if now >= row.expires_ms:
                raise ServiceError(401, KdsCode.TOKEN_EXPIRED, "this enrollment token has expired")
            existing = conn.execute(
                select(members.c.revoked, members.c.identity_public).where(members.c.name == member)
            ).first()
            if existing is not None and existing.revoked:
                raise ServiceError(403, KdsCode.MEMBER_REVOKED, f"member {member!r} is revoked")
            if existing is not None and replace == signing.REPLACE_NONE:
                raise ServiceError(
                    409,
                    KdsCode.MEMBER_ENROLLED,
                    f"member {member!r} is already enrolled; enrolling again with --replace "
                    "gives it these keys and revokes its old certificates (its old key file "
                    "stops working)",
                )
            if existing is not None:
                self._replace_keys(
                    conn,
                    member,
                    existing.identity_public,
                    now,
                    replace == signing.REPLACE_COMPROMISE,
                )
            conn.execute(
                update(tokens).where(tokens.c.token_hash == row.token_hash).values(used_ms=now)
            )
            values = {
                "identity_public": identity_public,
                "receive_suite": int(receive_suite),
                "receive_public": receive_public,
                "roles": row.roles,
                "revoked": False,
                "enrolled_ms": now,
            }
            if existing is None:
                conn.execute(insert(members).values(name=member, **values))
            else:
                conn.execute(update(members).where(members.c.name == member).values(**values))
            audit.append(
                conn,
                self.root,
                now,
                f"member:{member}",
                "member.enrolled",
                member=member,
                roles=json.loads(row.roles),
                suite=receive_suite.label,
            )
            return self._issue(conn, member, now)

    def certificate(self, member: str) -> bytes:
        """The member's current certificate, reissued when stale or when its topics changed."""
        now = self.now_ms()
        with self.store.read() as conn:
            latest = self._latest_certificate(conn, member)
            if latest is not None:
                cert = Certificate.verify(latest, self.root_public)
                produce, consume = self._rights(conn, member)
                fresh = cert.not_after_ms - now > self.certificate_lifetime_ms // 2
                if fresh and (cert.produce, cert.consume) == (produce, consume):
                    return latest
        with self.store.write() as conn:
            return self._issue(conn, member, now)

    def certificate_by_id(self, cert_id: bytes) -> bytes | None:
        """A certificate by id, for any member (consumers need their senders'; see the threat
        model for what that shows). A read: no database write."""
        with self.store.read() as conn:
            return conn.execute(
                select(certificates.c.signed).where(certificates.c.cert_id == cert_id)
            ).scalar()

    def revocation_list(self) -> bytes:
        """The latest revocation list, signed afresh with now as ``issued_at_ms`` so clients can
        tell a current answer from a replayed one."""
        with self.store.read() as conn:
            latest = self._revocations(conn)
        return replace(latest, issued_at_ms=self.now_ms()).sign(self.root)

    # -- keys -------------------------------------------------------------------------------

    def sealing_epoch(
        self, member: str, topic: str, nonce: bytes = b""
    ) -> tuple[bytes, bytes | None, bytes]:
        """The signed description producers seal with now, the next one if published, and a
        ``SealingEpochAnswer`` binding both to the client's request ``nonce`` and to now."""
        now = self.now_ms()
        with self.store.read() as conn:
            policy = self._policy(conn, topic)
            if not policy.producers & self._member_entries(conn, member):
                raise ServiceError(
                    403, KdsCode.ACCESS_DENIED, f"{member!r} may not produce to {topic!r}"
                )
            latest = self._latest_not_after(conn, topic)
        if _needs_epoch(policy, latest, now):
            with self.store.write() as conn:  # the scheduler is behind: catch up, once
                self._advance(conn, self._policy(conn, topic), now, f"kds:{self.replica}")
        with self.store.read() as conn:
            live = (epochs.c.topic == topic, epochs.c.state == LIVE)
            current = conn.execute(
                select(epochs.c.description)
                .where(*live, epochs.c.not_before_ms <= now)
                .order_by(epochs.c.epoch.desc())
                .limit(1)
            ).scalar()
            ahead = conn.execute(
                select(epochs.c.description)
                .where(*live, epochs.c.not_before_ms > now)
                .order_by(epochs.c.epoch)
                .limit(1)
            ).scalar()
        if current is None:
            raise ServiceError(503, KdsCode.NO_EPOCH, f"{topic!r} has no current epoch yet")
        answer = SealingEpochAnswer(
            topic,
            EpochDescription.verify(current, self.root_public).digest,
            EpochDescription.verify(ahead, self.root_public).digest if ahead else b"",
            nonce,
            now,
        )
        return current, ahead, answer.sign(self.root)

    def grant(self, member: str, topic: str, epoch: int) -> tuple[bytes, bytes]:
        """The signed description of an epoch and its private key sealed to the member."""
        now = self.now_ms()
        with self.store.read() as conn:
            t = conn.execute(select(topics).where(topics.c.name == topic)).first()
            if t is None:
                raise ServiceError(404, KdsCode.EPOCH_UNKNOWN, f"no topic {topic!r}")
            policy = _policy(t)
            matching = policy.consumers & self._member_entries(conn, member)
            if not matching:
                raise ServiceError(
                    403, KdsCode.NOT_GRANTED, f"{member!r} may not consume {topic!r}"
                )
            since = self._consumer_since(conn, topic, member, matching)
            if since is None:
                raise ServiceError(
                    403, KdsCode.NOT_GRANTED, f"{member!r} may not consume {topic!r}"
                )
            row = conn.execute(
                select(epochs).where(epochs.c.topic == topic, epochs.c.epoch == epoch)
            ).first()
            if row is None:
                raise ServiceError(404, KdsCode.EPOCH_UNKNOWN, f"{topic!r} has no epoch {epoch}")
            wrapped = conn.execute(
                select(epoch_keys.c.wrapped).where(
                    epoch_keys.c.topic == topic, epoch_keys.c.epoch == epoch
                )
            ).scalar()
            if row.state != LIVE or wrapped is None or now >= row.destroy_after_ms:
                raise ServiceError(
                    410, KdsCode.EPOCH_DESTROYED, f"{topic!r} epoch {epoch} is destroyed"
                )
            if not policy.history and row.not_after_ms <= since:
                raise ServiceError(
                    403, KdsCode.NOT_GRANTED, f"epoch {epoch} predates {member!r}'s access"
                )
            cert_bytes = self._latest_certificate(conn, member)
        if cert_bytes is None:
            raise ServiceError(403, KdsCode.NOT_GRANTED, f"{member!r} holds no certificate")
        description = EpochDescription.verify(row.description, self.root_public)
        seed = self.master.unwrap(wrapped, _key_context(topic, epoch))
        keys = suites.keypair_from_seed(description.suite, seed)
        try:
            grant = authority.seal_grant(
                self.root, description, keys, Certificate.verify(cert_bytes, self.root_public)
            )
        except authority.WeakReceiveKey as exc:
            raise ServiceError(403, KdsCode.NOT_GRANTED, str(exc)) from None
        with self.store.write() as conn:
            audit.append(
                conn, self.root, now, f"member:{member}", "grant.issued", topic=topic, epoch=epoch
            )
        return row.description, grant

    def topic_key(self, member: str, topic: str) -> bytes:
        """The topic's tokenization key sealed to a member that produces to or consumes it."""
        with self.store.read() as conn:
            row = conn.execute(select(topics).where(topics.c.name == topic)).first()
            if row is None:
                raise ServiceError(404, KdsCode.UNKNOWN_TOPIC, f"no topic {topic!r}")
            policy = _policy(row)
            if not (policy.producers | policy.consumers) & self._member_entries(conn, member):
                raise ServiceError(
                    403,
                    KdsCode.ACCESS_DENIED,
                    f"{member!r} neither produces to nor consumes {topic!r}",
                )
            cert_bytes = self._latest_certificate(conn, member)
        if cert_bytes is None:
            raise ServiceError(403, KdsCode.ACCESS_DENIED, f"{member!r} holds no certificate")
        key = self.master.unwrap(row.token_key, _token_context(topic))
        cert = Certificate.verify(cert_bytes, self.root_public)
        return authority.seal_topic_key(self.root, topic, cert, key)

    # -- schedule ---------------------------------------------------------------------------

    def tick(self, actor: str) -> TickReport:
        """Publish next epochs that are due, destroy keys past retention, forget old nonces."""
        now = self.now_ms()
        with self.store.read() as conn:
            highest = (
                select(epochs.c.topic, func.max(epochs.c.epoch).label("epoch"))
                .group_by(epochs.c.topic)
                .subquery()
            )
            latest = {
                t: n
                for t, n in conn.execute(
                    select(epochs.c.topic, epochs.c.not_after_ms).join(
                        highest,
                        (epochs.c.topic == highest.c.topic) & (epochs.c.epoch == highest.c.epoch),
                    )
                )
            }
            due = [
                p
                for p in map(_policy, conn.execute(select(topics)))
                if _needs_epoch(p, latest.get(p.name), now)
            ]
            expired = [
                (t, n)
                for t, n in conn.execute(
                    select(epochs.c.topic, epochs.c.epoch).where(
                        epochs.c.state == LIVE, epochs.c.destroy_after_ms <= now
                    )
                )
            ]
        published = 0
        for policy in due:
            with self.store.write() as conn:
                published += self._advance(conn, self._policy(conn, policy.name), now, actor)
        if expired:
            with self.store.write() as conn:
                for topic, number in expired:
                    self._drop_key(conn, topic, number, DESTROYED)
                    audit.append(
                        conn, self.root, now, actor, "epoch.destroyed", topic=topic, epoch=number
                    )
            self._compaction_pending = True
        if now >= self._next_prune_ms:
            self.prune_revocations()
            self._next_prune_ms = now + PRUNE_EVERY_MS
        if self._compaction_pending:  # retried every tick until the database could do it
            self._compaction_pending = not self.store.compact()
        with self.store.write() as conn:
            conn.execute(delete(nonces).where(nonces.c.expires_ms < now))
        return TickReport(published, len(expired))

    def rewrap(self, batch: int = 500) -> int:
        """Re-wrap every value wrapped under an older master key with the current one."""
        done = 0
        while True:
            with self.store.write() as conn:
                rows = conn.execute(
                    select(epoch_keys)
                    .where(epoch_keys.c.key_id != self.master.current)
                    .limit(batch)
                ).all()
                for r in rows:
                    context = _key_context(r.topic, r.epoch)
                    wrapped = self.master.wrap(self.master.unwrap(r.wrapped, context), context)
                    conn.execute(
                        update(epoch_keys)
                        .where(epoch_keys.c.topic == r.topic, epoch_keys.c.epoch == r.epoch)
                        .values(wrapped=wrapped, key_id=self.master.current)
                    )
            done += len(rows)
            if len(rows) < batch:
                break
        with self.store.write() as conn:
            for t in conn.execute(
                select(topics.c.name, topics.c.token_key).where(
                    topics.c.key_id != self.master.current
                )
            ).all():
                context = _token_context(t.name)
                wrapped = self.master.wrap(self.master.unwrap(t.token_key, context), context)
                conn.execute(
                    update(topics)
                    .where(topics.c.name == t.name)
                    .values(token_key=wrapped, key_id=self.master.current)
                )
                done += 1
            for a in conn.execute(
                select(admins).where(admins.c.key_id != self.master.current)
            ).all():
                context = b"admin totp " + a.name.encode()
                wrapped = self.master.wrap(self.master.unwrap(a.totp_wrapped, context), context)
                conn.execute(
                    update(admins)
                    .where(admins.c.name == a.name)
                    .values(totp_wrapped=wrapped, key_id=self.master.current)
                )
                done += 1
            audit.append(
                conn,
                self.root,
                self.now_ms(),
                f"kds:{self.replica}",
                "master_key.rewrapped",
                key_id=self.master.current,
                values=done,
            )
        return done

    def master_keys_in_use(self) -> set[str]:
        with self.store.read() as conn:
            used = set(conn.execute(select(epoch_keys.c.key_id).distinct()).scalars())
            used |= set(conn.execute(select(topics.c.key_id).distinct()).scalars())
            return used | set(conn.execute(select(admins.c.key_id).distinct()).scalars())

    def verify_audit(self) -> audit.AuditReport:
        with self.store.read() as conn:
            return audit.verify(conn, self.root_public)

    # -- inside transactions ------------------------------------------------------------------

    def _policy(self, conn: Connection, name: str) -> TopicPolicy:
        row = conn.execute(select(topics).where(topics.c.name == name)).first()
        if row is None:
            raise ServiceError(404, KdsCode.UNKNOWN_TOPIC, f"no topic {name!r}")
        return _policy(row)

    def _member_entries(self, conn: Connection, member: str) -> frozenset[str]:
        roles = conn.execute(select(members.c.roles).where(members.c.name == member)).scalar()
        return _entries(member, json.loads(roles or "[]"))

    def _consumer_since(
        self, conn: Connection, topic: str, member: str, matching: frozenset[str]
    ) -> int | None:
        """Since when ``member`` may consume ``topic``: the earliest of its matching entries,
        where a ``role:R`` entry counts from when the entry was added or the member enrolled,
        whichever is later (a member joining a role later does not get the role's past)."""
        enrolled = conn.execute(
            select(members.c.enrolled_ms).where(members.c.name == member)
        ).scalar()
        rows = conn.execute(
            select(consumer_since.c.entry, consumer_since.c.since_ms).where(
                consumer_since.c.topic == topic, consumer_since.c.entry.in_(matching)
            )
        ).all()
        starts = [
            max(r.since_ms, enrolled or 0) if r.entry.startswith(ROLE_PREFIX) else r.since_ms
            for r in rows
        ]
        return min(starts, default=None)

    def _rights(self, conn: Connection, member: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        names = self._member_entries(conn, member)
        produce, consume = [], []
        for row in conn.execute(select(topics.c.name, topics.c.producers, topics.c.consumers)):
            if names & set(json.loads(row.producers)):
                produce.append(row.name)
            if names & set(json.loads(row.consumers)):
                consume.append(row.name)
        return tuple(sorted(produce)), tuple(sorted(consume))

    def _latest_certificate(self, conn: Connection, member: str) -> bytes | None:
        return conn.execute(
            select(certificates.c.signed)
            .where(certificates.c.member == member)
            .order_by(certificates.c.serial.desc())
            .limit(1)
        ).scalar()

    def _issue(self, conn: Connection, member: str, now: int) -> bytes:
        row = conn.execute(select(members).where(members.c.name == member)).one()
        serial = conn.execute(select(heads.c.seq).where(heads.c.name == "serial")).scalar_one() + 1
        conn.execute(update(heads).where(heads.c.name == "serial").values(seq=serial))
        produce, consume = self._rights(conn, member)
        cert = authority.issue_certificate(
            member,
            row.identity_public,
            Suite(row.receive_suite),
            row.receive_public,
            list(produce),
            list(consume),
            now,
            self.certificate_lifetime_ms,
            serial,
        )
        signed = cert.sign(self.root)
        conn.execute(
            insert(certificates).values(
                cert_id=cert.cert_id,
                member=member,
                serial=serial,
                signed=signed,
                not_after_ms=cert.not_after_ms,
            )
        )
        audit.append(
            conn,
            self.root,
            now,
            f"kds:{self.replica}",
            "certificate.issued",
            member=member,
            serial=serial,
            cert_id=cert.cert_id.hex(),
        )
        return signed

    def _revocations(self, conn: Connection) -> RevocationList:
        signed = conn.execute(
            select(revocations.c.signed).order_by(revocations.c.serial.desc()).limit(1)
        ).scalar()
        if signed is None:
            return RevocationList(0, 0)
        try:
            return RevocationList.verify(signed, self.root_public)
        except SignatureError:
            return self._legacy_revocations(conn, signed)

    def _legacy_revocations(self, conn: Connection, signed: bytes) -> RevocationList:
        """A list stored before revocation by member and serial (its fields: certificate ids,
        members, withdrawn (certificate id, topic) pairs), as entries of today's form; all for
        key compromise, as revocation then was. Raises SignatureError if it is not one."""
        try:
            body, signature = msgpack.unpackb(signed, raw=False)
            self.root_public.verify(signature, RevocationList.LABEL + body)
            _, at, serial, ids, names, withdrawn = msgpack.unpackb(body, raw=False)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise SignatureError("stored revocation list does not verify") from exc
        wanted = [bytes(i) for i in ids] + [bytes(c) for c, _ in withdrawn]
        certs = {
            bytes(r.cert_id): (r.member, r.serial)
            for r in conn.execute(
                select(certificates.c.cert_id, certificates.c.member, certificates.c.serial).where(
                    certificates.c.cert_id.in_(wanted)
                )
            )
        }
        head = conn.execute(select(heads.c.seq).where(heads.c.name == "serial")).scalar_one()
        new = RevocationList(at, serial)
        for name in names:
            new = authority.revoke(new, name, head, at, compromised=True)
        for cert_id in map(bytes, ids):
            if cert_id in certs:
                member, up_to = certs[cert_id]
                new = authority.revoke(new, member, up_to, at, compromised=True)
        for cert_id, topic in withdrawn:
            if bytes(cert_id) in certs:
                member, up_to = certs[bytes(cert_id)]
                new = authority.withdraw(new, member, topic, up_to, at)
        return new

    def _store_revocations(
        self, conn: Connection, old: RevocationList, new: RevocationList
    ) -> None:
        """Sign and keep ``new`` as the only list (unless it is ``old``: nothing changed)."""
        if new is old:
            return
        conn.execute(insert(revocations).values(serial=new.serial, signed=new.sign(self.root)))
        conn.execute(delete(revocations).where(revocations.c.serial < new.serial))

    def prune_revocations(self) -> int:
        """Drop revocation entries whose certificates and every epoch they could have sealed
        to are past (``authority.revocation_horizon``); returns how many were dropped."""
        now = self.now_ms()
        with self.store.write() as conn:
            keep = conn.execute(
                select(func.max(topics.c.rotation_ms + topics.c.retention_ms))
            ).scalar()

            def useful_until(member: str, up_to: int) -> int:
                last = conn.execute(
                    select(func.max(certificates.c.not_after_ms)).where(
                        certificates.c.member == member, certificates.c.serial <= up_to
                    )
                ).scalar()
                return authority.revocation_horizon(last, keep or 0)

            old = self._revocations(conn)
            new = authority.prune(old, useful_until, now)
            self._store_revocations(conn, old, new)
            dropped = len(old.members) + len(old.withdrawn) - len(new.members) - len(new.withdrawn)
            if dropped:
                audit.append(
                    conn,
                    self.root,
                    now,
                    f"kds:{self.replica}",
                    "revocations.pruned",
                    entries=dropped,
                )
            return dropped

    def _latest_serial(self, conn: Connection, member: str) -> int | None:
        return conn.execute(
            select(func.max(certificates.c.serial)).where(certificates.c.member == member)
        ).scalar()

    def _replace_keys(
        self, conn: Connection, member: str, old_key: bytes, now: int, compromised: bool
    ) -> None:
        """A re-enrollment: revoke the member's certificates so far and remember its old key."""
        latest = self._latest_serial(conn, member)
        if latest is not None:
            old = self._revocations(conn)
            self._store_revocations(
                conn, old, authority.revoke(old, member, latest, now, compromised=compromised)
            )
        known = conn.execute(
            select(replaced_keys.c.member).where(
                replaced_keys.c.member == member, replaced_keys.c.identity_public == old_key
            )
        ).first()
        if known is None:
            conn.execute(
                insert(replaced_keys).values(
                    member=member, identity_public=old_key, replaced_ms=now
                )
            )
        audit.append(
            conn,
            self.root,
            now,
            f"member:{member}",
            "member.keys_replaced",
            member=member,
            compromised=compromised,
        )

    def _latest_not_after(self, conn: Connection, topic: str) -> int | None:
        """When the highest-numbered epoch ends (it may end before a withdrawn one would)."""
        return conn.execute(
            select(epochs.c.not_after_ms)
            .where(epochs.c.topic == topic)
            .order_by(epochs.c.epoch.desc())
            .limit(1)
        ).scalar()

    def _advance(self, conn: Connection, policy: TopicPolicy, now: int, actor: str) -> int:
        """Publish the next epoch when due (re-checked under the write lock): 1 if published."""
        latest = self._latest_not_after(conn, policy.name)
        if not _needs_epoch(policy, latest, now):
            return 0
        # idle past a whole period: start afresh at now, no backlog
        start = now if latest is None or now >= latest else latest
        self._add_epoch(conn, policy, start, now, actor)
        return 1

    def _rotate(self, conn: Connection, policy: TopicPolicy, now: int, actor: str) -> int:
        ahead = (
            conn.execute(
                select(epochs.c.epoch).where(
                    epochs.c.topic == policy.name,
                    epochs.c.state == LIVE,
                    epochs.c.not_before_ms > now,
                )
            )
            .scalars()
            .all()
        )
        for number in ahead:  # published ahead but never used: withdraw it
            self._drop_key(conn, policy.name, number, WITHDRAWN)
        audit.append(
            conn, self.root, now, actor, "topic.rotated", topic=policy.name, withdrawn=list(ahead)
        )
        return self._add_epoch(conn, policy, now, now, actor)

    def _add_epoch(
        self, conn: Connection, policy: TopicPolicy, not_before: int, now: int, actor: str
    ) -> int:
        highest = conn.execute(
            select(func.max(epochs.c.epoch)).where(epochs.c.topic == policy.name)
        ).scalar()
        number = 0 if highest is None else highest + 1
        description, keys = authority.new_epoch(
            policy, number, not_before, self.rng(policy.suite.seed_len)
        )
        conn.execute(
            insert(epochs).values(
                topic=policy.name,
                epoch=number,
                description=description.sign(self.root),
                not_before_ms=description.not_before_ms,
                not_after_ms=description.not_after_ms,
                destroy_after_ms=description.destroy_after_ms,
                state=LIVE,
            )
        )
        wrapped = self.master.wrap(keys.private, _key_context(policy.name, number))
        conn.execute(
            insert(epoch_keys).values(
                topic=policy.name,
                epoch=number,
                wrapped=wrapped,
                key_id=self.master.key_id_of(wrapped),
            )
        )
        audit.append(
            conn,
            self.root,
            now,
            actor,
            "epoch.published",
            topic=policy.name,
            epoch=number,
            not_before_ms=not_before,
        )
        return number

    def _drop_key(self, conn: Connection, topic: str, number: int, state: str) -> None:
        conn.execute(
            update(epochs)
            .where(epochs.c.topic == topic, epochs.c.epoch == number)
            .values(state=state)
        )
        conn.execute(
            delete(epoch_keys).where(epoch_keys.c.topic == topic, epoch_keys.c.epoch == number)
        )
