"""KDS figures: grants per second and key-fetch latency (p50/p99, cold and warm client cache)
against real ``sealedbus kds serve`` processes on loopback, on SQLite and, given a PostgreSQL
database, on PostgreSQL with 1 and 3 replicas; then the service-level grant rate and the database
size per 10,000 topics (in-process, SQLite).

    python benchmarks/bench_kds.py [--postgres URL] [--workers 4] [--fetches 300] [--topics 2000]

Setup costs one TOTP code per configuration: it opens an admin session (docs/kds.md), so no
admin call waits for a fresh code. ``--postgres`` (default ``$SEALEDBUS_POSTGRES_URL``) must name
a database of its own: the benchmark refuses one that already holds KDS tables, unless given
``--reset``, and drops the tables it made when it is done. A run takes a minute or two.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/bench_kds.py`: find tests/ as well
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import inspect

from sealedbus.core.suites import Suite
from sealedbus.kds.admin_client import AdminClient
from sealedbus.kds.secrets import MasterKeyring
from sealedbus.kds.service import KeyDistributionService
from sealedbus.kds.store import Store, metadata
from sealedbus.keys import signing
from sealedbus.keys.authority import TopicPolicy
from sealedbus.keys.client import KeyServiceClient, enroll
from sealedbus.keys.identity import MemberIdentity
from sealedbus.keys.keyfiles import read_secret
from tests.kds._processes import KdsProcess, init, totp_code


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def network(label: str, db: str | None, replicas: int, workers: int, fetches: int) -> None:
    """Grants/s with ``workers`` concurrent members spread over the replicas; cold and warm
    key-fetch latency of one member."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "kds"
        fingerprint = init(data, db)
        kds = [KdsProcess(data, "--enroll-per-minute", "10000", db=db) for _ in range(replicas)]
        try:
            admin = AdminClient(
                kds[0].url,
                MemberIdentity.from_bytes(read_secret(data / "admin.key")),
                lambda: totp_code(data),
            )
            admin.open_session()  # the one TOTP code of this configuration
            names = [f"c{i}" for i in range(workers)]
            admin.create_topic("bench", producers=names, consumers=names)
            identities = [MemberIdentity.generate(n, os.urandom) for n in names]
            for i, identity in enumerate(identities):
                token = admin.create_token(identity.name)
                enroll(kds[i % replicas].url, identity, token, fingerprint)
            for _ in range(max(10, fetches // 10)):
                admin.rotate("bench")  # many epochs, so cold fetches hit distinct grants
            epochs = [e["epoch"] for e in admin.epochs("bench") if not e["destroyed"]]
            admin.close_session()
            admin.close()

            clients = [
                KeyServiceClient(kds[i % replicas].url, identity, fingerprint)
                for i, identity in enumerate(identities)
            ]
            now = int(time.time() * 1000)
            for client in clients:
                client.epoch_keys("bench", epochs[-1], now)  # root key, certificate: warm-up

            cold: list[float] = []
            one = clients[0]
            for i in range(fetches):
                one._keys.clear()  # a cold cache: every call fetches and opens a grant
                start = time.perf_counter()
                one.epoch_keys("bench", epochs[i % len(epochs)], now)
                cold.append(time.perf_counter() - start)
            warm: list[float] = []
            for _ in range(fetches * 10):
                start = time.perf_counter()
                one.epoch_keys("bench", epochs[-1], now)
                warm.append(time.perf_counter() - start)

            per_worker = max(1, fetches // workers) * 2
            barrier = threading.Barrier(workers + 1)

            def work(client: KeyServiceClient) -> None:
                barrier.wait()
                for i in range(per_worker):
                    client._keys.clear()
                    client.epoch_keys("bench", epochs[i % len(epochs)], now)

            threads = [threading.Thread(target=work, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            barrier.wait()
            start = time.perf_counter()
            for t in threads:
                t.join()
            concurrent = workers * per_worker / (time.perf_counter() - start)
            for client in clients:
                client.close()
        finally:
            for k in kds:
                k.stop()
    print(f"{label}:")
    print(
        f"  grants over HTTP on loopback, {workers} members at once: {concurrent:,.0f}/s; "
        f"one member, sequential: {len(cold) / sum(cold):,.0f}/s"
    )
    print(
        f"  key fetch, cold cache: p50 {percentile(cold, 0.5) * 1e3:.2f} ms, "
        f"p99 {percentile(cold, 0.99) * 1e3:.2f} ms; warm cache: "
        f"p50 {percentile(warm, 0.5) * 1e6:.1f} µs, p99 {percentile(warm, 0.99) * 1e6:.1f} µs",
        flush=True,
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

        token, token_public = signing.new_token()
        service.create_token("bench", "c", [], 60_000, token_public)
        service.create_topic("bench", TopicPolicy("bench", frozenset(), frozenset(["c"])))
        token_key = signing.token_key(token)
        token_public, now = token_key.public_key().public_bytes_raw(), service.now_ms()
        message = signing.enrollment_message(
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
            f"grants in the service, SQLite (seal + sign + audit write): "
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


def _drop_tables(url: str) -> None:
    store = Store(url)
    metadata.drop_all(store.engine)
    store.dispose()


def _check_empty(url: str, reset: bool) -> None:
    store = Store(url)
    try:
        tables = set(inspect(store.engine).get_table_names()) & set(metadata.tables)
    finally:
        store.dispose()
    if tables and not reset:
        raise SystemExit(
            f"{url.rsplit('@', 1)[-1]} already holds KDS tables ({', '.join(sorted(tables))}); "
            "give the benchmark a database of its own, or --reset to drop them"
        )
    if tables:
        _drop_tables(url)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="KDS benchmark: grants/s and key-fetch latency on SQLite and PostgreSQL "
        "(1 and 3 replicas), service-level grant rate and database size."
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("SEALEDBUS_POSTGRES_URL", ""),
        metavar="URL",
        help="a PostgreSQL database of the benchmark's own (default: $SEALEDBUS_POSTGRES_URL; "
        "empty: SQLite only)",
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="drop KDS tables found in --postgres first (default: refuse to run)",
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="members fetching at once (default: 4)"
    )
    parser.add_argument(
        "--fetches", type=int, default=300, help="cold key fetches timed (default: 300)"
    )
    parser.add_argument(
        "--topics", type=int, default=2000, help="topics for the size figure (default: 2000)"
    )
    args = parser.parse_args()
    network("SQLite, 1 replica", None, 1, args.workers, args.fetches)
    if args.postgres:
        _check_empty(args.postgres, args.reset)
        for replicas in (1, 3):
            try:
                network(
                    f"PostgreSQL, {replicas} replica{'s' if replicas > 1 else ''}",
                    args.postgres,
                    replicas,
                    args.workers,
                    args.fetches,
                )
            finally:
                _drop_tables(args.postgres)
    service_level(args.topics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
