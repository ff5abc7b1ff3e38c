"""What the broker adapters themselves cost per message, without a broker: each adapter on a stub
client against the bare ``Sealer`` / ``Opener`` it wraps, 1 KB, batch signing, one thread.

    .venv/bin/python benchmarks/adapters.py [--messages 6400] [--rounds 5]
    .venv/bin/python benchmarks/adapters.py --callgrind   # instructions per message (valgrind)

For each side, three figures in CPU µs per message of this thread (the minimum over the rounds):
- ``client``: the stub client alone with the plaintext (a dict lookup and a list append; a
  kafka-python ``Future`` resolved at once on the Kafka producer);
- ``core``: the same stub fed by the bare ``Sealer.add`` / ``Opener.open_many`` / ``Opener.open``;
- ``adapter``: ``SealedKafkaProducer`` / ``SealedChannel.basic_publish`` / ``SealedKafkaConsumer``
  / ``SealedChannel.consume`` on the stub.
``adapter - core`` is the adapter's own Python per message (futures, bookkeeping, headers, error
translation, replay state); ``core - client`` is the sealing itself. The stubs do none of the
client library's own work (kafka-python's record batches, pika's frames): ``benchmarks/run.py``
measures those on real brokers. ``--callgrind`` counts instructions per message of the same
paths at two message counts and takes the difference, so setup cancels out and the figures repeat
exactly from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import cached_property
from types import SimpleNamespace
from typing import Any, ClassVar

from kafka import TopicPartition
from kafka.future import Future
from micro import instructions  # the script's own folder is on sys.path

from sealedbus import KeySource, LocalKeyService, Opener, Sealer
from sealedbus.brokers.kafka import SealedKafkaConsumer, SealedKafkaProducer
from sealedbus.brokers.rabbitmq import SealedChannel
from sealedbus.core import backend

BATCH = 64
SIZE = 1024
TOPIC = "t"
PATHS = ("kafka-produce", "rabbitmq-publish", "kafka-consume", "rabbitmq-consume")
LEVELS = ("client", "core", "adapter")


class _KafkaProducer:
    """kafka-python's ``KafkaProducer`` as far as the adapter uses it; futures resolve at once."""

    config: ClassVar[dict[str, int]] = {"linger_ms": 5, "batch_size": 1 << 20}

    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic: str, value: bytes, **_: Any) -> Future:
        self.sent += 1
        future = Future()
        future.success(None)  # the callbacks added later run at once: their cost counts
        return future

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class _KafkaConsumer:
    """Hands out ``records`` 500 at a time, as ``KafkaConsumer.poll`` does."""

    config: ClassVar[dict[str, object]] = {"consumer_timeout_ms": 0, "enable_auto_commit": False}

    def __init__(self, envelopes: list[bytes]) -> None:
        self.tp = TopicPartition(TOPIC, 0)
        self.records = [
            SimpleNamespace(topic=TOPIC, partition=0, offset=i, key=None, value=e, headers=[])
            for i, e in enumerate(envelopes)
        ]
        self.at = 0

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[Any, list[Any]]:
        chunk = self.records[self.at : self.at + max_records]
        self.at += len(chunk)
        return {self.tp: chunk} if chunk else {}

    def commit(self, offsets: Any = None) -> None:
        pass

    def close(self, autocommit: bool = False) -> None:
        pass


class _Channel:
    """pika's ``BlockingChannel`` as far as the adapter uses it; ``consume`` yields ``bodies``."""

    def __init__(self, bodies: list[bytes] = ()) -> None:  # type: ignore[assignment]
        self.bodies, self.published = bodies, 0
        self.connection = self
        self.is_open = True

    def channel(self) -> _Channel:
        return _Channel()

    def confirm_delivery(self) -> None:
        pass

    def exchange_declare(self, *_: Any, **__: Any) -> None:
        pass

    queue_declare = queue_bind = exchange_declare

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        pass

    def basic_publish(self, exchange: str, key: str, body: bytes, *_: Any) -> None:
        self.published += 1

    def basic_ack(self, tag: int = 0, multiple: bool = False) -> None:
        pass

    def consume(self, queue: str, **_: Any) -> Iterator[tuple[Any, Any, bytes]]:
        for tag, body in enumerate(self.bodies, 1):
            yield SimpleNamespace(delivery_tag=tag, exchange=TOPIC, routing_key=TOPIC), None, body


class _World:
    def __init__(self, n: int, pool: int = 0) -> None:
        ks = LocalKeyService()
        ks.create_topic(TOPIC, producers=["p"], consumers=["c"])
        self.producer: KeySource = ks.enroll("p")
        self.consumer: KeySource = ks.enroll("c")
        self.body = os.urandom(SIZE)
        self.n = n
        self.pool = max(n, pool)

    # what each producer path puts on the broker: Kafka without a key, RabbitMQ with its routing
    # key bound into the sealed headers (as SealedChannel does); built on first use, ``pool`` of
    # them (the same number whatever ``n``), of which the consumers read ``n``
    @cached_property
    def kafka(self) -> list[bytes]:
        return self._seal(None)[: self.n]

    @cached_property
    def rabbitmq(self) -> list[bytes]:
        return self._seal({"x-sealedbus-broker-key": TOPIC.encode()})[: self.n]

    def _seal(self, headers: dict[str, Any] | None) -> list[bytes]:
        sealer = self.sealer()
        add = sealer.add
        out = [s.envelope for _ in range(self.pool) for s in add(TOPIC, self.body, headers=headers)]
        return out + [s.envelope for s in sealer.flush()]

    def sealer(self) -> Sealer:
        return Sealer(self.producer, batch_size=BATCH, max_session_messages=1 << 24)


def _repeat(n: int, fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            fn()

    return run


def _kafka_produce(w: _World, level: str) -> Callable[[], None]:
    stub, body, n = _KafkaProducer(), w.body, w.n
    if level == "client":
        return _repeat(n, lambda: stub.send(TOPIC, body))
    if level == "core":
        sealer = w.sealer()

        def core() -> None:
            for _ in range(n):
                for s in sealer.add(TOPIC, body):
                    stub.send(TOPIC, s.envelope)

        return core
    producer = SealedKafkaProducer(stub, w.sealer(), linger=3600.0)  # batches close by count
    return _repeat(n, lambda: producer.send(TOPIC, body))


def _rabbitmq_publish(w: _World, level: str) -> Callable[[], None]:
    stub, body, n = _Channel(), w.body, w.n
    if level == "client":
        return _repeat(n, lambda: stub.basic_publish(TOPIC, TOPIC, body))
    if level == "core":
        sealer, bound = w.sealer(), {"x-sealedbus-broker-key": TOPIC.encode()}

        def core() -> None:
            for _ in range(n):
                for s in sealer.add(TOPIC, body, headers=bound):
                    stub.basic_publish(TOPIC, TOPIC, s.envelope)

        return core
    channel = SealedChannel(stub, sealer=w.sealer(), linger=3600.0)
    return _repeat(n, lambda: channel.basic_publish(TOPIC, TOPIC, body))


def _kafka_consume(w: _World, level: str) -> Callable[[], None]:
    if level == "client":
        return lambda: _drain_kafka(_KafkaConsumer(w.kafka))
    if level == "core":

        def core() -> None:
            stub, opener = _KafkaConsumer(w.kafka), Opener(w.consumer)
            while batch := stub.poll():
                for records in batch.values():
                    opener.open_many([(r.topic, r.value, r.partition) for r in records])

        return core

    def adapter() -> None:
        stub = _KafkaConsumer(w.kafka)
        for _ in SealedKafkaConsumer(stub, Opener(w.consumer), dead_letter_producer=object()):
            pass

    return adapter


def _drain(items: Iterator[object]) -> None:
    for _ in items:
        pass


def _drain_kafka(stub: _KafkaConsumer) -> None:
    while stub.poll():
        pass


def _rabbitmq_consume(w: _World, level: str) -> Callable[[], None]:
    if level == "client":
        return lambda: _drain(_Channel(w.rabbitmq).consume(TOPIC))
    if level == "core":

        def core() -> None:
            opener = Opener(w.consumer)
            for method, _, body in _Channel(w.rabbitmq).consume(TOPIC):
                opener.open(method.exchange, body)

        return core

    def adapter() -> None:
        channel = SealedChannel(_Channel(w.rabbitmq), opener=Opener(w.consumer))
        for method, _, _message in channel.consume(TOPIC):
            tag = method.delivery_tag  # type: ignore[union-attr]  # no inactivity timeout
            if tag % 100 == 0:  # as benchmarks/run.py acknowledges
                channel.basic_ack(tag, multiple=True)

    return adapter


MAKERS = {
    "kafka-produce": _kafka_produce,
    "rabbitmq-publish": _rabbitmq_publish,
    "kafka-consume": _kafka_consume,
    "rabbitmq-consume": _rabbitmq_consume,
}


def measure(messages: int, rounds: int) -> list[dict[str, object]]:
    """µs per message of each path and level: the minimum over ``rounds`` (fresh state each)."""
    w = _World(messages)
    w.kafka, w.rabbitmq  # noqa: B018  # sealed before any timing
    rows: list[dict[str, object]] = []
    for path in PATHS:
        us: dict[str, float] = {}
        for level in LEVELS:
            best = float("inf")
            for _ in range(rounds):
                fn = MAKERS[path](w, level)
                start = time.thread_time()
                fn()
                best = min(best, time.thread_time() - start)
            us[level] = best / messages * 1e6
        us["adapter_only"] = us["adapter"] - us["core"]
        row: dict[str, object] = {"path": path, "payload_bytes": SIZE}
        row.update({f"{k}_us_per_msg": round(v, 2) for k, v in us.items()})
        rows.append(row)
    return rows


def callgrind(n1: int = 640, n2: int = 3200) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for path in PATHS:
        ir: dict[str, int] = {}
        for level in LEVELS:
            counts = [
                instructions(__file__, ["--workload", path, level, str(n), str(n2)])
                for n in (n1, n2)
            ]
            ir[level] = round((counts[1] - counts[0]) / (n2 - n1))
        ir["adapter_only"] = ir["adapter"] - ir["core"]
        row: dict[str, object] = {"path": path, "payload_bytes": SIZE}
        row.update({f"{k}_instructions_per_msg": v for k, v in ir.items()})
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--messages", type=int, default=BATCH * 100, help="messages per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print JSON rows")
    ap.add_argument("--callgrind", action="store_true", help="instructions per message")
    ap.add_argument(
        "--workload", nargs=4, metavar=("PATH", "LEVEL", "N", "POOL"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.workload:
        path, level, n, pool = args.workload  # the same pool whatever n: its sealing cancels
        MAKERS[path](_World(int(n), int(pool)), level)()
        return 0
    core = "native" if backend.get(None) is backend.NATIVE else "pure"
    if args.callgrind:
        rows, unit = callgrind(), "instructions"
    else:
        rows, unit = measure(args.messages, args.rounds), "us"
    if args.json:
        print(json.dumps({"core": core, "rows": rows}, indent=2))
        return 0
    print(f"{core} core; 1 KB, batch signing; {unit} per message on one thread (stub clients)")
    print(f"{'path':<18}" + "".join(f"{c:>14}" for c in (*LEVELS, "adapter only")))
    for r in rows:
        key = "us_per_msg" if unit == "us" else "instructions_per_msg"
        cells = [r[f"{c}_{key}"] for c in (*LEVELS, "adapter_only")]
        print(f"{r['path']:<18}" + "".join(f"{c:>14,}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
