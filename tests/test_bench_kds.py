"""``python benchmarks/bench_kds.py`` runs as its docstring says, from any directory (it failed
with ``ModuleNotFoundError: tests``), and a tiny run prints every figure without waiting for TOTP
codes. Nothing is timed or compared: the point is that it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kds.py"


def bench(tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SEALEDBUS_POSTGRES_URL"}
    return subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(SCRIPT), *args],
        cwd=tmp_path,  # not the checkout: the script must find its imports itself
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_runs_as_documented(tmp_path: Path) -> None:
    result = bench(tmp_path, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--postgres" in result.stdout


@pytest.mark.slow
def test_a_tiny_run_prints_every_figure(tmp_path: Path) -> None:
    """One TOTP code for the setup: without a session, this waited 30 s per few admin calls."""
    result = bench(
        tmp_path, "--workers", "2", "--fetches", "20", "--topics", "20", "--postgres", "",
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for figure in ("grants over HTTP", "key fetch, cold cache", "grants in the service"):
        assert figure in result.stdout
