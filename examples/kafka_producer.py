"""Producer process: seal patient events and send them to Kafka, keys from the network KDS.

    examples/kds_dev.sh && source .sealedbus-dev/env      # a local KDS and its settings
    export SEALEDBUS_KAFKA_BOOTSTRAP=127.0.0.1:9092
    .venv/bin/python examples/kafka_producer.py --key-file .sealedbus-dev/admissions-api.key

The Kafka topic is the sealing topic. Record keys (the patient id) are replaced by HMAC tokens
under the topic's tokenization key, which the KDS serves: partitioning stays stable, the broker
never sees the id. Records sent together share one signature (a Merkle batch, ``linger_ms``).
"""

from __future__ import annotations

import json
import os

from kafka import KafkaProducer
from kds_member import ensure_kafka_topics, key_service, parser, patient_event

from sealedbus import KeyTokenizer, Sealer
from sealedbus.brokers.kafka import SealedKafkaProducer


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("SEALEDBUS_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="$SEALEDBUS_KAFKA_BOOTSTRAP",
    )
    p.add_argument("--count", type=int, default=5, help="events to send")
    args = p.parse_args()
    keys = key_service(p, args)  # KeyServiceClient: fetches the topic's epoch public key
    ensure_kafka_topics(args.bootstrap, [args.topic])

    producer = SealedKafkaProducer(
        KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=20),  # SSL/SASL settings here
        Sealer(keys),
        key_tokenizer=KeyTokenizer.from_keys(keys),
    )
    events = [patient_event(n) for n in range(args.count)]
    futures = [
        producer.send(
            args.topic,
            json.dumps(event).encode(),
            key=event["patient_id"].encode(),
            headers={"ward": event["ward"]},
            content_type="application/json",
        )
        for event in events
    ]
    producer.flush(timeout=30)
    for event, future in zip(events, futures, strict=True):
        sent = future.get(timeout=30)  # RecordMetadata; raises BrokerError if the broker refused
        print(
            f"{keys.member} sent {event['patient_id']} to {sent.topic} partition "
            f"{sent.partition} offset {sent.offset}",
            flush=True,
        )
    producer.close()
    keys.close()


if __name__ == "__main__":
    main()
