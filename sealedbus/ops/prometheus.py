"""``PrometheusMetrics``: the client metrics of sealers, openers and broker adapters as
``sealedbus_*`` series in a ``prometheus_client`` registry, and ``serve()`` to expose them from a
service that has no HTTP server of its own.

Series (Prometheus conventions: base units, ``_total`` counters, ``_seconds`` histograms):

===============================================  ======  ==============================
series                                           type    labels
===============================================  ======  ==============================
sealedbus_messages_sealed_total                  counter topic
sealedbus_messages_opened_total                  counter topic
sealedbus_payload_sealed_bytes_total             counter topic
sealedbus_payload_opened_bytes_total             counter topic
sealedbus_envelopes_rejected_total               counter topic, reason
sealedbus_envelopes_dead_lettered_total          counter topic, reason
sealedbus_duplicates_dropped_total               counter topic
sealedbus_sessions_started_total                 counter topic
sealedbus_seal_seconds                           histo   topic
sealedbus_open_seconds                           histo   topic
sealedbus_sealing_epoch                          gauge   topic (the epoch number)
sealedbus_sealing_epoch_start_timestamp_seconds  gauge   topic
sealedbus_sealing_epoch_end_timestamp_seconds    gauge   topic
sealedbus_revocation_list_issued_timestamp_seconds gauge  (none)
sealedbus_key_cache_hits_total                   counter cache
sealedbus_key_cache_misses_total                 counter cache
sealedbus_key_service_errors_total               counter topic, error
===============================================  ======  ==============================

Every label is bounded: ``topic`` takes the names given in ``topics`` (or the first
``max_topics`` seen when no set is given) and ``other`` for the rest; ``reason`` is a
``Reason`` value (else ``other``); ``cache`` and ``error`` come from ``sealedbus.metrics``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from sealedbus.errors import Reason
from sealedbus.metrics import CACHE_SENDER, CACHE_SESSION, KEY_SERVICE_ERRORS

OTHER = "other"
_REASONS = frozenset(r.value for r in Reason)
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


def _observe_many(histogram: Any, amount: float, count: int) -> None:
    """``count`` observations of ``amount``: the sum and the one bucket moved once (through
    prometheus_client's own value objects, as its ``observe`` moves them), else one by one."""
    bounds, buckets, total = (
        getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum")
    )
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for _ in range(count):
            histogram.observe(amount)
        return
    total.inc(amount * count)
    for bound, bucket in zip(bounds, buckets, strict=True):
        if amount <= bound:
            bucket.inc(count)
            break


@dataclass(slots=True)
class _TopicSeries:
    """The per-topic children, bound once: the hot path does one dict lookup per report."""

    sealed: Any
    opened: Any
    sealed_bytes: Any
    opened_bytes: Any
    seal_seconds: Any
    open_seconds: Any


class PrometheusMetrics:
    """Exports the reports as ``sealedbus_*`` series into ``registry`` (a fresh one by default).

    ``topics``: the topic names that get a label of their own; ``None`` admits the first
    ``max_topics`` names seen. Any other topic is reported as ``other``.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        topics: Iterable[str] | None = None,
        max_topics: int = 64,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._allowed = None if topics is None else frozenset(topics)
        self._max_topics = max_topics
        self._lock = threading.Lock()
        self._admitted: set[str] = set()
        self._topics: dict[str, _TopicSeries] = {}
        self._server: Any = None
        r = self.registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, ["topic"], buckets=_LATENCY_BUCKETS, registry=r)

        self._sealed = counter("sealedbus_messages_sealed", "Messages sealed", "topic")
        self._opened = counter("sealedbus_messages_opened", "Messages opened", "topic")
        self._sealed_bytes = counter(
            "sealedbus_payload_sealed_bytes", "Payload bytes sealed", "topic"
        )
        self._opened_bytes = counter(
            "sealedbus_payload_opened_bytes", "Payload bytes opened", "topic"
        )
        self._rejected = counter(
            "sealedbus_envelopes_rejected", "Envelopes refused, by reason", "topic", "reason"
        )
        self._dead = counter(
            "sealedbus_envelopes_dead_lettered",
            "Envelopes sent to the dead-letter destination, by reason",
            "topic",
            "reason",
        )
        self._duplicates = counter(
            "sealedbus_duplicates_dropped",
            "Replays and redeliveries acknowledged and dropped",
            "topic",
        )
        self._sessions = counter("sealedbus_sessions_started", "Producer sessions started", "topic")
        self._seal_seconds = histogram(
            "sealedbus_seal_seconds", "Time to seal one message (batch time / batch size)"
        )
        self._open_seconds = histogram("sealedbus_open_seconds", "Time to open one message")
        self._epoch = gauge("sealedbus_sealing_epoch", "Epoch a producer seals under", "topic")
        self._epoch_start = gauge(
            "sealedbus_sealing_epoch_start_timestamp_seconds",
            "Start of the epoch a producer seals under (Unix time)",
            "topic",
        )
        self._epoch_end = gauge(
            "sealedbus_sealing_epoch_end_timestamp_seconds",
            "End of the epoch a producer seals under (Unix time)",
            "topic",
        )
        self._revocations = gauge(
            "sealedbus_revocation_list_issued_timestamp_seconds",
            "Issue time of the newest revocation list an opener holds (Unix time)",
        )
        self._cache_hits = counter(
            "sealedbus_key_cache_hits", "Opener key cache lookups that hit", "cache"
        )
        self._cache_misses = counter(
            "sealedbus_key_cache_misses",
            "Opener key cache lookups that missed (a key service lookup follows)",
            "cache",
        )
        self._key_errors = counter(
            "sealedbus_key_service_errors",
            "Seals and opens that failed for want of keys, by error",
            "topic",
            "error",
        )
        self._hits = {c: self._cache_hits.labels(c) for c in (CACHE_SESSION, CACHE_SENDER)}
        self._misses = {c: self._cache_misses.labels(c) for c in (CACHE_SESSION, CACHE_SENDER)}

    def topic_label(self, topic: str) -> str:
        """``topic`` if it may be a label value, else ``other``."""
        if self._allowed is not None:
            return topic if topic in self._allowed else OTHER
        if topic in self._admitted:
            return topic
        with self._lock:
            if len(self._admitted) < self._max_topics:
                self._admitted.add(topic)
                return topic
        return OTHER

    def _series(self, topic: str) -> _TopicSeries:
        series = self._topics.get(topic)
        if series is None:
            label = self.topic_label(topic)
            series = _TopicSeries(
                self._sealed.labels(label),
                self._opened.labels(label),
                self._sealed_bytes.labels(label),
                self._opened_bytes.labels(label),
                self._seal_seconds.labels(label),
                self._open_seconds.labels(label),
            )
            with self._lock:
                if label != OTHER or len(self._topics) < 4 * self._max_topics:
                    self._topics[topic] = series  # past that, unknown names are not remembered
        return series

    def sealed(self, topic: str, count: int, payload_bytes: int, seconds: float) -> None:
        s = self._series(topic)
        s.sealed.inc(count)
        s.sealed_bytes.inc(payload_bytes)
        s.seal_seconds.observe(seconds / max(count, 1))

    def opened(self, topic: str, payload_bytes: int, seconds: float) -> None:
        s = self._series(topic)
        s.opened.inc()
        s.opened_bytes.inc(payload_bytes)
        s.open_seconds.observe(seconds)

    def opened_many(self, topic: str, count: int, payload_bytes: int, seconds: float) -> None:
        """``count`` calls of ``opened`` (``metrics.BatchMetrics``), counted at once."""
        s = self._series(topic)
        s.opened.inc(count)
        s.opened_bytes.inc(payload_bytes)
        _observe_many(s.open_seconds, seconds, count)

    def rejected(self, topic: str, reason: str) -> None:
        label = self.topic_label(topic)
        self._rejected.labels(label, reason if reason in _REASONS else OTHER).inc()
        if reason == Reason.DUPLICATE:
            self._duplicates.labels(label).inc()

    def dead_lettered(self, topic: str, reason: str) -> None:
        label = self.topic_label(topic)
        self._dead.labels(label, reason if reason in _REASONS else OTHER).inc()

    def session_started(self, topic: str) -> None:
        self._sessions.labels(self.topic_label(topic)).inc()

    def sealing_epoch(self, topic: str, epoch: int, not_before: float, not_after: float) -> None:
        label = self.topic_label(topic)
        if label == OTHER:
            return  # a gauge of many topics at once means nothing
        self._epoch.labels(label).set(epoch)
        self._epoch_start.labels(label).set(not_before)
        self._epoch_end.labels(label).set(not_after)

    def revocations(self, issued_at: float) -> None:
        self._revocations.set(issued_at)

    def key_cache(self, cache: str, hit: bool) -> None:
        (self._hits if hit else self._misses)[cache].inc()

    def key_cache_hits(self, cache: str, count: int) -> None:
        self._hits[cache].inc(count)

    def key_service_error(self, topic: str, kind: str) -> None:
        kind = kind if kind in KEY_SERVICE_ERRORS else OTHER
        self._key_errors.labels(self.topic_label(topic), kind).inc()

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[str, int]:  # noqa: S104
        """Serve ``/metrics`` for this registry on a background thread (for a service without an
        HTTP server of its own); returns the bound address. Port 0 picks a free port."""
        server, _thread = start_http_server(port, addr, registry=self.registry)
        self._server = server
        host, bound = server.server_address[:2]
        return str(host), int(bound)

    def close(self) -> None:
        """Stop the server ``serve()`` started (if any)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
