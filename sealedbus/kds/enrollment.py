"""Members joining: one-time enrollment tokens, enrollment (and re-enrollment with new keys), and
what request authentication reads about members (their keys, replaced keys, seen nonces)."""

from __future__ import annotations

import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, insert, select, update

from sealedbus.core import suites
from sealedbus.core.backend import acceptable_point
from sealedbus.core.suites import Suite
from sealedbus.errors import KdsCode
from sealedbus.kds import audit
from sealedbus.kds import store as rows
from sealedbus.kds.certificates import Certificates
from sealedbus.kds.context import ROLE_PREFIX, Context, Part, ServiceError
from sealedbus.kds.store import members, nonces, replaced_keys, tokens
from sealedbus.keys import authority, signing
from sealedbus.keys.signing import enrollment_message


def _weak(what: str) -> str:
    return (
        f"the {what} key is an Ed25519 point of small order or not canonically encoded "
        "(SPEC.md 5.4): anyone could sign as it"
    )


class Enrollment(Part):
    def __init__(self, kds: Context, certificates: Certificates) -> None:
        super().__init__(kds)
        self.certificates = certificates

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
        if not acceptable_point(token_public):
            raise ServiceError(422, KdsCode.WEAK_KEY, _weak("token"))
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
            found = conn.execute(
                select(replaced_keys.c.identity_public).where(replaced_keys.c.member == name)
            ).scalars()
            return [Ed25519PublicKey.from_public_bytes(k) for k in found]

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
        for what, key in (("identity", identity_public), ("token", token_public)):
            if len(key) == 32 and not acceptable_point(key):  # other lengths: malformed, below
                raise ServiceError(400, KdsCode.WEAK_KEY, _weak(what))
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
            return self.certificates.issue(conn, member, now)

    def _replace_keys(
        self, conn: Connection, member: str, old_key: bytes, now: int, compromised: bool
    ) -> None:
        """A re-enrollment: revoke the member's certificates so far and remember its old key."""
        latest = rows.latest_serial(conn, member)
        if latest is not None:
            old = self.certificates.revocations(conn)
            self.certificates.store_revocations(
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
