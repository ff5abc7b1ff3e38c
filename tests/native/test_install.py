"""Installing sealedbus: without cargo it still installs and runs on the pure core; the abi3
wheel built with cargo installs into a clean virtual environment and runs the demo natively.

Slow (virtual environments, pip, a cargo build): marked ``slow`` and bounded in time. The
dependencies come from PyPI (pip's cache makes reruns quick)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str | Path], timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(  # noqa: S603 - our own venvs' programs, no shell
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"{cmd}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _source(tmp: Path) -> Path:
    """A clean copy of the tracked sources (no build products, no cargo target)."""
    files = subprocess.run(
        ["git", "ls-files", "-z"],  # noqa: S607 - git from PATH, as the developer runs it
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    src = tmp / "src"
    for name in filter(None, files):
        path = ROOT / name.decode()
        if path.is_file():
            (src / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name.decode())
    return src


def _venv(path: Path) -> Path:
    _run([sys.executable, "-m", "venv", path], timeout=120)
    return path / "bin"


def test_install_without_cargo_runs_on_the_pure_core(tmp_path: Path) -> None:
    src = _source(tmp_path)
    path = [
        d
        for d in os.environ["PATH"].split(os.pathsep)
        if d and not (Path(d) / "cargo").exists() and not (Path(d) / "rustc").exists()
    ]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    assert shutil.which("cargo", path=env["PATH"]) is None
    bin_ = _venv(tmp_path / "venv")
    _run([bin_ / "python", "-m", "pip", "install", "--quiet", src], timeout=600, env=env)
    version = _run([bin_ / "sealedbus", "--version"], timeout=60, env=env)
    assert "pure-Python core (native core not built)" in version
    assert "sealed" in _run([bin_ / "sealedbus", "demo", "--messages", "20"], 300, env).lower()


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo")
def test_abi3_wheel_installs_into_a_clean_venv_and_runs_the_demo(tmp_path: Path) -> None:
    src = _source(tmp_path)
    # reuse the compiled dependencies of the development build: a cold build takes minutes
    env = {**os.environ, "CARGO_TARGET_DIR": str(ROOT / "sealedbus/_native/target")}
    builder = _venv(tmp_path / "build")
    dist = tmp_path / "dist"
    _run(
        [builder / "python", "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, src],
        timeout=900,
        env=env,
    )
    (wheel,) = dist.glob("*.whl")
    assert "-cp311-abi3-" in wheel.name, wheel.name
    bin_ = _venv(tmp_path / "venv")
    _run([bin_ / "python", "-m", "pip", "install", "--quiet", wheel], timeout=600)
    listing = _run([bin_ / "python", "-m", "zipfile", "-l", wheel], timeout=60)
    assert ".rs" not in listing and "Cargo.toml" not in listing  # sources stay out
    assert "native core (Rust)" in _run([bin_ / "sealedbus", "--version"], timeout=60)
    assert "sealed" in _run([bin_ / "sealedbus", "demo", "--messages", "20"], timeout=300).lower()
