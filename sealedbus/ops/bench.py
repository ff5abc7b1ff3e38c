"""``sealedbus bench``: the end-to-end throughput benchmark (plaintext against sealed) on the
in-memory bus, RabbitMQ and Kafka. The runner lives in ``benchmarks/throughput`` of a source
checkout; this command finds it there (it is not part of the installed package)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="throughput benchmark: plaintext vs sealed on memory, RabbitMQ, Kafka",
        description="The end-to-end throughput benchmark (plaintext against sealed) on the "
        "in-memory bus, RabbitMQ and Kafka. It runs from a source checkout: the runner lives in "
        "benchmarks/throughput, which is not part of the installed package.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_bench)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options, shared by ``sealedbus bench`` and ``benchmarks/run.py``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 300 messages per phase, one round (well under a minute; default: off)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="N",
        help="rounds per configuration, each in fresh processes; the median is reported "
        "(default: 5, or 1 with --quick; benchmarks/results/ holds a full run)",
    )
    parser.add_argument(
        "--transports",
        default="memory,rabbitmq,kafka",
        metavar="LIST",
        help="comma-separated subset of memory,rabbitmq,kafka (default: all three)",
    )
    parser.add_argument(
        "--sizes",
        default="",
        metavar="LIST",
        help="payload sizes in bytes, among 128,1024,16384 (default: all three)",
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("SEALEDBUS_AMQP_URL", ""),
        metavar="URL",
        help="RabbitMQ URL (default: $SEALEDBUS_AMQP_URL)",
    )
    parser.add_argument(
        "--kafka-bootstrap",
        default=os.environ.get("SEALEDBUS_KAFKA_BOOTSTRAP", ""),
        metavar="HOST:PORT",
        help="Kafka bootstrap server (default: $SEALEDBUS_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for latest.json, latest.md and the PNG plots (default: print only;"
        " benchmarks/run.py writes benchmarks/results/ after a full run)",
    )
    parser.add_argument(
        "--open-threads",
        type=int,
        default=2,
        metavar="N",
        help="opener threads for per-message consumers (default: 2)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: a bar on stderr)"
    )


def _bench(args: argparse.Namespace) -> int:
    if not (_BENCHMARKS / "throughput" / "runner.py").is_file():
        print(
            "sealedbus bench runs from a source checkout (benchmarks/throughput is missing)",
            file=sys.stderr,
        )
        return 2
    if str(_BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(_BENCHMARKS))
    runner = importlib.import_module("throughput.runner")
    return int(runner.main_from_args(args))
