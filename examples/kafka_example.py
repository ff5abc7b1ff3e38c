"""Send and consume sealed records on Kafka with kafka-python.

    scripts/services/start-kafka             # or any broker; prints its bootstrap address
    SEALEDBUS_KAFKA_BOOTSTRAP=127.0.0.1:29092 .venv/bin/python examples/kafka_example.py

Producer and consumer share one in-process key service here; kafka_producer.py and
kafka_consumer.py do the same as two processes sharing the network KDS (see README.md here).
Keys are tokenized: the broker never sees the patient id.
"""

from __future__ import annotations

import os
import uuid

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from sealedbus import KeyTokenizer, LocalKeyService, Opener, Sealer
from sealedbus.brokers.kafka import SealedKafkaConsumer, SealedKafkaProducer

BOOTSTRAP = os.environ.get("SEALEDBUS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def main() -> None:
    topic = f"lab-results-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics({topic: {"num_partitions": 3, "replication_factor": 1}})
    admin.close()

    keys = LocalKeyService()
    producer_keys, consumer_keys = keys.enroll("lab"), keys.enroll("clinic")
    keys.create_topic(topic, producers=["lab"], consumers=["clinic"])
    tokenizer = KeyTokenizer.from_secret(os.urandom(32))  # with a KDS: .from_keys(keys)

    producer = SealedKafkaProducer(
        KafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5),  # SSL/SASL settings go here
        Sealer(producer_keys),
        key_tokenizer=tokenizer,
    )
    for n in range(3):
        producer.send(
            topic, f"result {n}: negative".encode(), key=b"patient-1234", headers={"test": "PCR"}
        )
    producer.flush(timeout=30)
    producer.close()

    consumer = SealedKafkaConsumer(
        KafkaConsumer(
            bootstrap_servers=BOOTSTRAP,
            group_id="clinic",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            consumer_timeout_ms=5000,
        ),
        Opener(consumer_keys),
        dead_letter_producer=KafkaProducer(bootstrap_servers=BOOTSTRAP),
    )
    consumer.subscribe([topic])
    for n, record in enumerate(consumer, 1):
        print(record.sender, record.key, record.partition, record.offset, record.value)
        if n == 3:
            break
    consumer.close()
    consumer.dead_letter_producer.close()


if __name__ == "__main__":
    main()
