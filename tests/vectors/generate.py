"""Writes the known-answer vectors: ``python -m tests.vectors.generate`` (from the repo root).

Fixed keys, randomness and time go in; exact bytes (and every intermediate value of the key
schedule) come out. ``tests/test_vectors.py`` recomputes them and fails on any difference, so a
change to the wire format or key schedule cannot slip through without regenerating (and a
SPEC.md change).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from sealedbus.core import suites
from sealedbus.core.signed import Certificate, EpochDescription, RevocationList
from sealedbus.core.suites import Suite
from sealedbus.keys import authority
from sealedbus.keys.source import EpochKeys
from sealedbus.sealer import Sealer

HERE = Path(__file__).parent
T0_MS = 1_790_000_000_000  # 2026-09-21T12:53:20Z
# mallory's certificates up to serial 9 revoked for key compromise; orders-api's up to serial 1
# retired from T0 + 1 s; orders-api's up to serial 1 withdrawn from "payments"
REVOCATIONS = RevocationList(
    T0_MS,
    3,
    (("mallory", 9, 0), ("orders-api", 1, T0_MS + 1000)),
    (("orders-api", "payments", 1),),
)


def seed(label: str, n: int = 32) -> bytes:
    """Deterministic test bytes: SHA-256 based, so anyone can recompute them."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"sealedbus vector {label} {counter}".encode()).digest()
        counter += 1
    return out[:n]


class VectorKeys:
    """A KeySource over fixed keys: one producer, one consumer, one topic, one epoch."""

    def __init__(self, topic: str = "orders", suite: Suite = Suite.X25519) -> None:
        self.root = Ed25519PrivateKey.from_private_bytes(seed("root"))
        self.signing = Ed25519PrivateKey.from_private_bytes(seed("producer identity"))
        receive = suites.keypair_from_seed(Suite.X25519, seed("producer receive"))
        self.cert = authority.issue_certificate(
            "orders-api",
            self.signing.public_key().public_bytes_raw(),
            Suite.X25519,
            receive.public,
            [topic],
            [],
            T0_MS,
            86_400_000,
            1,
        )
        policy = authority.TopicPolicy(
            topic, frozenset(["orders-api"]), frozenset(["billing"]), suite=suite
        )
        self.description, self.epoch = authority.new_epoch(
            policy, 7, T0_MS - 60_000, seed("epoch", suite.seed_len)
        )
        self.revoked = RevocationList(T0_MS, 1)

    @property
    def member(self) -> str:
        return "orders-api"

    def identity(self, now_ms: int, refresh: bool = False) -> tuple[Ed25519PrivateKey, Certificate]:
        return self.signing, self.cert

    def sealing_epoch(self, topic: str, now_ms: int) -> EpochDescription:
        return self.description

    def epoch_keys(self, topic: str, epoch: int, now_ms: int) -> EpochKeys:
        from sealedbus.errors import Reason, UnopenableEnvelope

        if (topic, epoch) != (self.description.topic, self.description.epoch):
            raise UnopenableEnvelope(Reason.EPOCH_UNKNOWN)
        return EpochKeys(self.description, self.epoch)

    def topic_key(self, topic: str, now_ms: int) -> bytes:
        return seed("topic key")

    def sender_certificate(self, cert_id: bytes, now_ms: int) -> Certificate | None:
        return self.cert if cert_id == self.cert.cert_id else None

    def revocations(self, now_ms: int) -> RevocationList:
        return self.revoked


class FixedRng:
    def __init__(self, label: str) -> None:
        self.label, self.calls = label, 0

    def __call__(self, n: int) -> bytes:
        self.calls += 1
        return seed(f"{self.label} {self.calls}", n)


CASES: list[dict[str, Any]] = [
    {"name": "per-message, empty body", "mode": "single", "messages": [{"body": ""}]},
    {
        "name": "per-message, headers, content type, ttl",
        "mode": "single",
        "messages": [
            {
                "body": "7b2270617469656e74223a22502d3130333432227d",
                "headers": {"schema": "patient-event/1", "n": 3},
                "content_type": "application/json",
                "ttl_ms": 60_000,
            }
        ],
    },
    {
        "name": "batch of 3",
        "mode": "batch",
        "messages": [{"body": "61"}, {"body": "6262"}, {"body": "636363"}],
    },
    {
        "name": "batch of 5 (unbalanced tree)",
        "mode": "batch",
        "messages": [{"body": f"{i:02x}" * (i + 1)} for i in range(5)],
    },
    {
        "name": "per-message, three in one session",
        "mode": "single",
        "messages": [{"body": "01"}, {"body": "0202"}, {"body": "030303"}],
    },
]


def _schedule_values(keys: EpochKeys, topic: str, session_seed: bytes) -> dict[str, str]:
    """Every intermediate of SPEC.md section 4 for the X25519 suite, as hex."""
    eph = x25519.X25519PrivateKey.from_private_bytes(session_seed)
    session_id = eph.public_key().public_bytes_raw()
    shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(keys.description.public_key))
    context = suites.session_context(
        Suite.X25519, topic.encode(), keys.description.epoch, keys.description.public_key
    )
    secret = HKDF(
        hashes.SHA256(), 32, salt=None, info=suites.LABEL_SESSION + context + session_id
    ).derive(shared)

    def expand(label: bytes, n: int) -> str:
        return HKDFExpand(hashes.SHA256(), n, info=label).derive(secret).hex()

    return {
        "session_seed": session_seed.hex(),
        "session_id": session_id.hex(),
        "shared_secret": shared.hex(),
        "context": context.hex(),
        "session_secret": secret.hex(),
        "aead_key": expand(suites.LABEL_AEAD_KEY, 32),
        "nonce_base": expand(suites.LABEL_NONCE, 12),
        "commitment": expand(suites.LABEL_COMMITMENT, 32),
    }


def seal_case(case: dict[str, Any], keys: VectorKeys) -> list[bytes]:
    """Seal one case's messages with fixed randomness and time; returns the envelopes."""
    rng = FixedRng(case["name"])
    sealer = Sealer(keys, clock=lambda: T0_MS / 1000, rng=rng, batch_size=0xFFFF)
    out: list[bytes] = []
    for m in case["messages"]:
        ttl = m.get("ttl_ms")
        kwargs: dict[str, Any] = {
            "headers": m.get("headers"),
            "content_type": m.get("content_type", ""),
            "ttl": None if ttl is None else ttl / 1000,
        }
        body = bytes.fromhex(m["body"])
        if case["mode"] == "single":
            out.append(sealer.seal("orders", body, **kwargs))
        else:
            sealer.add("orders", body, **kwargs)
    if case["mode"] == "batch":
        out = [s.envelope for s in sealer.flush()]
    return out


def build() -> dict[str, Any]:
    keys = VectorKeys()
    epoch_keys = keys.epoch_keys("orders", 7, T0_MS)
    cases = []
    for case in CASES:
        envelopes = seal_case(case, keys)
        cases.append(
            {
                **case,
                "key_schedule": _schedule_values(
                    epoch_keys, "orders", seed(f"{case['name']} 1", 32)
                ),
                "envelopes": [e.hex() for e in envelopes],
            }
        )
    return {
        "description": "sealedbus wire format v1 known-answer vectors (SPEC.md section 9)",
        "topic": "orders",
        "now_ms": T0_MS,
        "root_public_key": keys.root.public_key().public_bytes_raw().hex(),
        "producer_identity_private": seed("producer identity").hex(),
        "producer_identity_public": keys.signing.public_key().public_bytes_raw().hex(),
        "certificate": keys.cert.sign(keys.root).hex(),
        "certificate_id": keys.cert.cert_id.hex(),
        "epoch": 7,
        "epoch_private_key": keys.epoch.private.hex(),
        "epoch_public_key": keys.epoch.public.hex(),
        "epoch_description": keys.description.sign(keys.root).hex(),
        "cases": cases,
    }


def sealed_at(keys: VectorKeys, t_ms: int, ttl: float | None, label: str) -> bytes:
    sealer = Sealer(keys, clock=lambda: t_ms / 1000, rng=FixedRng(label))
    return sealer.seal("orders", b"timed", ttl=ttl)


def objects() -> dict[str, Any]:
    """Authority objects and the hybrid suite. HPKE draws its own randomness, so grants, topic
    keys and hybrid envelopes are opening vectors: the test opens them with the fixed keys."""
    keys, hybrid = VectorKeys(), VectorKeys(topic="vault", suite=Suite.HYBRID)
    consumer = suites.keypair_from_seed(Suite.X25519, seed("consumer receive"))
    consumer_identity = Ed25519PrivateKey.from_private_bytes(seed("consumer identity"))
    consumer_cert = authority.issue_certificate(
        "billing",
        consumer_identity.public_key().public_bytes_raw(),
        Suite.X25519,
        consumer.public,
        [],
        ["orders"],
        T0_MS,
        86_400_000,
        2,
    )
    revocations = REVOCATIONS
    return {
        "description": "authority objects and hybrid-suite envelopes (SPEC.md sections 4.2, 6)",
        "consumer_receive_private": consumer.private.hex(),
        "consumer_certificate": consumer_cert.sign(keys.root).hex(),
        "grant": authority.seal_grant(keys.root, keys.description, keys.epoch, consumer_cert).hex(),
        "topic_key": seed("topic key").hex(),
        "topic_key_grant": authority.seal_topic_key(
            keys.root, "orders", consumer_cert, seed("topic key")
        ).hex(),
        "revocation_list": revocations.sign(keys.root).hex(),
        "hybrid_epoch_private_key": hybrid.epoch.private.hex(),
        "hybrid_epoch_public_key": hybrid.epoch.public.hex(),
        "hybrid_epoch_description": hybrid.description.sign(keys.root).hex(),
        "hybrid_envelope": Sealer(hybrid, clock=lambda: T0_MS / 1000).seal("vault", b"pq").hex(),
    }


def negative(vectors: dict[str, Any]) -> list[dict[str, str]]:
    """Envelopes derived from the positive vectors, each with the reason it must be refused."""
    good = bytes.fromhex(vectors["cases"][1]["envelopes"][0])
    batch = bytes.fromhex(vectors["cases"][3]["envelopes"][2])
    other_batch = bytes.fromhex(vectors["cases"][2]["envelopes"][1])

    def flip(data: bytes, i: int) -> str:
        b = bytearray(data)
        b[i] ^= 0x01
        return b.hex()

    head = 74 + len("application/json")
    keys = VectorKeys()
    return [
        {"name": "no magic", "envelope": b"plain text".hex(), "reason": "not_envelope"},
        {
            "name": "version 2",
            "envelope": (good[:2] + b"\x02" + good[3:]).hex(),
            "reason": "unsupported_version",
        },
        {
            "name": "unknown suite 9",
            "envelope": (good[:3] + b"\x09" + good[4:]).hex(),
            "reason": "suite_not_allowed",
        },
        {
            "name": "reserved flag bit",
            "envelope": (good[:4] + b"\x02" + good[5:]).hex(),
            "reason": "malformed",
        },
        {"name": "truncated header", "envelope": good[:40].hex(), "reason": "malformed"},
        {"name": "truncated tag", "envelope": good[: head + 64 + 10].hex(), "reason": "malformed"},
        {"name": "epoch changed", "envelope": flip(good, 8), "reason": "epoch_unknown"},
        {
            "name": "sender certificate id changed",
            "envelope": flip(good, 9),
            "reason": "unknown_sender",
        },
        {"name": "sequence changed", "envelope": flip(good, 60), "reason": "bad_signature"},
        {"name": "content type changed", "envelope": flip(good, 75), "reason": "bad_signature"},
        {"name": "signature changed", "envelope": flip(good, head + 3), "reason": "bad_signature"},
        {
            "name": "ciphertext changed",
            "envelope": flip(good, len(good) - 20),
            "reason": "bad_signature",
        },
        {"name": "tag changed", "envelope": flip(good, len(good) - 1), "reason": "bad_signature"},
        {
            "name": "extended by one byte",
            "envelope": (good + b"\x00").hex(),
            "reason": "bad_signature",
        },
        {
            "name": "batch path element changed",
            "envelope": flip(batch, 74 + 64 + 4 + 5),
            "reason": "bad_signature",
        },
        {
            "name": "batch index out of range",
            "envelope": (batch[: 74 + 64] + b"\x00\x09\x00\x05" + batch[74 + 68 :]).hex(),
            "reason": "malformed",
        },
        {
            "name": "small-order session id (zero point)",
            "envelope": (good[:25] + bytes(32) + good[57:]).hex(),
            "reason": "decrypt_failed",
        },
        {
            "name": "hybrid suite claimed on an X25519 topic",
            "envelope": (good[:3] + b"\x02" + good[4:head] + bytes(1168) + good[head:]).hex(),
            "reason": "suite_not_allowed",
        },
        {
            "name": "expired (sealed 10 min ago with a 60 s ttl)",
            "envelope": sealed_at(keys, T0_MS - 600_000, 60.0, "expired").hex(),
            "reason": "expired",
        },
        {
            "name": "from the future (sealed 10 min ahead)",
            "envelope": sealed_at(keys, T0_MS + 600_000, None, "future").hex(),
            "reason": "from_future",
        },
        {
            "name": "opened under another topic",
            "envelope": good.hex(),
            "topic": "invoices",
            "reason": "sender_not_allowed",
        },
        {
            "name": "opened twice",
            "envelope": good.hex(),
            "open_first": "yes",
            "reason": "duplicate",
        },
        {
            "name": "batch root signature from another batch",
            "envelope": (batch[:74] + other_batch[74:138] + batch[138:]).hex(),
            "reason": "bad_signature",
        },
    ]


def main() -> None:
    vectors = build()
    (HERE / "envelopes.json").write_text(json.dumps(vectors, indent=1) + "\n")
    (HERE / "negative.json").write_text(json.dumps(negative(vectors), indent=1) + "\n")
    (HERE / "objects.json").write_text(json.dumps(objects(), indent=1) + "\n")
    print(f"wrote {len(vectors['cases'])} positive cases and the negative vectors to {HERE}")


if __name__ == "__main__":
    main()
