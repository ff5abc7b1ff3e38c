"""Erasure and evidence: what lets an operator show auditors what happened and make data go.

- Topic shred (``Evidence.shred_topic``): every epoch key of a topic destroyed at once, with
  every other per-topic key material the KDS holds (``TOPIC_KEY_DESTROYERS``), in one audited
  transaction; the topic stays and gets a fresh epoch.
- The audit head published outside the database (``AuditHead``, SPEC.md 6.12), the chain checked
  against a head kept elsewhere, and the chain exported page by page for a SIEM.
- Which of the epochs a member holds keys for are no longer live (``epochs_gone``): a shred,
  retention or a changed policy reached running consumers at their next refresh, not at a restart.
- Clients' reports of envelopes they could not open, recorded in the audit log and rate limited
  per member (``FailureReports``); clients limit themselves too.

The facade (``KeyDistributionService``) and the API call these; they hold no state of their own
beyond the report limiter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, and_, select

from sealedbus.kds import audit
from sealedbus.kds import store as rows
from sealedbus.kds.context import DESTROYED, Context, Part, load_policy, member_entries, policy_of
from sealedbus.kds.epochs import Epochs
from sealedbus.kds.store import Store, epoch_keys, epochs

MAX_LIVENESS_QUERY = 1000  # (topic, epoch) pairs per question

MAX_EXPORT_PAGE = 1000
REPORT_RATE_PER_MINUTE = 30  # per member, on each replica; bursts of as many
REPORT_REASON_PATTERN = r"^[a-z_]{1,40}$"
OPEN_FAILED = "open.failed"

# Destroys one kind of per-topic key material besides epoch keys inside a shred's transaction
# (the connection holds the write lock); returns how many keys it destroyed.
TopicKeyDestroyer = Callable[[Connection, str], int]
# Every such kind, by the name the audit entry gives its count; a shred runs each in order.
TOPIC_KEY_DESTROYERS: tuple[tuple[str, TopicKeyDestroyer], ...] = ()


@dataclass(frozen=True)
class Shredded:
    epochs: list[int]  # the epochs whose keys were destroyed (including any published ahead)
    other: dict[str, int]  # per destroyer: how many keys it destroyed
    fresh_epoch: int  # the epoch producers seal with from now on


class Evidence(Part):
    def __init__(self, kds: Context, epochs: Epochs) -> None:
        super().__init__(kds)
        self._epochs = epochs

    def shred_topic(
        self, actor: str, name: str, destroyers: tuple[tuple[str, TopicKeyDestroyer], ...]
    ) -> Shredded:
        """Destroy every key of topic ``name`` now: each epoch that still has one (the current
        epoch, older ones inside retention, any published ahead) and what ``destroyers``
        destroy; then publish a fresh epoch from now, so producers carry on at their next
        refresh. Messages sealed before never open again from this database."""
        now = self.now_ms()
        with self.store.write() as conn:
            policy = load_policy(conn, name)
            destroyed = rows.destroy_topic_keys(conn, name, DESTROYED)
            other = {kind: destroy(conn, name) for kind, destroy in destroyers}
            audit.append(
                conn, self.root, now, actor, "topic.shredded", topic=name, epochs=destroyed, **other
            )
            fresh = self._epochs.add_epoch(conn, policy, now, now, actor)
        return Shredded(destroyed, other, fresh)


def epochs_gone(
    store: Store, member: str, asked: list[tuple[str, int]], now_ms: int
) -> list[tuple[str, int]]:
    """Of the ``asked`` (topic, epoch) pairs, those ``member`` can no longer be granted a key
    for: the key was destroyed (a shred, retention, a withdrawn epoch), the epoch is past its
    destruction time or does not exist, or the topic is gone or no longer lets the member
    consume. For topics the member may not consume, every asked pair is answered, whatever its
    state, so the answer tells nothing about topics it cannot read.

    The answer is not signed: clients only drop cached keys on it (to fetch them again, signed,
    if they are still live), never accept anything."""
    gone: list[tuple[str, int]] = []
    by_topic: dict[str, list[int]] = {}
    for topic, epoch in asked:
        by_topic.setdefault(topic, []).append(epoch)
    with store.read() as conn:
        entries = member_entries(conn, member)
        revoked = rows.member_revoked(conn, member)
        for topic, numbers in by_topic.items():
            row = rows.topic_row(conn, topic)
            if revoked or row is None or not policy_of(row).consumers & entries:
                gone.extend((topic, n) for n in numbers)
                continue
            live = set(
                conn.execute(
                    select(epochs.c.epoch)
                    .join(
                        epoch_keys,
                        and_(
                            epoch_keys.c.topic == epochs.c.topic,
                            epoch_keys.c.epoch == epochs.c.epoch,
                        ),
                    )
                    .where(
                        epochs.c.topic == topic,
                        epochs.c.epoch.in_(numbers),
                        epochs.c.destroy_after_ms > now_ms,
                    )
                ).scalars()
            )
            gone.extend((topic, n) for n in numbers if n not in live)
    return gone


def audit_head(store: Store, root: Ed25519PrivateKey, now_ms: int) -> bytes:
    """The signed audit head, for now."""
    with store.read() as conn:
        return audit.published_head(conn, root, now_ms)


def audit_entries(store: Store, since: int, limit: int) -> list[dict[str, Any]]:
    with store.read() as conn:
        return audit.entries(conn, since, min(limit, MAX_EXPORT_PAGE))


def verify_audit(
    store: Store, root: Ed25519PublicKey, expect: tuple[int, bytes] | None
) -> audit.AuditReport:
    with store.read() as conn:
        return audit.verify(conn, root, expect)


@dataclass
class FailureReports:
    """Decides which client reports of unopenable envelopes reach the audit log: ``allow`` is a
    token bucket per member (the API's ``RateLimit``); the reports refused meanwhile are counted
    and the count is recorded with that member's next one, so a flood is summarised, not lost
    and not written out message by message."""

    allow: Callable[[str], bool]
    _dropped: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, member: str) -> int | None:
        """None when over the limit (counted); else how many were dropped before this one."""
        with self._lock:
            if not self.allow(member):
                if member not in self._dropped and len(self._dropped) >= 10_000:
                    self._dropped.clear()  # bounded; the counts are a summary, not evidence
                self._dropped[member] = self._dropped.get(member, 0) + 1
                return None
            return self._dropped.pop(member, 0)
