"""Scripting ``sealedbus admin``: codes from a TOTP file, one code for a whole session, arguments
checked before a code is spent, configuration from the environment as the examples use it."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from sealedbus.kds import auth, cli_admin
from sealedbus.kds import cli as kds_cli
from sealedbus.kds.store import admin_totp
from sealedbus.keys import keyfiles
from sealedbus.keys.client import KeyServiceClient, check_fingerprint
from sealedbus.keys.identity import MemberIdentity

from . import test_cli
from ._harness import Kds
from .test_cli import UNREACHABLE, one_line, run

served = test_cli.served  # the in-process KDS behind the CLI's HTTP client (a fixture)

ENVIRONMENT = (
    kds_cli.DB_ENV,
    kds_cli.URL_ENV,
    kds_cli.FINGERPRINT_ENV,
    kds_cli.TOTP_ENV,
    kds_cli.TOTP_FILE_ENV,
    kds_cli.SESSION_ENV,
    kds_cli.CA_ENV,
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def last_totp_step(kds: Kds) -> int | None:
    with kds.store.read() as conn:
        row = conn.execute(select(admin_totp.c.last_step)).first()
    return None if row is None else int(row.last_step)


def admin(kds: Kds, key: Path, *more: str | Path) -> list[str | Path]:
    return ["admin", "--url", "http://kds.test", "--key", key, *more]


def totp_file(kds: Kds, tmp_path: Path) -> Path:
    path = tmp_path / "admin.totp"
    keyfiles.write_secret(path, auth.totp_uri(kds.totp_secret, "root-admin").encode() + b"\n")
    kds.service.totp_clock = time.time  # the CLI computes codes from the real time
    return path


def test_totp_file_runs_three_commands_without_waiting(
    kds: Kds,
    served: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: every command needed a fresh code typed in, or Python copied from kds_dev.sh."""
    seed = totp_file(kds, tmp_path)

    def no_waiting(seconds: float) -> None:
        raise AssertionError("waited for a new TOTP step")

    monkeypatch.setattr(time, "sleep", no_waiting)
    for topic in ("a", "b", "c"):  # previous, current and next step: no wait for a new one
        code, out, err = run(
            capsys, *admin(kds, served, "--totp-file", seed), "topic", "create", topic
        )
        assert code == 0, err
        assert json.loads(out)["name"] == topic
    assert [t.name for t in kds.service.topics()] == ["a", "b", "c"]


def test_totp_file_that_holds_no_secret_is_refused(
    kds: Kds, served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.totp"
    keyfiles.write_secret(wrong, b"otpauth://totp/x?issuer=y\n")
    code, _, err = run(capsys, *admin(kds, served, "--totp-file", wrong), "topic", "list")
    assert code == 1 and "holds no TOTP secret" in one_line(err, "admin topic list")


def test_one_code_for_a_scripted_setup_through_a_session(
    kds: Kds, served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = tmp_path / "admin.session"
    code, out, err = run(
        capsys, *admin(kds, served, "--totp", kds.totp()), "session", "open", "--out", session
    )
    assert code == 0, err
    assert "opened admin session" in out and str(session) in out
    assert session.stat().st_mode & 0o777 == 0o600
    token = session.read_text().split()[1]
    assert token not in out + err
    step = last_totp_step(kds)

    with_session = admin(kds, served, "--session", session)
    code, out, err = run(capsys, *with_session, "topic", "create", "t", "--producers", "p")
    assert code == 0, err
    code, out, err = run(capsys, *with_session, "rotate", "t")
    assert code == 0, err
    rotated = json.loads(out)
    assert rotated["epoch"] == 1
    assert rotated["producers_switch_by"] > rotated["not_before"]  # ISO 8601 UTC
    assert "every 10 s" in rotated["note"]
    code, out, err = run(capsys, *with_session, "epochs", "t")
    assert code == 0, err
    for epoch in json.loads(out):
        for name in ("not_before", "not_after", "destroy_after"):
            stamp = cli_admin._utc(epoch[f"{name}_ms"])
            assert epoch[name] == stamp and stamp.endswith("+00:00")
    assert last_totp_step(kds) == step  # no code was spent after the first

    code, out, err = run(capsys, *with_session, "session", "close")
    assert (code, out) == (0, "closed 1 admin session\n"), err
    code, _, err = run(capsys, *with_session, "topic", "list")
    assert code == 1 and "was closed" in one_line(err, "admin topic list")


def test_session_from_the_environment(
    kds: Kds,
    served: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = tmp_path / "s"
    assert (
        run(capsys, *admin(kds, served, "--totp", kds.totp()), "session", "open", "--out", session)[
            0
        ]
        == 0
    )
    monkeypatch.setenv(kds_cli.SESSION_ENV, str(session))
    code, out, err = run(capsys, *admin(kds, served), "topic", "list")
    assert (code, out) == (0, "[]\n"), err


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--totp", "12345", "topic", "list"], "--totp"),
        (["--totp", "1234567", "topic", "list"], "--totp"),
        (["--totp", "12a456", "topic", "list"], "--totp"),
        (["--totp", "123456", "token", "p", "--ttl", "1", "--out", "X"], "--ttl 1"),
        (["--totp", "123456", "token", "p", "--ttl", "86401", "--out", "X"], "--ttl 86401"),
        (["--totp", "123456", "token", "role:x", "--out", "X"], "'role:x'"),
        (["--totp", "123456", "topic", "create", "a/b"], "'a/b'"),
        (["--totp", "123456", "topic", "create", "t", "--rotation", "0"], "--rotation 0"),
        (["--totp", "123456", "session", "open", "--out", "S", "--ttl", "5"], "--ttl 5"),
        (["--totp", "123456", "session", "close"], "--session"),
        (["--totp", "123456", "--timeout", "0", "topic", "list"], "--timeout"),
        (
            ["--totp", "123456", "--root-fingerprint", "SHA256:AB", "topic", "list"],
            "--root-fingerprint",
        ),
    ],
)
def test_arguments_are_checked_before_a_code_is_spent(
    args: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `token --ttl 1` used up the code, then got a 422 from the KDS."""
    key = tmp_path / "admin.key"
    keyfiles.write_secret(key, MemberIdentity.generate("a", os.urandom).to_bytes())
    args = [str(tmp_path / a) if a in ("X", "S") else a for a in args]
    # UNREACHABLE: anything sent would fail with exit 1, not 2
    code, out, err = run(capsys, "admin", "--url", UNREACHABLE, "--key", key, *args)
    assert code == 2, err
    assert flag in err and err.count("\n") == 1 and out == ""
    if flag == "--ttl 1":
        assert "10 to 86400" in err  # the minimum is named


def test_no_terminal_names_every_way_to_give_a_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "admin.key"
    keyfiles.write_secret(key, MemberIdentity.generate("a", os.urandom).to_bytes())
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    code, _, err = run(capsys, "admin", "--url", UNREACHABLE, "--key", key, "topic", "list")
    assert code == 2
    line = one_line(err, "admin topic list")
    assert "pass --totp, --totp-file or $SEALEDBUS_TOTP" in line


def test_admin_checks_the_pinned_root_before_sending_a_code(
    kds: Kds, served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "sha256:" + "ab" * 32
    code, _, err = run(
        capsys,
        *admin(kds, served, "--totp", "123456", "--root-fingerprint", wrong),
        "topic",
        "list",
    )
    assert code == 1 and "does not match the pinned fingerprint" in one_line(
        err, "admin topic list"
    )
    assert last_totp_step(kds) is None  # no code reached the KDS

    pinned = ["--root-fingerprint", kds.root_fingerprint]
    code, out, err = run(
        capsys, *admin(kds, served, "--totp", kds.totp(), *pinned), "topic", "list"
    )
    assert (code, out, err) == (0, "[]\n", "")


def test_admin_without_a_pinned_root_says_so(
    kds: Kds, served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *admin(kds, served, "--totp", kds.totp()), "topic", "list")
    assert (code, out) == (0, "[]\n")
    assert "no root fingerprint pinned" in one_line(err, "admin topic list")


def test_cli_honours_the_ca_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The examples read $SEALEDBUS_KDS_CA; the CLI ignored it."""
    monkeypatch.setenv(kds_cli.CA_ENV, str(tmp_path / "missing-ca.pem"))
    key = tmp_path / "admin.key"
    keyfiles.write_secret(key, MemberIdentity.generate("a", os.urandom).to_bytes())
    code, _, err = run(
        capsys, "admin", "--url", UNREACHABLE, "--key", key, "--totp", "123456", "audit"
    )
    assert code == 2 and "--ca" in err and "missing-ca.pem" in one_line(err, "admin audit")


def test_client_from_env_reads_the_same_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "p.key"
    keyfiles.write_secret(key, MemberIdentity.generate("p", os.urandom).to_bytes())
    with pytest.raises(ValueError, match=r"\$SEALEDBUS_KDS_URL and \$SEALEDBUS_KDS_ROOT"):
        KeyServiceClient.from_env(key)
    monkeypatch.setenv(kds_cli.URL_ENV, UNREACHABLE)
    monkeypatch.setenv(kds_cli.FINGERPRINT_ENV, "sha256:" + "ab" * 32)
    monkeypatch.setenv(kds_cli.CA_ENV, str(tmp_path / "missing-ca.pem"))
    with pytest.raises(OSError):  # the CA file is read: it is used
        KeyServiceClient.from_env(key)
    monkeypatch.delenv(kds_cli.CA_ENV)
    client = KeyServiceClient.from_env(key, timeout=1.0)
    assert client.member == "p"
    client.close()


@pytest.mark.parametrize(
    "bad", ["", "ab" * 32, "sha256:" + "AB" * 32, "sha256:" + "ab" * 31, "sha256:" + "ab" * 33]
)
def test_client_refuses_a_malformed_fingerprint_before_any_request(
    bad: str, tmp_path: Path
) -> None:
    """Before: a typo in the pin surfaced only as 'root key does not match' from the KDS."""
    with pytest.raises(ValueError, match="64 lowercase hex digits"):
        check_fingerprint(bad)
    identity = MemberIdentity.generate("p", os.urandom)
    with pytest.raises(ValueError, match="64 lowercase hex digits"):
        KeyServiceClient(UNREACHABLE, identity, bad)


def test_a_token_file_given_as_a_key_file_is_named(
    kds: Kds, served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "p.token"
    code, _, err = run(
        capsys, *admin(kds, served, "--totp", kds.totp()), "token", "p", "--out", token
    )
    assert code == 0, err
    code, _, err = run(capsys, *admin(kds, token, "--totp", "123456"), "topic", "list")
    assert code == 1
    line = one_line(err, "admin topic list")
    assert "holds an enrollment token" in line and "sealedbus enroll --token-file" in line
    assert token.read_text().strip() not in line
