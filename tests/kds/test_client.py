"""KeyServiceClient's cache: refresh once on an unknown key id, prefetch, and keep working
through a KDS outage while cached epochs are valid, then fail with a retryable error."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import pytest

from sealedbus import KeyServiceUnavailable, Opener, Sealer
from sealedbus.errors import UntrustedResponse
from sealedbus.keys.client import KeyServiceClient, enroll
from sealedbus.keys.identity import MemberIdentity
from sealedbus.keys.keyfiles import write_secret

from ._harness import AsgiTransport, Kds, settle


class Switch(httpx.BaseTransport):
    """Forwards to the KDS while ``up``; counts requests by path."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.up = True
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("KDS down", request=request)
        with self.lock:
            self.paths.append(request.url.path)
        return self.inner.handle_request(request)


def switched(kds: Kds, name: str) -> tuple[Switch, Sealer, Opener]:
    switch = Switch(AsgiTransport(kds.app))
    client = kds.member(name, http=httpx.Client(transport=switch, base_url="http://testserver"))
    return switch, Sealer(client, clock=kds.clock), Opener(client, clock=kds.clock)


def test_works_through_an_outage_while_cached_epochs_last(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["pc"], consumers=["pc"], rotation=100)
    switch, sealer, opener = switched(kds, "pc")
    assert opener.open("orders", sealer.seal("orders", b"before")).body == b"before"
    switch.up = False
    for _ in range(8):  # 80 s of outage inside epoch 0: sealing and opening go on
        kds.clock.advance(10)
        assert opener.open("orders", sealer.seal("orders", b"during")).body == b"during"
    kds.clock.advance(25)  # epoch 0 is over and the next one was never fetched
    with pytest.raises(KeyServiceUnavailable) as unavailable:
        sealer.seal("orders", b"too late")
    assert unavailable.value.retryable
    switch.up = True
    kds.clock.advance(6)  # past the client's outage backoff
    assert opener.open("orders", sealer.seal("orders", b"after")).body == b"after"


def test_opening_an_uncached_epoch_during_an_outage_is_retryable(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    switch, _, opener = switched(kds, "c")
    opener.open("orders", sealer.seal("orders", b"warm the cache"))
    kds.admin.rotate("orders")
    kds.clock.advance(11)
    sealer.seal("orders", b"refreshes the epoch off the hot path")
    settle()
    kds.clock.advance(1)  # the sealer asks its key source again
    envelope = sealer.seal("orders", b"new epoch")
    switch.up = False
    with pytest.raises(KeyServiceUnavailable):
        opener.open("orders", envelope)
    switch.up = True
    kds.clock.advance(6)
    assert opener.open("orders", envelope).epoch == 1


def test_unknown_epoch_is_fetched_once_then_served_from_cache(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    switch, _, opener = switched(kds, "c")
    for i in range(20):
        opener.open("orders", sealer.seal("orders", b"m%d" % i))
    assert switch.paths.count("/v1/topics/orders/epochs/0/grant") == 1
    certificate_lookups = [p for p in switch.paths if p.startswith("/v1/certificates/")]
    assert len(certificate_lookups) == 1


def test_next_epoch_grant_is_prefetched(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"], rotation=100)
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    switch, _, opener = switched(kds, "c")
    opener.open("orders", sealer.seal("orders", b"m"))
    kds.clock.advance(95)
    kds.service.tick("test")  # epoch 1 is published ahead
    opener.open("orders", sealer.seal("orders", b"m"))  # near the end: prefetch starts
    for thread in threading.enumerate():
        if thread.name == "kds-prefetch":
            thread.join()
    switch.up = False  # epoch 1 opens without the KDS
    kds.clock.advance(6)
    assert opener.open("orders", sealer.seal("orders", b"next")).epoch == 1


def test_a_replayed_old_revocation_list_is_refused(kds: Kds) -> None:
    """The KDS signs the list afresh for every answer; a recorded one is too old to pass, even
    to a client that restarted and holds no list to compare serials with."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    envelope = sealer.seal("orders", b"signed by p")
    recorded: list[bytes] = []

    class Replay(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = self.inner.handle_request(request)
            if request.url.path == "/v1/revocations":
                recorded.append(recorded[0] if recorded else response.read())
                return httpx.Response(200, content=recorded[-1])
            return response

    http = httpx.Client(transport=Replay(AsgiTransport(kds.app)), base_url="http://testserver")
    consumer = kds.member("c", http=http)
    assert Opener(consumer, clock=kds.clock).open("orders", envelope).body == b"signed by p"
    kds.admin.revoke("p")  # the recorded list predates this
    kds.clock.advance(200)
    restarted = kds.client(consumer._identity, http=http)
    with pytest.raises(UntrustedResponse, match="stale revocation list"):
        Opener(restarted, clock=kds.clock).open("orders", envelope)


def test_cache_hits_do_not_wait_for_a_slow_kds(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["pc"], consumers=["pc"])
    release = threading.Event()

    class Slow(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner
            self.slow = False

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if self.slow:
                release.wait(10)
            return self.inner.handle_request(request)

    slow = Slow(AsgiTransport(kds.app))
    client = kds.member("pc", http=httpx.Client(transport=slow, base_url="http://testserver"))
    sealer = Sealer(client, clock=kds.clock)
    client.identity(kds.clock_ms())
    sealer.seal("orders", b"warm the cache")
    kds.clock.advance(31)  # the revocation list is due for a refresh; the epoch is still fresh
    client.sealing_epoch("orders", kds.clock_ms())
    slow.slow = True
    stuck = threading.Thread(target=client.revocations, args=(kds.clock_ms(),))
    stuck.start()
    try:
        answered = threading.Event()

        def cached() -> None:
            client.sealing_epoch("orders", kds.clock_ms())
            client.identity(kds.clock_ms())
            answered.set()

        threading.Thread(target=cached, daemon=True).start()
        assert answered.wait(2), "a cache hit waited for another thread's KDS call"
    finally:
        release.set()
        stuck.join()


def test_unknown_certificate_ids_do_not_cost_a_request_per_envelope(kds: Kds) -> None:
    """Anyone who can publish to a topic can send junk envelopes with random certificate ids."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    switch, _, opener = switched(kds, "c")
    client = opener.keys
    junk = [bytes([i]) * 16 for i in range(3)]
    for _ in range(10):
        for cert_id in junk:
            assert client.sender_certificate(cert_id, kds.clock_ms()) is None
    lookups = [p for p in switch.paths if p.startswith("/v1/certificates/")]
    assert len(lookups) == 3
    kds.clock.advance(61)  # after a minute the KDS is asked again
    assert client.sender_certificate(junk[0], kds.clock_ms()) is None
    assert len([p for p in switch.paths if p.startswith("/v1/certificates/")]) == 4


def test_client_from_the_key_file_enroll_wrote(kds: Kds, tmp_path: Path) -> None:
    kds.admin.create_topic("orders", producers=["p"], consumers=["p"])
    identity = MemberIdentity.generate("p", os.urandom)
    enroll(
        "http://testserver",
        identity,
        kds.admin.create_token("p", None),
        kds.root_fingerprint,
        http=kds.http,
        clock=kds.clock,
    )
    write_secret(tmp_path / "p.key", identity.to_bytes())
    client = KeyServiceClient.from_key_file(
        "http://testserver",
        str(tmp_path / "p.key"),
        kds.root_fingerprint,
        http=kds.http,
        clock=kds.clock,
    )
    sealer, opener = Sealer(client, clock=kds.clock), Opener(client, clock=kds.clock)
    assert opener.open("orders", sealer.seal("orders", b"from a file")).body == b"from a file"
