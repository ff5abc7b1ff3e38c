"""The throughput benchmark's quick mode runs on all three transports and writes its results.

Nothing here is timed or compared: the figures of a quick run are noise; the point is that the
runner works (``sealedbus bench`` included) and its output has the promised shape."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sealedbus.ops.bench import add_arguments
from sealedbus.ops.cli import main

pytestmark = pytest.mark.slow

MODES_IN_ORDER = ("plain", "sealed-message", "sealed-batch", "fernet")
MODES = set(MODES_IN_ORDER)
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_quick_run_writes_rows_for_every_transport_size_and_mode(
    amqp_url: str, kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "bench",
            "--quick",
            "--no-progress",
            "--amqp-url",
            amqp_url,
            "--kafka-bootstrap",
            kafka_bootstrap,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "latest.json").read_text())
    header, rows = result["header"], result["rows"]
    assert header["mode"] == "quick" and header["machine"]["cores"] >= 1
    assert {"sealedbus", "cryptography", "pika", "kafka-python"} <= set(header["versions"])

    keys = {(r["transport"], r["payload_bytes"], r["mode"]) for r in rows}
    assert keys == {
        (t, s, m)
        for t in ("memory", "rabbitmq", "kafka")
        for s in (128, 1024, 16384)
        for m in MODES
    }
    for r in rows:
        assert r["msgs_per_s"] > 0 and r["mb_per_s"] > 0
        assert 0 <= r["p50_ms"] <= r["p99_ms"]
        assert r["producer_cpu_us_per_msg"] > 0 and r["consumer_cpu_us_per_msg"] > 0
        if r["mode"] == "plain":
            assert r["ratio_to_plain"] == 1.0 and r["overhead_bytes"] == 0
        else:
            assert r["ratio_to_plain"] > 0 and r["overhead_bytes"] > 0
        assert r["ratio_min"] <= r["ratio_to_plain"] <= r["ratio_max"]

    table = (tmp_path / "latest.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # header row plus one per result row
    assert "| ratio (min-max) |" in table  # the spread of the per-round ratios, not only the median
    for plot in ("throughput.png", "latency.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sealed-batch" in capsys.readouterr().out


def test_adapter_benchmark_measures_every_adapter_at_every_level() -> None:
    """``benchmarks/adapters.py`` on a few messages: each adapter path yields a figure per level,
    and the adapter (which wraps the core) never costs nothing next to the bare client."""
    rows = _script_json("adapters.py", "--messages", "128", "--rounds", "1")["rows"]
    assert [r["path"] for r in rows] == [
        "kafka-produce",
        "rabbitmq-publish",
        "kafka-consume",
        "rabbitmq-consume",
    ]
    for r in rows:
        assert r["adapter_us_per_msg"] > r["client_us_per_msg"] > 0


def test_only_a_full_benchmark_run_replaces_the_published_results() -> None:
    """A partial or smoke run of benchmarks/run.py must not overwrite results/latest.json (the
    full run of the code it describes) unless --out says so."""
    run = _benchmark("run")

    def args(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return parser.parse_args(list(argv))

    assert run.is_full(args())
    assert run.is_full(args("--rounds", "3", "--sizes", "16384,128,1024"))
    assert not run.is_full(args("--quick"))
    assert not run.is_full(args("--transports", "kafka"))
    assert not run.is_full(args("--sizes", "1024"))


def test_end_to_end_cpu_probe_splits_the_cpu_between_producer_consumer_and_broker(
    kafka_bootstrap: str,
) -> None:
    """``benchmarks/e2e_cpu.py`` on a few messages: a row per mode, with the producer's and the
    consumer's CPU, and the broker's when it runs on this machine."""
    result = _script_json(
        "e2e_cpu.py", "--messages", "300", "--rounds", "2", kafka_bootstrap=kafka_bootstrap
    )
    local_broker = _benchmark("e2e_cpu").listening_pid(int(kafka_bootstrap.rsplit(":", 1)[1]))
    assert result["transport"] == "kafka" and result["rounds"] == 2
    assert [r["mode"] for r in result["rows"]] == list(MODES_IN_ORDER)
    for r in result["rows"]:
        assert r["msgs_per_s"] > 0 and r["ratio_min"] <= r["ratio_to_plain"] <= r["ratio_max"]
        assert r["producer_cpu_us"] >= 0 and r["consumer_cpu_us"] >= 0
        assert 0 <= r["idle_pct"] <= 100
        assert (r["broker_cpu_us"] is not None) == (local_broker is not None)


def test_the_cpu_probe_finds_the_process_listening_on_a_port() -> None:
    """How ``e2e_cpu.py`` finds a local broker: the listening socket's owner, through /proc."""
    e2e_cpu = _benchmark("e2e_cpu")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        assert e2e_cpu.listening_pid(port) is None  # bound, not listening yet
        listener.listen()
        assert e2e_cpu.listening_pid(port) == os.getpid()
    assert e2e_cpu.process_cpu(os.getpid()) > 0


def _benchmark(name: str) -> Any:
    """A script of benchmarks/, imported as a module (its folder is its import root)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _script_json(script: str, *args: str, kafka_bootstrap: str = "") -> Any:
    """What a script of benchmarks/ prints with ``--json``."""
    env = {**os.environ, "SEALEDBUS_KAFKA_BOOTSTRAP": kafka_bootstrap} if kafka_bootstrap else None
    done = subprocess.run(  # noqa: S603 - this interpreter and the repository's own script
        [sys.executable, str(BENCHMARKS / script), *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=env,
    )
    return json.loads(done.stdout)
