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


def _suite_id(kem: int) -> bytes:
    return b"HPKE" + struct.pack(">HHH", kem, 0x0001, 0x0002)  # HKDF-SHA256, AES-256-GCM


def test_hybrid_private_key_is_the_xwing_seed() -> None:
    pair = suites.keypair_from_seed(Suite.HYBRID, XWING_SEED)
    assert Suite.HYBRID.seed_len == 32
    assert pair.private == XWING_SEED
    assert len(pair.public) == 1216
    assert pair.public[:16].hex() == XWING_PUBLIC_HEAD
    assert pair.public[-16:].hex() == XWING_PUBLIC_TAIL
    assert hashlib.sha256(pair.public).hexdigest() == XWING_PUBLIC_SHA256


def _extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """RFC 9180 LabeledExtract (HKDF-Extract is HMAC keyed with the salt)."""
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(b"HPKE-v1" + suite_id + label + ikm)
    return h.finalize()


def _expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, n: int) -> bytes:
    labeled = struct.pack(">H", n) + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), n, labeled).derive(prk)


def _open_base(kem: int, shared: bytes, info: bytes, ciphertext: bytes) -> bytes:
    """RFC 9180 base-mode key schedule from the KEM's shared secret, then AES-256-GCM with
    empty associated data (sequence 0)."""
    sid = _suite_id(kem)
    context = (
        b"\x00" + _extract(sid, b"", b"psk_id_hash", b"") + _extract(sid, b"", b"info_hash", info)
    )
    secret = _extract(sid, shared, b"secret", b"")
    key = _expand(sid, secret, b"key", context, 32)
    nonce = _expand(sid, secret, b"base_nonce", context, 12)
    return AESGCM(key).decrypt(nonce, ciphertext, b"")


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
    assert _open_base(0x647A, shared, info, ciphertext) == b"thirty-two bytes of session ikm!"


def test_suite_1_grants_are_dhkem_x25519_0x0020_with_empty_aad() -> None:
    """SPEC.md 6.6: grants to an X25519 receive key are DHKEM(X25519, HKDF-SHA256), KEM id
    0x0020, HKDF-SHA256, AES-256-GCM, base mode, empty associated data, enc || ciphertext."""
    receive = suites.keypair_from_seed(Suite.X25519, bytes(range(32)))
    info = b"sealedbus/1 grant\x00spec check"
    sealed = suites.hpke_seal(Suite.X25519, receive.public, bytes(32), info)
    assert len(sealed) == 32 + 32 + 16
    enc, ciphertext = sealed[:32], sealed[32:]
    dh = x25519.X25519PrivateKey.from_private_bytes(receive.private).exchange(
        x25519.X25519PublicKey.from_public_bytes(enc)
    )
    kem_id = b"KEM" + struct.pack(">H", 0x0020)
    eae_prk = hmac.HMAC(b"", hashes.SHA256())
    eae_prk.update(b"HPKE-v1" + kem_id + b"eae_prk" + dh)
    prk = eae_prk.finalize()
    kem_context = enc + receive.public
    labeled = struct.pack(">H", 32) + b"HPKE-v1" + kem_id + b"shared_secret" + kem_context
    shared = HKDFExpand(hashes.SHA256(), 32, labeled).derive(prk)
    assert _open_base(0x0020, shared, info, ciphertext) == bytes(32)
