"""Cipher suites and the session key schedule (SPEC.md sections 3 and 4).

Pure: every key is built from bytes handed in; nothing here draws randomness or reads a clock,
except the hybrid suite's HPKE encapsulation, whose randomness lives inside ``cryptography``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

PROTOCOL = b"sealedbus/1"
LABEL_SESSION = PROTOCOL + b" session"
LABEL_AEAD_KEY = PROTOCOL + b" aead key"
LABEL_NONCE = PROTOCOL + b" nonce"
LABEL_COMMITMENT = PROTOCOL + b" commitment"
LABEL_HYBRID = PROTOCOL + b" hybrid encapsulation"
LABEL_SUBJECT = PROTOCOL + b" subject"
SUBJECT_KEY_ID_LEN = 16

_X25519_LEN = 32
_MLKEM768_PUBLIC_LEN = 1184
_XWING_SEED_LEN = 32  # X-Wing's private key format: one seed, expanded with SHAKE256
_HYBRID_SECRET_LEN = 32
# enc (1120) + sealed 32-byte secret (32) + GCM tag (16)
HYBRID_ENCAPSULATION_LEN = hpke.KEM.MLKEM768_X25519.enc_length() + _HYBRID_SECRET_LEN + 16


class Suite(IntEnum):
    """A cipher suite: session KEM, HKDF-SHA256, AES-256-GCM, Ed25519."""

    X25519 = 1
    HYBRID = 2  # X-Wing (ML-KEM-768 + X25519, HPKE KEM 0x647A): secret for decades

    @property
    def label(self) -> str:
        return {Suite.X25519: "x25519", Suite.HYBRID: "x25519-mlkem768"}[self]

    @classmethod
    def parse(cls, name: str | int | Suite) -> Suite:
        """Accept a Suite, its wire id or its label; raise ValueError otherwise."""
        if isinstance(name, Suite):
            return name
        for suite in cls:
            if name in (suite.value, suite.label):
                return suite
        raise ValueError(f"unknown suite {name!r}; known: {[s.label for s in cls]}")

    @property
    def encapsulation_len(self) -> int:
        """Bytes of session encapsulation carried in every envelope besides the session id."""
        return HYBRID_ENCAPSULATION_LEN if self is Suite.HYBRID else 0

    @property
    def seed_len(self) -> int:
        """Random bytes needed to generate one key pair of this suite (its private key)."""
        return _XWING_SEED_LEN if self is Suite.HYBRID else _X25519_LEN


# every suite's label, the one list command lines and the KDS API offer
LABELS: tuple[str, ...] = tuple(s.label for s in Suite)


@dataclass(frozen=True)
class KeyPair:
    """An epoch or receive key pair in its wire encoding (SPEC.md 3.1)."""

    suite: Suite
    private: bytes
    public: bytes


def keypair_from_seed(suite: Suite, seed: bytes) -> KeyPair:
    """Derive a key pair from ``suite.seed_len`` random bytes, which are the private key: the
    X25519 scalar (suite 1) or the X-Wing seed (suite 2, SPEC.md section 3)."""
    if len(seed) != suite.seed_len:
        raise ValueError(f"{suite.label} needs a {suite.seed_len}-byte seed")
    if suite is Suite.HYBRID:
        msk, xsk = _xwing_expand(seed)
        public = msk.public_key().public_bytes_raw() + xsk.public_key().public_bytes_raw()
    else:
        public = _x25519_private(seed).public_key().public_bytes_raw()
    return KeyPair(suite, bytes(seed), public)


def _xwing_expand(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """X-Wing's expandDecapsulationKey (draft-connolly-cfrg-xwing-kem-06 and later):
    SHAKE256(seed, 96) = ML-KEM-768 seed (d || z, 64 bytes) || X25519 scalar (32 bytes)."""
    if len(seed) != _XWING_SEED_LEN:
        raise ValueError("an X-Wing private key is a 32-byte seed")
    expanded = hashlib.shake_256(seed).digest(96)
    return (
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


def check_public_key(suite: Suite, public: bytes) -> None:
    """Raise ValueError unless ``public`` is a well-formed public key of ``suite``."""
    _hpke_public(suite, public)


def _x25519_private(private: bytes) -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.from_private_bytes(private[:_X25519_LEN])


def _hpke_public(
    suite: Suite, public: bytes
) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
    if suite is Suite.X25519:
        if len(public) != _X25519_LEN:
            raise ValueError("X25519 public key must be 32 bytes")
        return x25519.X25519PublicKey.from_public_bytes(public)
    if len(public) != _MLKEM768_PUBLIC_LEN + _X25519_LEN:
        raise ValueError("hybrid public key must be 1216 bytes")
    return hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(public[:_MLKEM768_PUBLIC_LEN]),
        x25519.X25519PublicKey.from_public_bytes(public[_MLKEM768_PUBLIC_LEN:]),
    )


def _hpke_private(
    suite: Suite, private: bytes
) -> x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey:
    if suite is Suite.X25519:
        return _x25519_private(private)
    return hpke.MLKEM768X25519PrivateKey(*_xwing_expand(private))


def hpke_seal(suite: Suite, public: bytes, plaintext: bytes, info: bytes) -> bytes:
    """HPKE base-mode seal (RFC 9180) with the suite's KEM, HKDF-SHA256 and AES-256-GCM."""
    kem = hpke.KEM.X25519 if suite is Suite.X25519 else hpke.KEM.MLKEM768_X25519
    hs = hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    return hs.encrypt(plaintext, _hpke_public(suite, public), info=info)


def hpke_open(suite: Suite, private: bytes, ciphertext: bytes, info: bytes) -> bytes:
    """Open what hpke_seal sealed; raises cryptography's InvalidTag (or ValueError) on failure."""
    kem = hpke.KEM.X25519 if suite is Suite.X25519 else hpke.KEM.MLKEM768_X25519
    hs = hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    return hs.decrypt(ciphertext, _hpke_private(suite, private), info=info)


@dataclass(frozen=True)
class SessionKeys:
    """What one producer session seals with and one consumer caches per session id."""

    session_id: bytes
    encapsulation: bytes
    aead: AESGCM
    nonce_base: int
    commitment: bytes
    # kept so that a subject session (SPEC.md 4.5) can be derived from this one
    secret: bytes = field(default=b"", repr=False)
    context: bytes = field(default=b"", repr=False)

    def nonce(self, seq: int) -> bytes:
        """Counter nonce: nonce base XOR the 96-bit big-endian sequence number (as in TLS 1.3)."""
        return (self.nonce_base ^ seq).to_bytes(12, "big")


class WeakSharedSecret(ValueError):
    """The X25519 result was all zero (a small-order point): the session must be refused."""


def session_context(suite: Suite, topic: bytes, epoch: int, epoch_public: bytes) -> bytes:
    """Context bound into every session secret (SPEC.md 4.1)."""
    return (
        PROTOCOL
        + struct.pack(">BH", suite, len(topic))
        + topic
        + struct.pack(">I", epoch)
        + hashlib.sha256(epoch_public).digest()
    )


def _schedule(ikm: bytes, context: bytes, session_id: bytes, encapsulation: bytes) -> SessionKeys:
    secret = HKDF(hashes.SHA256(), 32, salt=None, info=LABEL_SESSION + context + session_id).derive(
        ikm
    )
    return _expand_keys(secret, context, session_id, encapsulation)


def _expand_keys(
    secret: bytes, context: bytes, session_id: bytes, encapsulation: bytes
) -> SessionKeys:
    def expand(label: bytes, length: int) -> bytes:
        return HKDFExpand(hashes.SHA256(), length, info=label).derive(secret)

    return SessionKeys(
        session_id=session_id,
        encapsulation=encapsulation,
        aead=AESGCM(expand(LABEL_AEAD_KEY, 32)),
        nonce_base=int.from_bytes(expand(LABEL_NONCE, 12), "big"),
        commitment=expand(LABEL_COMMITMENT, 32),
        secret=secret,
        context=context,
    )


# -- subjects (SPEC.md 4.5): a per-(topic, subject) X25519 key pair mixed into a session --------


def subject_info(context: bytes, session_id: bytes, subject_key_id: bytes, encap: bytes) -> bytes:
    """HKDF info of a subject secret: binds the session and both subject fields."""
    return LABEL_SUBJECT + context + session_id + subject_key_id + encap


def subject_secret(parent: SessionKeys, subject_key_id: bytes, encap: bytes, ikm: bytes) -> bytes:
    """``HKDF-SHA256(salt = session_secret, ikm = subject_ikm, info = subject_info)``."""
    if len(subject_key_id) != SUBJECT_KEY_ID_LEN or len(encap) != _X25519_LEN:
        raise ValueError("a subject key id is 16 bytes and its encapsulation 32")
    info = subject_info(parent.context, parent.session_id, subject_key_id, encap)
    return HKDF(hashes.SHA256(), 32, salt=parent.secret, info=info).derive(ikm)


def subject_session(
    parent: SessionKeys, subject_key_id: bytes, encap: bytes, ikm: bytes
) -> SessionKeys:
    """The keys a subject-sealed envelope of ``parent``'s session is encrypted and committed
    with: aead key, nonce base and commitment expanded from the subject secret (4.3's labels)."""
    secret = subject_secret(parent, subject_key_id, encap, ikm)
    return _expand_keys(secret, parent.context, parent.session_id, parent.encapsulation)


def subject_encapsulate(seed: bytes, subject_public: bytes) -> tuple[bytes, bytes]:
    """Producer side: ``(subject encapsulation, subject_ikm)`` from a 32-byte ephemeral seed
    and the subject public key. Raises WeakSharedSecret for a small-order subject public key."""
    eph = _x25519_private(seed)
    if len(subject_public) != _X25519_LEN:
        raise ValueError("a subject public key is 32 bytes")
    shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(subject_public))
    _check_shared(shared)
    return eph.public_key().public_bytes_raw(), shared


def subject_private_key(subject_private: bytes) -> x25519.X25519PrivateKey:
    """The loaded form of a subject private key (openers keep this one: loading costs more than
    the exchange)."""
    if len(subject_private) != _X25519_LEN:
        raise ValueError("a subject private key is 32 bytes")
    return _x25519_private(subject_private)


def subject_decapsulate(subject_private: bytes | x25519.X25519PrivateKey, encap: bytes) -> bytes:
    """Consumer side: ``subject_ikm = X25519(subject private, subject encapsulation)``. Raises
    WeakSharedSecret (a ValueError) for an all-zero result (a small-order encapsulation)."""
    if isinstance(subject_private, bytes):
        subject_private = subject_private_key(subject_private)
    if len(encap) != _X25519_LEN:
        raise ValueError("a subject encapsulation is 32 bytes")
    shared = subject_private.exchange(x25519.X25519PublicKey.from_public_bytes(encap))
    _check_shared(shared)
    return shared


def start_session(
    suite: Suite, topic: bytes, epoch: int, epoch_public: bytes, seed: bytes
) -> SessionKeys:
    """Producer side: a new session from 32 random bytes against the epoch public key."""
    context = session_context(suite, topic, epoch, epoch_public)
    if suite is Suite.X25519:
        eph = _x25519_private(seed)
        session_id = eph.public_key().public_bytes_raw()
        shared = eph.exchange(_hpke_public(suite, epoch_public))  # type: ignore[arg-type]
        _check_shared(shared)
        return _schedule(shared, context, session_id, b"")
    encapsulation = hpke_seal(suite, epoch_public, seed, LABEL_HYBRID + context)
    return _schedule(seed, context, hashlib.sha256(encapsulation).digest(), encapsulation)


def join_session(
    suite: Suite,
    topic: bytes,
    epoch: int,
    epoch_keys: KeyPair,
    session_id: bytes,
    encapsulation: bytes,
) -> SessionKeys:
    """Consumer side: the same SessionKeys from the epoch private key and what the envelope carries.

    Raises ValueError (or cryptography.exceptions.InvalidTag) when the session cannot be joined.
    """
    context = session_context(suite, topic, epoch, epoch_keys.public)
    if suite is Suite.X25519:
        peer = x25519.X25519PublicKey.from_public_bytes(session_id)
        shared = _x25519_private(epoch_keys.private).exchange(peer)
        _check_shared(shared)
        return _schedule(shared, context, session_id, b"")
    if hashlib.sha256(encapsulation).digest() != session_id:
        raise ValueError("session id does not match the encapsulation")
    secret = hpke_open(suite, epoch_keys.private, encapsulation, LABEL_HYBRID + context)
    return _schedule(secret, context, session_id, encapsulation)


def _check_shared(shared: bytes) -> None:
    if not any(shared):
        raise WeakSharedSecret("all-zero X25519 shared secret")
