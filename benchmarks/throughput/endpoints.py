"""The producing and consuming side of each transport and mode, and the worker process running
them.

Every mode of a transport is configured alike; only sealing differs:
- memory: ``MemoryBus.publish`` / ``Subscription.poll`` + ``ack`` against ``MemoryProducer`` /
  ``MemoryConsumer`` (batch mode flushes on size or when its first message is ``LINGER`` old);
- RabbitMQ: no publisher confirms, transient messages, one channel per mode; consumers use
  ``consume()`` with ``prefetch_count=PREFETCH`` and ``basic_ack(multiple=True)`` every
  ``ACK_EVERY`` messages; sealed-batch uses ``SealedChannel(linger=LINGER)``;
- Kafka: ``KafkaProducer(acks=1, linger_ms=LINGER, batch_size=KAFKA_BATCH_BYTES)`` for all
  modes (sealed-message passes ``batch=False``); consumers are assigned the topic's single
  partition, ``enable_auto_commit=False``, and commit synchronously before every poll (what
  ``SealedKafkaConsumer`` does, so the plain loop does it too).

Keys: there is no KDS in the benchmark. Each worker process rebuilds the same
``LocalKeyService`` from a shared seed and start time (deterministic randomness, frozen service
clock), so producer and consumer processes agree on certificates and epoch keys.

Every message body starts with the ``time.monotonic_ns()`` of its send (system-wide on Linux);
the consumer subtracts it from the time it got the opened message: that is the latency.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import threading
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

import pika
from cryptography.fernet import Fernet
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from sealedbus.brokers.kafka import SealedKafkaConsumer, SealedKafkaProducer
from sealedbus.brokers.memory import MemoryBus, MemoryConsumer, MemoryProducer
from sealedbus.brokers.rabbitmq import SealedChannel
from sealedbus.keys.local import LocalKeyService, LocalMember
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer

# fernet: the peer, what teams write by hand today: one shared cryptography.fernet key around
# the bare client (no sender signature, no per-member keys, no topic binding, no replay window)
MODES = ("plain", "sealed-message", "sealed-batch", "fernet")
BATCH_SIZE = 64  # messages per Merkle batch
LINGER = 0.005  # seconds: sealed-batch flush age, and Kafka's linger_ms for every mode
PREFETCH = 1000
ACK_EVERY = 100
KAFKA_BATCH_BYTES = 65536
_STAMP = struct.Struct(">Q")


@dataclass(frozen=True)
class Setup:
    """What a worker needs to know (picklable)."""

    transport: str
    run_id: str
    seed: bytes
    t0: float
    amqp_url: str = ""
    kafka_bootstrap: str = ""
    open_threads: int = 2  # Opener threads for per-message consumers (verification scales)


def topic_name(run_id: str, mode: str) -> str:
    return f"sbbench-{run_id}-{mode}"


class _Drbg:
    """SHAKE-256 over a seed and a counter: the same bytes in every process."""

    def __init__(self, seed: bytes) -> None:
        self.seed, self.counter = seed, 0

    def __call__(self, n: int) -> bytes:
        self.counter += 1
        return hashlib.shake_256(self.seed + self.counter.to_bytes(8, "big")).digest(n)


def fernet_key(setup: Setup) -> Fernet:
    """The peer's one shared key, the same in every worker of one run."""
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(setup.seed + b"fernet").digest()))


def key_members(setup: Setup) -> tuple[LocalMember, LocalMember]:
    """The producer and consumer members, identical in every worker of one run."""
    ks = LocalKeyService(clock=lambda: setup.t0, rng=_Drbg(setup.seed))
    for mode in ("sealed-message", "sealed-batch"):
        ks.create_topic(
            topic_name(setup.run_id, mode),
            producers=["producer"],
            consumers=["consumer"],
            rotation_period=86_400.0,
            retention=86_400.0,
        )
    producer, consumer = ks.enroll("producer"), ks.enroll("consumer")
    producer.identity(int(setup.t0 * 1000))  # issue the producer's certificate at t0 everywhere
    return producer, consumer


class Producer(Protocol):
    def send(self, body: bytes) -> None: ...
    def idle(self, seconds: float) -> None: ...
    def flush(self) -> None: ...


class Consumer(Protocol):
    def receive(self, n: int, deadline: float, got: Callable[[bytes], None]) -> int: ...


# -- in-memory bus -----------------------------------------------------------------------------
class _MemoryProducer:
    def __init__(self, bus: Any, topic: str, mode: str, member: LocalMember) -> None:
        self.bus, self.topic = bus, topic
        self.sealer = Sealer(member, batch_size=BATCH_SIZE)
        self.sealed = (
            None
            if mode == "plain"
            else MemoryProducer(bus, self.sealer, batch=mode == "sealed-batch")
        )

    def send(self, body: bytes) -> None:
        if self.sealed is None:
            self.bus.publish(self.topic, body)
            return
        self.sealed.send(self.topic, body)
        started = self.sealer.pending_since
        if started is not None and time.time() - started >= LINGER:
            self.sealed.flush()

    def idle(self, seconds: float) -> None:
        time.sleep(seconds)
        started = self.sealer.pending_since
        if self.sealed is not None and started is not None and time.time() - started >= LINGER:
            self.sealed.flush()

    def flush(self) -> None:
        if self.sealed is not None:
            self.sealed.flush()


class _MemoryConsumer:
    def __init__(self, bus: Any, topic: str, mode: str, opener: Opener) -> None:
        self.sub = bus.subscribe(topic, "bench")
        self.sealed = None if mode == "plain" else MemoryConsumer(bus, opener, topic, "bench-s")

    def receive(self, n: int, deadline: float, got: Callable[[bytes], None]) -> int:
        count = 0
        while count < n and time.monotonic() < deadline:
            if self.sealed is None:
                for record in self.sub.poll(0.1, min(500, n - count)):
                    got(record.value)
                    self.sub.ack(record)
                    count += 1
            else:
                for delivery in self.sealed.poll(0.1, min(500, n - count)):
                    got(delivery.value)
                    self.sealed.ack(delivery)
                    count += 1
        return count


# -- RabbitMQ ----------------------------------------------------------------------------------
class _RabbitProducer:
    def __init__(self, connection: Any, topic: str, mode: str, member: LocalMember) -> None:
        self.connection, self.topic = connection, topic
        self.channel = connection.channel()
        self.sealed = (
            None
            if mode == "plain"
            else SealedChannel(
                self.channel,
                sealer=Sealer(member, batch_size=BATCH_SIZE),
                linger=LINGER if mode == "sealed-batch" else 0.0,
            )
        )

    def send(self, body: bytes) -> None:
        (self.sealed or self.channel).basic_publish(self.topic, "", body)

    def idle(self, seconds: float) -> None:
        self.connection.sleep(seconds)  # pumps events: the linger timer fires here

    def flush(self) -> None:
        if self.sealed is not None:
            self.sealed.flush()
        self.connection.process_data_events(0)


class _RabbitConsumer:
    def __init__(self, connection: Any, topic: str, mode: str, opener: Opener) -> None:
        self.queue = topic
        channel = connection.channel()
        channel.basic_qos(prefetch_count=PREFETCH)
        self.channel: Any = (
            channel
            if mode == "plain"
            else SealedChannel(channel, opener=opener, dead_letter_exchange=f"{topic}.dlx")
        )
        self.sealed = mode != "plain"

    def receive(self, n: int, deadline: float, got: Callable[[bytes], None]) -> int:
        count, last_tag = 0, 0
        for method, _props, body in self.channel.consume(self.queue, inactivity_timeout=0.1):
            if method is not None:
                got(body.body if self.sealed else body)
                count += 1
                last_tag = method.delivery_tag
                if count % ACK_EVERY == 0:
                    self.channel.basic_ack(last_tag, multiple=True)
            if count >= n or time.monotonic() > deadline:
                break
        if count % ACK_EVERY:
            self.channel.basic_ack(last_tag, multiple=True)
        self.channel.cancel()
        return count


# -- Kafka -------------------------------------------------------------------------------------
def _kafka_producer(bootstrap: str) -> Any:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=int(LINGER * 1000),
        batch_size=KAFKA_BATCH_BYTES,
    )


class _KafkaProducer:
    def __init__(self, bootstrap: str, topic: str, mode: str, member: LocalMember) -> None:
        self.topic = topic
        self.producer = _kafka_producer(bootstrap)
        self.sealed = (
            None
            if mode == "plain"
            else SealedKafkaProducer(
                self.producer, Sealer(member, batch_size=BATCH_SIZE), batch=mode == "sealed-batch"
            )
        )

    def send(self, body: bytes) -> None:
        (self.sealed or self.producer).send(self.topic, body)

    def idle(self, seconds: float) -> None:
        time.sleep(seconds)

    def flush(self) -> None:
        (self.sealed or self.producer).flush()


class _KafkaConsumer:
    def __init__(self, bootstrap: str, topic: str, mode: str, opener: Opener) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=topic,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            consumer_timeout_ms=200,
        )
        self.partition = TopicPartition(topic, 0)
        self.consumer.assign([self.partition])
        self.sealed = (
            None
            if mode == "plain"
            else SealedKafkaConsumer(
                self.consumer,
                opener,
                dead_letter_producer=_kafka_producer(bootstrap),
                dead_letter_topic=f"{topic}.dlq",
            )
        )
        self.next_offset: int | None = None

    def receive(self, n: int, deadline: float, got: Callable[[bytes], None]) -> int:
        count = 0
        while count < n and time.monotonic() < deadline:
            if self.sealed is not None:
                for record in self.sealed:
                    got(record.value)
                    count += 1
                    if count >= n:
                        break
                continue
            self._commit()
            for records in self.consumer.poll(timeout_ms=200, max_records=500).values():
                for record in records:
                    got(record.value)
                    self.next_offset = record.offset + 1
                    count += 1
        if self.sealed is not None:
            self.sealed.commit()
        self._commit()
        return count

    def _commit(self) -> None:
        if self.next_offset is not None:
            offsets = {self.partition: OffsetAndMetadata(self.next_offset, "", -1)}
            self.consumer.commit(offsets=offsets)
            self.next_offset = None


# -- the Fernet peer: the bare client of the transport, bodies encrypted with one shared key ----
class _FernetProducer:
    def __init__(self, plain: Producer, fernet: Fernet) -> None:
        self.plain, self.fernet = plain, fernet

    def send(self, body: bytes) -> None:
        self.plain.send(self.fernet.encrypt(body))

    def idle(self, seconds: float) -> None:
        self.plain.idle(seconds)

    def flush(self) -> None:
        self.plain.flush()


class _FernetConsumer:
    def __init__(self, plain: Consumer, fernet: Fernet) -> None:
        self.plain, self.fernet = plain, fernet

    def receive(self, n: int, deadline: float, got: Callable[[bytes], None]) -> int:
        decrypt = self.fernet.decrypt
        return self.plain.receive(n, deadline, lambda token: got(decrypt(token)))


# -- worker ------------------------------------------------------------------------------------
class Transport:
    """The producers and consumers of one transport in one process, made on first use."""

    def __init__(self, setup: Setup, shared_bus: Any = None) -> None:
        self.setup = setup
        self.producer_member, self.consumer_member = key_members(setup)
        self.bus = shared_bus
        self._connection: Any = None
        self._producers: dict[str, Producer] = {}
        self._consumers: dict[str, Consumer] = {}
        self._openers: list[Opener] = []

    def _amqp(self) -> Any:
        if self._connection is None:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.setup.amqp_url))
        return self._connection

    def producer(self, mode: str) -> Producer:
        if mode not in self._producers:
            topic, s, member = topic_name(self.setup.run_id, mode), self.setup, self.producer_member
            kind = "plain" if mode == "fernet" else mode  # the peer sends through the bare client
            made: Producer
            if s.transport == "memory":
                made = _MemoryProducer(self.bus, topic, kind, member)
            elif s.transport == "rabbitmq":
                made = _RabbitProducer(self._amqp(), topic, kind, member)
            else:
                made = _KafkaProducer(s.kafka_bootstrap, topic, kind, member)
            if mode == "fernet":
                made = _FernetProducer(made, fernet_key(s))
            self._producers[mode] = made
        return self._producers[mode]

    def consumer(self, mode: str) -> Consumer:
        if mode not in self._consumers:
            topic, s = topic_name(self.setup.run_id, mode), self.setup
            threads = s.open_threads if mode == "sealed-message" else 1
            opener = Opener(self.consumer_member, threads=threads)
            self._openers.append(opener)
            kind = "plain" if mode == "fernet" else mode
            made: Consumer
            if s.transport == "memory":
                made = _MemoryConsumer(self.bus, topic, kind, opener)
            elif s.transport == "rabbitmq":
                made = _RabbitConsumer(self._amqp(), topic, kind, opener)
            else:
                made = _KafkaConsumer(s.kafka_bootstrap, topic, kind, opener)
            if mode == "fernet":
                made = _FernetConsumer(made, fernet_key(s))
            self._consumers[mode] = made
        return self._consumers[mode]

    def close(self) -> None:
        for opener in self._openers:
            opener.close()
        if self._connection is not None and self._connection.is_open:
            self._connection.close()


def produce(
    t: Transport, mode: str, size: int, n: int, rate: float, cpu: Callable[[], float]
) -> dict[str, Any]:
    """Send ``n`` messages of ``size`` bytes, at ``rate`` per second (0: as fast as possible)."""
    p = t.producer(mode)
    buf = bytearray(os.urandom(size))
    interval_ns = int(1e9 / rate) if rate else 0
    cpu0, start = cpu(), time.monotonic_ns()
    for i in range(n):
        if interval_ns:
            wait = start + i * interval_ns - time.monotonic_ns()
            if wait > 0:
                p.idle(wait / 1e9)
        _STAMP.pack_into(buf, 0, time.monotonic_ns())
        p.send(bytes(buf))
    p.flush()
    return {"start_ns": start, "end_ns": time.monotonic_ns(), "cpu_s": cpu() - cpu0}


def consume(
    t: Transport, mode: str, n: int, timeout: float, cpu: Callable[[], float]
) -> dict[str, Any]:
    """Receive ``n`` messages (or give up after ``timeout``); per-message latency in ns."""
    c = t.consumer(mode)
    latencies = array("q")
    last = [0]

    def got(body: bytes) -> None:
        now = time.monotonic_ns()
        latencies.append(now - _STAMP.unpack_from(body)[0])
        last[0] = now

    cpu0, start = cpu(), time.monotonic_ns()
    count = c.receive(n, time.monotonic() + timeout, got)
    return {
        "count": count,
        "start_ns": start,
        "end_ns": last[0] or time.monotonic_ns(),
        "cpu_s": cpu() - cpu0,
        "latency_ns": latencies.tobytes(),
    }


def worker(conn: Connection, setup: Setup) -> None:
    """Process entry point: answer ``(tag, op, kwargs)`` requests until ``("stop",)``.

    ``consume`` runs on a thread (so one process can produce and consume at once: the memory
    bus); ``produce`` on the main thread. Replies are ``(tag, result)`` or ``(tag, error)``.
    """
    lock = threading.Lock()
    shared = MemoryBus() if setup.transport == "memory" else None
    # one process holds both sides only for the memory bus: there CPU is counted per thread
    cpu = time.thread_time if setup.transport == "memory" else time.process_time
    transport = Transport(setup, shared)
    threads: list[threading.Thread] = []

    def answer(tag: str, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> None:
        try:
            reply: tuple[str, Any] = (tag, fn(transport, cpu=cpu, **kwargs))
        except Exception:
            reply = (tag, RuntimeError(traceback.format_exc()))
        with lock:
            conn.send(reply)

    conn.send(("ready", None))
    while True:
        request = conn.recv()
        if request[0] == "stop":
            break
        tag, op, kwargs = request
        if op == "consume":
            thread = threading.Thread(target=answer, args=(tag, consume, kwargs), daemon=True)
            thread.start()
            threads.append(thread)
        else:
            answer(tag, produce, kwargs)
    for thread in threads:
        thread.join(timeout=60)
    transport.close()
