"""What sealers, openers and broker adapters report, and two sinks for it.

``NoMetrics`` (the default) drops everything; ``PrometheusMetrics`` exports to a
``prometheus_client`` registry. Labels are bounded: topic names and fixed reason codes only.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.01,
    0.1,
    1.0,
)


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


class PrometheusMetrics:
    """Exports the reports as ``sealedbus_*`` series into ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._sealed = Counter(
            "sealedbus_messages_sealed", "Messages sealed", ["topic"], registry=r
        )
        self._opened = Counter(
            "sealedbus_messages_opened", "Messages opened", ["topic"], registry=r
        )
        self._sealed_bytes = Counter(
            "sealedbus_payload_sealed_bytes", "Payload bytes sealed", ["topic"], registry=r
        )
        self._opened_bytes = Counter(
            "sealedbus_payload_opened_bytes", "Payload bytes opened", ["topic"], registry=r
        )
        self._rejected = Counter(
            "sealedbus_envelopes_rejected",
            "Envelopes refused, by reason",
            ["topic", "reason"],
            registry=r,
        )
        self._dead = Counter(
            "sealedbus_envelopes_dead_lettered",
            "Envelopes sent to the dead-letter destination",
            ["topic", "reason"],
            registry=r,
        )
        self._sessions = Counter(
            "sealedbus_sessions_started", "Producer sessions started", ["topic"], registry=r
        )
        self._seal_seconds = Histogram(
            "sealedbus_seal_seconds",
            "Time to seal one message (batch time / batch size)",
            ["topic"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._open_seconds = Histogram(
            "sealedbus_open_seconds",
            "Time to open one message",
            ["topic"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def sealed(self, topic: str, count: int, payload_bytes: int, seconds: float) -> None:
        self._sealed.labels(topic).inc(count)
        self._sealed_bytes.labels(topic).inc(payload_bytes)
        self._seal_seconds.labels(topic).observe(seconds / max(count, 1))

    def opened(self, topic: str, payload_bytes: int, seconds: float) -> None:
        self._opened.labels(topic).inc()
        self._opened_bytes.labels(topic).inc(payload_bytes)
        self._open_seconds.labels(topic).observe(seconds)

    def rejected(self, topic: str, reason: str) -> None:
        self._rejected.labels(topic, reason).inc()

    def dead_lettered(self, topic: str, reason: str) -> None:
        self._dead.labels(topic, reason).inc()

    def session_started(self, topic: str) -> None:
        self._sessions.labels(topic).inc()
