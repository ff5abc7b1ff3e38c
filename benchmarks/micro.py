"""Micro benchmark: the pure and the native core side by side, one thread, no broker.

For 128 B, 1 KB and 16 KB payloads, in per-message and batch (N=64) signing mode: seal rate
(``Sealer.seal`` per message, or ``add`` of a 64-message batch), open msgs/s through
``Opener.open_many`` in chunks of 64 (per-message signatures verified in one native call, one by
one) and through ``Opener.open`` one at a time, for each core, and the ratio
native / pure measured in the same run (the two cores alternate inside each measurement).
Rates are messages per CPU second of the measuring thread, so that other processes on a
shared machine do not count. Each opener opens a pool of ``--pool`` batches (default 100, 6,400
envelopes of one session) before a fresh one takes over, so none is a replay: the first batch
of each opener goes through every Python step (with the native core, later ones through its
fast path), as a consumer's first fetch of a session does.

    .venv/bin/python benchmarks/micro.py [--seconds 1.0] [--pool 100] [--json]
    .venv/bin/python benchmarks/micro.py --callgrind   # instructions per message (valgrind)

The peer rows put what teams write by hand today next to sealed-batch: a shared-key Fernet
(``cryptography.fernet``: AES-128-CBC and HMAC-SHA256, base64 tokens) around the payload, no
signature, no per-member keys, no replay window. Sealed-batch runs on the native core when it is
built (else the pure one); both alternate inside each measurement, and the ratios are
sealed-batch / Fernet.

``--callgrind`` runs each core path at 1 KB under ``valgrind --tool=callgrind`` twice, with n1
and n2 messages, and reports (Ir(n2) - Ir(n1)) / (n2 - n1): the setup cancels out, and the
count repeats from run to run, so a regression shows up as a number rather than as noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import cryptography
from cryptography.fernet import Fernet

from sealedbus import KeySource, LocalKeyService, Opener, Sealer
from sealedbus.core import backend

SIZES = (128, 1024, 16384)
BATCH = 64
CORES = ("pure", "native") if backend.NATIVE is not None else ("pure",)
OPS = ("seal", "open_many", "open")
MODES = ("per-message", "batch")


class _Bench:
    """A key service, a producer and a consumer on one topic; envelopes of each core."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        ks = LocalKeyService(clock=clock)
        self.clock = clock
        ks.create_topic("bench", producers=["p"], consumers=["c"])
        self.producer: KeySource = ks.enroll("p")
        self.consumer: KeySource = ks.enroll("c")
        self.sealers = {
            c: Sealer(
                self.producer, batch_size=BATCH, max_session_messages=1 << 24, core=c, clock=clock
            )
            for c in CORES
        }

    def seal(self, core: str, mode: str, body: bytes) -> list[bytes]:
        """One batch of 64 envelopes."""
        sealer = self.sealers[core]
        if mode == "per-message":
            return [sealer.seal("bench", body) for _ in range(BATCH)]
        for _ in range(BATCH - 1):
            sealer.add("bench", body)
        return [s.envelope for s in sealer.add("bench", body)]


class _OpenLoop:
    """Opens a pool of envelopes over and over; a fresh Opener per pass, so none is a replay."""

    def __init__(
        self,
        consumer: KeySource,
        pool: list[bytes],
        core: str,
        many: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.consumer, self.pool, self.core, self.many, self.i = consumer, pool, core, many, 0
        self.clock = clock
        self.opener = Opener(consumer, core=core, clock=clock)

    def __call__(self) -> int:
        if self.i == 0:
            self.opener = Opener(self.consumer, core=self.core, clock=self.clock)
        chunk = self.pool[self.i : self.i + BATCH]
        if self.many:
            results = self.opener.open_many([("bench", e) for e in chunk])
            if any(isinstance(r, Exception) for r in results):
                raise RuntimeError("an envelope did not open")
        else:
            for e in chunk:
                self.opener.open("bench", e)
        self.i = (self.i + BATCH) % len(self.pool)
        return len(chunk)


def _rates(fns: dict[str, Callable[[], int]], seconds: float, rounds: int = 5) -> dict[str, float]:
    """Median msgs per CPU second of each function over ``rounds``; the functions alternate in
    each round. CPU time of this thread, not wall time: on a shared machine the wall clock
    counts other processes' work too (everything here runs on the calling thread)."""
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            done, start, cpu = 0, time.perf_counter(), time.thread_time()
            while time.perf_counter() - start < seconds / rounds / len(fns):
                done += fn()
            rates[name].append(done / (time.thread_time() - cpu))
    return {k: statistics.median(v) for k, v in rates.items()}


def _seal_count(b: _Bench, core: str, mode: str, body: bytes) -> int:
    return len(b.seal(core, mode, body))


def bench(seconds: float, pool_batches: int = 100) -> list[dict[str, object]]:
    b = _Bench()
    rows: list[dict[str, object]] = []
    for size in SIZES:
        body = os.urandom(size)
        for mode in MODES:
            seal = _rates({c: partial(_seal_count, b, c, mode, body) for c in CORES}, seconds)
            pools = {
                c: [e for _ in range(pool_batches) for e in b.seal(c, mode, body)] for c in CORES
            }
            many = _rates({c: _OpenLoop(b.consumer, pools[c], c, True) for c in CORES}, seconds)
            one = _rates({c: _OpenLoop(b.consumer, pools[c], c, False) for c in CORES}, seconds)
            row: dict[str, object] = {"payload_bytes": size, "mode": mode}
            for c in CORES:
                row[f"{c}_seal_msgs_per_s"] = round(seal[c])
                row[f"{c}_open_many_msgs_per_s"] = round(many[c])
                row[f"{c}_open_msgs_per_s"] = round(one[c])
            if "native" in CORES:
                row["seal_ratio"] = round(seal["native"] / seal["pure"], 2)
                row["open_many_ratio"] = round(many["native"] / many["pure"], 2)
                row["open_ratio"] = round(one["native"] / one["pure"], 2)
            row["overhead_bytes"] = len(pools["pure"][0]) - size
            rows.append(row)
    return rows


class _FernetLoop:
    """The peer: encrypt or decrypt 64 payloads with one shared Fernet key."""

    def __init__(self, fernet: Fernet, body: bytes, decrypt: bool) -> None:
        self.fernet, self.body, self.decrypt = fernet, body, decrypt
        self.tokens = [fernet.encrypt(body) for _ in range(BATCH)]

    def __call__(self) -> int:
        if self.decrypt:
            for t in self.tokens:
                self.fernet.decrypt(t)
        else:
            for _ in range(BATCH):
                self.fernet.encrypt(self.body)
        return BATCH


def peer(seconds: float, pool_batches: int = 100) -> list[dict[str, object]]:
    """Fernet next to sealed-batch on the fastest core, per payload size, in the same run."""
    b = _Bench()
    core = CORES[-1]
    fernet = Fernet(Fernet.generate_key())
    rows: list[dict[str, object]] = []
    for size in SIZES:
        body = os.urandom(size)
        seal = _rates(
            {
                "fernet": _FernetLoop(fernet, body, decrypt=False),
                "sealed": partial(_seal_count, b, core, "batch", body),
            },
            seconds,
        )
        pool = [e for _ in range(pool_batches) for e in b.seal(core, "batch", body)]
        opened = _rates(
            {
                "fernet": _FernetLoop(fernet, body, decrypt=True),
                "sealed": _OpenLoop(b.consumer, pool, core, True),
            },
            seconds,
        )
        rows.append(
            {
                "payload_bytes": size,
                "sealed_batch_core": core,
                "fernet_seal_msgs_per_s": round(seal["fernet"]),
                "fernet_open_msgs_per_s": round(opened["fernet"]),
                "sealed_batch_seal_msgs_per_s": round(seal["sealed"]),
                "sealed_batch_open_many_msgs_per_s": round(opened["sealed"]),
                "seal_vs_fernet": round(seal["sealed"] / seal["fernet"], 2),
                "open_vs_fernet": round(opened["sealed"] / opened["fernet"], 2),
                "fernet_overhead_bytes": len(fernet.encrypt(body)) - size,
                "sealed_batch_overhead_bytes": len(pool[0]) - size,
            }
        )
    return rows


def workload(core: str, op: str, mode: str, n: int, pool_size: int) -> None:
    """What ``--callgrind`` measures: ``n`` messages of 1 KB through one core path. The clock
    stands still: slowed down 50 times, a real one would add key refreshes to the count."""
    t0 = time.time()
    b = _Bench(clock=lambda: t0)
    body = bytes(1024)
    batches = max(1, n // BATCH)
    if op == "seal":
        b.seal(core, mode, body)  # warm: session, signer, caches
        for _ in range(batches):
            b.seal(core, mode, body)
        return
    # the same pool whatever n, so that its sealing cancels out of the difference
    pool = [e for _ in range(pool_size // BATCH + 1) for e in b.seal(core, mode, body)]
    loop = _OpenLoop(b.consumer, pool, core, op == "open_many", b.clock)
    loop()  # warm: sender, session
    for _ in range(batches):
        loop()


def instructions(script: str, args: list[str]) -> int:
    """The instructions ``valgrind --tool=callgrind`` counts for ``python script args`` (string
    hashes seeded, so that dict layouts and their counts repeat)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind not found (Debian: apt-get install valgrind)")
    cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, script]
    done = subprocess.run(  # noqa: S603 - valgrind and a benchmark script, no shell
        [*cmd, *args],
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if found is None:
        raise RuntimeError(done.stderr[-2000:])
    return int(found.group(1))


def callgrind(n1: int = 128, n2: int = 640) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for mode in MODES:
        for op in OPS:
            row: dict[str, object] = {"payload_bytes": 1024, "mode": mode, "op": op}
            for core in CORES:
                counts = [
                    instructions(__file__, ["--workload", core, op, mode, str(n), str(n2)])
                    for n in (n1, n2)
                ]
                messages = (max(1, n2 // BATCH) - max(1, n1 // BATCH)) * BATCH
                row[f"{core}_instructions_per_msg"] = round((counts[1] - counts[0]) / messages)
            if "native" in CORES:
                row["ratio"] = round(
                    int(row["pure_instructions_per_msg"])  # type: ignore[call-overload]
                    / int(row["native_instructions_per_msg"]),  # type: ignore[call-overload]
                    2,
                )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement (all cores)")
    ap.add_argument(
        "--pool",
        type=int,
        default=100,
        help="batches of 64 envelopes each opener opens before a fresh one starts (its first"
        " batch of a session goes through every Python step; default 100)",
    )
    ap.add_argument("--json", action="store_true", help="print JSON rows")
    ap.add_argument("--callgrind", action="store_true", help="instructions per message")
    ap.add_argument(
        "--workload", nargs=5, metavar=("CORE", "OP", "MODE", "N", "POOL"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.workload:
        core, op, mode, n, pool = args.workload
        workload(core, op, mode, int(n), int(pool))
        return 0
    meta = {
        "python": sys.version.split()[0],
        "cryptography": cryptography.__version__,
        "machine": platform.machine(),
        "cores": list(CORES),
    }
    if args.callgrind:
        rows = callgrind()
        if args.json:
            print(json.dumps({**meta, "callgrind": rows}, indent=2))
            return 0
        print(f"{'mode':<12} {'op':<10} " + " ".join(f"{c + ' Ir/msg':>16}" for c in CORES))
        for r in rows:
            counts = " ".join(f"{r[f'{c}_instructions_per_msg']:>16,}" for c in CORES)
            print(f"{r['mode']:<12} {r['op']:<10} {counts} {r.get('ratio', ''):>8}")
        return 0
    rows = bench(args.seconds, args.pool)
    peers = peer(args.seconds, args.pool)
    if args.json:
        print(json.dumps({**meta, "rows": rows, "peer": peers}, indent=2))
        return 0
    print(
        f"python {meta['python']}, cryptography {meta['cryptography']}; one thread; msgs per CPU s;"
        " open_many in chunks of 64, open one at a time; ratio = native / pure, same run"
    )
    head = f"{'payload':>8} {'mode':<12}"
    for c in CORES:
        head += f" {c + ' seal':>12} {c + ' many':>12} {c + ' open':>12}"
    if "native" in CORES:
        head += f" {'seal x':>7} {'many x':>7} {'open x':>7}"
    print(head + f" {'overhead':>9}")
    for r in rows:
        line = f"{r['payload_bytes']:>8} {r['mode']:<12}"
        for c in CORES:
            line += f" {r[f'{c}_seal_msgs_per_s']:>12,} {r[f'{c}_open_many_msgs_per_s']:>12,}"
            line += f" {r[f'{c}_open_msgs_per_s']:>12,}"
        if "native" in CORES:
            line += f" {r['seal_ratio']:>7} {r['open_many_ratio']:>7} {r['open_ratio']:>7}"
        print(line + f" {r['overhead_bytes']:>7} B")
    print(
        f"\npeer: shared-key Fernet against sealed-batch ({CORES[-1]} core); msgs per CPU s;"
        " x = sealed-batch / Fernet"
    )
    print(
        f"{'payload':>8} {'fernet seal':>12} {'fernet open':>12} {'sealed seal':>12}"
        f" {'sealed many':>12} {'seal x':>7} {'open x':>7} {'fernet +B':>10} {'sealed +B':>10}"
    )
    for r in peers:
        print(
            f"{r['payload_bytes']:>8} {r['fernet_seal_msgs_per_s']:>12,}"
            f" {r['fernet_open_msgs_per_s']:>12,} {r['sealed_batch_seal_msgs_per_s']:>12,}"
            f" {r['sealed_batch_open_many_msgs_per_s']:>12,} {r['seal_vs_fernet']:>7}"
            f" {r['open_vs_fernet']:>7} {r['fernet_overhead_bytes']:>10}"
            f" {r['sealed_batch_overhead_bytes']:>10}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
