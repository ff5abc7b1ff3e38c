"""sealedbus: end-to-end sealed message payloads on the brokers you already run.

The public surface is this list; everything else is reachable but may change.
"""

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
from sealedbus.metrics import PrometheusMetrics
from sealedbus.opener import OpenedMessage, Opener
from sealedbus.sealer import Sealed, Sealer

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
