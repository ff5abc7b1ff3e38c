"""The KDS's Prometheus metrics, in a registry of its own (served at ``/metrics``).

Counters are kept by the API and the scheduler as things happen; the schedule's state (the epoch
each topic is in, the destructions that are overdue, scheduler leadership) is read from the
store when Prometheus scrapes, so every replica reports the same database truth.

=================================================  =======  =================
series                                             type     labels
=================================================  =======  =================
sealedbus_kds_requests_total                       counter  route, status
sealedbus_kds_request_seconds                      histo    route
sealedbus_kds_refusals_total                       counter  code
sealedbus_kds_enrollments_total                    counter
sealedbus_kds_grants_total                         counter
sealedbus_kds_rotations_total                      counter  trigger (admin, scheduler)
sealedbus_kds_epochs_published_total               counter
sealedbus_kds_epochs_destroyed_total               counter
sealedbus_kds_scheduler_leader                     gauge
sealedbus_kds_topics                               gauge
sealedbus_kds_epoch_start_timestamp_seconds        gauge    topic
sealedbus_kds_topic_rotation_seconds               gauge    topic
sealedbus_kds_destruction_overdue_epochs           gauge    topic
sealedbus_kds_destruction_overdue_seconds          gauge    topic
=================================================  =======  =================

``route`` is the route template (``/v1/topics/{topic}/...``, or ``unmatched``), ``code`` a KDS
refusal code, ``topic`` an administered topic: all bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sealedbus.kds.service import KeyDistributionService

log = logging.getLogger("sealedbus.kds")


class KdsMetrics:
    """The KDS's own series; ``watch()`` adds those read from the store at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sealedbus_kds_requests", "HTTP requests", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "sealedbus_kds_request_seconds", "HTTP request latency", ["route"], registry=r
        )
        self.refusals = Counter(
            "sealedbus_kds_refusals", "Refused requests by code", ["code"], registry=r
        )
        self.grants = Counter("sealedbus_kds_grants", "Epoch key grants issued", registry=r)
        self.enrollments = Counter("sealedbus_kds_enrollments", "Members enrolled", registry=r)
        self.rotations = Counter(
            "sealedbus_kds_rotations",
            "Epochs started out of schedule (admin: rotate, revoke or policy change)",
            ["trigger"],
            registry=r,
        )
        self.published = Counter(
            "sealedbus_kds_epochs_published", "Epochs published by the scheduler", registry=r
        )
        self.destroyed = Counter(
            "sealedbus_kds_epochs_destroyed",
            "Epoch private keys destroyed after retention",
            registry=r,
        )
        self.leader = Gauge(
            "sealedbus_kds_scheduler_leader",
            "1 while this replica runs the rotation scheduler",
            registry=r,
        )
        self.rotations.labels("admin")
        self.rotations.labels("scheduler")
        self._schedule: _Schedule | None = None

    def watch(self, service: KeyDistributionService, is_leader: Callable[[], bool]) -> None:
        """Report the schedule's state from ``service``'s store at each scrape."""
        self.leader.set_function(lambda: 1.0 if is_leader() else 0.0)
        if self._schedule is not None:
            self.registry.unregister(self._schedule)
        self._schedule = _Schedule(service)
        self.registry.register(self._schedule)


class _Schedule(Collector):
    """Per-topic epoch age and overdue destructions, read from the store when scraped."""

    def __init__(self, service: KeyDistributionService) -> None:
        self.service = service

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        topics, start, rotation, overdue, late = families
        try:
            now = self.service.now_ms()
            policies = self.service.topics()
            for policy in policies:
                epochs = self.service.epochs(policy.name)
                current = [e for e in epochs if e.not_before_ms <= now]
                if current:
                    start.add_metric(
                        [policy.name], max(current, key=lambda e: e.epoch).not_before_ms / 1000
                    )
                rotation.add_metric([policy.name], policy.rotation_ms / 1000)
                due = [e for e in epochs if not e.destroyed and e.destroy_after_ms <= now]
                overdue.add_metric([policy.name], len(due))
                oldest = min((e.destroy_after_ms for e in due), default=now)
                late.add_metric([policy.name], (now - oldest) / 1000)
            topics.add_metric([], len(policies))
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("schedule metrics unavailable: %s", type(exc).__name__)
            return
        yield from families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("sealedbus_kds_topics", "Topics administered"),
            GaugeMetricFamily(
                "sealedbus_kds_epoch_start_timestamp_seconds",
                "Start of each topic's current epoch (Unix time)",
                labels=["topic"],
            ),
            GaugeMetricFamily(
                "sealedbus_kds_topic_rotation_seconds",
                "Each topic's rotation period",
                labels=["topic"],
            ),
            GaugeMetricFamily(
                "sealedbus_kds_destruction_overdue_epochs",
                "Epochs past their retention whose private key is not destroyed yet",
                labels=["topic"],
            ),
            GaugeMetricFamily(
                "sealedbus_kds_destruction_overdue_seconds",
                "How long the oldest overdue destruction has been due",
                labels=["topic"],
            ),
        )
