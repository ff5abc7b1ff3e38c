"""Admins: their keys and TOTP second factor (replay guard and lockout), and the audit log."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete, insert, select, update

from sealedbus.errors import KdsCode
from sealedbus.kds import audit, auth
from sealedbus.kds.context import Part, ServiceError
from sealedbus.kds.store import admin_totp, admins

TOTP_MAX_FAILURES = 5
TOTP_LOCKOUT_MS = 60_000
TOTP_MAX_LOCKOUT_MS = 3_600_000


class Admins(Part):
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
        step = auth.totp_step(secret, code, self.kds.totp_clock())
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

    def record(self, actor: str, action: str, **detail: Any) -> None:
        """Audit an act that changes nothing else (a refused enrollment, a wrong TOTP)."""
        with self.store.write() as conn:
            audit.append(conn, self.root, self.now_ms(), actor, action, **detail)

    def verify_audit(self) -> audit.AuditReport:
        with self.store.read() as conn:
            return audit.verify(conn, self.root_public)
