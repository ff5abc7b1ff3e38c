"""The openssl recipe in docs/kds.md, run exactly as written; a real ``sealedbus kds serve``
serves with what it makes, and clients given its CA reach it by IP address and by DNS name."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ._processes import ROOT, cli, free_port, init, totp_code

MARKER = "<!-- tests/kds/test_tls_recipe.py runs the next block exactly as written -->"


def recipe() -> str:
    text = (ROOT / "docs" / "kds.md").read_text()
    match = re.search(re.escape(MARKER) + r"\n```sh\n(.*?)\n```", text, re.S)
    assert match, "the TLS recipe block is missing from docs/kds.md"
    return match.group(1) + "\n"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_documented_tls_recipe_serves_the_kds(tmp_path: Path) -> None:
    script = recipe()
    assert "dns=kds.example.internal ip=127.0.0.1" in script  # what the checks below rely on
    made = subprocess.run(  # noqa: S603 - the documented recipe, in a scratch directory
        ["bash", "-euo", "pipefail", "-c", script],  # noqa: S607 - bash from PATH
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    tls = tmp_path / "tls"
    for secret in ("ca.key", "tls.key"):
        assert (tls / secret).stat().st_mode & 0o777 == 0o600

    data = tmp_path / "kds"
    fingerprint = init(data)
    port = free_port()
    log = (tmp_path / "kds.log").open("w")
    command = [sys.executable, "-m", "sealedbus.ops.cli", "kds", "serve", "--data-dir", str(data)]
    command += ["--port", str(port), "--tls-cert", str(tls / "tls.crt")]
    command += ["--tls-key", str(tls / "tls.key")]
    server = subprocess.Popen(  # noqa: S603 - our own CLI
        command,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "kds.log").read_text()
            try:
                if httpx.get(url + "/readyz", verify=trusted, timeout=1).is_success:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (tmp_path / "kds.log").read_text()
                time.sleep(0.2)

        # by DNS name: the certificate names kds.example.internal (which resolves nowhere here)
        context = trusted
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="kds.example.internal") as wrapped,
        ):
            assert wrapped.version()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            context.wrap_socket(raw, server_hostname="elsewhere.example.internal")

        # the CLI with the CA from the environment, as the docs say
        env_ca = {**os.environ, "SEALEDBUS_KDS_CA": str(tls / "ca.pem")}
        admin: list[str | Path] = ["admin", "--url", url, "--key", data / "admin.key"]
        admin += ["--root-fingerprint", fingerprint, "--totp", totp_code(data)]
        listed = subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "sealedbus.ops.cli", *map(str, admin), "topic", "list"],
            cwd=ROOT,
            env=env_ca,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (listed.returncode, listed.stdout, listed.stderr) == (0, "[]\n", "")

        # the mistakes, named: no CA, and plain HTTP to the TLS port
        untrusted = cli(*admin[:-2], "--totp", "123456", "topic", "list", check=False)
        assert untrusted.returncode == 1
        assert "TLS certificate is not trusted" in untrusted.stderr
        plain = cli(
            "admin", "--url", f"http://127.0.0.1:{port}", "--key", data / "admin.key",
            "--totp", "123456", "topic", "list", check=False,
        )  # fmt: skip
        assert plain.returncode == 1
        assert "spoke HTTP to a TLS port" in plain.stderr, plain.stderr
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()
