"""Consumer process: receive sealed patient events from RabbitMQ and open them, keys from the KDS.

    examples/kds_dev.sh && source .sealedbus-dev/env      # a local KDS and its settings
    export SEALEDBUS_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F
    .venv/bin/python examples/rabbitmq_consumer.py --key-file .sealedbus-dev/records-svc.key

Start it before the producer: it declares its queue (``<topic>.<member>``) bound to the topic's
exchange. Only messages that pass every check reach the loop below; anything else (tampered,
expired, from a sender the policy does not allow, ...) goes to the dead-letter exchange with an
``x-sealedbus-reason`` header, and is acknowledged.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pika
from kds_member import key_service, parser

from sealedbus import AccessDenied, KeyServiceUnavailable, Opener
from sealedbus.brokers.rabbitmq import SealedChannel

DEAD_LETTERS = "sealedbus.dead-letter"  # the default; declared with a queue of the same name


def main() -> int:
    p = parser(__doc__)
    p.add_argument(
        "--amqp-url",
        default=os.environ.get("SEALEDBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
        help="$SEALEDBUS_AMQP_URL",
    )
    p.add_argument("--count", type=int, default=0, help="stop after N events (default: never)")
    p.add_argument("--timeout", type=float, default=0, help="stop after SECONDS (default: never)")
    args = p.parse_args()
    keys = key_service(p, args)  # KeyServiceClient: fetches epoch key grants for this member
    deadline = time.monotonic() + args.timeout if args.timeout else float("inf")

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = SealedChannel(
        connection.channel(), opener=Opener(keys), dead_letter_exchange=DEAD_LETTERS
    )
    queue = f"{args.topic}.{keys.member}"
    channel.channel.exchange_declare(args.topic, "fanout", durable=True)
    channel.channel.queue_declare(queue, durable=True)
    channel.channel.queue_bind(queue, args.topic)
    print(f"{keys.member} waiting on queue {queue} (dead letters: {DEAD_LETTERS})", flush=True)

    received = 0
    while received < (args.count or float("inf")) and time.monotonic() < deadline:
        try:
            for method, _props, message in channel.consume(queue, inactivity_timeout=0.5):
                if method is not None and message is not None:
                    event = json.loads(message.body)
                    print(
                        f"{keys.member} got {json.dumps(event)} from {message.sender} "
                        f"(epoch {message.epoch}, headers {message.headers})",
                        flush=True,
                    )
                    channel.basic_ack(method.delivery_tag)
                    received += 1
                if received == args.count or time.monotonic() >= deadline:
                    break
        except KeyServiceUnavailable as exc:  # the message went back to the queue: retry later
            print(f"KDS unavailable ({exc}); retrying in 1 s", file=sys.stderr, flush=True)
            time.sleep(1)
        except AccessDenied as exc:  # this key may not read the topic: nothing was taken
            print(f"stopping: {exc}", file=sys.stderr, flush=True)
            break
    channel.cancel()
    channel.close()
    connection.close()
    keys.close()
    print(f"{keys.member} received {received} event(s)", flush=True)
    return 0 if received >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
