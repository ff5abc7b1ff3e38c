"""Sealing and opening of one envelope, given keys: the pure steps Sealer and Opener compose.

Sealing: ``draft`` encrypts (AES-256-GCM, counter nonce, header as associated data), then
``finish_single`` signs it or ``finish_batch`` signs a Merkle root over many drafts.
Opening: ``wire.parse``, then ``verify_single`` or ``batch_root`` + a root check, then ``decrypt``.
"""

from __future__ import annotations

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
    leaf: bytes  # signed content (SPEC.md 5.1)


def associated_data(topic: bytes, header_bytes: bytes) -> bytes:
    return _LEN16.pack(len(topic)) + topic + header_bytes


def encode_inner(headers: Headers | None, body: bytes) -> bytes:
    packed = bytes(msgpack.packb(dict(headers), use_bin_type=True)) if headers else b""
    if len(packed) > MAX_HEADERS_BYTES:
        raise ValueError("sealed headers exceed 65535 bytes")
    return _LEN16.pack(len(packed)) + packed + body


def decode_inner(plaintext: bytes) -> tuple[dict[str, HeaderValue], bytes]:
    if len(plaintext) < _LEN16.size:
        raise MalformedEnvelope(Reason.MALFORMED, "inner payload truncated")
    (n,) = _LEN16.unpack_from(plaintext)
    if len(plaintext) < 2 + n:
        raise MalformedEnvelope(Reason.MALFORMED, "inner headers truncated")
    if n == 0:
        return {}, plaintext[2:]
    try:
        headers = msgpack.unpackb(plaintext[2 : 2 + n], raw=False, strict_map_key=True)
    except (ValueError, TypeError) as exc:
        raise MalformedEnvelope(Reason.MALFORMED, "inner headers do not parse") from exc
    if not isinstance(headers, dict) or not all(
        isinstance(v, str | bytes | int) for v in headers.values()
    ):
        raise MalformedEnvelope(Reason.MALFORMED, "inner headers are not a string map")
    return headers, plaintext[2 + n :]


def draft(
    topic: bytes, keys: SessionKeys, header: wire.Header, headers: Headers | None, body: bytes
) -> Draft:
    header_bytes = header.encode()
    ciphertext = keys.aead.encrypt(
        keys.nonce(header.seq),
        encode_inner(headers, body),
        associated_data(topic, header_bytes),
    )
    return Draft(
        header_bytes,
        ciphertext,
        wire.signed_content(topic, header_bytes, keys.commitment, ciphertext),
    )


def finish_single(signer: Ed25519PrivateKey, d: Draft) -> bytes:
    return d.header_bytes + signer.sign(wire.SIGN_MESSAGE + d.leaf) + d.ciphertext


def finish_batch(signer: Ed25519PrivateKey, drafts: Sequence[Draft]) -> list[bytes]:
    size = len(drafts)
    if not 0 < size <= merkle.MAX_TREE_SIZE:
        raise ValueError("a batch holds 1 to 65535 envelopes")
    root, paths = merkle.build([merkle.leaf_hash(d.leaf) for d in drafts])
    signature = signer.sign(wire.root_signing_input(size, root))
    return [
        d.header_bytes
        + signature
        + wire.encode_batch_proof(wire.BatchProof(i, size, path))
        + d.ciphertext
        for i, (d, path) in enumerate(zip(drafts, paths, strict=True))
    ]


def verify_single(identity: Ed25519PublicKey, parsed: wire.Parsed, leaf: bytes) -> None:
    try:
        identity.verify(parsed.signature, wire.SIGN_MESSAGE + leaf)
    except InvalidSignature:
        raise UnauthenticEnvelope(Reason.BAD_SIGNATURE) from None


def batch_root(parsed: wire.Parsed, leaf: bytes) -> bytes:
    """The Merkle root this envelope's path leads to (its signature is checked by the caller)."""
    proof = parsed.proof
    assert proof is not None  # noqa: S101 - parse() sets it exactly when the batch flag is set
    return merkle.root_from_path(proof.index, proof.size, merkle.leaf_hash(leaf), proof.path)


def verify_root(identity: Ed25519PublicKey, parsed: wire.Parsed, root: bytes) -> None:
    assert parsed.proof is not None  # noqa: S101 - as above
    try:
        identity.verify(parsed.signature, wire.root_signing_input(parsed.proof.size, root))
    except InvalidSignature:
        raise UnauthenticEnvelope(Reason.BAD_SIGNATURE) from None


def decrypt(
    topic: bytes, keys: SessionKeys, parsed: wire.Parsed
) -> tuple[dict[str, HeaderValue], bytes]:
    try:
        plaintext = keys.aead.decrypt(
            keys.nonce(parsed.header.seq),
            parsed.ciphertext,
            associated_data(topic, parsed.header_bytes),
        )
    except InvalidTag:
        raise UnopenableEnvelope(Reason.DECRYPT_FAILED) from None
    return decode_inner(plaintext)
