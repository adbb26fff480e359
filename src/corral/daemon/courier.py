"""The daemon's courier: the outbox delivered while the daemon leads.

It publishes the configured sinks' routes to the store when its daemon becomes the
leader (from then on every applied transition is queued for them, whoever applies it),
and runs delivery passes (`corral.deliver`) on the scheduler's thread of its own, so a
slow supervisor delays deliveries, never cycles.  Its metrics: rows sent per sink and
outcome, rows unsettled per sink, and the age of the oldest one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from corral.daemon.metrics import Metrics
from corral.deliver import DeliveryReport, deliver
from corral.outbox import Route, Status
from corral.ports import Sink
from corral.sinks.config import DeliveryConfig, SinksFile, build_sinks, load_sinks, routes_of
from corral.store.store import Store

log = logging.getLogger("corral.deliver")


class SinksFileError(Exception):
    """The sinks file has errors: every one of them, with file:line."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__(f"{len(errors)} error(s) in the sinks file; fix them (`corral check` shows them too)")


def load_sinks_file(path: Path | None) -> tuple[SinksFile, dict[str, Sink]]:
    """The checked file and its sinks, built; no file: no sinks (nothing is delivered)."""
    if path is None:
        return SinksFile(), {}
    result = load_sinks(path)
    for warning in result.warnings:
        log.warning("sinks file: %s", warning)
    if result.config is None:
        raise SinksFileError([str(e) for e in result.errors])
    return result.config, build_sinks(result.config)


class Courier:
    """Delivery for one daemon (or one `corral deliver`)."""

    def __init__(self, store: Store, config: SinksFile, sinks: Mapping[str, Sink], *,
                 clock: Callable[[], datetime], metrics: Metrics | None = None) -> None:
        self.store = store
        self.config = config
        self.sinks = dict(sinks)
        self.routes: list[Route] = routes_of(config, self.sinks)
        self.delivery: DeliveryConfig = config.delivery
        self.clock = clock
        self.metrics = metrics
        self._lock = threading.Lock()
        self._resolved = False  # rows left `sending` are resolved by the first pass only

    def publish(self) -> None:
        """Tell every writer which sinks to queue for (no sinks: none; a previous leader's
        routes must not go on queueing rows nobody delivers)."""
        if self.store.routes() != tuple(sorted(self.routes, key=lambda r: r.sink)):
            self.store.set_routes(self.routes)
            log.info("delivering to %s", ", ".join(r.sink for r in self.routes) or "no sink (nothing is queued)")

    def run(self, stop: Callable[[], bool] = lambda: False, limit: int | None = None) -> DeliveryReport | None:
        """One pass (None when another is under way or there is no sink)."""
        if not self.sinks or not self._lock.acquire(blocking=False):
            return None
        try:
            report = deliver(self.store, self.sinks, clock=self.clock, retries=self.delivery.retries(), limit=limit,
                             stop=stop, resolve=not self._resolved)
            self._resolved = True
            self._count(report)
            return report
        finally:
            self._lock.release()

    def _count(self, report: DeliveryReport) -> None:
        if self.metrics is None:
            return
        sent = self.metrics.outbox_sent
        for entry in report.delivered:
            sent.labels(entry.sink, "delivered").inc()
        for outcome, rows in (("refused", report.refused), ("failed", report.failed), ("dead", report.dead)):
            for entry, _ in rows:
                sent.labels(entry.sink, outcome).inc()
        for entry in report.doubt:
            sent.labels(entry.sink, "doubt").inc()
        self.export()

    def export(self) -> None:
        """The backlog gauges (rows unsettled per sink, the oldest one's age)."""
        if self.metrics is None:
            return
        pending, oldest = self.metrics.outbox_unsettled, self.metrics.outbox_oldest
        backlog = self.store.outbox_backlog(unsettled_only=True)
        for name in self.sinks:
            waiting = sum(n for (sink, status), n in backlog.counts.items()
                          if sink == name and status in (Status.PENDING, Status.SENDING, Status.DOUBT))
            pending.labels(name).set(waiting)
        age = 0.0 if backlog.oldest_pending is None else max((self.clock() - backlog.oldest_pending).total_seconds(), 0.0)
        oldest.set(age)

    def close(self) -> None:
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception as err:  # closing must not stop the others closing
                log.debug("closing sink %s: %s", sink.name, err)
