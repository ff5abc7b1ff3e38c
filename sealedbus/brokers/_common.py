"""What every sealed broker adapter does the same way: decide the fate of an envelope that did
not open, name the dead-letter headers, bind and tokenize message keys, and handle a dead letter
that cannot be delivered.

Fate of a message whose ``Opener.open`` raised:
- ``DuplicateEnvelope`` with reason ``duplicate``: acknowledged and dropped (the opener already
  counted it as ``rejected(duplicate)``); the application saw it once already;
- a refusal about *this reader* (``reader_refusal``): the member may not consume the topic
  (``not_granted`` for itself), is revoked or unknown to the KDS, or the KDS answer could not be
  trusted: not the message's fault. The adapter gives the message back untouched (RabbitMQ: nack
  with requeue; Kafka: no commit, the record stays first in line) and raises ``AccessDenied``
  (or the key-service error itself); it never dead-letters;
- a retryable error (``KeyServiceUnavailable``, or any ``SealedbusError`` with ``retryable``:
  the KDS is down past the caches, the held revocation list is too old): given back the same
  way and raised, so the caller can back off;
- any other ``InvalidEnvelope`` (tampered, expired, moved to another topic or key, unauthorized
  sender, an epoch that predates this reader's access, outside the replay window, not an
  envelope): sent to the dead-letter destination with the reason in its headers, then
  acknowledged; never delivered. Counted, and reported to the KDS's audit log when the key
  source can (``report_dead_letter``). When the dead-letter destination does not take it, the
  ``UndeliverablePolicy`` decides (retry with backoff, park, then skip): never an endless loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealedbus.core import wire
from sealedbus.core.envelope import Headers, HeaderValue
from sealedbus.errors import (
    AccessDenied,
    BrokerError,
    ConfigurationError,
    InvalidEnvelope,
    KdsCode,
    KeyServiceError,
    Reason,
    SealedbusError,
    UnauthenticEnvelope,
    UnopenableEnvelope,
)
from sealedbus.keys.source import KeySource
from sealedbus.opener import OpenedMessage, Opener

REASON_HEADER = "x-sealedbus-reason"
TOPIC_HEADER = "x-sealedbus-topic"
DETAIL_HEADER = "x-sealedbus-detail"
# Sealed header that carries the original message key (the clear key may be a token).
SEALED_KEY_HEADER = "sealedbus.key"
# Sealed header that carries the key as the broker carries it (bytes; "" for no key), so a
# broker that moves a record to another key or routing key is caught (checked on open).
BROKER_KEY_HEADER = "sealedbus.broker-key"
RESERVED_HEADERS = frozenset({SEALED_KEY_HEADER, BROKER_KEY_HEADER})
SEALED_CONTENT_TYPE = "application/vnd.sealedbus"

log = logging.getLogger("sealedbus.brokers")


def is_duplicate(exc: InvalidEnvelope) -> bool:
    """A replay or redelivery of something already handed on: acknowledge and drop it."""
    return exc.reason is Reason.DUPLICATE


def reader_refusal(topic: str, exc: SealedbusError) -> SealedbusError | None:
    """The error to raise when ``exc`` (from ``Opener.open``) is not the message's fault: a
    refusal of this reader (as ``AccessDenied`` when the KDS said ``not_granted`` for the member
    itself) or a retryable error. None when the message itself is bad (dead-letter it)."""
    if isinstance(exc, KeyServiceError) or exc.retryable:
        return exc
    if (
        isinstance(exc, UnopenableEnvelope)
        and exc.reason is Reason.NOT_GRANTED
        # an epoch that ended before this member's access began: the message's fault
        and exc.refusal is not KdsCode.PREDATES_ACCESS
    ):
        denied = AccessDenied(
            f"this consumer may not read {topic!r} ({exc.detail or exc.reason.value}); the "
            "message was given back to the broker, not dead-lettered: check the key file and "
            "the topic's consumers"
        )
        denied.__cause__ = exc
        return denied
    return None


def bind_key(broker_key: bytes | None, headers: Headers | None) -> Headers:
    """The sealed headers with the broker's key (or routing key) bound into them."""
    return {**(headers or {}), BROKER_KEY_HEADER: "" if broker_key is None else broker_key}


def check_bound_key(headers: Mapping[str, object], broker_key: bytes | str | None) -> None:
    """Refuse a message whose broker key differs from the one sealed in it (a broker moved it).
    Envelopes from producers that bound no key pass (their key is only ``broker_key``)."""
    bound = headers.get(BROKER_KEY_HEADER)
    if bound is None:
        return
    if isinstance(broker_key, str):
        broker_key = broker_key.encode()
    if (None if bound == "" else bound) != (None if broker_key is None else bytes(broker_key)):
        raise UnauthenticEnvelope(Reason.BAD_SIGNATURE, "the broker key differs from the sealed")


def report_dead_letter(
    opener: Opener, topic: str, exc: InvalidEnvelope, data: bytes | None
) -> None:
    """Count a dead letter and, when the opener's key source can (``KeyServiceClient``), report
    it to the KDS's audit log: the reason, the topic and the sender certificate id from the
    envelope's clear header; never the payload or headers. Rate limited by the key source."""
    opener.metrics.dead_lettered(topic, exc.reason.value)
    report = getattr(opener.keys, "report_open_failure", None)
    if report is None:
        return
    sender = None
    if data and wire.is_envelope(data):
        with contextlib.suppress(ValueError, InvalidEnvelope):
            sender = wire.parse(data).header.cert_id
    with contextlib.suppress(Exception):  # evidence never costs the consumer its message
        report(topic, exc.reason.value, sender, int(time.time() * 1000))


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
        if name in RESERVED_HEADERS:
            raise ConfigurationError(f"header name {name!r} is reserved")
    return headers  # type: ignore[return-value]  # checked just above


class KeyTokenizer:
    """Replaces a message key with HMAC-SHA256(per-topic key, key): partitioning stays stable and
    the broker never sees the identifier (a patient id, say) in clear.

    Tokens are deterministic: every record with the same key carries the same token, so whoever
    reads the broker can link records about the same identifier (not learn it). See
    docs/threat-model.md.

    Every producer of a topic must use the same per-topic key: ``from_keys`` takes it from the
    key service (``KeySource.topic_key``, served sealed to each member); ``from_secret`` derives
    it from a secret the producers share instead.
    """

    def __init__(self, topic_key: Callable[[str], bytes]) -> None:
        self._topic_key = topic_key
        self._cache: dict[str, bytes] = {}

    @classmethod
    def from_keys(cls, keys: KeySource, clock: Callable[[], float] = time.time) -> KeyTokenizer:
        """Per-topic keys from the key service (the same for every producer and consumer);
        ``clock`` is the time the key service is asked at (seconds, like ``time.time``)."""
        return cls(lambda topic: keys.topic_key(topic, int(clock() * 1000)))

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
    """The key to put on the broker and the headers to seal: the original key travels sealed,
    and the broker's key (a token with a tokenizer) is bound, so the consumer can check it."""
    if key is None:  # nothing to bind: ``.key`` is None whatever key the broker shows
        return None, headers
    if tokenizer is None:
        return key, bind_key(key, headers)
    token = tokenizer.tokenize(topic, key)
    return token, bind_key(token, {**(headers or {}), SEALED_KEY_HEADER: key})


def application_headers(headers: Mapping[str, HeaderValue]) -> dict[str, HeaderValue]:
    """The sealed headers without the ones sealedbus reserves for itself."""
    return {k: v for k, v in headers.items() if k not in RESERVED_HEADERS}


def take_bound_key(headers: dict[str, HeaderValue], broker_key: bytes | str | None) -> None:
    """``check_bound_key``, then leave only the application's headers in ``headers``
    (``application_headers``) in place: for a map fresh from the opener that nothing else holds
    yet (a copy per message costs as much as the check). Raises UnauthenticEnvelope."""
    check_bound_key(headers, broker_key)
    headers.pop(BROKER_KEY_HEADER, None)
    headers.pop(SEALED_KEY_HEADER, None)


class OpenedRecord:
    """What adapters hand the application: the opened ``message`` and the broker's ``record``.

    ``key`` is the key the producer sealed (authenticated); ``broker_key`` is the record key as
    the broker delivered it (a token with a ``KeyTokenizer``). When the envelope binds its key
    (every producer of this version does) the adapter has checked that they match."""

    message: OpenedMessage
    record: Any

    @property
    def value(self) -> bytes:
        return self.message.body

    @property
    def headers(self) -> dict[str, HeaderValue]:
        """The sealed application headers."""
        return application_headers(self.message.headers)

    @property
    def key(self) -> bytes | None:
        """The key the producer sealed, or None (no key, or a producer that sealed none: read
        ``broker_key`` then, knowing the broker could have changed it)."""
        headers = self.message.headers
        sealed = headers.get(SEALED_KEY_HEADER, headers.get(BROKER_KEY_HEADER))
        return sealed if isinstance(sealed, bytes) else None

    @property
    def broker_key(self) -> bytes | None:
        """The record key as the broker delivered it: unauthenticated unless the envelope
        bound it (then it was checked against the sealed copy)."""
        key = self.record.key
        return None if key is None else bytes(key)

    @property
    def sender(self) -> str | None:
        return self.message.sender


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A refused record that its dead-letter destination did not take."""

    topic: str
    where: str  # "partition 2 offset 17", "routing key orders.eu", ...
    value: bytes
    reason: str
    error: str


@dataclass(frozen=True)
class UndeliverablePolicy:
    """What an adapter does with a refused record the dead-letter destination does not take
    (too large for it, the topic or exchange is missing, the broker refuses).

    1. retry: ``attempts`` tries in all, ``backoff`` seconds after the first failure, doubling up
       to ``max_backoff`` (Kafka holds only that record's partition meanwhile; RabbitMQ requeues
       it and raises to the application, which paces the retries);
    2. park: hand it to ``on_park`` and/or write it to a file under ``park_dir`` (the value as
       is, named after its SHA-256; the reason in a ``.reason`` file beside it);
    3. skip: acknowledge it, log an error with the reason and where it came from (never the
       value) and count it in the adapter's ``undeliverable`` counter.

    Never an endless loop: after ``attempts`` the record is parked (when parking fails, it is
    skipped all the same, and the log says so).
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    park_dir: str | Path | None = None
    on_park: Callable[[Undeliverable], None] | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.max_backoff < self.backoff:
            raise ConfigurationError("attempts >= 1 and 0 <= backoff <= max_backoff")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed tries."""
        return float(min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1)))

    def retrying(self, exc: BaseException, failures: int) -> BrokerError:
        """What the application hears while a dead letter is retried: a retryable error (the
        adapter retries, then parks), whatever the broker's error said."""
        error = BrokerError(
            f"dead-lettering failed ({failures} of {self.attempts} tries; then parked and "
            f"skipped): {exc}",
            retryable=True,
        )
        error.__cause__ = exc
        return error

    def park(self, item: Undeliverable) -> bool:
        """Park ``item`` (callback and/or file); False when nothing could hold it."""
        parked = False
        try:
            if self.on_park is not None:
                self.on_park(item)
                parked = True
            if self.park_dir is not None:
                folder = Path(self.park_dir)
                folder.mkdir(parents=True, exist_ok=True)
                name = hashlib.sha256(item.value).hexdigest()
                tmp = folder / f".{name}.tmp"
                tmp.write_bytes(item.value)
                os.replace(tmp, folder / name)
                (folder / f"{name}.reason").write_text(
                    f"topic={item.topic}\nwhere={item.where}\nreason={item.reason}\n"
                    f"error={item.error}\n"
                )
                parked = True
        except Exception as exc:  # parking must not stop the consumer: log and skip
            log.error("could not park an undeliverable dead letter of %s: %r", item.topic, exc)
            return False
        return parked

    def give_up(self, item: Undeliverable) -> None:
        """Park, then skip with an error in the log."""
        parked = self.park(item)
        log.error(
            "dead letter of %s (%s, reason %s, %d bytes, sha256 %s) not deliverable: %s; %s",
            item.topic,
            item.where,
            item.reason,
            len(item.value),
            hashlib.sha256(item.value).hexdigest()[:16],
            item.error,
            "parked and skipped" if parked else "skipped (not parked)",
        )
