"""Reliability on a real Kafka broker (issues 9, 8.5, 8.7 and 15.1): valid messages are never
dead-lettered, one record never stalls the others, replays stay dropped across restarts and
rebalances, retries stay duplicates. Every test counts delivered, dead-lettered and duplicated
messages exactly, with bounded counts and waits."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer, TopicPartition

from sealedbus.brokers._common import UndeliverablePolicy
from sealedbus.brokers.kafka import SealedFuture, SealedKafkaConsumer, SealedKafkaProducer
from sealedbus.errors import AccessDenied, BrokerError, KeyServiceUnavailable, Reason
from sealedbus.opener import Opener
from sealedbus.sealer import Sealer
from tests.brokers._support import OutageKeys, World, drain_all, make_world
from tests.brokers.drivers import (
    WAIT,
    Driver,
    KafkaDriver,
    KafkaReceiver,
    kafka_consumer,
    unique,
)

pytestmark = pytest.mark.kafka

BACKLOG = 10_000


@pytest.fixture
def world(kafka_driver: Driver) -> Iterator[World]:
    w = make_world(kafka_driver)
    yield w
    w.close()


@pytest.fixture
def bootstrap(world: World) -> str:
    assert isinstance(world.driver, KafkaDriver)
    return world.driver.bootstrap


def sealed_producer(world: World, bootstrap: str, **kwargs: Any) -> SealedKafkaProducer:
    return SealedKafkaProducer(
        KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, **kwargs),
        world.sealer(batch_size=64),
    )


def fill(world: World, bootstrap: str, count: int, *, start: int = 0) -> None:
    """``count`` messages from one producer session, spread over the topic's 3 partitions."""
    producer = sealed_producer(world, bootstrap)
    try:
        futures = [
            producer.send(world.topic, f"{i}".encode(), key=f"k{i % 30}".encode())
            for i in range(start, start + count)
        ]
        producer.flush(timeout=WAIT)
        assert all(f.succeeded() for f in futures)
    finally:
        producer.close(timeout=WAIT)


def raw_records(bootstrap: str, topic: str, limit: int) -> list[Any]:
    """Every record of ``topic`` (all partitions), read raw from the beginning."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=unique("raw"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2000,
    )
    try:
        consumer.subscribe([topic])
        out: list[Any] = []
        deadline = time.monotonic() + WAIT
        while len(out) < limit and time.monotonic() < deadline:
            out.extend(consumer)
        return out
    finally:
        consumer.close()


# -- issue 9.1: a multi-partition backlog --------------------------------------------------------


@pytest.mark.slow
def test_multi_partition_backlog_is_never_dead_lettered_as_outside_the_replay_window(
    world: World, bootstrap: str
) -> None:
    fill(world, bootstrap, BACKLOG)  # one session: its sequence numbers spread over 3 partitions
    receiver = KafkaReceiver(bootstrap, world.topic, world.opener(), group=unique("fresh"))
    start = time.monotonic()
    try:
        got = drain_all(receiver, BACKLOG)
    finally:
        receiver.close()
    took = time.monotonic() - start
    dead = world.driver.dead_letters(world.topic)
    print(f"backlog: delivered {len(got)}, dead-lettered {len(dead)} ({len(got) / took:.0f}/s)")
    assert len(dead) == 0
    assert len(got) == BACKLOG and sorted(got) == list(range(BACKLOG))  # none twice
    assert world.metrics.rejections() == {}


@pytest.mark.slow
def test_rebalance_mid_backlog_delivers_every_message_once(world: World, bootstrap: str) -> None:
    fill(world, bootstrap, BACKLOG)
    group = unique("g")
    handed: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(receiver: KafkaReceiver) -> None:
        try:
            while not stop.is_set():
                for r in receiver.consumer:
                    with lock:
                        handed.append(int(r.value))
                    if len(handed) % 50 == 0:
                        time.sleep(0.01)  # slow enough that the second member joins mid-backlog
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            receiver.close()

    first = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group, max_poll_records=100)
    threads = [threading.Thread(target=run, args=(first,))]
    threads[0].start()
    deadline = time.monotonic() + WAIT
    while len(handed) < BACKLOG // 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    at_join = len(handed)
    second = KafkaReceiver(
        bootstrap, world.topic, world.opener(), group=group, max_poll_records=100
    )
    threads.append(threading.Thread(target=run, args=(second,)))
    threads[1].start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with lock:
            if len(set(handed)) >= BACKLOG:
                break
        time.sleep(0.1)
    time.sleep(1.0)  # anything handed out twice shows up meanwhile
    stop.set()
    for t in threads:
        t.join(WAIT)
    dead = world.driver.dead_letters(world.topic)
    twice = len(handed) - len(set(handed))
    print(f"rebalance at {at_join}: delivered {len(set(handed))}, twice {twice}, dlq {len(dead)}")
    assert not errors
    assert BACKLOG // 5 <= at_join < BACKLOG  # the second member joined mid-backlog
    assert len(dead) == 0
    assert sorted(set(handed)) == list(range(BACKLOG))
    assert twice == 0


# -- issue 8.7: replays across restarts and rebalances ------------------------------------------


def replay(bootstrap: str, records: list[Any]) -> None:
    """What a malicious broker (or anyone who can write the topic) does: the same bytes again,
    same key, same partition."""
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for r in records:
            raw.send(r.topic, r.value, key=r.key, partition=r.partition).get(timeout=WAIT)
    finally:
        raw.close(timeout=WAIT)


def test_replay_after_a_consumer_restart_is_dropped(world: World, bootstrap: str) -> None:
    fill(world, bootstrap, 30)
    group = unique("g")
    before = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group)
    try:
        assert sorted(drain_all(before, 30, WAIT)) == list(range(30))
        assert drain_all(before, 1, 1.0) == []  # asked past the last one: all committed
    finally:
        before.close()
    originals = raw_records(bootstrap, world.topic, 30)
    replay(bootstrap, originals[::3])  # 10 copies, in their own partitions
    after = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group)  # a new process
    try:
        assert drain_all(after, 1, 5.0) == []
    finally:
        after.close()
    assert world.metrics.rejections() == {"duplicate": 10}
    assert world.driver.dead_letters(world.topic) == []


@pytest.mark.slow
def test_replay_after_a_rebalance_is_dropped(world: World, bootstrap: str) -> None:
    fill(world, bootstrap, 60)
    group = unique("g")
    handed: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(receiver: KafkaReceiver) -> None:
        try:
            while not stop.is_set():
                for r in receiver.consumer:
                    with lock:
                        handed.append(int(r.value))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            receiver.close()

    first = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group)
    threads = [threading.Thread(target=run, args=(first,))]
    threads[0].start()
    deadline = time.monotonic() + WAIT
    while len(handed) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the first member commits everything (it iterates to the end)
    second = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group)
    threads.append(threading.Thread(target=run, args=(second,)))
    threads[1].start()
    deadline = time.monotonic() + WAIT
    while not second.consumer.consumer.assignment() and time.monotonic() < deadline:
        time.sleep(0.05)
    moved = second.consumer.consumer.assignment()
    originals = raw_records(bootstrap, world.topic, 60)
    replay(bootstrap, originals)  # every message again, each in its own partition
    time.sleep(5.0)  # both members read the copies meanwhile
    stop.set()
    for t in threads:
        t.join(WAIT)
    assert not errors
    assert moved, "the second member got no partition"
    assert sorted(handed) == list(range(60))  # no copy delivered, by either member
    assert world.metrics.rejections() == {"duplicate": 60}
    assert world.driver.dead_letters(world.topic) == []


def test_replay_state_fits_the_offset_metadata_limit() -> None:
    from sealedbus.brokers._kafka_state import decode_replay_state, encode_replay_state

    entries = {i.to_bytes(8, "big"): (i, 1_000_000 + i) for i in range(1000)}
    text = encode_replay_state(entries, 1_000_999.0, 3600.0, 4000)
    assert len(text) <= 4000
    kept = decode_replay_state(text)
    assert len(kept) == 187  # the newest sessions that fit
    assert min(t for _, t in kept.values()) == 1_000_000 + 1000 - 187
    assert encode_replay_state(entries, 2_000_000.0, 3600.0, 4000) == ""  # all older than the age
    assert decode_replay_state("someone else's metadata") == {}


# -- issue 9.3: one record must not stall the consumer ------------------------------------------


@pytest.mark.slow
def test_one_waiting_record_holds_back_only_its_own_partition(world: World, bootstrap: str) -> None:
    keys = OutageKeys(world.consumer)
    receiver = KafkaReceiver(bootstrap, world.topic, Opener(keys, metrics=world.metrics))
    producer = sealed_producer(world, bootstrap)
    stranger = world.keys.enroll("stranger")
    world.keys.set_policy(world.topic, producers=["producer", "stranger"], consumers=["consumer"])
    try:
        producer.send(world.topic, b"-1", partition=1).get(timeout=WAIT)
        assert drain_all(receiver, 1, WAIT) == [-1]  # keys for this sender are now cached
        keys.down = True
        head = SealedKafkaProducer(KafkaProducer(bootstrap_servers=bootstrap), Sealer(stranger))
        head.send(world.topic, b"1000", partition=0).get(timeout=WAIT)  # waits for the KDS
        head.close(timeout=WAIT)
        for i in range(300):
            producer.send(world.topic, f"{i}".encode(), partition=i % 2 + 1)
        producer.send(world.topic, b"2000", partition=0)  # behind the waiting one
        producer.flush(timeout=WAIT)
        got: list[int] = []
        raised = 0
        deadline = time.monotonic() + WAIT
        while len(got) < 300 and time.monotonic() < deadline:
            try:
                for r in receiver.consumer:
                    got.append(int(r.value))
            except KeyServiceUnavailable:
                raised += 1
        assert sorted(got) == list(range(300))  # the other partitions kept flowing
        print(f"KeyServiceUnavailable raised {raised} time(s) while the others flowed")
        keys.down = False
        got += drain_all(receiver, 2, WAIT)
    finally:
        producer.close(timeout=WAIT)
        receiver.close()
    assert got[300:] == [1000, 2000]  # its partition resumed, in order
    assert world.driver.dead_letters(world.topic) == []
    assert world.metrics.rejections() == {}


@pytest.mark.slow
def test_an_undeliverable_dead_letter_is_parked_and_skipped_not_retried_forever(
    world: World, bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique()
    assert isinstance(world.driver, KafkaDriver)
    world.driver.admin.create_topics(
        {
            topic: {
                "num_partitions": 2,
                "replication_factor": 1,
                "configs": {"max.message.bytes": str(6 << 20)},
            },
            f"{topic}.dlq": {"num_partitions": 1, "replication_factor": 1},  # the 1 MB default
        },
        wait_for_metadata=True,
    )
    world.keys.create_topic(topic, producers=["producer"], consumers=["consumer"])
    big = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=6 << 20)
    try:
        big.send(topic, b"J" * (2 << 20), partition=0).get(timeout=WAIT)  # junk, 2 MB
    finally:
        big.close(timeout=WAIT)
    producer = sealed_producer(world, bootstrap)
    try:
        for i in range(20):
            producer.send(topic, f"{i}".encode(), partition=i % 2)
        producer.flush(timeout=WAIT)
    finally:
        producer.close(timeout=WAIT)
    parked: list[Any] = []
    dlq_producer = KafkaProducer(bootstrap_servers=bootstrap)  # max_request_size 1 MB
    consumer = SealedKafkaConsumer(
        kafka_consumer(bootstrap, unique("g")),
        world.opener(),
        dead_letter_producer=dlq_producer,
        undeliverable=UndeliverablePolicy(
            attempts=3, backoff=0.05, park_dir=tmp_path, on_park=parked.append
        ),
    )
    try:
        with caplog.at_level(logging.WARNING, logger="sealedbus.brokers"):
            consumer.subscribe([topic])
        assert any("max.message.bytes" in r.message for r in caplog.records)  # at start-up
        assert any("max_request_size" in r.message for r in caplog.records)
        got: list[int] = []
        errors: Counter[str] = Counter()
        deadline = time.monotonic() + WAIT
        while len(got) < 20 and time.monotonic() < deadline:
            try:
                for r in consumer:
                    got.append(int(r.value))
            except BrokerError as exc:  # retried, then parked: retryable for the application
                assert exc.retryable and ("1 of 3" in str(exc) or "2 of 3" in str(exc))
                errors[type(exc.__cause__).__name__] += 1
    finally:
        consumer.close()
        dlq_producer.close(timeout=WAIT)
    assert sorted(got) == list(range(20))
    assert consumer.skipped == 1
    assert [p.reason for p in parked] == [Reason.NOT_ENVELOPE.value]
    assert len([f for f in tmp_path.iterdir() if not f.name.endswith(".reason")]) == 1
    assert sum(errors.values()) <= 2  # attempts - 1 raised at most, then parked: no endless loop
    assert world.driver.dead_letters(topic) == []


def test_dead_letter_size_check_is_quiet_when_sizes_match(world: World, bootstrap: str) -> None:
    dlq_producer = KafkaProducer(bootstrap_servers=bootstrap)
    consumer = SealedKafkaConsumer(
        kafka_consumer(bootstrap, unique("g")), world.opener(), dead_letter_producer=dlq_producer
    )
    try:
        assert consumer.check_dead_letter_sizes([world.topic]) == []
    finally:
        consumer.close()
        dlq_producer.close(timeout=WAIT)


# -- issue 15.1: a wrong key must not drain the topic -------------------------------------------


def test_wrong_key_consumer_commits_nothing_and_dead_letters_nothing(
    world: World, bootstrap: str
) -> None:
    fill(world, bootstrap, 30)
    group = unique("g")
    outsider = world.keys.enroll("outsider")
    wrong = KafkaReceiver(bootstrap, world.topic, Opener(outsider), group=group)
    try:
        with pytest.raises(AccessDenied, match="may not read"):
            drain_all(wrong, 1, WAIT)
        with pytest.raises(AccessDenied):  # again on the next try: it never moves on
            drain_all(wrong, 1, WAIT)
        parts = [TopicPartition(world.topic, p) for p in range(3)]
        assert [wrong.consumer.consumer.committed(tp) for tp in parts] == [None] * 3
    finally:
        wrong.close()
    right = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group)
    try:
        assert sorted(drain_all(right, 30, WAIT)) == list(range(30))
    finally:
        right.close()
    assert world.driver.dead_letters(world.topic) == []


def test_retryable_key_errors_never_dead_letter(world: World, bootstrap: str) -> None:
    fill(world, bootstrap, 9)
    keys = OutageKeys(world.consumer)
    keys.down = True  # nothing cached yet: every record waits
    receiver = KafkaReceiver(bootstrap, world.topic, Opener(keys, metrics=world.metrics))
    try:
        with pytest.raises(KeyServiceUnavailable):
            drain_all(receiver, 1, WAIT)
        keys.down = False
        assert sorted(drain_all(receiver, 9, WAIT)) == list(range(9))
    finally:
        receiver.close()
    assert world.driver.dead_letters(world.topic) == []


# -- issue 8.5: the record key is authenticated --------------------------------------------------


class Captured:
    """A KafkaProducer that keeps what it is given instead of sending it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.config = inner.config
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, **_: Any) -> Any:
        from kafka.future import Future

        self.sent.append((topic, value, key))
        return Future().success(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_record_moved_to_another_key_is_refused(world: World, bootstrap: str) -> None:
    captured = Captured(KafkaProducer(bootstrap_servers=bootstrap))
    producer = SealedKafkaProducer(captured, world.sealer())
    try:
        producer.send(world.topic, b"for alice", key=b"alice").get(timeout=WAIT)
        producer.send(world.topic, b"for carol", key=b"carol").get(timeout=WAIT)
    finally:
        producer.close(timeout=WAIT)
    [(_, alice, alice_key), (_, carol, carol_key)] = captured.sent
    assert (alice_key, carol_key) == (b"alice", b"carol")
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    try:  # a malicious broker files alice's event under bob's key; carol's stays as it was
        raw.send(world.topic, alice, key=b"bob").get(timeout=WAIT)
        raw.send(world.topic, carol, key=b"carol").get(timeout=WAIT)
    finally:
        raw.close(timeout=WAIT)
    receiver = KafkaReceiver(bootstrap, world.topic, world.opener())
    try:
        got = receiver.take(1)
        assert drain_all(receiver, 1, 3.0) == []
    finally:
        receiver.close()
    assert [(g.body, g.key) for g in got] == [(b"for carol", b"carol")]
    assert [r for r, _ in world.driver.dead_letters(world.topic)] == [Reason.BAD_SIGNATURE.value]


# -- issue 9.4: a retry after a failed future is a duplicate -------------------------------------


class LostAcks:
    """A KafkaProducer whose first ``lose`` sends reach the broker but report a failure (an
    acknowledgement lost with its connection)."""

    def __init__(self, inner: Any, lose: int) -> None:
        self.inner = inner
        self.lose = lose
        self.config = inner.config

    def send(self, *args: Any, **kwargs: Any) -> Any:
        from kafka.errors import KafkaConnectionError
        from kafka.future import Future

        sent = self.inner.send(*args, **kwargs)
        if not self.lose:
            return sent
        self.lose -= 1
        sent.get(timeout=WAIT)  # the broker has it...
        return Future().failure(KafkaConnectionError("connection lost"))  # ...the ack is lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_resend_after_a_lost_ack_is_dropped_as_a_duplicate(world: World, bootstrap: str) -> None:
    producer = SealedKafkaProducer(
        LostAcks(KafkaProducer(bootstrap_servers=bootstrap), lose=2), world.sealer()
    )
    try:
        futures = [
            producer.send(world.topic, f"{i}".encode(), key=b"k", ref=f"order-{i}")
            for i in range(5)
        ]
        failed: list[SealedFuture] = []
        for f in futures:
            try:
                f.get(timeout=WAIT)
            except BrokerError as exc:
                assert exc.retryable
                failed.append(f)
        assert [f.ref for f in failed] == ["order-0", "order-1"]  # the application's own ids
        again = producer.resend(failed)
        assert all(f.get(timeout=WAIT) for f in again)
        assert [f.ref for f in again] == ["order-0", "order-1"]
    finally:
        producer.close(timeout=WAIT)
    assert len(raw_records(bootstrap, world.topic, 7)) == 7  # 2 messages stored twice
    receiver = KafkaReceiver(bootstrap, world.topic, world.opener())
    try:
        got = [g.body for g in receiver.take(5)]
        assert drain_all(receiver, 1, 2.0) == []
    finally:
        receiver.close()
    assert sorted(got) == [f"{i}".encode() for i in range(5)]
    assert world.metrics.rejections() == {"duplicate": 2}
    assert world.driver.dead_letters(world.topic) == []
