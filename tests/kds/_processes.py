"""Real KDS processes (``sealedbus kds serve``) on loopback, and the CLI around them."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from base64 import b32decode
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealedbus.kds import auth
from sealedbus.keys.client import tls_context

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-m", "sealedbus.ops.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"sealedbus {args} failed: {result.stdout}{result.stderr}")
    return result


def init(data: Path, db: str | None = None) -> str:
    """``sealedbus kds init``; returns the root fingerprint it prints."""
    out = cli("kds", "init", "--data-dir", data, *(["--db", db] if db else [])).stdout
    match = re.search(r"root key fingerprint: (sha256:[0-9a-f]{64})", out)
    assert match, out
    return match.group(1)


_last_step: dict[Path, int] = {}


def totp_code(data: Path) -> str:
    """A code the KDS has not accepted yet: it takes each time step once, with one step of drift
    either way, so this hands out the current and next step, then waits for more. Never the
    previous step: the CLI process that sends it starts a few seconds later on a loaded machine,
    and a step boundary in between would make that code two steps old (bad_totp)."""
    uri = (data / "admin.totp").read_text().strip()
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    secret_bytes = b32decode(secret + "=" * (-len(secret) % 8))
    step = max(_last_step.get(data, 0) + 1, int(time.time()) // auth.TOTP_STEP)
    while step > int(time.time()) // auth.TOTP_STEP + 1:
        time.sleep(0.2)
    _last_step[data] = step
    return auth.totp(secret_bytes).generate(step * auth.TOTP_STEP).decode()


def tls_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealedbus test KDS")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class KdsProcess:
    def __init__(
        self,
        data: Path,
        *args: str | Path,
        tls: tuple[Path, Path] | None = None,
        db: str | None = None,
    ) -> None:
        self.port = free_port()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.ca = str(tls[0]) if tls else ""
        self.verify: Any = tls_context(self.ca) if tls else True
        command = [
            sys.executable,
            "-m",
            "sealedbus.ops.cli",
            "kds",
            "serve",
            "--data-dir",
            str(data),
            "--port",
            str(self.port),
            *map(str, args),
        ]
        if db:
            command += ["--db", db]
        command += (
            ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else ["--insecure-http"]
        )
        self.log = (data / f"kds-{self.port}.log").open("w")
        self.process = subprocess.Popen(  # noqa: S603 - our own CLI
            command,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"KDS exited: {Path(self.log.name).read_text()}")
            try:
                if (
                    httpx.get(self.url + "/readyz", verify=self.verify, timeout=1).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"KDS not ready: {Path(self.log.name).read_text()}")

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/healthz", verify=self.verify, timeout=5).json())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.log.closed:
            self.log.close()
        return int(self.process.returncode)


def member_process(*args: str | Path) -> dict[str, Any]:
    result = subprocess.run(  # noqa: S603 - our own test helper
        [sys.executable, "-m", "tests.kds._member", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))
