"""sealedbus: end-to-end sealed message payloads on the brokers you already run.

The public surface is this list; everything else is reachable but may change.
"""

from typing import TYPE_CHECKING

from sealedbus.brokers._common import KeyTokenizer, UndeliverablePolicy
from sealedbus.brokers.memory import MemoryBus
from sealedbus.errors import (
    AccessDenied,
    InvalidEnvelope,
    KeyServiceUnavailable,
    Reason,
    SealedbusError,
)
from sealedbus.keys.local import LocalKeyService
from sealedbus.keys.source import KeySource
from sealedbus.opener import OpenedMessage, Opener
from sealedbus.sealer import Sealed, Sealer

if TYPE_CHECKING:
    from sealedbus.ops.prometheus import PrometheusMetrics


def __getattr__(name: str) -> object:
    if name == "PrometheusMetrics":  # lazy: importing sealedbus must not load prometheus_client
        from sealedbus.ops.prometheus import PrometheusMetrics  # noqa: PLC0415

        return PrometheusMetrics
    raise AttributeError(f"module 'sealedbus' has no attribute {name!r}")


__all__ = [
    "AccessDenied",
    "InvalidEnvelope",
    "KeyServiceUnavailable",
    "KeySource",
    "KeyTokenizer",
    "LocalKeyService",
    "MemoryBus",
    "OpenedMessage",
    "Opener",
    "PrometheusMetrics",
    "Reason",
    "Sealed",
    "SealedbusError",
    "Sealer",
    "UndeliverablePolicy",
]

__version__ = "0.1.0"
