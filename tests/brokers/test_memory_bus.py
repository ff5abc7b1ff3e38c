"""MemoryBus: at-least-once delivery per consumer group, redelivery, competing consumers."""

from __future__ import annotations

import threading

import pytest

from sealedbus import MemoryBus
from sealedbus.brokers.memory import Record


def _values(records: list[Record]) -> list[bytes]:
    return [r.value for r in records]


def test_publish_poll_ack() -> None:
    bus = MemoryBus()
    assert bus.publish("t", b"a", key=b"k", headers={"h": b"1"}) == 0
    assert bus.publish("t", b"b") == 1
    sub = bus.subscribe("t", "g")
    records = sub.poll()
    assert _values(records) == [b"a", b"b"]
    assert (records[0].key, records[0].headers, records[0].offset) == (b"k", {"h": b"1"}, 0)
    assert not any(r.redelivered for r in records)
    assert bus.lag("t", "g") == 2  # in flight until acknowledged
    for r in records:
        sub.ack(r)
    assert bus.lag("t", "g") == 0
    assert sub.poll() == []
    with pytest.raises(ValueError):
        sub.ack(records[0])  # not in flight any more


def test_max_records() -> None:
    bus = MemoryBus()
    for i in range(5):
        bus.publish("t", b"%d" % i)
    sub = bus.subscribe("t", "g")
    assert _values(sub.poll(max_records=2)) == [b"0", b"1"]
    assert _values(sub.poll(max_records=2)) == [b"2", b"3"]
    assert _values(sub.poll()) == [b"4"]


def test_nack_redelivers_with_flag() -> None:
    bus = MemoryBus()
    bus.publish("t", b"a")
    bus.publish("t", b"b")
    sub = bus.subscribe("t", "g")
    a, b = sub.poll()
    sub.nack(a)
    sub.ack(b)
    again = sub.poll()
    assert _values(again) == [b"a"]
    assert again[0].redelivered and again[0].offset == a.offset
    sub.ack(again[0])
    assert bus.lag("t", "g") == 0


def test_close_requeues_in_flight() -> None:
    bus = MemoryBus()
    for v in (b"a", b"b", b"c"):
        bus.publish("t", v)
    first = bus.subscribe("t", "g")
    records = first.poll()
    first.ack(records[1])
    first.close()
    second = bus.subscribe("t", "g")
    again = second.poll()
    assert sorted(_values(again)) == [b"a", b"c"]
    assert all(r.redelivered for r in again)


def test_two_groups_each_see_everything() -> None:
    bus = MemoryBus()
    one, two = bus.subscribe("t", "one"), bus.subscribe("t", "two")
    for i in range(4):
        bus.publish("t", b"%d" % i)
    expected = [b"0", b"1", b"2", b"3"]
    assert _values(one.poll()) == expected
    assert _values(two.poll()) == expected


def test_topics_are_separate() -> None:
    bus = MemoryBus()
    bus.publish("a", b"1")
    assert bus.subscribe("b", "g").poll() == []
    assert _values(bus.records("a")) == [b"1"]
    assert bus.records("b") == []


def test_competing_consumers_share_without_overlap() -> None:
    bus = MemoryBus()
    for i in range(20):
        bus.publish("t", b"%d" % i)
    c1, c2 = bus.subscribe("t", "g"), bus.subscribe("t", "g")
    got1 = c1.poll(max_records=7)
    got2 = c2.poll(max_records=100)
    assert not {r.offset for r in got1} & {r.offset for r in got2}
    assert len(got1) + len(got2) == 20
    c1.nack(got1[0])  # only a nacked record can reach another member
    again = c2.poll()
    assert [r.offset for r in again] == [got1[0].offset]
    assert c1.poll() == []


def test_poll_timeout_returns_empty() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("t", "g")
    assert sub.poll(timeout=0.05) == []


def test_poll_wakes_up_on_publish() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("t", "g")
    started = threading.Event()

    def publish_later() -> None:
        started.wait()
        bus.publish("t", b"late")

    t = threading.Thread(target=publish_later)
    t.start()
    started.set()
    records = sub.poll(timeout=30)  # returns as soon as the record arrives
    t.join()
    assert _values(records) == [b"late"]


def test_thread_safety_smoke() -> None:
    bus = MemoryBus()
    producers, per_producer = 8, 250

    def produce(p: int) -> None:
        for i in range(per_producer):
            bus.publish("t", b"%d:%d" % (p, i))

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(producers)]
    consumed: list[list[Record]] = [[] for _ in range(3)]

    def consume(n: int) -> None:
        sub = bus.subscribe("t", "g")
        while sum(len(c) for c in consumed) < producers * per_producer:
            for r in sub.poll(timeout=0.01, max_records=17):
                consumed[n].append(r)
                sub.ack(r)

    consumers = [threading.Thread(target=consume, args=(n,), daemon=True) for n in range(3)]
    for t in threads + consumers:
        t.start()
    for t in threads + consumers:
        t.join(timeout=60)
    log = bus.records("t")
    assert [r.offset for r in log] == list(range(producers * per_producer))
    for p in range(producers):  # each producer's records stay in its order
        mine = [r.value for r in log if r.value.startswith(b"%d:" % p)]
        assert mine == [b"%d:%d" % (p, i) for i in range(per_producer)]
    offsets = [r.offset for c in consumed for r in c]
    assert sorted(offsets) == list(range(producers * per_producer))  # each exactly once
    assert bus.lag("t", "g") == 0
