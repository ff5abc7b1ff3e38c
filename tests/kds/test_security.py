"""Negative tests for every trust mechanism of the KDS: pinned root key against a man in the
middle, request signatures and replays, enrollment tokens, TOTP, audit chain, keys at rest."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, insert, select, update

from sealedbus import Opener, Sealer
from sealedbus.core.backend import SMALL_ORDER_POINTS
from sealedbus.core.signed import EpochDescription, SealingEpochAnswer
from sealedbus.core.suites import Suite
from sealedbus.errors import KdsCode, KeyServiceUnavailable, Refused, UntrustedResponse
from sealedbus.kds import auth
from sealedbus.kds.admin_client import AdminClient
from sealedbus.kds.api import create_app
from sealedbus.kds.audit import entry_hash
from sealedbus.kds.secrets import MasterKeyring
from sealedbus.kds.service import KeyDistributionService, ServiceError
from sealedbus.kds.store import GENESIS, audit, audit_checkpoints, epoch_keys, heads, tokens
from sealedbus.keys import signing
from sealedbus.keys.client import enroll
from sealedbus.keys.identity import MemberIdentity
from sealedbus.keys.keyfiles import SecretError, read_secret, write_secret

from ._harness import AsgiTransport, Kds, settle

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
    http = httpx.Client(
        transport=Mitm(AsgiTransport(kds.app), tamper), base_url="http://testserver"
    )
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
            real = EpochDescription.verify(
                base64.b64decode(doc["description"]), kds.service.root_public
            )
            forged = EpochDescription(
                real.topic,
                real.epoch,
                real.suite,
                os.urandom(32),
                real.not_before_ms,
                real.not_after_ms,
                real.destroy_after_ms,
            )
            doc["description"] = base64.b64encode(forged.sign(attacker)).decode()
        return doc

    with pytest.raises(UntrustedResponse, match="signature"):
        Sealer(mitm_client(kds, "p", swap_key), clock=kds.clock).seal("orders", b"x")


def test_grant_for_another_epoch_is_detected(kds: Kds, topic: Sealer) -> None:
    topic.seal("orders", b"epoch 0")
    kds.admin.rotate("orders")
    kds.clock.advance(11)
    topic.seal("orders", b"refreshes the epoch off the hot path")
    settle()
    kds.clock.advance(1)  # the sealer asks its key source again
    envelope = topic.seal("orders", b"epoch 1")
    old: list[tuple[bytes, bytes]] = []

    def replay_old(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/epochs/1/grant"):
            doc = {
                "description": base64.b64encode(old[0][0]).decode(),
                "grant": base64.b64encode(old[0][1]).decode(),
            }
        return doc

    consumer = mitm_client(kds, "c", replay_old)
    old.append(kds.service.grant("c", "orders", 0))  # validly signed, sealed to c, wrong epoch
    with pytest.raises(UntrustedResponse, match="another topic or epoch"):
        Opener(consumer, clock=kds.clock).open("orders", envelope)


class Replay(httpx.BaseTransport):
    """Records the first sealing-epoch answer; replays it to every later request while
    ``replaying`` (a captured HTTP log, or a TLS-terminating proxy)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.replaying = False
        self.recorded: bytes | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/sealing-epoch"):
            if self.replaying and self.recorded is not None:
                return httpx.Response(200, content=self.recorded)
            response = self.inner.handle_request(request)
            self.recorded = self.recorded or response.read()
            return response
        return self.inner.handle_request(request)


def test_replayed_old_epoch_for_producers_is_detected(kds: Kds) -> None:
    """A producer restarted behind a replaying proxy has no memory of newer epochs: the answer
    must be bound to its request, or it would seal for a removed consumer."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c", "evil"], rotation=3600)
    identity = _enrolled(kds, "p")
    proxy = Replay(AsgiTransport(kds.app))
    http = httpx.Client(transport=proxy, base_url="http://testserver")
    assert kds.client(identity, http=http).sealing_epoch("orders", kds.clock_ms()).epoch == 0
    evil = kds.member("evil")
    evil_opener = Opener(evil, clock=kds.clock)
    evil.epoch_keys("orders", 0, kds.clock_ms())  # evil legitimately held epoch 0's key
    kds.clock.advance(60)
    kds.admin.set_policy("orders", consumers=["c"])  # evil removed: the topic rotates
    proxy.replaying = True
    for later in (0, 7200):  # just after, and long after epoch 0's window ended
        kds.clock.advance(later)
        restarted = Sealer(kds.client(identity, http=http), clock=kds.clock)  # fresh memory
        with pytest.raises(UntrustedResponse, match="not for this request"):
            envelope = restarted.seal("orders", b"written after evil was removed")
            evil_opener.open("orders", envelope)  # what the replay would have allowed


def test_a_current_epoch_outside_its_window_is_refused(kds: Kds) -> None:
    """Even a validly signed, fresh answer naming an epoch whose window ended is refused."""
    kds.admin.create_topic("orders", producers=["p"], rotation=60)
    old = kds.service.sealing_epoch("p", "orders")[0]
    kds.clock.advance(120)
    kds.service.tick("test")

    class Stale(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if not request.url.path.endswith("/sealing-epoch"):
                return self.inner.handle_request(request)
            nonce = bytes.fromhex(request.url.params["nonce"])
            digest = EpochDescription.verify(old, kds.service.root_public).digest
            answer = SealingEpochAnswer("orders", digest, b"", nonce, kds.clock_ms())
            return httpx.Response(
                200,
                json={
                    "description": base64.b64encode(old).decode(),
                    "answer": base64.b64encode(answer.sign(kds.service.root)).decode(),
                },
            )

    identity = _enrolled(kds, "p")
    producer = kds.client(
        identity,
        http=httpx.Client(transport=Stale(AsgiTransport(kds.app)), base_url="http://testserver"),
    )
    with pytest.raises(UntrustedResponse, match="window does not contain now"):
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


def _signed(
    kds: Kds,
    identity: MemberIdentity,
    path: str,
    *,
    now_ms: int | None = None,
    nonce: bytes | None = None,
) -> httpx.Request:
    request = kds.http.build_request("GET", path)
    request.headers.update(
        signing.sign_request(
            identity.signing_key,
            identity.name,
            "GET",
            request.url.raw_path,
            b"",
            kds.clock_ms() if now_ms is None else now_ms,
            nonce or os.urandom(16),
        )
    )
    return request


def _enrolled(kds: Kds, name: str) -> MemberIdentity:
    identity = MemberIdentity.generate(name, os.urandom)
    enroll(
        "http://testserver",
        identity,
        kds.admin.create_token(name),
        kds.root_fingerprint,
        http=kds.http,
        clock=kds.clock,
    )
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
    enroll(
        "http://testserver", identity, token, kds.root_fingerprint, http=kds.http, clock=kds.clock
    )


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


def _enroll_body(
    kds: Kds, identity: MemberIdentity, token: str, identity_key: Ed25519PrivateKey | None = None
) -> dict[str, Any]:
    token_key = signing.token_key(token)
    token_public = token_key.public_key().public_bytes_raw()
    message = signing.enrollment_message(
        token_public,
        identity.name,
        identity.identity_public,
        int(identity.receive.suite),
        identity.receive.public,
        kds.clock_ms(),
    )
    sign = (identity_key or identity.signing_key).sign
    return {
        "token_key": base64.b64encode(token_public).decode(),
        "member": identity.name,
        "identity_public": base64.b64encode(identity.identity_public).decode(),
        "receive_suite": "x25519",
        "receive_public": base64.b64encode(identity.receive.public).decode(),
        "timestamp_ms": kds.clock_ms(),
        "token_proof": base64.b64encode(token_key.sign(message)).decode(),
        "proof": base64.b64encode(sign(message)).decode(),
    }


def test_enrollment_proof_must_come_from_the_identity_key(kds: Kds) -> None:
    identity = MemberIdentity.generate("svc", os.urandom)
    body = _enroll_body(
        kds, identity, kds.admin.create_token("svc"), identity_key=Ed25519PrivateKey.generate()
    )
    response = kds.http.post("/v1/enroll", json=body)
    assert (response.status_code, response.json()["error"]) == (400, "bad_enrollment")


def test_a_proxy_that_sees_an_enrollment_cannot_enroll_its_own_keys(kds: Kds) -> None:
    """The token never travels: what a TLS-terminating proxy sees is signed by a key derived
    from it, over the member's keys, so it can neither swap in its keys nor reuse the token."""
    token = kds.admin.create_token("svc")
    seen: list[bytes] = []

    class Proxy(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/enroll":
                seen.append(request.read())
                return httpx.Response(503)  # holds the victim's request back...
            return self.inner.handle_request(request)

    victim = MemberIdentity.generate("svc", os.urandom)
    proxied = httpx.Client(transport=Proxy(AsgiTransport(kds.app)), base_url="http://testserver")
    with pytest.raises(KeyServiceUnavailable):
        enroll(
            "http://testserver", victim, token, kds.root_fingerprint, http=proxied, clock=kds.clock
        )
    assert token.encode() not in seen[0]
    body = json.loads(seen[0])
    attacker = MemberIdentity.generate("svc", os.urandom)  # ...and enrolls its own keys first
    message = signing.enrollment_message(
        base64.b64decode(body["token_key"]),
        "svc",
        attacker.identity_public,
        int(attacker.receive.suite),
        attacker.receive.public,
        body["timestamp_ms"],
    )
    body.update(
        identity_public=base64.b64encode(attacker.identity_public).decode(),
        receive_public=base64.b64encode(attacker.receive.public).decode(),
        proof=base64.b64encode(attacker.signing_key.sign(message)).decode(),
    )
    response = kds.http.post("/v1/enroll", json=body)
    assert (response.status_code, response.json()["error"]) == (400, "bad_enrollment")
    with kds.store.read() as conn:  # the KDS keeps only the token's public key
        assert token.encode() not in b"".join(conn.execute(select(tokens.c.token_hash)).scalars())
    late = _enroll_body(kds, victim, token)
    kds.clock.advance(61)
    stale = kds.http.post("/v1/enroll", json=late)  # a held-back request, delivered late
    assert (stale.status_code, stale.json()["error"]) == (401, "stale_request")
    _enroll_raw(kds, victim, token)  # the victim's own enrollment still goes through


def test_enrollment_is_rate_limited(kds: Kds) -> None:
    http = httpx.Client(
        transport=AsgiTransport(create_app(kds.service, enroll_per_minute=2)),
        base_url="http://testserver",
    )
    body = {
        "token_key": "",
        "member": "svc",
        "identity_public": "",
        "receive_public": "",
        "timestamp_ms": 0,
        "token_proof": "",
        "proof": "",
    }
    codes = [http.post("/v1/enroll", json=body).status_code for _ in range(3)]
    assert codes == [400, 400, 429]


def test_admin_needs_the_right_totp(kds: Kds) -> None:
    for code in ("000000", "", "12345x"):
        wrong = AdminClient(
            "http://testserver",
            kds.admin_identity,
            lambda c=code: c,  # type: ignore[misc]
            http=kds.http,
            clock=kds.clock,
        )
        with pytest.raises(Refused) as refused:
            wrong.create_topic("t")
        assert (refused.value.status, refused.value.code) == (401, "bad_totp")
    stale = auth.totp(kds.totp_secret).generate(int(kds.clock()) - 120).decode()
    late = AdminClient(
        "http://testserver", kds.admin_identity, lambda: stale, http=kds.http, clock=kds.clock
    )
    with pytest.raises(Refused, match="TOTP"):
        late.topics()
    actions = [a for (a,) in kds.store.engine.connect().execute(select(audit.c.action))]
    assert actions.count("admin.totp_refused") == 4
    assert kds.admin.topics() == []  # the right code works


def _admin_with(kds: Kds, code: Callable[[], str]) -> AdminClient:
    return AdminClient(
        "http://testserver", kds.admin_identity, code, http=kds.http, clock=kds.clock
    )


def test_a_totp_code_is_accepted_once(kds: Kds) -> None:
    code = kds.totp()
    once = _admin_with(kds, lambda: code)
    assert once.topics() == []
    with pytest.raises(Refused) as reused:
        once.topics()  # same code, new nonce, validly signed: RFC 6238 section 5.2 refuses it
    assert (reused.value.status, reused.value.code) == (401, "totp_reused")
    earlier = auth.totp(kds.totp_secret).generate(int(kds.totp_clock()) - 30).decode()
    with pytest.raises(Refused, match="used already"):  # inside the drift, but an older step
        _admin_with(kds, lambda: earlier).topics()
    assert kds.admin.topics() == []  # the next code works


def test_wrong_totp_codes_lock_the_admin_out_for_a_while(kds: Kds) -> None:
    wrong = _admin_with(kds, lambda: "000000" if kds.totp() != "000000" else "000001")
    for _ in range(5):
        with pytest.raises(Refused) as refused:
            wrong.topics()
        assert refused.value.code == "bad_totp"
    with pytest.raises(KeyServiceUnavailable, match="totp_locked") as locked:
        kds.admin.topics()  # even the right code, while locked out: 429
    assert "429" in str(locked.value)
    other_replica = KeyDistributionService(
        kds.store, kds.service.root, kds.service.master, clock=kds.clock, totp_clock=kds.totp_clock
    )
    with pytest.raises(ServiceError) as shared:  # the lockout lives in the database
        other_replica.check_totp(kds.admin_identity.name, kds.totp_secret, kds.totp())
    assert shared.value.code == "totp_locked"
    kds.clock.advance(61)
    assert kds.admin.topics() == []  # the lockout expired; success resets the count
    for _ in range(5):
        with pytest.raises(Refused):
            wrong.topics()
    kds.clock.advance(61)
    with pytest.raises(Refused):
        wrong.topics()  # a sixth wrong code in a row: locked again, twice as long
    kds.clock.advance(61)
    with pytest.raises(KeyServiceUnavailable, match="totp_locked"):
        kds.admin.topics()
    kds.clock.advance(60)
    assert kds.admin.topics() == []


def test_a_member_key_is_not_an_admin_key(kds: Kds) -> None:
    member = _enrolled(kds, "svc")
    impostor = AdminClient("http://testserver", member, kds.totp, http=kds.http, clock=kds.clock)
    with pytest.raises(Refused) as refused:
        impostor.create_token("evil")
    assert refused.value.status == 401


def test_oversized_bodies_are_refused(kds: Kds) -> None:
    response = kds.http.post(
        "/v1/enroll",
        content=b"{" + b" " * 70_000 + b"}",
        headers={"content-type": "application/json"},
    )
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


def _rewrite_audit(kds: Kds, drop: Callable[[int], bool]) -> None:
    """What someone with write access to the database (but not the root key) can do: drop
    entries, renumber and re-hash the rest, drop the checkpoints and fix up the head row."""
    with kds.store.engine.begin() as conn:
        rows = [r for r in conn.execute(select(audit).order_by(audit.c.seq)) if not drop(r.seq)]
        conn.execute(delete(audit))
        conn.execute(delete(audit_checkpoints))
        prev = GENESIS
        for seq, r in enumerate(rows, 1):
            prev = entry_hash(prev, seq, r.at_ms, r.actor, r.action, r.detail)
            conn.execute(
                insert(audit).values(
                    seq=seq,
                    at_ms=r.at_ms,
                    actor=r.actor,
                    action=r.action,
                    detail=r.detail,
                    hash=prev,
                )
            )
        conn.execute(update(heads).where(heads.c.name == "audit").values(seq=len(rows), hash=prev))


@pytest.mark.parametrize(
    "drop", [lambda seq: seq == 5, lambda seq: seq > 30], ids=["one entry", "the tail"]
)
def test_audit_rewritten_with_a_recomputed_chain_is_detected(
    kds: Kds, drop: Callable[[int], bool]
) -> None:
    for i in range(70):
        kds.service.record("test", "noted", i=i)
    assert kds.service.verify_audit().ok
    _rewrite_audit(kds, drop)
    report = kds.service.verify_audit()
    assert not report.ok, report


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
    other = KeyDistributionService(
        kds.store, kds.service.root, MasterKeyring.generate(), clock=kds.clock
    )
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


def _forged_under_the_identity_point(message: bytes) -> bytes:
    """A signature OpenSSL accepts for ``message`` under the small-order key 01 00..00 (the
    neutral point): with A = 0, s·B = R + k·A holds for R = r·B and s = r, whatever k is."""
    seed = os.urandom(32)
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] = (h[31] & 127) | 64
    r = int.from_bytes(h, "little") % (2**252 + 27742317777372353535851937790883648493)
    big_r = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return big_r + r.to_bytes(32, "little")


def test_small_order_identity_key_cannot_enroll(kds: Kds) -> None:
    """Enrollment accepted the neutral point as an identity key, with a proof anyone can forge:
    anyone could then sign requests as the member. Refused now (``weak_key``), before any
    certificate is issued."""
    neutral = b"\x01" + bytes(31)
    token = kds.admin.create_token("svc")
    receive = MemberIdentity.generate("svc", os.urandom).receive
    token_key = signing.token_key(token)
    token_public = token_key.public_key().public_bytes_raw()
    message = signing.enrollment_message(
        token_public, "svc", neutral, int(receive.suite), receive.public, kds.clock_ms()
    )
    proof = _forged_under_the_identity_point(message)
    Ed25519PublicKey.from_public_bytes(neutral).verify(proof, message)  # OpenSSL takes it
    body = {
        "token_key": base64.b64encode(token_public).decode(),
        "member": "svc",
        "identity_public": base64.b64encode(neutral).decode(),
        "receive_suite": "x25519",
        "receive_public": base64.b64encode(receive.public).decode(),
        "timestamp_ms": kds.clock_ms(),
        "token_proof": base64.b64encode(token_key.sign(message)).decode(),
        "proof": base64.b64encode(proof).decode(),
    }
    response = kds.http.post("/v1/enroll", json=body)
    assert (response.status_code, response.json()["error"]) == (400, "weak_key")
    assert kds.service.member_key("svc") is None


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_small_order_keys_are_refused_by_the_service(kds: Kds, point: bytes) -> None:
    with pytest.raises(ServiceError) as refused:
        kds.service.create_token("admin:test", "svc", [], 60_000, point)
    assert refused.value.code in (KdsCode.WEAK_KEY, KdsCode.INVALID_REQUEST)
    with pytest.raises(ServiceError) as refused:
        kds.service.enroll(point, "svc", point, Suite.X25519, bytes(32), kds.clock_ms(), b"", b"")
    assert refused.value.code is KdsCode.WEAK_KEY
