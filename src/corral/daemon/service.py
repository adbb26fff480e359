"""The daemon: ticks, leadership, hot reload, cycles, back-off, metrics, signals.

Every tick (each `interval` seconds, or sooner when the feed announces news: see
`corral.daemon.wake`; never two at once: an overrunning cycle makes the ticks that
fell in it skip, they do not stack) the daemon

1. waits out its back-off if the database was unreachable;
2. reloads changed policy files (`PolicyWatcher`), swapping the new PolicySet into its
   one `Session` (which keeps the farm in memory);
3. takes or confirms the store's lock (`leader`); without it, it is a hot standby;
4. runs one cycle through `corral.cycle.run_cycle`, the code `corral plan` and
   `corral run --once` use, with the policies due now (`ScheduleTracker`).

Any exception costs that tick only.  The store applies a cycle in one transaction,
so a cycle that fails (or a daemon that is killed) leaves nothing half-applied.
SIGTERM or SIGINT: the cycle running finishes, then the daemon exits 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import exc as sa_exc

from corral.cycle import CycleResult, run_cycle
from corral.daemon.backoff import Backoff
from corral.daemon.courier import Courier, load_sinks_file
from corral.daemon.isolated import EngineCrashed, IsolatedEvaluator
from corral.daemon.leader import LeaderError, Leadership, Lease, LeaseLost
from corral.daemon.metrics import Metrics
from corral.daemon.schedule import DEFAULT_GRACE, SETTING_PREFIX, ScheduleTracker
from corral.daemon.wake import DEFAULT_MIN_GAP, NewsWatch, Pace
from corral.daemon.watch import PolicyWatcher
from corral.deliver import DeliveryReport
from corral.failures import FailureClasses
from corral.farm import Job, utcnow
from corral.farms import open_farm
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.ports import FarmReader, FarmUnreachable, IncrementalEvaluator
from corral.session import FULL_READ_EVERY, EvaluatorFactory, Session
from corral.store.engine import describe, first_line
from corral.store.store import Store, StoreError
from corral.store.sync import SyncReport

log = logging.getLogger("corral.daemon")
HEARTBEAT_SETTING = "daemon:last_cycle"

#: A read that brings back this many rows unchanged, this many cycles in a row, has the
#: daemon say which transaction holds the change mark back (`_watch_rereads`); again
#: every REREAD_AGAIN cycles while it lasts.
REREAD_WARN, REREAD_CYCLES, REREAD_AGAIN = 1000, 3, 120


class AnotherDaemon(Exception):
    """Another corral daemon holds this store's lock."""


def _db_error(err: BaseException) -> bool:
    """Is this the database being away (retry later) rather than a bug?"""
    if isinstance(err, LeaderError | sa_exc.OperationalError | sa_exc.InterfaceError | sqlite3.OperationalError):
        return True  # (the hot reads and the change stamp run on the driver's own cursor)
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(err, psycopg.OperationalError | psycopg.InterfaceError)


@dataclass
class DaemonConfig:
    db_url: str
    paths: list[Path]
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    interval: float = 30.0
    dry_run: bool = False
    engine: str = "durable"  # durable | reference
    isolate: bool = True  # run the engine in a child process
    engine_timeout: float = 120.0
    backoff_cap: float = 300.0
    #: How long a stop (SIGTERM, SIGINT) waits for the cycle running to finish.
    stop_grace: float = 10.0
    schedule_grace: timedelta = DEFAULT_GRACE
    #: The sinks file (`corral.sinks.config`): where applied actions are delivered.  None:
    #: nowhere (corral's store is the farm, as with `corral ingest`).
    sinks_file: Path | None = None
    #: The farm manager to read and sync from before each cycle (`corral.farms`,
    #: afanasy://HOST:PORT).  None: corral's store is the farm.
    farm_url: str | None = None
    #: Run a cycle soon after the feed announces news (`corral.daemon.wake`), not only
    #: every `interval`.
    wake: bool = True
    #: Seconds between the end of a cycle and the start of one news brings forward.
    min_gap: float = DEFAULT_MIN_GAP


@dataclass
class Tick:
    """What one tick did (for tests and `--once`)."""

    outcome: str
    result: CycleResult | None = None
    error: str | None = None


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        metrics: Metrics | None = None,
        leadership: Leadership | None = None,
        evaluator_factory: EvaluatorFactory | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.store = Store.open(config.db_url)
        # host:pid, and which daemon of the process (tests and tools run several in one)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:4]}"
        # The lease lasts an interval (renewed every third of it): a standby acts within two
        # intervals of the leader's last renewal, however the leader stopped.
        self.leader = leadership or Lease(self.store, self.holder, ttl=config.interval)
        self.watcher = PolicyWatcher(config.paths, config.overrides)
        self.schedules = ScheduleTracker(config.schedule_grace)
        self.backoff = Backoff(base=max(config.interval, 0.5), cap=max(config.backoff_cap, config.interval))
        self.clock = clock
        self._factory = evaluator_factory
        self._policies: list[Policy] | None = None
        self._classes: FailureClasses | None = None
        #: The one session of the daemon's life: its engine, its farm in memory.
        self.session: Session | None = None
        self._schedules_dirty = True
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self.pace = Pace(config.interval, config.min_gap)
        self._news = threading.Event()  # news came since the last cycle started
        self._nudge = threading.Event()  # wakes the cycle thread's wait: news, or a stop
        #: How the cycles of `run_forever` started: {"interval": n, "news": n}.
        self.starts = {"interval": 0, "news": 0}
        self._was_standby = False
        self._rereads = 0  # cycles in a row whose read brought back REREAD_WARN rows unchanged
        self.prefix = ("schedule-dry:" if config.dry_run else SETTING_PREFIX)
        sinks_config, sinks = load_sinks_file(config.sinks_file)  # a bad file stops the start: raises SinksFileError
        self.courier = Courier(self.store, sinks_config, sinks, clock=clock, metrics=self.metrics)
        self._published = False  # the sinks' routes, published once this daemon leads
        self.farm: FarmReader | None = open_farm(config.farm_url) if config.farm_url else None
        self.last_sync: SyncReport | None = None
        #: The manager's jobs as the last sync wrote them, and when: a job shown the same
        #: again is not compared with the store again (`corral.store.sync`).
        self._last_truth: tuple[dict[int, Job], datetime | None] = ({}, None)
        self._scheduler: Any = None
        self.last_delivery: DeliveryReport | None = None  # run_once's

    # --- policies -----------------------------------------------------------------------

    def _evaluator_factory(self) -> EvaluatorFactory | None:
        if self._factory is not None:
            return self._factory
        if not self.config.isolate:
            return None
        engine, timeout = self.config.engine, self.config.engine_timeout

        def make(active: Sequence[Policy]) -> IncrementalEvaluator:
            return IsolatedEvaluator(active, engine=engine, timeout=timeout, on_death=self._engine_died)

        return make

    def _engine_died(self, why: str) -> None:
        """Every death of the engine child, during a cycle or between two, counted once
        (`corral_errors_total{type="engine_crash"}`); a cycle it cost is counted apart
        (`corral_cycles_total{outcome="engine_crash"}`)."""
        self.metrics.errors.labels("engine_crash").inc()

    @property
    def policy_set(self) -> PolicySet | None:
        return self.session.policy_set if self.session is not None else None

    def reload(self) -> bool:
        """Reload changed policy files; True when the policies in force changed."""
        report = self.watcher.poll()
        if report is None:
            return False
        for error in report.errors:
            log.error("policy error: %s", error, extra={"file": error.pos.file, "line": error.pos.line})
        for warning in self.watcher.warnings:
            log.warning("policy warning: %s", warning, extra={"file": warning.pos.file, "line": warning.pos.line})
        for name in report.rejected:
            kept = "its last good version stays in force" if any(
                p.source and p.source.file == name for p in self.watcher.policies) else "it contributes no policy"
            log.error("%s was not loaded (fix it and check with `corral check`): %s", name, kept)
        self.metrics.policy_errors.set(len(report.errors))
        policies = self.watcher.policies
        if self.config.dry_run:
            policies = [replace(p, mode="audit") for p in policies]
        classes = self.watcher.classes
        if policies == self._policies and classes == self._classes:
            return False
        first = self._policies is None
        self._policies, self._classes = policies, classes
        if self.session is None:
            engine = "reference" if self.config.engine == "reference" else "durable"
            # the whole read heals at the pace of FULL_READ_EVERY intervals, however often news brings cycles
            self.session = Session(PolicySet(policies, classes), engine=engine, evaluator_factory=self._evaluator_factory(),
                                   keep_live=True, full_read_after=FULL_READ_EVERY * self.config.interval)
        else:
            self.session.swap(PolicySet(policies, classes))  # a new engine; the farm in memory stays
        self._schedules_dirty = True
        self.metrics.policies.set(len(policies))
        if not first:
            self.metrics.reloads.labels("rejected" if report.rejected else "ok").inc()
        log.info("%s %d policies from %d file(s)%s", "loaded" if first else "reloaded", len(policies),
                 len(self.watcher._good), f" (changed: {', '.join(report.changed)})" if not first else "")
        return True

    # --- one tick -------------------------------------------------------------------------

    def tick(self) -> Tick:
        """One scheduled tick; never raises (that is the daemon's promise)."""
        if self._stop.is_set():
            return Tick("stopped")
        if not self._busy.acquire(blocking=False):
            self.metrics.cycles.labels("overrun").inc()
            return Tick("overrun")
        try:
            return self._tick()
        finally:
            self._busy.release()

    def _tick(self) -> Tick:
        mono = time.monotonic()
        if not self.backoff.ready(mono + 0.1 * self.config.interval):
            return Tick("backoff")
        started = time.perf_counter()
        try:
            self.reload()
            if not self._lead():
                self.metrics.cycles.labels("standby").inc()
                return Tick("standby")
            if not self._published:
                self.courier.publish()
                self._published = True
            self.sync()
            result = self.cycle()
        except LeaseLost as err:
            self.metrics.cycles.labels("lease_lost").inc()
            log.error("cycle not applied: %s", err)
            return Tick("lease_lost", error=str(err))
        except FarmUnreachable as err:
            delay = self.backoff.failed(time.monotonic())
            self.metrics.errors.labels("farm_unreachable").inc()
            self.metrics.cycles.labels("farm_unreachable").inc()
            log.error("farm manager unreachable (%s); no cycle on a stale picture: retrying in %.0fs", err, delay)
            return Tick("farm_unreachable", error=str(err))
        except EngineCrashed as err:
            self.metrics.cycles.labels("engine_crash").inc()
            log.error("cycle lost: %s; nothing was applied, the next cycle starts a fresh engine", err)
            return Tick("engine_crash", error=str(err))
        except Exception as err:
            if _db_error(err):
                delay = self.backoff.failed(time.monotonic())
                self.metrics.errors.labels("db_unreachable").inc()
                self.metrics.cycles.labels("db_unreachable").inc()
                log.error("database %s unreachable (%s: %s); retrying in %.0fs (attempt %d)",
                          describe(self.store.url), type(err).__name__, self.store.masked(first_line(err)), delay,
                          self.backoff.failures)
                return Tick("db_unreachable", error=str(err))
            if isinstance(err, StoreError):
                delay = self.backoff.failed(time.monotonic())
                self.metrics.errors.labels("store").inc()
                self.metrics.cycles.labels("error").inc()
                log.error("store not usable: %s; retrying in %.0fs", self.store.masked(str(err)), delay)
                return Tick("error", error=str(err))
            self.metrics.errors.labels(type(err).__name__).inc()
            self.metrics.cycles.labels("error").inc()
            log.exception("cycle failed (nothing of it was applied): %s", self.store.masked(str(err)))
            return Tick("error", error=str(err))
        if self.backoff.failures:
            log.info("database %s reachable again", describe(self.store.url))
        self.backoff.reset()
        outcome = "paused" if result.paused else "ok"
        if result.report is not None and result.report.applied and self._scheduler is not None:
            self._deliver_soon()
        self.metrics.cycles.labels(outcome).inc()
        self.metrics.duration.observe(time.perf_counter() - started)
        self.metrics.last_success.set(time.time())
        return Tick(outcome, result)

    def _lead(self) -> bool:
        if self.leader.held and self.leader.check():
            return True
        if not self.leader.acquire():
            self.metrics.leader.set(0)
            if not self._was_standby:
                log.info("standby: another corral daemon holds the lease on %s; taking over when it runs out",
                         describe(self.store.url))
                self._was_standby = True
            return False
        self.metrics.leader.set(1)
        self._was_standby = False
        self._published = False  # publish this daemon's sinks again: another leader may have had others
        self._last_truth = ({}, None)  # and compare the whole farm again: another leader synced meanwhile
        log.info("leader: this daemon (%s) now acts on %s", self.holder, describe(self.store.url))
        self._schedules_dirty = True  # another daemon may have fired schedules meanwhile
        return True

    # --- the farm manager -------------------------------------------------------------------

    def sync(self) -> SyncReport | None:
        """Read the farm manager (if any) and write its picture into the store, before a
        cycle: the cycle decides on the farm as the manager has it now.  Raises
        FarmUnreachable (the cycle is skipped: a decision on a stale picture could undo a
        person's work)."""
        if self.farm is None:
            return None
        now = self.clock()
        truth, problems = self.farm.read(now)
        for problem in problems:
            log.warning("%s: %s", self.farm.name, problem)
        last, since = self._last_truth
        unchanged = [j for j, job in truth.jobs.items() if last.get(j) == job] if since is not None else []
        report = self.store.sync_farm(truth, now=now, actor=self.farm.name, unchanged=unchanged, since=since)
        self._last_truth = (dict(truth.jobs), now)
        for override in report.overridden:
            log.warning("a person overrode corral in %s: %s", self.farm.name, override)
        if report.changed:
            log.info("synced from %s: %d rows inserted, %d updated, %d deleted, %d runs", self.farm.name,
                     report.inserted, report.updated, report.deleted, report.runs)
        self.last_sync = report
        return report

    # --- delivery ------------------------------------------------------------------------

    def deliver(self) -> None:
        """One delivery pass while this daemon leads; never raises (the daemon's promise)."""
        if self._stop.is_set() or not self.courier.sinks or not self.leader.held:
            return
        try:
            self.courier.run(stop=self._stop.is_set)
        except LeaseLost as err:
            log.error("delivery stopped: %s", err)
        except Exception as err:
            kind = "db_unreachable" if _db_error(err) else "delivery"
            self.metrics.errors.labels(kind).inc()
            log.error("delivery pass failed (%s: %s); every row stays queued", type(err).__name__,
                      self.store.masked(first_line(err)))

    def _deliver_soon(self) -> None:
        try:
            self._scheduler.modify_job("deliver", next_run_time=datetime.now().astimezone())
        except Exception as err:  # the scheduler shutting down
            log.debug("could not schedule a delivery: %s", err)

    def _note(self, key: str, value: dict[str, Any]) -> None:
        """Best-effort status in settings for `corral daemon-status` (never fails a cycle)."""
        try:
            self.store.set_setting(key, json.dumps(value, default=str))
        except Exception as err:
            log.debug("could not record %s: %s", key, err)

    def cycle(self) -> CycleResult:
        """One cycle now, as the leader: due policies, run_cycle, schedule bookkeeping, logs, metrics."""
        assert self.session is not None, "reload() first"
        policy_set = self.session.policy_set
        now = self.clock()
        if self._schedules_dirty:
            self._load_schedules(policy_set.policies, now)
        scheduled = self.schedules.scheduled()
        due = {p.name for p in policy_set.policies if p.name not in scheduled} | self.schedules.due(now)
        log.debug("cycle starting", extra={"due": len(due)})
        result = run_cycle(self.store, self.session, commit=True, due=due, clock=self.clock)
        if result.committed and not result.paused:
            for name, at in self.schedules.fired(due & scheduled, now).items():
                self.store.set_setting(self.prefix + name, at.isoformat())
                log.info("scheduled policy %s fired (due %s)", name, at.isoformat(), extra={"cycle": result.cycle_id})
        self._report(result)
        self._watch_rereads(result)
        self._note(HEARTBEAT_SETTING, {"cycle": result.cycle_id, "at": result.at.isoformat(), "holder": self.holder,
                                       "paused": result.paused, "applied": len(result.report.applied) if result.report else 0})
        return result

    def _watch_rereads(self, result: CycleResult) -> None:
        """Say who makes every read take in the same rows again.  On PostgreSQL a read
        starts from the oldest transaction open on the whole server (corral.store.changes):
        one left open in any database (a session idle in transaction, a long batch) has
        each cycle read again all that was written since.  Still correct (those rows
        change nothing, corral.live), but the read grows with it, and only someone who
        can end that transaction can fix it: name it."""
        self.metrics.reread.set(result.reread)
        if result.reread < REREAD_WARN:
            self._rereads = 0
            return
        self._rereads += 1
        if self._rereads < REREAD_CYCLES or (self._rereads - REREAD_CYCLES) % REREAD_AGAIN:
            return
        try:
            holder = self.store.mark_holder()
        except Exception as err:  # a diagnosis: never fails the cycle
            log.debug("could not ask who holds the change mark: %s", err)
            holder = None
        who = holder or ("one this role cannot see (a superuser finds it in pg_stat_activity: the oldest "
                         "backend_xid)")
        log.warning("the last %d reads each took in again %d or more rows that had not changed: a transaction "
                    "left open on the PostgreSQL server holds back where reads start: %s. End it (or set "
                    "idle_in_transaction_session_timeout on the server); until then every cycle reads again all "
                    "that was written since it began (no action is lost or repeated, cycles are only slower)",
                    self._rereads, REREAD_WARN, who, extra={"cycle": result.cycle_id})

    def _load_schedules(self, policies: Sequence[Policy], now: datetime) -> None:
        stored: dict[str, datetime | None] = {}
        for p in policies:
            if p.schedule:
                raw = self.store.get_setting(self.prefix + p.name)
                stored[p.name] = datetime.fromisoformat(raw) if raw else None
        self.schedules.update(policies, now, stored)
        for p in policies:
            # a cron line seen for the first time is armed from now on, so `--once` from cron fires it too
            if p.schedule and stored.get(p.name) is None and not p.schedule.strip().startswith("every"):
                self.store.set_setting(self.prefix + p.name, now.isoformat())
        self._schedules_dirty = False

    def _report(self, result: CycleResult) -> None:
        m = self.metrics
        cid = result.cycle_id
        m.facts.set(result.facts)
        m.paused.set(1 if result.paused else 0)
        for policy, count in result.plan.matched.items():
            m.matches.labels(policy).inc(count)
        report = result.report
        applied = audited = refused = 0
        if report is not None:
            for done in report.applied:
                p = done.proposal
                m.transitions.labels(p.policy or "", "applied").inc()
                log.info("%s %s %s (%s -> %s): %s", p.action, p.kind, done.entity_id, done.from_state, done.to_state,
                         p.reason, extra={"cycle": cid, "policy": p.policy})
            for done in report.audited:
                p = done.proposal
                m.transitions.labels(p.policy or "", "audited").inc()
                log.info("would %s %s %s (%s -> %s): %s", p.action, p.kind, done.entity_id, done.from_state,
                         done.to_state, p.reason, extra={"cycle": cid, "policy": p.policy})
            for r in report.refused:
                m.transitions.labels(r.proposal.policy or "", "refused").inc()
                m.refused.labels(r.proposal.policy or "").inc()
                log.warning("refused %s: %s", r.proposal, r.reason, extra={"cycle": cid, "policy": r.proposal.policy})
            applied, audited, refused = len(report.applied), len(report.audited), len(report.refused)
        state = " (paused: nothing applied)" if result.paused else ""
        total = sum(result.timings.values())
        log.info("cycle done%s: %d facts, %d matches, %d applied, %d audit-only, %d refused in %.3fs",
                 state, result.facts, result.matches, applied, audited, refused, total, extra={"cycle": cid})

    # --- running ------------------------------------------------------------------------------

    def run_once(self) -> CycleResult:
        """`corral run --once`: one cycle as the leader; raises instead of retrying.  The
        store is checked first, so a missing or unreachable one is said as every other
        command says it (not as a failure to take the lock)."""
        self.store.check()
        self.reload()
        try:
            if not self.leader.acquire():
                raise AnotherDaemon(f"another corral daemon holds the lease on {describe(self.store.url)}; "
                                    "it is already applying the policies")
            self.courier.publish()
            self.sync()
            result = self.cycle()
            if self.courier.sinks:  # what it applied, delivered before it exits (a failed send waits for the next run)
                self.last_delivery = self.courier.run(stop=self._stop.is_set)
            return result
        finally:
            self.leader.release()

    def stop(self) -> None:
        self._stop.set()
        self._nudge.set()

    def news(self) -> None:
        """The feed committed something (`corral.daemon.wake.NewsWatch` calls this)."""
        self._news.set()
        self._nudge.set()

    def _cycles(self) -> None:
        """The cycle thread of `run_forever`: one tick at a time, at the interval or, with
        news, at `Pace.soonest` (see `corral.daemon.wake`)."""
        tick_at = time.monotonic()  # the first cycle at once
        ended = -math.inf
        while not self._stop.is_set():
            start_at = tick_at
            if self._news.is_set() and self.leader.held:
                start_at = self.pace.soonest(tick_at, ended)
            wait = start_at - time.monotonic()
            if wait > 0:
                self._nudge.wait(wait)
                self._nudge.clear()
                continue
            self.starts["news" if start_at < tick_at else "interval"] += 1
            if start_at < tick_at:
                log.debug("cycle brought forward by news (%.3fs before its tick)", tick_at - start_at)
            self._news.clear()  # news from now on is for the next cycle
            started = time.monotonic()
            self.tick()
            ended = time.monotonic()
            tick_at, skipped = self.pace.after(started, ended)
            if skipped and not self._stop.is_set():
                self.metrics.cycles.labels("overrun").inc(skipped)
                log.warning("the cycle took %.2fs, longer than the %gs interval: %d tick(s) skipped", ended - started,
                            self.config.interval, skipped)

    def run_forever(self, *, install_signals: bool = True) -> None:
        """Tick every interval until stop() or SIGTERM/SIGINT.  The cycle running then
        finishes first, for `stop_grace` seconds at most: past that the daemon exits
        anyway and the cycle's transaction rolls back (nothing of it is applied), so a
        stop is honoured within seconds whatever a cycle is doing."""
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        if install_signals:
            self._install_signals()
        listener = self.store.news_listener() if self.config.wake else None
        wake = f", sooner on news ({self.config.min_gap:g}s apart at least)" if listener is not None else ""
        log.info("corral daemon %s starting: store %s, every %gs%s%s", self.holder, describe(self.store.url),
                 self.config.interval, wake, ", dry run (every policy audit-only)" if self.config.dry_run else "")
        # Cycles run on a thread of their own, not as a job of the scheduler: "soon, but
        # never while one runs and not sooner than the gap after it" is a few lines there
        # (`_cycles`), where moving a scheduler's job from the news thread races with its
        # executor's count of running instances (a spurious overrun).
        cycles = threading.Thread(target=self._cycles, name="corral-cycles", daemon=True)
        watch = NewsWatch(listener, self.news, self._stop) if listener is not None else None
        scheduler = BackgroundScheduler(timezone="UTC")
        if self.courier.sinks:
            # Two instances allowed so the scheduler never warns of a pass still running (a slow
            # supervisor): the courier's own lock makes the second return at once.
            scheduler.add_job(self.deliver, IntervalTrigger(seconds=self.courier.delivery.every), id="deliver",
                              max_instances=2, coalesce=True, misfire_grace_time=None)
            self._scheduler = scheduler
        scheduler.start()
        cycles.start()
        if watch is not None:
            watch.start()
        try:
            while not self._stop.wait(0.2):
                pass
            log.info("stopping: finishing the current cycle (%gs at most)", self.config.stop_grace)
        finally:
            self.stop()
            scheduler.shutdown(wait=False)
            finished = self._busy.acquire(timeout=self.config.stop_grace)
            if not finished:
                log.warning("the cycle did not finish within %gs: exiting now; its transaction rolls back and "
                            "nothing of it is applied", self.config.stop_grace)
                # Give the lease up if the database answers at once; it may be why the cycle
                # hangs, and then the lease runs out by itself (an interval).
                release = threading.Thread(target=self.leader.release, daemon=True)
                release.start()
                release.join(1.0)
                os._exit(0)  # the cycle's thread cannot be interrupted; the process can end
            self._busy.release()
            cycles.join(1.0)
            if watch is not None:
                watch.close()
            self.close()
        log.info("corral daemon stopped")

    def _install_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self._stop.is_set():
                log.warning("%s again: exiting now (the cycle's transaction, if any, rolls back)", name)
                os._exit(1)
            log.info("%s received: stopping after the current cycle", name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def close(self) -> None:
        self.courier.close()
        if self.farm is not None:
            self.farm.close()
        if self.session is not None:
            self.session.close()
        self.leader.release()
        self.metrics.leader.set(0)
        self.metrics.close()
        self.store.close()
