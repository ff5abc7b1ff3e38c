"""Per-subject erasure at scale: a KDS store filled with 1,000,000 subject keys on SQLite and on
PostgreSQL; prints the storage, lookup latency (p50/p99) and erase latency at 10k, 100k and 1M
subjects, so the growth can be read off. Figures only, no asserts.

    python benchmarks/subjects.py [--subjects 1000000] [--postgres URL] [--lookups 2000]

What is measured, per backend:
- bulk load: rows as the KDS stores them (topic, random 16-byte key id, keyed token of the
  subject, 32-byte public key, wrapped private key of the real size), inserted in batches;
- storage: the SQLite file (after a WAL checkpoint) or the PostgreSQL table with its indexes;
- lookups: the producer's (by token: HMAC of the subject, then the unique index) and the
  consumer's (by topic and key id: the primary key), store level, in one read transaction each;
  and ``KeyDistributionService.subject_key`` for a known subject (token, lookup, signing);
- erase: ``KeyDistributionService.erase_subject`` (one write transaction: find by token, clear
  token and keys, append the audit record).

The bulk rows carry random bytes where the keys would be (making a million X25519 key pairs
costs a minute and changes nothing that is measured here). ``--postgres`` (default
``$SEALEDBUS_POSTGRES_URL``; "" skips it) names a server: the benchmark creates a database of its
own there and drops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/subjects.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text

from sealedbus.kds import store as rows
from sealedbus.kds.context import token_context
from sealedbus.kds.secrets import MasterKeyring
from sealedbus.kds.service import KeyDistributionService
from sealedbus.kds.store import Store, database_url
from sealedbus.keys import authority
from sealedbus.keys.authority import TopicPolicy

TOPIC = "bench"
MILESTONES = (10_000, 100_000, 1_000_000)
WRAPPED_LEN = 1 + 2 + 12 + 32 + 16  # id length, master key id "k1", nonce, key, tag


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(call: Callable[[], object], n: int) -> tuple[float, float]:
    """p50 and p99 in microseconds over ``n`` calls."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e6)
    return percentile(samples, 0.5), percentile(samples, 0.99)


def subject(i: int) -> str:
    return f"patient-{i:08d}"


class Bench:
    def __init__(self, label: str, url: str, size: Callable[[Store], int]) -> None:
        self.label = label
        self.store = Store(url)
        self.store.create_schema()
        self.size = size
        self.service = KeyDistributionService(
            self.store, Ed25519PrivateKey.generate(), MasterKeyring.generate()
        )
        self.service.create_topic(
            "bench-admin", TopicPolicy(TOPIC, frozenset({"p"}), frozenset({"c"}))
        )
        with self.store.read() as conn:
            wrapped = rows.topic_row(conn, TOPIC).token_key  # type: ignore[union-attr]
        self.token_key = self.service.master.unwrap(wrapped, token_context(TOPIC))
        self.loaded = 0
        self.key_ids: list[bytes] = []
        self.erased: set[int] = set()

    def token(self, i: int) -> bytes:
        return authority.subject_token(self.token_key, TOPIC, subject(i))

    def load(self, upto: int, batch: int) -> float:
        start = time.perf_counter()
        now = int(time.time() * 1000)
        while self.loaded < upto:
            n = min(batch, upto - self.loaded)
            chunk = []
            for i in range(self.loaded, self.loaded + n):
                key_id = os.urandom(16)
                self.key_ids.append(key_id)
                chunk.append(
                    {
                        "topic": TOPIC,
                        "key_id": key_id,
                        "token": self.token(i),
                        "public": os.urandom(32),
                        "wrapped": os.urandom(WRAPPED_LEN),
                        "master_key_id": "k1",
                        "created_ms": now,
                        "erased_ms": None,
                    }
                )
            with self.store.write() as conn:
                rows.insert_subjects(conn, chunk)
            self.loaded += n
        return time.perf_counter() - start

    def live(self, rng: random.Random) -> int:
        while True:
            i = rng.randrange(self.loaded)
            if i not in self.erased:
                return i

    def measure(self, lookups: int, erasures: int, rng: random.Random) -> None:
        def by_token() -> None:
            token = self.token(self.live(rng))
            with self.store.read() as conn:
                found = rows.subject_by_token(conn, token)
            if found is None:
                raise RuntimeError("a loaded subject was not found by its token")

        def by_id() -> None:
            key_id = self.key_ids[rng.randrange(self.loaded)]
            with self.store.read() as conn:
                found = rows.subject_by_id(conn, TOPIC, key_id)
            if found is None:
                raise RuntimeError("a loaded subject was not found by its key id")

        def service_lookup() -> None:
            self.service.subject_key("p", TOPIC, subject(self.live(rng)))

        def erase() -> None:
            i = self.live(rng)
            self.erased.add(i)
            if self.service.erase_subject("bench-admin", TOPIC, subject(i)) is None:
                raise RuntimeError("a loaded subject had no key to erase")

        size = self.size(self.store)
        print(
            f"  {self.loaded:>9,} subjects: storage {size / 2**20:8.1f} MiB "
            f"({size / self.loaded:5.0f} B/subject)"
        )
        for name, call, n in (
            ("lookup by token (producer)", by_token, lookups),
            ("lookup by key id (consumer)", by_id, lookups),
            ("service subject_key (+sign)", service_lookup, lookups // 2),
            ("erase (write + audit)", erase, erasures),
        ):
            p50, p99 = timed(call, n)
            print(f"    {name:<30} p50 {p50:8.1f} us   p99 {p99:8.1f} us   (n={n})")


def sqlite_size(store: Store) -> int:
    store.compact()
    path = store.engine.url.database or ""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def postgres_size(store: Store) -> int:
    with store.read() as conn:
        conn.exec_driver_sql("ANALYZE subject_keys")
        return int(conn.execute(text("SELECT pg_total_relation_size('subject_keys')")).scalar_one())


@contextmanager
def fresh_postgres(server_url: str) -> Iterator[str]:
    name = f"bench_subjects_{os.urandom(4).hex()}"
    admin = create_engine(database_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield f"{server_url.rpartition('/')[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


def run(bench: Bench, subjects: int, lookups: int, erasures: int, batch: int) -> None:
    print(f"{bench.label}:")
    rng = random.Random(1)
    total = 0.0
    for milestone in (*(m for m in MILESTONES if m < subjects), subjects):
        total += bench.load(milestone, batch)
        print(f"  loaded {milestone:,} in {total:.1f} s ({milestone / total:,.0f} rows/s)")
        bench.measure(lookups, erasures, rng)
    bench.store.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subjects", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--erasures", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("SEALEDBUS_POSTGRES_URL", ""),
        help="PostgreSQL server URL (default: $SEALEDBUS_POSTGRES_URL; empty: skip)",
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_sqlite:
            bench = Bench("SQLite", f"sqlite:///{tmp}/kds.db", sqlite_size)
            run(bench, args.subjects, args.lookups, args.erasures, args.batch)
    if args.postgres:
        with fresh_postgres(args.postgres) as url:
            bench = Bench("PostgreSQL", url, postgres_size)
            run(bench, args.subjects, args.lookups, args.erasures, args.batch)


if __name__ == "__main__":
    main()
