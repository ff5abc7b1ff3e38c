"""PrometheusMetrics counts what sealers and openers report."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from sealedbus import PrometheusMetrics, Reason

from ._support import World, rejected


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_counts_sealed_opened_and_rejected(world: World) -> None:
    metrics = PrometheusMetrics()
    r = metrics.registry
    sealer = world.sealer(metrics=metrics, batch_size=2)
    opener = world.opener(metrics=metrics)
    singles = [sealer.seal("orders", b"abc") for _ in range(3)]
    batch = [s.envelope for _ in range(2) for s in sealer.add("orders", b"12345")]
    assert _value(r, "sealedbus_messages_sealed_total", topic="orders") == 5
    assert _value(r, "sealedbus_payload_sealed_bytes_total", topic="orders") == 3 * 3 + 2 * 5
    assert _value(r, "sealedbus_sessions_started_total", topic="orders") == 1
    assert _value(r, "sealedbus_seal_seconds_count", topic="orders") == 4  # 3 singles, 1 batch
    for e in singles + batch:
        opener.open("orders", e)
    assert _value(r, "sealedbus_messages_opened_total", topic="orders") == 5
    assert _value(r, "sealedbus_payload_opened_bytes_total", topic="orders") == 19
    assert _value(r, "sealedbus_open_seconds_count", topic="orders") == 5

    rejected(lambda: opener.open("orders", singles[0]), Reason.DUPLICATE)
    rejected(lambda: opener.open("orders", singles[1]), Reason.DUPLICATE)
    rejected(lambda: opener.open("orders", b"plain"), Reason.NOT_ENVELOPE)
    rejected(
        lambda: world.opener("outsider", metrics=metrics).open("audit", singles[2]),
        Reason.SENDER_NOT_ALLOWED,
    )
    rejected_total = "sealedbus_envelopes_rejected_total"
    assert _value(r, rejected_total, topic="orders", reason="duplicate") == 2
    assert _value(r, rejected_total, topic="orders", reason="not_envelope") == 1
    assert _value(r, rejected_total, topic="audit", reason="sender_not_allowed") == 1
    assert _value(r, rejected_total, topic="orders", reason="bad_signature") == 0
    assert _value(r, "sealedbus_messages_opened_total", topic="orders") == 5  # unchanged


def test_dead_lettered_and_own_registry() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    assert metrics.registry is registry
    metrics.dead_lettered("t", "bad_signature")
    metrics.dead_lettered("t", "bad_signature")
    assert (
        _value(
            registry, "sealedbus_envelopes_dead_lettered_total", topic="t", reason="bad_signature"
        )
        == 2
    )
    PrometheusMetrics()  # a fresh registry each: no duplicate-series error


def test_a_raising_metrics_sink_does_not_eat_the_message(world: World) -> None:
    class Broken(PrometheusMetrics):
        def opened(self, topic: str, payload_bytes: int, seconds: float) -> None:
            raise RuntimeError("metrics backend down")

    envelope = world.sealer().seal("orders", b"kept")
    opener = world.opener(metrics=Broken())
    with pytest.raises(RuntimeError):
        opener.open("orders", envelope)
    opener.metrics = PrometheusMetrics()
    assert opener.open("orders", envelope).body == b"kept"  # not taken for a duplicate
