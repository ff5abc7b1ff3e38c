"""The epoch schedule (published ahead, forced rotation withdrawing what was published ahead,
destruction after retention), grants of epoch keys to consumers, and re-wrapping under a new
master key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Row, Table, func, insert, select, update

from sealedbus.core import suites
from sealedbus.core.signed import Certificate, EpochDescription, SealingEpochAnswer
from sealedbus.errors import KdsCode
from sealedbus.kds import audit
from sealedbus.kds import store as rows
from sealedbus.kds.context import (
    DESTROYED,
    LIVE,
    ROLE_PREFIX,
    WITHDRAWN,
    Part,
    ServiceError,
    key_context,
    load_policy,
    member_entries,
    policy_of,
    token_context,
)
from sealedbus.kds.store import admins, consumer_since, epoch_keys, epochs, members, topics
from sealedbus.keys import authority
from sealedbus.keys.authority import EpochInfo, TopicPolicy


def needs_epoch(policy: TopicPolicy, latest_not_after: int | None, now: int) -> bool:
    return authority.next_epoch_start(policy, latest_not_after, now) is not None


def _info(row: Row[Any], has_key: bool = True) -> EpochInfo:
    """An epoch row as ``EpochInfo``: withdrawn or destroyed epochs (or a missing key) count as
    destroyed, as in ``LocalKeyService``."""
    return EpochInfo(
        row.topic,
        row.epoch,
        row.not_before_ms,
        row.not_after_ms,
        row.destroy_after_ms,
        row.state != LIVE or not has_key,
    )


# the HTTP status and text of each refused grant (its code: authority.GRANT_REFUSAL_CODES)
_GRANT_REFUSALS: dict[authority.GrantRefusal, tuple[int, str]] = {
    authority.GrantRefusal.REVOKED: (403, "member {member!r} is revoked"),
    authority.GrantRefusal.NOT_CONSUMER: (403, "{member!r} may not consume {topic!r}"),
    authority.GrantRefusal.UNKNOWN_EPOCH: (404, "{topic!r} has no epoch {epoch}"),
    authority.GrantRefusal.DESTROYED: (410, "{topic!r} epoch {epoch} is destroyed"),
    authority.GrantRefusal.PREDATES: (403, "epoch {epoch} predates {member!r}'s access"),
}


class Epochs(Part):
    def rotate(self, actor: str, name: str) -> int:
        """Start a new epoch now (withdrawing any published ahead); returns its number."""
        with self.store.write() as conn:
            return self.rotate_in(conn, load_policy(conn, name), self.now_ms(), actor)

    def epochs(self, name: str) -> list[EpochInfo]:
        with self.store.read() as conn:
            load_policy(conn, name)
            found = conn.execute(
                select(epochs).where(epochs.c.topic == name).order_by(epochs.c.epoch)
            )
            return [_info(r) for r in found]

    # -- keys -------------------------------------------------------------------------------

    def sealing_epoch(
        self, member: str, topic: str, nonce: bytes = b""
    ) -> tuple[bytes, bytes | None, bytes]:
        """The signed description producers seal with now, the next one if published, and a
        ``SealingEpochAnswer`` binding both to the client's request ``nonce`` and to now."""
        now = self.now_ms()
        with self.store.read() as conn:
            policy = load_policy(conn, topic)
            if not policy.producers & member_entries(conn, member):
                raise ServiceError(
                    403, KdsCode.ACCESS_DENIED, f"{member!r} may not produce to {topic!r}"
                )
            latest = rows.latest_not_after(conn, topic)
        if needs_epoch(policy, latest, now):
            with self.store.write() as conn:  # the scheduler is behind: catch up, once
                self.advance(conn, load_policy(conn, topic), now, f"kds:{self.replica}")
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
            t = rows.topic_row(conn, topic)
            if t is None:
                raise ServiceError(404, KdsCode.EPOCH_UNKNOWN, f"no topic {topic!r}")
            policy = policy_of(t)
            matching = policy.consumers & member_entries(conn, member)
            since = self._consumer_since(conn, topic, member, matching) if matching else None
            row = conn.execute(
                select(epochs).where(epochs.c.topic == topic, epochs.c.epoch == epoch)
            ).first()
            wrapped = conn.execute(
                select(epoch_keys.c.wrapped).where(
                    epoch_keys.c.topic == topic, epoch_keys.c.epoch == epoch
                )
            ).scalar()
            refusal = authority.grant_refusal(
                policy,
                since,
                None if row is None else _info(row, wrapped is not None),
                now,
                revoked=rows.member_revoked(conn, member),
            )
            if refusal is not None or row is None or wrapped is None:  # (no row, no key: refused)
                refusal = refusal or authority.GrantRefusal.DESTROYED
                status, text = _GRANT_REFUSALS[refusal]
                raise ServiceError(
                    status,
                    authority.GRANT_REFUSAL_CODES[refusal],
                    text.format(member=member, topic=topic, epoch=epoch),
                )
            cert_bytes = rows.latest_certificate(conn, member)
        if cert_bytes is None:
            raise ServiceError(403, KdsCode.NOT_GRANTED, f"{member!r} holds no certificate")
        description = EpochDescription.verify(row.description, self.root_public)
        seed = self.master.unwrap(wrapped, key_context(topic, epoch))
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

    def _consumer_since(
        self, conn: Connection, topic: str, member: str, matching: frozenset[str]
    ) -> int | None:
        """Since when ``member`` may consume ``topic``: the earliest of its matching entries,
        where a ``role:R`` entry counts from when the entry was added or the member enrolled,
        whichever is later (a member joining a role later does not get the role's past)."""
        enrolled = conn.execute(
            select(members.c.enrolled_ms).where(members.c.name == member)
        ).scalar()
        found = conn.execute(
            select(consumer_since.c.entry, consumer_since.c.since_ms).where(
                consumer_since.c.topic == topic, consumer_since.c.entry.in_(matching)
            )
        ).all()
        starts = [
            max(r.since_ms, enrolled or 0) if r.entry.startswith(ROLE_PREFIX) else r.since_ms
            for r in found
        ]
        return min(starts, default=None)

    # -- schedule ---------------------------------------------------------------------------

    def publish_and_destroy(self, actor: str, now: int) -> tuple[int, int]:
        """Publish next epochs that are due and destroy keys past retention: (published,
        destroyed). ``KeyDistributionService.tick`` does this and the housekeeping."""
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
                for p in map(policy_of, conn.execute(select(topics)))
                if needs_epoch(p, latest.get(p.name), now)
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
                published += self.advance(conn, load_policy(conn, policy.name), now, actor)
        if expired:
            with self.store.write() as conn:
                for topic, number in expired:
                    rows.set_epoch_state(conn, topic, number, DESTROYED)
                    audit.append(
                        conn, self.root, now, actor, "epoch.destroyed", topic=topic, epoch=number
                    )
        return published, len(expired)

    def rewrap(self, batch: int = 500) -> int:
        """Re-wrap every value wrapped under an older master key with the current one."""
        done = 0
        while True:
            with self.store.write() as conn:
                found = conn.execute(
                    select(epoch_keys)
                    .where(epoch_keys.c.key_id != self.master.current)
                    .limit(batch)
                ).all()
                for r in found:
                    context = key_context(r.topic, r.epoch)
                    wrapped = self.master.wrap(self.master.unwrap(r.wrapped, context), context)
                    conn.execute(
                        update(epoch_keys)
                        .where(epoch_keys.c.topic == r.topic, epoch_keys.c.epoch == r.epoch)
                        .values(wrapped=wrapped, key_id=self.master.current)
                    )
            done += len(found)
            if len(found) < batch:
                break
        with self.store.write() as conn:
            done += self._rewrap_column(conn, topics, "token_key", lambda r: token_context(r.name))
            done += self._rewrap_column(
                conn, admins, "totp_wrapped", lambda r: b"admin totp " + r.name.encode()
            )
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

    def _rewrap_column(
        self, conn: Connection, table: Table, column: str, context: Callable[[Row[Any]], bytes]
    ) -> int:
        """Re-wrap ``column`` of every row of ``table`` (keyed by ``name``) still wrapped under
        an older master key; returns how many."""
        current = self.master.current
        found = conn.execute(select(table).where(table.c.key_id != current)).all()
        for row in found:
            wrapped = self.master.wrap(
                self.master.unwrap(getattr(row, column), context(row)), context(row)
            )
            conn.execute(
                update(table)
                .where(table.c.name == row.name)
                .values({column: wrapped, "key_id": current})
            )
        return len(found)

    def master_keys_in_use(self) -> set[str]:
        with self.store.read() as conn:
            used = set(conn.execute(select(epoch_keys.c.key_id).distinct()).scalars())
            used |= set(conn.execute(select(topics.c.key_id).distinct()).scalars())
            return used | set(conn.execute(select(admins.c.key_id).distinct()).scalars())

    # -- inside transactions (other parts call these too) -----------------------------------

    def advance(self, conn: Connection, policy: TopicPolicy, now: int, actor: str) -> int:
        """Publish the next epoch when due (re-checked under the write lock): 1 if published."""
        start = authority.next_epoch_start(policy, rows.latest_not_after(conn, policy.name), now)
        if start is None:
            return 0
        self.add_epoch(conn, policy, start, now, actor)
        return 1

    def rotate_in(self, conn: Connection, policy: TopicPolicy, now: int, actor: str) -> int:
        ahead = authority.withdrawn_by_rotation(
            map(_info, conn.execute(select(epochs).where(epochs.c.topic == policy.name))), now
        )
        for number in ahead:  # published ahead but never used: withdraw it
            rows.set_epoch_state(conn, policy.name, number, WITHDRAWN)
        audit.append(
            conn, self.root, now, actor, "topic.rotated", topic=policy.name, withdrawn=list(ahead)
        )
        return self.add_epoch(conn, policy, now, now, actor)

    def add_epoch(
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
        wrapped = self.master.wrap(keys.private, key_context(policy.name, number))
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
