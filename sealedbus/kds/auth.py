"""The KDS's side of authentication: replayed-nonce memory for signed reads and the admins'
second factor (TOTP, RFC 6238). The request and enrollment signatures both sides share are in
``sealedbus.keys.signing``; admin requests also carry a TOTP code in the ``TOTP_CODE`` header.
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP

TOTP_CODE = "x-sealedbus-totp"
TOTP_STEP = 30


class ReadNonces:
    """Nonces of signed reads, remembered in memory (bounded) rather than in the database: a
    read changes nothing, so a replayed one within the clock skew gains nothing durable, and a
    stream of reads must not cost a database write each. Writes keep the durable check."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def remember(self, principal: str, nonce: str, expires_ms: int, now_ms: int) -> bool:
        """False when this principal used this nonce before (a replayed request)."""
        key = (principal, nonce)
        with self._lock:
            if key in self._seen:
                return False
            if len(self._seen) >= self.max_entries:
                self._seen = {k: v for k, v in self._seen.items() if v >= now_ms}
                while len(self._seen) >= self.max_entries:  # all live: forget the oldest
                    del self._seen[next(iter(self._seen))]
            self._seen[key] = expires_ms
            return True


def totp(secret: bytes) -> TOTP:
    return TOTP(secret, 6, SHA1(), TOTP_STEP, enforce_key_length=True)  # noqa: S303 - RFC 6238 default; authenticator apps expect it


def totp_step(secret: bytes, code: str, now_s: float) -> int | None:
    """The RFC 6238 time step ``code`` belongs to, allowing one step of clock drift either way;
    None when it matches none. (The caller refuses steps at or below the last one accepted.)"""
    if len(code) != 6 or not (code.isascii() and code.isdigit()):
        return None
    checker = totp(secret)
    for drift in (0, -TOTP_STEP, TOTP_STEP):
        try:
            checker.verify(code.encode(), int(now_s) + drift)
            return (int(now_s) + drift) // TOTP_STEP
        except InvalidToken:
            continue
    return None


def totp_uri(secret: bytes, account: str) -> str:
    """otpauth:// URI for an authenticator app (a secret: write it to a 0600 file only)."""
    return totp(secret).get_provisioning_uri(account, "sealedbus-kds")
