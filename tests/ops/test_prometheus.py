"""A real Prometheus (Debian's) on loopback scrapes a running KDS and a sealed producer/consumer
pair, with the chart's alert rules loaded. Through its HTTP API: every series the dashboard and
the alerts use exists and carries the labels they group and match on, every dashboard panel's
query returns data, and every alert rule evaluates without error."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.kds._processes import free_port

from ._stack import Stack, Traffic
from ._tools import CHART, tool

pytestmark = [pytest.mark.ops, pytest.mark.slow]

DASHBOARD = CHART / "files" / "dashboard.json"
RULES = CHART / "files" / "alerts.yaml"
RATE_WINDOW = "15s"  # stands for Grafana's $__rate_interval: several 1 s scrapes
METRIC = re.compile(r"\b(sealedbus_[a-z0-9_]+|up)\b(?!\s*\()")
GROUPING = re.compile(r"\b(?:by|on|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        (p["title"], t["expr"].replace("$__rate_interval", RATE_WINDOW))
        for p in panels
        if p["type"] != "row"
        for t in p["targets"]
    ]


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def used_labels(expr: str) -> set[str]:
    labels = {n.strip() for g in GROUPING.findall(expr) for n in g.split(",") if n.strip()}
    for selector in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(MATCHER.findall(selector))
    return labels - {"le", "__name__"}


class Prometheus:
    def __init__(self, work: Path, targets: dict[str, str]) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": urlsplit(url).path,
                    "static_configs": [{"targets": [urlsplit(url).netloc]}],
                }
                for job, url in targets.items()
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (work / "prometheus.log").open("w")
        self.process = subprocess.Popen(  # noqa: S603 - Debian's prometheus, fixed arguments
            [
                tool("prometheus"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait("/-/ready")

    def _wait(self, path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(Path(self.log.name).read_text())
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready: {Path(self.log.name).read_text()[-2000:]}")

    def api(self, path: str, **params: Any) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(
    stack: tuple[Stack, Traffic], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    running, _ = stack
    server = Prometheus(
        tmp_path_factory.mktemp("prometheus"),
        {
            "sealedbus-kds": running.kds_url + "/metrics",
            "sealedbus-producer": running.producer_metrics,
            "sealedbus-consumer": running.consumer_metrics,
        },
    )
    try:
        yield server
    finally:
        server.stop()


def eventually(
    prometheus: Prometheus, expr: str, seconds: float = 60, count: int = 1
) -> list[dict[str, Any]]:
    """The query's result once it has ``count`` samples (rates need a few scrapes)."""
    deadline = time.monotonic() + seconds
    while True:
        result = prometheus.query(expr)
        if len(result) >= count or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_every_target_is_scraped(prometheus: Prometheus) -> None:
    up = eventually(prometheus, "up == 1 and count_over_time(up[1m]) > 2", count=3)
    assert {r["metric"]["job"] for r in up} == {
        "sealedbus-kds",
        "sealedbus-producer",
        "sealedbus-consumer",
    }


def test_series_of_the_dashboard_and_alerts_exist_with_their_labels(prometheus: Prometheus) -> None:
    exprs = dashboard_queries() + alert_expressions()
    checked: set[str] = set()
    for where, expr in exprs:
        wanted = used_labels(expr)
        for metric in set(METRIC.findall(expr)):
            series = eventually(prometheus, f"count by (__name__) ({metric})", 30)
            assert series, f"{where}: no series {metric}"
            found = prometheus.api("series", **{"match[]": metric})
            names = set().union(*(s.keys() for s in found))
            assert wanted <= names, f"{where}: {metric} lacks labels {wanted - names}"
            checked.add(metric)
    for name in (  # what "is sealing healthy?" needs, each seen on the wire
        "sealedbus_messages_sealed_total",
        "sealedbus_messages_opened_total",
        "sealedbus_envelopes_rejected_total",
        "sealedbus_envelopes_dead_lettered_total",
        "sealedbus_duplicates_dropped_total",
        "sealedbus_seal_seconds_bucket",
        "sealedbus_open_seconds_bucket",
        "sealedbus_sealing_epoch_start_timestamp_seconds",
        "sealedbus_revocation_list_issued_timestamp_seconds",
        "sealedbus_key_cache_hits_total",
        "sealedbus_key_cache_misses_total",
        "sealedbus_key_service_errors_total",
        "sealedbus_kds_requests_total",
        "sealedbus_kds_grants_total",
        "sealedbus_kds_rotations_total",
        "sealedbus_kds_epochs_destroyed_total",
        "sealedbus_kds_scheduler_leader",
        "sealedbus_kds_destruction_overdue_seconds",
    ):
        assert name in checked, name


def test_the_troubles_show_with_their_reasons(prometheus: Prometheus) -> None:
    dead = eventually(prometheus, "sealedbus_envelopes_dead_lettered_total > 0")
    assert {r["metric"]["topic"] for r in dead} == {"orders"}
    assert {r["metric"]["reason"] for r in dead} <= {"bad_signature", "decrypt_failed"}
    dropped = eventually(prometheus, 'sealedbus_duplicates_dropped_total{topic="orders"} > 0')
    assert dropped
    errors = eventually(prometheus, "sealedbus_key_service_errors_total > 0")
    assert ("audit", "unknown_topic") in {
        (r["metric"]["topic"], r["metric"]["error"]) for r in errors
    }
    leader = eventually(prometheus, 'sealedbus_kds_scheduler_leader{job="sealedbus-kds"} == 1')
    assert len(leader) == 1
    destroyed = eventually(prometheus, "sealedbus_kds_epochs_destroyed_total > 0")
    assert destroyed  # 6 s retention: the scheduler destroyed keys while we watched


def test_every_dashboard_panel_query_returns_data(prometheus: Prometheus) -> None:
    empty = [
        (title, expr) for title, expr in dashboard_queries() if not eventually(prometheus, expr)
    ]
    assert empty == []


def test_every_alert_rule_evaluates_cleanly(prometheus: Prometheus) -> None:
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if all(r.get("lastEvaluation", "").startswith("2") for r in rules) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(1)
    assert {r["name"] for r in rules} == {name for name, _ in alert_expressions()}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    firing = {r["name"] for r in rules if r["state"] == "firing"}
    assert "SealedbusKdsNoSchedulerLeader" not in firing  # one leader: quiet, as it should be
    assert "SealedbusKdsSchedulerSplitBrain" not in firing
