"""Envelope wire format v1 (SPEC.md section 2): fixed-width big-endian fields, no length-driven
allocation. ``encode_header`` and ``parse`` are inverses; ``parse`` never trusts a length it has
not checked against the bytes actually present.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sealedbus.core import merkle
from sealedbus.core.suites import Suite
from sealedbus.errors import MalformedEnvelope, NotAnEnvelope, Reason

MAGIC = b"\x53\xb1"  # "S" then 0xB1: not valid UTF-8 at the start, so no text message matches
VERSION = 1
FLAG_BATCH = 0x01
FLAG_SUBJECT = 0x02  # sealed for a data subject: subject key id and encapsulation follow
FLAGS_KNOWN = FLAG_BATCH | FLAG_SUBJECT
SUBJECT_KEY_ID_LEN = 16
SUBJECT_ENCAPSULATION_LEN = 32
SUBJECT_FIELDS_LEN = SUBJECT_KEY_ID_LEN + SUBJECT_ENCAPSULATION_LEN
CERT_ID_LEN = 16
SESSION_ID_LEN = 32
SIGNATURE_LEN = 64
TAG_LEN = 16
HEADER_FIXED = struct.Struct(">2sBBBI16s32sIQIB")  # through the content-type length byte
HEADER_HEAD = struct.Struct(">2sBBBI16s32s")  # the part that is the same for a whole session
HEADER_TAIL = struct.Struct(">IQIB")  # sequence, sent at, ttl, content-type length
BATCH_FIXED = struct.Struct(">HH")
MAX_SEQUENCE = 0xFFFFFFFF
MAX_TTL_MS = 0xFFFFFFFF
MAX_CONTENT_TYPE = 255
INNER_HEADERS_LEN = struct.Struct(">H")
_SUITES = {int(s): s for s in Suite}
_ENCAPSULATION_LEN = {s: s.encapsulation_len for s in Suite}
SIGN_ENVELOPE = b"sealedbus/1 envelope\x00"
SIGN_MESSAGE = b"sealedbus/1 message\x00"
SIGN_BATCH_ROOT = b"sealedbus/1 batch root\x00"


@dataclass(slots=True)
class Header:
    """The clear-text fields of an envelope; all of them are authenticated."""

    suite: Suite
    batch: bool
    epoch: int
    cert_id: bytes
    session_id: bytes
    seq: int
    sent_at_ms: int
    ttl_ms: int  # 0: no expiry
    content_type: str
    encapsulation: bytes  # hybrid suite only
    subject_key_id: bytes = b""  # sealed for a subject (flag bit 1): 16 bytes, else empty
    subject_encapsulation: bytes = b""  # ... and the 32-byte X25519 ephemeral public key

    @property
    def subject(self) -> bool:
        return bool(self.subject_key_id)

    def encode(self) -> bytes:
        head = header_head(
            self.suite, self.batch, self.epoch, self.cert_id, self.session_id, self.subject
        )
        return head + header_tail(
            self.seq,
            self.sent_at_ms,
            self.ttl_ms,
            self.content_type.encode(),
            self.encapsulation,
            self.subject_key_id + self.subject_encapsulation,
        )


def header_head(
    suite: Suite,
    batch: bool,
    epoch: int,
    cert_id: bytes,
    session_id: bytes,
    subject: bool = False,
) -> bytes:
    """Header bytes from the magic through the session id (fixed for a session and mode)."""
    flags = (FLAG_BATCH if batch else 0) | (FLAG_SUBJECT if subject else 0)
    return HEADER_HEAD.pack(MAGIC, VERSION, suite, flags, epoch, cert_id, session_id)


def header_tail(
    seq: int,
    sent_at_ms: int,
    ttl_ms: int,
    content_type: bytes,
    encapsulation: bytes,
    subject: bytes = b"",
) -> bytes:
    """Header bytes after the session id: per-message fields, content type, the subject fields
    (subject key id || subject encapsulation, only with the subject flag), encapsulation."""
    if len(content_type) > MAX_CONTENT_TYPE:
        raise ValueError("content type longer than 255 bytes")
    if len(subject) not in (0, SUBJECT_FIELDS_LEN):
        raise ValueError("subject fields are 16 + 32 bytes")
    return (
        HEADER_TAIL.pack(seq, sent_at_ms, ttl_ms, len(content_type))
        + content_type
        + subject
        + encapsulation
    )


@dataclass(slots=True)
class BatchProof:
    index: int
    size: int
    path: list[bytes]


@dataclass(slots=True)
class Parsed:
    header: Header
    header_bytes: bytes
    signature: bytes  # per-message signature, or the batch root signature
    proof: BatchProof | None
    ciphertext: bytes


def signed_content(
    topic: bytes, header_bytes: bytes, commitment: bytes, ciphertext: bytes
) -> bytes:
    """What the sender signs (per message) or hashes into a Merkle leaf (batch): SPEC.md 5."""
    return (
        SIGN_ENVELOPE
        + struct.pack(">H", len(topic))
        + topic
        + header_bytes
        + commitment
        + ciphertext
    )


def root_signing_input(size: int, root: bytes) -> bytes:
    return SIGN_BATCH_ROOT + struct.pack(">H", size) + root


def is_envelope(data: bytes) -> bool:
    return data[:2] == MAGIC


def parse(data: bytes) -> Parsed:
    """Split an envelope into its fields; raise a MalformedEnvelope/NotAnEnvelope on any defect."""
    if data[:2] != MAGIC:
        raise NotAnEnvelope()
    if len(data) < HEADER_FIXED.size:
        raise MalformedEnvelope(Reason.MALFORMED, "truncated header")
    (_, version, suite_id, flags, epoch, cert_id, session_id, seq, sent_at, ttl, ct_len) = (
        HEADER_FIXED.unpack_from(data)
    )
    if version != VERSION:
        raise MalformedEnvelope(Reason.VERSION, f"version {version}")
    suite = _SUITES.get(suite_id)
    if suite is None:
        raise MalformedEnvelope(Reason.SUITE, f"suite id {suite_id}")
    if flags & ~FLAGS_KNOWN:
        raise MalformedEnvelope(Reason.MALFORMED, "reserved flag bits set")
    pos = HEADER_FIXED.size
    try:
        content_type = data[pos : pos + ct_len].decode()
    except UnicodeDecodeError:
        raise MalformedEnvelope(Reason.MALFORMED, "content type is not UTF-8") from None
    pos += ct_len
    subject_key_id = subject_encapsulation = b""
    if flags & FLAG_SUBJECT:
        if len(data) < pos + SUBJECT_FIELDS_LEN:
            raise MalformedEnvelope(Reason.MALFORMED, "truncated subject fields")
        subject_key_id = data[pos : pos + SUBJECT_KEY_ID_LEN]
        subject_encapsulation = data[pos + SUBJECT_KEY_ID_LEN : pos + SUBJECT_FIELDS_LEN]
        pos += SUBJECT_FIELDS_LEN
    encapsulation_len = _ENCAPSULATION_LEN[suite]
    encapsulation = data[pos : pos + encapsulation_len]
    pos += encapsulation_len
    header_end = pos
    signature = data[pos : pos + SIGNATURE_LEN]
    pos += SIGNATURE_LEN
    proof = None
    if flags & FLAG_BATCH:
        if len(data) < pos + BATCH_FIXED.size:
            raise MalformedEnvelope(Reason.MALFORMED, "truncated batch proof")
        index, size = BATCH_FIXED.unpack_from(data, pos)
        pos += BATCH_FIXED.size
        try:
            depth = len(merkle.path_ranges(index, size))
        except ValueError:
            raise MalformedEnvelope(Reason.MALFORMED, "batch index out of range") from None
        path = [data[p : p + 32] for p in range(pos, pos + 32 * depth, 32)]
        pos += 32 * depth
        proof = BatchProof(index, size, path)
    if len(data) < pos + TAG_LEN:
        raise MalformedEnvelope(Reason.MALFORMED, "truncated envelope")
    header = Header(
        suite=suite,
        batch=bool(flags & FLAG_BATCH),
        epoch=epoch,
        cert_id=cert_id,
        session_id=session_id,
        seq=seq,
        sent_at_ms=sent_at,
        ttl_ms=ttl,
        content_type=content_type,
        encapsulation=encapsulation,
        subject_key_id=subject_key_id,
        subject_encapsulation=subject_encapsulation,
    )
    return Parsed(header, data[:header_end], signature, proof, data[pos:])


def overhead(
    suite: Suite, content_type: str = "", batch_size: int | None = None, subject: bool = False
) -> int:
    """Envelope bytes beyond the body with no application headers (SPEC.md 2.2)."""
    fixed = HEADER_FIXED.size + len(content_type.encode()) + suite.encapsulation_len
    fixed += SUBJECT_FIELDS_LEN if subject else 0
    fixed += SIGNATURE_LEN + INNER_HEADERS_LEN.size + TAG_LEN
    if batch_size is None:
        return fixed
    depth = max((merkle.path_length(i, batch_size) for i in range(batch_size)), default=0)
    return fixed + BATCH_FIXED.size + 32 * depth
