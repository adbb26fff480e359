"""Prometheus metrics of the daemon, in a registry of its own, served on 127.0.0.1 on request."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

#: Cycle outcomes: ok, paused (ran, applied nothing), error, engine_crash, db_unreachable,
#: overrun (skipped because the previous cycle was still running), standby (not the leader),
#: lease_lost (its commit found another daemon holding the lease: nothing was written),
#: farm_unreachable (the farm manager could not be read: no cycle on a stale picture).
OUTCOMES = ("ok", "paused", "error", "engine_crash", "db_unreachable", "overrun", "standby", "lease_lost",
            "farm_unreachable")


def _version() -> str:
    try:
        return metadata.version("corral")
    except metadata.PackageNotFoundError:  # (a checkout run without installing)
        return "unknown"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.cycles = Counter("corral_cycles", "Evaluation cycles, by outcome.", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.cycles.labels(outcome)
        self.duration = Histogram(
            "corral_cycle_duration_seconds", "Wall time of a cycle (read, evaluate, plan, apply).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r,
        )
        self.facts = Gauge("corral_facts_read", "Facts (jobs, frames, instances, workers) read by the last cycle.", registry=r)
        self.reread = Gauge(
            "corral_rows_reread", "Rows the last cycle's read took in again unchanged (PostgreSQL: a transaction "
            "left open elsewhere on the server holds back where reads start).", registry=r)
        self.matches = Counter("corral_matches", "Entities matched, per policy.", ["policy"], registry=r)
        self.transitions = Counter(
            "corral_transitions", "Transitions per policy: applied, audited (would have) or refused.",
            ["policy", "result"], registry=r,
        )
        self.refused = Counter("corral_refused_transitions", "Transitions refused by compare-and-set or the state model.",
                               ["policy"], registry=r)
        self.errors = Counter("corral_errors", "Errors, by type.", ["type"], registry=r)
        self.paused = Gauge("corral_paused", "1 while corral is paused (`corral pause`).", registry=r)
        self.leader = Gauge("corral_leader", "1 while this daemon holds the store's lock (0: hot standby).", registry=r)
        self.last_success = Gauge("corral_last_success_timestamp_seconds", "Unix time of the last successful cycle.",
                                  registry=r)
        self.policies = Gauge("corral_policies", "Policies in force.", registry=r)
        self.policy_errors = Gauge("corral_policy_file_errors", "Errors in policy files at the last (re)load.", registry=r)
        self.reloads = Counter("corral_reloads", "Policy reloads, by result (ok or rejected).", ["result"], registry=r)
        self.outbox_sent = Counter(
            "corral_outbox_sends", "Outbox rows sent, per sink and outcome (delivered, refused, failed, dead, doubt).",
            ["sink", "outcome"], registry=r)
        self.outbox_unsettled = Gauge("corral_outbox_unsettled", "Outbox rows not yet delivered (pending, sending, in "
                                      "doubt), per sink.", ["sink"], registry=r)
        self.outbox_oldest = Gauge("corral_outbox_oldest_unsettled_seconds",
                                   "Age of the oldest outbox row not yet delivered (0: none).", registry=r)
        self.build = Info("corral_build", "The corral running: its version and Python's.", registry=r)
        self.build.info({"version": _version(), "python": platform.python_version()})
        for kind in ("db_unreachable", "engine_crash", "farm_unreachable", "delivery", "store"):
            self.errors.labels(kind)  # every series exists at zero from the start: rate() and alerts work at once
        for result in ("ok", "rejected"):
            self.reloads.labels(result)
        self._server: Any = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics on addr:port (port 0 picks a free one); returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
