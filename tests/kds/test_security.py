"""Negative tests for every trust mechanism of the KDS: pinned root key against a man in the
middle, request signatures and replays, enrollment tokens, TOTP, audit chain, keys at rest."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

from sealedbus import Opener, Sealer
from sealedbus.core.signed import EpochDescription
from sealedbus.errors import Refused, UntrustedResponse
from sealedbus.kds import auth
from sealedbus.kds.admin_client import AdminClient
from sealedbus.kds.api import create_app
from sealedbus.kds.secrets import MasterKeyring, SecretError, read_secret, write_secret
from sealedbus.kds.service import KeyDistributionService
from sealedbus.kds.store import audit, epoch_keys
from sealedbus.keys.client import enroll
from sealedbus.keys.identity import MemberIdentity

from ._harness import AsgiTransport, Kds

Tamper = Callable[[str, dict[str, Any]], dict[str, Any]]


class Mitm(httpx.BaseTransport):
    """A proxy that rewrites JSON answers on their way back (TLS terminated in front of it)."""

    def __init__(self, inner: httpx.BaseTransport, tamper: Tamper) -> None:
        self.inner = inner
        self.tamper = tamper

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if response.status_code != 200 or not response.content:
            return response
        doc = self.tamper(request.url.path, json.loads(response.content))
        return httpx.Response(200, json=doc)


def _flip(b64: str) -> str:
    data = bytearray(base64.b64decode(b64))
    data[len(data) // 2] ^= 1
    return base64.b64encode(bytes(data)).decode()


def mitm_client(kds: Kds, name: str, tamper: Tamper) -> Any:
    http = httpx.Client(transport=Mitm(AsgiTransport(kds.app), tamper),
                        base_url="http://testserver")
    return kds.member(name, http=http)


@pytest.fixture
def topic(kds: Kds) -> Sealer:
    kds.admin.create_topic("orders", producers=["p"], consumers=["c", "c2"], rotation=60)
    return Sealer(kds.member("p"), clock=kds.clock)


def test_swapped_root_key_is_detected(kds: Kds, topic: Sealer) -> None:
    fake = Ed25519PrivateKey.generate().public_key().public_bytes_raw()

    def swap_root(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        if path == "/v1/root":
            doc["public_key"] = base64.b64encode(fake).decode()
        return doc

    client = mitm_client(kds, "c", swap_root)
    with pytest.raises(UntrustedResponse, match="fingerprint"):
        Opener(client, clock=kds.clock).open("orders", topic.seal("orders", b"x"))


@pytest.mark.parametrize("field", ["description", "grant"])
def test_tampered_grant_or_epoch_is_detected(kds: Kds, topic: Sealer, field: str) -> None:
    def flip(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/grant"):
            doc[field] = _flip(doc[field])
        return doc

    client = mitm_client(kds, "c", flip)
    with pytest.raises(UntrustedResponse):
        Opener(client, clock=kds.clock).open("orders", topic.seal("orders", b"x"))


def test_swapped_epoch_public_key_is_detected(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    attacker = Ed25519PrivateKey.generate()

    def swap_key(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/sealing-epoch"):
            real = EpochDescription.verify(base64.b64decode(doc["description"]),
                                           kds.service.root_public)
            forged = EpochDescription(real.topic, real.epoch, real.suite, os.urandom(32),
                                      real.not_before_ms, real.not_after_ms, real.destroy_after_ms)
            doc["description"] = base64.b64encode(forged.sign(attacker)).decode()
        return doc

    with pytest.raises(UntrustedResponse, match="signature"):
        Sealer(mitm_client(kds, "p", swap_key), clock=kds.clock).seal("orders", b"x")


def test_grant_for_another_epoch_is_detected(kds: Kds, topic: Sealer) -> None:
    topic.seal("orders", b"epoch 0")
    kds.admin.rotate("orders")
    kds.clock.advance(11)
    envelope = topic.seal("orders", b"epoch 1")
    old: list[tuple[bytes, bytes]] = []

    def replay_old(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/epochs/1/grant"):
            doc = {"description": base64.b64encode(old[0][0]).decode(),
                   "grant": base64.b64encode(old[0][1]).decode()}
        return doc

    consumer = mitm_client(kds, "c", replay_old)
    old.append(kds.service.grant("c", "orders", 0))  # validly signed, sealed to c, wrong epoch
    with pytest.raises(UntrustedResponse, match="another topic or epoch"):
        Opener(consumer, clock=kds.clock).open("orders", envelope)


def test_replayed_old_epoch_for_producers_is_detected(kds: Kds, topic: Sealer) -> None:
    captured: list[dict[str, Any]] = []

    def replay(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/sealing-epoch"):
            captured.append(doc)
            return captured[0]  # always the first answer, from before the rotation
        return doc

    producer = mitm_client(kds, "p", replay)
    assert producer.sealing_epoch("orders", kds.clock_ms()).epoch == 0
    kds.admin.rotate("orders")  # say, a consumer was removed
    producer._epochs.clear()  # as if its cache had expired; it still remembers epoch 1 then
    producer._highest["orders"] = 1
    with pytest.raises(UntrustedResponse, match="rollback"):
        producer.sealing_epoch("orders", kds.clock_ms())


def test_certificate_for_another_id_is_detected(kds: Kds, topic: Sealer) -> None:
    envelope = topic.seal("orders", b"x")
    kds.member("c2")
    other = base64.b64encode(kds.service.certificate("c2")).decode()

    def swap(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        if path.startswith("/v1/certificates/"):
            doc["certificate"] = other
        return doc

    with pytest.raises(UntrustedResponse, match="another certificate"):
        Opener(mitm_client(kds, "c", swap), clock=kds.clock).open("orders", envelope)


def _signed(kds: Kds, identity: MemberIdentity, path: str, *, now_ms: int | None = None,
            nonce: bytes | None = None) -> httpx.Request:
    request = kds.http.build_request("GET", path)
    request.headers.update(auth.sign_request(
        identity.signing_key, identity.name, "GET", request.url.raw_path, b"",
        kds.clock_ms() if now_ms is None else now_ms, nonce or os.urandom(16)))
    return request


def _enrolled(kds: Kds, name: str) -> MemberIdentity:
    identity = MemberIdentity.generate(name, os.urandom)
    enroll("http://testserver", identity, kds.admin.create_token(name), kds.root_fingerprint,
           http=kds.http, clock=kds.clock)
    return identity


def test_replayed_request_is_refused(kds: Kds, topic: Sealer) -> None:
    identity = _enrolled(kds, "c")
    request = _signed(kds, identity, "/v1/revocations")
    assert kds.http.send(request).status_code == 200
    again = kds.http.send(request)
    assert (again.status_code, again.json()["error"]) == (401, "replayed_request")


@pytest.mark.parametrize("problem", ["stale", "future", "other_key", "other_path", "unknown"])
def test_badly_signed_requests_are_refused(kds: Kds, topic: Sealer, problem: str) -> None:
    identity = _enrolled(kds, "c")
    now = kds.clock_ms()
    if problem == "stale":
        request = _signed(kds, identity, "/v1/revocations", now_ms=now - 61_000)
    elif problem == "future":
        request = _signed(kds, identity, "/v1/revocations", now_ms=now + 61_000)
    elif problem == "other_key":
        impostor = MemberIdentity.generate("c", os.urandom)
        request = _signed(kds, impostor, "/v1/revocations")
    elif problem == "other_path":
        request = _signed(kds, identity, "/v1/revocations")
        request.url = request.url.copy_with(path="/v1/certificate")
    else:
        request = _signed(kds, MemberIdentity.generate("nobody", os.urandom), "/v1/revocations")
    response = kds.http.send(request)
    assert response.status_code == 401
    assert response.json()["error"] in {"stale_request", "bad_signature", "unknown_member"}
    assert "Traceback" not in response.text


def _enroll_raw(kds: Kds, identity: MemberIdentity, token: str) -> None:
    enroll("http://testserver", identity, token, kds.root_fingerprint, http=kds.http,
           clock=kds.clock)


def test_enrollment_tokens_are_one_time_short_lived_and_named(kds: Kds) -> None:
    token = kds.admin.create_token("svc", ttl=60)
    _enroll_raw(kds, MemberIdentity.generate("svc", os.urandom), token)
    with pytest.raises(Refused) as used:
        _enroll_raw(kds, MemberIdentity.generate("svc", os.urandom), token)
    assert used.value.code == "token_used"
    expiring = kds.admin.create_token("svc2", ttl=60)
    kds.clock.advance(61)
    with pytest.raises(Refused) as expired:
        _enroll_raw(kds, MemberIdentity.generate("svc2", os.urandom), expiring)
    assert expired.value.code == "token_expired"
    other = kds.admin.create_token("svc3")
    with pytest.raises(Refused) as wrong:
        _enroll_raw(kds, MemberIdentity.generate("someone-else", os.urandom), other)
    assert wrong.value.code == "invalid_token"
    with pytest.raises(Refused) as unknown:
        _enroll_raw(kds, MemberIdentity.generate("svc3", os.urandom), "A" * 43)
    assert unknown.value.code == "invalid_token"
    actions = [a for (a,) in kds.store.engine.connect().execute(select(audit.c.action))]
    assert actions.count("enrollment.refused") == 4


def test_enrollment_proof_must_come_from_the_identity_key(kds: Kds) -> None:
    identity = MemberIdentity.generate("svc", os.urandom)
    token = kds.admin.create_token("svc")
    body = {"token": token, "member": "svc",
            "identity_public": base64.b64encode(identity.identity_public).decode(),
            "receive_suite": "x25519",
            "receive_public": base64.b64encode(identity.receive.public).decode(),
            "proof": base64.b64encode(Ed25519PrivateKey.generate().sign(b"x")).decode()}
    response = kds.http.post("/v1/enroll", json=body)
    assert (response.status_code, response.json()["error"]) == (400, "bad_enrollment")


def test_enrollment_is_rate_limited(kds: Kds) -> None:
    http = httpx.Client(transport=AsgiTransport(create_app(kds.service, enroll_per_minute=2)),
                        base_url="http://testserver")
    body = {"token": "A" * 43, "member": "svc", "identity_public": "", "receive_public": "",
            "proof": ""}
    codes = [http.post("/v1/enroll", json=body).status_code for _ in range(3)]
    assert codes == [400, 400, 429]


def test_admin_needs_the_right_totp(kds: Kds) -> None:
    for code in ("000000", "", "12345x"):
        wrong = AdminClient("http://testserver", kds.admin_identity, lambda c=code: c,  # type: ignore[misc]
                            http=kds.http, clock=kds.clock)
        with pytest.raises(Refused) as refused:
            wrong.create_topic("t")
        assert (refused.value.status, refused.value.code) == (401, "bad_totp")
    stale = auth.totp(kds.totp_secret).generate(int(kds.clock()) - 120).decode()
    late = AdminClient("http://testserver", kds.admin_identity, lambda: stale, http=kds.http,
                       clock=kds.clock)
    with pytest.raises(Refused, match="TOTP"):
        late.topics()
    actions = [a for (a,) in kds.store.engine.connect().execute(select(audit.c.action))]
    assert actions.count("admin.totp_refused") == 4
    assert kds.admin.topics() == []  # the right code works


def test_a_member_key_is_not_an_admin_key(kds: Kds) -> None:
    member = _enrolled(kds, "svc")
    impostor = AdminClient("http://testserver", member, kds.totp, http=kds.http, clock=kds.clock)
    with pytest.raises(Refused) as refused:
        impostor.create_token("evil")
    assert refused.value.status == 401


def test_oversized_bodies_are_refused(kds: Kds) -> None:
    response = kds.http.post("/v1/enroll", content=b"{" + b" " * 70_000 + b"}",
                             headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]) == (413, "too_large")


def test_audit_chain_detects_edits(kds: Kds) -> None:
    for i in range(70):
        kds.service.record("test", "noted", i=i)
    report = kds.service.verify_audit()
    assert report.ok and report.entries >= 70 and report.checkpoints == 1
    assert kds.admin.audit()["ok"] is True
    with kds.store.engine.begin() as conn:
        conn.execute(update(audit).where(audit.c.seq == 5).values(actor="someone else"))
    report = kds.service.verify_audit()
    assert not report.ok and "entry 5" in report.problem


def test_epoch_keys_are_encrypted_at_rest_and_the_master_key_rotates(
    kds: Kds, topic: Sealer, tmp_path: Path
) -> None:
    consumer = kds.member("c")
    envelope = topic.seal("orders", b"x")
    keys = consumer.epoch_keys("orders", 0, kds.clock_ms())
    for file in tmp_path.glob("kds.db*"):
        assert keys.keys.private not in file.read_bytes()
    service = kds.service
    old = service.master.current
    service.master = service.master.with_new_key()
    assert service.rewrap() >= 3  # two epoch keys... at least one epoch, the topic, the admin
    assert service.master_keys_in_use() == {service.master.current}
    retired = service.master.without({old})
    assert old not in retired.key_ids
    service.master = retired
    assert Opener(kds.member("c2"), clock=kds.clock).open("orders", envelope).body == b"x"
    with kds.store.read() as conn:
        assert set(conn.execute(select(epoch_keys.c.key_id)).scalars()) == {retired.current}
    other = KeyDistributionService(kds.store, kds.service.root, MasterKeyring.generate(),
                                   clock=kds.clock)
    with pytest.raises(SecretError):
        other.grant("c", "orders", 0)


def test_secret_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_secret(path, b"secret")
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(SecretError, match="exists"):
        write_secret(path, b"again")
    path.chmod(0o644)
    with pytest.raises(SecretError, match="group or others"):
        read_secret(path)
