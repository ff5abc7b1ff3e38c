"""Broker adapters. ``memory`` needs nothing; ``rabbitmq`` needs pika and ``kafka`` needs
kafka-python, each imported only by its own module."""

from sealedbus.brokers._common import KeyTokenizer, Undeliverable, UndeliverablePolicy

__all__ = ["KeyTokenizer", "Undeliverable", "UndeliverablePolicy"]
