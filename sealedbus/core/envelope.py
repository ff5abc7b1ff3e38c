"""Sealing and opening of one envelope, given keys: the pure steps Sealer and Opener compose.

Sealing: ``draft`` encrypts (AES-256-GCM, counter nonce, header as associated data), then
``finish_single`` signs it or ``finish_batch`` signs a Merkle root over many drafts.
Opening: ``wire.parse``, then ``verify_single`` or ``batch_root`` + ``verify_root``, then
``open_body``. A ``SessionContext`` holds what is the same for every message of a session.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealedbus.core import merkle, wire
from sealedbus.core.suites import SessionKeys
from sealedbus.errors import MalformedEnvelope, Reason, UnauthenticEnvelope, UnopenableEnvelope

HeaderValue = str | bytes | int
Headers = Mapping[str, HeaderValue]
_LEN16 = struct.Struct(">H")
MAX_HEADERS_BYTES = 0xFFFF


@dataclass(frozen=True, slots=True)
class Draft:
    """An encrypted, not yet signed envelope."""

    header_bytes: bytes
    ciphertext: bytes
    signed: bytes  # per-message: the signed content (SPEC.md 5.1); batch: its Merkle leaf hash


class SessionContext:
    """One session on one topic, with everything per-message work can reuse precomputed."""

    __slots__ = ("_aad_prefix", "_leaf_base", "_signed_prefix", "keys", "topic")

    def __init__(self, topic: bytes, keys: SessionKeys) -> None:
        self.topic = topic
        self.keys = keys
        self._aad_prefix = _LEN16.pack(len(topic)) + topic
        self._signed_prefix = wire.SIGN_ENVELOPE + self._aad_prefix
        self._leaf_base = hashlib.sha256(b"\x00" + self._signed_prefix)

    def encrypt(self, seq: int, header_bytes: bytes, plaintext: bytes) -> bytes:
        return self.keys.aead.encrypt(
            self.keys.nonce(seq), plaintext, self._aad_prefix + header_bytes
        )

    def decrypt(self, seq: int, header_bytes: bytes, ciphertext: bytes) -> bytes:
        try:
            return self.keys.aead.decrypt(
                self.keys.nonce(seq), ciphertext, self._aad_prefix + header_bytes
            )
        except InvalidTag:
            raise UnopenableEnvelope(Reason.DECRYPT_FAILED) from None

    def signed_content(self, header_bytes: bytes, ciphertext: bytes) -> bytes:
        """Equals ``wire.signed_content(topic, header_bytes, commitment, ciphertext)``."""
        return self._signed_prefix + header_bytes + self.keys.commitment + ciphertext

    def leaf_hash(self, header_bytes: bytes, ciphertext: bytes) -> bytes:
        """Equals ``merkle.leaf_hash(self.signed_content(...))`` without building it."""
        h = self._leaf_base.copy()
        h.update(header_bytes)
        h.update(self.keys.commitment)
        h.update(ciphertext)
        return h.digest()


_HEADER_TYPES = (str, bytes, int)  # of a sealed header's value (not bool)


def pack_headers(headers: Headers | None, packer: msgpack.Packer | None = None) -> bytes:
    """The sealed headers as the inner payload carries them after their u16 length (b"" for
    none). Raises TypeError or ValueError for headers that ``decode_inner`` would refuse.

    ``packer``: a ``msgpack.Packer(use_bin_type=True)`` the caller reuses (and never shares
    between threads at once): ``msgpack.packb`` makes one, and allocates its buffer, per call."""
    if not headers:
        return b""
    for key, value in headers.items():  # names str; values of _HEADER_TYPES
        if not isinstance(key, str) or not isinstance(value, _HEADER_TYPES) or type(value) is bool:
            raise TypeError("sealed headers map str to str, bytes or int (not bool)")
    plain = headers if type(headers) is dict else dict(headers)
    try:
        if packer is None:
            packed = bytes(msgpack.packb(plain, use_bin_type=True))
        else:
            packed = bytes(packer.pack(plain))
    except OverflowError:
        raise ValueError("header integers must fit in 64 bits") from None
    if len(packed) > MAX_HEADERS_BYTES:
        raise ValueError("sealed headers exceed 65535 bytes")
    return packed


def encode_inner(headers: Headers | None, body: bytes) -> bytes:
    """Raises TypeError or ValueError for headers that ``decode_inner`` would refuse."""
    packed = pack_headers(headers)
    return _LEN16.pack(len(packed)) + packed + body


def decode_inner(plaintext: bytes) -> tuple[dict[str, HeaderValue], bytes]:
    if len(plaintext) < _LEN16.size:
        raise MalformedEnvelope(Reason.MALFORMED, "inner payload truncated")
    (n,) = _LEN16.unpack_from(plaintext)
    if len(plaintext) < 2 + n:
        raise MalformedEnvelope(Reason.MALFORMED, "inner headers truncated")
    if n == 0:
        return {}, plaintext[2:]
    return decode_headers(plaintext[2 : 2 + n]), plaintext[2 + n :]


def decode_headers(packed: bytes) -> dict[str, HeaderValue]:
    """The sealed headers from their ``h`` > 0 packed bytes: a map of unique str names to str,
    bytes or int (not bool) values, not empty. Raises MalformedEnvelope."""
    try:
        headers = msgpack.unpackb(packed, raw=False, strict_map_key=True)
    except (ValueError, TypeError):
        raise MalformedEnvelope(Reason.MALFORMED, "inner headers do not parse") from None
    if type(headers) is not dict:
        raise MalformedEnvelope(Reason.MALFORMED, "inner headers are not a string map")
    if len(headers) != _map_size(packed):  # a name given twice: msgpack kept the last value
        raise MalformedEnvelope(Reason.MALFORMED, "inner headers do not parse")
    for key, value in headers.items():  # names str; values of _HEADER_TYPES
        if not isinstance(key, str) or not isinstance(value, _HEADER_TYPES) or type(value) is bool:
            raise MalformedEnvelope(Reason.MALFORMED, "inner headers are not a string map")
    if not headers:  # no headers are encoded as h = 0: one encoding, so one signed byte string
        raise MalformedEnvelope(Reason.MALFORMED, "empty header map with h > 0")
    return headers


def _map_size(packed: bytes) -> int:
    """The number of entries the msgpack map in ``packed`` declares (it parsed as a map)."""
    first = packed[0]
    if first == 0xDE:  # map 16
        return int.from_bytes(packed[1:3], "big")
    if first == 0xDF:  # map 32
        return int.from_bytes(packed[1:5], "big")
    return first & 0x0F  # fixmap: 0x80-0x8f


def draft(
    ctx: SessionContext,
    header_bytes: bytes,
    seq: int,
    headers: Headers | None,
    body: bytes,
    *,
    batch: bool,
) -> Draft:
    ciphertext = ctx.encrypt(seq, header_bytes, encode_inner(headers, body))
    signed = (ctx.leaf_hash if batch else ctx.signed_content)(header_bytes, ciphertext)
    return Draft(header_bytes, ciphertext, signed)


def finish_single(signer: Ed25519PrivateKey, d: Draft) -> bytes:
    return d.header_bytes + signer.sign(wire.SIGN_MESSAGE + d.signed) + d.ciphertext


def finish_batch(signer: Ed25519PrivateKey, drafts: Sequence[Draft]) -> list[bytes]:
    size = len(drafts)
    if not 0 < size <= merkle.MAX_TREE_SIZE:
        raise ValueError("a batch holds 1 to 65535 envelopes")
    root, paths = merkle.build([d.signed for d in drafts])
    signature = signer.sign(wire.root_signing_input(size, root))
    return [
        d.header_bytes + signature + wire.BATCH_FIXED.pack(i, size) + b"".join(path) + d.ciphertext
        for i, (d, path) in enumerate(zip(drafts, paths, strict=True))
    ]


def verify_single(identity: Ed25519PublicKey, parsed: wire.Parsed, ctx: SessionContext) -> None:
    signed = ctx.signed_content(parsed.header_bytes, parsed.ciphertext)
    try:
        identity.verify(parsed.signature, wire.SIGN_MESSAGE + signed)
    except InvalidSignature:
        raise UnauthenticEnvelope(Reason.BAD_SIGNATURE) from None


def batch_root(parsed: wire.Parsed, leaf: bytes) -> bytes:
    """The Merkle root the envelope's path leads to from its ``leaf`` hash
    (``SessionContext.leaf_hash``); the root signature is checked by the caller.

    Raises UnauthenticEnvelope when the path does not fit the index and size."""
    proof = parsed.proof
    if proof is None:
        raise UnauthenticEnvelope(Reason.BAD_SIGNATURE, "no batch proof")
    try:
        return merkle.root_from_path(proof.index, proof.size, leaf, proof.path)
    except ValueError:
        raise UnauthenticEnvelope(Reason.BAD_SIGNATURE, "bad inclusion path") from None


def verify_root(identity: Ed25519PublicKey, parsed: wire.Parsed, root: bytes) -> None:
    proof = parsed.proof
    if proof is None:
        raise UnauthenticEnvelope(Reason.BAD_SIGNATURE, "no batch proof")
    try:
        identity.verify(parsed.signature, wire.root_signing_input(proof.size, root))
    except InvalidSignature:
        raise UnauthenticEnvelope(Reason.BAD_SIGNATURE) from None


def open_body(ctx: SessionContext, parsed: wire.Parsed) -> tuple[dict[str, HeaderValue], bytes]:
    plaintext = ctx.decrypt(parsed.header.seq, parsed.header_bytes, parsed.ciphertext)
    return decode_inner(plaintext)
