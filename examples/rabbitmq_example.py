"""Publish and consume sealed messages on RabbitMQ with pika.

    scripts/services/start-rabbitmq          # or any broker; prints its URL
    export SEALEDBUS_AMQP_URL=amqp://guest:guest@127.0.0.1:25674/%2F
    .venv/bin/python examples/rabbitmq_example.py

Producer and consumer share one in-process key service here; rabbitmq_producer.py and
rabbitmq_consumer.py do the same as two processes sharing the network KDS (see README.md here).
The exchange name is the sealing topic.
"""

from __future__ import annotations

import os

import pika

from sealedbus import LocalKeyService, Opener, Sealer
from sealedbus.brokers.rabbitmq import SealedChannel

URL = os.environ.get("SEALEDBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def main() -> None:
    keys = LocalKeyService()
    producer_keys, consumer_keys = keys.enroll("admissions"), keys.enroll("records")
    keys.create_topic("admissions", producers=["admissions"], consumers=["records"])

    connection = pika.BlockingConnection(pika.URLParameters(URL))
    setup = connection.channel()
    setup.exchange_declare("admissions", "fanout", durable=True)
    setup.queue_declare("admissions.records", durable=True)
    setup.queue_bind("admissions.records", "admissions")

    publisher = SealedChannel(connection.channel(), sealer=Sealer(producer_keys))
    publisher.confirm_delivery()
    for n in range(3):
        props = pika.BasicProperties(headers={"ward": "3B"}, delivery_mode=2, expiration="60000")
        publisher.basic_publish("admissions", "", f"patient {n} admitted".encode(), props)

    consumer = SealedChannel(connection.channel(), opener=Opener(consumer_keys))
    deliveries = consumer.consume("admissions.records", inactivity_timeout=5)
    for received, (method, _props, message) in enumerate(deliveries, 1):
        if method is None or message is None:
            break
        print(message.sender, message.headers, message.body)
        consumer.basic_ack(method.delivery_tag)
        if received == 3:
            break
    consumer.cancel()
    connection.close()


if __name__ == "__main__":
    main()
