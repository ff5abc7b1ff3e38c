"""How members and admins sign their requests to the KDS: the protocol both sides share.

A request carries four headers: the principal's name, a millisecond timestamp, a random nonce and
an Ed25519 signature over ``LABEL || msgpack([method, target, timestamp, nonce, sha256(body)])``
where ``target`` is the raw path with its query string. The server refuses timestamps outside
``MAX_SKEW_MS`` and any (principal, nonce) it has seen. Enrollment is signed by a key derived from
the one-time token (``token_key``) and by the new identity key, over what it enrolls; the token
itself never travels.

Pure: no clock, no sockets; the nonce, the time and the token's randomness are passed in. It lives
in ``keys`` because the member's client (``keys/client.py``) and the KDS (``kds/``) both speak it;
the server-side checks (replayed nonces, TOTP) stay in ``kds/auth.py``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealedbus.core.suites import PROTOCOL

PRINCIPAL = "x-sealedbus-principal"
TIMESTAMP = "x-sealedbus-timestamp"
NONCE = "x-sealedbus-nonce"
SIGNATURE = "x-sealedbus-signature"
MAX_SKEW_MS = 60_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~:@+-]{0,127}$"
TOPIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~:@+-]{0,248}$"
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


def new_token(rng: Callable[[int], bytes] = os.urandom) -> tuple[str, bytes]:
    """A one-time enrollment token, made where the admin is, and its public key: the KDS is
    sent (and stores) only the key, so the token never crosses the network to the admin. The
    token is 32 bytes of ``rng`` in unpadded URL-safe base64 (what ``secrets.token_urlsafe(32)``
    gives)."""
    token = base64.urlsafe_b64encode(rng(32)).rstrip(b"=").decode()
    return token, token_key(token).public_key().public_bytes_raw()
