"""Seal and open on the in-memory bus (no broker needed).

    .venv/bin/python examples/memory_example.py

Producer and consumer share one in-process key service and one in-memory bus, so both live in
this one process. The broker examples come as separate producer and consumer processes that share
the network KDS (see README.md in this folder).
"""

from __future__ import annotations

from sealedbus import LocalKeyService, MemoryBus, Opener, Sealer
from sealedbus.brokers.memory import MemoryConsumer, MemoryProducer


def main() -> None:
    keys = LocalKeyService()
    producer_keys, consumer_keys = keys.enroll("billing"), keys.enroll("audit")
    keys.create_topic("invoices", producers=["billing"], consumers=["audit"])
    bus = MemoryBus()

    producer = MemoryProducer(bus, Sealer(producer_keys))
    for n in range(3):
        producer.send(
            "invoices", f"invoice {n}".encode(), key=b"customer-7", headers={"currency": "EUR"}
        )

    consumer = MemoryConsumer(bus, Opener(consumer_keys), "invoices", group="audit")
    for delivery in consumer.poll(timeout=1.0):
        print(delivery.sender, delivery.key, delivery.headers, delivery.value)
        consumer.ack(delivery)
    print("the bus holds only envelopes:", bus.records("invoices")[0].value[:16].hex(), "...")


if __name__ == "__main__":
    main()
