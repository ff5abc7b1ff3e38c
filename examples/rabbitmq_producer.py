"""Producer process: seal patient events and publish them to RabbitMQ, keys from the network KDS.

    examples/kds_dev.sh && source .sealedbus-dev/env      # a local KDS and its settings
    export SEALEDBUS_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F
    .venv/bin/python examples/rabbitmq_producer.py --key-file .sealedbus-dev/admissions-api.key

The exchange is named after the sealing topic. The producer can seal for the topic but open
nothing on it; the broker sees only envelopes (content type application/vnd.sealedbus).
"""

from __future__ import annotations

import json
import os

import pika
from kds_member import key_service, parser, patient_event

from sealedbus import Sealer
from sealedbus.brokers.rabbitmq import SealedChannel


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--amqp-url",
        default=os.environ.get("SEALEDBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
        help="$SEALEDBUS_AMQP_URL",
    )
    p.add_argument("--count", type=int, default=5, help="events to send")
    args = p.parse_args()
    keys = key_service(p, args)  # KeyServiceClient: fetches the topic's epoch public key

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = SealedChannel(connection.channel(), sealer=Sealer(keys))
    channel.channel.exchange_declare(args.topic, "fanout", durable=True)
    channel.confirm_delivery()  # basic_publish returns once the broker has the message
    for n in range(args.count):
        event = patient_event(n)
        props = pika.BasicProperties(
            content_type="application/json",
            headers={"ward": event["ward"]},  # both sealed
            delivery_mode=pika.DeliveryMode.Persistent,
        )
        channel.basic_publish(args.topic, "", json.dumps(event).encode(), props)
        print(f"{keys.member} sent {event['patient_id']} to exchange {args.topic}", flush=True)
    channel.close()
    connection.close()
    keys.close()


if __name__ == "__main__":
    main()
