"""RabbitMQ through pika: a wrapper around a ``BlockingChannel`` that seals on publish and opens
on consume. Import this module only where pika is installed (``pip install sealedbus[rabbitmq]``).

Topic binding: a publish is sealed for the *sealing topic* of its exchange, the exchange name
unless ``topics`` maps it to another name (the default exchange ``""`` needs such a mapping). The
consuming side opens each delivery for the sealing topic of the exchange it came through, so an
envelope moved (re-published) to another exchange does not open there: it is dead-lettered.

Properties: ``headers`` and ``content_type`` are sealed into the envelope and do not travel in
clear; ``expiration`` also becomes the envelope's expiry. The routing key is sealed too and
checked on delivery (a message the broker delivers under another routing key is refused). Every
other property travels as given, unauthenticated.

Signing: one Ed25519 signature per message by default. With ``linger`` > 0, publishes join the
sealer's Merkle batch and go out together, in order, when it holds ``Sealer.batch_size`` messages,
when its first message is ``linger`` seconds old (checked at each publish, and by a timer that
fires while pika pumps events: ``process_data_events``, ``sleep``, consuming) or on ``flush()`` /
``close()``. One signature then covers the batch; a message may wait up to ``linger`` seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import pika
import pika.exceptions

from sealedbus.brokers._common import (
    SEALED_CONTENT_TYPE,
    Undeliverable,
    UndeliverablePolicy,
    bind_key,
    check_headers,
    dead_letter_headers,
    is_duplicate,
    reader_refusal,
    report_dead_letter,
    take_bound_key,
)
from sealedbus.errors import (
    BrokerError,
    ConfigurationError,
    InvalidEnvelope,
    SealedbusError,
)
from sealedbus.opener import OpenedMessage, Opener
from sealedbus.sealer import Sealed, Sealer

DEFAULT_DEAD_LETTER_EXCHANGE = "sealedbus.dead-letter"

_NOT_RETRYABLE = (
    pika.exceptions.AuthenticationError,
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.IncompatibleProtocolError,
)
_RETRYABLE = (
    pika.exceptions.AMQPConnectionError,  # includes a lost stream and a closed connection
    pika.exceptions.ChannelWrongStateError,  # the channel went with its connection
    pika.exceptions.NackError,  # the broker could not take the message now
)

_Received = tuple[Any, Any, OpenedMessage]
"""What consumers get: pika's ``Basic.Deliver`` method, its ``BasicProperties``, the message."""
OnMessage = Callable[["SealedChannel", Any, Any, OpenedMessage], None]


@dataclass(slots=True)  # not frozen: its __init__ would cost 1.4 µs a message, against 0.4
class _Publish:
    """Where a batched message goes once its batch is signed (never changed once made)."""

    exchange: str
    routing_key: str
    properties: Any
    mandatory: bool
    ref: Any = None


@dataclass(frozen=True, slots=True)
class Unpublished:
    """A sealed message whose publish was not confirmed: where it was going, the application's
    ``ref`` (what it passed to ``basic_publish(ref=...)``) and the sealed ``envelope``, to send
    again with ``SealedChannel.republish`` (the same bytes: a consumer drops a second copy)."""

    exchange: str
    routing_key: str
    ref: Any
    envelope: bytes = dataclasses.field(repr=False)
    properties: Any = dataclasses.field(repr=False, default=None)
    mandatory: bool = False


class BatchNotPublished(BrokerError):
    """A publish (or part of a linger batch) was not confirmed by the broker. ``unpublished``
    lists each message not known published (``Unpublished``), in order: first the one that
    failed, then the rest of the batch. It may have reached the broker all the same (a lost
    confirm or connection): re-send it with ``republish(error.unpublished)`` on a new channel,
    never by publishing the body again. With ``linger`` the channel also keeps the rest (not the
    failed one when the failure is not retryable, such as an unroutable ``mandatory`` message)
    and publishes it first at the next ``basic_publish`` / ``flush()``."""

    def __init__(self, message: str, *, retryable: bool, unpublished: list[Unpublished]) -> None:
        super().__init__(message, retryable=retryable)
        self.unpublished = unpublished


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn pika's exceptions into ``BrokerError`` (retryable when reconnecting may help);
    pika's ValueError / TypeError (bad arguments) become non-retryable ones."""
    try:
        yield
    except Exception as exc:
        _raise_translated(what, exc)


def _raise_translated(what: str, exc: Exception) -> NoReturn:
    """Raise the ``BrokerError`` for ``exc`` from it, or ``exc`` itself (``_translated``): the
    body of ``translate_errors``, for loops that cannot afford a context manager per message."""
    error = _translated(what, exc)
    if error is exc:
        raise exc
    raise error from exc


def _translated(what: str, exc: Exception) -> Exception:
    """The ``BrokerError`` for one of pika's exceptions; any other exception as it is."""
    if isinstance(exc, _NOT_RETRYABLE):  # some are subclasses of retryable ones: first
        return BrokerError(f"{what}: {exc!r}", retryable=False)
    if isinstance(exc, _RETRYABLE):
        return BrokerError(f"{what}: {exc!r}", retryable=True)
    if isinstance(exc, pika.exceptions.AMQPError) or (
        isinstance(exc, ValueError | TypeError) and not isinstance(exc, SealedbusError)
    ):
        return BrokerError(f"{what}: {exc!r}", retryable=False)
    return exc


class SealedChannel:
    """A pika ``BlockingChannel`` that seals what it publishes and opens what it consumes.

    ``sealer`` is needed to publish, ``opener`` to consume. Declarations, QoS and the rest go to
    the pika channel itself (``.channel``). A delivery that does not open is published to
    ``dead_letter_exchange`` (declared, with a queue of the same name, unless
    ``declare_dead_letter`` is false) through a confirmed channel, then acknowledged.

    ``linger`` > 0 turns on batch signing (see the module docstring); give such a channel a
    ``Sealer`` of its own, and ``flush()`` (or ``close()``) before you stop publishing.
    """

    def __init__(
        self,
        channel: Any,
        *,
        sealer: Sealer | None = None,
        opener: Opener | None = None,
        topics: Mapping[str, str] | None = None,
        dead_letter_exchange: str = DEFAULT_DEAD_LETTER_EXCHANGE,
        declare_dead_letter: bool = True,
        linger: float = 0.0,
        undeliverable: UndeliverablePolicy | None = None,
    ) -> None:
        if linger < 0:
            raise ConfigurationError("linger must not be negative")
        self.channel = channel
        self.sealer = sealer
        self.opener = opener
        self.topics = dict(topics or {})
        self.dead_letter_exchange = dead_letter_exchange
        self.linger = linger
        self.undeliverable = undeliverable or UndeliverablePolicy()
        self.skipped = 0  # refused messages whose dead letter could not be delivered (policy)
        self._dead_letter_failures: OrderedDict[bytes, int] = OrderedDict()
        self._batch_started: float | None = None  # monotonic time of the open batch's first one
        self._timer_armed = False
        self._unacked: dict[int, OpenedMessage] = {}
        self._unsent: list[Sealed] = []  # signed batch members still to publish, in order
        self._dead_letter_channel: Any = None
        if opener is not None:
            with translate_errors("opening the dead-letter channel"):
                dl = channel.connection.channel()
                dl.confirm_delivery()
                if declare_dead_letter:
                    dl.exchange_declare(dead_letter_exchange, "fanout", durable=True)
                    dl.queue_declare(dead_letter_exchange, durable=True)
                    dl.queue_bind(dead_letter_exchange, dead_letter_exchange)
            self._dead_letter_channel = dl

    def topic_of(self, exchange: str) -> str:
        """The sealing topic of ``exchange``."""
        topic = self.topics.get(exchange, exchange)
        if not topic:
            raise ConfigurationError("the default exchange needs a sealing topic: topics={'': ...}")
        return topic

    # -- publishing ---------------------------------------------------------------------------

    def confirm_delivery(self) -> None:
        """Turn on publisher confirms: ``basic_publish`` then returns once the broker has it."""
        with translate_errors("confirm_delivery"):
            self.channel.confirm_delivery()

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Any = None,
        mandatory: bool = False,
        *,
        ref: Any = None,
        subject: str | None = None,
    ) -> None:
        """Seal ``body`` for the exchange's topic and publish it, as pika's ``basic_publish``.
        ``subject``: seal it for a data subject, erasable on its own (``Sealer.seal``).

        Raises AccessDenied or UnknownTopic (not a producer), KeyServiceUnavailable, or
        ``BatchNotPublished`` (a BrokerError; with confirms: a nack or a lost connection is
        retryable, UnroutableError is not) whose ``unpublished`` holds the sealed message with
        ``ref`` (the application's message or id) for ``republish``. With ``linger`` the message
        may wait for its batch; the channel keeps the rest of a failed batch and publishes it
        first at the next ``basic_publish`` or ``flush()``.
        """
        if self.sealer is None:
            raise ConfigurationError("this SealedChannel has no sealer")
        topic = self.topic_of(exchange)
        props = _copy_properties(properties)
        ttl = None
        if props.expiration is not None:
            try:
                ttl = int(props.expiration) / 1000
            except ValueError:
                raise ConfigurationError("expiration must be milliseconds as a string") from None
        headers = bind_key(routing_key.encode(), check_headers(props.headers))
        content_type = props.content_type or ""
        props.headers = None
        props.content_type = SEALED_CONTENT_TYPE
        to = _Publish(exchange, routing_key, props, mandatory, ref)
        if not self.linger:
            data = self.sealer.seal(
                topic, body, headers=headers, content_type=content_type, ttl=ttl, subject=subject
            )
            self._publish_sealed([Sealed(topic, data, to)], keep=False)
            return
        ready = self.sealer.add(
            topic,
            body,
            headers=headers,
            content_type=content_type,
            ttl=ttl,
            context=to,
            subject=subject,
        )
        if not ready:
            now = time.monotonic()
            if self._batch_started is None:
                self._batch_started = now
                self._arm_timer()
            elif now - self._batch_started >= self.linger:
                ready = self.sealer.flush()
        if ready or self._unsent:
            self._publish_batch(ready)

    def flush(self) -> None:
        """Sign and publish the open batch now, after what an earlier failure left unsent
        (nothing to do without ``linger``)."""
        if self.sealer is not None and self.linger:
            self._publish_batch(self.sealer.flush())

    @property
    def unpublished(self) -> list[Unpublished]:
        """Signed messages an earlier failure left unsent (published first at the next
        ``basic_publish`` / ``flush()``)."""
        return [_unpublished(s) for s in self._unsent]

    def republish(self, unpublished: Iterable[Unpublished]) -> None:
        """Publish the same sealed bytes again (from a ``BatchNotPublished`` of this or another,
        broken, channel), in order. Whatever reached the broker the first time is dropped as a
        duplicate by consumers; nothing is sealed again. Raises ``BatchNotPublished`` with what is
        left when a publish fails again."""
        self._publish_sealed(
            [
                Sealed(
                    self.topic_of(u.exchange),
                    u.envelope,
                    _Publish(u.exchange, u.routing_key, u.properties, u.mandatory, u.ref),
                )
                for u in unpublished
            ],
            keep=False,
        )

    def _arm_timer(self) -> None:
        if self._timer_armed:
            return
        self._timer_armed = True
        with translate_errors("scheduling the batch timer"):
            self.channel.connection.call_later(self.linger, self._on_timer)

    def _on_timer(self) -> None:
        self._timer_armed = False
        if self._batch_started is None or not self.channel.is_open:
            return
        if time.monotonic() - self._batch_started >= self.linger:
            self.flush()
        else:  # a newer batch opened since this timer was set
            self._arm_timer()

    def _publish_batch(self, batch: list[Sealed]) -> None:
        """Publish what an earlier failure left, then a closed batch, in order. At the first
        failure keep the rest (with the failed one when retrying may help) and raise."""
        if batch:
            self._batch_started = None
        for sealed in batch:
            if not isinstance(sealed.context, _Publish):
                raise ConfigurationError("the sealer's batch holds another adapter's messages")
        todo, self._unsent = [*self._unsent, *batch], []
        self._publish_sealed(todo, keep=True)

    def _publish_sealed(self, todo: list[Sealed], *, keep: bool) -> None:
        """Publish sealed messages in order; at the first failure raise BatchNotPublished with
        it and the rest (and, with ``keep``, keep them for the next publish or flush)."""
        i, publish = 0, self.channel.basic_publish
        try:  # one handler for all: this loop runs once per message
            for i, sealed in enumerate(todo):  # noqa: B007  # i: where it failed
                to = sealed.context
                publish(to.exchange, to.routing_key, sealed.envelope, to.properties, to.mandatory)
        except Exception as exc:
            error = _translated(f"publishing to {todo[i].context.exchange!r}", exc)
            if not isinstance(error, BrokerError):
                raise
            if keep:
                self._unsent = todo[i:] if error.retryable else todo[i + 1 :]
            kept = f" ({len(self._unsent)} kept for the next publish or flush)"
            raise BatchNotPublished(
                f"{error}; {len(todo) - i} message(s) not known published{kept if keep else ''}",
                retryable=error.retryable,
                unpublished=[_unpublished(s) for s in todo[i:]],
            ) from exc

    # -- consuming ----------------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        auto_ack: bool = False,
        exclusive: bool = False,
        arguments: Mapping[str, Any] | None = None,
        inactivity_timeout: float | None = None,
    ) -> Iterator[_Received | tuple[None, None, None]]:
        """As pika's ``consume()``, yielding ``(method, properties, OpenedMessage)``; with an
        ``inactivity_timeout``, ``(None, None, None)`` when nothing came for that long.

        Acknowledge with ``basic_ack(method.delivery_tag)`` unless ``auto_ack``.
        """
        opener = self._require_opener()
        with translate_errors(f"consuming {queue!r}"):
            deliveries = self.channel.consume(
                queue,
                auto_ack=auto_ack,
                exclusive=exclusive,
                arguments=dict(arguments) if arguments else None,
                inactivity_timeout=inactivity_timeout,
            )
        while True:
            try:  # not a context manager: this runs once per message
                item = next(deliveries, None)
            except Exception as exc:
                _raise_translated(f"consuming {queue!r}", exc)
            if item is None:
                return
            method, properties, body = item
            if method is None:
                yield None, None, None
                continue
            message = self._open(opener, method, properties, body, auto_ack)
            if message is not None:
                yield method, properties, message

    def cancel(self) -> int:
        """Cancel the ``consume()`` generator; its prefetched messages go back to the queue."""
        with translate_errors("cancel"):
            return int(self.channel.cancel())

    def basic_consume(
        self,
        queue: str,
        on_message_callback: OnMessage,
        auto_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> str:
        """As pika's ``basic_consume``; the callback gets ``(sealed_channel, method, properties,
        OpenedMessage)``. When it raises, the message goes back to the queue (and will be
        accepted again) and the exception propagates out of ``start_consuming``."""
        opener = self._require_opener()

        def deliver(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            message = self._open(opener, method, properties, body, auto_ack)
            if message is None:
                return
            try:
                on_message_callback(self, method, properties, message)
            except BaseException:
                if auto_ack:
                    opener.release(message)
                elif self._unacked.pop(method.delivery_tag, None) is not None:
                    opener.release(message)  # not settled by the callback: give it back
                    with translate_errors("requeueing after a failed callback"):
                        self.channel.basic_nack(method.delivery_tag, requeue=True)
                raise

        with translate_errors(f"consuming {queue!r}"):
            return str(
                self.channel.basic_consume(
                    queue,
                    deliver,
                    auto_ack=auto_ack,
                    exclusive=exclusive,
                    consumer_tag=consumer_tag,
                    arguments=dict(arguments) if arguments else None,
                )
            )

    def basic_cancel(self, consumer_tag: str) -> None:
        with translate_errors("basic_cancel"):
            self.channel.basic_cancel(consumer_tag)

    def start_consuming(self) -> None:
        with translate_errors("start_consuming"):
            self.channel.start_consuming()

    def stop_consuming(self) -> None:
        with translate_errors("stop_consuming"):
            self.channel.stop_consuming()

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        self._settled(delivery_tag, multiple, requeue=False)
        with translate_errors("basic_ack"):
            self.channel.basic_ack(delivery_tag, multiple)

    def basic_nack(
        self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Give messages back (``requeue``, accepted again when redelivered) or drop them."""
        self._settled(delivery_tag, multiple, requeue=requeue)
        with translate_errors("basic_nack"):
            self.channel.basic_nack(delivery_tag, multiple, requeue)

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self._settled(delivery_tag, False, requeue=requeue)
        with translate_errors("basic_reject"):
            self.channel.basic_reject(delivery_tag, requeue)

    def close(self) -> None:
        """Publish the open batch (if any), then close the dead-letter and wrapped channels.

        Deliveries not yet acknowledged go back to the queue with the channel; they are released
        in the opener first, so a consumer reusing it accepts them again. Raises BrokerError
        (``BatchNotPublished``) when sealed messages are left that could not be published."""
        error: BrokerError | None = None
        if self.sealer is not None and self.linger:
            if self.channel.is_open:
                try:
                    self.flush()
                except BrokerError as exc:
                    error = exc
            else:
                try:
                    left = [*self._unsent, *self.sealer.flush()]
                except SealedbusError:
                    left = list(self._unsent)
                if left or self.sealer.pending:
                    error = BatchNotPublished(
                        f"the channel is closed: {len(left) + self.sealer.pending} sealed "
                        "message(s) not published",
                        retryable=True,
                        unpublished=[_unpublished(s) for s in left],
                    )
                self._unsent = []
        if self.opener is not None:
            for message in self._unacked.values():
                self.opener.release(message)
        self._unacked.clear()
        with translate_errors("closing the channel"):
            for ch in (self._dead_letter_channel, self.channel):
                if ch is not None and ch.is_open:
                    ch.close()
        if error is not None:
            raise error

    # -- internals ----------------------------------------------------------------------------

    def _require_opener(self) -> Opener:
        if self.opener is None:
            raise ConfigurationError("this SealedChannel has no opener")
        return self.opener

    def _settled(self, delivery_tag: int, multiple: bool, *, requeue: bool) -> None:
        if multiple:
            tags = [t for t in self._unacked if delivery_tag == 0 or t <= delivery_tag]
        else:
            tags = [delivery_tag]
        for tag in tags:
            message = self._unacked.pop(tag, None)
            if message is not None and requeue and self.opener is not None:
                self.opener.release(message)

    def _open(
        self, opener: Opener, method: Any, properties: Any, body: bytes, auto_ack: bool
    ) -> OpenedMessage | None:
        """The opened message, or None when it was a duplicate or went to the dead letters."""
        tag = method.delivery_tag
        topic = self.topics.get(method.exchange, method.exchange)
        try:
            message = opener.open(topic, body)
            try:  # checked, then the application's headers only: in place on the message
                # fresh from the opener (dataclasses.replace builds it again: 4-8 µs a message)
                take_bound_key(message.headers, method.routing_key)
            except InvalidEnvelope as exc:
                opener.release(message)
                opener.metrics.rejected(topic, exc.reason.value)
                raise
        except SealedbusError as exc:
            stop = reader_refusal(topic, exc)
            if stop is not None:  # this reader may not read, or not now: not the message's fault
                if not auto_ack:
                    with translate_errors("requeueing a message this reader cannot open now"):
                        self.channel.basic_nack(tag, requeue=True)
                if stop is exc:
                    raise
                raise stop from exc
            if not isinstance(exc, InvalidEnvelope):
                raise
            if not is_duplicate(exc):
                self._dead_letter(topic, method, properties, body, exc, auto_ack)
            if not auto_ack:
                with translate_errors("acknowledging a refused message"):
                    self.channel.basic_ack(tag)
            return None
        if not auto_ack:
            self._unacked[tag] = message
        return message

    def _dead_letter(
        self,
        topic: str,
        method: Any,
        properties: Any,
        body: bytes,
        exc: InvalidEnvelope,
        auto_ack: bool,
    ) -> None:
        """Publish the dead letter. When that fails, the message goes back to the queue for
        another try and the error is raised; after ``undeliverable.attempts`` failed tries of one
        message (or at once with ``auto_ack``), it is parked and skipped (acknowledged)."""
        props = copy.copy(properties) if properties is not None else pika.BasicProperties()
        props.headers = {
            **(props.headers or {}),
            **dead_letter_headers(topic, exc),
            "x-sealedbus-exchange": method.exchange,
            "x-sealedbus-routing-key": method.routing_key,
        }
        props.expiration = None  # an expired envelope must still reach the dead letters
        props.delivery_mode = 2  # persistent, even when the original was transient
        try:
            with translate_errors("dead-lettering"):
                self._dead_letter_channel.basic_publish(
                    self.dead_letter_exchange, method.routing_key, body, props, mandatory=True
                )
        except BrokerError as error:
            digest = hashlib.sha256(body).digest()
            failures = self._dead_letter_failures.pop(digest, 0) + 1
            if failures >= self.undeliverable.attempts or auto_ack:
                self.undeliverable.give_up(
                    Undeliverable(
                        topic,
                        f"exchange {method.exchange!r} routing key {method.routing_key!r}",
                        body,
                        exc.reason.value,
                        str(error),
                    )
                )
                self.skipped += 1
                return
            self._dead_letter_failures[digest] = failures
            if len(self._dead_letter_failures) > 10_000:
                self._dead_letter_failures.popitem(last=False)
            with translate_errors("requeueing after failed dead-lettering"):
                self.channel.basic_nack(method.delivery_tag, requeue=True)
            raise self.undeliverable.retrying(error, failures) from error  # back in the queue
        self._dead_letter_failures.pop(hashlib.sha256(body).digest(), None)
        if self.opener is not None:
            report_dead_letter(self.opener, topic, exc, body)


def _copy_properties(properties: Any) -> Any:
    """A shallow copy of the publish's properties (new ones for None), as ``copy.copy``; pika's
    ``BasicProperties`` by its ``__dict__``: ``copy.copy`` takes 3 µs a message, this 0.7."""
    if properties is None:
        return pika.BasicProperties()
    if type(properties) is not pika.BasicProperties:
        return copy.copy(properties)
    props = object.__new__(pika.BasicProperties)
    props.__dict__.update(properties.__dict__)
    return props


def _unpublished(sealed: Sealed) -> Unpublished:
    to = sealed.context
    if not isinstance(to, _Publish):
        raise ConfigurationError("the sealer's batch holds another adapter's messages")
    return Unpublished(
        to.exchange, to.routing_key, to.ref, sealed.envelope, to.properties, to.mandatory
    )
