"""Member certificates and the revocation list: issuing and reissuing certificates, revoking a
member (which rotates every topic it reads), withdrawing a removed producer's certificates from a
topic, and pruning entries that no longer matter."""

from __future__ import annotations

import json
from dataclasses import replace

import msgpack
from cryptography.exceptions import InvalidSignature
from sqlalchemy import Connection, delete, func, insert, select, update

from sealedbus.core.signed import Certificate, RevocationList, SignatureError
from sealedbus.core.suites import Suite
from sealedbus.errors import KdsCode
from sealedbus.kds import audit
from sealedbus.kds import store as rows
from sealedbus.kds.context import (
    Context,
    Part,
    ServiceError,
    entries,
    member_entries,
    policy_of,
)
from sealedbus.kds.epochs import Epochs
from sealedbus.kds.store import certificates, members, revocations, topics
from sealedbus.keys import authority


class Certificates(Part):
    def __init__(self, kds: Context, epochs: Epochs) -> None:
        super().__init__(kds)
        self.epochs = epochs

    def certificate(self, member: str) -> bytes:
        """The member's current certificate, reissued when stale or when its topics changed."""
        now = self.now_ms()
        with self.store.read() as conn:
            latest = rows.latest_certificate(conn, member)
            if latest is not None:
                cert = Certificate.verify(latest, self.root_public)
                produce, consume = self._rights(conn, member)
                lifetime = self.kds.certificate_lifetime_ms
                if not authority.needs_reissue(cert, produce, consume, now, lifetime):
                    return latest
        with self.store.write() as conn:
            return self.issue(conn, member, now)

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
            latest = self.revocations(conn)
        return replace(latest, issued_at_ms=self.now_ms()).sign(self.root)

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
            serial = rows.serial_head(conn)
            old = self.revocations(conn)
            self.store_revocations(
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
            names = entries(member, json.loads(row.roles))
            for t in conn.execute(select(topics)).all():
                policy = policy_of(t)
                if policy.consumers & names:
                    self.epochs.rotate_in(conn, policy, now, actor)

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

            old = self.revocations(conn)
            new = authority.prune(old, useful_until, now)
            self.store_revocations(conn, old, new)
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

    # -- inside transactions (other parts call these too) -----------------------------------

    def issue(self, conn: Connection, member: str, now: int) -> bytes:
        row = conn.execute(select(members).where(members.c.name == member)).one()
        serial = rows.take_serial(conn)
        produce, consume = self._rights(conn, member)
        cert = authority.issue_certificate(
            member,
            row.identity_public,
            Suite(row.receive_suite),
            row.receive_public,
            list(produce),
            list(consume),
            now,
            self.kds.certificate_lifetime_ms,
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

    def withdraw(
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
            if former & entries(row.name, json.loads(row.roles))
            and not now_producers & entries(row.name, json.loads(row.roles))
        ]
        if not gone:
            return
        new = old = self.revocations(conn)
        for member in gone:  # one entry per (member, topic): up to its latest certificate
            latest = rows.latest_serial(conn, member)
            if latest is not None:
                new = authority.withdraw(new, member, topic, latest, now)
        self.store_revocations(conn, old, new)
        audit.append(
            conn, self.root, now, actor, "producers.withdrawn", topic=topic, members=sorted(gone)
        )

    def revocations(self, conn: Connection) -> RevocationList:
        signed = conn.execute(
            select(revocations.c.signed).order_by(revocations.c.serial.desc()).limit(1)
        ).scalar()
        if signed is None:
            return RevocationList(0, 0)
        try:
            return RevocationList.verify(signed, self.root_public)
        except SignatureError:
            return self._legacy_revocations(conn, signed)

    def store_revocations(self, conn: Connection, old: RevocationList, new: RevocationList) -> None:
        """Sign and keep ``new`` as the only list (unless it is ``old``: nothing changed)."""
        if new is old:
            return
        conn.execute(insert(revocations).values(serial=new.serial, signed=new.sign(self.root)))
        conn.execute(delete(revocations).where(revocations.c.serial < new.serial))

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
        head = rows.serial_head(conn)
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

    def _rights(self, conn: Connection, member: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        names = member_entries(conn, member)
        produce, consume = [], []
        for row in conn.execute(select(topics.c.name, topics.c.producers, topics.c.consumers)):
            if names & set(json.loads(row.producers)):
                produce.append(row.name)
            if names & set(json.loads(row.consumers)):
                consume.append(row.name)
        return tuple(sorted(produce)), tuple(sorted(consume))
