"""Evidence that survives a rollback of the KDS database: the published audit head, clients that
refuse a KDS whose head goes backwards, ``admin audit verify --expect-head``, the JSON-lines
export and clients' reports of messages they could not open."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from sealedbus import Opener, Sealer
from sealedbus.errors import AuditRollback, UntrustedResponse
from sealedbus.kds import audit, evidence
from sealedbus.kds.store import GENESIS
from sealedbus.kds.store import audit as audit_table
from sealedbus.keys import keyfiles
from sealedbus.ops.cli import main

from ._harness import AsgiTransport, Kds, roll_back_audit, settle, snapshot_audit


def test_a_client_refuses_a_kds_whose_audit_log_was_rolled_back(kds: Kds) -> None:
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    consumer = kds.member("c")
    opener = Opener(consumer, clock=kds.clock)
    envelope = sealer.seal("phi", b"x")
    settle()
    old = snapshot_audit(kds.store)
    first = consumer.audit_head(kds.clock_ms())
    assert opener.open("phi", envelope).body == b"x"  # a grant: one more audit entry
    settle()
    seen = consumer.audit_head(kds.clock_ms())
    assert seen.sequence > first.sequence

    roll_back_audit(kds.store, old)
    assert kds.service.verify_audit().ok  # the old copy is a consistent chain: only anchors tell
    with pytest.raises(AuditRollback, match="went backwards"):
        consumer.audit_head(kds.clock_ms())
    # refused for good, cached keys included: no opening, no sealing with that KDS
    for call in (
        lambda: consumer.revocations(kds.clock_ms()),
        lambda: consumer.epoch_keys("phi", 0, kds.clock_ms()),
        lambda: Opener(consumer, clock=kds.clock).open("phi", envelope),
    ):
        with pytest.raises(AuditRollback):
            call()
    assert consumer.highest_audit_head == seen


def test_a_client_refuses_a_fork_at_the_sequence_it_saw(kds: Kds) -> None:
    """Rolled back and rewritten to the same length: the same sequence, another hash."""
    consumer = kds.member("c")
    old = snapshot_audit(kds.store)
    kds.service.record("test", "the.truth")
    seen = consumer.audit_head(kds.clock_ms())
    roll_back_audit(kds.store, old)
    kds.service.record("test", "a.rewrite")
    assert kds.service.verify_audit().ok
    with pytest.raises(AuditRollback, match=f"published {seen.sequence} "):
        consumer.audit_head(kds.clock_ms())


def test_the_periodic_refresh_fetches_the_head_and_finds_a_rollback(kds: Kds) -> None:
    consumer = kds.member("c", audit_head_refresh=30)
    old = snapshot_audit(kds.store)
    kds.service.record("test", "something")
    consumer.revocations(kds.clock_ms())  # every open asks this: the head is fetched too
    settle()
    assert consumer.highest_audit_head is not None
    roll_back_audit(kds.store, old)
    consumer.revocations(kds.clock_ms())  # not due yet: no request
    settle()
    kds.clock.advance(31)
    consumer.revocations(kds.clock_ms())  # due: fetched in the background
    settle()
    with pytest.raises(AuditRollback):
        consumer.revocations(kds.clock_ms())


def test_a_forged_or_replayed_audit_head_is_refused(kds: Kds) -> None:
    consumer = kds.member("c")
    genuine = consumer.audit_head(kds.clock_ms())
    signed = kds.admin.audit_head()
    forged = bytearray(signed)
    forged[-1] ^= 1

    def answer(head: bytes) -> httpx.Client:
        inner = kds.http._transport

        def handle(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/audit/head":
                import base64

                return httpx.Response(200, json={"head": base64.b64encode(head).decode()})
            return inner.handle_request(request)

        return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://testserver")

    with pytest.raises(UntrustedResponse, match="does not verify"):
        kds.client(consumer._identity, http=answer(bytes(forged))).audit_head(kds.clock_ms())
    kds.clock.advance(600)  # a genuine head, replayed later: it could hide a rollback
    with pytest.raises(UntrustedResponse, match="not fresh"):
        kds.client(consumer._identity, http=answer(signed)).audit_head(kds.clock_ms())
    assert genuine.sequence >= 0


# -- the admin side: head, verify --expect-head, export ---------------------------------------


class _Shared(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)


@pytest.fixture
def cli_admin(kds: Kds, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[str]]:
    """The in-process KDS behind every httpx.Client the CLI makes; yields the admin arguments
    up to the action (an admin session, so one code serves every command)."""
    kds.clock.now = time.time()  # the CLI signs requests with the real time
    transport = AsgiTransport(kds.app)
    real_client = httpx.Client
    monkeypatch.setattr(
        httpx,
        "Client",
        lambda **o: real_client(base_url=o["base_url"], transport=_Shared(transport)),
    )
    key = tmp_path / "admin.key"
    keyfiles.write_secret(key, kds.admin_identity.to_bytes())
    base = ["admin", "--url", "http://kds.test", "--key", str(key)]
    base += ["--root-fingerprint", kds.root_fingerprint]
    session = tmp_path / "admin.session"
    assert main([*base, "--totp", kds.totp(), "session", "open", "--out", str(session)]) == 0
    yield [*base, "--session", str(session)]
    monkeypatch.undo()
    transport.close()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_verify_expect_head_detects_a_rollback_and_a_fork(
    kds: Kds, cli_admin: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"])
    old = snapshot_audit(kds.store)
    kds.admin.rotate("phi")
    code, out, err = run(capsys, *cli_admin, "audit", "head")
    assert code == 0, err
    saved = tmp_path / "head.json"
    saved.write_text(out)
    doc = json.loads(out)
    assert doc["root_fingerprint"] == kds.root_fingerprint and doc["sequence"] > 0

    kds.service.record("test", "later")  # the chain grows: still holds the saved head
    code, out, err = run(capsys, *cli_admin, "audit", "verify", "--expect-head", str(saved))
    assert code == 0 and json.loads(out)["ok"] is True, err

    snap_later = snapshot_audit(kds.store)
    roll_back_audit(kds.store, old)  # before the saved head
    code, out, err = run(capsys, *cli_admin, "audit", "verify", "--expect-head", str(saved))
    assert code == 1 and "rolled back" in json.loads(out)["problem"], out
    code, out, _ = run(capsys, *cli_admin, "audit", "verify")  # without the anchor: looks fine
    assert code == 0 and json.loads(out)["ok"] is True

    # rolled back, then grown past the saved sequence with other entries: a fork
    while kds.service.verify_audit().entries <= doc["sequence"]:
        kds.service.record("test", "rewritten")
    code, out, err = run(capsys, *cli_admin, "audit", "verify", "--expect-head", str(saved))
    assert code == 1 and "fork" in json.loads(out)["problem"], out
    roll_back_audit(kds.store, snap_later)
    code, out, err = run(capsys, *cli_admin, "audit", "verify", "--expect-head", str(saved))
    assert code == 0, out + err


def test_verify_refuses_a_forged_head_file(
    kds: Kds, cli_admin: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, *cli_admin, "audit", "head")
    doc = json.loads(out)
    import base64

    signed = bytearray(base64.b64decode(doc["head"]))
    signed[-1] ^= 1
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**doc, "head": base64.b64encode(bytes(signed)).decode()}))
    code, out, err = run(capsys, *cli_admin, "audit", "verify", "--expect-head", str(forged))
    assert code == 1 and "not signed by this KDS's root key" in err and out == ""
    junk = tmp_path / "junk.json"
    junk.write_text("not json")
    code, _, err = run(capsys, *cli_admin, "audit", "verify", "--expect-head", str(junk))
    assert code == 2 and "not a head file" in err


def test_export_writes_json_lines_that_re_verify_the_chain(
    kds: Kds, cli_admin: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for i in range(3 * 500 // 2):  # more than two pages of the export
        kds.service.record("test", "filler", n=i)
    out_file = tmp_path / "audit.jsonl"
    code, out, err = run(capsys, *cli_admin, "audit", "export", "--output", str(out_file))
    assert code == 0, err
    assert out == "" and "exported" in err
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    total = kds.service.verify_audit().entries
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert len(lines) >= total - 2  # the session's own closing entries may follow
    prev = GENESIS
    for e in lines:
        detail = json.dumps(e["detail"], sort_keys=True, separators=(",", ":"))
        digest = audit.entry_hash(prev, e["seq"], e["at_ms"], e["actor"], e["action"], detail)
        assert bytes.fromhex(e["prev_hash"]) == prev and digest.hex() == e["hash"], e["seq"]
        prev = digest
    # resume: --since gives exactly the rest, chained to what was read
    code, out, err = run(capsys, *cli_admin, "audit", "export", "--since", "700")
    rest = [json.loads(line) for line in out.splitlines()]
    assert rest[0]["seq"] == 701 and rest[0]["prev_hash"] == lines[699]["hash"]
    # an altered line no longer chains
    lines[10]["detail"]["n"] = 999_999
    detail = json.dumps(lines[10]["detail"], sort_keys=True, separators=(",", ":"))
    e = lines[10]
    assert (
        audit.entry_hash(
            bytes.fromhex(e["prev_hash"]), e["seq"], e["at_ms"], e["actor"], e["action"], detail
        ).hex()
        != e["hash"]
    )


# -- clients' open-failure reports ----------------------------------------------------------


def open_failures(kds: Kds) -> list[dict[str, Any]]:
    with kds.store.read() as conn:
        rows = conn.execute(
            select(audit_table).where(audit_table.c.action == evidence.OPEN_FAILED)
        ).all()
    return [{"actor": r.actor, **json.loads(r.detail)} for r in rows]


def test_open_failure_reports_are_limited_per_member_on_the_server(kds: Kds) -> None:
    """A member that floods the report endpoint gets a bounded number of audit entries; what
    was dropped is counted into its next recorded report."""
    consumer = kds.member("c", failure_reports_per_second=1000, failure_report_burst=1000)
    http = consumer._http
    body = {"topic": "phi", "reason": "bad_signature", "sender": "00" * 16}
    answers = [http.call("POST", "/v1/audit/open-failures", body)["recorded"] for _ in range(50)]
    assert answers.count(True) == evidence.REPORT_RATE_PER_MINUTE
    assert answers[evidence.REPORT_RATE_PER_MINUTE :] == [False] * 20
    recorded = open_failures(kds)
    assert len(recorded) == evidence.REPORT_RATE_PER_MINUTE
    assert {r["actor"] for r in recorded} == {"member:c"}
    assert set(recorded[0]) == {"actor", "topic", "reason", "sender", "suppressed"}
    time.sleep(2.1)  # the server's bucket runs on the monotonic clock: one token a 2 s
    assert http.call("POST", "/v1/audit/open-failures", body)["recorded"] is True
    assert open_failures(kds)[-1]["suppressed"] == 20


def test_a_report_carries_no_payload_and_is_refused_when_malformed(kds: Kds) -> None:
    consumer = kds.member("c")
    http = consumer._http
    for bad in (
        {"topic": "phi", "reason": "bad_signature", "sender": "zz"},
        {"topic": "phi", "reason": "Bad Reason!", "sender": ""},
        {"topic": "phi", "reason": "bad_signature", "body": "the payload"},
    ):
        with pytest.raises(Exception, match="422"):
            http.call("POST", "/v1/audit/open-failures", bad)
    assert open_failures(kds) == []


def test_topic_shred_from_the_cli_prints_what_it_destroyed(
    kds: Kds, cli_admin: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    kds.admin.create_topic("phi", producers=["p"], consumers=["c"])
    Sealer(kds.member("p"), clock=kds.clock).seal("phi", b"x", subject="patient-1")
    code, out, err = run(capsys, *cli_admin, "topic", "shred", "phi")
    assert code == 0, err
    assert json.loads(out) == {
        "topic": "phi",
        "destroyed_epochs": [0],
        "other": {"subject_keys": 1},
        "fresh_epoch": 1,
    }
    code, _, err = run(capsys, *cli_admin, "topic", "shred", "no/such")
    assert code == 2 and "topic names use" in err  # refused before a code is spent


def test_head_fetches_answered_out_of_order_are_not_taken_for_a_rollback(kds: Kds) -> None:
    """A background fetch read from the database first but answered last must not look like a
    step back after a later fetch was answered: the client fetches one head at a time."""
    import threading

    captured, go = threading.Event(), threading.Event()
    inner = kds.http._transport
    held = [True]

    def handle(request: httpx.Request) -> httpx.Response:
        response = inner.handle_request(request)
        if request.url.path == "/v1/audit/head" and held[0]:
            held[0] = False
            captured.set()
            go.wait(10)  # answered late
        return response

    slow = httpx.Client(transport=httpx.MockTransport(handle), base_url="http://testserver")
    consumer = kds.member("c", http=slow)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            consumer.audit_head(kds.clock_ms())
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=fetch)
    first.start()
    assert captured.wait(10)
    kds.service.record("test", "meanwhile")
    second = threading.Thread(target=fetch)
    second.start()
    second.join(1)  # without the one-at-a-time rule it is answered now, before the first
    go.set()
    first.join(10)
    second.join(10)
    assert errors == []
    assert consumer.highest_audit_head is not None
    assert consumer.highest_audit_head.sequence == kds.service.verify_audit().entries


@pytest.mark.postgres
def test_a_client_refuses_a_rolled_back_kds_on_postgres(
    postgres_database: str, tmp_path: Path
) -> None:
    from ._harness import make_kds

    kds = make_kds(tmp_path, postgres_database)
    try:
        test_a_client_refuses_a_kds_whose_audit_log_was_rolled_back(kds)
    finally:
        for client in kds.clients:
            client.close()
        kds.http.close()
        kds.store.dispose()


def test_export_with_one_totp_code_pages_through_a_session_it_closes(
    kds: Kds, cli_admin: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A TOTP code is accepted once, and an export takes a request per page: without --session
    the export opens a short session with the code and closes it at the end."""
    for i in range(600):
        kds.service.record("test", "filler", n=i)
    with_code = [*cli_admin[: cli_admin.index("--session")], "--totp", kds.totp()]
    code, out, err = run(capsys, *with_code, "audit", "export")
    assert code == 0, err
    exported = [json.loads(line) for line in out.splitlines()]
    assert len(exported) > 600
    with kds.store.read() as conn:
        actions = list(conn.execute(select(audit_table.c.action)).scalars())
    assert actions.count("admin.session.opened") == 2  # the fixture's, and the export's
    assert actions[-1] == "admin.session.closed"
