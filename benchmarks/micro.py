"""Micro benchmark: seal and open throughput of the core, single thread, no broker.

For 128 B, 1 KB and 16 KB payloads, in per-message and batch (N=64) signing mode, prints msgs/s
and the ratio to bare AES-256-GCM on the same payload measured in the same run.

    .venv/bin/python benchmarks/micro.py [--seconds 1.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealedbus import KeySource, LocalKeyService, Opener, Sealer

SIZES = (128, 1024, 16384)
BATCH = 64


def _rate(fn: Callable[[], int], seconds: float, rounds: int = 3) -> float:
    """Median over ``rounds`` of messages per second; ``fn`` returns how many it handled."""
    rates = []
    for _ in range(rounds):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / rounds:
            done += fn()
        rates.append(done / elapsed)
    return statistics.median(rates)


def _count(fn: Callable[[], list[bytes]]) -> int:
    return len(fn())


class _OpenLoop:
    """Opens a pool of envelopes over and over; a fresh Opener per pass, so none is a replay."""

    def __init__(self, consumer: KeySource, pool: list[bytes], threads: int = 1) -> None:
        self.consumer, self.pool, self.i, self.threads = consumer, pool, 0, threads
        self.opener = Opener(consumer, threads=threads)

    def __call__(self) -> int:
        if self.i == 0:
            self.opener.close()
            self.opener = Opener(self.consumer, threads=self.threads)
        chunk = self.pool[self.i : self.i + BATCH]
        if any(
            isinstance(r, Exception) for r in self.opener.open_many([("bench", e) for e in chunk])
        ):
            raise RuntimeError("an envelope did not open")
        self.i = (self.i + BATCH) % len(self.pool)
        return len(chunk)


def bench(seconds: float) -> list[dict[str, object]]:
    ks = LocalKeyService()
    ks.create_topic("bench", producers=["p"], consumers=["c"])
    producer, consumer = ks.enroll("p"), ks.enroll("c")
    sealer = Sealer(producer, batch_size=BATCH, max_session_messages=1 << 24)
    rows: list[dict[str, object]] = []
    for size in SIZES:
        body = os.urandom(size)
        aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)

        def aes() -> int:
            for _ in range(BATCH):
                aead.encrypt(nonce, body, b"")
            return BATCH

        def seal_single() -> list[bytes]:
            return [sealer.seal("bench", body) for _ in range(BATCH)]

        def seal_batch() -> list[bytes]:
            for _ in range(BATCH - 1):
                sealer.add("bench", body)
            return [s.envelope for s in sealer.add("bench", body)]

        aes_rate = _rate(aes, seconds)
        for mode, seal in (("per-message", seal_single), ("batch", seal_batch)):
            seal_rate = _rate(partial(_count, seal), seconds)
            pool = [e for _ in range(20) for e in seal()]
            open_rate = _rate(_OpenLoop(consumer, pool), seconds)
            open_2t = _rate(_OpenLoop(consumer, pool, threads=2), seconds)
            rows.append(
                {
                    "payload_bytes": size,
                    "mode": mode,
                    "seal_msgs_per_s": round(seal_rate),
                    "open_msgs_per_s": round(open_rate),
                    "open_2_threads_msgs_per_s": round(open_2t),
                    "aes_gcm_msgs_per_s": round(aes_rate),
                    "seal_ratio_to_aes": round(seal_rate / aes_rate, 4),
                    "open_ratio_to_aes": round(open_rate / aes_rate, 4),
                    "overhead_bytes": len(pool[0]) - size,
                }
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    ap.add_argument("--json", action="store_true", help="print JSON rows")
    args = ap.parse_args()
    rows = bench(args.seconds)
    if args.json:
        print(
            json.dumps(
                {
                    "python": sys.version.split()[0],
                    "cryptography": cryptography.__version__,
                    "machine": platform.machine(),
                    "rows": rows,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"python {sys.version.split()[0]}, cryptography {cryptography.__version__}; one thread,"
        " except 'open/s 2t': Opener(threads=2).open_many"
    )
    print(
        f"{'payload':>8} {'mode':<12} {'seal/s':>10} {'open/s':>10} {'open/s 2t':>10} "
        f"{'AES-GCM/s':>11} "
        f"{'seal÷AES':>9} {'open÷AES':>9} {'overhead':>9}"
    )
    for r in rows:
        print(
            f"{r['payload_bytes']:>8} {r['mode']:<12} {r['seal_msgs_per_s']:>10,} "
            f"{r['open_msgs_per_s']:>10,} {r['open_2_threads_msgs_per_s']:>10,} "
            f"{r['aes_gcm_msgs_per_s']:>11,} "
            f"{r['seal_ratio_to_aes']:>9.3f} {r['open_ratio_to_aes']:>9.3f} "
            f"{r['overhead_bytes']:>8} B"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
