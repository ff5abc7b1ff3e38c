"""Tamper-evident audit log: a SHA-256 hash chain over every security-relevant act, with a
checkpoint (the chain head signed by the root key) every ``CHECKPOINT_EVERY`` entries.

``entry_hash = SHA-256(LABEL || previous hash || msgpack([seq, at_ms, actor, action, detail]))``.
Editing, inserting or deleting an entry breaks every later hash; rewriting the whole tail breaks
the signed checkpoints, which only the root key can make: ``verify`` requires one at every
multiple of ``CHECKPOINT_EVERY`` up to the head, and the head itself is signed on every append
(table ``audit_head``), so neither dropping checkpoints nor truncating the tail goes unnoticed.
Entries carry names, topics and epochs, never key material or tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, insert, select, update

from sealedbus.core.suites import PROTOCOL
from sealedbus.kds.store import GENESIS, audit, audit_checkpoints, audit_head, heads

CHECKPOINT_EVERY = 64
_ENTRY_LABEL = PROTOCOL + b" audit entry\x00"
_CHECKPOINT_LABEL = PROTOCOL + b" audit checkpoint\x00"
_HEAD_LABEL = PROTOCOL + b" audit head\x00"


def entry_hash(prev: bytes, seq: int, at_ms: int, actor: str, action: str, detail: str) -> bytes:
    body = msgpack.packb([seq, at_ms, actor, action, detail], use_bin_type=True)
    return hashlib.sha256(_ENTRY_LABEL + prev + bytes(body)).digest()


def checkpoint_message(seq: int, digest: bytes) -> bytes:
    return _CHECKPOINT_LABEL + seq.to_bytes(8, "big") + digest


def head_message(seq: int, digest: bytes) -> bytes:
    return _HEAD_LABEL + seq.to_bytes(8, "big") + digest


def append(
    conn: Connection,
    root: Ed25519PrivateKey,
    at_ms: int,
    actor: str,
    action: str,
    **detail: Any,
) -> None:
    """Add an entry inside the caller's write transaction (which holds the audit head lock)."""
    head = conn.execute(select(heads.c.seq, heads.c.hash).where(heads.c.name == "audit")).one()
    seq = head.seq + 1
    text = json.dumps(detail, sort_keys=True, separators=(",", ":"))
    digest = entry_hash(head.hash, seq, at_ms, actor, action, text)
    conn.execute(
        insert(audit).values(
            seq=seq, at_ms=at_ms, actor=actor, action=action, detail=text, hash=digest
        )
    )
    conn.execute(update(heads).where(heads.c.name == "audit").values(seq=seq, hash=digest))
    signed = {"seq": seq, "hash": digest, "signature": root.sign(head_message(seq, digest))}
    if (
        conn.execute(
            update(audit_head).where(audit_head.c.name == "audit").values(**signed)
        ).rowcount
        == 0
    ):
        conn.execute(insert(audit_head).values(name="audit", **signed))
    if seq % CHECKPOINT_EVERY == 0:
        checkpoint(conn, root, seq, digest)


def checkpoint(conn: Connection, root: Ed25519PrivateKey, seq: int, digest: bytes) -> None:
    if (
        seq
        and conn.execute(
            select(audit_checkpoints.c.seq).where(audit_checkpoints.c.seq == seq)
        ).first()
        is None
    ):
        conn.execute(
            insert(audit_checkpoints).values(
                seq=seq, hash=digest, signature=root.sign(checkpoint_message(seq, digest))
            )
        )


@dataclass(frozen=True)
class AuditReport:
    entries: int
    checkpoints: int
    ok: bool
    problem: str = ""


def verify(conn: Connection, root: Ed25519PublicKey) -> AuditReport:
    """Walk the chain from the start and check every hash and every checkpoint signature."""
    prev, expected_seq, count = GENESIS, 1, 0
    hashes: dict[int, bytes] = {}
    for row in conn.execute(select(audit).order_by(audit.c.seq)):
        if row.seq != expected_seq:
            return AuditReport(count, 0, False, f"entry {expected_seq} is missing")
        digest = entry_hash(prev, row.seq, row.at_ms, row.actor, row.action, row.detail)
        if digest != row.hash:
            return AuditReport(count, 0, False, f"entry {row.seq} was altered")
        hashes[row.seq] = digest
        prev, expected_seq, count = digest, expected_seq + 1, count + 1
    checkpoints = {cp.seq: cp for cp in conn.execute(select(audit_checkpoints))}
    for seq in range(CHECKPOINT_EVERY, count + 1, CHECKPOINT_EVERY):
        cp = checkpoints.get(seq)
        if cp is None:
            return AuditReport(count, 0, False, f"checkpoint {seq} is missing")
        try:
            root.verify(cp.signature, checkpoint_message(cp.seq, cp.hash))
        except InvalidSignature:
            return AuditReport(count, 0, False, f"checkpoint {seq} is not signed")
        if hashes[seq] != cp.hash:
            return AuditReport(count, 0, False, f"chain differs at checkpoint {seq}")
    if any(seq > count for seq in checkpoints):
        return AuditReport(count, 0, False, "entries after a checkpoint were removed")
    head = conn.execute(select(heads.c.seq, heads.c.hash).where(heads.c.name == "audit")).one()
    signed = conn.execute(select(audit_head).where(audit_head.c.name == "audit")).first()
    if count and signed is None:
        return AuditReport(count, 0, False, "the chain head is not signed")
    if signed is not None:
        try:
            root.verify(signed.signature, head_message(signed.seq, signed.hash))
        except InvalidSignature:
            return AuditReport(count, 0, False, "the chain head signature does not verify")
        if (signed.seq, signed.hash) != (count, prev):
            return AuditReport(count, 0, False, "the chain differs from its signed head")
    if (head.seq, head.hash) != (count, prev):
        return AuditReport(count, 0, False, "entries after the head were removed")
    return AuditReport(count, count // CHECKPOINT_EVERY, True)
