"""Admin sessions: one TOTP code opens a short session bound to the admin key, signed by the KDS,
closable, every use audited (``sealedbus.kds.admin_sessions``)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from sealedbus.errors import KdsCode, Refused
from sealedbus.kds import admin_sessions, store
from sealedbus.kds.admin_client import AdminClient
from sealedbus.kds.store import audit
from sealedbus.keys import keyfiles
from sealedbus.keys.identity import MemberIdentity

from ._harness import Kds
from ._processes import KdsProcess, init, totp_code


def audit_actions(kds: Kds) -> list[tuple[str, dict[str, object]]]:
    with kds.store.read() as conn:
        rows = conn.execute(select(audit.c.action, audit.c.detail).order_by(audit.c.seq)).all()
    return [(r.action, json.loads(r.detail)) for r in rows]


def no_codes() -> str:
    raise AssertionError("a TOTP code was asked for under an open session")


def session_client(kds: Kds, token: str, identity: MemberIdentity | None = None) -> AdminClient:
    return AdminClient(
        "http://testserver",
        identity or kds.admin_identity,
        no_codes,
        session=token,
        http=kds.http,
        clock=kds.clock,
    )


def test_one_code_opens_a_session_and_every_use_is_audited(kds: Kds) -> None:
    doc = kds.admin.open_session()
    assert doc["expires_in"] == 900  # the default: 15 minutes
    assert doc["expires_at_ms"] == kds.clock_ms() + 900_000
    admin = session_client(kds, doc["session"])
    admin.create_topic("t", producers=["p"], consumers=["c"])
    admin.rotate("t")
    assert [e["epoch"] for e in admin.epochs("t")][-1] >= 1
    uses = [d for a, d in audit_actions(kds) if a == "admin.session.used"]
    assert [(u["method"], u["path"]) for u in uses] == [
        ("POST", "/v1/admin/topics"),
        ("POST", "/v1/admin/topics/t/rotate"),
        ("GET", "/v1/admin/topics/t/epochs"),
    ]
    assert {u["session"] for u in uses} == {doc["session_id"]}
    opened = [d for a, d in audit_actions(kds) if a == "admin.session.opened"]
    assert opened == [{"session": doc["session_id"], "expires_ms": doc["expires_at_ms"]}]


def test_session_token_without_the_admin_key_is_refused(kds: Kds) -> None:
    """A stolen session token is useless: requests must still be signed by the admin's key."""
    token = kds.admin.open_session()["session"]
    other = MemberIdentity.generate("other-admin", os.urandom)
    kds.service.add_admin(other.name, other.identity_public, os.urandom(20))
    with pytest.raises(Refused) as refused:
        session_client(kds, token, other).topics()
    assert (refused.value.status, refused.value.code) == (401, "bad_session")
    assert refused.value.reason is KdsCode.BAD_SESSION
    assert "another admin" in refused.value.detail

    impostor = MemberIdentity.generate(kds.admin_identity.name, os.urandom)  # same name, new key
    with pytest.raises(Refused) as refused:
        session_client(kds, token, impostor).topics()
    assert refused.value.code == "bad_signature"  # the request itself does not verify


def test_session_ends_when_the_admin_key_is_replaced(kds: Kds) -> None:
    token = kds.admin.open_session()["session"]
    session_client(kds, token).topics()
    new = MemberIdentity.generate(kds.admin_identity.name, os.urandom)
    kds.service.add_admin(new.name, new.identity_public, kds.totp_secret)
    with pytest.raises(Refused, match="another admin or admin key"):
        session_client(kds, token, new).topics()


def test_tampered_session_token_is_refused(kds: Kds) -> None:
    token = base64.b64decode(kds.admin.open_session()["session"])
    for i in (0, len(token) // 2, len(token) - 1):
        bad = bytearray(token)
        bad[i] ^= 1
        with pytest.raises(Refused) as refused:
            session_client(kds, base64.b64encode(bytes(bad)).decode()).topics()
        assert refused.value.code == "bad_session"
    for junk in ("!!", "A" * 600, base64.b64encode(b"short").decode()):
        with pytest.raises(Refused) as refused:
            session_client(kds, junk).topics()
        assert refused.value.code == "bad_session"


def test_expired_session_is_refused(kds: Kds) -> None:
    token = kds.admin.open_session()["session"]
    kds.clock.advance(899)
    session_client(kds, token).topics()
    kds.clock.advance(1)
    with pytest.raises(Refused, match="expired"):
        session_client(kds, token).topics()


def test_closed_session_is_refused(kds: Kds) -> None:
    first, second = kds.admin.open_session(), kds.admin.open_session()
    admin = session_client(kds, second["session"])
    assert admin.close_session(first["session_id"]) == 1
    with pytest.raises(Refused, match="was closed"):
        session_client(kds, first["session"]).topics()
    with pytest.raises(Refused) as refused:
        admin.close_session(first["session_id"])
    assert refused.value.status == 404
    assert admin.close_session() == 1  # all of this admin's: the one in use
    with pytest.raises(Refused, match="was closed"):
        admin.topics()
    closed = [d for a, d in audit_actions(kds) if a == "admin.session.closed"]
    assert closed == [
        {"session": first["session_id"], "closed": 1},
        {"session": first["session_id"], "closed": 0},
        {"admin": kds.admin_identity.name, "closed": 1},
    ]


def test_a_session_cannot_open_another_session(kds: Kds) -> None:
    """Otherwise one code would buy sessions forever."""
    token = kds.admin.open_session()["session"]
    admin = session_client(kds, token)
    with pytest.raises(Refused, match="takes a TOTP code"):
        admin._call("POST", "/v1/admin/sessions", {"ttl_seconds": None})


def test_session_lifetime_is_configurable_and_capped(kds: Kds) -> None:
    assert kds.admin.open_session(60)["expires_in"] == 60
    kds.app.state.admin_session_ttl = 120
    assert kds.admin.open_session()["expires_in"] == 120
    assert kds.admin.open_session(3600)["expires_in"] == 120  # the KDS's limit wins
    with pytest.raises(Refused) as refused:
        kds.admin.open_session(1)
    assert refused.value.status == 422


def test_a_database_from_before_sessions_gets_the_table(kds: Kds) -> None:
    store.admin_sessions.drop(kds.store.engine)
    admin_sessions._ready.discard(kds.store)
    token = kds.admin.open_session()["session"]
    assert session_client(kds, token).topics() == []


def test_serve_takes_the_session_lifetime(tmp_path: Path) -> None:
    data = tmp_path / "kds"
    init(data)
    kds = KdsProcess(data, "--admin-session-ttl", "60")
    try:
        admin = AdminClient(
            kds.url,
            MemberIdentity.from_bytes(keyfiles.read_secret(data / "admin.key")),
            lambda: totp_code(data),
        )
        assert admin.open_session()["expires_in"] == 60
        assert admin.open_session(3600)["expires_in"] == 60
        admin.close()
    finally:
        kds.stop()
