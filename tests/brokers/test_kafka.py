"""Kafka-specific behaviour of the sealed producer and consumer against a real broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from sealedbus.brokers._common import KeyTokenizer
from sealedbus.brokers.kafka import SealedKafkaConsumer, SealedKafkaProducer
from sealedbus.core import wire
from sealedbus.errors import BrokerError, ConfigurationError, KeyServiceUnavailable, Reason
from sealedbus.opener import Opener
from tests.brokers._support import FlakyKeys, World, make_world
from tests.brokers.drivers import WAIT, Driver, KafkaDriver, KafkaReceiver, kafka_consumer

pytestmark = pytest.mark.kafka


@pytest.fixture
def world(kafka_driver: Driver) -> Iterator[World]:
    w = make_world(kafka_driver)
    yield w
    w.close()


@pytest.fixture
def bootstrap(world: World) -> str:
    assert isinstance(world.driver, KafkaDriver)
    return world.driver.bootstrap


def test_batches_close_when_the_producer_would_send(world: World, bootstrap: str) -> None:
    sealer = world.sealer(batch_size=16)
    producer = SealedKafkaProducer(KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50), sealer)
    try:
        # 40 = two full sealed batches of 16, then 8 that only the linger timer closes
        futures = [producer.send(world.topic, f"{i}".encode(), key=b"k") for i in range(40)]
        metadata = [f.get(timeout=WAIT) for f in futures]  # no flush: the linger thread sends
        assert [m.offset for m in metadata] == list(range(40))
        late = producer.send(world.topic, b"flushed", key=b"k")
        producer.flush(timeout=WAIT)
        assert late.succeeded()
    finally:
        producer.close(timeout=WAIT)
    stored = world.driver.stored(world.topic, 41)
    assert all(wire.parse(raw).proof is not None for raw in stored)  # Merkle-batch envelopes
    sizes = [wire.parse(raw).proof.size for raw in stored]  # type: ignore[union-attr]
    assert sizes[:32] == [16] * 32 and sizes[40] == 1
    got = world.receiver().take(41)
    assert [g.body for g in got] == [f"{i}".encode() for i in range(40)] + [b"flushed"]


def test_send_failures_arrive_as_broker_errors(world: World, bootstrap: str) -> None:
    producer = SealedKafkaProducer(
        KafkaProducer(bootstrap_servers=bootstrap, max_block_ms=2000), world.sealer()
    )
    world.keys.create_topic("sb-missing-topic-x", producers=["producer"])
    try:
        with pytest.raises(BrokerError):
            producer.send("sb-missing-topic-x", b"x", partition=999).get(timeout=WAIT)
    finally:
        producer.close(timeout=WAIT)


def test_keys_are_tokenized_and_restored(world: World, bootstrap: str) -> None:
    tokenizer = KeyTokenizer.from_secret(b"s" * 32)
    producer = SealedKafkaProducer(
        KafkaProducer(bootstrap_servers=bootstrap), world.sealer(), key_tokenizer=tokenizer
    )
    try:
        for i in range(12):
            producer.send(world.topic, f"{i}".encode(), key=f"patient-{i % 3}".encode())
        producer.flush(timeout=WAIT)
    finally:
        producer.close(timeout=WAIT)
    raw = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    raw.subscribe([world.topic])
    records = []
    for r in raw:
        records.append(r)
        if len(records) == 12:
            break
    raw.close(autocommit=False)
    assert len(records) == 12
    for r in records:
        assert b"patient" not in r.key and b"patient" not in r.value
    by_token: dict[bytes, set[int]] = {}
    for r in records:
        by_token.setdefault(r.key, set()).add(r.partition)
    assert len(by_token) == 3 and all(len(p) == 1 for p in by_token.values())  # stable
    assert set(by_token) == {
        tokenizer.tokenize(world.topic, f"patient-{i}".encode()) for i in range(3)
    }
    got = world.receiver().take(12)
    assert sorted((g.key or b"", int(g.body)) for g in got) == sorted(
        (f"patient-{i % 3}".encode(), i) for i in range(12)
    )
    assert all(g.headers == {} for g in got)


def test_offsets_are_committed_only_for_what_the_application_had(
    world: World, bootstrap: str
) -> None:
    sender = world.sender()
    for i in range(10):
        sender.send(f"{i}".encode(), key=b"k")
    group = "g-" + world.topic
    first = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group)
    assert [int(g.body) for g in first.take(4)] == [0, 1, 2, 3]
    first.close()  # commits 0-2; 3 was handed out but never asked past: not known handled

    second = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group)
    got = [int(g.body) for g in second.take(2)]
    # a crash: the process dies before any commit covers 3 and 4 (simulated by leaving the
    # group without committing anything)
    second.consumer.commit = lambda: None  # type: ignore[method-assign]
    second.consumer._revoked = lambda partitions: None  # type: ignore[method-assign]
    second.close()

    third = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group)
    try:
        got += [int(g.body) for g in third.take(7)]
    finally:
        third.close()
    assert got == [3, 4, 3, 4, 5, 6, 7, 8, 9]  # 3 and 4 come again: nothing was lost


def test_auto_commit_is_refused(bootstrap: str, world: World) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="g", enable_auto_commit=True)
    try:
        with pytest.raises(ConfigurationError):
            SealedKafkaConsumer(consumer, world.opener(), dead_letter_producer=None)
    finally:
        consumer.close()


def test_key_service_outage_keeps_the_record_first_in_line(world: World, bootstrap: str) -> None:
    sender = world.sender()
    for body in (b"a", b"b"):
        sender.send(body, key=b"k")
    receiver = KafkaReceiver(
        bootstrap, world.topic, Opener(FlakyKeys(world.consumer, 1), metrics=world.metrics)
    )
    try:
        deadline = time.monotonic() + WAIT
        with pytest.raises(KeyServiceUnavailable):
            while time.monotonic() < deadline:
                list(receiver.consumer)
        assert [g.body for g in receiver.take(2)] == [b"a", b"b"]
    finally:
        receiver.close()
    assert world.driver.dead_letters(world.topic) == []


@pytest.mark.slow
def test_consumer_group_rebalance_loses_and_repeats_nothing(world: World, bootstrap: str) -> None:
    total = 400
    sender = world.sender()
    for i in range(total // 2):
        sender.send(f"{i}".encode(), key=f"key{i % 7}".encode())
    group = "g-" + world.topic
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
                    time.sleep(0.002)  # slow enough that the second member joins mid-stream
                # no break: leaving the loop early would leave the last record unhandled
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            receiver.close()

    a = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group, max_poll_records=20)
    thread_a = threading.Thread(target=run, args=(a,))
    thread_a.start()
    deadline = time.monotonic() + WAIT
    while not handed and time.monotonic() < deadline:
        time.sleep(0.05)
    b = KafkaReceiver(bootstrap, world.topic, world.opener(), group=group, max_poll_records=20)
    thread_b = threading.Thread(target=run, args=(b,))
    thread_b.start()
    for i in range(total // 2, total):
        sender.send(f"{i}".encode(), key=f"key{i % 7}".encode())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with lock:
            if len(handed) >= total:
                break
        time.sleep(0.1)
    stop.set()
    thread_a.join(WAIT)
    thread_b.join(WAIT)
    assert not errors
    assert sorted(handed) == list(range(total))  # every record once, across both members


@pytest.mark.slow
def test_broker_restart_mid_stream_loses_and_repeats_nothing(
    world: World, bootstrap: str, kafka_service: Any
) -> None:
    kafka_service.require_restartable()  # skip before closing the session's driver below
    total = 300
    sender = world.sender()
    for i in range(total // 2):
        sender.send(f"{i}".encode(), key=f"key{i % 5}".encode())
    opener = world.opener()  # the application's opener lives on across the restart
    group = "g-" + world.topic
    receiver = KafkaReceiver(bootstrap, world.topic, opener, group=group, max_poll_records=25)
    handed = [int(g.body) for g in receiver.take(100)]

    # No kafka-python client stays connected while the broker is down: kafka-python 3.0.12 keeps
    # the socket of every refused reconnect in a suspended coroutine until the interpreter exits,
    # which filterwarnings=error turns into a failed session. So the application stops its
    # clients (committing what it had), the broker restarts, and the stream resumes.
    receiver.close()
    world.close()
    world.driver.close()
    kafka_service.restart()
    world.driver.reconnect()  # type: ignore[attr-defined]
    receiver = KafkaReceiver(bootstrap, world.topic, opener, group=group, max_poll_records=25)

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    sealed = SealedKafkaProducer(producer, world.sealer())
    try:
        futures = [
            sealed.send(world.topic, f"{i}".encode(), key=f"key{i % 5}".encode())
            for i in range(total // 2, total)
        ]
        for f in futures:
            f.get(timeout=60)
    finally:
        sealed.close(timeout=WAIT)
    deadline = time.monotonic() + 90
    while len(handed) < total and time.monotonic() < deadline:
        try:
            handed.extend(int(r.value) for r in receiver.consumer)
        except BrokerError as exc:  # the coordinator may still be loading: retry
            assert exc.retryable, exc
    receiver.close()
    # the record in hand when the first receiver closed was never asked past: not committed,
    # released in the opener, so it comes once more; nothing else repeats and nothing is lost
    assert sorted(handed) == sorted([*range(total), handed[99]])
    assert set(world.metrics.rejections()) <= {Reason.DUPLICATE.value}


def test_raw_consumer_is_rejected_without_sealedbus(world: World, bootstrap: str) -> None:
    """A plain kafka-python consumer of the same topic only ever sees envelopes."""
    world.sender().send(b"attending physician: Dr. Who", key=b"k")
    raw = kafka_consumer(bootstrap, "raw-" + world.topic)
    raw.subscribe([world.topic])
    values: list[bytes] = []
    deadline = time.monotonic() + WAIT
    while not values and time.monotonic() < deadline:
        values = [r.value for r in raw]
    raw.close(autocommit=False)
    assert len(values) == 1
    assert values[0][:2] == wire.MAGIC and b"Dr. Who" not in values[0]


# -- review fixes -----------------------------------------------------------------------------


class _FakeKafkaProducer:
    """Only for the linger thread's logic: a KafkaProducer whose sends succeed at once."""

    def __init__(self) -> None:
        from kafka.future import Future

        self._future = Future
        self.config = {"linger_ms": 20, "batch_size": 16384, "key_serializer": None}
        self.sent: list[bytes] = []

    def send(self, topic: str, value: bytes, **kwargs: Any) -> Any:
        self.sent.append(value)
        future = self._future()
        future.success("metadata")
        return future

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class _DownKeys:
    """A key source whose identity cannot be fetched while ``down``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def identity(self, now_ms: int, refresh: bool = False) -> Any:
        if self.down:
            raise KeyServiceUnavailable("the key service is down")
        return self.inner.identity(now_ms, refresh)


def test_linger_thread_survives_a_failing_send_and_fails_the_rest_of_the_batch(
    world: World, bootstrap: str
) -> None:
    producer = SealedKafkaProducer(
        KafkaProducer(bootstrap_servers=bootstrap, linger_ms=50), world.sealer(batch_size=16)
    )
    try:
        with pytest.raises(ConfigurationError):  # checked at once, not in the linger thread
            producer.send(world.topic, b"x", key="text")  # type: ignore[arg-type]
        first = producer.send(world.topic, b"first", key=b"k")
        bad = producer.send(world.topic, b"bad", partition=99)  # no such partition
        after = producer.send(world.topic, b"after", key=b"k")
        assert first.get(WAIT) is not None
        with pytest.raises(BrokerError):
            bad.get(WAIT)
        with pytest.raises(BrokerError):  # order kept: nothing after a failed send went out
            after.get(WAIT)
        assert producer._thread is not None and producer._thread.is_alive()
        later = producer.send(world.topic, b"later", key=b"k")
        assert later.get(2.0) is not None  # linger, not a full batch, sends it
    finally:
        producer.close(timeout=WAIT)


def test_a_send_typeerror_becomes_a_broker_error() -> None:
    class Raising(_FakeKafkaProducer):
        def send(self, topic: str, value: bytes, **kwargs: Any) -> Any:
            raise TypeError("headers must be a list")

    keys = make_world_keys()
    producer = SealedKafkaProducer(Raising(), keys, batch=False)
    with pytest.raises(BrokerError):
        producer.send("t", b"x")
    batching = SealedKafkaProducer(Raising(), make_world_keys())
    try:
        futures = [batching.send("t", f"{i}".encode()) for i in range(3)]
        for future in futures:
            with pytest.raises(BrokerError):
                future.get(2.0)
        assert batching._thread is not None and batching._thread.is_alive()
    finally:
        batching.close()


def make_world_keys() -> Any:
    """A Sealer for topic ``t`` of a fresh local key service."""
    from sealedbus.keys.local import LocalKeyService
    from sealedbus.sealer import Sealer

    keys = LocalKeyService()
    member = keys.enroll("producer")
    keys.enroll("consumer")
    keys.create_topic("t", producers=["producer"], consumers=["consumer"])
    return Sealer(member)


def test_linger_thread_retries_a_batch_it_could_not_sign() -> None:
    from sealedbus.keys.local import LocalKeyService
    from sealedbus.sealer import Sealer

    service = LocalKeyService()
    keys = _DownKeys(service.enroll("producer"))
    service.enroll("consumer")
    service.create_topic("t", producers=["producer"], consumers=["consumer"])
    fake = _FakeKafkaProducer()
    producer = SealedKafkaProducer(fake, Sealer(keys, epoch_check_interval=0.001))
    try:
        assert producer.send("t", b"a").get(2.0) == "metadata"
        waiting = producer.send("t", b"b")
        keys.down = True
        time.sleep(0.3)  # several linger periods: flush fails, the thread must live on
        assert producer._thread is not None and producer._thread.is_alive()
        assert not waiting.is_done
        keys.down = False
        assert waiting.get(3.0) == "metadata"
        assert producer.send("t", b"c").get(2.0) == "metadata"
        assert len(fake.sent) == 3
    finally:
        producer.close()


def test_a_due_batch_is_closed_by_the_next_send_without_the_linger_thread() -> None:
    fake = _FakeKafkaProducer()
    producer = SealedKafkaProducer(fake, make_world_keys(), linger=60.0)
    try:
        first = producer.send("t", b"a")
        assert fake.sent == [] and not first.is_done
        with producer._lock:
            assert producer._started is not None
            producer._started -= 120.0  # as if the linger thread were late
        second = producer.send("t", b"b")
        assert len(fake.sent) == 2  # closed on the sending thread, both records in it
        assert first.get(0) == second.get(0) == "metadata"
        big = producer.send("t", b"x" * 20000)  # over the producer's batch_size on its own
        assert len(fake.sent) == 3 and big.get(0) == "metadata"
    finally:
        producer.close()


def test_null_value_and_null_key_record_is_dead_lettered(world: World, bootstrap: str) -> None:
    world.topic = KafkaDriver(bootstrap).new_topic(partitions=1)
    world.keys.create_topic(world.topic, producers=["producer"], consumers=["consumer"])
    sender = world.sender()
    sender.send(b"before")
    from kafka.serializer import Serializer

    class NullKey(Serializer):  # type: ignore[misc]  # untyped base class
        def serialize(self, topic: str, headers: Any, value: Any) -> None:
            return None

    raw = KafkaProducer(bootstrap_servers=bootstrap, key_serializer=NullKey())
    try:  # kafka-python refuses null/null; Java clients do not: a serializer emulates one
        raw.send(world.topic, None, key="x").get(WAIT)
    finally:
        raw.close(timeout=WAIT)
    sender.send(b"after")
    receiver = world.receiver()
    assert [g.body for g in receiver.take(2)] == [b"before", b"after"]
    dead = world.driver.dead_letters(world.topic)
    assert [reason for reason, _ in dead] == [Reason.NOT_ENVELOPE.value]


def test_the_record_the_application_failed_on_is_not_committed(
    world: World, bootstrap: str
) -> None:
    world.topic = KafkaDriver(bootstrap).new_topic(partitions=1)
    world.keys.create_topic(world.topic, producers=["producer"], consumers=["consumer"])
    sender = world.sender()
    for i in range(3):
        sender.send(f"m{i}".encode())
    group = "g-" + world.topic
    opener = world.opener()
    first = KafkaReceiver(bootstrap, world.topic, opener, group=group)
    seen: list[bytes] = []
    try:
        with pytest.raises(RuntimeError):
            for r in first.consumer:
                seen.append(r.value)
                if r.value == b"m1":
                    raise RuntimeError("processing m1 failed")
    finally:
        first.close()
    assert seen == [b"m0", b"m1"]
    second = KafkaReceiver(bootstrap, world.topic, opener, group=group)  # same opener
    try:
        assert [g.body for g in second.take(2)] == [b"m1", b"m2"]
    finally:
        second.close()


def test_consumer_recovers_after_being_dropped_from_the_group(world: World, bootstrap: str) -> None:
    world.topic = KafkaDriver(bootstrap).new_topic(partitions=1)
    world.keys.create_topic(world.topic, producers=["producer"], consumers=["consumer"])
    sender = world.sender()
    for i in range(3):
        sender.send(f"m{i}".encode())
    receiver = KafkaReceiver(
        bootstrap,
        world.topic,
        world.opener(),
        group="g-" + world.topic,
        max_poll_interval_ms=1500,
        session_timeout_ms=6000,
        heartbeat_interval_ms=300,
        max_poll_records=1,
    )
    try:
        assert [g.body for g in receiver.take(1)] == [b"m0"]
        time.sleep(3.0)  # slower than max_poll_interval_ms: the member is dropped
        got = [g.body for g in receiver.take(2)]  # commit fails once, then it rejoins
        assert got == [b"m1", b"m2"]
    finally:
        receiver.close()
