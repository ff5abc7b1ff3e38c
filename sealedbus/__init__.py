"""sealedbus: end-to-end sealed message payloads on the brokers you already run.

The public surface is this list; everything else is reachable but may change.

Every name is imported lazily, on first use (PEP 562), so that importing a pure layer such as
``sealedbus.core.wire`` loads neither broker code nor ``prometheus_client``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    from sealedbus.ops.prometheus import PrometheusMetrics
    from sealedbus.sealer import Sealed, Sealer

# public name -> the module that defines it
_WHERE = {
    "AccessDenied": "sealedbus.errors",
    "InvalidEnvelope": "sealedbus.errors",
    "KeyServiceUnavailable": "sealedbus.errors",
    "KeySource": "sealedbus.keys.source",
    "KeyTokenizer": "sealedbus.brokers._common",
    "LocalKeyService": "sealedbus.keys.local",
    "MemoryBus": "sealedbus.brokers.memory",
    "OpenedMessage": "sealedbus.opener",
    "Opener": "sealedbus.opener",
    "PrometheusMetrics": "sealedbus.ops.prometheus",
    "Reason": "sealedbus.errors",
    "Sealed": "sealedbus.sealer",
    "SealedbusError": "sealedbus.errors",
    "Sealer": "sealedbus.sealer",
    "UndeliverablePolicy": "sealedbus.brokers._common",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'sealedbus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


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
