"""What sealers, openers and broker adapters report: the ``Metrics`` protocol and ``NoMetrics``.

This module has no dependency: importing the core, a sealer or an opener never imports
``prometheus_client``. The Prometheus implementation is ``sealedbus.ops.prometheus.
PrometheusMetrics`` (also exported as ``sealedbus.PrometheusMetrics``); any object with these
methods will do. Labels must stay bounded: topic names from a configured set, reason codes from
``sealedbus.errors.Reason``, cache and error kinds from the constants below.
"""

from __future__ import annotations

from typing import Protocol

from sealedbus.errors import (
    AccessDenied,
    KeyServiceError,
    KeyServiceUnavailable,
    Refused,
    UnknownTopic,
    UntrustedResponse,
)

# ``Metrics.key_cache`` caches: opener session keys (one DH or KEM per producer session) and
# sender certificates (one KDS lookup per certificate).
CACHE_SESSION = "session"
CACHE_SENDER = "sender"

# ``Metrics.key_service_error`` kinds, one per KeyServiceError subclass.
KEY_SERVICE_ERRORS = ("unavailable", "refused", "untrusted", "denied", "unknown_topic", "other")


def key_service_error_kind(exc: KeyServiceError) -> str:
    """The bounded label for a key service error (``unavailable`` = the KDS could not be
    reached and the cache ran out)."""
    for cls, kind in (
        (KeyServiceUnavailable, "unavailable"),
        (Refused, "refused"),
        (UntrustedResponse, "untrusted"),
        (AccessDenied, "denied"),
        (UnknownTopic, "unknown_topic"),
    ):
        if isinstance(exc, cls):
            return kind
    return "other"


class Metrics(Protocol):
    """The reporting hook. Implementations must be thread-safe and must not raise."""

    def sealed(self, topic: str, count: int, payload_bytes: int, seconds: float) -> None:
        """``count`` messages sealed in ``seconds`` (a batch reports once)."""

    def opened(self, topic: str, payload_bytes: int, seconds: float) -> None:
        """One message opened and handed on."""

    def rejected(self, topic: str, reason: str) -> None:
        """One envelope refused; reason ``duplicate`` counts replays and redeliveries."""

    def dead_lettered(self, topic: str, reason: str) -> None:
        """One refused envelope routed to the dead-letter destination by a broker adapter."""

    def session_started(self, topic: str) -> None:
        """A producer session started (new epoch, count or age limit reached)."""

    def sealing_epoch(self, topic: str, epoch: int, not_before: float, not_after: float) -> None:
        """The epoch a producer seals ``topic`` under, checked now (times in Unix seconds)."""

    def revocations(self, issued_at: float) -> None:
        """An opener took a revocation list issued at ``issued_at`` (Unix seconds)."""

    def key_cache(self, cache: str, hit: bool) -> None:
        """A lookup in an opener key cache (``CACHE_SESSION`` or ``CACHE_SENDER``)."""

    def key_service_error(self, topic: str, kind: str) -> None:
        """Sealing or opening on ``topic`` failed for want of keys (``KEY_SERVICE_ERRORS``)."""


class BatchMetrics(Protocol):
    """Optional: reports of many messages at once, which an opener makes (``open_many``) when
    a sink has both methods. Each must count exactly as the single reports it stands for."""

    def opened_many(self, topic: str, count: int, payload_bytes: int, seconds: float) -> None:
        """``count`` messages opened and handed on, ``payload_bytes`` in all, ``seconds``
        each: as ``count`` calls of ``opened``."""

    def key_cache_hits(self, cache: str, count: int) -> None:
        """As ``count`` calls of ``key_cache(cache, True)``."""


class NoMetrics:
    """Drops every report."""

    def sealed(self, topic: str, count: int, payload_bytes: int, seconds: float) -> None:
        pass

    def opened(self, topic: str, payload_bytes: int, seconds: float) -> None:
        pass

    def rejected(self, topic: str, reason: str) -> None:
        pass

    def dead_lettered(self, topic: str, reason: str) -> None:
        pass

    def session_started(self, topic: str) -> None:
        pass

    def sealing_epoch(self, topic: str, epoch: int, not_before: float, not_after: float) -> None:
        pass

    def revocations(self, issued_at: float) -> None:
        pass

    def key_cache(self, cache: str, hit: bool) -> None:
        pass

    def key_service_error(self, topic: str, kind: str) -> None:
        pass
