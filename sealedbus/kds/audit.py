"""Tamper-evident audit log: a SHA-256 hash chain over every security-relevant act, with a
checkpoint (the chain head signed by the root key) every ``CHECKPOINT_EVERY`` entries.

``entry_hash = SHA-256(LABEL || previous hash || msgpack([seq, at_ms, actor, action, detail]))``.
Editing, inserting or deleting an entry breaks every later hash; rewriting the whole tail breaks
the signed checkpoints, which only the root key can make: ``verify`` requires one at every
multiple of ``CHECKPOINT_EVERY`` up to the head, and the head itself is signed on every append
(table ``audit_head``), so neither dropping checkpoints nor truncating the tail goes unnoticed.
Entries carry names, topics and epochs, never key material or tokens.

All of that lives in the database, which someone with write access and an old copy could roll
back; ``published_head`` is the head as the KDS publishes it to be kept elsewhere (SPEC.md 6.12),
and ``verify(..., expect=)`` checks the chain still holds such a head.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, insert, select, update

from sealedbus.core.signed import AuditHead
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


def published_head(conn: Connection, root: Ed25519PrivateKey, now_ms: int) -> bytes:
    """The chain head as the KDS publishes it (``AuditHead``, SPEC.md 6.12), signed for now."""
    head = conn.execute(select(heads.c.seq, heads.c.hash).where(heads.c.name == "audit")).one()
    return AuditHead(int(head.seq), bytes(head.hash), now_ms).sign(root)


def entries(conn: Connection, since: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` entries after sequence ``since``, in order, each with the hash of the
    entry before it (``prev_hash``) so that a reader can re-check the chain from any point."""
    rows = conn.execute(
        select(audit).where(audit.c.seq >= since).order_by(audit.c.seq).limit(limit + 1)
    ).all()
    out: list[dict[str, Any]] = []
    prev = GENESIS if since == 0 else None
    for row in rows:
        if row.seq == since:  # the entry before the first one asked for: its hash only
            prev = bytes(row.hash)
            continue
        if len(out) == limit:
            break
        out.append(
            {
                "seq": row.seq,
                "at_ms": row.at_ms,
                "actor": row.actor,
                "action": row.action,
                "detail": row.detail,
                "prev_hash": (prev or b"").hex(),
                "hash": bytes(row.hash).hex(),
            }
        )
        prev = bytes(row.hash)
    return out


def verify(
    conn: Connection, root: Ed25519PublicKey, expect: tuple[int, bytes] | None = None
) -> AuditReport:
    """Walk the chain from the start and check every hash and every checkpoint signature;
    with ``expect`` (a sequence and chain hash kept outside the database, from a published
    head), also that the chain still holds that hash at that sequence."""
    report = _verify(conn, root)
    if expect is None or not report.ok:
        return report
    seq, digest = expect
    if report.entries < seq:
        return replace(
            report,
            ok=False,
            problem=f"the chain ends at {report.entries}, before the "
            f"expected head {seq}: it was rolled back",
        )
    if seq and conn.execute(select(audit.c.hash).where(audit.c.seq == seq)).scalar() != digest:
        return replace(
            report,
            ok=False,
            problem=f"entry {seq} differs from the expected head: the chain "
            "was rolled back and rewritten (a fork)",
        )
    if not seq and digest != GENESIS:
        return replace(report, ok=False, problem="the expected head is not of this chain")
    return report


def _verify(conn: Connection, root: Ed25519PublicKey) -> AuditReport:
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
