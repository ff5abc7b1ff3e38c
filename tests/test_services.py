"""Smoke tests of the real services from tests/services.py (plain clients, no sealedbus)."""

from __future__ import annotations

import ssl
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.services import AmqpTls, Service

BODY = b"sealedbus smoke " + uuid.uuid4().bytes


def unique(prefix: str) -> str:
    return f"sealedbus-smoke-{prefix}-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------------------------------------
# RabbitMQ
# ------------------------------------------------------------------------------------------------
def _pika_tls_parameters(tls: AmqpTls, context: ssl.SSLContext) -> Any:
    import pika

    parts = urlsplit(tls.url)
    return pika.ConnectionParameters(
        host=tls.host,
        port=tls.port,
        virtual_host=unquote(parts.path[1:]) or "/",
        credentials=pika.PlainCredentials(
            unquote(parts.username or "guest"), unquote(parts.password or "guest")
        ),
        ssl_options=pika.SSLOptions(context, tls.server_hostname),
        connection_attempts=1,
        socket_timeout=10,
    )


def _round_trip(parameters: Any, *, durable: bool = False) -> None:
    """Publish one confirmed message to a fresh queue and read it back."""
    import pika

    queue = unique("q")
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, durable=durable, auto_delete=not durable)
        channel.basic_publish("", queue, BODY, pika.BasicProperties(delivery_mode=2))
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None, "the published message did not arrive"
        assert body == BODY
        channel.queue_delete(queue)
    finally:
        connection.close()


@pytest.mark.rabbitmq
def test_rabbitmq_publish_consume(amqp_url: str) -> None:
    import pika

    _round_trip(pika.URLParameters(amqp_url))


@pytest.mark.rabbitmq
@pytest.mark.parametrize("client_cert", [False, True], ids=["server-auth", "mutual-tls"])
def test_rabbitmq_tls_publish_consume(amqp_tls: AmqpTls, client_cert: bool) -> None:
    _round_trip(_pika_tls_parameters(amqp_tls, amqp_tls.ssl_context(client_cert=client_cert)))


@pytest.mark.rabbitmq
def test_rabbitmq_tls_rejects_an_untrusted_server(amqp_tls: AmqpTls) -> None:
    """The TLS listener is real: a client that does not trust the test CA refuses it."""
    import pika

    untrusting = ssl.create_default_context()  # system CAs only
    # pika re-raises the handshake's own error rather than wrapping it
    with pytest.raises((pika.exceptions.AMQPConnectionError, ssl.SSLError)):
        pika.BlockingConnection(_pika_tls_parameters(amqp_tls, untrusting))


@pytest.mark.rabbitmq
def test_rabbitmq_restart_keeps_durable_message(rabbitmq_service: Service, amqp_url: str) -> None:
    import pika

    rabbitmq_service.require_restartable()
    queue = unique("durable")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True)
    channel.basic_publish("", queue, BODY, pika.BasicProperties(delivery_mode=2))
    connection.close()

    rabbitmq_service.restart()

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None, "the durable message did not survive the restart"
        assert body == BODY
        channel.queue_delete(queue)
    finally:
        connection.close()


# ------------------------------------------------------------------------------------------------
# Kafka
# ------------------------------------------------------------------------------------------------
def _produce(bootstrap: str, topic: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)  # acks=all, idempotent by default
    try:
        producer.send(topic, BODY, key=b"k").get(timeout=30)
    finally:
        producer.close()


def _consume_one(consumer: Any, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                value: bytes = record.value
                return value
    pytest.fail(f"no record arrived within {timeout:.0f} s")


@pytest.mark.kafka
def test_kafka_produce_consume(kafka_bootstrap: str) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer

    topic = unique("topic")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([topic])
    finally:
        admin.close()
    _produce(kafka_bootstrap, topic)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=unique("group"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        assert _consume_one(consumer) == BODY
        consumer.commit()
    finally:
        consumer.close()


@pytest.mark.kafka
def test_kafka_restart_keeps_topic_message(kafka_service: Service, kafka_bootstrap: str) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    kafka_service.require_restartable()
    topic = unique("durable")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([topic])
    finally:
        admin.close()
    _produce(kafka_bootstrap, topic)

    kafka_service.restart()

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        assert _consume_one(consumer) == BODY
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------------
# PostgreSQL
# ------------------------------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_select_one(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, connect_timeout=10) as connection:
        row = connection.execute("select 1").fetchone()
        assert row == (1,)
        name = connection.execute("select current_database()").fetchone()
        assert name is not None
        assert name[0] == urlsplit(postgres_url).path.lstrip("/")
