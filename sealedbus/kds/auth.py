"""How members and admins prove who they are to the KDS, shared by the server and its clients.

A request carries four headers: the principal's name, a millisecond timestamp, a random nonce and
an Ed25519 signature over ``LABEL || msgpack([method, target, timestamp, nonce, sha256(body)])``
where ``target`` is the raw path with its query string. The server refuses timestamps outside
``MAX_SKEW_MS`` and any (principal, nonce) it has seen. Admin requests also carry a TOTP code
(RFC 6238). Enrollment is signed by a key derived from the one-time token (``token_key``) and by
the new identity key, over what it enrolls; the token itself never travels.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA1, SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from sealedbus.core.suites import PROTOCOL

PRINCIPAL = "x-sealedbus-principal"
TIMESTAMP = "x-sealedbus-timestamp"
NONCE = "x-sealedbus-nonce"
SIGNATURE = "x-sealedbus-signature"
TOTP_CODE = "x-sealedbus-totp"
MAX_SKEW_MS = 60_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~:@+-]{0,127}$"
TOPIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~:@+-]{0,248}$"
TOTP_STEP = 30
# Enrolling over an enrolled name: the request's ``replace`` (signed with it) says whether to and
# how to revoke the old certificates: retired (from now on) or for key compromise (all).
REPLACE_NONE, REPLACE_RETIRE, REPLACE_COMPROMISE = 0, 1, 2

_REQUEST_LABEL = PROTOCOL + b" request\x00"
_ENROLL_LABEL = PROTOCOL + b" enroll\x00"
_TOKEN_KEY_LABEL = PROTOCOL + b" enrollment token key\x00"


def request_message(
    method: str, target: bytes, timestamp_ms: int, nonce: str, body: bytes
) -> bytes:
    fields = [method.upper(), target, timestamp_ms, nonce, hashlib.sha256(body).digest()]
    return _REQUEST_LABEL + bytes(msgpack.packb(fields, use_bin_type=True))


def sign_request(
    key: Ed25519PrivateKey,
    principal: str,
    method: str,
    target: bytes,
    body: bytes,
    now_ms: int,
    nonce: bytes,
) -> dict[str, str]:
    """The authentication headers for one request; ``nonce`` is 16 fresh random bytes."""
    nonce_text = nonce.hex()
    signature = key.sign(request_message(method, target, now_ms, nonce_text, body))
    return {
        PRINCIPAL: principal,
        TIMESTAMP: str(now_ms),
        NONCE: nonce_text,
        SIGNATURE: base64.b64encode(signature).decode(),
    }


def token_key(token: str) -> Ed25519PrivateKey:
    """The signing key an enrollment token stands for, derived with HKDF-SHA256. The token itself
    never travels: the enrollment request names the token by this key's public half (which is
    also all the KDS stores, so its database holds nothing that could enroll anyone) and signs
    what it enrolls with it. A TLS-terminating proxy that sees the request can therefore neither
    enroll other keys with the token nor learn it. (An HMAC keyed with the token would do the
    same on the wire, but the KDS would then have to keep the HMAC key: a usable secret.)"""
    seed = HKDF(SHA256(), 32, salt=None, info=_TOKEN_KEY_LABEL).derive(token.encode())
    return Ed25519PrivateKey.from_private_bytes(seed)


def enrollment_message(
    token_public: bytes,
    member: str,
    identity_public: bytes,
    suite: int,
    receive_public: bytes,
    timestamp_ms: int,
    replace: int = 0,
) -> bytes:
    """What an enrollment request signs, twice: with the token's key (``token_key``), which
    authorizes it, and with the new identity key, which proves the member holds that key.
    ``replace`` (1: retire the enrolled member's old key, 2: as compromised) is signed too, so
    no one in between can turn an enrollment into a replacement or soften a compromise."""
    fields: list[object] = [token_public, member, identity_public, suite, receive_public]
    fields += [timestamp_ms, replace] if replace else [timestamp_ms]
    return _ENROLL_LABEL + bytes(msgpack.packb(fields, use_bin_type=True))


def new_token() -> tuple[str, bytes]:
    """A one-time enrollment token, made where the admin is, and its public key: the KDS is
    sent (and stores) only the key, so the token never crosses the network to the admin."""
    token = secrets.token_urlsafe(32)
    return token, token_key(token).public_key().public_bytes_raw()


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
