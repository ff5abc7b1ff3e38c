"""PrometheusMetrics counts what sealers and openers report."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sealedbus import KeyServiceUnavailable, Opener, PrometheusMetrics, Reason

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


class _Down:
    """A member whose key service cannot be reached: every lookup raises."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def down(*args: Any, **kwargs: Any) -> Any:
            raise KeyServiceUnavailable(f"the key service is down ({name})")

        return down


def test_open_many_counts_each_key_service_error_as_open_does(world: World) -> None:
    """Every envelope that ``open_many`` cannot open for want of keys counts once, as ``open``
    counts it (before the fix, a batch reported none of them, or only its first)."""
    sealer = world.sealer(batch_size=4)
    envelopes = [s.envelope for i in range(4) for s in sealer.add("orders", b"m%d" % i)]
    metrics = PrometheusMetrics()
    opener = Opener(_Down(world.members["consumer"]), metrics=metrics, clock=world.clock)
    results = opener.open_many([("orders", e) for e in envelopes])
    assert [type(r) for r in results] == [KeyServiceUnavailable] * 4
    errors = "sealedbus_key_service_errors_total"
    assert _value(metrics.registry, errors, topic="orders", error="unavailable") == 4
    with pytest.raises(KeyServiceUnavailable):
        opener.open("orders", envelopes[0])
    assert _value(metrics.registry, errors, topic="orders", error="unavailable") == 5
    rejections = [
        s.value
        for metric in metrics.registry.collect()
        for s in metric.samples
        if s.name == "sealedbus_envelopes_rejected_total"
    ]
    assert sum(rejections) == 0  # a key service outage is not the envelope's fault


class _PerMessage(PrometheusMetrics):
    """A sink without the batch reports: the opener reports message by message."""

    opened_many = None  # type: ignore[assignment]
    key_cache_hits = None  # type: ignore[assignment]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        # times differ between runs: only the count of the latency histogram compares
        if not s.name.endswith(("_sum", "_created"))
        and not (s.name.endswith("_bucket") and s.labels["le"] != "+Inf")
    }


def test_batch_reports_count_as_the_single_reports(world: World) -> None:
    """``open_many`` reports a batch through ``BatchMetrics`` when the sink has it: the same
    messages, bytes, histogram buckets, cache hits and refusals as one report per message."""
    sealer = world.sealer(batch_size=16)
    envelopes = [s.envelope for i in range(16) for s in sealer.add("orders", b"x" * i)]
    items = [("orders", e) for e in envelopes[1:]] + [("orders", envelopes[3])]
    registries = []
    for metrics in (PrometheusMetrics(), _PerMessage()):
        opener = world.opener(metrics=metrics)
        opener.open("orders", envelopes[0])
        results = opener.open_many(items)
        assert [getattr(r, "reason", None) for r in results] == [None] * 15 + [Reason.DUPLICATE]
        registries.append(metrics.registry)
    assert _samples(registries[0]) == _samples(registries[1])
    assert _value(registries[0], "sealedbus_messages_opened_total", topic="orders") == 16
    assert _value(registries[0], "sealedbus_open_seconds_count", topic="orders") == 16


def test_a_raising_batch_sink_does_not_eat_the_messages(world: World) -> None:
    class Broken(PrometheusMetrics):
        def opened_many(self, topic: str, count: int, payload_bytes: int, seconds: float) -> None:
            raise RuntimeError("metrics backend down")

        def opened(self, topic: str, payload_bytes: int, seconds: float) -> None:
            raise RuntimeError("metrics backend down")

    sealer = world.sealer(batch_size=4)
    envelopes = [s.envelope for i in range(4) for s in sealer.add("orders", b"m%d" % i)]
    opener = world.opener()
    opener.open("orders", envelopes[0])  # the native core's fast path knows the session now
    opener.metrics = Broken()
    with pytest.raises(RuntimeError):
        opener.open_many([("orders", e) for e in envelopes[1:]])
    opener.metrics = PrometheusMetrics()
    opened = opener.open_many([("orders", e) for e in envelopes[1:]])  # none taken for a replay
    assert [getattr(m, "body", None) for m in opened] == [b"m1", b"m2", b"m3"]


@pytest.mark.parametrize("amount", [0.0, 3e-5, 0.001, 0.0011, 0.7, 99.0])
def test_many_observations_land_as_one_by_one(amount: float) -> None:
    one, many = PrometheusMetrics(), PrometheusMetrics()
    for _ in range(7):
        one.opened("t", 10, amount)
    many.opened_many("t", 7, 70, amount)
    got = [_samples(m.registry) for m in (one, many)]
    assert got[0] == got[1] != {}
    buckets = [
        {le: _value(m.registry, "sealedbus_open_seconds_bucket", topic="t", le=le) for le in LES}
        for m in (one, many)
    ]
    assert buckets[0] == buckets[1]
    sums = [_value(m.registry, "sealedbus_open_seconds_sum", topic="t") for m in (one, many)]
    assert sums[1] == pytest.approx(sums[0])


LES = ("5e-05", "0.001", "0.0025", "1.0", "+Inf")
