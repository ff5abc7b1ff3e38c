"""Topics and their policy: creating a topic, changing who may produce or consume it (removing
a consumer rotates it; removing a producer withdraws its certificates from it), and the topic's
tokenization key."""

from __future__ import annotations

import json

from sqlalchemy import delete, insert, select, update

from sealedbus.core.signed import Certificate
from sealedbus.errors import KdsCode
from sealedbus.kds import audit
from sealedbus.kds import store as rows
from sealedbus.kds.certificates import Certificates
from sealedbus.kds.context import (
    Context,
    Part,
    ServiceError,
    load_policy,
    member_entries,
    policy_of,
    token_context,
)
from sealedbus.kds.epochs import Epochs
from sealedbus.kds.store import consumer_since, topics
from sealedbus.keys import authority
from sealedbus.keys.authority import TopicPolicy


class Topics(Part):
    def __init__(self, kds: Context, epochs: Epochs, certificates: Certificates) -> None:
        super().__init__(kds)
        self.epochs = epochs
        self.certificates = certificates

    def create_topic(self, actor: str, policy: TopicPolicy) -> None:
        now = self.now_ms()
        token_key = self.master.wrap(self.rng(32), token_context(policy.name))
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
            self.epochs.add_epoch(conn, policy, now, now, actor)

    def set_policy(
        self, actor: str, name: str, producers: list[str] | None, consumers: list[str] | None
    ) -> None:
        """Change who may produce or consume. Removing a consumer rotates the topic at once;
        removing a producer withdraws its certificates from the topic (revocation list)."""
        now = self.now_ms()
        with self.store.write() as conn:
            former = load_policy(conn, name)
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
            self.certificates.withdraw(conn, name, former.producers, policy.producers, now, actor)
            if change.removed_consumers:
                self.epochs.rotate_in(conn, policy, now, actor)

    def topic(self, name: str) -> TopicPolicy:
        with self.store.read() as conn:
            return load_policy(conn, name)

    def topics(self) -> list[TopicPolicy]:
        with self.store.read() as conn:
            return [policy_of(r) for r in conn.execute(select(topics).order_by(topics.c.name))]

    def topic_key(self, member: str, topic: str) -> bytes:
        """The topic's tokenization key sealed to a member that produces to or consumes it."""
        with self.store.read() as conn:
            row = rows.topic_row(conn, topic)
            if row is None:
                raise ServiceError(404, KdsCode.UNKNOWN_TOPIC, f"no topic {topic!r}")
            policy = policy_of(row)
            if not (policy.producers | policy.consumers) & member_entries(conn, member):
                raise ServiceError(
                    403,
                    KdsCode.ACCESS_DENIED,
                    f"{member!r} neither produces to nor consumes {topic!r}",
                )
            cert_bytes = rows.latest_certificate(conn, member)
        if cert_bytes is None:
            raise ServiceError(403, KdsCode.ACCESS_DENIED, f"{member!r} holds no certificate")
        key = self.master.unwrap(row.token_key, token_context(topic))
        cert = Certificate.verify(cert_bytes, self.root_public)
        return authority.seal_topic_key(self.root, topic, cert, key)
