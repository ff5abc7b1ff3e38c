"""One small driver per broker, so the contract tests read the same for all three.

A driver makes a fresh topic (with its dead-letter destination and, where a broker needs one, a
raw "tap" that sees what the broker holds), sealed senders and opened receivers on it, and reads
the dead letters and the raw stored bytes. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sealedbus.brokers._common import REASON_HEADER
from sealedbus.brokers.memory import MemoryBus, MemoryConsumer, MemoryProducer
from sealedbus.core.envelope import HeaderValue
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer

WAIT = 30.0  # upper bound for any single wait on a broker


@dataclass(frozen=True)
class Got:
    """What the application received."""

    body: bytes
    headers: dict[str, HeaderValue]
    key: bytes | None
    sender: str | None
    content_type: str = ""


class Sender(Protocol):
    def send(
        self,
        body: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        ttl: float | None = None,
        content_type: str = "",
        subject: str | None = None,
    ) -> None: ...

    def close(self) -> None: ...


class Receiver(Protocol):
    def take(self, count: int, timeout: float = WAIT) -> list[Got]:
        """Exactly ``count`` messages (fails the test when they do not come in time)."""
        ...

    def poll_once(self) -> list[Got]:
        """One short round of receiving (well under a second)."""
        ...

    def close(self) -> None: ...


class Driver(Protocol):
    name: str

    def new_topic(self) -> str: ...

    def sender(self, topic: str, sealer: Sealer) -> Sender: ...

    def send_raw(self, topic: str, data: bytes, key: bytes | None = None) -> None:
        """Put bytes on the broker as they are (an attacker, a replay, a misrouted copy)."""
        ...

    def receiver(self, topic: str, opener: Opener) -> Receiver: ...

    def dead_letters(self, topic: str) -> list[tuple[str, bytes]]:
        """(reason header, body) of everything dead-lettered from ``topic`` so far."""
        ...

    def stored(self, topic: str, count: int) -> list[bytes]:
        """The first ``count`` values the broker holds for ``topic``, read raw."""
        ...

    def close(self) -> None: ...


def unique(prefix: str = "sb") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def expect(count: int, got: list[Got]) -> list[Got]:
    assert len(got) == count, f"expected {count} messages, got {len(got)}"
    return got


# ------------------------------------------------------------------------------------------------
# in-memory bus
# ------------------------------------------------------------------------------------------------
class MemorySender:
    def __init__(self, producer: MemoryProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def send(
        self,
        body: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        ttl: float | None = None,
        content_type: str = "",
        subject: str | None = None,
    ) -> None:
        self.producer.send(
            self.topic,
            body,
            key=key,
            headers=headers,
            ttl=ttl,
            content_type=content_type,
            subject=subject,
        )

    def close(self) -> None:
        pass


class MemoryReceiver:
    def __init__(self, consumer: MemoryConsumer) -> None:
        self.consumer = consumer

    def take(self, count: int, timeout: float = WAIT) -> list[Got]:
        deadline = time.monotonic() + timeout
        out: list[Got] = []
        while len(out) < count and time.monotonic() < deadline:
            for d in self.consumer.poll(timeout=0.2, max_records=count - len(out)):
                out.append(Got(d.value, d.headers, d.key, d.sender, d.message.content_type))
                self.consumer.ack(d)
        return expect(count, out)

    def poll_once(self) -> list[Got]:
        out = []
        for d in self.consumer.poll(timeout=0.2):
            out.append(Got(d.value, d.headers, d.key, d.sender, d.message.content_type))
            self.consumer.ack(d)
        return out

    def close(self) -> None:
        self.consumer.close()


class MemoryDriver:
    name = "memory"

    def __init__(self) -> None:
        self.bus = MemoryBus()

    def new_topic(self) -> str:
        return unique()

    def sender(self, topic: str, sealer: Sealer) -> Sender:
        return MemorySender(MemoryProducer(self.bus, sealer), topic)

    def send_raw(self, topic: str, data: bytes, key: bytes | None = None) -> None:
        self.bus.publish(topic, data, key=key)

    def receiver(self, topic: str, opener: Opener) -> Receiver:
        return MemoryReceiver(MemoryConsumer(self.bus, opener, topic, unique("group")))

    def dead_letters(self, topic: str) -> list[tuple[str, bytes]]:
        return [
            (r.headers[REASON_HEADER].decode(), r.value) for r in self.bus.records(f"{topic}.dlq")
        ]

    def stored(self, topic: str, count: int) -> list[bytes]:
        return [r.value for r in self.bus.records(topic)[:count]]

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# RabbitMQ
# ------------------------------------------------------------------------------------------------
def header_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RabbitSender:
    def __init__(self, url: str, topic: str, sealer: Sealer) -> None:
        import pika

        from sealedbus.brokers.rabbitmq import SealedChannel

        self.pika = pika
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = self.connection.channel()
        self.channel = SealedChannel(channel, sealer=sealer)
        self.channel.confirm_delivery()
        self.topic = topic

    def send(
        self,
        body: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        ttl: float | None = None,
        content_type: str = "",
        subject: str | None = None,
    ) -> None:
        props = self.pika.BasicProperties(
            headers=dict(headers) if headers else None,
            content_type=content_type or None,
            expiration=None if ttl is None else str(int(ttl * 1000)),
            delivery_mode=2,
        )
        self.channel.basic_publish(self.topic, (key or b"").decode(), body, props, subject=subject)

    def close(self) -> None:
        # another test may have restarted the broker under this session-long connection
        with contextlib.suppress(self.pika.exceptions.AMQPError):
            if self.connection.is_open:
                self.connection.close()


class RabbitReceiver:
    def __init__(self, url: str, topic: str, opener: Opener) -> None:
        import pika

        from sealedbus.brokers.rabbitmq import SealedChannel

        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = self.connection.channel()
        channel.basic_qos(prefetch_count=200)
        self.channel = SealedChannel(channel, opener=opener, dead_letter_exchange=f"{topic}.dlx")
        self.queue = f"{topic}.q"

    def take(self, count: int, timeout: float = WAIT) -> list[Got]:
        return expect(count, self._receive(count, timeout))

    def poll_once(self) -> list[Got]:
        return self._receive(10_000, 0.2)

    def _receive(self, count: int, timeout: float) -> list[Got]:
        deadline = time.monotonic() + timeout
        out: list[Got] = []
        for method, _props, message in self.channel.consume(self.queue, inactivity_timeout=0.1):
            if method is not None and message is not None:
                out.append(
                    Got(
                        message.body,
                        message.headers,
                        method.routing_key.encode() or None,
                        message.sender,
                        message.content_type,
                    )
                )
                self.channel.basic_ack(method.delivery_tag)
            if len(out) >= count or time.monotonic() > deadline:
                break
        return out

    def close(self) -> None:
        if self.connection.is_open:
            self.channel.cancel()
            self.connection.close()


class RabbitDriver:
    name = "rabbitmq"

    def __init__(self, url: str) -> None:
        import pika

        self.url = url
        self.pika = pika
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.admin = self.connection.channel()

    def reconnect(self) -> None:
        """After a broker restart: let pika notice the old connection died, then make a new one."""
        with contextlib.suppress(self.pika.exceptions.AMQPError):
            self.connection.process_data_events(0)
        self.connection = self.pika.BlockingConnection(self.pika.URLParameters(self.url))
        self.admin = self.connection.channel()

    def new_topic(self) -> str:
        topic = unique()
        a = self.admin
        a.exchange_declare(topic, "fanout", durable=True)
        for suffix in (".q", ".tap"):
            a.queue_declare(topic + suffix, durable=True)
            a.queue_bind(topic + suffix, topic)
        a.exchange_declare(f"{topic}.dlx", "fanout", durable=True)
        a.queue_declare(f"{topic}.dlx", durable=True)
        a.queue_bind(f"{topic}.dlx", f"{topic}.dlx")
        return topic

    def sender(self, topic: str, sealer: Sealer) -> Sender:
        return RabbitSender(self.url, topic, sealer)

    def send_raw(self, topic: str, data: bytes, key: bytes | None = None) -> None:
        self.admin.basic_publish(topic, (key or b"").decode(), data)

    def receiver(self, topic: str, opener: Opener) -> Receiver:
        return RabbitReceiver(self.url, topic, opener)

    def _drain(self, queue: str, limit: int) -> list[tuple[Any, bytes]]:
        out: list[tuple[Any, bytes]] = []
        while len(out) < limit:
            method, props, body = self.admin.basic_get(queue, auto_ack=False)
            if method is None:
                break
            out.append((props, body))
        if out:
            self.admin.basic_nack(0, multiple=True, requeue=True)  # leave them there
        return out

    def dead_letters(self, topic: str) -> list[tuple[str, bytes]]:
        return [
            (header_text(p.headers[REASON_HEADER]), b)
            for p, b in self._drain(f"{topic}.dlx", 10_000)
        ]

    def stored(self, topic: str, count: int) -> list[bytes]:
        return [b for _, b in self._drain(f"{topic}.tap", count)]

    def close(self) -> None:
        # another test may have restarted the broker under this session-long connection
        with contextlib.suppress(self.pika.exceptions.AMQPError):
            if self.connection.is_open:
                self.connection.close()


# ------------------------------------------------------------------------------------------------
# Kafka
# ------------------------------------------------------------------------------------------------
class KafkaSender:
    def __init__(self, bootstrap: str, topic: str, sealer: Sealer) -> None:
        from kafka import KafkaProducer

        from sealedbus.brokers.kafka import SealedKafkaProducer

        self.producer = SealedKafkaProducer(
            KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5), sealer
        )
        self.topic = topic

    def send(
        self,
        body: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
        ttl: float | None = None,
        content_type: str = "",
        subject: str | None = None,
    ) -> None:
        self.producer.send(
            self.topic,
            body,
            key=key,
            headers=headers,
            ttl=ttl,
            content_type=content_type,
            subject=subject,
        ).get(timeout=WAIT)  # in order across senders, as with RabbitMQ's confirms

    def close(self) -> None:
        self.producer.close(timeout=WAIT)


def kafka_consumer(bootstrap: str, group: str, **extra: Any) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=300,
        **extra,
    )


class KafkaReceiver:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        opener: Opener,
        group: str | None = None,
        **extra: Any,
    ) -> None:
        from kafka import KafkaProducer

        from sealedbus.brokers.kafka import SealedKafkaConsumer

        self.dead_letter_producer = KafkaProducer(bootstrap_servers=bootstrap)
        self.consumer = SealedKafkaConsumer(
            kafka_consumer(bootstrap, group or unique("group"), **extra),
            opener,
            dead_letter_producer=self.dead_letter_producer,
        )
        self.consumer.subscribe([topic])
        self._records: Iterator[Any] | None = None  # kept across take(): a record counts as
        # handled (committable) only once the next one is asked for

    def take(self, count: int, timeout: float = WAIT) -> list[Got]:
        deadline = time.monotonic() + timeout
        out: list[Got] = []
        while len(out) < count and time.monotonic() < deadline:
            if self._records is None:
                self._records = iter(self.consumer)
            r = next(self._records, None)
            if r is None:  # consumer_timeout_ms without records
                self._records = None
                continue
            out.append(Got(r.value, r.headers, r.key, r.sender, r.message.content_type))
        return expect(count, out)

    def poll_once(self) -> list[Got]:
        records = self._records if self._records is not None else iter(self.consumer)
        self._records = None
        return [
            Got(r.value, r.headers, r.key, r.sender, r.message.content_type) for r in records
        ]  # ends after consumer_timeout_ms without records

    def close(self) -> None:
        self.consumer.close()
        self.dead_letter_producer.close(timeout=WAIT)


class KafkaDriver:
    name = "kafka"

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaAdminClient, KafkaProducer

        self.bootstrap = bootstrap
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self.raw = KafkaProducer(bootstrap_servers=bootstrap)

    def reconnect(self) -> None:
        """After a broker restart: fresh clients (the old ones keep sockets of failed retries)."""
        from kafka import KafkaAdminClient, KafkaProducer

        self.admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        self.raw = KafkaProducer(bootstrap_servers=self.bootstrap)

    def new_topic(self, partitions: int = 3) -> str:
        topic = unique()
        self.admin.create_topics(
            {
                topic: {"num_partitions": partitions, "replication_factor": 1},
                f"{topic}.dlq": {"num_partitions": 1, "replication_factor": 1},
            },
            wait_for_metadata=True,
        )
        return topic

    def sender(self, topic: str, sealer: Sealer) -> Sender:
        return KafkaSender(self.bootstrap, topic, sealer)

    def send_raw(self, topic: str, data: bytes, key: bytes | None = None) -> None:
        self.raw.send(topic, data, key=key).get(timeout=WAIT)

    def receiver(self, topic: str, opener: Opener) -> Receiver:
        return KafkaReceiver(self.bootstrap, topic, opener)

    def _read_all(self, topic: str, limit: int) -> list[Any]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            parts = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            end = consumer.end_offsets(parts)
            wanted = min(limit, sum(end.values()))
            out: list[Any] = []
            deadline = time.monotonic() + WAIT
            while len(out) < wanted and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    out.extend(records)
            return sorted(out, key=lambda r: (r.partition, r.offset))[:limit]
        finally:
            consumer.close(autocommit=False)

    def dead_letters(self, topic: str) -> list[tuple[str, bytes]]:
        return [
            (dict(r.headers)[REASON_HEADER].decode(), r.value)
            for r in self._read_all(f"{topic}.dlq", 10_000)
        ]

    def stored(self, topic: str, count: int) -> list[bytes]:
        return [r.value for r in self._read_all(topic, count)]

    def close(self) -> None:
        self.raw.close(timeout=WAIT)
        self.admin.close()
