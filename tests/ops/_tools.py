"""The operations tools (helm, promtool, prometheus, buildah, podman, mmdebstrap), as
``scripts/ops/tools`` installs them. Without one a test skips, except under CI=true, where a
missing tool fails the run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sealedbus-kds"
HELM_TESTS = ROOT / "helm" / "tests"
CACHE = Path(os.environ.get("SEALEDBUS_CACHE", Path.home() / ".cache" / "sealedbus"))


def _missing(what: str) -> None:
    message = f"{what} not found: run scripts/ops/tools"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> str:
    """The path of ``name``; for helm also the cache scripts/ops/tools builds it into."""
    found = shutil.which(name)
    if found is None and name == "helm":
        built = sorted((CACHE / "tools").glob("helm-*/helm"))
        found = str(built[-1]) if built else None
    if found is None:
        _missing(name)
    assert found is not None
    return found


def run(
    *args: str | Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - fixed tool paths and arguments
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result
