"""``sealedbus kds|admin|enroll`` in-process: arguments are checked before anything is written or
asked of the KDS, errors are one line without a traceback, secrets never reach the terminal."""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from sealedbus.core.signed import COMPROMISE, RevocationList
from sealedbus.kds import cli as kds_cli
from sealedbus.kds import secrets
from sealedbus.kds.admin_client import AdminClient
from sealedbus.kds.store import tokens
from sealedbus.keys import keyfiles
from sealedbus.ops.cli import main

from ._harness import AsgiTransport, Kds
from ._processes import cli

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens there: any request would fail loudly


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        kds_cli.DB_ENV,
        kds_cli.URL_ENV,
        kds_cli.FINGERPRINT_ENV,
        kds_cli.TOTP_ENV,
        secrets.MASTER_KEYS_ENV,
    ):
        monkeypatch.delenv(name, raising=False)


class _Shared(httpx.BaseTransport):
    """Hands requests to one transport and leaves it open when a client closes."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)


@pytest.fixture
def served(kds: Kds, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The in-process KDS behind every httpx.Client the CLI makes; yields the admin key file."""
    kds.clock.now = time.time()  # the CLI signs requests with the real time
    transport = AsgiTransport(kds.app)
    real_client = httpx.Client

    def client(**options: Any) -> httpx.Client:
        return real_client(base_url=options["base_url"], transport=_Shared(transport))

    monkeypatch.setattr(httpx, "Client", client)
    key = tmp_path / "admin.key"
    keyfiles.write_secret(key, kds.admin_identity.to_bytes())
    yield key
    monkeypatch.undo()
    transport.close()


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_line(err: str, command: str) -> str:
    """The error line; checks it is the only one and names the command."""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"sealedbus {command}: "), err
    return err


def token_count(kds: Kds) -> int:
    with kds.store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(tokens)).scalar_one())


def admin_args(kds: Kds, key: Path) -> list[str | Path]:
    return ["admin", "--url", "http://kds.test", "--key", key, "--totp", kds.totp()]


def issue_token(
    kds: Kds, key: Path, capsys: pytest.CaptureFixture[str], member: str, out: Path
) -> None:
    code, stdout, err = run(capsys, *admin_args(kds, key), "token", member, "--out", out)
    assert code == 0, err
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_text().strip() not in stdout + err  # the secret goes to the file only


def enroll_args(kds: Kds, name: str, token: Path, key_out: Path) -> list[str | Path]:
    return [
        "enroll",
        "--url",
        "http://kds.test",
        "--root-fingerprint",
        kds.root_fingerprint,
        "--name",
        name,
        "--token-file",
        token,
        "--key-out",
        key_out,
    ]


def test_token_refuses_an_existing_out_file_before_the_kds_issues_one(
    kds: Kds, served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "p.token"
    existing.write_text("keep me\n")
    for out in (existing, tmp_path, tmp_path / "no-such-dir" / "p.token"):
        code, _, err = run(capsys, *admin_args(kds, served), "token", "p", "--out", out)
        assert code == 2
        assert "--out" in one_line(err, "admin token")
    assert existing.read_text() == "keep me\n"
    assert token_count(kds) == 0  # no live token that nobody holds

    fresh = tmp_path / "p2.token"
    issue_token(kds, served, capsys, "p", fresh)
    assert token_count(kds) == 1


def test_token_that_cannot_be_saved_is_reported_in_one_line_without_the_secret(
    kds: Kds,
    served: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issued: list[str] = []
    create_token = AdminClient.create_token

    def spy(self: AdminClient, *args: Any) -> str:
        issued.append(create_token(self, *args))
        return issued[-1]

    def disk_full(path: Path, data: bytes, *, overwrite: bool = False) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(AdminClient, "create_token", spy)
    monkeypatch.setattr(keyfiles, "write_secret", disk_full)
    code, out, err = run(
        capsys, *admin_args(kds, served), "token", "p", "--out", tmp_path / "p.token"
    )
    assert code == 1
    assert "No space left on device" in one_line(err, "admin token")
    assert len(issued) == 1 and issued[0] not in out + err


def test_enroll_writes_the_key_file_only_once_enrolled(
    kds: Kds, served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    member = tmp_path / "member"
    member.mkdir()
    key = member / "p.key"
    bogus = member / "bogus.token"
    bogus.write_text("not-a-token\n")
    code, _, err = run(capsys, *enroll_args(kds, "p", bogus, key))
    assert code == 1 and "enrollment failed" in one_line(err, "enroll")
    assert [p.name for p in member.iterdir()] == ["bogus.token"]

    token = tmp_path / "p.token"
    issue_token(kds, served, capsys, "p", token)
    code, out, err = run(capsys, *enroll_args(kds, "p", token, key))
    assert code == 0, err
    assert out.startswith("enrolled p; key file")
    assert key.stat().st_mode & 0o777 == 0o600
    assert not key.with_name("p.key.pending").exists()
    assert keyfiles.read_secret(key, hint=keyfiles.ENROLL_HINT)

    again = tmp_path / "again.token"
    issue_token(kds, served, capsys, "p", again)
    before = key.read_bytes()
    code, _, err = run(capsys, *enroll_args(kds, "p", again, key))
    assert code == 2 and "exists; refusing to overwrite" in one_line(err, "enroll")
    assert key.read_bytes() == before


def test_enroll_checks_its_arguments_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "p.token"
    token.write_text("a-token\n")
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    key = tmp_path / "p.key"
    fingerprint = "sha256:" + "ab" * 32
    base: list[str | Path] = ["enroll", "--name", "p", "--key-out", key]
    cases: list[tuple[list[str | Path], str]] = [
        ([*base, "--token-file", token, "--root-fingerprint", fingerprint], "--url"),
        ([*base, "--token-file", token, "--url", UNREACHABLE], "--root-fingerprint"),
        (
            [*base, "--token-file", token, "--url", UNREACHABLE, "--root-fingerprint", "abc"],
            "--root-fingerprint",
        ),
        (
            [
                *base,
                "--token-file",
                tmp_path / "missing",
                "--url",
                UNREACHABLE,
                "--root-fingerprint",
                fingerprint,
            ],
            "--token-file",
        ),
        (
            [*base, "--token-file", empty, "--url", UNREACHABLE, "--root-fingerprint", fingerprint],
            "--token-file",
        ),
        (
            [
                *base,
                "--token-file",
                token,
                "--url",
                UNREACHABLE,
                "--root-fingerprint",
                fingerprint,
                "--ca",
                tmp_path / "missing.pem",
            ],
            "--ca",
        ),
    ]
    for args, flag in cases * 2:  # the second round finds nothing left over by the first
        code, out, err = run(capsys, *args)
        assert code == 2, err
        assert flag in one_line(err, "enroll")
        assert "a-token" not in out + err
        assert not key.exists() and not key.with_name("p.key.pending").exists()

    key.with_name("p.key.pending").write_bytes(b"")
    code, _, err = run(
        capsys,
        *base,
        "--token-file",
        token,
        "--url",
        UNREACHABLE,
        "--root-fingerprint",
        fingerprint,
    )
    assert code == 2 and "interrupted" in one_line(err, "enroll")

    key.write_bytes(b"")
    code, _, err = run(
        capsys,
        *base,
        "--token-file",
        token,
        "--url",
        UNREACHABLE,
        "--root-fingerprint",
        fingerprint,
    )
    assert code == 2 and "refusing to overwrite" in one_line(err, "enroll")


def test_enroll_that_cannot_reach_the_kds_leaves_no_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "p.token"
    token.write_text("a-token\n")
    key = tmp_path / "p.key"
    code, _, err = run(
        capsys,
        "enroll",
        "--name",
        "p",
        "--key-out",
        key,
        "--token-file",
        token,
        "--url",
        UNREACHABLE,
        "--root-fingerprint",
        "sha256:" + "ab" * 32,
    )
    assert code == 1
    assert f"KDS at {UNREACHABLE} unreachable: connection refused" in one_line(err, "enroll")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.token"]


def test_fingerprint_prints_what_init_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "kds"
    code, out, _ = run(capsys, "kds", "init", "--data-dir", data)
    assert code == 0
    match = re.search(r"root key fingerprint: (sha256:[0-9a-f]{64})", out)
    assert match, out
    code, out, err = run(capsys, "kds", "fingerprint", "--data-dir", data)
    assert (code, out, err) == (0, match.group(1) + "\n", "")

    code, out, err = run(capsys, "kds", "fingerprint", "--data-dir", tmp_path / "nowhere")
    assert code == 1 and out == ""
    assert "`sealedbus kds init`" in one_line(err, "kds fingerprint")

    code, _, err = run(capsys, "kds", "init", "--data-dir", data)
    assert code == 1 and "refusing to overwrite" in one_line(err, "kds init")


def test_missing_secret_files_get_advice_that_fits_them(tmp_path: Path) -> None:
    missing = tmp_path / "p.key"
    with pytest.raises(keyfiles.SecretError) as plain:
        keyfiles.read_secret(missing)
    assert "kds init" not in str(plain.value)
    with pytest.raises(keyfiles.SecretError, match="`sealedbus enroll`"):
        keyfiles.read_secret(missing, hint=keyfiles.ENROLL_HINT)
    with pytest.raises(keyfiles.SecretError, match="`sealedbus kds init`"):
        secrets.load_root_key(tmp_path / secrets.ROOT_KEY_FILE)
    with pytest.raises(keyfiles.SecretError, match="`sealedbus kds init`"):
        secrets.MasterKeyring.load(tmp_path / secrets.MASTER_KEYS_FILE)
    with pytest.raises(keyfiles.SecretError, match="is a directory"):
        keyfiles.check_new_secret_path(tmp_path)
    keyfiles.check_new_secret_path(missing)  # creatable: no error


def test_admin_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "kds"
    assert run(capsys, "kds", "init", "--data-dir", data)[0] == 0
    key = data / "admin.key"
    url = ["--url", UNREACHABLE]
    code, _, err = run(capsys, "admin", "--key", key, "--totp", "123456", "topic", "list")
    assert code == 2 and "--url" in one_line(err, "admin topic list")
    code, _, err = run(
        capsys, "admin", *url, "--key", tmp_path / "x.key", "--totp", "123456", "audit"
    )
    assert code == 1 and "`sealedbus kds init`" in one_line(err, "admin audit")
    code, _, err = run(
        capsys, "admin", *url, "--key", data / "admin.totp", "--totp", "123456", "audit"
    )
    assert code == 1 and "not a sealedbus key file" in one_line(err, "admin audit")
    assert "secret=" not in err
    code, _, err = run(capsys, "admin", *url, "--key", key, "--totp", "123456", "rotate", "t")
    assert code == 1 and "unreachable" in one_line(err, "admin rotate")
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    code, _, err = run(capsys, "admin", *url, "--key", key, "revoke", "p")
    assert code == 2 and "--totp" in one_line(err, "admin revoke")
    os.chmod(key, 0o644)
    code, _, err = run(capsys, "admin", *url, "--key", key, "--totp", "123456", "topic", "list")
    assert code == 1 and "chmod 600" in one_line(err, "admin topic list")


def test_kds_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "kds", "serve", "--data-dir", tmp_path)
    assert code == 2 and "--tls-cert" in one_line(err, "kds serve")
    code, _, err = run(capsys, "kds", "serve", "--data-dir", tmp_path, "--insecure-http")
    assert code == 1 and "root.key does not exist" in one_line(err, "kds serve")
    code, _, err = run(capsys, "kds", "rotate-master-key", "--data-dir", tmp_path)
    assert code == 1 and "`sealedbus kds init`" in one_line(err, "kds rotate-master-key")


def test_the_reported_enroll_sequence_as_a_process(tmp_path: Path) -> None:
    """The report: enroll without --url wrote the key file; running it again crashed."""
    token = tmp_path / "p.token"
    token.write_text("a-token\n")
    args = (
        "enroll",
        "--name",
        "p",
        "--token-file",
        token,
        "--key-out",
        tmp_path / "p.key",
        "--root-fingerprint",
        "sha256:" + "ab" * 32,
    )
    for _ in range(2):
        result = cli(*args, check=False)
        assert result.returncode == 2
        assert result.stderr == f"sealedbus enroll: --url or ${kds_cli.URL_ENV} is required\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.token"]


def test_init_with_an_unreachable_database_leaves_no_key_files(tmp_path: Path) -> None:
    data = tmp_path / "kds"
    code = main(
        ["kds", "init", "--data-dir", str(data), "--db", "postgresql://nobody:pw@127.0.0.1:1/none"]
    )
    assert code == 1
    assert not any(data.iterdir())  # nothing to refuse on the retry


def test_enroll_an_enrolled_name_needs_replace_and_says_what_happens_to_the_old_key(
    kds: Kds, served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second `sealedbus enroll --name billing` silently replaced the member's keys."""
    first_token, second_token = tmp_path / "1.token", tmp_path / "2.token"
    issue_token(kds, served, capsys, "billing", first_token)
    assert run(capsys, *enroll_args(kds, "billing", first_token, tmp_path / "1.key"))[0] == 0
    issue_token(kds, served, capsys, "billing", second_token)
    code, _, err = run(capsys, *enroll_args(kds, "billing", second_token, tmp_path / "2.key"))
    message = one_line(err, "enroll")
    assert code == 1 and "member_enrolled" in message and "--replace" in message
    assert "old certificates" in message and not (tmp_path / "2.key").exists()
    code, _, err = run(
        capsys, *enroll_args(kds, "billing", second_token, tmp_path / "2.key"), "--compromised"
    )
    assert code == 2 and "--compromised goes with --replace" in one_line(err, "enroll")
    code, out, err = run(
        capsys, *enroll_args(kds, "billing", second_token, tmp_path / "2.key"), "--replace"
    )
    assert code == 0, err
    assert "replaced billing's keys; its old certificates are revoked from now on" in out


def test_topic_max_age_and_retirement_are_reachable_from_the_cli(
    kds: Kds, served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API could set a topic's maximum message age and retire (not only revoke for key
    compromise) a member, but the CLI offered neither."""
    admin = admin_args(kds, served)
    code, _, err = run(capsys, *admin, "topic", "create", "orders", "--max-age", "3600")
    assert code == 0, err
    assert kds.service.topic("orders").max_age_ms == 3_600_000
    code, _, err = run(capsys, *admin_args(kds, served), "topic", "create", "x", "--max-age", "-1")
    assert code == 2 and "--max-age -1: must be 0" in one_line(err, "admin topic create")

    kds.member("p")
    kds.member("q")
    code, out, err = run(capsys, *admin_args(kds, served), "revoke", "p", "--retire")
    assert code == 0 and "retired p" in out, err
    code, out, err = run(capsys, *admin_args(kds, served), "revoke", "q")
    assert code == 0 and "revoked (key compromise) q" in out, err
    listed = RevocationList.verify(kds.service.revocation_list(), kds.service.root.public_key())
    since = {member: since for member, _serial, since in listed.members}
    assert since["p"] != COMPROMISE and since["q"] == COMPROMISE
