"""The KDS as it runs: ``sealedbus kds init`` and ``serve`` over TLS, the admin and enroll
commands, and separate producer and consumer processes sealing and opening across rotations."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ._processes import (
    ROOT,
    KdsProcess,
    cli,
    free_port,
    init,
    member_process,
    tls_files,
    totp_code,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, KdsProcess, str]]:
    data = tmp_path / "kds"
    fingerprint = init(data)
    for name in ("root.key", "master.keys", "admin.key", "admin.totp"):
        assert (data / name).stat().st_mode & 0o777 == 0o600
    kds = KdsProcess(data, "--scheduler-interval", "0.2", "--lease", "2", tls=tls_files(tmp_path))
    yield data, kds, fingerprint
    assert kds.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    assert "Application shutdown complete" in Path(kds.log.name).read_text()


def admin(data: Path, kds: KdsProcess, *args: str | Path) -> str:
    return cli(
        "admin",
        "--url",
        kds.url,
        "--ca",
        kds.ca,
        "--key",
        data / "admin.key",
        "--totp",
        totp_code(data),
        *args,
    ).stdout


def test_producer_and_consumer_processes_round_trip_across_rotations(
    served: tuple[Path, KdsProcess, str], tmp_path: Path
) -> None:
    data, kds, fingerprint = served
    admin(
        data,
        kds,
        "topic",
        "create",
        "orders",
        "--producers",
        "p",
        "--consumers",
        "c",
        "--rotation",
        "2",
        "--retention",
        "120",
    )
    keys = {}
    for name in ("p", "c"):
        token = tmp_path / f"{name}.token"
        out = admin(data, kds, "token", name, "--out", token)
        assert token.read_text().strip() not in out  # the secret goes to the file only
        keys[name] = tmp_path / f"{name}.key"
        enrolled = cli(
            "enroll",
            "--url",
            kds.url,
            "--ca",
            kds.ca,
            "--name",
            name,
            "--token-file",
            token,
            "--key-out",
            keys[name],
            "--root-fingerprint",
            fingerprint,
        ).stdout
        assert f"enrolled {name}" in enrolled
        assert keys[name].stat().st_mode & 0o777 == 0o600
    common = (kds.url, kds.ca)
    envelopes = tmp_path / "envelopes"
    produced = member_process("produce", *common, keys["p"], fingerprint, "orders", envelopes, "5")
    consumed = member_process("consume", *common, keys["c"], fingerprint, "orders", envelopes)
    assert produced["failures"] == 0 and produced["sealed"] > 100
    assert consumed["failures"] == [] and consumed["opened"] == produced["sealed"]
    assert len(consumed["epochs"]) >= 3  # rotations happened while producing
    assert '"ok": true' in admin(data, kds, "audit")  # (each admin command takes a new code)
    wrong = cli(
        "admin",
        "--url",
        kds.url,
        "--ca",
        kds.ca,
        "--key",
        data / "admin.key",
        "--totp",
        "000000",
        "topic",
        "list",
        check=False,
    )
    assert wrong.returncode == 1 and "bad_totp" in wrong.stderr
    metrics = httpx.get(kds.url + "/metrics", verify=kds.verify).text
    assert "sealedbus_kds_grants_total" in metrics
    assert kds.health()["leader"] is True


def test_serve_requires_tls_or_an_explicit_insecure_flag(tmp_path: Path) -> None:
    data = tmp_path / "kds"
    init(data)
    refused = cli("kds", "serve", "--data-dir", data, check=False)
    assert refused.returncode == 2 and "--tls-cert" in refused.stderr
    public = cli(
        "kds",
        "serve",
        "--data-dir",
        data,
        "--insecure-http",
        "--host",
        "0.0.0.0",  # noqa: S104 - checking it is refused
        check=False,
    )
    assert public.returncode == 2 and "loopback" in public.stderr
    again = cli("kds", "init", "--data-dir", data, check=False)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "sealedbus.ops.cli",
            "kds",
            "serve",
            "--data-dir",
            str(data),
            "--insecure-http",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stderr is not None
        assert "INSECURE" in process.stderr.readline() + process.stderr.readline()
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stderr is not None:
            process.stderr.close()
