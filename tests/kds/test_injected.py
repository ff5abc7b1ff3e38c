"""Randomness and time are injected, not read from globals: enrollment tokens, admin session ids
and the key tokenizer's key-service time come from the rng and clock the caller gives."""

from __future__ import annotations

import base64
import time

from sealedbus.brokers._common import KeyTokenizer
from sealedbus.kds import admin_sessions
from sealedbus.keys import signing
from sealedbus.keys.local import LocalKeyService
from tests.kds._harness import Kds


def test_enrollment_token_comes_from_the_given_rng() -> None:
    token, public = signing.new_token(lambda n: b"\x07" * n)
    assert token == base64.urlsafe_b64encode(b"\x07" * 32).rstrip(b"=").decode()
    assert len(token) == 43  # what secrets.token_urlsafe(32) gives
    assert public == signing.token_key(token).public_key().public_bytes_raw()
    assert signing.new_token()[0] != signing.new_token()[0]  # the default draws fresh bytes


def test_admin_session_id_comes_from_the_service_rng(kds: Kds) -> None:
    drawn: list[bytes] = []

    def rng(n: int) -> bytes:
        drawn.append(bytes([len(drawn) + 1]) * n)
        return drawn[-1]

    kds.service.rng = rng
    _, session_id, _ = admin_sessions.open_session(
        kds.service, kds.admin_identity.name, kds.admin_identity.signing_key.public_key(), 60
    )
    assert drawn and session_id == drawn[0].hex()


def test_key_tokenizer_asks_the_key_service_at_the_given_time() -> None:
    keys = LocalKeyService()
    keys.create_topic("orders", producers=["p"], consumers=[])
    member = keys.enroll("p")
    asked: list[int] = []

    class Recording:
        def topic_key(self, topic: str, now_ms: int) -> bytes:
            asked.append(now_ms)
            return member.topic_key(topic, now_ms)

    now = time.time() + 5.0
    tokenizer = KeyTokenizer.from_keys(Recording(), clock=lambda: now)  # type: ignore[arg-type]
    assert tokenizer.tokenize("orders", b"patient-42") == KeyTokenizer.from_keys(member).tokenize(
        "orders", b"patient-42"
    )
    assert asked == [int(now * 1000)]
