"""Rounds, alternation and statistics of the throughput benchmark, and its command line.

One *trial* is one (transport, payload size, mode) in one round, in four phases:
1. produce ``n`` messages with nobody consuming: producer msgs/s and CPU per message;
2. consume that backlog: consumer msgs/s and CPU per message;
3. produce ``n`` while consuming them: end-to-end msgs/s, first send to last opened message;
4. produce ``latency_n`` at a fixed offered rate while consuming: latency p50/p99.

Producer and consumer run in separate processes (for the memory bus, one process and two
threads). Within a round the three modes of a (transport, size) run back to back, their order
rotating from round to round, so slow drift on a noisy machine hits them alike; every figure is
the median over the rounds with its min-max spread, and each ratio sealed/plain is taken within a
round, then the median of those ratios is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import secrets
import statistics
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pika
from kafka import KafkaAdminClient

from . import endpoints, report
from .endpoints import MODES, Setup

TRANSPORTS = ("memory", "rabbitmq", "kafka")
SIZES = (128, 1024, 16384)


@dataclass(frozen=True)
class Plan:
    transports: tuple[str, ...]
    sizes: tuple[int, ...]
    rounds: int
    messages: dict[int, int]  # payload size -> messages per throughput phase
    latency_messages: int
    latency_rate: float  # offered msgs/s in the latency phase
    quick: bool

    @classmethod
    def make(
        cls,
        quick: bool,
        transports: Sequence[str],
        rounds: int | None = None,
        sizes: Sequence[int] = SIZES,
    ) -> Plan:
        if quick:
            return cls(
                tuple(transports),
                tuple(sizes),
                rounds or 1,
                dict.fromkeys(SIZES, 300),
                100,
                2000.0,
                True,
            )
        return cls(
            tuple(transports),
            tuple(sizes),
            rounds or 5,
            {128: 20000, 1024: 20000, 16384: 4000},
            2000,
            2000.0,
            False,
        )

    def trials(self) -> int:
        return len(self.transports) * len(self.sizes) * len(MODES) * self.rounds


@dataclass
class _Samples:
    e2e: list[float] = field(default_factory=list)
    produce: list[float] = field(default_factory=list)
    consume: list[float] = field(default_factory=list)
    producer_cpu_us: list[float] = field(default_factory=list)
    consumer_cpu_us: list[float] = field(default_factory=list)
    latency_ns: array[int] = field(default_factory=lambda: array("q"))


class _Worker:
    """One worker process and its pipe; replies are matched to requests by tag."""

    def __init__(self, ctx: Any, setup: Setup) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=endpoints.worker, args=(child, setup), daemon=True)
        self.process.start()
        self._stash: dict[str, Any] = {}
        self._count = 0
        self.result("ready", 120)

    def request(self, op: str, **kwargs: Any) -> str:
        self._count += 1
        tag = f"{op}-{self._count}"
        self.conn.send((tag, op, kwargs))
        return tag

    def result(self, tag: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while tag not in self._stash:
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"worker gave no answer to {tag} within {timeout:.0f} s")
            got_tag, value = self.conn.recv()
            self._stash[got_tag] = value
        value = self._stash.pop(tag)
        if isinstance(value, Exception):
            raise RuntimeError(f"worker failed on {tag}:\n{value}")
        return value if isinstance(value, dict) else {}

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // max(1, self.total)
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{label:<34} {elapsed:5.0f} s, ~{eta:4.0f} s left"
        )
        print(
            ("\r" + line) if self.tty else line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr)


def _trial(
    producer: _Worker, consumer: _Worker, plan: Plan, size: int, mode: str, s: _Samples
) -> None:
    n = plan.messages[size]
    timeout = max(60.0, n / 500)
    p = producer.result(producer.request("produce", mode=mode, size=size, n=n, rate=0), timeout)
    c = consumer.result(consumer.request("consume", mode=mode, n=n, timeout=timeout), timeout + 5)
    _check(c, n, "consume")
    s.produce.append(n / ((p["end_ns"] - p["start_ns"]) / 1e9))
    s.consume.append(n / ((c["end_ns"] - c["start_ns"]) / 1e9))
    s.producer_cpu_us.append(p["cpu_s"] / n * 1e6)
    s.consumer_cpu_us.append(c["cpu_s"] / n * 1e6)

    p, c = end_to_end(producer, consumer, mode, size, n, timeout)
    s.e2e.append(n / ((c["end_ns"] - p["start_ns"]) / 1e9))

    m = plan.latency_messages
    tag = consumer.request("consume", mode=mode, n=m, timeout=timeout)
    producer.result(
        producer.request("produce", mode=mode, size=size, n=m, rate=plan.latency_rate), timeout
    )
    c = consumer.result(tag, timeout + 5)
    _check(c, m, "latency")
    s.latency_ns.frombytes(c["latency_ns"])


def end_to_end(
    producer: _Worker, consumer: _Worker, mode: str, size: int, n: int, timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The end-to-end phase: ``n`` messages produced while the consumer reads them; the
    producer's and the consumer's replies (throughput runs from the first send to the last
    message opened: ``consumer["end_ns"] - producer["start_ns"]``)."""
    tag = consumer.request("consume", mode=mode, n=n, timeout=timeout)
    p = producer.result(producer.request("produce", mode=mode, size=size, n=n, rate=0), timeout)
    c = consumer.result(tag, timeout + 5)
    _check(c, n, "end-to-end")
    return p, c


def _check(result: dict[str, Any], expected: int, phase: str) -> None:
    if result["count"] != expected:
        raise RuntimeError(f"{phase}: {result['count']} of {expected} messages arrived")


def _prepare(plan: Plan, run_id: str, amqp_url: str, kafka_bootstrap: str) -> dict[str, str]:
    """Declare queues and create topics (one per mode); returns broker versions."""
    versions: dict[str, str] = {}
    names = [endpoints.topic_name(run_id, mode) for mode in MODES]
    if "rabbitmq" in plan.transports:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        for name in names:
            channel.exchange_declare(name, "fanout", auto_delete=False)
            channel.queue_declare(name)
            channel.queue_bind(name, name)
            channel.exchange_declare(f"{name}.dlx", "fanout", durable=True)
            channel.queue_declare(f"{name}.dlx", durable=True)
            channel.queue_bind(f"{name}.dlx", f"{name}.dlx")
        version = connection._impl.server_properties.get("version", b"?")
        versions["rabbitmq"] = version.decode() if isinstance(version, bytes) else str(version)
        connection.close()
    if "kafka" in plan.transports:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        topics = {
            t: {"num_partitions": 1, "replication_factor": 1}
            for name in names
            for t in (name, f"{name}.dlq")
        }
        admin.create_topics(topics, wait_for_metadata=True)
        api = admin.config.get("api_version")
        if api:
            versions["kafka (protocol)"] = ".".join(map(str, api))
        admin.close()
    return versions


def _cleanup(plan: Plan, run_id: str, amqp_url: str, kafka_bootstrap: str) -> None:
    names = [endpoints.topic_name(run_id, mode) for mode in MODES]
    if "rabbitmq" in plan.transports:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        for name in names:
            for thing in (name, f"{name}.dlx"):
                channel.queue_delete(thing)
                channel.exchange_delete(thing)
        connection.close()
    if "kafka" in plan.transports:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        admin.delete_topics([t for name in names for t in (name, f"{name}.dlq")])
        admin.close()


def header(plan: Plan, broker_versions: dict[str, str], settings: dict[str, Any]) -> dict[str, Any]:
    """The machine, the versions and the settings of this run."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "memory_gb": round(mem_kb / 2**20, 1),
            "os": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            "sealedbus": version("sealedbus"),
            "cryptography": version("cryptography"),
            "pika": version("pika"),
            "kafka-python": version("kafka-python"),
            "msgpack": version("msgpack"),
            "crc32c": version("crc32c"),
            **broker_versions,
        },
        "mode": "quick" if plan.quick else "full",
        "rounds": plan.rounds,
        "messages_per_phase": {str(k): v for k, v in plan.messages.items()},
        "latency_phase": {
            "messages": plan.latency_messages,
            "offered_msgs_per_s": plan.latency_rate,
        },
        "settings": settings,
    }


def run(
    plan: Plan,
    *,
    amqp_url: str = "",
    kafka_bootstrap: str = "",
    out: Path | None = None,
    progress: bool = True,
    open_threads: int = 2,
) -> dict[str, Any]:
    """Run the plan; write JSON, Markdown and PNG files to ``out`` (if given)."""
    for transport, needed in (("rabbitmq", amqp_url), ("kafka", kafka_bootstrap)):
        if transport in plan.transports and not needed:
            raise SystemExit(f"{transport}: give its address (--amqp-url / --kafka-bootstrap)")
    run_id = secrets.token_hex(4)
    started = time.time()
    versions = _prepare(plan, run_id, amqp_url, kafka_bootstrap)
    samples: dict[tuple[str, int, str], _Samples] = {}
    bar = Progress(plan.trials(), progress)
    ctx = multiprocessing.get_context("spawn")
    try:
        for transport in plan.transports:
            setup = Setup(
                transport,
                run_id,
                os.urandom(32),
                time.time(),
                amqp_url,
                kafka_bootstrap,
                open_threads,
            )
            for r in range(plan.rounds):  # fresh processes each round (and a fresh memory bus)
                producer = _Worker(ctx, setup)
                consumer = producer if transport == "memory" else _Worker(ctx, setup)
                try:
                    for size in plan.sizes:
                        for k in range(len(MODES)):
                            mode = MODES[(k + r) % len(MODES)]
                            s = samples.setdefault((transport, size, mode), _Samples())
                            _trial(producer, consumer, plan, size, mode, s)
                            bar.step(f"{transport} {size} B {mode} round {r + 1}")
                finally:
                    for w in {id(producer): producer, id(consumer): consumer}.values():
                        w.stop()
    finally:
        bar.close()
        _cleanup(plan, run_id, amqp_url, kafka_bootstrap)
    settings = {
        "batch_size": endpoints.BATCH_SIZE,
        "linger_s": endpoints.LINGER,
        "rabbitmq": f"no publisher confirms, transient messages, prefetch_count="
        f"{endpoints.PREFETCH}, basic_ack(multiple=True) every "
        f"{endpoints.ACK_EVERY}",
        "kafka": f"acks=1, linger_ms={int(endpoints.LINGER * 1000)}, batch_size="
        f"{endpoints.KAFKA_BATCH_BYTES}, 1 partition, manual commit before each poll",
        "memory": "producer and consumer threads in one process",
        "per_message_open_threads": open_threads,
    }
    result = {
        "header": {
            **header(plan, versions, settings),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1),
        },
        "rows": _rows(plan, samples),
    }
    if out is not None:
        report.write(result, samples_latency={k: v.latency_ns for k, v in samples.items()}, out=out)
    return result


def _spread(values: list[float], digits: int = 1) -> tuple[float, float, float]:
    return (
        round(statistics.median(values), digits),
        round(min(values), digits),
        round(max(values), digits),
    )


def _rows(plan: Plan, samples: dict[tuple[str, int, str], _Samples]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for (transport, size, mode), s in samples.items():
        plain = samples[(transport, size, "plain")]
        e2e, e2e_lo, e2e_hi = _spread(s.e2e, 0)
        latency = sorted(s.latency_ns)
        ratios = {
            k: _spread([a / b for a, b in zip(getattr(s, k), getattr(plain, k), strict=True)], 3)
            for k in ("e2e", "produce", "consume")
        }
        rows.append(
            {
                "transport": transport,
                "payload_bytes": size,
                "mode": mode,
                "rounds": len(s.e2e),
                "messages_per_round": plan.messages[size],
                "msgs_per_s": e2e,
                "msgs_per_s_min": e2e_lo,
                "msgs_per_s_max": e2e_hi,
                "mb_per_s": round(e2e * size / 1e6, 2),
                "ratio_to_plain": ratios["e2e"][0],
                "ratio_min": ratios["e2e"][1],
                "ratio_max": ratios["e2e"][2],
                "produce_msgs_per_s": _spread(s.produce, 0)[0],
                "produce_ratio_to_plain": ratios["produce"][0],
                "consume_msgs_per_s": _spread(s.consume, 0)[0],
                "consume_ratio_to_plain": ratios["consume"][0],
                "p50_ms": round(latency[len(latency) // 2] / 1e6, 3),
                "p99_ms": round(latency[min(len(latency) - 1, len(latency) * 99 // 100)] / 1e6, 3),
                "producer_cpu_us_per_msg": _spread(s.producer_cpu_us)[0],
                "consumer_cpu_us_per_msg": _spread(s.consumer_cpu_us)[0],
                "overhead_bytes": report.overhead(mode, size),
            }
        )
    order = {m: i for i, m in enumerate(MODES)}
    rows.sort(
        key=lambda r: (TRANSPORTS.index(r["transport"]), r["payload_bytes"], order[r["mode"]])
    )
    return rows


def main_from_args(args: argparse.Namespace) -> int:
    transports = tuple(t for t in args.transports.split(",") if t)
    unknown = set(transports) - set(TRANSPORTS)
    if unknown:
        raise SystemExit(f"unknown transports: {', '.join(sorted(unknown))}")
    sizes = tuple(int(x) for x in getattr(args, "sizes", "").split(",") if x) or SIZES
    if set(sizes) - set(SIZES):
        raise SystemExit(f"sizes are among {', '.join(map(str, SIZES))}")
    plan = Plan.make(args.quick, transports, args.rounds, sizes)
    result = run(
        plan,
        amqp_url=args.amqp_url,
        kafka_bootstrap=args.kafka_bootstrap,
        out=args.out,
        progress=not args.no_progress,
        open_threads=args.open_threads,
    )
    print(report.markdown(result))
    return 0
