"""Per-subject erasure through the network KDS (SPEC.md 4.5, 6.9-6.11): producers get subject
public keys, consumers subject key grants, an admin erases a subject (TOTP, audited), and the
subject id is found nowhere in the database or the audit log."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from sealedbus import Opener, Reason, Sealer
from sealedbus.core import wire
from sealedbus.core.signed import SubjectKey
from sealedbus.errors import AccessDenied, InvalidEnvelope, KdsCode, Refused, UntrustedResponse
from sealedbus.kds import cli as kds_cli
from sealedbus.kds import store as rows
from sealedbus.kds.context import ServiceError
from sealedbus.keys import keyfiles
from sealedbus.ops.cli import main

from ._harness import AsgiTransport, Kds

SUBJECT = "patient-4711"


def _key_id(envelope: bytes) -> bytes:
    return wire.parse(envelope).header.subject_key_id


def _refused(call: object, reason: Reason) -> None:
    with pytest.raises(InvalidEnvelope) as info:
        call()  # type: ignore[operator]
    assert info.value.reason is reason, info.value


def _dump(kds: Kds) -> bytes:
    """Every byte of every row of every table (what someone reading the database sees)."""
    out = b""
    with kds.store.read() as conn:
        for table in rows.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                out += repr(tuple(row)).encode()
    return out


def test_seal_open_erase_through_the_kds(kds: Kds) -> None:
    kds.admin.create_topic("ehr", producers=["p"], consumers=["c", "c2"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    consumer = kds.member("c")
    opener = Opener(consumer, clock=kds.clock)
    mine = sealer.seal("ehr", b"lab result", subject=SUBJECT)
    other = sealer.seal("ehr", b"other", subject="patient-1")
    opened = opener.open("ehr", mine)
    assert (opened.body, opened.subject_key_id) == (b"lab result", _key_id(mine))

    erased = kds.admin.erase_subject("ehr", SUBJECT)
    assert erased == _key_id(mine).hex()
    fresh = Opener(kds.member("c2"), clock=kds.clock)  # never held the key
    _refused(lambda: fresh.open("ehr", mine), Reason.SUBJECT_ERASED)
    assert fresh.open("ehr", other).body == b"other"
    kds.clock.advance(61)  # the first consumer's cache expires too
    _refused(lambda: Opener(consumer, clock=kds.clock).open("ehr", mine), Reason.SUBJECT_ERASED)
    _refused(
        lambda: consumer.subject_private_key("ehr", _key_id(mine), kds.clock_ms()),
        Reason.SUBJECT_ERASED,
    )
    with pytest.raises(Refused) as info:  # over HTTP: 410 with its own code
        consumer._http.call("GET", f"/v1/topics/ehr/subjects/{_key_id(mine).hex()}/grant")
    assert (info.value.status, info.value.reason) == (410, KdsCode.SUBJECT_ERASED)


def test_refusals(kds: Kds) -> None:
    kds.admin.create_topic("ehr", producers=["p"], consumers=["c"])
    producer, consumer, outsider = kds.member("p"), kds.member("c"), kds.member("o")
    env = Sealer(producer, clock=kds.clock).seal("ehr", b"x", subject=SUBJECT)
    # the producer cannot open it, nor fetch the subject's private key
    _refused(lambda: Opener(producer, clock=kds.clock).open("ehr", env), Reason.NOT_GRANTED)
    _refused(
        lambda: producer.subject_private_key("ehr", _key_id(env), kds.clock_ms()),
        Reason.NOT_GRANTED,
    )
    # a member that does not consume the topic: not_granted, as for epochs
    _refused(
        lambda: outsider.subject_private_key("ehr", _key_id(env), kds.clock_ms()),
        Reason.NOT_GRANTED,
    )
    # a consumer may not ask for subject keys to seal with
    with pytest.raises(AccessDenied):
        consumer.subject_key("ehr", SUBJECT, kds.clock_ms())
    # an id never issued: the envelope was altered
    _refused(
        lambda: consumer.subject_private_key("ehr", bytes(16), kds.clock_ms()),
        Reason.BAD_SIGNATURE,
    )
    assert Opener(consumer, clock=kds.clock).open("ehr", env).body == b"x"


def test_erasure_makes_a_fresh_key_and_is_audited_without_the_subject(kds: Kds) -> None:
    kds.admin.create_topic("ehr", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock, subject_cache_ttl=0)
    first = sealer.seal("ehr", b"1", subject=SUBJECT)
    assert _key_id(sealer.seal("ehr", b"2", subject=SUBJECT)) == _key_id(first)
    assert kds.admin.erase_subject("ehr", SUBJECT) == _key_id(first).hex()
    assert kds.admin.erase_subject("ehr", SUBJECT) is None  # nothing left to erase
    again = sealer.seal("ehr", b"3", subject=SUBJECT)
    assert _key_id(again) != _key_id(first)
    assert Opener(kds.member("c"), clock=kds.clock).open("ehr", again).body == b"3"
    dump = _dump(kds)
    assert SUBJECT.encode() not in dump  # not in any table: keys, tombstones, audit
    with kds.store.read() as conn:
        actions = [
            (r.action, r.detail)
            for r in conn.execute(select(rows.audit).order_by(rows.audit.c.seq))
            if r.action.startswith("subject.")
        ]
        tombstone = rows.subject_by_id(conn, "ehr", _key_id(first))
    assert [a for a, _ in actions] == [
        "subject.created",
        "subject.erased",
        "subject.erased",
        "subject.created",
        "subject.granted",
    ]
    assert _key_id(first).hex() in actions[1][1]
    assert tombstone is not None
    assert (tombstone.token, tombstone.public, tombstone.wrapped) == (None, None, None)
    assert kds.service.verify_audit().ok


def test_store_erases_every_subject_of_a_topic(kds: Kds) -> None:
    """The store-level function a topic shred calls: every subject key of the topic goes."""
    kds.admin.create_topic("ehr", producers=["p"], consumers=["c"])
    kds.admin.create_topic("lab", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    ehr = [sealer.seal("ehr", b"e", subject=f"s{i}") for i in range(3)]
    lab = sealer.seal("lab", b"l", subject="s0")
    with kds.store.write() as conn:
        assert rows.erase_topic_subjects(conn, "ehr", kds.clock_ms()) == 3
        assert rows.erase_topic_subjects(conn, "ehr", kds.clock_ms()) == 0
    opener = Opener(kds.member("c"), clock=kds.clock)
    for env in ehr:
        _refused(lambda env=env: opener.open("ehr", env), Reason.SUBJECT_ERASED)
    assert opener.open("lab", lab).body == b"l"


def test_master_key_rotation_rewraps_subject_keys(kds: Kds) -> None:
    kds.admin.create_topic("ehr", producers=["p"], consumers=["c"])
    env = Sealer(kds.member("p"), clock=kds.clock).seal("ehr", b"x", subject=SUBJECT)
    old = kds.service.master.current
    kds.service.master = kds.service.master.with_new_key()
    assert old in kds.service.master_keys_in_use()
    assert kds.service.rewrap() >= 1
    assert old not in kds.service.master_keys_in_use()
    assert Opener(kds.member("c"), clock=kds.clock).open("ehr", env).body == b"x"


@pytest.fixture
def served(kds: Kds, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The in-process KDS behind every httpx.Client the CLI makes; yields the admin key file."""
    kds.clock.now = time.time()  # the CLI signs requests with the real time
    transport = AsgiTransport(kds.app)

    class Shared(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return transport.handle_request(request)

    real_client = httpx.Client
    monkeypatch.setattr(
        httpx, "Client", lambda **o: real_client(base_url=o["base_url"], transport=Shared())
    )
    for name in (kds_cli.FINGERPRINT_ENV, kds_cli.TOTP_ENV, kds_cli.URL_ENV):
        monkeypatch.delenv(name, raising=False)
    key = tmp_path / "admin.key"
    keyfiles.write_secret(key, kds.admin_identity.to_bytes())
    yield key
    monkeypatch.undo()
    transport.close()


def _erasures(kds: Kds) -> int:
    with kds.store.read() as conn:
        return len(
            conn.execute(select(rows.audit).where(rows.audit.c.action == "subject.erased")).all()
        )


def test_admin_subject_erase_cli(
    kds: Kds, served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kds.admin.create_topic("ehr", producers=["p"], consumers=["c"])
    env = Sealer(kds.member("p"), clock=kds.clock).seal("ehr", b"x", subject=SUBJECT)
    args = ["admin", "--url", "http://kds.test", "--key", str(served), "--totp"]
    assert main([*args, kds.totp(), "subject", "erase", "ehr", SUBJECT]) == 0
    out, _ = capsys.readouterr()
    assert f"erased subject key {_key_id(env).hex()} on ehr" in out
    assert SUBJECT not in out
    assert main([*args, kds.totp(), "subject", "erase", "ehr", SUBJECT]) == 0
    assert "nothing to erase" in capsys.readouterr().out
    assert _erasures(kds) == 2
    # without a valid second factor nothing is erased and nothing is audited
    assert main([*args, "000000", "subject", "erase", "ehr", "patient-1"]) != 0
    assert "bad_totp" in capsys.readouterr().err
    assert _erasures(kds) == 2


class _Rewrite(httpx.BaseTransport):
    """Forwards to the KDS; replaces the subject key in answers with what ``swap`` makes."""

    def __init__(self, inner: httpx.BaseTransport, swap: Callable[[bytes], bytes]) -> None:
        self.inner, self.swap = inner, swap

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/subject-key") or response.status_code != 200:
            return response
        doc = json.loads(response.content)
        doc["subject_key"] = base64.b64encode(
            self.swap(base64.b64decode(doc["subject_key"]))
        ).decode()
        return httpx.Response(200, json=doc)


@pytest.mark.parametrize("attack", ["other topic", "flipped byte", "small-order key"])
def test_a_substituted_subject_key_is_untrusted(kds: Kds, attack: str) -> None:
    """Between producer and KDS nobody can substitute a subject key: the producer would seal
    to a key the attacker holds."""
    kds.admin.create_topic("ehr", producers=["p"], consumers=["c"])
    root = kds.service.root

    def swap(signed: bytes) -> bytes:
        key = SubjectKey.verify(signed, root.public_key())
        if attack == "other topic":
            return SubjectKey("lab", key.subject_key_id, key.public_key, key.issued_at_ms).sign(
                root
            )
        if attack == "small-order key":
            return SubjectKey("ehr", key.subject_key_id, bytes(32), key.issued_at_ms).sign(root)
        return signed[:-1] + bytes([signed[-1] ^ 1])

    http = httpx.Client(
        transport=_Rewrite(AsgiTransport(kds.app), swap), base_url=kds.http.base_url
    )
    sealer = Sealer(kds.member("p", http=http), clock=kds.clock)
    with pytest.raises(UntrustedResponse):
        sealer.seal("ehr", b"x", subject=SUBJECT)


def test_topic_shred_destroys_the_topics_subject_keys(kds: Kds) -> None:
    """A shred (kds/evidence.py) runs the subject-key destroyer in its transaction: a grant for
    a subject key of the shredded topic is refused as erased, another topic's still answers."""
    kds.admin.create_topic("ehr", producers=["p"], consumers=["c"])
    kds.admin.create_topic("lab", producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"), clock=kds.clock)
    kds.member("c")  # enrolled: its certificate is what a grant is sealed to
    ehr = _key_id(sealer.seal("ehr", b"e", subject=SUBJECT))
    lab = _key_id(sealer.seal("lab", b"l", subject=SUBJECT))
    shredded = kds.service.shred_topic("admin", "ehr")
    assert shredded.other == {"subject_keys": 1}
    with pytest.raises(ServiceError) as info:
        kds.service.subject_grant("c", "ehr", ehr)
    assert info.value.code is KdsCode.SUBJECT_ERASED
    assert kds.service.subject_grant("c", "lab", lab)
    assert b"patient" not in _dump(kds)
