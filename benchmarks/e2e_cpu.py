"""Where the time of an end-to-end phase goes: CPU per message of the producer, the consumer and
the broker, and how much of the machine stayed idle, mode by mode on one real broker.

    .venv/bin/python benchmarks/e2e_cpu.py [--transport kafka] [--size 1024] [--rounds 6]

One producer and one consumer process (``run.py``'s workers) run the end-to-end phase of every
mode in turn, the order reversed every other round, after a warm-up of each mode; unlike
``run.py`` there are no produce-only, consume-only or latency phases in between. The broker is
the process listening on the broker's port on this machine (found through ``/proc``; its CPU is
not reported when it runs elsewhere). Idle is the idle, iowait and steal time of all cores over
the phase. Ratios are taken within a round, then the median; figures print, nothing is written.
Brokers: ``--amqp-url`` / ``--kafka-bootstrap`` or ``SEALEDBUS_AMQP_URL`` /
``SEALEDBUS_KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import runner  # noqa: E402 - needs the path above
from throughput.endpoints import MODES, Setup  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
_LISTEN = "0A"  # TCP state in /proc/net/tcp


def listening_pid(port: int) -> int | None:
    """The process of this machine that listens on TCP ``port``, if any (and visible to us)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not inodes:
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:  # gone, or not ours to read
            continue
    return None


def process_cpu(pid: int) -> float:
    """User and system CPU seconds of a process, its threads (living or ended) included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_idle() -> float:
    """Idle, iowait and steal seconds of all cores since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[3]) + int(fields[4]) + int(fields[7])) / TICK


def _median(values: list[float], digits: int = 1) -> float:
    return round(statistics.median(values), digits)


def probe(
    transport: str, url: str, size: int, rounds: int, n: int, verbose: bool = True
) -> dict[str, Any]:
    first = url.split(",", maxsplit=1)[0]  # of a bootstrap list, the first server
    port = urlsplit(first if "://" in first else f"kafka://{first}").port
    broker = listening_pid(port) if port else None
    plan = runner.Plan.make(False, [transport], 1, [size])
    run_id = secrets.token_hex(4)
    amqp, kafka = (url, "") if transport == "rabbitmq" else ("", url)
    runner._prepare(plan, run_id, amqp, kafka)
    setup = Setup(transport, run_id, os.urandom(32), time.time(), amqp, kafka)
    ctx = multiprocessing.get_context("spawn")
    producer = runner._Worker(ctx, setup)
    consumer = runner._Worker(ctx, setup)
    timeout = max(60.0, n / 500)
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        for mode in MODES:  # warm-up: connections, sessions, the broker's JIT
            warm = max(1, n // 10)
            producer.result(producer.request("produce", mode=mode, size=size, n=warm, rate=0), 120)
            consumer.result(consumer.request("consume", mode=mode, n=warm, timeout=60), 120)
        for r in range(rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                pids = [producer.process.pid, consumer.process.pid, broker]
                before = [process_cpu(pid) if pid else 0.0 for pid in pids] + [machine_idle()]
                p, c = runner.end_to_end(producer, consumer, mode, size, n, timeout)
                after = [process_cpu(pid) if pid else 0.0 for pid in pids] + [machine_idle()]
                wall = (c["end_ns"] - p["start_ns"]) / 1e9
                used = [(b - a) / n * 1e6 for a, b in zip(before, after, strict=True)]
                row = {
                    "msgs_per_s": n / wall,
                    "producer_done_s": (p["end_ns"] - p["start_ns"]) / 1e9,
                    "consumer_done_s": wall,
                    "producer_cpu_us": used[0],
                    "consumer_cpu_us": used[1],
                    "broker_cpu_us": used[2],
                    "idle_pct": 100 * (after[3] - before[3]) / ((os.cpu_count() or 1) * wall),
                }
                rows[mode].append(row)
                if verbose:
                    print(
                        f"round {r + 1} {mode:<14} {row['msgs_per_s']:8,.0f} msgs/s, producer "
                        f"done {row['producer_done_s']:.2f} s, consumer {wall:.2f} s; CPU us/msg "
                        f"producer {used[0]:.1f}, consumer {used[1]:.1f}, broker "
                        f"{used[2]:.1f}; idle {row['idle_pct']:.0f}%",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        producer.stop()
        consumer.stop()
        runner._cleanup(plan, run_id, amqp, kafka)
    plain = rows["plain"]
    summary = []
    for mode, got in rows.items():
        ratios = [a["msgs_per_s"] / b["msgs_per_s"] for a, b in zip(got, plain, strict=True)]
        summary.append(
            {
                "mode": mode,
                "msgs_per_s": _median([g["msgs_per_s"] for g in got], 0),
                "ratio_to_plain": _median(ratios, 2),
                "ratio_min": round(min(ratios), 2),
                "ratio_max": round(max(ratios), 2),
                **{
                    k: _median([g[k] for g in got])
                    for k in ("producer_cpu_us", "consumer_cpu_us", "idle_pct")
                },
                "broker_cpu_us": _median([g["broker_cpu_us"] for g in got]) if broker else None,
            }
        )
    return {"transport": transport, "payload_bytes": size, "rounds": rounds, "rows": summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--transport", choices=("kafka", "rabbitmq"), default="kafka")
    ap.add_argument("--size", type=int, default=1024, help="payload bytes (default 1024)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds (default 6)")
    ap.add_argument("--messages", type=int, default=20000, help="per phase (default 20000)")
    ap.add_argument("--amqp-url", default=os.environ.get("SEALEDBUS_AMQP_URL", ""))
    ap.add_argument("--kafka-bootstrap", default=os.environ.get("SEALEDBUS_KAFKA_BOOTSTRAP", ""))
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    url = args.amqp_url if args.transport == "rabbitmq" else args.kafka_bootstrap
    if not url:
        raise SystemExit(f"{args.transport}: give its address (--amqp-url / --kafka-bootstrap)")
    result = probe(args.transport, url, args.size, args.rounds, args.messages, not args.json)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"{args.transport}, {args.size} B, median of {args.rounds} rounds (CPU in us per message)"
    )
    print(
        f"{'mode':<15} {'msgs/s':>8} {'ratio (min-max)':>17} {'producer':>9} {'consumer':>9}"
        f" {'broker':>7} {'idle':>5}"
    )
    for r in result["rows"]:
        broker = "n/a" if r["broker_cpu_us"] is None else f"{r['broker_cpu_us']:.1f}"
        print(
            f"{r['mode']:<15} {r['msgs_per_s']:>8,.0f} {r['ratio_to_plain']:>6.2f} "
            f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) {r['producer_cpu_us']:>9.1f} "
            f"{r['consumer_cpu_us']:>9.1f} {broker:>7} {r['idle_pct']:>4.0f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
