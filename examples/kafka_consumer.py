"""Consumer process: read sealed patient events from Kafka and open them, keys from the KDS.

    examples/kds_dev.sh && source .sealedbus-dev/env      # a local KDS and its settings
    export SEALEDBUS_KAFKA_BOOTSTRAP=127.0.0.1:9092
    .venv/bin/python examples/kafka_consumer.py --key-file .sealedbus-dev/records-svc.key

The consumer group is the member name; offsets are committed only for records the loop has had
(or that were dead-lettered). Records that do not open go to ``<topic>.dlq`` with an
``x-sealedbus-reason`` header and are never handed to the loop.
"""

from __future__ import annotations

import json
import os
import sys
import time

from kafka import KafkaConsumer, KafkaProducer
from kds_member import ensure_kafka_topics, key_service, parser

from sealedbus import AccessDenied, KeyServiceUnavailable, Opener
from sealedbus.brokers.kafka import SealedKafkaConsumer


def main() -> int:
    p = parser(__doc__)
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("SEALEDBUS_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="$SEALEDBUS_KAFKA_BOOTSTRAP",
    )
    p.add_argument("--count", type=int, default=0, help="stop after N events (default: never)")
    p.add_argument("--timeout", type=float, default=0, help="stop after SECONDS (default: never)")
    args = p.parse_args()
    keys = key_service(p, args)  # KeyServiceClient: fetches epoch key grants for this member
    deadline = time.monotonic() + args.timeout if args.timeout else float("inf")
    dead_letters = f"{args.topic}.dlq"
    ensure_kafka_topics(args.bootstrap, [args.topic, dead_letters])

    consumer = SealedKafkaConsumer(
        KafkaConsumer(
            bootstrap_servers=args.bootstrap,
            group_id=keys.member,
            enable_auto_commit=False,  # SealedKafkaConsumer commits what was handled
            auto_offset_reset="earliest",
            consumer_timeout_ms=500,
        ),
        Opener(keys),
        dead_letter_producer=KafkaProducer(bootstrap_servers=args.bootstrap),
        dead_letter_topic=dead_letters,
    )
    consumer.subscribe([args.topic])
    print(f"{keys.member} waiting on topic {args.topic} (dead letters: {dead_letters})", flush=True)

    received = 0
    while received < (args.count or float("inf")) and time.monotonic() < deadline:
        try:
            for record in consumer:  # ends after consumer_timeout_ms without records
                event = json.loads(record.value)
                print(
                    f"{keys.member} got {json.dumps(event)} from {record.sender} "
                    f"(key {record.key!r}, headers {record.headers})",
                    flush=True,
                )
                received += 1
                if received == args.count or time.monotonic() >= deadline:
                    break
        except KeyServiceUnavailable as exc:  # the record stays first in line: retry later
            print(f"KDS unavailable ({exc}); retrying in 1 s", file=sys.stderr, flush=True)
            time.sleep(1)
        except AccessDenied as exc:  # this key may not read the topic: nothing was taken
            print(f"stopping: {exc}", file=sys.stderr, flush=True)
            break
    consumer.close()  # commits the offsets of what was handled
    consumer.dead_letter_producer.close()
    keys.close()
    print(f"{keys.member} received {received} event(s)", flush=True)
    return 0 if received >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
