"""Throughput benchmark, plaintext against sealed, on the in-memory bus, RabbitMQ and Kafka.

    .venv/bin/python benchmarks/run.py            # full run (several minutes), writes results/
    .venv/bin/python benchmarks/run.py --quick    # smoke run, well under a minute, prints only

Only a full run (every transport and size, not ``--quick``) replaces ``results/`` unless ``--out``
says where to write: ``results/latest.json`` stays the full run of the code it describes.

Brokers come from ``--amqp-url`` / ``--kafka-bootstrap`` or ``SEALEDBUS_AMQP_URL`` /
``SEALEDBUS_KAFKA_BOOTSTRAP``; when neither is given, ``--start-brokers`` starts native ones with
``scripts/services/start-*`` (provision them once with ``scripts/services/provision``). The same
runner is ``sealedbus bench``. Method and settings: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from sealedbus.ops.bench import add_arguments

TRANSPORTS = {"memory", "rabbitmq", "kafka"}
SIZES = {"128", "1024", "16384"}

HERE = Path(__file__).resolve().parent
SERVICES = HERE.parent / "scripts" / "services"
sys.path.insert(0, str(HERE))

from throughput import runner  # noqa: E402 - needs the path above


def start_broker(name: str) -> str:
    """Start a native broker with the repository's script; returns its URL (the last line)."""
    proc = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [sys.executable, str(SERVICES / f"start-{name}"), "start"],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"start-{name} failed:\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1].strip()


def is_full(args: argparse.Namespace) -> bool:
    """Every transport and size, not a smoke run: the only run that replaces results/."""
    sizes = set(args.sizes.split(",")) if args.sizes else SIZES
    return not args.quick and set(args.transports.split(",")) == TRANSPORTS and sizes == SIZES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument(
        "--start-brokers",
        action="store_true",
        help="start native RabbitMQ/Kafka (scripts/services) when not given",
    )
    args = parser.parse_args()
    wanted = args.transports.split(",")
    if args.out is None and is_full(args):
        args.out = HERE / "results"
    if args.start_brokers:
        if "rabbitmq" in wanted and not args.amqp_url:
            args.amqp_url = start_broker("rabbitmq")
        if "kafka" in wanted and not args.kafka_bootstrap:
            args.kafka_bootstrap = start_broker("kafka")
    return runner.main_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
