"""A hung KDS (it accepts connections and never answers) must not stop traffic that cached keys
cover (issue 9 item 2): no KDS call on the hot path, refreshes in the background, and the
outage backoff counted from when a failure is known. Counts are asserted; the throughput
figures are printed, never asserted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sealedbus import Opener, Sealer

from ._harness import AsgiTransport, Hangable, HungSocket, Kds, RealClock, make_kds


@pytest.fixture
def real_time_kds(tmp_path: Path) -> Iterator[Kds]:
    k = make_kds(tmp_path, clock=RealClock())
    yield k
    k.http.close()
    k.store.dispose()


def _round_trips(sealer: Sealer, opener: Opener, n: int) -> tuple[int, float]:
    opened, start = 0, time.perf_counter()
    for i in range(n):
        if opener.open("orders", sealer.seal("orders", b"m%d" % i)).body == b"m%d" % i:
            opened += 1
    return opened, n / (time.perf_counter() - start)


def test_a_hung_kds_does_not_stop_traffic_that_cached_keys_cover(real_time_kds: Kds) -> None:
    """With a 5 s timeout and a 5 s backoff counted from the request's start, a SIGSTOPped KDS
    let 8 RabbitMQ messages through in 55 s: every refresh due sat on the hot path and every
    message waited a whole timeout. Here the timeout (0.5 s) outlasts the backoff (0.3 s)."""
    kds = real_time_kds
    kds.admin.create_topic("orders", producers=["pc"], consumers=["pc"])
    hung = HungSocket()
    transport = Hangable(AsgiTransport(kds.app), hung)
    http = httpx.Client(transport=transport, base_url="http://testserver", timeout=0.5)
    client = kds.member("pc", http=http, outage_backoff=0.3)
    sealer, opener = Sealer(client, clock=kds.clock), Opener(client, clock=kds.clock)
    try:
        n = 1500
        _round_trips(sealer, opener, 100)  # warm the caches
        opened, normal = _round_trips(sealer, opener, n)
        assert opened == n
        transport.hung = True
        kds.clock.advance(31)  # epoch (10 s) and revocation list (30 s) refreshes are due
        assert _round_trips(sealer, opener, 20)[0] == 20
        assert "MainThread" not in transport.hung_callers  # (before, each waited 0.5 s)
        opened, during = _round_trips(sealer, opener, n)
        print(
            f"\nseal+open round trips: {normal:,.0f}/s with the KDS answering, {during:,.0f}/s "
            f"with it hung ({during / normal:.0%}); {len(hung.accepted)} connections to the "
            f"hung KDS, from {sorted(set(transport.hung_callers))}"
        )
        assert opened == n  # every message went through from the caches
        assert transport.hung_callers, "the refreshes that were due were tried"
        assert "MainThread" not in transport.hung_callers  # none of them on the hot path
    finally:
        transport.hung = False
        for thread in threading.enumerate():
            if thread.name == "kds-refresh":
                thread.join(5)
        hung.close()
