"""Errors that name the thing: an unreachable KDS (its URL and why), ``kds serve`` with a bad
certificate or key (which file, why), a port in use (one line, exit 1)."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealedbus.kds import cli as kds_cli
from sealedbus.keys import keyfiles
from sealedbus.keys.identity import MemberIdentity

from ._processes import tls_files
from .test_cli import UNREACHABLE, one_line, run


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (kds_cli.URL_ENV, kds_cli.TOTP_ENV, kds_cli.CA_ENV, kds_cli.SESSION_ENV):
        monkeypatch.delenv(name, raising=False)


class Server:
    """A loopback TCP server that misbehaves in one way: ``silent`` accepts and never answers,
    ``plain`` answers anything with plain HTTP, ``tls`` only speaks TLS."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.kind = kind
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if kind == "tls":
            self.context.load_cert_chain(*tls_files(tmp_path))
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.kind == "silent":
                self.held.append(conn)  # open, never answered
                continue
            try:
                if self.kind == "plain":
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                else:
                    self.context.wrap_socket(conn, server_side=True).close()
            except (OSError, ssl.SSLError):
                pass
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    s = Server(request.param, tmp_path)
    yield s
    s.close()


def admin_key(tmp_path: Path) -> Path:
    key = tmp_path / "admin.key"
    keyfiles.write_secret(key, MemberIdentity.generate("a", os.urandom).to_bytes())
    return key


def test_unreachable_kds_names_the_url_and_connection_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = admin_key(tmp_path)
    code, _, err = run(
        capsys, "admin", "--url", UNREACHABLE, "--key", key, "--totp", "123456", "topic", "list"
    )
    assert code == 1
    line = one_line(err, "admin topic list")
    assert f"KDS at {UNREACHABLE} unreachable: connection refused" in line


@pytest.mark.parametrize(
    ("server", "scheme", "why"),
    [
        ("silent", "http", "timed out"),
        ("plain", "https", "spoke TLS to a plain-HTTP port"),
        ("tls", "http", "spoke HTTP to a TLS port"),
    ],
    indirect=["server"],
)
def test_unreachable_kds_says_why(
    server: Server, scheme: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{scheme}://127.0.0.1:{server.port}"
    key = admin_key(tmp_path)
    args: list[str | Path] = ["admin", "--url", url, "--key", key, "--totp", "123456"]
    args += ["--timeout", "0.5"]
    code, _, err = run(capsys, *args, "topic", "list")
    assert code == 1
    line = one_line(err, "admin topic list")
    assert f"KDS at {url} unreachable: {why}" in line


def test_untrusted_kds_certificate_says_to_pass_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = Server("tls", tmp_path)
    try:
        url = f"https://127.0.0.1:{server.port}"
        args: list[str | Path] = ["admin", "--url", url, "--key", admin_key(tmp_path)]
        args += ["--totp", "123456"]
        code, _, err = run(capsys, *args, "topic", "list")
    finally:
        server.close()
    assert code == 1
    line = one_line(err, "admin topic list")
    assert "TLS certificate is not trusted" in line and "--ca" in line


def serve(tmp_path: Path, *args: str | Path) -> list[str | Path]:
    return ["kds", "serve", "--data-dir", tmp_path, "--port", "1", *args]


def test_port_in_use_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: uvicorn's log and exit 3."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    try:
        code, out, err = run(
            capsys, "kds", "serve", "--data-dir", tmp_path, "--insecure-http", "--port", port
        )
    finally:
        busy.close()
    assert (code, out) == (1, "")
    line = one_line(err, "kds serve")
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in line

    cert, key = tls_files(tmp_path)
    tls: list[str | Path] = ["--tls-cert", cert, "--tls-key", key]
    for flag, value in (("--port", "0"), ("--port", "70000"), ("--host", "nowhere.invalid")):
        code, _, err = run(capsys, "kds", "serve", "--data-dir", tmp_path, *tls, flag, value)
        assert code == 2 and f"{flag} {value}" in one_line(err, "kds serve")


def certificate(
    key: ec.EllipticCurvePrivateKey, days: tuple[int, int] = (-1, 1)
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kds")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .sign(key, hashes.SHA256())
    )


def pem_key(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def test_serve_names_the_bad_tls_file_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    files = {
        "cert.pem": certificate(key).public_bytes(serialization.Encoding.PEM),
        "expired.pem": certificate(key, (-3, -1)).public_bytes(serialization.Encoding.PEM),
        "key.pem": pem_key(key),
        "other.pem": pem_key(other),
        "locked.pem": pem_key(key, b"pass phrase"),
        "junk.pem": b"not PEM at all\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    p = tmp_path.joinpath
    cases = [
        (p("missing.pem"), p("key.pem"), "--tls-cert", "No such file"),
        (p("cert.pem"), p("missing.pem"), "--tls-key", "No such file"),
        (p("junk.pem"), p("key.pem"), "--tls-cert", "not a PEM certificate"),
        (p("key.pem"), p("key.pem"), "--tls-cert", "not a PEM certificate"),  # swapped
        (p("cert.pem"), p("junk.pem"), "--tls-key", "not a PEM private key"),
        (p("cert.pem"), p("cert.pem"), "--tls-key", "not a PEM private key"),
        (p("cert.pem"), p("locked.pem"), "--tls-key", "encrypted with a passphrase"),
        (p("cert.pem"), p("other.pem"), "--tls-key", "does not belong to the certificate"),
        (p("expired.pem"), p("key.pem"), "--tls-cert", "expired on"),
    ]
    for cert_file, key_file, flag, why in cases:
        code, out, err = run(
            capsys, *serve(tmp_path, "--tls-cert", cert_file, "--tls-key", key_file)
        )
        assert (code, out) == (2, ""), err
        line = one_line(err, "kds serve")
        named = cert_file if flag == "--tls-cert" else key_file
        assert f"{flag} {named}" in line and why in line, line
    code, _, err = run(
        capsys,
        *serve(tmp_path, "--tls-cert", p("cert.pem"), "--tls-key", p("key.pem")),
        "--tls-client-ca",
        p("junk.pem"),
    )
    assert code == 2 and "--tls-client-ca" in one_line(err, "kds serve")
