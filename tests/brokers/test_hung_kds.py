"""Issue 9.2 on the real brokers: a KDS that accepts connections and never answers (a SIGSTOPped
process) must not stop traffic that cached keys cover. Before, a RabbitMQ producer sent 8
messages in 55 s and a Kafka one none: every refresh that fell due sat on the hot path and each
message waited a whole request timeout. Counts are asserted; rates are printed, never asserted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.brokers.drivers import Driver
from tests.kds._harness import (
    AsgiTransport,
    Hangable,
    HungSocket,
    Kds,
    RealClock,
    running_kds,
)


@pytest.fixture
def kds(tmp_path: Path) -> Iterator[Kds]:
    with running_kds(tmp_path, RealClock()) as k:  # brokers and sealers read the real clock
        yield k


def test_a_hung_kds_does_not_stop_broker_traffic(kds: Kds, driver: Driver) -> None:
    topic = driver.new_topic()
    kds.admin.create_topic(topic, producers=["p"], consumers=["c"])
    hung = HungSocket()
    cuts = [Hangable(AsgiTransport(kds.app), hung) for _ in range(2)]
    producer, consumer = (
        kds.member(
            name,
            http=httpx.Client(transport=cut, base_url="http://testserver", timeout=0.5),
            outage_backoff=0.3,
        )
        for name, cut in zip(("p", "c"), cuts, strict=True)
    )
    sender = driver.sender(topic, Sealer(producer, clock=kds.clock))
    receiver = driver.receiver(topic, Opener(consumer, clock=kds.clock))

    def round_of(n: int, tag: str) -> float:
        start = time.perf_counter()
        for i in range(n):
            sender.send(f"{tag}{i}".encode(), key=b"k")
        got = receiver.take(n)
        assert sorted(g.body for g in got) == sorted(f"{tag}{i}".encode() for i in range(n))
        return n / (time.perf_counter() - start)

    try:
        normal = round_of(200, "before")  # also warms every cache
        for cut in cuts:
            cut.hung = True
        kds.clock.advance(31)  # the epoch (10 s) and revocation list (30 s) refreshes are due
        during = round_of(200, "during")
        print(
            f"\n{driver.__class__.__name__}: {normal:,.0f} msgs/s with the KDS answering, "
            f"{during:,.0f} msgs/s with it hung ({during / normal:.0%}); "
            f"{len(hung.accepted)} connections to the hung KDS"
        )
        assert driver.dead_letters(topic) == []
        for cut in cuts:
            assert cut.hung_callers, "the refreshes that fell due were tried"
            assert "MainThread" not in cut.hung_callers  # none of them on the hot path
    finally:
        for cut in cuts:
            cut.hung = False
        for thread in threading.enumerate():
            if thread.name == "kds-refresh":
                thread.join(5)
        sender.close()
        receiver.close()
        hung.close()
