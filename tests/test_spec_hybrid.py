"""What SPEC.md sections 3 and 4.2 say about suite 2, checked against the primitives: the key
format is X-Wing's, and `cryptography`'s HPKE KEM MLKEM768_X25519 is X-Wing (KEM id 0x647A),
with empty associated data and ``enc || ciphertext`` output. A second implementation can then
use any X-Wing library (BoringSSL, Go's crypto/hpke, CryptoKit) with these bytes."""

from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from sealedbus.core import suites
from sealedbus.core.suites import Suite

# draft-connolly-cfrg-xwing-kem-06..08, appendix C, first vector: the 32-byte private key
# (seed) and the first and last 16 bytes of its 1,216-byte public key, and SHA-256 of all of it.
XWING_SEED = bytes.fromhex("7f9c2ba4e88f827d616045507605853ed73b8093f6efbc88eb1a6eacfa66ef26")
XWING_PUBLIC_HEAD = "e2236b35a8c24b39b10aa1323a96a919"
XWING_PUBLIC_TAIL = "23593d4ba32d9abac8cd049040ef6534"
XWING_PUBLIC_SHA256 = "2e816deebcd76c5c80d0cd2d174478871658e8e2ff42bc9d4a6e486372e856bb"
XWING_LABEL = b"\\.//^\\"
HPKE_SUITE_ID = b"HPKE" + struct.pack(">HHH", 0x647A, 0x0001, 0x0002)  # X-Wing, SHA256, AES256


def test_hybrid_private_key_is_the_xwing_seed() -> None:
    pair = suites.keypair_from_seed(Suite.HYBRID, XWING_SEED)
    assert Suite.HYBRID.seed_len == 32
    assert pair.private == XWING_SEED
    assert len(pair.public) == 1216
    assert pair.public[:16].hex() == XWING_PUBLIC_HEAD
    assert pair.public[-16:].hex() == XWING_PUBLIC_TAIL
    assert hashlib.sha256(pair.public).hexdigest() == XWING_PUBLIC_SHA256


def _extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(b"HPKE-v1" + HPKE_SUITE_ID + label + ikm)
    return h.finalize()


def _expand(prk: bytes, label: bytes, info: bytes, n: int) -> bytes:
    labeled = struct.pack(">H", n) + b"HPKE-v1" + HPKE_SUITE_ID + label + info
    return HKDFExpand(hashes.SHA256(), n, labeled).derive(prk)


def test_hybrid_hpke_is_xwing_kem_0x647a_with_empty_aad() -> None:
    """Decapsulate by hand (X-Wing combiner, RFC 9180 base-mode key schedule with KEM id
    0x647A) what suites.hpke_seal sealed: only X-Wing under that id opens it."""
    pair = suites.keypair_from_seed(Suite.HYBRID, XWING_SEED)
    info = b"sealedbus/1 spec check"
    sealed = suites.hpke_seal(Suite.HYBRID, pair.public, b"thirty-two bytes of session ikm!", info)
    assert len(sealed) == 1120 + 32 + 16 == Suite.HYBRID.encapsulation_len
    enc, ciphertext = sealed[:1120], sealed[1120:]
    ct_m, ct_x = enc[:1088], enc[1088:]
    expanded = hashlib.shake_256(XWING_SEED).digest(96)
    sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    ss_m = sk_m.decapsulate(ct_m)
    ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    pk_x = pair.public[1184:]
    shared = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()
    context = b"\x00" + _extract(b"", b"psk_id_hash", b"") + _extract(b"", b"info_hash", info)
    secret = _extract(shared, b"secret", b"")
    key = _expand(secret, b"key", context, 32)
    nonce = _expand(secret, b"base_nonce", context, 12)
    assert AESGCM(key).decrypt(nonce, ciphertext, b"") == b"thirty-two bytes of session ikm!"
