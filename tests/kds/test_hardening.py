"""Smaller hardening: malformed signature headers, name probing, internal errors, reserved
names, database file modes, chunked bodies and the enrollment rate limiter's memory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealedbus.errors import Refused
from sealedbus.kds.api import RateLimit
from sealedbus.keys import signing

from ._harness import Kds


def _headers(principal: str, stamp: str = "", nonce: str = "a" * 32) -> dict[str, str]:
    return {
        signing.PRINCIPAL: principal,
        signing.TIMESTAMP: stamp,
        signing.NONCE: nonce,
        signing.SIGNATURE: "A" * 88,
    }


@given(
    stamp=st.text(min_size=1, max_size=20),
    nonce=st.text(min_size=1, max_size=40),
    principal=st.text(min_size=1, max_size=40),
)
@settings(max_examples=60, deadline=None)
def test_any_signature_header_is_refused_cleanly(stamp: str, nonce: str, principal: str) -> None:
    kds = _shared()
    for path in ("/v1/revocations", "/v1/admin/topics"):
        headers = {
            k.encode(): v.encode("latin-1", "replace")  # bytes, as a client may send
            for k, v in _headers(principal, stamp, nonce).items()
        }
        response = kds.http.send(kds.http.build_request("GET", path, headers=headers))
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/json")


def test_non_ascii_digits_in_the_timestamp_are_refused(kds: Kds) -> None:
    headers = {k.encode(): v.encode() for k, v in _headers("m").items()}
    headers[signing.TIMESTAMP.encode()] = (
        b"\xb2"  # superscript two in Latin-1: str.isdigit() says yes
    )
    response = kds.http.send(kds.http.build_request("GET", "/v1/revocations", headers=headers))
    assert (response.status_code, response.json()["error"]) == (401, "unauthenticated")


def test_names_cannot_be_probed_without_a_signature(kds: Kds) -> None:
    kds.admin.create_topic("t", producers=["m"])
    kds.member("m")
    kds.member("gone")
    kds.admin.revoke("gone")
    answers = set()
    for path, who in (
        ("/v1/revocations", "m"),
        ("/v1/revocations", "nobody"),
        ("/v1/revocations", "gone"),
        ("/v1/admin/topics", "root-admin"),
        ("/v1/admin/topics", "nobody"),
    ):
        request = kds.http.build_request("GET", path)
        request.headers.update(_headers(who, str(kds.clock_ms()), os.urandom(16).hex()))
        response = kds.http.send(request)
        answers.add((response.status_code, response.text))
    assert answers == {
        (401, '{"error":"bad_signature","reason":"request signature does not verify"}')
    }


def test_an_internal_error_is_answered_not_re_raised(
    kds: Kds, monkeypatch: Any, caplog: Any
) -> None:
    def broken() -> None:
        raise RuntimeError("SELECT ... parameters: secret-value")

    monkeypatch.setattr(kds.service, "topics", broken)
    response = kds.admin._http.http.send(kds.admin._http.http.build_request("GET", "/healthz"))
    assert response.status_code == 200
    with pytest.raises(Exception, match="500") as failed:  # the client sees a clean 500
        kds.admin.topics()
    assert "secret-value" not in str(failed.value)
    assert "secret-value" not in caplog.text
    assert kds.store.engine.hide_parameters


def test_member_and_role_names_may_not_look_like_roles(kds: Kds) -> None:
    for member, roles in (("role:admins", []), ("svc", ["role:x"])):
        with pytest.raises(Refused) as refused:
            kds.admin.create_token(member, roles)
        assert (refused.value.status, refused.value.code) == (422, "invalid_name")


def test_the_sqlite_database_is_private(kds: Kds, tmp_path: Path) -> None:
    files = list(tmp_path.glob("kds.db*"))
    assert files
    for file in files:
        assert file.stat().st_mode & 0o777 == 0o600, file.name


def test_a_chunked_body_over_the_limit_gets_413(kds: Kds) -> None:
    messages = [{"type": "http.request", "body": b'{"token_key":"', "more_body": True}]
    messages += [{"type": "http.request", "body": b"A" * 1024, "more_body": True}] * 100
    messages += [{"type": "http.request", "body": b'"}', "more_body": False}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/enroll",
        "raw_path": b"/v1/enroll",
        "query_string": b"",
        "root_path": "",
        "client": ("192.0.2.1", 1),
        "server": ("kds", 80),
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
    }
    asyncio.run(kds.app(scope, receive, send))
    assert sent[0]["status"] == 413
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert httpx.Response(413, content=body).json()["error"] == "too_large"


def test_many_addresses_do_not_reset_the_rate_limit() -> None:
    now = [0.0]
    limiter = RateLimit(2, lambda: now[0])
    assert limiter.allow("attacker") and limiter.allow("attacker")
    assert not limiter.allow("attacker")
    for i in range(10_001):  # fill the table: only the longest idle entries may go
        limiter.allow(f"198.51.100.{i}")
        if i == 5_000:
            assert not limiter.allow("attacker")  # touched: now among the newest
    assert not limiter.allow("attacker")


_state: dict[str, Kds] = {}


def _shared() -> Kds:
    if "kds" not in _state:
        import tempfile

        from ._harness import make_kds

        _state["kds"] = make_kds(Path(tempfile.mkdtemp(prefix="kds-headers-")))
        _state["kds"].admin.create_topic("t", producers=["m"])
        _state["kds"].member("m")
    return _state["kds"]
