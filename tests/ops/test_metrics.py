"""The metrics an SRE reads: Prometheus conventions checked by ``promtool check metrics`` on the
KDS's and the clients' expositions, bounded labels, one call to expose client metrics, and a core
that stays free of prometheus_client."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from prometheus_client import CollectorRegistry

from sealedbus import Reason
from sealedbus.metrics import CACHE_SENDER, NoMetrics
from sealedbus.ops.prometheus import OTHER, PrometheusMetrics

from ._stack import Stack, Traffic
from ._tools import run, tool


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_importing_the_core_sealer_and_opener_does_not_import_prometheus_client() -> None:
    code = (
        "import sys, sealedbus.core.wire, sealedbus.sealer, sealedbus.opener, sealedbus.metrics\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client was imported'\n"
        "import sealedbus\n"
        "assert 'prometheus_client' not in sys.modules, 'sealedbus imported prometheus_client'\n"
        "sealedbus.PrometheusMetrics\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    result = subprocess.run(  # noqa: S603 - fixed code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_topic_labels_are_bounded() -> None:
    fixed = PrometheusMetrics(topics=["orders"])
    for topic in ("orders", "patient-123", "patient-456"):
        fixed.sealed(topic, 1, 10, 0.001)
    r = fixed.registry
    assert value(r, "sealedbus_messages_sealed_total", topic="orders") == 1
    assert value(r, "sealedbus_messages_sealed_total", topic=OTHER) == 2
    assert value(r, "sealedbus_messages_sealed_total", topic="patient-123") == 0

    capped = PrometheusMetrics(max_topics=2)
    for i in range(50):
        capped.opened(f"t{i}", 1, 0.001)
        capped.rejected(f"t{i}", "bad_signature")
    names = {
        s.labels["topic"]
        for m in capped.registry.collect()
        for s in m.samples
        if "topic" in s.labels
    }
    assert names == {"t0", "t1", OTHER}


def test_reason_labels_come_from_the_fixed_codes() -> None:
    metrics = PrometheusMetrics(topics=["orders"])
    metrics.rejected("orders", Reason.BAD_SIGNATURE.value)
    metrics.rejected("orders", "anything else an attacker could make up")
    metrics.dead_lettered("orders", "\x00free text")
    metrics.key_service_error("orders", "made up")
    r = metrics.registry
    total = "sealedbus_envelopes_rejected_total"
    assert value(r, total, topic="orders", reason="bad_signature") == 1
    assert value(r, total, topic="orders", reason=OTHER) == 1
    assert value(r, "sealedbus_envelopes_dead_lettered_total", topic="orders", reason=OTHER) == 1
    assert value(r, "sealedbus_key_service_errors_total", topic="orders", error=OTHER) == 1


def test_duplicates_epochs_caches_and_revocations() -> None:
    metrics = PrometheusMetrics(topics=["orders"])
    metrics.rejected("orders", Reason.DUPLICATE.value)
    metrics.sealing_epoch("orders", 7, 1000.0, 4600.0)
    metrics.sealing_epoch("elsewhere", 9, 1.0, 2.0)  # "other": no gauge mixing topics
    metrics.key_cache(CACHE_SENDER, True)
    metrics.key_cache(CACHE_SENDER, False)
    metrics.revocations(1234.5)
    r = metrics.registry
    assert value(r, "sealedbus_duplicates_dropped_total", topic="orders") == 1
    assert value(r, "sealedbus_sealing_epoch", topic="orders") == 7
    assert value(r, "sealedbus_sealing_epoch_start_timestamp_seconds", topic="orders") == 1000
    assert value(r, "sealedbus_sealing_epoch_end_timestamp_seconds", topic="orders") == 4600
    assert r.get_sample_value("sealedbus_sealing_epoch", {"topic": OTHER}) is None
    assert value(r, "sealedbus_key_cache_hits_total", cache="sender") == 1
    assert value(r, "sealedbus_key_cache_misses_total", cache="sender") == 1
    assert value(r, "sealedbus_revocation_list_issued_timestamp_seconds") == 1234.5


def test_serve_exposes_the_registry_with_one_call() -> None:
    metrics = PrometheusMetrics(topics=["orders"])
    metrics.sealed("orders", 3, 30, 0.003)
    host, port = metrics.serve(0, "127.0.0.1")
    try:
        text = httpx.get(f"http://{host}:{port}/metrics", timeout=5).text
        assert 'sealedbus_messages_sealed_total{topic="orders"} 3.0' in text
    finally:
        metrics.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{host}:{port}/metrics", timeout=2)


def test_no_metrics_accepts_every_report() -> None:
    sink = NoMetrics()
    sink.sealing_epoch("t", 1, 0.0, 1.0)
    sink.revocations(0.0)
    sink.key_cache(CACHE_SENDER, True)
    sink.key_service_error("t", "unavailable")


def promtool_check(exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the tool's fixed path
        [tool("promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.ops
@pytest.mark.slow
def test_promtool_accepts_the_kds_and_client_expositions(stack: tuple[Stack, Traffic]) -> None:
    running, _ = stack
    kds = httpx.get(running.kds_url + "/metrics", timeout=5).text
    for name in (
        "sealedbus_kds_requests_total",
        "sealedbus_kds_grants_total",
        "sealedbus_kds_scheduler_leader",
        "sealedbus_kds_epoch_start_timestamp_seconds",
        "sealedbus_kds_destruction_overdue_seconds",
    ):
        assert name in kds, name
    clients = [
        httpx.get(url, timeout=5).text
        for url in (running.producer_metrics, running.consumer_metrics)
    ]
    assert "sealedbus_messages_sealed_total" in clients[0]
    assert "sealedbus_messages_opened_total" in clients[1]
    for exposition in (kds, *clients):
        result = promtool_check(exposition)
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.ops
def test_promtool_check_metrics_can_fail() -> None:
    bad = (
        "# HELP sealedbus_latency_ms Latency\n"
        "# TYPE sealedbus_latency_ms counter\n"
        "sealedbus_latency_ms 1\n"
    )
    result = promtool_check(bad)
    assert result.returncode != 0 or result.stdout.strip()
    run(tool("promtool"), "--version")
