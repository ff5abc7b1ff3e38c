"""Sealer: the producer side. Holds one session per topic, reads the clock, draws randomness, and
calls the pure core (``sealedbus.core``) to seal.

Two signing modes:
- ``seal()``: one envelope, one Ed25519 signature (lowest latency);
- ``add()`` / ``flush()``: envelopes join an open batch; when ``batch_size`` is reached or on
  ``flush()`` one Merkle root is signed for the whole batch and the envelopes come out, in order,
  each with the caller's ``context`` so adapters can send them where they belong.
"""

from __future__ import annotations

import operator
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealedbus.core import backend, envelope, suites, wire
from sealedbus.core.envelope import Headers
from sealedbus.core.signed import Certificate, EpochDescription, SubjectKey
from sealedbus.errors import ConfigurationError, KeyServiceError, UntrustedResponse
from sealedbus.keys.source import KeySource
from sealedbus.keys.ttlcache import TtlCache
from sealedbus.metrics import Metrics, NoMetrics, key_service_error_kind

_LIVE: weakref.WeakSet[Sealer] = weakref.WeakSet()
_TOPIC = operator.itemgetter(9)  # of a backend.SealItem
_BODY = operator.itemgetter(8)


def _reset_in_forked_child() -> None:
    for sealer in list(_LIVE):
        sealer._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reset_in_forked_child)

MAX_SESSION_MESSAGES = 1 << 24  # far inside AES-GCM's usage limits for one key
DEFAULT_MAX_BODY = 16 << 20
SUBJECT_CACHE_TTL = 60.0  # seconds a subject key is cached: an erasure takes effect within it
SUBJECT_CACHE_SIZE = 10_000
_SUBJECTS_PER_SESSION = 10_000  # subject ephemerals one session keeps before starting afresh


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed envelope with the topic it was sealed for and the caller's context."""

    topic: str
    envelope: bytes
    context: Any = None


@dataclass(slots=True)
class _Session:
    ctx: backend.CoreSession
    epoch: EpochDescription
    next_seq: int
    expires_ms: int  # epoch end or age limit, whichever comes first
    heads: dict[tuple[bool, bytes, bool], bytes] = field(default_factory=dict)
    # per subject key id: subject key id || subject encapsulation, and the subject session
    subjects: dict[bytes, tuple[bytes, backend.CoreSession]] = field(default_factory=dict)

    def head(self, batch: bool, cert_id: bytes, subject: bool = False) -> bytes:
        head = self.heads.get((batch, cert_id, subject))
        if head is None:
            head = self.heads[(batch, cert_id, subject)] = wire.header_head(
                self.epoch.suite, batch, self.epoch.epoch, cert_id, self.ctx.session_id, subject
            )
        return head


# A topic's fast path (``Sealer.add``/``seal`` of any message without a subject): until
# ``deadline`` (ms) nothing that ``_draft`` checks can have changed, so a message needs only its
# checked ``_options`` and a sequence number. (deadline, session, its core handle, head batch,
# head per-message, tail, signer)
_Fast = tuple[int, _Session, Any, bytes, bytes, bytes, Ed25519PrivateKey]
# A message's ttl (ms, 0: none), content type and packed sealed headers (``Sealer._options``)
_Options = tuple[int, bytes, bytes]
_DEFAULTS: _Options = (0, b"", b"")


class Sealer:
    """Seals messages for the topics its member may produce to."""

    def __init__(
        self,
        keys: KeySource,
        *,
        batch_size: int = 64,
        max_session_messages: int = 1 << 20,
        max_session_seconds: float = 3600.0,
        epoch_check_interval: float = 1.0,
        max_body: int = DEFAULT_MAX_BODY,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
        core: str | None = None,
        subject_cache_ttl: float = SUBJECT_CACHE_TTL,
        subject_cache_size: int = SUBJECT_CACHE_SIZE,
    ) -> None:
        if not 1 <= batch_size <= 0xFFFF:
            raise ConfigurationError("batch_size must be between 1 and 65535")
        if not 1 <= max_session_messages <= MAX_SESSION_MESSAGES:
            raise ConfigurationError(f"max_session_messages must be 1..{MAX_SESSION_MESSAGES}")
        if max_session_seconds <= 0 or epoch_check_interval <= 0 or max_body <= 0:
            raise ConfigurationError("limits and intervals must be positive")
        self.keys = keys
        self._core = backend.get(core)  # "pure", "native", or None: the default (SEALEDBUS_NATIVE)
        self.batch_size = batch_size
        self.max_session_messages = max_session_messages
        self._max_age_ms = int(max_session_seconds * 1000)
        self._check_ms = int(epoch_check_interval * 1000)
        self.max_body = max_body
        self.metrics: Metrics = metrics or NoMetrics()
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._checked_ms: dict[str, int] = {}
        self._identity: tuple[Ed25519PrivateKey, Certificate] | None = None
        self._identity_checked_ms = -1
        self._fast: dict[str, _Fast] = {}
        self._packer = msgpack.Packer(use_bin_type=True)  # used under the lock only
        self._pending: list[backend.SealItem] = []
        self.pending_since: float | None = None  # clock() when the open batch got its first one
        try:  # (topic, subject) -> its public key: an erasure reaches this sealer within the TTL
            self._subject_keys: TtlCache[tuple[str, str], SubjectKey] = TtlCache(
                subject_cache_size, int(subject_cache_ttl * 1000)
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        _LIVE.add(self)

    def _after_fork_in_child(self) -> None:
        """A forked child shares the parent's sessions and sequence numbers: continuing them would
        reuse AES-GCM nonces. It starts afresh; the parent still sends the open batch."""
        self._lock = threading.Lock()
        self._sessions.clear()
        self._fast.clear()
        self._packer = msgpack.Packer(use_bin_type=True)
        self._checked_ms.clear()
        self._subject_keys.clear()
        self._pending = []
        self.pending_since = None

    def seal(
        self,
        topic: str,
        body: bytes,
        *,
        headers: Headers | None = None,
        content_type: str = "",
        ttl: float | None = None,
        subject: str | None = None,
    ) -> bytes:
        """Seal one message with its own signature. Raises AccessDenied, UnknownTopic,
        KeyServiceUnavailable or ConfigurationError; never returns unsealed bytes.

        ``subject``: seal it for a data subject (e.g. a patient id): its keys then also depend
        on that subject's key on the topic, and erasing the subject (``erase_subject``, ``sealedbus
        admin subject erase``) makes it unopenable. The subject id never leaves this process
        in clear (the envelope carries a random subject key id)."""
        start = time.perf_counter()
        with self._lock:
            options = self._options(headers, content_type, ttl)  # checked first, as by add
            try:
                drafted = None
                if subject is None:
                    drafted = self._shortcut(topic, body, options)
                if drafted is None:
                    drafted = self._draft(topic, body, options, batch=False, subject=subject)[:2]
                signer, item = drafted
            except KeyServiceError as exc:
                self.metrics.key_service_error(topic, key_service_error_kind(exc))
                raise
            sealed: bytes = self._core.seal(self._core.signer(signer), [item], False)[0]
        self.metrics.sealed(topic, 1, len(body), time.perf_counter() - start)
        return sealed

    def add(
        self,
        topic: str,
        body: bytes,
        *,
        headers: Headers | None = None,
        content_type: str = "",
        ttl: float | None = None,
        context: Any = None,
        subject: str | None = None,
    ) -> list[Sealed]:
        """Add a message to the open batch; returns the whole batch once it is full, else [].
        ``subject`` as for ``seal``."""
        lock = self._lock  # acquire/release: half the cost of `with` per message
        lock.acquire()
        try:
            ttl_ms, content_type_b, packed = options = (
                self._options(headers, content_type, ttl)
                if headers or content_type or ttl is not None
                else _DEFAULTS
            )
            pending = self._pending
            fast = self._fast.get(topic)
            # the fast path, as _shortcut (inline: a call per message is 3% of a batch's time)
            if fast is not None and subject is None and len(body) <= self.max_body:
                now_s = self._clock()
                now = int(now_s * 1000)
                deadline, session, handle, head, _, tail, _ = fast
                seq = session.next_seq
                if now < deadline and seq < self.max_session_messages:
                    session.next_seq = seq + 1
                    if not pending:
                        self.pending_since = now_s
                    pending.append(
                        (
                            handle,
                            head,
                            seq,
                            now,
                            ttl_ms,
                            content_type_b,
                            tail,
                            packed,
                            body,
                            topic,
                            context,
                        )
                    )
                    if len(pending) < self.batch_size:
                        return []
                    return self._close_batch()
            try:
                _, item, now_s = self._draft(
                    topic, body, options, batch=True, subject=subject, context=context
                )
            except KeyServiceError as exc:
                self.metrics.key_service_error(topic, key_service_error_kind(exc))
                raise
            if not pending:
                self.pending_since = now_s
            pending.append(item)
            if len(pending) < self.batch_size:
                return []
            return self._close_batch()
        finally:
            lock.release()

    def flush(self) -> list[Sealed]:
        """Close the open batch now (adapters call this every few ms and before sending)."""
        with self._lock:
            return self._close_batch() if self._pending else []

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _close_batch(self) -> list[Sealed]:
        start = time.perf_counter()
        signer = self._signer(int(self._clock() * 1000))[0]  # may raise: keep the batch till then
        batch, self._pending, self.pending_since = self._pending, [], None
        # the whole linger batch in one call: headers, encryption, Merkle tree, one signature
        sealed: list[Sealed] = self._core.seal(self._core.signer(signer), batch, True, Sealed)
        elapsed = time.perf_counter() - start
        topics = set(map(_TOPIC, batch))
        if len(topics) == 1:
            self.metrics.sealed(batch[0][9], len(batch), sum(map(len, map(_BODY, batch))), elapsed)
            return sealed
        per_topic: dict[str, tuple[int, int]] = {}
        for item in batch:
            n, b = per_topic.get(item[9], (0, 0))
            per_topic[item[9]] = (n + 1, b + len(item[8]))
        for t, (n, b) in per_topic.items():
            self.metrics.sealed(t, n, b, elapsed * n / len(batch))
        return sealed

    def _options(self, headers: Headers | None, content_type: str, ttl: float | None) -> _Options:
        """A message's ttl (ms, 0: none), content type and sealed headers as the core takes
        them, checked here whichever path seals it (under the lock: the packer is the sealer's).
        Raises ConfigurationError."""
        ttl_ms = 0 if ttl is None else int(ttl * 1000)
        if ttl is not None and not 1 <= ttl_ms <= wire.MAX_TTL_MS:
            raise ConfigurationError("ttl must be between 1 ms and about 49 days")
        content_type_b = content_type.encode()
        if len(content_type_b) > wire.MAX_CONTENT_TYPE:
            raise ConfigurationError("content_type is limited to 255 bytes")
        try:  # sealed headers checked now; encrypted with the batch (one native call)
            packed = envelope.pack_headers(headers, self._packer)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"headers cannot be sealed: {exc}") from exc
        return ttl_ms, content_type_b, packed

    def _shortcut(
        self, topic: str, body: bytes, options: _Options
    ) -> tuple[Ed25519PrivateKey, backend.SealItem] | None:
        """A per-message item by the topic's fast path, if open and not due for a check."""
        fast = self._fast.get(topic)
        if fast is None or len(body) > self.max_body:
            return None
        now = int(self._clock() * 1000)
        deadline, session, handle, _, head, tail, signer = fast
        seq = session.next_seq
        if now >= deadline or seq >= self.max_session_messages:
            return None
        session.next_seq = seq + 1
        ttl_ms, content_type, packed = options
        return signer, (
            handle,
            head,
            seq,
            now,
            ttl_ms,
            content_type,
            tail,
            packed,
            body,
            topic,
            None,
        )

    def _draft(
        self,
        topic: str,
        body: bytes,
        options: _Options,
        *,
        batch: bool,
        subject: str | None = None,
        context: Any = None,
    ) -> tuple[Ed25519PrivateKey, backend.SealItem, float]:
        """Check one message (its ``_options`` already checked) and give it a sequence number:
        the signer, the item to seal and the time read. Opens the topic's fast path while
        nothing changes."""
        if len(body) > self.max_body:
            raise ConfigurationError(f"body of {len(body)} bytes exceeds max_body {self.max_body}")
        ttl_ms, content_type_b, packed = options
        now_s = self._clock()
        now = int(now_s * 1000)
        signer, cert = self._signer(now)
        if topic not in cert.produce:  # policy changed since: fetch a fresh certificate once
            signer, cert = self._signer(now, refresh=True)
        if subject is not None and not subject:
            raise ConfigurationError("a subject id is a non-empty string")
        session = self._session(topic, now)
        ctx, tail = session.ctx, session.ctx.encapsulation
        if subject is not None:
            subject_fields, ctx = self._subject_session(topic, subject, session, now)
            tail = subject_fields + tail
        seq = session.next_seq
        session.next_seq += 1
        head = session.head(batch, cert.cert_id, subject is not None)
        if subject is None and topic in cert.produce:
            deadline = min(
                session.expires_ms,
                self._checked_ms[topic] + self._check_ms,
                self._identity_checked_ms + self._check_ms,
            )
            self._fast[topic] = (
                deadline,
                session,
                session.ctx.handle,
                session.head(True, cert.cert_id),
                session.head(False, cert.cert_id),
                tail,
                signer,
            )
        item = (
            ctx.handle,
            head,
            seq,
            now,
            ttl_ms,
            content_type_b,
            tail,
            packed,
            body,
            topic,
            context,
        )
        return signer, item, now_s

    def _subject_session(
        self, topic: str, subject: str, session: _Session, now: int
    ) -> tuple[bytes, backend.CoreSession]:
        """The subject fields of the header and the session keys for ``subject`` (SPEC.md 4.5):
        one ephemeral per (session, subject key), drawn on first use and kept with the session."""
        fresh, key = self._subject_keys.get((topic, subject), now)
        if not fresh or key is None:
            key = self.keys.subject_key(topic, subject, now)
            self._subject_keys.put((topic, subject), key, now)
        held = session.subjects.get(key.subject_key_id)
        if held is None:
            try:
                encap, ikm = suites.subject_encapsulate(self._rng(32), key.public_key)
            except ValueError:
                raise UntrustedResponse("subject public key of small order") from None
            sub = self._core.subject_session(session.ctx, key.subject_key_id, encap, ikm)
            if len(session.subjects) >= _SUBJECTS_PER_SESSION:
                session.subjects.clear()
            held = session.subjects[key.subject_key_id] = (key.subject_key_id + encap, sub)
        return held

    def _signer(self, now: int, refresh: bool = False) -> tuple[Ed25519PrivateKey, Certificate]:
        if refresh or self._identity is None or now - self._identity_checked_ms >= self._check_ms:
            self._fast.clear()  # a fast path holds the certificate id it was opened under
            self._identity = self.keys.identity(now, refresh)
            self._identity_checked_ms = now
        return self._identity

    def _session(self, topic: str, now: int) -> _Session:
        session = self._sessions.get(topic)
        if (
            session is not None
            and now < session.expires_ms
            and (now - self._checked_ms[topic] < self._check_ms)
            and session.next_seq < self.max_session_messages
        ):
            return session
        self._fast.pop(topic, None)  # reopened by _draft once the session is checked
        epoch = self.keys.sealing_epoch(topic, now)
        self._checked_ms[topic] = now
        self.metrics.sealing_epoch(
            topic, epoch.epoch, epoch.not_before_ms / 1000, epoch.not_after_ms / 1000
        )
        if (
            session is None
            or session.epoch.epoch != epoch.epoch
            or now >= session.expires_ms
            or session.next_seq >= self.max_session_messages
        ):
            topic_b = topic.encode()
            core_session = self._core.start_session(
                epoch.suite, topic_b, epoch.epoch, epoch.public_key, self._rng(32)
            )
            session = _Session(
                core_session,
                epoch,
                0,
                min(epoch.not_after_ms, now + self._max_age_ms),
            )
            self._sessions[topic] = session
            self.metrics.session_started(topic)
        return session
