"""Evidence on the real brokers with the real KDS client (issue 14). Consumers report what they
dead-letter to the KDS's audit log: one tampered message is one audit event with the dead
letter's reason and the sender's certificate id (nothing from the message), and a flood is rate
limited. A consumer that sees the KDS's audit head go backwards stops, dead-lettering nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from sealedbus.core import wire
from sealedbus.errors import AuditRollback
from sealedbus.kds import evidence
from sealedbus.kds.store import audit
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.brokers.drivers import WAIT, Driver
from tests.clock import Clock
from tests.kds._harness import Kds, roll_back_audit, running_kds, snapshot_audit

SENTINEL = b"sentinel"


@pytest.fixture
def kds(tmp_path: Path) -> Iterator[Kds]:
    with running_kds(tmp_path, Clock(time.time())) as k:  # brokers and sealers read the real clock
        yield k


def open_failures(kds: Kds, expect: int) -> list[dict[str, Any]]:
    """The open-failure audit entries once ``expect`` arrived (reports travel in the
    background), after a moment more for any that should not be there."""
    deadline = time.monotonic() + WAIT
    while True:
        with kds.store.read() as conn:
            rows = conn.execute(select(audit).where(audit.c.action == evidence.OPEN_FAILED)).all()
        if len(rows) >= expect or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    with kds.store.read() as conn:
        rows = conn.execute(select(audit).where(audit.c.action == evidence.OPEN_FAILED)).all()
    return [{"actor": r.actor, **json.loads(r.detail)} for r in rows]


def flip(data: bytes, i: int) -> bytes:
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


def test_a_tampered_message_is_one_audit_event_with_its_reason(kds: Kds, driver: Driver) -> None:
    topic = driver.new_topic()
    kds.admin.create_topic(topic, producers=["p"], consumers=["c"])
    sealer = Sealer(kds.member("p"))
    envelope = sealer.seal(topic, b"diagnosis: confidential")
    driver.send_raw(topic, flip(envelope, len(envelope) - 1), b"k")
    sender = driver.sender(topic, sealer)
    try:
        sender.send(SENTINEL, key=b"k")
    finally:
        sender.close()
    receiver = driver.receiver(topic, Opener(kds.member("c")))
    try:
        assert [g.body for g in receiver.take(1)] == [SENTINEL]
    finally:
        receiver.close()
    dead = driver.dead_letters(topic)
    assert len(dead) == 1
    reported = open_failures(kds, 1)
    assert reported == [
        {
            "actor": "member:c",
            "topic": topic,
            "reason": dead[0][0],
            "sender": wire.parse(envelope).header.cert_id.hex(),
            "suppressed": 0,
        }
    ]
    assert "confidential" not in json.dumps(reported)


@pytest.mark.rabbitmq
def test_a_flood_of_bad_messages_is_reported_at_the_clients_rate(
    kds: Kds, rabbit_driver: Driver
) -> None:
    """Thirty junk messages in a burst: every one is dead-lettered, five are reported (the
    client's bucket), and the count of the rest rides with the next report."""
    topic = rabbit_driver.new_topic()
    kds.admin.create_topic(topic, producers=["p"], consumers=["c"])
    for i in range(30):
        rabbit_driver.send_raw(topic, b"not an envelope %d" % i, b"k")
    sender = rabbit_driver.sender(topic, Sealer(kds.member("p")))
    try:
        sender.send(SENTINEL, key=b"k")
    finally:
        sender.close()
    keys = kds.member("c", failure_reports_per_second=0.001, failure_report_burst=5)
    receiver = rabbit_driver.receiver(topic, Opener(keys))
    try:
        assert [g.body for g in receiver.take(1)] == [SENTINEL]
    finally:
        receiver.close()
    assert len(rabbit_driver.dead_letters(topic)) == 30
    reported = open_failures(kds, 5)
    assert len(reported) == 5
    assert {(r["reason"], r["sender"], r["suppressed"]) for r in reported} == {
        ("not_envelope", "", 0)
    }
    assert keys.report_open_failure(
        topic, "bad_signature", None, int(time.time() * 1000) + 10_000_000
    )
    assert open_failures(kds, 6)[-1]["suppressed"] == 25


@pytest.mark.rabbitmq
def test_a_consumer_stops_at_a_rolled_back_kds_and_dead_letters_nothing(
    kds: Kds, rabbit_driver: Driver
) -> None:
    topic = rabbit_driver.new_topic()
    kds.admin.create_topic(topic, producers=["p"], consumers=["c"])
    keys = kds.member("c")
    old = snapshot_audit(kds.store)
    sender = rabbit_driver.sender(topic, Sealer(kds.member("p")))
    try:
        sender.send(b"first", key=b"k")
        receiver = rabbit_driver.receiver(topic, Opener(keys))
        try:
            assert [g.body for g in receiver.take(1)] == [b"first"]
            keys.audit_head(kds.clock_ms())  # what the periodic refresh does
            roll_back_audit(kds.store, old)
            with pytest.raises(AuditRollback):
                keys.audit_head(kds.clock_ms())
            # openers ask their key source at least once per revocation check interval (1 s):
            # within that, a session already joined still opens; after it, nothing does
            time.sleep(1.2)
            sender.send(b"second", key=b"k")
            with pytest.raises(AuditRollback):
                deadline = time.monotonic() + WAIT
                while time.monotonic() < deadline:
                    assert receiver.poll_once() == []
        finally:
            receiver.close()
    finally:
        sender.close()
    assert rabbit_driver.dead_letters(topic) == []
    # given back to the queue: a consumer restarted (after an operator looked) still gets it
    restarted = rabbit_driver.receiver(topic, Opener(kds.client(keys._identity)))
    try:
        assert [g.body for g in restarted.take(1)] == [b"second"]
    finally:
        restarted.close()
