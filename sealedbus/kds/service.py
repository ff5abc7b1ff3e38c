"""What the KDS does, over its store: the semantics of ``LocalKeyService`` (deny by default,
epochs published ahead, forced rotation withdrawing pre-published epochs, consumer access windows,
destruction after retention, revocation rotating the member's topics), built on the same pure
functions in ``sealedbus.keys.authority``, plus enrollment, tokens, admins and the audit log.

``KeyDistributionService`` is the one facade the API, the CLI and the tests use. It is composed
of one part per concern, each in its own module over the shared ``Context``:

- ``kds/admins.py``: admins, TOTP replay guard and lockout, the audit log;
- ``kds/enrollment.py``: enrollment tokens, enrollment, member keys and request nonces;
- ``kds/certificates.py``: certificates, revocation, withdrawal, the revocation list;
- ``kds/topics.py``: topics, their policy and tokenization keys;
- ``kds/epochs.py``: the epoch schedule, grants and re-wrapping under a new master key;
- ``kds/subjects.py``: per-subject keys and their erasure (crypto-shredding).
- ``kds/evidence.py``: topic shred, the published audit head, export and open-failure reports.

Refusals raise ``ServiceError`` (``kds/context.py``) with the HTTP status, a stable code
(``sealedbus.errors.KdsCode``) and a reason for the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete

from sealedbus.core.suites import Suite
from sealedbus.kds import audit
from sealedbus.kds.admins import Admins
from sealedbus.kds.certificates import Certificates
from sealedbus.kds.context import Context, ServiceError
from sealedbus.kds.enrollment import Enrollment
from sealedbus.kds.epochs import Epochs
from sealedbus.kds.evidence import TOPIC_KEY_DESTROYERS, Evidence, Shredded, TopicKeyDestroyer
from sealedbus.kds.store import erase_topic_subjects, nonces
from sealedbus.kds.subjects import Subjects
from sealedbus.kds.topics import Topics
from sealedbus.keys import signing
from sealedbus.keys.authority import EpochInfo, TopicPolicy

__all__ = ["KeyDistributionService", "ServiceError", "TickReport"]

PRUNE_EVERY_MS = 3_600_000  # how often tick() drops revocation entries that no longer matter


@dataclass(frozen=True)
class TickReport:
    published: int
    destroyed: int


class KeyDistributionService(Context):
    def _compose(self) -> None:
        self._compaction_pending = True  # also once after a start: an earlier run may have died
        self._next_prune_ms = 0
        self._admins = Admins(self)
        self._epochs = Epochs(self)
        self._certificates = Certificates(self, self._epochs)
        self._enrollment = Enrollment(self, self._certificates)
        self._topics = Topics(self, self._epochs, self._certificates)
        self._subjects = Subjects(self)
        self._evidence = Evidence(self, self._epochs)
        # what a topic shred destroys besides epoch keys (kds/evidence.py)
        self.topic_key_destroyers: tuple[tuple[str, TopicKeyDestroyer], ...] = (
            *TOPIC_KEY_DESTROYERS,
            ("subject_keys", lambda conn, topic: erase_topic_subjects(conn, topic, self.now_ms())),
        )

    # -- admins and the audit log (kds/admins.py) ---------------------------------------------

    def add_admin(self, name: str, identity_public: bytes, totp_secret: bytes) -> None:
        self._admins.add_admin(name, identity_public, totp_secret)

    def admin_credentials(self, name: str) -> tuple[Ed25519PublicKey, bytes] | None:
        return self._admins.admin_credentials(name)

    def check_totp(self, name: str, secret: bytes, code: str) -> None:
        self._admins.check_totp(name, secret, code)

    def record(self, actor: str, action: str, **detail: Any) -> None:
        self._admins.record(actor, action, **detail)

    def verify_audit(self) -> audit.AuditReport:
        return self._admins.verify_audit()

    # -- tokens and enrollment (kds/enrollment.py) --------------------------------------------

    def create_token(
        self, actor: str, member: str, roles: list[str], ttl_ms: int, token_public: bytes
    ) -> None:
        self._enrollment.create_token(actor, member, roles, ttl_ms, token_public)

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
        return self._enrollment.enroll(
            token_public,
            member,
            identity_public,
            receive_suite,
            receive_public,
            timestamp_ms,
            token_proof,
            proof,
            replace,
        )

    def member_key(self, name: str) -> tuple[Ed25519PublicKey, bool] | None:
        return self._enrollment.member_key(name)

    def replaced_keys(self, name: str) -> list[Ed25519PublicKey]:
        return self._enrollment.replaced_keys(name)

    def remember_nonce(self, principal: str, nonce: str, expires_ms: int) -> bool:
        return self._enrollment.remember_nonce(principal, nonce, expires_ms)

    # -- certificates and revocation (kds/certificates.py) ------------------------------------

    def certificate(self, member: str) -> bytes:
        return self._certificates.certificate(member)

    def certificate_by_id(self, cert_id: bytes) -> bytes | None:
        return self._certificates.certificate_by_id(cert_id)

    def revocation_list(self) -> bytes:
        return self._certificates.revocation_list()

    def revoke(self, actor: str, member: str, *, compromised: bool = True) -> None:
        self._certificates.revoke(actor, member, compromised=compromised)

    def prune_revocations(self) -> int:
        return self._certificates.prune_revocations()

    # -- topics and policy (kds/topics.py) ----------------------------------------------------

    def create_topic(self, actor: str, policy: TopicPolicy) -> None:
        self._topics.create_topic(actor, policy)

    def set_policy(
        self, actor: str, name: str, producers: list[str] | None, consumers: list[str] | None
    ) -> None:
        self._topics.set_policy(actor, name, producers, consumers)

    def topic(self, name: str) -> TopicPolicy:
        return self._topics.topic(name)

    def topics(self) -> list[TopicPolicy]:
        return self._topics.topics()

    def topic_key(self, member: str, topic: str) -> bytes:
        return self._topics.topic_key(member, topic)

    # -- epochs, grants and re-wrapping (kds/epochs.py) ---------------------------------------

    def rotate(self, actor: str, name: str) -> int:
        return self._epochs.rotate(actor, name)

    def epochs(self, name: str) -> list[EpochInfo]:
        return self._epochs.epochs(name)

    def sealing_epoch(
        self, member: str, topic: str, nonce: bytes = b""
    ) -> tuple[bytes, bytes | None, bytes]:
        return self._epochs.sealing_epoch(member, topic, nonce)

    def grant(self, member: str, topic: str, epoch: int) -> tuple[bytes, bytes]:
        return self._epochs.grant(member, topic, epoch)

    def rewrap(self, batch: int = 500) -> int:
        return self._epochs.rewrap(batch) + self._subjects.rewrap(batch)

    def master_keys_in_use(self) -> set[str]:
        return self._epochs.master_keys_in_use() | self._subjects.master_keys_in_use()

    # -- subjects and their erasure (kds/subjects.py) -----------------------------------------

    def subject_key(self, member: str, topic: str, subject: str) -> bytes:
        return self._subjects.subject_key(member, topic, subject)

    def subject_grant(self, member: str, topic: str, subject_key_id: bytes) -> bytes:
        return self._subjects.subject_grant(member, topic, subject_key_id)

    def erase_subject(self, actor: str, topic: str, subject: str) -> bytes | None:
        key_id = self._subjects.erase_subject(actor, topic, subject)
        self._compaction_pending = True  # no free page or dead row may keep the key's bytes
        return key_id

    # -- erasure and evidence (kds/evidence.py) -----------------------------------------------

    def shred_topic(self, actor: str, name: str) -> Shredded:
        """Destroy every key of the topic now (``Evidence.shred_topic``), then make sure no
        journal or free page keeps their bytes (retried by ``tick`` when it cannot be now)."""
        shredded = self._evidence.shred_topic(actor, name, self.topic_key_destroyers)
        self._compaction_pending = not self.store.compact()
        return shredded

    # -- schedule -----------------------------------------------------------------------------

    def tick(self, actor: str) -> TickReport:
        """Publish next epochs that are due, destroy keys past retention, forget old nonces."""
        now = self.now_ms()
        published, destroyed = self._epochs.publish_and_destroy(actor, now)
        if destroyed:
            self._compaction_pending = True
        if now >= self._next_prune_ms:
            self.prune_revocations()
            self._next_prune_ms = now + PRUNE_EVERY_MS
        if self._compaction_pending:  # retried every tick until the database could do it
            self._compaction_pending = not self.store.compact()
        with self.store.write() as conn:
            conn.execute(delete(nonces).where(nonces.c.expires_ms < now))
        return TickReport(published, destroyed)
