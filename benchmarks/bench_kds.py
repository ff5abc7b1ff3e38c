"""KDS figures: grants per second, key-fetch latency (p50/p99) from a warm and a cold client
cache, and database size per 10,000 topics.

    .venv/bin/python -m benchmarks.bench_kds [--topics 10000] [--fetches 300]

Grants and fetches run against a real ``sealedbus kds serve`` process on loopback (plain HTTP,
SQLite); the service-level grant rate and the database size use the service in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealedbus.core.suites import Suite
from sealedbus.kds import auth
from sealedbus.kds.admin_client import AdminClient
from sealedbus.kds.secrets import MasterKeyring, read_secret
from sealedbus.kds.service import KeyDistributionService
from sealedbus.kds.store import Store
from sealedbus.keys.authority import TopicPolicy
from sealedbus.keys.client import KeyServiceClient, enroll
from sealedbus.keys.identity import MemberIdentity
from tests.kds._processes import KdsProcess, init, totp_code


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def network(fetches: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "kds"
        fingerprint = init(data)
        kds = KdsProcess(data, "--enroll-per-minute", "1000")
        try:
            admin = AdminClient(
                kds.url,
                MemberIdentity.from_bytes(read_secret(data / "admin.key")),
                lambda: totp_code(data),
            )
            admin.create_topic("bench", producers=["c"], consumers=["c"])
            identity = MemberIdentity.generate("c", os.urandom)
            enroll(kds.url, identity, admin.create_token("c"), fingerprint)
            for _ in range(fetches // 10):
                admin.rotate("bench")  # many epochs so cold fetches hit distinct grants
            epochs = [e["epoch"] for e in admin.epochs("bench") if not e["destroyed"]]
            admin.close()

            client = KeyServiceClient(kds.url, identity, fingerprint)
            now = int(time.time() * 1000)
            client.epoch_keys("bench", epochs[-1], now)  # root key, certificate: warm-up
            cold: list[float] = []
            for i in range(fetches):
                client._keys.clear()  # a cold cache: every call fetches and opens a grant
                start = time.perf_counter()
                client.epoch_keys("bench", epochs[i % len(epochs)], now)
                cold.append(time.perf_counter() - start)
            warm: list[float] = []
            for _ in range(fetches * 10):
                start = time.perf_counter()
                client.epoch_keys("bench", epochs[-1], now)
                warm.append(time.perf_counter() - start)
            client.close()
        finally:
            kds.stop()
    rate = len(cold) / sum(cold)
    print(f"grants over HTTP (one client, sequential): {rate:,.0f}/s")
    print(
        f"key fetch, cold cache: p50 {percentile(cold, 0.5) * 1e3:.2f} ms, "
        f"p99 {percentile(cold, 0.99) * 1e3:.2f} ms"
    )
    print(
        f"key fetch, warm cache: p50 {percentile(warm, 0.5) * 1e6:.2f} µs, "
        f"p99 {percentile(warm, 0.99) * 1e6:.2f} µs"
    )


def service_level(topics: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kds.db"
        store = Store(f"sqlite:///{path}")
        store.create_schema()
        service = KeyDistributionService(
            store, Ed25519PrivateKey.generate(), MasterKeyring.generate()
        )
        identity = MemberIdentity.generate("c", os.urandom)

        token, token_public = auth.new_token()
        service.create_token("bench", "c", [], 60_000, token_public)
        service.create_topic("bench", TopicPolicy("bench", frozenset(), frozenset(["c"])))
        token_key = auth.token_key(token)
        token_public, now = token_key.public_key().public_bytes_raw(), service.now_ms()
        message = auth.enrollment_message(
            token_public, "c", identity.identity_public, 1, identity.receive.public, now
        )
        service.enroll(
            token_public,
            "c",
            identity.identity_public,
            Suite.X25519,
            identity.receive.public,
            now,
            token_key.sign(message),
            identity.signing_key.sign(message),
        )
        n, start = 300, time.perf_counter()
        for _ in range(n):
            service.grant("c", "bench", 0)
        print(
            f"grants in the service (seal + sign + audit write): "
            f"{n / (time.perf_counter() - start):,.0f}/s"
        )

        base = path.stat().st_size
        start = time.perf_counter()
        for i in range(topics):
            service.create_topic(
                "bench", TopicPolicy(f"topic-{i:05d}", frozenset(["p"]), frozenset(["c"]))
            )
        elapsed = time.perf_counter() - start
        store.compact()
        size = path.stat().st_size - base
        print(
            f"database growth for {topics:,} topics (one epoch each, audit included): "
            f"{size / 1e6:.1f} MB = {size / topics:,.0f} bytes per topic "
            f"({size * 10_000 / topics / 1e6:.1f} MB per 10,000); "
            f"created at {topics / elapsed:,.0f} topics/s"
        )
        store.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topics", type=int, default=10_000)
    parser.add_argument("--fetches", type=int, default=300)
    args = parser.parse_args()
    network(args.fetches)
    service_level(args.topics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
