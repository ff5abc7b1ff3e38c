"""The rotation scheduler. Every replica runs this loop, but only the holder of the database
lease ticks: it publishes due epochs and destroys expired keys. A lease not renewed within
``lease_seconds`` (the leader died) is taken by the next replica that asks, which continues the
schedule from the database. Double work is impossible anyway: epochs are re-checked under the
store's write lock and keyed by (topic, epoch)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sealedbus.kds.metrics import KdsMetrics
from sealedbus.kds.service import KeyDistributionService

log = logging.getLogger("sealedbus.kds.scheduler")


class Scheduler:
    def __init__(
        self,
        service: KeyDistributionService,
        *,
        interval: float = 1.0,
        lease_seconds: float = 10.0,
        metrics: KdsMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < interval < lease_seconds:
            raise ValueError("the scheduler interval must be shorter than the lease")
        self.service = service
        self.holder = service.replica
        self.interval = interval
        self.lease_ms = int(lease_seconds * 1000)
        self.metrics = metrics
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leader = False

    def run_once(self) -> bool:
        """Renew or take the lease and, holding it, tick once. Returns whether we lead."""
        leader = self.service.store.try_lease(self.holder, int(self._clock() * 1000), self.lease_ms)
        if leader != self.leader:
            log.info("replica %s %s the scheduler", self.holder, "runs" if leader else "left")
            self.leader = leader
        if leader:
            report = self.service.tick(f"scheduler:{self.holder}")
            if self.metrics is not None:
                self.metrics.published.inc(report.published)
                self.metrics.rotations.labels("scheduler").inc(report.published)
                self.metrics.destroyed.inc(report.destroyed)
        return leader

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="kds-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.leader:
            self.service.store.release_lease(self.holder)
            self.leader = False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a database hiccup must not kill the scheduler
                log.warning("scheduler tick failed: %s", type(exc).__name__)
                self.leader = False
            self._stop.wait(self.interval)
