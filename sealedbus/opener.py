"""Opener: the consumer side. Runs the opening checks of SPEC.md section 7 in order and returns
plaintext only when every one of them passed; anything else raises an ``InvalidEnvelope``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sealedbus.core import backend, suites, wire
from sealedbus.core.backend import CoreSession, OpenJob
from sealedbus.core.cache import BoundedCache
from sealedbus.core.envelope import HeaderValue
from sealedbus.core.replay import Seen, session_digest
from sealedbus.core.signed import Certificate, EpochDescription, RevocationList
from sealedbus.core.suites import Suite
from sealedbus.errors import (
    ConfigurationError,
    DuplicateEnvelope,
    ExpiredEnvelope,
    InvalidEnvelope,
    KeyServiceError,
    MalformedEnvelope,
    NotAnEnvelope,
    Reason,
    SealedbusError,
    UnauthenticEnvelope,
    UnopenableEnvelope,
)
from sealedbus.keys.source import DropsEpochs, KeySource
from sealedbus.keys.ttlcache import TtlCache
from sealedbus.metrics import (
    CACHE_SENDER,
    CACHE_SESSION,
    Metrics,
    NoMetrics,
    key_service_error_kind,
)

# The largest body a default Sealer seals (16 MiB) with 64 KiB of sealed headers, a full content
# type, the hybrid encapsulation and the longest batch proof, and room to spare.
DEFAULT_MAX_ENVELOPE = (16 << 20) + (128 << 10)
SUBJECT_CACHE_TTL = 60.0  # seconds a subject private key (or its erasure) is cached
SUBJECT_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class OpenedMessage:
    """A message that passed every check. ``sender`` is the certified member name (None only for
    plaintext passed through during a migration, see ``Opener(plaintext_passthrough=True)``)."""

    body: bytes
    headers: dict[str, HeaderValue]
    topic: str
    sender: str | None
    epoch: int
    sequence: int
    sent_at: float
    content_type: str = ""
    expires_at: float | None = None
    session: bytes = field(default=b"", repr=False)  # sender certificate id + session id
    scope: Hashable = field(default=None, repr=False, compare=False)  # replay scope read from
    # sealed for a data subject: the random id of the subject's key (never the subject itself)
    subject_key_id: bytes | None = None

    @property
    def replay_digest(self) -> bytes:
        """The session as named in carried-over replay state (``Opener.restore_replay``)."""
        return session_digest(self.session[:16], self.epoch, self.session[16:])


_SessionKey = tuple[str, int, bytes, Suite]  # topic, epoch, session id, suite
_IKMS_PER_SUBJECT_KEY = 256  # X25519 results kept per subject key (one per producer session)


@dataclass(slots=True)
class _SubjectKey:
    """A subject private key held for the cache time, with the X25519 results it gave (each
    producer session has one encapsulation per subject): they go when the key goes."""

    key: X25519PrivateKey
    ikms: dict[bytes, bytes] = field(default_factory=dict)


_Joins = dict[_SessionKey, tuple[CoreSession, EpochDescription]]
_SWEEP_MS = 60_000  # how often cached sessions of destroyed epochs are dropped, used or not
_EVER = 1 << 64  # later than any sent-at: ``revokes(cert, _EVER)`` if any entry covers cert


def _replayed(code: int) -> DuplicateEnvelope:
    """The fast path's refusal by the replay window (1: a duplicate, 2: too old)."""
    return DuplicateEnvelope() if code == 1 else DuplicateEnvelope(Reason.TOO_OLD)


def _fits(*ms: int) -> bool:
    """Whether times can go to the fast path (signed 64-bit; else the slow path serves)."""
    return all(-(1 << 63) <= t < (1 << 63) for t in ms)


@dataclass(slots=True)
class _Sender:
    cert: Certificate
    identity: object  # the core's verifier of the certificate's identity key


class Opener:
    """Opens envelopes for the topics its member may consume."""

    def __init__(
        self,
        keys: KeySource,
        *,
        suites: Iterable[str | Suite] = (Suite.X25519, Suite.HYBRID),
        replay_window: int = 4096,
        max_sessions: int = 100_000,
        clock_skew: float = 120.0,
        max_age: float | None = None,
        max_envelope: int = DEFAULT_MAX_ENVELOPE,
        plaintext_passthrough: bool = False,
        revocation_check_interval: float = 1.0,
        threads: int = 1,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        core: str | None = None,
        subject_cache_ttl: float = SUBJECT_CACHE_TTL,
        subject_cache_size: int = SUBJECT_CACHE_SIZE,
    ) -> None:
        self.keys = keys
        self._core = backend.get(core)  # "pure", "native", or None: the default (SEALEDBUS_NATIVE)
        try:
            self.suites = frozenset(Suite.parse(s) for s in suites)
            # the core's replay windows (the native core's fast path admits through them too)
            self._replay = self._core.new_replay_guard(replay_window, max_sessions)
            # (topic, subject key id) -> private key, or None: erased (erasure is final)
            self._subject_keys: TtlCache[tuple[str, bytes], _SubjectKey | None] = TtlCache(
                subject_cache_size, int(subject_cache_ttl * 1000)
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        if not self.suites or threads < 1 or max_envelope < 1:
            raise ConfigurationError("need at least one suite, one thread and a positive size")
        self._skew_ms = int(clock_skew * 1000)
        self._max_age_ms = None if max_age is None else int(max_age * 1000)
        self.max_envelope = max_envelope
        self.plaintext_passthrough = plaintext_passthrough
        self.metrics: Metrics = metrics or NoMetrics()
        self._clock = clock
        self._check_ms = int(revocation_check_interval * 1000)
        self._pool = None
        if threads > 1:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sealedbus-open")
        self._lock = threading.Lock()
        self._sessions: BoundedCache[_SessionKey, tuple[CoreSession, EpochDescription]] = (
            BoundedCache(max_sessions)
        )
        self._trees = self._core.new_cache()  # batch roots (or tree nodes) already verified
        self._senders: BoundedCache[bytes, _Sender] = BoundedCache(10_000)
        self._revocation_list: tuple[RevocationList, int] | None = None
        self._floors: dict[tuple[str, Hashable], dict[bytes, int]] = {}
        self._next_sweep_ms = 0
        # the native core's fast path: senders and sessions checked here, handed over (below)
        self._fast = self._core.new_open_table(
            OpenedMessage, self._skew_ms, self._max_age_ms, max_envelope
        )
        self._fast_suite = Suite.X25519 in self.suites  # the only suite the fast path takes
        self._fast_suites = self.suites, self._fast_suite  # as last seen (``suites`` is public)
        self._fast_max_envelope = max_envelope
        self._fast_lock = threading.Lock()

    def open(self, topic: str, data: bytes, scope: Hashable = None) -> OpenedMessage:
        """Open one envelope read from ``topic``. Raises an InvalidEnvelope subclass (with
        ``.reason``) when any check fails, or KeyServiceUnavailable when keys cannot be had now.

        ``scope`` names where in the topic it was read, when the broker keeps order only there
        (adapters pass the Kafka partition): replay windows are kept per scope (SPEC.md 7.10)."""
        start = time.perf_counter()
        try:
            message = self._open(topic, bytes(data), scope)
        except InvalidEnvelope as exc:
            self.metrics.rejected(topic, exc.reason.value)
            raise
        except KeyServiceError as exc:
            self.metrics.key_service_error(topic, key_service_error_kind(exc))
            raise
        metrics = self.metrics
        if type(metrics) is NoMetrics:
            return message
        try:
            metrics.opened(topic, len(message.body), time.perf_counter() - start)
        except BaseException:  # a faulty metrics sink must not eat the message
            self.release(message)
            raise
        return message

    def open_many(
        self, items: Sequence[tuple[str, bytes] | tuple[str, bytes, Hashable]]
    ) -> list[OpenedMessage | SealedbusError]:
        """Open several ``(topic, envelope)`` or ``(topic, envelope, scope)``; each result, in
        order, is the message or the error its opening raised (an InvalidEnvelope, or
        KeyServiceUnavailable: then release the messages after it that the caller will not hand
        on, so their redelivery opens).

        With the native core, envelopes of senders and sessions already checked here go
        through its fast path: one call parses, checks, verifies and decrypts them, and runs
        the replay window over them in order (up to the first one it leaves). The others
        (and any the fast path does not accept) get the checks in Python, then the cryptography
        in one call to the core (per-message signatures verified in it, one by one), then every one
        the replay window, in order. With the pure core and
        ``threads > 1`` they are opened on a pool instead: Ed25519 verification and AES-GCM
        release the GIL, so per-message signatures verify on several cores at once."""
        if len(items) < 2:
            return [self._open_or_error(item) for item in items]
        if self._pool is not None and self._core is backend.PURE:
            return list(self._pool.map(self._open_or_error, items))
        return self._open_many(items, warm=True)

    def _open_many(
        self, items: Sequence[tuple[str, bytes] | tuple[str, bytes, Hashable]], warm: bool
    ) -> list[OpenedMessage | SealedbusError]:
        start = time.perf_counter()
        fast, final = self._open_fast(items)  # opened natively, or None: the steps below decide
        if final:  # every one opened (and admitted) or refused as a replay there
            return self._report_fast(items, fast, start)
        if warm and fast[0] is None and self._fast is not None and len(items) > 2:
            # the fast path does not know the first one's sender or session (a consumer's
            # first fetch of a session): it alone through every step hands them over, then
            # the rest (in order after it) may take the fast path
            return [self._open_or_error(items[0]), *self._open_many(items[1:], warm=False)]
        results: list[OpenedMessage | SealedbusError | None] = [None] * len(items)
        prepared: dict[int, OpenJob] = {}
        joins: _Joins = {}
        for i, item in enumerate(items):
            if fast[i] is not None:
                continue
            topic, data, scope = item[0], item[1], item[2] if len(item) > 2 else None
            try:
                p = self._prepare(topic, bytes(data), scope, joins)
            except InvalidEnvelope as exc:
                self.metrics.rejected(topic, exc.reason.value)
                results[i] = exc
                continue
            except KeyServiceError as exc:  # reported as ``open`` reports it
                self.metrics.key_service_error(topic, key_service_error_kind(exc))
                results[i] = exc
                continue
            except SealedbusError as exc:
                results[i] = exc
                continue
            if isinstance(p, OpenedMessage):  # plaintext passed through
                self.metrics.opened(topic, len(p.body), 0.0)
                results[i] = p
            else:
                prepared[i] = p
        outcomes = self._core.open_many(list(prepared.values()), self._trees) if prepared else []
        verdicts = dict(zip(prepared, outcomes, strict=True))
        each = (time.perf_counter() - start) / len(items)
        for i, item in enumerate(items):  # step 10 in order, whichever path opened it
            if results[i] is not None:
                continue
            topic, done = item[0], fast[i]
            try:
                if done is None:
                    message = self._finish(prepared[i], verdicts[i])
                else:
                    message = self._finish_fast(done)
            except InvalidEnvelope as exc:
                self.metrics.rejected(topic, exc.reason.value)
                results[i] = exc
                continue
            try:
                self.metrics.opened(topic, len(message.body), each)
            except BaseException:  # a faulty metrics sink must not eat the message
                self._release_all([message, *fast[i + 1 :]])  # and the ones admitted after it
                raise
            results[i] = message
        return [r for r in results if r is not None]

    def _report_fast(
        self,
        items: Sequence[tuple[str, bytes] | tuple[str, bytes, Hashable]],
        fast: list[Any],
        start: float,
    ) -> list[OpenedMessage | SealedbusError]:
        """The end of ``open_many`` when the fast path finished every item: each is a message
        (admitted by the replay window) or the code of its refusal as a replay; the metrics
        report as for the other paths."""
        metrics = self.metrics
        quiet = type(metrics) is NoMetrics
        if quiet and int not in map(type, fast):  # all opened, none to report: no loop here
            return fast
        each = (time.perf_counter() - start) / len(items)
        opened_many = getattr(metrics, "opened_many", None)
        hits = getattr(metrics, "key_cache_hits", None)
        if not quiet and opened_many is not None and hits is not None:
            return self._report_many(items, fast, each, opened_many, hits)
        for i, r in enumerate(fast):
            if not quiet:
                metrics.key_cache(CACHE_SENDER, True)
                metrics.key_cache(CACHE_SESSION, True)
            if type(r) is int:
                fast[i] = exc = _replayed(r)
                metrics.rejected(items[i][0], exc.reason.value)
            elif not quiet:
                try:
                    metrics.opened(r.topic, len(r.body), each)
                except BaseException:  # a faulty metrics sink must not eat the messages
                    self._release_all(fast[i:])  # the fast path admitted every one
                    raise
        return fast

    def _report_many(
        self,
        items: Sequence[tuple[str, bytes] | tuple[str, bytes, Hashable]],
        fast: list[Any],
        each: float,
        opened_many: Callable[[str, int, int, float], None],
        hits: Callable[[str, int], None],
    ) -> list[OpenedMessage | SealedbusError]:
        """``_report_fast`` to a ``metrics.BatchMetrics`` sink: one report per topic."""
        opened: dict[str, list[int]] = {}  # topic -> [messages, payload bytes]
        for i, r in enumerate(fast):
            if type(r) is int:
                fast[i] = exc = _replayed(r)
                self.metrics.rejected(items[i][0], exc.reason.value)
            else:
                counts = opened.setdefault(r.topic, [0, 0])
                counts[0] += 1
                counts[1] += len(r.body)
        try:
            hits(CACHE_SENDER, len(fast))
            hits(CACHE_SESSION, len(fast))
            for topic, (count, size) in opened.items():
                opened_many(topic, count, size, each)
        except BaseException:  # a faulty metrics sink must not eat the messages
            self._release_all(fast)
            raise
        return fast

    def _release_all(self, done: Sequence[Any]) -> None:
        """Release the messages among ``done`` (admitted, then not handed on)."""
        for r in done:
            if type(r) is OpenedMessage:
                self.release(r)

    def _open_or_error(
        self, item: tuple[str, bytes] | tuple[str, bytes, Hashable]
    ) -> OpenedMessage | SealedbusError:
        try:
            return self.open(*item)
        except SealedbusError as exc:
            return exc

    def close(self) -> None:
        """Stop the verification threads (if any)."""
        if self._pool is not None:
            self._pool.shutdown()

    def release(self, message: OpenedMessage) -> None:
        """Forget that ``message`` was opened, so its redelivery is accepted again. Adapters call
        this when the application did not take the message (it raised, or the ack failed)."""
        with self._lock:
            self._replay.unmark(
                (message.topic, message.session[:16]),
                (message.epoch, message.session[16:]),
                message.sequence,
                message.scope,
            )

    def restore_replay(self, topic: str, scope: Hashable, floors: Mapping[bytes, int]) -> None:
        """Carry replay state over from before a restart or a rebalance: for each session (by
        ``OpenedMessage.replay_digest``), the highest sequence number already handled in this
        scope of ``topic``. Sessions this opener holds no window for yet start from it: what is
        at or below it is a duplicate there (or outside the replay window)."""
        with self._lock:  # the state given is the whole state: what it no longer names goes
            held = self._floors.get((topic, scope), {})
            merged = {digest: max(seq, held.get(digest, -1)) for digest, seq in floors.items()}
            self._floors[(topic, scope)] = merged
            if self._fast is not None:  # the fast path admits with them too
                self._fast.set_floors(topic, scope, merged)

    def _open(self, topic: str, data: bytes, scope: Hashable = None) -> OpenedMessage:
        if self._fast is not None:
            now = self._fast_now()
            if now is not None:
                done = self._fast.open_one(topic, data, scope, now, self._trees, self._replay)
                if done is not None:
                    return self._finish_fast(done)
        p = self._prepare(topic, data, scope)
        if isinstance(p, OpenedMessage):
            return p
        return self._finish(p, self._core.open_many([p], self._trees)[0])

    def _prepare(
        self, topic: str, data: bytes, scope: Hashable = None, joins: _Joins | None = None
    ) -> OpenJob | OpenedMessage:
        """SPEC.md 7 steps 1-7 (every policy check); the cryptography is left to the core."""
        now = int(self._clock() * 1000)
        if len(data) > self.max_envelope:
            raise MalformedEnvelope(Reason.TOO_LARGE, f"{len(data)} bytes")
        try:
            parsed = wire.parse(data)
        except NotAnEnvelope:
            if not self.plaintext_passthrough:
                raise
            return OpenedMessage(data, {}, topic, None, -1, -1, now / 1000)
        h = parsed.header
        if h.suite not in self.suites:
            raise MalformedEnvelope(Reason.SUITE, h.suite.label)
        if h.sent_at_ms > now + self._skew_ms:
            raise ExpiredEnvelope(Reason.FROM_FUTURE)
        if h.ttl_ms and now > h.sent_at_ms + h.ttl_ms + self._skew_ms:
            raise ExpiredEnvelope(Reason.EXPIRED)
        if self._max_age_ms is not None and now > h.sent_at_ms + self._max_age_ms + self._skew_ms:
            raise ExpiredEnvelope(Reason.EXPIRED, "older than max_age")

        sender = self._sender(h.cert_id, now)
        cert = sender.cert
        if topic not in cert.produce:
            raise UnauthenticEnvelope(Reason.SENDER_NOT_ALLOWED, cert.member)
        if not cert.valid_at(h.sent_at_ms):
            raise UnauthenticEnvelope(Reason.CERTIFICATE_EXPIRED, cert.member)
        revocations = self._revocations(now)
        if revocations.revokes(cert, h.sent_at_ms):
            raise UnauthenticEnvelope(Reason.SENDER_REVOKED, cert.member)
        if revocations.withdraws(cert, topic):
            raise UnauthenticEnvelope(Reason.SENDER_NOT_ALLOWED, f"{cert.member} (withdrawn)")

        if self._fast is not None and not revocations.revokes(cert, _EVER):
            self._hand_over_sender(topic, h.cert_id, sender, revocations)
        session, joined = self._session(topic, h, now, joins)
        if h.subject:  # never on the fast path (its flags are refused there): joined stays the
            session = self._subject_session(topic, h, session, now)  # parent session's
        return OpenJob(session, sender.identity, parsed, data, topic, cert.member, scope, joined)

    def _finish(self, p: OpenJob, outcome: backend.Opened | InvalidEnvelope) -> OpenedMessage:
        """Steps 8-10: the core's verdict on signature and decryption, then the replay window."""
        verified = (
            not isinstance(outcome, InvalidEnvelope) or outcome.reason is Reason.DECRYPT_FAILED
        )
        if p.joined is not None and verified:  # cached only once a signature showed the sender
            self._sessions.put(*p.joined)  # made it (decryption comes after the signature)
            self._hand_over(*p.joined)
        if isinstance(outcome, InvalidEnvelope):
            raise outcome
        headers, body = outcome
        topic, h, scope = p.topic, p.parsed.header, p.scope
        self._admit(topic, (topic, h.cert_id), (h.epoch, h.session_id), h.seq, scope)
        return OpenedMessage(
            body=body,
            headers=headers,
            topic=topic,
            sender=p.member,
            epoch=h.epoch,
            sequence=h.seq,
            sent_at=h.sent_at_ms / 1000,
            content_type=h.content_type,
            expires_at=(h.sent_at_ms + h.ttl_ms) / 1000 if h.ttl_ms else None,
            session=h.cert_id + h.session_id,
            scope=scope,
            subject_key_id=h.subject_key_id or None,
        )

    def _admit(
        self,
        topic: str,
        replay_sender: tuple[str, bytes],
        replay_session: tuple[int, bytes],
        seq: int,
        scope: Hashable,
    ) -> None:
        """Step 10: the replay window, checked after decryption, atomically with marking the
        message seen (whichever path opened it: one window per session and scope)."""
        with self._lock:
            floors = self._floors.get((topic, scope))
            floor = -1
            if floors:
                cert_id, (epoch, session_id) = replay_sender[1], replay_session
                floor = floors.get(session_digest(cert_id, epoch, session_id), -1)
            seen = self._replay.admit(replay_sender, replay_session, seq, scope, floor)
        if seen is Seen.DUPLICATE:
            raise DuplicateEnvelope()
        if seen is Seen.TOO_OLD:
            raise DuplicateEnvelope(Reason.TOO_OLD)

    def _open_fast(self, items: Sequence[Sequence[object]]) -> tuple[list[Any], bool]:
        """The native core's fast path over ``items``: for each, None (left to ``_prepare`` and
        ``_finish``, which decide and name any refusal) or what ``_finish_fast`` takes; and
        whether it finished every one (step 10 included). It accepts only envelopes of senders
        and sessions handed over by ``_prepare`` and ``_session``, after SPEC.md 7 steps 1-9 as
        those run them, and admits through the replay windows the other steps use, in order."""
        now = self._fast_now()
        if now is None:
            return [None] * len(items), False
        return self._fast.open(items, now, self._trees, self._replay)  # type: ignore[no-any-return]

    def _fast_now(self) -> int | None:
        """The time (ms) for the fast path, or None when it may not be asked now."""
        if self._fast is None or self.max_envelope != self._fast_max_envelope:
            return None  # (public settings changed since)
        suites, x25519 = self._fast_suites
        if suites is not self.suites:  # changed: asked again (an Enum's hash runs in Python)
            suites = self.suites
            self._fast_suites = suites, (x25519 := Suite.X25519 in suites)
        if not x25519:
            return None
        now = int(self._clock() * 1000)
        held = self._revocation_list  # the list the handed-over senders were checked against
        if held is None or now - held[1] >= self._check_ms:
            return None  # a refresh is due: step 6 of the Python steps asks
        return now

    def _finish_fast(self, done: Any) -> OpenedMessage:
        """For an envelope the fast path opened, which built the message: the message it also
        admitted, the code of its refusal as a replay, or step 10 here (with the headers, which
        are decoded here, as ``NativeCore.open_many`` decodes them)."""
        metrics = self.metrics
        if type(metrics) is not NoMetrics:
            metrics.key_cache(CACHE_SENDER, True)
            metrics.key_cache(CACHE_SESSION, True)
        if type(done) is OpenedMessage:
            return done
        if type(done) is int:
            raise _replayed(done)
        message, packed, replay_sender, replay_session = done
        if packed:  # set on the fresh message before anyone else holds it
            object.__setattr__(message, "headers", backend.decode_headers(packed))
        self._admit(message.topic, replay_sender, replay_session, message.sequence, message.scope)
        return message  # type: ignore[no-any-return]

    def _hand_over_sender(
        self, topic: str, cert_id: bytes, sender: _Sender, revocations: RevocationList
    ) -> None:
        """Give the fast path a sender certified for ``topic`` that no entry of the revocation
        list covers, under that list only (a refresh in between clears the table)."""
        cert = sender.cert
        if not _fits(cert.not_before_ms, cert.not_after_ms):
            return
        with self._fast_lock:
            held = self._revocation_list
            if self._fast is not None and held is not None and held[0] is revocations:
                self._fast.add_sender(
                    topic,
                    cert_id,
                    sender.identity,
                    cert.member,
                    cert.not_before_ms,
                    cert.not_after_ms,
                )

    def _hand_over(
        self, cache_key: _SessionKey, cached: tuple[CoreSession, EpochDescription]
    ) -> None:
        """Give the fast path a session whose signature verified (suite 1 only)."""
        topic, epoch_number, _, suite = cache_key
        epoch = cached[1]
        limits = (epoch.not_before_ms, epoch.not_after_ms, epoch.max_age_ms or 0)
        if (
            self._fast is not None
            and suite is Suite.X25519
            and self._fast_suite
            and _fits(*limits, epoch.destroy_after_ms)
        ):
            self._fast.add_session(
                topic, epoch_number, cached[0].handle, *limits, epoch.destroy_after_ms
            )

    def _sender(self, cert_id: bytes, now: int) -> _Sender:
        """The sender's certificate (cached) and identity key."""
        sender = self._senders.get(cert_id)
        self.metrics.key_cache(CACHE_SENDER, sender is not None)
        if sender is None:
            cert = self.keys.sender_certificate(cert_id, now)
            if cert is None:
                raise UnauthenticEnvelope(Reason.UNKNOWN_SENDER)
            sender = _Sender(cert, self._core.verifier(cert.identity_key()))
            self._senders.put(cert_id, sender)
        return sender

    def _revocations(self, now: int) -> RevocationList:
        """The key source's revocation list, asked again each ``revocation_check_interval``."""
        held = self._revocation_list
        if held is None or now - held[1] >= self._check_ms:
            fresh = self.keys.revocations(now)
            with self._fast_lock:  # the fast path's senders were checked against the old list
                if self._fast is not None and (held is None or held[0] is not fresh):
                    self._fast.clear()
                held = self._revocation_list = (fresh, now)
            self.metrics.revocations(held[0].issued_at_ms / 1000)
            if now >= self._next_sweep_ms:  # session keys of destroyed epochs go too
                self._next_sweep_ms = now + _SWEEP_MS
                self._sessions.drop_if(lambda cached: now >= cached[1].destroy_after_ms)
                if self._fast is not None:
                    self._fast.clear()
            gone = self.keys.dropped_epochs(now) if isinstance(self.keys, DropsEpochs) else ()
            if gone:  # destroyed early (a topic shred): sessions and the topics' subject keys
                topics = {t for t, _ in gone}
                self._sessions.drop_if(lambda c: (c[1].topic, c[1].epoch) in gone)
                self._subject_keys.drop_keys(lambda key: key[0] in topics)
                if self._fast is not None:  # and the sessions handed to the fast path
                    self._fast.clear()
        return held[0]

    def _session(
        self, topic: str, h: wire.Header, now: int, joins: _Joins | None = None
    ) -> tuple[CoreSession, tuple[_SessionKey, tuple[CoreSession, EpochDescription]] | None]:
        """The session, and the cache entry to add once the envelope's signature verified
        (None when it came from the cache): unauthenticated input never fills the cache.
        ``joins``: sessions joined for earlier envelopes of the same batch (one join each)."""
        cache_key = (topic, h.epoch, h.session_id, h.suite)  # suite: a hit skips _join's check
        cached = self._sessions.get(cache_key)
        self.metrics.key_cache(CACHE_SESSION, cached is not None)
        joined = None
        if cached is None or now >= cached[1].destroy_after_ms:
            if cached is not None:
                self._sessions.pop(cache_key)  # the epoch is past retention: forget it
            pending = None if joins is None else joins.get(cache_key)
            if pending is not None and now < pending[1].destroy_after_ms:
                cached = pending  # joined for an earlier envelope of this batch, not verified yet
            else:
                cached = self._join(topic, h, now)
                if joins is not None:
                    joins[cache_key] = cached
            joined = (cache_key, cached)
        elif self._fast is not None:
            self._hand_over(cache_key, cached)  # verified before: the fast path may use it
        ctx, epoch = cached
        if ctx.encapsulation != h.encapsulation:  # a hit must not skip 4.2's hash check
            raise UnopenableEnvelope(Reason.DECRYPT_FAILED, "not the session's encapsulation")
        if (
            not epoch.not_before_ms - self._skew_ms
            <= h.sent_at_ms
            <= epoch.not_after_ms + self._skew_ms
        ):
            raise ExpiredEnvelope(Reason.OUTSIDE_EPOCH, f"epoch {h.epoch}")
        if epoch.max_age_ms and now > h.sent_at_ms + epoch.max_age_ms + self._skew_ms:
            raise ExpiredEnvelope(Reason.EXPIRED, "older than the topic's maximum message age")
        return ctx, joined

    def _subject_session(
        self, topic: str, h: wire.Header, parent: CoreSession, now: int
    ) -> CoreSession:
        """Step 7, sealed for a subject (SPEC.md 4.5): the subject's private key from the key
        source (cached for ``subject_cache_ttl``, as is its erasure), or its refusal."""
        key = (topic, h.subject_key_id)
        hit, private = self._subject_keys.get(key, now)
        if not hit:
            try:
                private = _SubjectKey(
                    suites.subject_private_key(
                        self.keys.subject_private_key(topic, h.subject_key_id, now)
                    )
                )
            except UnopenableEnvelope as exc:
                if exc.reason is Reason.SUBJECT_ERASED:
                    self._subject_keys.put(key, None, now)
                raise
            self._subject_keys.put(key, private, now)
        if private is None:
            raise UnopenableEnvelope(Reason.SUBJECT_ERASED)
        encap = h.subject_encapsulation
        ikm = private.ikms.get(encap)
        if ikm is None:
            try:
                ikm = suites.subject_decapsulate(private.key, encap)
            except ValueError:
                raise UnopenableEnvelope(Reason.DECRYPT_FAILED, "subject encapsulation") from None
            if len(private.ikms) >= _IKMS_PER_SUBJECT_KEY:
                private.ikms.clear()
            private.ikms[encap] = ikm
        return self._core.subject_session(parent, h.subject_key_id, encap, ikm)

    def _join(self, topic: str, h: wire.Header, now: int) -> tuple[CoreSession, EpochDescription]:
        epoch = self.keys.epoch_keys(topic, h.epoch, now)
        if epoch.description.suite is not h.suite:
            raise MalformedEnvelope(Reason.SUITE, "envelope suite differs from the topic's")
        if now >= epoch.description.destroy_after_ms:
            raise UnopenableEnvelope(Reason.EPOCH_DESTROYED)
        try:
            session = self._core.join_session(
                h.suite, topic.encode(), h.epoch, epoch.keys, h.session_id, h.encapsulation
            )
        except (ValueError, InvalidTag):
            raise UnopenableEnvelope(Reason.DECRYPT_FAILED, "session cannot be joined") from None
        return session, epoch.description
