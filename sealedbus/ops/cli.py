"""The ``sealedbus`` command. Each subcommand registers itself with ``register(subparsers)`` and
sets ``func(args) -> int``; heavy imports happen inside ``func`` so ``--help`` stays instant."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sealedbus import __version__
from sealedbus.core import backend
from sealedbus.ops import demo, inspect_cmd

_PLUGINS = ("sealedbus.kds.cli", "sealedbus.keys.cli", "sealedbus.ops.bench")
_EXTRAS = {  # optional dependency -> the extra that installs it
    "fastapi": "kds",
    "uvicorn": "kds",
    "sqlalchemy": "kds",
    "psycopg": "kds",
    "httpx": "kds",
    "pika": "rabbitmq",
    "kafka": "kafka",
    "crc32c": "kafka",
    "matplotlib": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealedbus", description="End-to-end sealed messages on RabbitMQ and Kafka."
    )
    parser.add_argument(
        "--version", action="version", version=f"sealedbus {__version__}, {backend.describe()}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(sub)
    inspect_cmd.register(sub)
    for name in _PLUGINS:  # each imports its optional dependencies only when run
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"sealedbus {args.command}: needs {exc.name}, from the {extra!r} extra "
            f"(in a checkout: .venv/bin/pip install -e '.[{extra}]')",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
