"""The sealed producer/consumer contract, run against the in-memory bus, RabbitMQ and Kafka.

Absence is checked with a sentinel sent last on the same key (ordered after everything under
test), never with a timed wait.
"""

from __future__ import annotations

import threading
import time

import pytest

from sealedbus.errors import AccessDenied, Reason
from tests.brokers._support import World
from tests.brokers.drivers import WAIT

SENTINEL = b"sentinel: everything before me was handled"
KEY = b"k"


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


class TestContract:
    def test_round_trip_body_headers_key_sender(self, world: World) -> None:
        sender = world.sender()
        sender.send(
            b"first",
            key=KEY,
            headers={"trace": "t-1", "n": 7, "blob": b"\x00\xff"},
            content_type="text/plain",
        )
        sender.send(b"", key=KEY)
        got = world.receiver().take(2)
        assert [g.body for g in got] == [b"first", b""]
        assert got[0].headers == {"trace": "t-1", "n": 7, "blob": b"\x00\xff"}
        assert got[0].content_type == "text/plain"
        assert got[1].headers == {}
        assert all(g.key == KEY and g.sender == "producer" for g in got)

    def test_order_is_kept_per_key(self, world: World) -> None:
        sender = world.sender()
        for i in range(60):
            sender.send(f"{i % 3}:{i}".encode(), key=f"key{i % 3}".encode())
        got = world.receiver().take(60)
        for k in range(3):
            mine = [g.body for g in got if g.key == f"key{k}".encode()]
            assert mine == [f"{k}:{i}".encode() for i in range(k, 60, 3)]

    def test_broker_holds_no_plaintext(self, world: World) -> None:
        secret = b"patient-4711 diagnosis: confidential"
        sender = world.sender()
        for _ in range(5):
            sender.send(secret, key=KEY, headers={"ssn": "123-45-6789"})
        assert [g.body for g in world.receiver().take(5)] == [secret] * 5
        stored = world.driver.stored(world.topic, 5)
        assert len(stored) == 5
        for raw in stored:
            for needle in (secret, b"patient-4711", b"123-45-6789", b"confidential"):
                assert needle not in raw
            # no 8-byte window of the plaintext appears anywhere
            assert not any(secret[i : i + 8] in raw for i in range(len(secret) - 7))

    def test_duplicate_is_acknowledged_counted_and_not_delivered(self, world: World) -> None:
        envelope = world.sealer().seal(world.topic, b"once")
        world.driver.send_raw(world.topic, envelope, KEY)
        world.driver.send_raw(world.topic, envelope, KEY)
        world.sender().send(SENTINEL, key=KEY)
        got = world.receiver().take(2)
        assert [g.body for g in got] == [b"once", SENTINEL]
        assert world.metrics.rejections() == {Reason.DUPLICATE.value: 1}
        assert world.driver.dead_letters(world.topic) == []

    @pytest.mark.parametrize("index", [0, 5, 30, 70, -1])
    def test_tampered_is_dead_lettered_with_reason(self, world: World, index: int) -> None:
        envelope = world.sealer().seal(world.topic, b"original")
        bad = flip(envelope, index % len(envelope))
        world.driver.send_raw(world.topic, bad, KEY)
        world.sender().send(SENTINEL, key=KEY)
        assert [g.body for g in world.receiver().take(1)] == [SENTINEL]
        dead = world.driver.dead_letters(world.topic)
        assert [body for _, body in dead] == [bad]
        assert dead[0][0] in {r.value for r in Reason} - {Reason.DUPLICATE.value}

    def test_plaintext_is_dead_lettered(self, world: World) -> None:
        world.driver.send_raw(world.topic, b'{"patient": 1}', KEY)
        world.sender().send(SENTINEL, key=KEY)
        assert [g.body for g in world.receiver().take(1)] == [SENTINEL]
        assert world.driver.dead_letters(world.topic) == [
            (Reason.NOT_ENVELOPE.value, b'{"patient": 1}')
        ]
        assert world.metrics.counts[("dead_lettered", Reason.NOT_ENVELOPE.value)] == 1

    def test_expired_is_dead_lettered(self, world: World) -> None:
        sender = world.sender()
        sender.send(b"stale", key=KEY, ttl=60)
        sender.send(b"fresh", key=KEY, ttl=86_400)
        sender.send(SENTINEL, key=KEY)
        an_hour_later = world.opener(clock=lambda: time.time() + 3600)
        assert [g.body for g in world.receiver(an_hour_later).take(2)] == [b"fresh", SENTINEL]
        assert [r for r, _ in world.driver.dead_letters(world.topic)] == [Reason.EXPIRED.value]

    @pytest.mark.parametrize("allowed_on_both", [True, False])
    def test_moved_to_another_topic_is_dead_lettered(
        self, world: World, allowed_on_both: bool
    ) -> None:
        other = world.new_topic(producers=("producer",) if allowed_on_both else ("someone",))
        envelope = world.sealer().seal(world.topic, b"meant for the first topic")
        world.driver.send_raw(other, envelope, KEY)
        world.keys.set_policy(other, producers=["producer"])
        world.sender(topic=other).send(SENTINEL, key=KEY)
        assert [g.body for g in world.receiver(topic=other).take(1)] == [SENTINEL]
        reasons = [r for r, _ in world.driver.dead_letters(other)]
        expected = Reason.BAD_SIGNATURE if allowed_on_both else Reason.SENDER_NOT_ALLOWED
        assert reasons == [expected.value]

    def test_consumer_without_grant_leaves_every_message_for_the_right_one(
        self, world: World
    ) -> None:
        """Issue 15: a wrong key file must not drain the queue into the dead letters."""
        sender = world.sender()
        for i in range(5):
            sender.send(f"{i}".encode(), key=KEY)
        outsider = world.keys.enroll("outsider")
        from sealedbus.opener import Opener

        receiver = world.receiver(Opener(outsider, metrics=world.metrics))
        deadline = time.monotonic() + WAIT
        with pytest.raises(AccessDenied) as denied:
            while time.monotonic() < deadline:
                assert receiver.poll_once() == []
        assert "may not read" in str(denied.value)
        receiver.close()
        assert world.driver.dead_letters(world.topic) == []
        got = world.receiver().take(5)
        assert sorted(g.body for g in got) == [f"{i}".encode() for i in range(5)]
        assert world.driver.dead_letters(world.topic) == []

    def test_producer_without_grant_cannot_send(self, world: World) -> None:
        outsider = world.keys.enroll("outsider")
        from sealedbus.sealer import Sealer

        with pytest.raises(AccessDenied):
            world.sender(Sealer(outsider)).send(b"x", key=KEY)
        world.sender().send(SENTINEL, key=KEY)
        assert [g.body for g in world.receiver().take(1)] == [SENTINEL]
        assert world.driver.stored(world.topic, 10) == world.driver.stored(world.topic, 1)

    def test_rotation_mid_stream_under_load_opens_everything(self, world: World) -> None:
        total, rotations = 600, 3
        sender = world.sender()
        receiver = world.receiver()
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                for i in range(total):
                    sender.send(f"{i}".encode(), key=f"key{i % 4}".encode())
                    if i % (total // (rotations + 1)) == total // (rotations + 1) - 1:
                        world.keys.rotate(world.topic)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        thread = threading.Thread(target=produce)
        thread.start()
        got = receiver.take(total, timeout=120)
        thread.join(timeout=WAIT)
        assert not errors
        assert sorted(int(g.body) for g in got) == list(range(total))
        assert world.metrics.rejections() == {}
        assert world.driver.dead_letters(world.topic) == []
        assert len({e.epoch for e in world.keys.epochs(world.topic)}) >= rotations + 1
