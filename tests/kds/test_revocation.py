"""Revocation that fails closed and stays small, enrollment tokens that never travel back,
re-enrollment that revokes, and a client that keeps KDS calls off the hot path (issue 8 items
1-4, 6, 9; issue 9 item 2; issue 15 item 2). Each test is named after the weakness it closes."""

from __future__ import annotations

import base64
import os
import threading
from typing import Any

import httpx
import msgpack
import pytest
from sqlalchemy import func, insert, select, update

from sealedbus import AccessDenied, KeyServiceUnavailable, Opener, Reason, Sealer
from sealedbus.core import wire
from sealedbus.core.signed import MAX_SIGNED_OBJECT, RevocationList
from sealedbus.errors import InvalidEnvelope, KdsCode, Refused, StaleRevocations
from sealedbus.kds.store import certificates, heads, members, nonces, revocations, tokens
from sealedbus.keys import signing
from sealedbus.keys.client import KeyServiceClient, enroll
from sealedbus.keys.identity import MemberIdentity

from ._harness import AsgiTransport, Kds, settle

HOUR_MS = 3_600_000


class Switch(httpx.BaseTransport):
    """Forwards to the KDS in mode "up"; "down" refuses connections, "error" answers 503.
    Records each request's path and the thread that made it."""

    def __init__(self, inner: httpx.BaseTransport, on_request: Any = None) -> None:
        self.inner = inner
        self.mode = "up"
        self.calls: list[tuple[str, str]] = []
        self.on_request = on_request
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.calls.append((request.url.path, threading.current_thread().name))
        if self.on_request is not None:
            self.on_request(request)
        if self.mode == "down":
            raise httpx.ConnectError("KDS down", request=request)
        if self.mode == "error":
            return httpx.Response(503, json={"error": "internal_error", "reason": "db down"})
        return self.inner.handle_request(request)

    def paths(self, prefix: str) -> list[str]:
        return [p for p, _ in self.calls if p.startswith(prefix)]


def member(kds: Kds, name: str, **options: Any) -> tuple[Switch, KeyServiceClient]:
    switch = Switch(AsgiTransport(kds.app), options.pop("on_request", None))
    http = httpx.Client(transport=switch, base_url="http://testserver")
    return switch, kds.member(name, http=http, **options)


# -- issue 8 item 1: a stale revocation list is not used for ever -------------------------------


@pytest.mark.parametrize("failure", ["down", "error"])
def test_revocation_list_older_than_its_maximum_age_is_refused_retryably(
    kds: Kds, failure: str
) -> None:
    """On KeyServiceUnavailable (any 5xx counted) the client kept its list with no age limit:
    a revoked producer's forgeries opened for as long as consumer-to-KDS traffic was cut."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    switch, client = member(kds, "c")
    opener = Opener(client, clock=kds.clock)
    opener.open("orders", sealer.seal("orders", b"warm the caches"))
    switch.mode = failure
    kds.clock.advance(149)  # default maximum age: 3 refresh intervals (30 s) + 60 s skew
    assert opener.open("orders", sealer.seal("orders", b"inside")).body == b"inside"
    kds.clock.advance(2)
    with pytest.raises(StaleRevocations) as stale:
        opener.open("orders", sealer.seal("orders", b"past the maximum age"))
    assert stale.value.retryable and isinstance(stale.value, KeyServiceUnavailable)
    assert not isinstance(stale.value, InvalidEnvelope)  # adapters requeue, never dead-letter
    switch.mode = "up"
    kds.clock.advance(6)  # past the outage backoff
    assert opener.open("orders", sealer.seal("orders", b"back")).body == b"back"


# -- issue 8 item 2: a revocation list that stays small -----------------------------------------


def _bulk_certificates(kds: Kds, name: str, count: int, *, first_serial: int) -> None:
    """``count`` hourly certificates of ``name`` ending now, straight into the store (issuing
    them through the service would sign each; only their rows matter here)."""
    now = kds.clock_ms()
    rows = [
        {
            "cert_id": os.urandom(16),
            "member": name,
            "serial": first_serial + i,
            "signed": b"bulk",
            "not_after_ms": now - (count - i) * HOUR_MS,
        }
        for i in range(count)
    ]
    with kds.store.write() as conn:
        conn.execute(insert(certificates), rows)


def test_revocation_list_of_ten_years_of_hourly_certificates_and_1000_revocations_is_small(
    kds: Kds,
) -> None:
    """Removals listed every certificate a member ever had, again on each removal; past 1 MiB
    the KDS could neither serve the list nor revoke (500). Entries are now per member (and
    topic) up to a certificate serial, so the size follows revocations, not certificates."""
    hourly_ten_years = 10 * 365 * 24
    with kds.store.write() as conn:
        conn.execute(update(heads).where(heads.c.name == "serial").values(seq=200_000))
    kds.admin.create_topic("orders", producers=["veteran"], consumers=["c"])
    veteran = Sealer(kds.member("veteran"), clock=kds.clock)
    _bulk_certificates(kds, "veteran", hourly_ten_years, first_serial=1)
    for _ in range(5):  # removed and added back, each time with its whole history
        kds.admin.set_policy("orders", producers=[])
        kds.admin.set_policy("orders", producers=["veteran"])
    names = [f"retired-{i:04d}" for i in range(1000)]
    with kds.store.write() as conn:
        conn.execute(
            insert(members),
            [
                {
                    "name": n,
                    "identity_public": os.urandom(32),
                    "receive_suite": 1,
                    "receive_public": os.urandom(32),
                    "roles": "[]",
                    "revoked": False,
                    "enrolled_ms": kds.clock_ms(),
                }
                for n in names
            ],
        )
    for i, name in enumerate(names):
        kds.service.revoke("admin:test", name, compromised=i % 2 == 0)
    signed = kds.service.revocation_list()
    listed = RevocationList.verify(signed, kds.service.root_public)
    print(
        f"\nrevocation list: {len(signed)} bytes for {hourly_ten_years} hourly certificates, "
        f"5 removals and {len(names)} revocations ({len(signed) / MAX_SIGNED_OBJECT:.1%} of "
        "the 1 MiB limit)"
    )
    assert len(signed) < MAX_SIGNED_OBJECT // 10
    assert len(listed.members) == 1000 and len(listed.withdrawn) == 1
    _, client = member(kds, "c")
    assert client.revocations(kds.clock_ms()).serial == listed.serial  # served and verified
    with kds.store.read() as conn:  # only the latest list is stored
        assert conn.execute(select(func.count()).select_from(revocations)).scalar() == 1
    veteran.seal("orders", b"the veteran still produces")


def test_revocation_entries_are_pruned_once_nothing_they_cover_can_open(kds: Kds) -> None:
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"], rotation=3600)
    Sealer(kds.member("p"), clock=kds.clock).seal("orders", b"x")
    kds.admin.revoke("p")
    held = RevocationList.verify(kds.service.revocation_list(), kds.service.root_public)
    assert [m for m, _, _ in held.members] == ["p"]
    kds.clock.advance(8 * 86_400)  # certificate (1 h) + rotation + retention (7 d), no margin
    assert kds.service.prune_revocations() == 0
    kds.clock.advance(86_400 + 3600)
    kds.service.tick("test")  # prunes (then hourly)
    held = RevocationList.verify(kds.service.revocation_list(), kds.service.root_public)
    assert held.members == ()


# -- issue 8 item 3: the enrollment token never travels from the KDS ----------------------------


def test_enrollment_token_is_made_by_the_admin_client_and_never_sent_back(kds: Kds) -> None:
    """The KDS generated the token and returned it in clear: a TLS-terminating proxy or an
    HTTP log between admin and KDS could enroll in the member's place."""
    token, token_public = signing.new_token()
    doc = kds.admin._call(
        "POST",
        "/v1/admin/tokens",
        {"member": "svc", "token_key": base64.b64encode(token_public).decode()},
    )
    assert doc == {"expires_in": 900}
    with kds.store.read() as conn:
        stored = conn.execute(select(tokens.c.token_hash).where(tokens.c.member == "svc")).all()
    assert [bytes(r.token_hash) for r in stored] == [token_public]
    identity = MemberIdentity.generate("svc", os.urandom)
    cert = enroll(
        "http://testserver", identity, token, kds.root_fingerprint, http=kds.http, clock=kds.clock
    )
    assert cert.member == "svc"
    with pytest.raises(Refused) as missing:  # a request without the key is refused
        kds.admin._call("POST", "/v1/admin/tokens", {"member": "other"})
    assert missing.value.status == 422


# -- issue 8 item 4 and issue 15 item 2: re-enrollment ------------------------------------------


def _enroll(kds: Kds, name: str, **options: Any) -> MemberIdentity:
    identity = MemberIdentity.generate(name, os.urandom)
    token = kds.admin.create_token(name)
    enroll(
        "http://testserver",
        identity,
        token,
        kds.root_fingerprint,
        http=kds.http,
        clock=kds.clock,
        **options,
    )
    return identity


def test_reenrolling_a_name_is_refused_unless_asked_to_replace(kds: Kds) -> None:
    """A second enrollment replaced the member's keys silently; the first key file then got
    "request signature does not verify", which reads like tampering."""
    kds.admin.create_topic("orders", producers=["svc"], consumers=["c"])
    first = kds.member("svc")
    sealer = Sealer(first, clock=kds.clock)
    before = sealer.seal("orders", b"sent with the first key")
    with pytest.raises(Refused) as refused:
        _enroll(kds, "svc")
    assert (refused.value.status, refused.value.code) == (409, "member_enrolled")
    assert refused.value.reason is KdsCode.MEMBER_ENROLLED
    assert "--replace" in refused.value.detail
    kds.clock.advance(5)
    second = kds.client(_enroll(kds, "svc", replace=True))
    with pytest.raises(AccessDenied, match="key replaced by a later enrollment"):
        first.identity(kds.clock_ms(), refresh=True)
    opener = Opener(kds.member("c"), clock=kds.clock)
    assert opener.open("orders", before).body == b"sent with the first key"  # retired, not lost
    after = Sealer(second, clock=kds.clock).seal("orders", b"second key")
    assert opener.open("orders", after).sender == "svc"


def test_reenrolling_for_key_compromise_revokes_everything_the_old_key_signed(kds: Kds) -> None:
    """Re-keying after a suspected exposure left the old certificates valid: the old key kept
    signing until they expired, and could backdate into any cached epoch."""
    kds.admin.create_topic("orders", producers=["svc"], consumers=["c"])
    before = Sealer(kds.member("svc"), clock=kds.clock).seal("orders", b"maybe forged")
    kds.clock.advance(5)
    _enroll(kds, "svc", replace=True, compromised=True)
    opener = Opener(kds.member("c"), clock=kds.clock)
    with pytest.raises(InvalidEnvelope) as refused:
        opener.open("orders", before)
    assert refused.value.reason is Reason.SENDER_REVOKED


def test_replace_mode_is_signed_so_a_proxy_cannot_soften_a_compromise(kds: Kds) -> None:
    identity = MemberIdentity.generate("svc", os.urandom)
    kds.member("svc")
    token, token_public = signing.new_token()
    kds.admin._call(
        "POST",
        "/v1/admin/tokens",
        {"member": "svc", "token_key": base64.b64encode(token_public).decode()},
    )
    now = kds.clock_ms()
    message = signing.enrollment_message(
        token_public, "svc", identity.identity_public, 1, identity.receive.public, now, 2
    )
    body = {
        "token_key": base64.b64encode(token_public).decode(),
        "member": "svc",
        "identity_public": base64.b64encode(identity.identity_public).decode(),
        "receive_public": base64.b64encode(identity.receive.public).decode(),
        "timestamp_ms": now,
        "token_proof": base64.b64encode(signing.token_key(token).sign(message)).decode(),
        "proof": base64.b64encode(identity.signing_key.sign(message)).decode(),
        "replace": 1,  # signed as 2 (compromise), sent as 1 (retirement)
    }
    response = kds.http.post("/v1/enroll", json=body)
    assert response.status_code == 400 and response.json()["error"] == "bad_enrollment"


# -- issue 8 item 6: junk envelopes -----------------------------------------------------------


def test_signed_reads_cost_no_database_write(kds: Kds) -> None:
    """Each signed request inserted a nonce row, so one junk envelope cost a KDS write."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    _, client = member(kds, "c")
    client.revocations(kds.clock_ms())
    with kds.store.read() as conn:
        before = conn.execute(select(func.count()).select_from(nonces)).scalar()
    for i in range(10):
        assert client.sender_certificate(bytes([i]) * 16, kds.clock_ms()) is None
    with kds.store.read() as conn:
        assert conn.execute(select(func.count()).select_from(nonces)).scalar() == before


def test_a_replayed_signed_read_is_still_refused(kds: Kds) -> None:
    identity = _enroll(kds, "c")
    headers = signing.sign_request(
        identity.signing_key, "c", "GET", b"/v1/revocations", b"", kds.clock_ms(), os.urandom(16)
    )
    first = kds.http.get("/v1/revocations", headers=headers)
    again = kds.http.get("/v1/revocations", headers=headers)
    assert first.status_code == 200
    assert (again.status_code, again.json()["error"]) == (401, "replayed_request")


def test_junk_certificate_ids_are_looked_up_at_a_bounded_rate(kds: Kds) -> None:
    """Envelopes with fresh random certificate ids each made the consumer ask the KDS."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    good = Sealer(kds.member("p"), clock=kds.clock).seal("orders", b"x")
    switch, client = member(kds, "c", certificate_lookup_burst=20)
    opener = Opener(client, clock=kds.clock)
    start = wire.HEADER_HEAD.size - wire.SESSION_ID_LEN - 16
    refused, unavailable = 0, 0
    for _ in range(100):
        junk = good[:start] + os.urandom(16) + good[start + 16 :]
        try:
            opener.open("orders", junk)
        except InvalidEnvelope as exc:
            assert exc.reason is Reason.UNKNOWN_SENDER
            refused += 1
        except KeyServiceUnavailable as exc:
            assert exc.retryable and "look-ups over the limit" in str(exc)
            unavailable += 1
    assert len(switch.paths("/v1/certificates/")) == refused == 20
    assert unavailable == 80
    kds.clock.advance(2)  # 5 look-ups a second come back
    assert opener.open("orders", good).body == b"x"


# -- issue 8 item 9: a producer's stale view of the epoch ---------------------------------------


def test_a_producer_cut_off_from_the_kds_stops_after_its_maximum_epoch_staleness(
    kds: Kds,
) -> None:
    """Rotation on revocation does not shorten the old epoch: a producer that could not reach
    the KDS sealed to it for up to a rotation period, readable by the revoked consumer."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"], rotation=3600)
    switch, client = member(kds, "p", max_epoch_staleness=300)
    sealer = Sealer(client, clock=kds.clock)
    sealer.seal("orders", b"warm")
    switch.mode = "down"
    kds.clock.advance(299)
    sealer.seal("orders", b"inside the bound")
    kds.clock.advance(2)
    with pytest.raises(KeyServiceUnavailable):
        sealer.seal("orders", b"too stale")
    switch.mode = "up"
    kds.clock.advance(6)
    sealer.seal("orders", b"refreshed")


# -- issue 9 item 2: the outage backoff -------------------------------------------------------


def test_the_outage_backoff_runs_from_when_the_failure_is_known(kds: Kds) -> None:
    """The backoff started with the request: after a 5 s timeout a 5 s backoff had already
    run out, so every message waited a full timeout again."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])

    def slow_failure(request: httpx.Request) -> None:
        # the request times out 5 s after it started (only this one: the client's background
        # requests, such as the audit head, must not move the test's clock)
        if switch.mode == "down" and request.url.path.endswith("/sealing-epoch"):
            kds.clock.advance(5)

    switch, client = member(kds, "p", outage_backoff=5, on_request=slow_failure)
    client.identity(kds.clock_ms())
    settle()  # the client's first background requests (audit head) are done before the outage
    switch.mode = "down"
    for _ in range(2):
        with pytest.raises(KeyServiceUnavailable):
            client.sealing_epoch("orders", kds.clock_ms())
    assert len(switch.paths("/v1/topics/orders/sealing-epoch")) == 1


# -- issue 8, last round's notes: the flaky process test across rotations -----------------------


def test_an_epoch_that_starts_while_the_request_is_in_flight_is_accepted(kds: Kds) -> None:
    """A producer asked for the sealing epoch just before a rotation; on a busy machine the KDS
    answered after it, with the new epoch only, and the client (checking the window at the
    time it asked) refused the answer as "epoch whose window does not contain now"."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"], rotation=10)

    def delayed(request: httpx.Request) -> None:
        if "sealing-epoch" in request.url.path:
            kds.clock.advance(0.05)  # the request takes 50 ms

    _, client = member(kds, "p", on_request=delayed)
    client.identity(kds.clock_ms())
    kds.clock.advance(10 - 0.01)  # 10 ms before epoch 0 ends; nothing cached for the topic
    description = client.sealing_epoch("orders", kds.clock_ms())
    assert description.epoch == 1
    settle()


def test_a_revocation_list_stored_in_the_old_format_still_revokes(kds: Kds) -> None:
    """A database written before revocation by serial holds a list of certificate ids: it
    must keep refusing what it refused, not make every revocation call fail."""
    kds.admin.create_topic("orders", producers=["p", "q"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    envelope = sealer.seal("orders", b"x")
    Sealer(kds.member("q"), clock=kds.clock).seal("orders", b"y")
    cert_id = wire.parse(envelope).header.cert_id
    body = msgpack.packb([1, kds.clock_ms(), 4, [cert_id], ["gone"], []], use_bin_type=True)
    root = kds.service.root
    legacy = msgpack.packb([body, root.sign(RevocationList.LABEL + body)], use_bin_type=True)
    with kds.store.write() as conn:
        conn.execute(insert(revocations).values(serial=4, signed=legacy))
    listed = RevocationList.verify(kds.service.revocation_list(), kds.service.root_public)
    assert {m for m, _, _ in listed.members} == {"p", "gone"}
    opener = Opener(kds.member("c"), clock=kds.clock)
    with pytest.raises(InvalidEnvelope) as refused:
        opener.open("orders", envelope)
    assert refused.value.reason is Reason.SENDER_REVOKED
    kds.admin.revoke("q")  # and revoking goes on from it
    listed = RevocationList.verify(kds.service.revocation_list(), kds.service.root_public)
    assert {m for m, _, _ in listed.members} == {"p", "gone", "q"}


def test_a_newer_answer_that_lands_first_does_not_fail_the_seal(kds: Kds) -> None:
    """A background refresh and a caller's fetch in flight together: when the caller's answer
    (older) arrives after the refresh stored a newer epoch, the rollback guard refused it and
    the seal failed; now the newer epoch is used (and the older answer is still not stored)."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    client: KeyServiceClient | None = None

    class LateAnswer(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner
            self.armed = False

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = self.inner.handle_request(request)
            if self.armed and "sealing-epoch" in request.url.path:
                self.armed = False
                kds.service.rotate("admin:test", "orders")
                assert client is not None
                client._fetch_sealing_epoch("orders", kds.clock_ms())  # lands first
            return response

    transport = LateAnswer(AsgiTransport(kds.app))
    client = kds.member("p", http=httpx.Client(transport=transport, base_url="http://testserver"))
    assert client.sealing_epoch("orders", kds.clock_ms()).epoch == 0
    transport.armed = True
    assert client._fetch_sealing_epoch("orders", kds.clock_ms()).epoch == 1
    assert client.sealing_epoch("orders", kds.clock_ms()).epoch == 1


def test_a_database_from_before_max_age_gets_the_column_with_the_default(kds: Kds) -> None:
    """create_all adds missing tables, not columns: an existing database must still serve."""
    kds.admin.create_topic("orders", producers=["p"], consumers=["c"])
    with kds.store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE topics DROP COLUMN max_age_ms")
    kds.store.create_schema()
    assert kds.service.topic("orders").max_age_ms == 86_400_000
