"""The admin side of the KDS API, used by ``sealedbus admin`` and by tests. Every call is signed
with the admin's key and carries a TOTP code from ``totp`` (called per request, so it can prompt
or compute), or, once ``open_session`` was called (or given ``session=``), the admin session token
instead (``sealedbus.kds.admin_sessions``)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealedbus.kds import auth
from sealedbus.keys import signing
from sealedbus.keys.client import SignedHttp, fetch_root
from sealedbus.keys.identity import MemberIdentity

SESSION_HEADER = "x-sealedbus-admin-session"  # the server side: sealedbus.kds.admin_sessions
SESSIONS_PATH = "/v1/admin/sessions"


class AdminClient:
    def __init__(
        self,
        url: str,
        admin: MemberIdentity,
        totp: Callable[[], str],
        *,
        session: str | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        **http_options: Any,
    ) -> None:
        self._rng = rng  # request nonces and enrollment tokens
        self._http = SignedHttp(url, admin.name, admin.signing_key, rng=rng, **http_options)
        self._totp = totp
        self.session = session

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        code = {SESSION_HEADER: self.session} if self.session else {auth.TOTP_CODE: self._totp()}
        return self._http.call(method, path, json, headers=code)

    def open_session(self, ttl: int | None = None) -> dict[str, Any]:
        """Spend one TOTP code on an admin session; later calls use it instead of codes.
        Returns ``session`` (the token), ``session_id``, ``expires_at_ms`` and ``expires_in``."""
        self.session = None
        doc = dict(self._call("POST", SESSIONS_PATH, {"ttl_seconds": ttl}))
        self.session = str(doc["session"])
        return doc

    def close_session(self, session_id: str | None = None) -> int:
        """Close one session by id (any admin's), or all of this admin's; returns how many."""
        path = SESSIONS_PATH + (f"/{session_id}" if session_id else "")
        return int(self._call("DELETE", path)["closed"])

    def check_root(self, root_fingerprint: str) -> None:
        """Refuse (UntrustedResponse) a KDS whose root key is not the pinned one."""
        fetch_root(self._http, root_fingerprint)

    def create_token(self, member: str, roles: list[str] | None = None, ttl: int = 900) -> str:
        """A one-time enrollment token for ``member``, made here: the KDS is sent only its
        public key (``signing.new_token``), so the token never travels back to the admin."""
        token, token_public = signing.new_token(self._rng)
        self._call(
            "POST",
            "/v1/admin/tokens",
            {
                "member": member,
                "token_key": base64.b64encode(token_public).decode(),
                "roles": roles or [],
                "ttl_seconds": ttl,
            },
        )
        return token

    def create_topic(
        self,
        name: str,
        *,
        producers: Sequence[str] = (),
        consumers: Sequence[str] = (),
        rotation: int = 3600,
        retention: int = 7 * 86_400,
        suite: str = "x25519",
        history: bool = False,
        max_age: int = 86_400,
    ) -> dict[str, Any]:
        return dict(
            self._call(
                "POST",
                "/v1/admin/topics",
                {
                    "name": name,
                    "producers": list(producers),
                    "consumers": list(consumers),
                    "rotation_seconds": rotation,
                    "retention_seconds": retention,
                    "suite": suite,
                    "history": history,
                    "max_age_seconds": max_age,
                },
            )
        )

    def set_policy(
        self,
        name: str,
        *,
        producers: list[str] | None = None,
        consumers: list[str] | None = None,
    ) -> dict[str, Any]:
        body = {
            k: v for k, v in (("producers", producers), ("consumers", consumers)) if v is not None
        }
        return dict(self._call("PATCH", f"/v1/admin/topics/{name}", body))

    def topics(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/topics"))

    def topic(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/admin/topics/{name}"))

    def rotate(self, name: str) -> int:
        return int(self._call("POST", f"/v1/admin/topics/{name}/rotate")["epoch"])

    def epochs(self, name: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/v1/admin/topics/{name}/epochs"))

    def revoke(self, member: str, *, compromised: bool = True) -> None:
        """Revoke ``member``; ``compromised=False`` retires it (envelopes stamped before now
        still open) instead of refusing everything it ever signed."""
        flag = "true" if compromised else "false"
        self._call("POST", f"/v1/admin/members/{member}/revoke?compromised={flag}")

    def audit(self, expect: tuple[int, bytes] | None = None) -> dict[str, Any]:
        """Verify the audit chain; with ``expect`` (sequence, chain hash of a head kept
        elsewhere) also that the chain still holds it."""
        query = "" if expect is None else f"?expect_seq={expect[0]}&expect_hash={expect[1].hex()}"
        return dict(self._call("GET", "/v1/admin/audit" + query))

    def audit_head(self) -> bytes:
        """The KDS's signed audit head (``AuditHead``, SPEC.md 6.12), unverified: check it with
        ``AuditHead.verify(..., self.root_key())``."""
        return base64.b64decode(self._call("GET", "/v1/admin/audit/head")["head"], validate=True)

    def audit_entries(self, since: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        """Up to ``limit`` audit entries after sequence ``since``, with their chain hashes."""
        doc = self._call("GET", f"/v1/admin/audit/entries?since={since}&limit={limit}")
        return list(doc["entries"])

    def root_key(self, root_fingerprint: str | None = None) -> Ed25519PublicKey:
        """The KDS root key: checked against ``root_fingerprint`` when given, else as the KDS
        (trusted on its TLS certificate) says."""
        if root_fingerprint:
            return fetch_root(self._http, root_fingerprint)
        doc = self._http.call("GET", "/v1/root", signed=False)
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"]))

    def shred_topic(self, name: str) -> dict[str, Any]:
        """Destroy every epoch key of the topic (and its other key material) now; the topic
        stays and gets a fresh epoch. Returns what was destroyed."""
        return dict(self._call("POST", f"/v1/admin/topics/{name}/shred"))

    def erase_subject(self, topic: str, subject: str) -> str | None:
        """Crypto-shred ``subject`` on ``topic`` (the subject travels in the signed body only);
        returns the erased subject key id (hex), None when the subject had no key."""
        doc = self._call("POST", f"/v1/admin/topics/{topic}/subjects/erase", {"subject": subject})
        key_id = doc.get("subject_key_id")
        return None if key_id is None else str(key_id)

    def close(self) -> None:
        self._http.close()
