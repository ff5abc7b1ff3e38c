"""A running sealed system on loopback: a KDS process (``sealedbus kds serve``), two enrolled
members, and a sealed producer and consumer on a MemoryBus, each exposing its client metrics with
``PrometheusMetrics.serve`` the way a service without an HTTP server would. A thread keeps
traffic flowing, with the troubles an SRE watches for: a tampered record (refused and
dead-lettered), a replayed one (dropped as duplicate) and a seal the KDS refuses."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sealedbus import Opener, SealedbusError, Sealer
from sealedbus.brokers.memory import MemoryBus, MemoryConsumer, MemoryProducer
from sealedbus.keys.client import KeyServiceClient
from sealedbus.keys.identity import MemberIdentity
from sealedbus.keys.keyfiles import read_secret
from sealedbus.ops.prometheus import PrometheusMetrics
from tests.kds._processes import KdsProcess, cli, init, totp_code


def admin(data: Path, url: str, *args: str | Path) -> str:
    return cli(
        "admin", "--url", url, "--key", data / "admin.key", "--totp", totp_code(data), *args
    ).stdout


def enroll(data: Path, url: str, fingerprint: str, name: str, work: Path) -> KeyServiceClient:
    token, key = work / f"{name}.token", work / f"{name}.key"
    admin(data, url, "token", name, "--out", token)
    cli(
        "enroll",
        "--url",
        url,
        "--name",
        name,
        "--token-file",
        token,
        "--key-out",
        key,
        "--root-fingerprint",
        fingerprint,
    )
    identity = MemberIdentity.from_bytes(read_secret(key))
    return KeyServiceClient(url, identity, fingerprint, epoch_refresh=0.5, revocation_refresh=1)


def set_up_members(
    data: Path, url: str, fingerprint: str, work: Path
) -> tuple[KeyServiceClient, KeyServiceClient]:
    """Topic ``orders``: p produces, c consumes; 3 s epochs, 6 s retention, so rotations and
    destructions happen while the test runs. (Three admin commands: each takes a fresh TOTP
    code, and a fourth would wait for the next 30 s step.)"""
    admin(data, url, "topic", "create", "orders", "--producers", "p", "--consumers", "c",
          "--rotation", "3", "--retention", "6")  # fmt: skip
    return enroll(data, url, fingerprint, "p", work), enroll(data, url, fingerprint, "c", work)


@dataclass
class Stack:
    kds_url: str
    producer_metrics: str  # URL of the producer's /metrics
    consumer_metrics: str
    bus: MemoryBus
    delivered: list[bytes]


class Traffic:
    """Sends and receives on a thread until stopped."""

    def __init__(self, producer: MemoryProducer, consumer: MemoryConsumer, bus: MemoryBus) -> None:
        self.producer, self.consumer, self.bus = producer, consumer, bus
        self.delivered: list[bytes] = []
        self.errors: list[BaseException] = []
        self.failures: list[SealedbusError] = []  # sealedbus refusals: counted by the metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def step(self, n: int) -> None:
        self.producer.send("orders", b"order %d" % n)
        for delivery in self.consumer.poll(timeout=0.05):
            self.delivered.append(delivery.value)
            self.consumer.ack(delivery)

    def troubles(self) -> None:
        sent = self.bus.records("orders")[-1].value
        self.bus.publish("orders", sent)  # replayed: dropped as a duplicate
        self.bus.publish("orders", sent[:-1] + bytes([sent[-1] ^ 1]))  # tampered: dead-lettered
        with contextlib.suppress(SealedbusError):
            self.producer.sealer.seal("audit", b"no such topic")  # refused by the KDS

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                self.step(n)
                if n % 50 == 5:
                    self.troubles()
            except SealedbusError as exc:  # e.g. a key service error at an epoch boundary
                self.failures.append(exc)
            except Exception as exc:  # reported by the test, not lost in the thread
                self.errors.append(exc)
            n += 1
            self._stop.wait(0.05)


@contextmanager
def running_stack(work: Path) -> Iterator[tuple[Stack, KdsProcess, Traffic]]:
    data = work / "kds"
    fingerprint = init(data)
    kds = KdsProcess(data, "--scheduler-interval", "0.2", "--lease", "2")
    try:
        p, c = set_up_members(data, kds.url, fingerprint, work)
        produced, consumed = (
            PrometheusMetrics(topics=["orders", "audit"]),
            PrometheusMetrics(topics=["orders"]),
        )
        phost, pport = produced.serve(0, "127.0.0.1")
        chost, cport = consumed.serve(0, "127.0.0.1")
        bus = MemoryBus()
        producer = MemoryProducer(bus, Sealer(p, metrics=produced, epoch_check_interval=0.2))
        consumer = MemoryConsumer(bus, Opener(c, metrics=consumed), "orders", "ledger")
        traffic = Traffic(producer, consumer, bus)
        traffic.step(0)
        traffic.troubles()
        traffic.start()
        stack = Stack(
            kds.url,
            f"http://{phost}:{pport}/metrics",
            f"http://{chost}:{cport}/metrics",
            bus,
            traffic.delivered,
        )
        try:
            yield stack, kds, traffic
        finally:
            traffic.stop()
            produced.close()
            consumed.close()
            p.close()
            c.close()
    finally:
        kds.stop()
