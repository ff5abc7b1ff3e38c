"""What every sealed broker adapter does the same way: decide the fate of an envelope that did
not open, name the dead-letter headers, and tokenize message keys.

Fate of a message whose ``Opener.open`` raised:
- ``DuplicateEnvelope`` with reason ``duplicate``: acknowledged and dropped (the opener already
  counted it as ``rejected(duplicate)``); the application saw it once already;
- any other ``InvalidEnvelope`` (tampered, expired, moved to another topic, unauthorized sender,
  not granted, outside the replay window, not an envelope): sent to the dead-letter destination
  with the reason in its headers, then acknowledged; never delivered;
- ``KeyServiceUnavailable`` (retryable): not a bad message; the adapter gives it back to the
  broker (or keeps it for the next try) and raises, so the caller can back off.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealedbus.core.envelope import Headers, HeaderValue
from sealedbus.errors import ConfigurationError, InvalidEnvelope, Reason
from sealedbus.keys.source import KeySource
from sealedbus.opener import OpenedMessage

REASON_HEADER = "x-sealedbus-reason"
TOPIC_HEADER = "x-sealedbus-topic"
DETAIL_HEADER = "x-sealedbus-detail"
# Sealed header that carries the original message key when the clear key is a token.
SEALED_KEY_HEADER = "sealedbus.key"
SEALED_CONTENT_TYPE = "application/vnd.sealedbus"


def is_duplicate(exc: InvalidEnvelope) -> bool:
    """A replay or redelivery of something already handed on: acknowledge and drop it."""
    return exc.reason is Reason.DUPLICATE


def dead_letter_headers(topic: str, exc: InvalidEnvelope) -> dict[str, str]:
    """Headers added to a dead-lettered message (reason codes and names only, never secrets)."""
    headers = {REASON_HEADER: exc.reason.value, TOPIC_HEADER: topic}
    if exc.detail:
        headers[DETAIL_HEADER] = exc.detail[:200]
    return headers


def check_headers(headers: Mapping[str, object] | None) -> Headers | None:
    """Sealed headers must be a map of str to str, bytes or int (what the opener accepts)."""
    if not headers:
        return None
    for name, value in headers.items():
        if (
            not isinstance(name, str)
            or isinstance(value, bool)
            or not isinstance(value, str | bytes | int)
        ):
            raise ConfigurationError(
                f"header {name!r}: sealed header values must be str, bytes or int"
            )
        if name == SEALED_KEY_HEADER:
            raise ConfigurationError(f"header name {SEALED_KEY_HEADER!r} is reserved")
    return headers  # type: ignore[return-value]  # checked just above


class KeyTokenizer:
    """Replaces a message key with HMAC-SHA256(per-topic key, key): partitioning stays stable and
    the broker never sees the identifier (a patient id, say) in clear.

    Every producer of a topic must use the same per-topic key: ``from_keys`` takes it from the
    key service (``KeySource.topic_key``, served sealed to each member); ``from_secret`` derives
    it from a secret the producers share instead.
    """

    def __init__(self, topic_key: Callable[[str], bytes]) -> None:
        self._topic_key = topic_key
        self._cache: dict[str, bytes] = {}

    @classmethod
    def from_keys(cls, keys: KeySource) -> KeyTokenizer:
        """Per-topic keys from the key service (the same for every producer and consumer)."""
        return cls(lambda topic: keys.topic_key(topic, int(time.time() * 1000)))

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyTokenizer:
        """Per-topic keys derived with HKDF-SHA256 from one secret of at least 32 bytes."""
        if len(secret) < 32:
            raise ConfigurationError("the tokenization secret needs at least 32 bytes")

        def derive(topic: str) -> bytes:
            hkdf = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=b"sealedbus/1 key token\x00" + topic.encode(),
            )
            return hkdf.derive(secret)

        return cls(derive)

    def tokenize(self, topic: str, key: bytes) -> bytes:
        """The 32-byte token that travels in clear instead of ``key``."""
        topic_key = self._cache.get(topic)
        if topic_key is None:
            topic_key = self._cache[topic] = self._topic_key(topic)
            if len(topic_key) < 32:
                raise ConfigurationError("per-topic tokenization keys need at least 32 bytes")
        return hmac.new(topic_key, key, hashlib.sha256).digest()


def tokenize_key(
    tokenizer: KeyTokenizer | None, topic: str, key: bytes | None, headers: Headers | None
) -> tuple[bytes | None, Headers | None]:
    """The key to put on the broker and the headers to seal: with a tokenizer, the clear key is
    the token and the original key travels sealed (the consumer gets it back)."""
    if tokenizer is None or key is None:
        return key, headers
    return tokenizer.tokenize(topic, key), {**(headers or {}), SEALED_KEY_HEADER: key}


def original_key(headers: Mapping[str, object], clear_key: bytes | None) -> bytes | None:
    """The message key as the producer gave it (sealed copy when the clear one is a token)."""
    sealed = headers.get(SEALED_KEY_HEADER)
    return sealed if isinstance(sealed, bytes) else clear_key


class OpenedRecord:
    """What adapters hand the application: the opened ``message`` and the broker's ``record``
    (with a ``key``), seen as the producer sent them."""

    message: OpenedMessage
    record: Any

    @property
    def value(self) -> bytes:
        return self.message.body

    @property
    def headers(self) -> dict[str, HeaderValue]:
        """The sealed application headers."""
        return {k: v for k, v in self.message.headers.items() if k != SEALED_KEY_HEADER}

    @property
    def key(self) -> bytes | None:
        """The key the producer gave (restored from the sealed copy when it was tokenized)."""
        return original_key(self.message.headers, self.record.key)

    @property
    def sender(self) -> str | None:
        return self.message.sender
