"""Kafka through kafka-python: wrappers around ``KafkaProducer`` and ``KafkaConsumer`` that seal
on ``send()`` and open while iterating. Import this module only where kafka-python is installed
(``pip install sealedbus[kafka]``). Build the clients as usual (SSL and SASL settings included);
sealedbus does not touch their configuration.

The sealing topic is the Kafka topic name: a record copied to another topic does not open there.
Record values are envelopes; record headers carry nothing in clear (the application's headers are
sealed inside); keys travel as given, or as HMAC tokens with a ``KeyTokenizer``, and the key as
the broker carries it is sealed too, so a record moved to another key is refused.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kafka import ConsumerRebalanceListener, OffsetAndMetadata
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.future import Future

from sealedbus.brokers._common import (
    KeyTokenizer,
    OpenedRecord,
    Undeliverable,
    UndeliverablePolicy,
    check_bound_key,
    check_headers,
    dead_letter_headers,
    is_duplicate,
    log,
    reader_refusal,
    report_dead_letter,
    tokenize_key,
)
from sealedbus.brokers._kafka_state import (
    DEFAULT_STATE_BYTES,
    decode_replay_state,
    encode_replay_state,
    max_message_bytes,
)
from sealedbus.core.envelope import HeaderValue
from sealedbus.errors import BrokerError, ConfigurationError, InvalidEnvelope, SealedbusError
from sealedbus.opener import OpenedMessage, Opener
from sealedbus.sealer import Sealer


def broker_error(what: str, exc: BaseException) -> BrokerError:
    """kafka-python's exception as a BrokerError, retryable when kafka says it is retriable."""
    error = BrokerError(f"{what}: {exc!r}", retryable=bool(getattr(exc, "retriable", False)))
    error.__cause__ = exc
    return error


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (KafkaError, ValueError, TypeError) as exc:  # ValueError/TypeError: bad arguments
        raise broker_error(what, exc) from exc


class SealedFuture(Future):  # type: ignore[misc]  # kafka-python ships no type information
    """kafka-python's ``Future``, resolved with the record's ``RecordMetadata`` once the broker
    has the sealed record; failures are ``BrokerError`` (the kafka error as ``__cause__``).

    ``ref`` is what the application passed to ``send(ref=...)``; ``envelope`` the sealed bytes
    once sealed (None while its batch waits or when it could not be signed). A failed future
    with an envelope may still have reached the broker: ``SealedKafkaProducer.resend`` sends the
    same bytes again, and consumers drop the second copy as a duplicate.

    It resolves lazily from the client's future: ``is_done``, ``value``, ``exception``,
    ``succeeded()`` and ``get`` read the client's future, and only a ``get`` that has to wait or
    an application callback hooks onto it, so kafka-python's network thread runs no sealedbus
    code for records nobody watches."""

    __slots__ = (
        "_outcome",
        "_sent",
        "_watchers",
        "envelope",
        "key",
        "partition",
        "ref",
        "timestamp_ms",
        "topic",
    )
    # guards _outcome and _watchers; taken on the rare paths only (resolution, callbacks, waits)
    _guard = threading.Lock()  # not Future._lock (a slot per future, unused here)

    def __init__(
        self,
        topic: str = "",
        ref: Any = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        # no Future.__init__: every method that uses its lock and lists is overridden here
        self.topic = topic
        self.ref = ref
        self.key = key  # where the record goes: the broker's key, partition and timestamp
        self.partition = partition
        self.timestamp_ms = timestamp_ms
        self.envelope: bytes | None = None
        self._sent: Any = None  # kafka-python's future once the record is handed to the client
        self._outcome: tuple[Any, BaseException | None] | None = None  # (value, error)
        self._watchers: _Watchers | None = None  # someone waits or has callbacks

    # -- state: the client's future's, copied here once it is done ---------------------------

    def _check(self) -> tuple[Any, BaseException | None] | None:
        outcome = self._outcome
        if outcome is None:
            sent = self._sent
            if sent is None or not sent.is_done:
                return None
            error = sent.exception
            with self._guard:  # one translated error, whoever looks first
                if self._outcome is None:
                    self._outcome = (sent.value, None if error is None else _sending_error(error))
                outcome = self._outcome
        return outcome

    @property  # shadows Future's slot
    def is_done(self) -> bool:
        return self._check() is not None

    @property
    def value(self) -> Any:
        outcome = self._check()
        return None if outcome is None else outcome[0]

    @property
    def exception(self) -> BaseException | None:
        outcome = self._check()
        return None if outcome is None else outcome[1]

    # -- resolution ----------------------------------------------------------------------------

    def _resolve(self, value: Any, error: BaseException | None) -> None:
        """Resolve (the first outcome wins) and run the application's callbacks, once each."""
        with self._guard:
            if self._outcome is None:
                self._outcome = (value, error)
            value, error = self._outcome
            watchers = self._watchers
            if watchers is None:
                return
            callbacks = watchers.errbacks if error is not None else watchers.callbacks
            watchers.callbacks, watchers.errbacks = [], []
        if watchers.event is not None:
            watchers.event.set()
        for f in callbacks:
            _call(f, value if error is None else error)

    def success(self, value: Any) -> SealedFuture:
        self._resolve(value, None)
        return self

    def failure(self, e: BaseException | type[BaseException]) -> SealedFuture:
        self._resolve(None, _sending_error(e() if isinstance(e, type) else e))
        return self

    def _sent_as(self, sent: Any) -> None:
        """The record went to the client as ``sent`` (once, on the sending thread)."""
        self._sent = sent
        if self._watchers is not None:  # else whoever sets them later sees ``_sent`` and hooks
            self._hook()

    def _watch(self) -> _Watchers:
        """Callers hold ``_guard``."""
        if self._watchers is None:
            self._watchers = _Watchers()
        return self._watchers

    def _hook(self) -> None:
        """Make the client's future report to this one (once; after ``_sent`` and ``_watch``)."""
        with self._guard:
            watchers = self._watch()
            if watchers.hooked:
                return
            watchers.hooked = True
        self._sent.add_callback(self._sent_ok)  # at once when the client's future is done
        self._sent.add_errback(self._sent_failed)

    def _sent_ok(self, value: Any) -> None:
        self._resolve(value, None)

    def _sent_failed(self, error: BaseException) -> None:
        self._resolve(None, _sending_error(error))

    # -- kafka-python's Future API -------------------------------------------------------------

    def add_callback(self, f: Any, *args: Any, **kwargs: Any) -> SealedFuture:
        return self._add(functools.partial(f, *args, **kwargs) if args or kwargs else f, False)

    def add_errback(self, f: Any, *args: Any, **kwargs: Any) -> SealedFuture:
        return self._add(functools.partial(f, *args, **kwargs) if args or kwargs else f, True)

    def _add_cb_eb(self, cb: Any, eb: Any) -> SealedFuture:  # Future.chain uses it
        return self._add(cb, False)._add(eb, True)

    def _add(self, f: Any, errback: bool) -> SealedFuture:
        outcome = self._check()
        if outcome is None:
            with self._guard:
                outcome = self._outcome
                if outcome is None:
                    watchers = self._watch()
                    (watchers.errbacks if errback else watchers.callbacks).append(f)
            if outcome is None:
                if self._sent is not None:
                    self._hook()
                return self
        value, error = outcome
        if (error is not None) == errback:
            _call(f, error if errback else value)
        return self

    def get(self, timeout: float | None = None) -> Any:
        """Wait for the broker's acknowledgement; returns ``RecordMetadata``."""
        outcome = self._check()
        if outcome is None:
            with self._guard:
                event = None
                if self._outcome is None:
                    watchers = self._watch()
                    if watchers.event is None:
                        watchers.event = threading.Event()
                    event = watchers.event
            if event is not None:
                if self._sent is not None:
                    self._hook()
                if not event.wait(timeout) and self._check() is None:
                    raise BrokerError("the record was not acknowledged in time", retryable=True)
            outcome = self._outcome
            assert outcome is not None  # noqa: S101  # set before the event, or read by _check
        value, error = outcome
        if error is not None:
            raise error
        return value


class _Watchers:
    """Who hears of a ``SealedFuture``'s outcome: the application's callbacks, ``get`` waiters."""

    __slots__ = ("callbacks", "errbacks", "event", "hooked")

    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.errbacks: list[Any] = []
        self.event: threading.Event | None = None
        self.hooked = False  # the client's future reports to the SealedFuture


def _sending_error(e: BaseException) -> BaseException:
    return e if isinstance(e, BrokerError) else broker_error("sending", e)


def _call(f: Any, arg: Any) -> None:
    """Run an application callback as kafka-python does: its exceptions are logged."""
    try:
        f(arg)
    except Exception:
        log.exception("error in a SealedFuture callback")


_LOST_MEMBERSHIP = (CommitFailedError, IllegalGenerationError, UnknownMemberIdError)
_RETRY_MIN = 0.05  # seconds before the linger thread retries a batch that could not be signed
_RETRY_MAX = 1.0
NULL_VALUE_HEADER = "x-sealedbus-null-value"

KafkaHeaders = Iterable[tuple[str, HeaderValue]] | Mapping[str, HeaderValue]


class SealedKafkaProducer:
    """Seals what it sends through a ``KafkaProducer``.

    With ``batch`` (the default) envelopes are signed in Merkle batches that close no later than
    the producer would send: after ``linger`` seconds (the producer's ``linger_ms`` unless given),
    when the sealer's ``batch_size`` messages or the producer's ``batch_size`` bytes are waiting,
    and on ``flush()`` / ``close()``. The ``send`` that finds the open batch due closes it; a
    linger thread closes it when no send comes (and retries a batch that could not be signed).
    With ``linger`` 0 (kafka-python's default) or ``batch=False`` each record gets its own
    signature. Give a batching producer a ``Sealer`` of its own.
    """

    def __init__(
        self,
        producer: Any,
        sealer: Sealer,
        *,
        batch: bool = True,
        linger: float | None = None,
        key_tokenizer: KeyTokenizer | None = None,
    ) -> None:
        self.producer = producer
        self.sealer = sealer
        self.key_tokenizer = key_tokenizer
        self.linger = producer.config["linger_ms"] / 1000 if linger is None else linger
        if self.linger < 0:
            raise ConfigurationError("linger must not be negative")
        self.batch = batch and self.linger > 0
        self._batch_bytes = int(producer.config["batch_size"])
        self._lock = threading.Lock()  # send() enters it per record: a Condition's is slower
        self._cond = threading.Condition(self._lock)
        self._linger_idle = False  # the linger thread waits for a batch to open (not a due time)
        self._started: float | None = None  # monotonic time of the open batch's first record
        self._bytes = 0
        self._closed = False
        self._waiting: list[SealedFuture] = []  # futures of the open batch (to fail on close)
        self._retry_at: float | None = None  # the linger thread's next try after a failed flush
        self._failures = 0
        self.last_error: BaseException | None = None  # what the linger thread last failed with
        self._thread: threading.Thread | None = None
        if self.batch:
            self._thread = threading.Thread(
                target=self._linger_loop, name="sealedbus-kafka-linger", daemon=True
            )
            self._thread.start()

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: KafkaHeaders | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        *,
        content_type: str = "",
        ttl: float | None = None,
        ref: Any = None,
        subject: str | None = None,
    ) -> SealedFuture:
        """Seal ``value`` and ``headers`` for ``topic`` and send, as ``KafkaProducer.send``.
        ``ref`` (any object: the application's message or its id) comes back on the future.
        ``subject``: seal it for a data subject, erasable on its own (``Sealer.seal``).

        Raises AccessDenied / UnknownTopic (not a producer of ``topic``), KeyServiceUnavailable
        or ConfigurationError (``key`` not bytes) at once. Broker failures arrive through the
        returned future; when not batching, what kafka-python's ``send`` raises at once comes as a
        BrokerError.
        """
        if key is None and headers is None:  # the common case: nothing to bind or check
            clear_key, sealed_headers = None, None
        else:
            if (
                key is not None
                and not isinstance(key, bytes)
                and (
                    self.key_tokenizer is not None
                    or self.producer.config.get("key_serializer") is None
                )
            ):
                raise ConfigurationError(f"key must be bytes or None, not {type(key).__name__}")
            clear_key, sealed_headers = tokenize_key(
                self.key_tokenizer, topic, key, check_headers(_header_map(headers))
            )
        future = SealedFuture(topic, ref, clear_key, partition, timestamp_ms)
        with self._lock:
            if self._closed:
                raise ConfigurationError("the producer is closed")
            if not self.batch:
                data = self.sealer.seal(
                    topic,
                    value,
                    headers=sealed_headers,
                    content_type=content_type,
                    ttl=ttl,
                    subject=subject,
                )
                with translate_errors(f"sending to {topic!r}"):
                    self._send_sealed(future, data)
                return future
            before = self.sealer.pending
            try:
                ready = self.sealer.add(
                    topic,
                    value,
                    headers=sealed_headers,
                    content_type=content_type,
                    ttl=ttl,
                    context=future,
                    subject=subject,
                )
            except Exception:
                if self.sealer.pending <= before:
                    raise  # not added: nothing will be sent
                ready = []  # added, but the full batch could not be signed: the thread retries
            self._waiting.append(future)
            self._bytes += len(value)
            if ready:
                self._send_batch(ready)
                return future
            now = time.monotonic()
            if self._started is None:
                self._started = now
                if self._linger_idle:  # else it wakes at an earlier due time and sees this one
                    self._cond.notify()
            if self._retry_at is None and (
                self._bytes >= self._batch_bytes or now - self._started >= self.linger
            ):
                # due while sends keep coming: closed here rather than by the linger thread
                self._close_open_batch()
        return future

    def resend(self, futures: Iterable[SealedFuture]) -> list[SealedFuture]:
        """Send the same sealed bytes of failed ``futures`` again (after a lost acknowledgement
        or connection the record may have reached the broker: a consumer then drops the second
        copy as a duplicate instead of getting two messages). Returns new futures (same ``ref``),
        in order. A future whose message was never sealed (``envelope`` None: its batch could not
        be signed) cannot be resent: nothing of it reached the broker; ``send`` it again."""
        out = []
        for old in futures:
            if old.envelope is None:
                raise ConfigurationError(f"message {old.ref!r} was never sealed: send it again")
            future = SealedFuture(old.topic, old.ref, old.key, old.partition, old.timestamp_ms)
            with self._cond, translate_errors(f"sending to {old.topic!r}"):
                self._send_sealed(future, old.envelope)
            out.append(future)
        return out

    def flush(self, timeout: float | None = None) -> None:
        """Close the open sealed batch, then wait for everything to be acknowledged."""
        with self._cond:
            self._send_batch(self.sealer.flush())
        with translate_errors("flush"):
            self.producer.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        """Send the open sealed batch, stop the linger thread and close the producer.

        When the open batch cannot be signed (the key service is down, say), the producer is
        closed all the same, the futures of that batch fail with the error and it is raised."""
        error: BaseException | None = None
        with self._cond:
            if not self._closed:
                try:
                    self._send_batch(self.sealer.flush())
                except Exception as exc:
                    error = exc
                    self._fail_waiting(exc)
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with translate_errors("close"):
            self.producer.close(timeout=timeout)
        if error is not None:
            raise error

    def _linger_loop(self) -> None:
        """Closes batches after ``linger``. It never dies: a batch that cannot be signed (the
        key service is down) stays open and is retried with a growing delay (up to a second);
        send failures go to the futures."""
        with self._cond:
            while not self._closed:
                if self._started is None:
                    self._linger_idle = True
                    self._cond.wait()
                    self._linger_idle = False
                    continue
                due = self._started + self.linger
                if self._retry_at is not None:
                    due = max(due, self._retry_at)
                delay = due - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                self._close_open_batch()

    def _close_open_batch(self) -> None:
        """Seal and send the open batch (callers hold the lock). When it cannot be signed (the
        key service is down) it stays open and the linger thread retries it after a growing
        delay (up to a second); send failures go to the futures."""
        try:
            self._send_batch(self.sealer.flush())
        except Exception as exc:
            self.last_error = exc
            self._failures += 1
            wait = min(_RETRY_MAX, _RETRY_MIN * 2 ** min(self._failures - 1, 5))
            self._retry_at = time.monotonic() + wait
            if self.sealer.pending == 0:  # nothing left to retry
                self._started = None

    def _fail_waiting(self, exc: BaseException) -> None:
        error = (
            exc
            if isinstance(exc, BrokerError)
            else BrokerError(
                f"the open batch could not be sealed: {exc!r}",
                retryable=bool(getattr(exc, "retryable", False)),
            )
        )
        if error is not exc:
            error.__cause__ = exc
        for future in self._waiting:
            if not future.is_done:
                future.failure(error)
        self._waiting = []

    def _send_batch(self, batch: list[Any]) -> None:
        """Hand a closed batch to the producer, in order (callers hold the lock). A failing
        ``send`` fails its future and those of every later record of the batch."""
        self._started = None
        self._retry_at = None
        self._failures = 0
        self._bytes = 0
        self._waiting = []
        futures = [sealed.context for sealed in batch]
        if not all(isinstance(f, SealedFuture) for f in futures):
            raise ConfigurationError("the sealer's batch holds another adapter's messages")
        send = self.producer.send
        i = 0
        try:  # one handler for the batch: this loop runs once per record (_send_sealed inline)
            for i, sealed in enumerate(batch):
                future = futures[i]
                future.envelope = data = sealed.envelope
                future._sent = send(
                    future.topic,
                    data,
                    key=future.key,
                    partition=future.partition,
                    timestamp_ms=future.timestamp_ms,
                )
                if future._watchers is not None:  # see SealedFuture._sent_as
                    future._hook()
        except Exception as exc:
            failed = (
                exc
                if isinstance(exc, BrokerError)
                else broker_error(f"sending to {futures[i].topic!r}", exc)
            )
            for future in futures[i:]:  # keep per-key order: nothing after it goes out
                future.failure(failed)

    def _send_sealed(self, future: SealedFuture, data: bytes) -> None:
        """Send one sealed record where ``future`` says; kafka-python's errors propagate."""
        future.envelope = data
        sent = self.producer.send(
            future.topic,
            data,
            key=future.key,
            partition=future.partition,
            timestamp_ms=future.timestamp_ms,
        )
        future._sent_as(sent)


def _header_map(headers: KafkaHeaders | None) -> dict[str, HeaderValue] | None:
    if headers is None:
        return None
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ConfigurationError("sealed headers need distinct names")
    return result


@dataclass(frozen=True, slots=True)
class ConsumedRecord(OpenedRecord):
    """An opened record: the plaintext value and sealed headers, with where it came from."""

    message: OpenedMessage
    record: Any  # kafka-python's ConsumerRecord (its value is the envelope)

    @property
    def topic(self) -> str:
        return str(self.record.topic)

    @property
    def partition(self) -> int:
        return int(self.record.partition)

    @property
    def offset(self) -> int:
        return int(self.record.offset)


@dataclass(slots=True)
class _Hold:
    """A partition waiting: its first record could not be handled now."""

    error: SealedbusError
    retry_at: float  # monotonic


class SealedKafkaConsumer:
    """Opens what a ``KafkaConsumer`` reads; iterate it for ``ConsumedRecord``s.

    The consumer must have ``enable_auto_commit=False``: offsets are committed only for records
    the application has had and asked past (before the next fetch, on a rebalance and on
    ``close()``), so a crash loses nothing (it may redeliver). The record the application was on
    when it raised or left the loop is not committed; the next iteration hands it on again.
    Iteration ends after ``consumer_timeout_ms`` without records, as kafka-python's does.

    Progress is per partition. A record that cannot be handled now holds back only its own
    partition (and its commits); the others keep flowing:
    - a retryable error (``KeyServiceUnavailable``, a revocation list too old to trust): the
      partition is paused and the record opened again after ``retry_backoff`` seconds, doubling
      up to ``max_retry_backoff``; the error is raised once nothing else is ready, so the
      caller sees it and can back off;
    - a refusal of this reader (``AccessDenied``: not granted on the topic, revoked, unknown to
      the KDS): raised at once; nothing is committed or dead-lettered; the record stays first;
    - records that do not open go to ``dead_letter_topic`` (``<topic>.dlq`` unless given) through
      ``dead_letter_producer``, with the reason in the ``x-sealedbus-reason`` header, and count as
      handled once the broker has them. One the dead-letter topic does not take is retried, then
      parked and skipped, as ``undeliverable`` (an ``UndeliverablePolicy``) says.

    Replay state survives restarts and rebalances: each offset commit carries, in its metadata,
    the highest sequence number handled per producer session of that partition (the newest
    sessions that fit in ``replay_state_bytes`` characters, at most ``replay_state_age`` seconds
    old). Whoever reads the partition next starts its replay windows there (SPEC.md 7.10).
    """

    def __init__(
        self,
        consumer: Any,
        opener: Opener,
        *,
        dead_letter_producer: Any,
        dead_letter_topic: str | None = None,
        dead_letter_timeout: float = 30.0,
        poll_timeout: float = 0.5,
        max_records: int = 500,
        retry_backoff: float = 0.1,
        max_retry_backoff: float = 2.0,
        undeliverable: UndeliverablePolicy | None = None,
        replay_state_age: float = 25 * 3600.0,
        replay_state_bytes: int = DEFAULT_STATE_BYTES,
        check_sizes: bool = True,
    ) -> None:
        if consumer.config["enable_auto_commit"]:
            raise ConfigurationError(
                "SealedKafkaConsumer commits itself: build the KafkaConsumer with "
                "enable_auto_commit=False"
            )
        if not 0 < retry_backoff <= max_retry_backoff:
            raise ConfigurationError("need 0 < retry_backoff <= max_retry_backoff")
        self.consumer = consumer
        self.opener = opener
        self.dead_letter_producer = dead_letter_producer
        self.dead_letter_topic = dead_letter_topic
        self.dead_letter_timeout = dead_letter_timeout
        self.poll_timeout_ms = int(poll_timeout * 1000)
        self.max_records = max_records
        self.retry_backoff = retry_backoff
        self.max_retry_backoff = max_retry_backoff
        self.undeliverable = undeliverable or UndeliverablePolicy()
        self.replay_state_age = replay_state_age
        self.replay_state_bytes = replay_state_bytes
        self.check_sizes = check_sizes
        self.skipped = 0  # refused records whose dead letter could not be delivered (policy)
        self._buffers: dict[Any, deque[Any]] = {}  # TopicPartition -> fetched, not handed on
        self._opened: dict[int, OpenedMessage | SealedbusError] = {}  # by id(record), ahead
        self._done: dict[Any, int] = {}  # TopicPartition -> next offset to commit
        self._state: dict[Any, dict[bytes, tuple[int, int]]] = {}  # replay state per partition
        self._holds: dict[Any, _Hold] = {}
        self._failures: dict[Any, tuple[int, int]] = {}  # tp -> (offset, failed tries)
        self._unreported: SealedbusError | None = None  # a hold the caller has not heard of
        self._revoked_partitions: set[Any] = set()  # filled by the rebalance listener
        self._assigned_partitions: set[Any] = set()
        self._current: ConsumedRecord | None = None  # handed on, not yet asked past
        self._listener = _Listener(self)

    def subscribe(self, topics: Iterable[str]) -> None:
        """Subscribe (as ``KafkaConsumer.subscribe``) with a listener that commits what was
        handled before partitions move to another member of the group; then (unless
        ``check_sizes`` is off) warn in the log when a dead-letter topic or producer takes
        smaller records than the topic (one admin request)."""
        topics = list(topics)
        with translate_errors("subscribe"):
            self.consumer.subscribe(topics, listener=self._listener)
        if self.check_sizes:
            for warning in self.check_dead_letter_sizes(topics):
                log.warning("%s", warning)

    def check_dead_letter_sizes(self, topics: Iterable[str]) -> list[str]:
        """Compare each topic's ``max.message.bytes`` with its dead-letter topic's and with the
        dead-letter producer's ``max_request_size``: a record the dead letters cannot take is
        found at start-up, not when one arrives. Returns the warnings (empty when unsure)."""
        try:
            sizes = max_message_bytes(
                self.consumer.config,
                [t for topic in topics for t in (topic, self._dead_letter_topic(topic))],
            )
        except Exception as exc:  # an admin API the broker or the ACLs refuse: no check
            log.info("could not compare dead-letter record sizes: %r", exc)
            return []
        request = getattr(self.dead_letter_producer, "config", {}).get("max_request_size")
        warnings = []
        for topic in topics:
            source, dlq = sizes.get(topic), sizes.get(self._dead_letter_topic(topic))
            if source is None:
                continue
            for name, limit in (
                (f"dead-letter topic {self._dead_letter_topic(topic)!r} max.message.bytes", dlq),
                ("dead_letter_producer max_request_size", request),
            ):
                if isinstance(limit, int) and limit + 4096 < source:
                    warnings.append(
                        f"topic {topic!r} takes records up to {source} bytes but the {name} is "
                        f"{limit}: larger records that do not open cannot be dead-lettered and "
                        "will be parked and skipped (UndeliverablePolicy)"
                    )
        return warnings

    def _dead_letter_topic(self, topic: str) -> str:
        return self.dead_letter_topic or f"{topic}.dlq"

    def __iter__(self) -> Iterator[ConsumedRecord]:
        timeout = self.consumer.config["consumer_timeout_ms"] / 1000
        idle_since = time.monotonic()
        ahead = self._opened
        session, epoch, digest = b"", -1, b""  # the last record's producer session, named
        while True:
            tp = self._ready()
            if tp is None:
                self.commit()
                if self._fetch():
                    idle_since = time.monotonic()
                    continue
                if self._unreported is not None:  # held, and nothing else to hand on
                    error, self._unreported = self._unreported, None
                    raise error
                if not self._holds and time.monotonic() - idle_since >= timeout:
                    return
                continue
            buffer = self._buffers[tp]
            state = self._state.get(tp)
            # the partition _ready picked stays first while nothing is held (only a fetch adds
            # records, and only once every buffer is empty): no _ready per record
            while buffer:
                record = buffer[0]
                result = ahead.pop(id(record), None)
                if result is None:
                    self._open_ahead()
                    result = ahead.pop(id(record))
                if isinstance(result, OpenedMessage):
                    try:
                        check_bound_key(result.headers, record.key)
                    except InvalidEnvelope as exc:
                        self.opener.release(result)
                        self.opener.metrics.rejected(record.topic, exc.reason.value)
                        result = exc
                if not isinstance(result, OpenedMessage):
                    self._refused(tp, record, result)
                    break  # held, or handled (duplicate, dead-lettered, skipped): look again
                message = result
                opened = ConsumedRecord(message, record)
                buffer.popleft()
                self._current = opened
                try:
                    yield opened
                except BaseException:  # the application raised or left the loop: not handled
                    if self._current is opened:
                        self._current = None
                        self.opener.release(message)
                        buffer.appendleft(record)  # handed on again by the next iteration
                    raise
                if self._current is not opened:  # close() ran meanwhile: it was given back
                    return
                self._current = None
                # _handled, inline for an opened record
                self._done[tp] = record.offset + 1
                if self._failures and self._failures.pop(tp, None) is not None and not self._holds:
                    self._unreported = None  # the wait is over before anyone heard of it
                if message.session:
                    if message.session != session or message.epoch != epoch:
                        session, epoch = message.session, message.epoch
                        digest = message.replay_digest
                    if state is None:
                        state = self._state.setdefault(tp, {})
                    last = state.get(digest)
                    seq = message.sequence
                    state[digest] = (
                        seq if last is None or seq > last[0] else last[0],
                        int(message.sent_at),
                    )
                if self._holds:
                    break  # a held partition may be due before this one's next record

    def commit(self) -> None:
        """Commit the offsets of every record handled so far (dead-lettered, duplicate, or
        handed out and asked past), each with the partition's replay state as metadata. If this
        member was dropped from the group meanwhile (``CommitFailedError``: it spent longer than
        ``max_poll_interval_ms`` between fetches), those offsets are given up: whoever owns the
        partitions now reads from the last commit (this opener drops what it already handed on),
        and the next fetch rejoins the group."""
        if not self._done:
            return
        offsets = self._offsets()
        try:
            with translate_errors("commit"):
                self.consumer.commit(offsets=offsets)
        except BrokerError as exc:
            if isinstance(exc.__cause__, _LOST_MEMBERSHIP):
                for tp in offsets:
                    self._done.pop(tp, None)
                return
            if isinstance(exc.__cause__, RebalanceInProgressError):
                return  # retried after the next fetch (revoked partitions are dropped then)
            raise
        for tp, off in offsets.items():
            if self._done.get(tp) == off.offset:
                del self._done[tp]

    def close(self) -> None:
        """Commit what the application had, then close the consumer. Records fetched and opened
        ahead but not handed on are released in the opener: whoever reads them next opens them."""
        if self._current is not None:  # handed on but never asked past: not handled
            self.opener.release(self._current.message)
            self._current = None
        for buffer in self._buffers.values():
            for record in buffer:
                self._forget(record)
        self._buffers.clear()
        self._holds.clear()
        try:
            self.commit()
        finally:
            with translate_errors("close"):
                self.consumer.close(autocommit=False)

    # -- internals ----------------------------------------------------------------------------

    def _offsets(self) -> dict[Any, Any]:
        now = time.time()
        return {
            tp: OffsetAndMetadata(
                off,
                encode_replay_state(
                    self._state.get(tp, {}), now, self.replay_state_age, self.replay_state_bytes
                ),
                -1,
            )
            for tp, off in dict(self._done).items()
        }

    def _ready(self) -> Any:
        """The first partition with a record to handle now (held ones once their time came)."""
        now = time.monotonic()
        for tp, buffer in self._buffers.items():
            if not buffer:
                continue
            hold = self._holds.get(tp)
            if hold is not None:
                if now < hold.retry_at:
                    continue
                del self._holds[tp]
                with contextlib.suppress(Exception):  # revoked meanwhile: nothing to resume
                    self.consumer.resume(tp)
            return tp
        return None

    def _fetch(self) -> bool:
        """Poll once (not longer than the next held partition's retry); True if records came."""
        wait_ms = self.poll_timeout_ms
        if self._holds:
            due = min(h.retry_at for h in self._holds.values()) - time.monotonic()
            wait_ms = max(0, min(wait_ms, int(due * 1000)))
        with translate_errors("poll"):
            fetched = self.consumer.poll(timeout_ms=wait_ms, max_records=self.max_records)
        if self._revoked_partitions:
            self._drop_revoked()
        if self._assigned_partitions:
            self._restore_assigned()
        for tp, records in fetched.items():
            if records:
                self._buffers.setdefault(tp, deque()).extend(records)
        return any(fetched.values())

    def _hold(self, tp: Any, record: Any, error: SealedbusError, delay: float) -> None:
        self._holds[tp] = _Hold(error, time.monotonic() + delay)
        self._unreported = error
        with contextlib.suppress(Exception):  # no longer assigned: the rebalance drops it
            self.consumer.pause(tp)

    def _failed(self, tp: Any, record: Any) -> int:
        """Count one more failed try for the partition's first record; returns the count."""
        offset, failures = self._failures.get(tp, (record.offset, 0))
        failures = failures + 1 if offset == record.offset else 1
        self._failures[tp] = (record.offset, failures)
        return failures

    def _handled(self, tp: Any, record: Any) -> None:
        """A record that did not open was handled (as ``__iter__`` does inline for the rest)."""
        self._done[tp] = record.offset + 1
        if self._failures.pop(tp, None) is not None and not self._holds:
            self._unreported = None  # the wait is over before anyone heard of it

    def _refused(self, tp: Any, record: Any, result: SealedbusError) -> None:
        """Handle the first record of ``tp``, which did not open (``result``), or hold its
        partition. Raises what stops this reader (AccessDenied...)."""
        stop = reader_refusal(record.topic, result)
        if stop is not None:
            failures = self._failed(tp, record)
            if not stop.retryable:
                raise stop  # this reader may not read: nothing is committed or dead-lettered
            delay = min(self.max_retry_backoff, self.retry_backoff * 2 ** min(failures - 1, 16))
            for later in self._buffers[tp]:  # opened again, in order, when the retry comes
                self._forget(later)
            self._hold(tp, record, stop, delay)
            return
        assert isinstance(result, InvalidEnvelope)  # noqa: S101  # reader_refusal took the rest
        if is_duplicate(result):
            self._buffers[tp].popleft()
            self._handled(tp, record)
            return
        try:
            self._dead_letter(record, result)
        except BrokerError as exc:
            failures = self._failed(tp, record)
            if failures < self.undeliverable.attempts:
                self._opened[id(record)] = result  # still first in line, still refused
                error = self.undeliverable.retrying(exc, failures)
                self._hold(tp, record, error, self.undeliverable.delay(failures))
                return
            self.undeliverable.give_up(
                Undeliverable(
                    record.topic,
                    f"partition {record.partition} offset {record.offset}",
                    record.value or b"",
                    result.reason.value,
                    str(exc),
                )
            )
            self.skipped += 1
        self._buffers[tp].popleft()
        self._handled(tp, record)

    def _revoked(self, partitions: Iterable[Any]) -> None:
        """Runs on kafka-python's IO thread during a rebalance (it must not block there).

        What was handed out is normally committed already (``__iter__`` commits before each
        fetch, and rebalances happen inside that fetch); an asynchronous commit covers the rest.
        Buffered records of the revoked partitions are dropped by ``__iter__``: the new owner
        reads them from the last commit.
        """
        offsets = self._offsets()
        if offsets:
            with contextlib.suppress(KafkaError):
                self.consumer.commit_async(offsets=offsets)
        self._revoked_partitions.update(partitions)

    def _drop_revoked(self) -> None:
        gone, self._revoked_partitions = self._revoked_partitions, set()
        for tp in gone:
            for r in self._buffers.pop(tp, ()):
                self._forget(r)  # its new owner reads it from the last commit
            self._done.pop(tp, None)
            self._holds.pop(tp, None)
            self._failures.pop(tp, None)
            self._state.pop(tp, None)

    def _restore_assigned(self) -> None:
        """Start the replay windows of newly assigned partitions from their committed state."""
        new, self._assigned_partitions = self._assigned_partitions, set()
        for tp in new:
            try:
                with translate_errors("reading committed replay state"):
                    committed = self.consumer.committed(tp, metadata=True)
            except BrokerError as exc:
                log.warning("no replay state for %s: %s", tp, exc)
                continue
            entries = decode_replay_state(getattr(committed, "metadata", None))
            if entries:
                state = self._state.setdefault(tp, {})
                for digest, (seq, sent) in entries.items():
                    if seq > state.get(digest, (-1, 0))[0]:
                        state[digest] = (seq, sent)
                self.opener.restore_replay(
                    tp.topic, tp.partition, {d: q for d, (q, _) in entries.items()}
                )

    def _open_ahead(self) -> None:
        """Open every buffered record at once: with ``Opener(threads=2)`` per-message
        signatures verify on both cores."""
        ahead, holds = self._opened, self._holds
        todo: list[Any] = []
        for tp, buffer in self._buffers.items():
            if tp not in holds:  # never open one twice
                todo.extend(buffer if not ahead else [r for r in buffer if id(r) not in ahead])
        results = self.opener.open_many([(r.topic, r.value or b"", r.partition) for r in todo])
        ahead.update(zip(map(id, todo), results, strict=True))

    def _forget(self, record: Any) -> None:
        """Drop an opened-ahead result that will not be handed on, so a redelivery opens."""
        result = self._opened.pop(id(record), None)
        if isinstance(result, OpenedMessage):
            self.opener.release(result)

    def _dead_letter(self, record: Any, exc: InvalidEnvelope) -> None:
        topic = self._dead_letter_topic(record.topic)
        extra = {
            **dead_letter_headers(record.topic, exc),
            "x-sealedbus-partition": str(record.partition),
            "x-sealedbus-offset": str(record.offset),
        }
        if record.value is None:  # kafka-python refuses a record with null value and key
            extra[NULL_VALUE_HEADER] = "1"
        headers = [*(record.headers or []), *((k, v.encode()) for k, v in extra.items())]
        value = record.value if record.value is not None else b""
        with translate_errors(f"dead-lettering to {topic!r}"):
            self.dead_letter_producer.send(topic, value, key=record.key, headers=headers).get(
                timeout=self.dead_letter_timeout
            )
        report_dead_letter(self.opener, record.topic, exc, record.value)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base class
    def __init__(self, owner: SealedKafkaConsumer) -> None:
        self._owner = owner

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._owner._revoked(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._owner._assigned_partitions.update(assigned)
