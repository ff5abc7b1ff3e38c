"""Per-subject erasure (SPEC.md 4.5, 6.9-6.11): one X25519 key pair per (topic, data subject),
the public half for the topic's producers, the private half granted to its consumers, and
erasure, which destroys the pair and keeps a tombstone of its id.

The subject id is never stored, logged or audited: rows are found by a keyed token
(``authority.subject_token`` under the topic's tokenization key, itself wrapped under the master
key); audit records name the random subject key id. Erasing also forgets the token, so the
database no longer links the tombstone to anyone.
"""

from __future__ import annotations

from typing import Any

import msgpack
from sqlalchemy import Connection, Row

from sealedbus.core.signed import Certificate, SubjectKey
from sealedbus.errors import KdsCode
from sealedbus.kds import audit
from sealedbus.kds import store as rows
from sealedbus.kds.context import Context, Part, ServiceError, member_entries, policy_of
from sealedbus.kds.context import token_context as topic_token_context
from sealedbus.keys import authority
from sealedbus.keys.authority import TopicPolicy


def subject_key_context(topic: str, key_id: bytes) -> bytes:
    """What a wrapped subject private key is bound to (master key wrapping)."""
    return bytes(msgpack.packb(["subject key", topic, key_id], use_bin_type=True))


class Subjects(Part):
    def __init__(self, kds: Context) -> None:
        super().__init__(kds)

    def _token(self, topic: str, token_key_wrapped: bytes, subject: str) -> bytes:
        token_key = self.master.unwrap(token_key_wrapped, topic_token_context(topic))
        return authority.subject_token(token_key, topic, subject)

    def subject_key(self, member: str, topic: str, subject: str) -> bytes:
        """The signed public half of ``subject``'s key on ``topic`` for a producer of it; made on
        first use (after an erasure: a fresh pair with a new id)."""
        if not subject:
            raise ServiceError(422, KdsCode.INVALID_REQUEST, "the subject is empty")
        with self.store.read() as conn:
            t = rows.topic_row(conn, topic)
            if t is None:
                raise ServiceError(404, KdsCode.UNKNOWN_TOPIC, f"no topic {topic!r}")
            self._check_producer(conn, policy_of(t), member)
            token = self._token(topic, t.token_key, subject)
            row = rows.subject_by_token(conn, token)
        if row is None:
            row = self._create(topic, token, member)
        signed = SubjectKey(topic, bytes(row.key_id), bytes(row.public), row.created_ms)
        return signed.sign(self.root)

    def _check_producer(self, conn: Connection, policy: TopicPolicy, member: str) -> None:
        if not policy.producers & member_entries(conn, member):
            raise ServiceError(
                403, KdsCode.ACCESS_DENIED, f"{member!r} may not produce to {policy.name!r}"
            )

    def _create(self, topic: str, token: bytes, member: str) -> Row[Any]:
        now = self.now_ms()
        with self.store.write() as conn:
            row = rows.subject_by_token(conn, token)  # another request made it meanwhile
            if row is not None:
                return row
            key_id = self.rng(16)
            _, pair = authority.new_subject_key(topic, key_id, self.rng(32), now)
            wrapped = self.master.wrap(pair.private, subject_key_context(topic, key_id))
            rows.insert_subject(
                conn,
                {
                    "topic": topic,
                    "key_id": key_id,
                    "token": token,
                    "public": pair.public,
                    "wrapped": wrapped,
                    "master_key_id": self.master.key_id_of(wrapped),
                    "created_ms": now,
                    "erased_ms": None,
                },
            )
            audit.append(
                conn,
                self.root,
                now,
                f"member:{member}",
                "subject.created",
                topic=topic,
                subject_key_id=key_id.hex(),
            )
            created = rows.subject_by_token(conn, token)
        assert created is not None  # noqa: S101 - inserted in this transaction
        return created

    def subject_grant(self, member: str, topic: str, key_id: bytes) -> bytes:
        """A subject private key sealed to a consumer of ``topic`` (SPEC.md 6.10, 6.11)."""
        with self.store.read() as conn:
            t = rows.topic_row(conn, topic)
            if t is None:
                raise ServiceError(404, KdsCode.EPOCH_UNKNOWN, f"no topic {topic!r}")
            if not policy_of(t).consumers & member_entries(conn, member):
                raise ServiceError(
                    403, KdsCode.NOT_GRANTED, f"{member!r} may not consume {topic!r}"
                )
            row = rows.subject_by_id(conn, topic, key_id)
            cert_bytes = rows.latest_certificate(conn, member)
        if row is None:
            raise ServiceError(
                404, KdsCode.UNKNOWN_SUBJECT_KEY, f"{topic!r} has no such subject key"
            )
        if row.wrapped is None:
            raise ServiceError(410, KdsCode.SUBJECT_ERASED, f"subject key on {topic!r} erased")
        if cert_bytes is None:
            raise ServiceError(403, KdsCode.NOT_GRANTED, f"{member!r} holds no certificate")
        private = self.master.unwrap(row.wrapped, subject_key_context(topic, key_id))
        cert = Certificate.verify(cert_bytes, self.root_public)
        grant = authority.seal_subject_grant(self.root, topic, key_id, private, cert)
        with self.store.write() as conn:
            audit.append(
                conn,
                self.root,
                self.now_ms(),
                f"member:{member}",
                "subject.granted",
                topic=topic,
                subject_key_id=key_id.hex(),
            )
        return grant

    def erase_subject(self, actor: str, topic: str, subject: str) -> bytes | None:
        """Destroy ``subject``'s key on ``topic`` (a tombstone keeps its id); returns the erased
        key id, None when the subject has no live key. Audited with the key id only."""
        now = self.now_ms()
        with self.store.write() as conn:
            t = rows.topic_row(conn, topic)
            if t is None:
                raise ServiceError(404, KdsCode.UNKNOWN_TOPIC, f"no topic {topic!r}")
            key_id = rows.erase_subject_by_token(
                conn, self._token(topic, t.token_key, subject), now
            )
            audit.append(
                conn,
                self.root,
                now,
                actor,
                "subject.erased",
                topic=topic,
                subject_key_id=key_id.hex() if key_id else None,
            )
        return key_id

    def rewrap(self, batch: int = 500) -> int:
        """Re-wrap subject private keys wrapped under an older master key."""
        done = 0
        while True:
            with self.store.write() as conn:
                found = rows.subjects_to_rewrap(conn, self.master.current, batch)
                for r in found:
                    context = subject_key_context(r.topic, bytes(r.key_id))
                    wrapped = self.master.wrap(self.master.unwrap(r.wrapped, context), context)
                    rows.set_subject_wrapped(
                        conn, r.topic, bytes(r.key_id), wrapped, self.master.current
                    )
            done += len(found)
            if len(found) < batch:
                return done

    def master_keys_in_use(self) -> set[str]:
        with self.store.read() as conn:
            return rows.subject_master_keys(conn)
