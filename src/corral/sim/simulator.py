"""The simulated supervisor: plays a drawn night against a corral store, on a simulated clock.

A discrete-event model.  Hosts take frames, frames end (well or not) at their simulated
time, hosts drop and come back, chains are submitted; everything the supervisor learns
is written to the store as supervisor news (the events of `corral ingest`, through the
same writer as `corral.Corral`), stamped with its simulated time.  Every `cycle_seconds`
of simulated time the news is flushed and, with corral, one cycle runs with
`commit=True` through `Corral.run_cycle` with one PolicySet kept for the whole night,
exactly as the daemon does.

The supervisor respects the store as a real one respects its own database: it only
dispatches pending frames of jobs with no hold (a blocked, killed or suspended job gets
nothing new), never gives a host frames of a job it is locked out of (a blocked
instance), never gives work to a locked host, and stops a frame that corral took off
its host (a blocked job or instance puts it back to pending).  It never retries on its
own: failed frames stay failed unless corral (or a wrangler) retries them.

Without corral (the baseline) the same night is played on its own store with no cycle;
a wrangler checks in every `wrangler_every_hours` and releases the jobs whose
dependencies are complete, and does nothing else.
"""

from __future__ import annotations

import heapq
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from corral.api import Corral
from corral.farm import Farm
from corral.feed import (
    BadLine,
    Event,
    FrameCompleted,
    FrameFailed,
    FrameStarted,
    InstanceEnded,
    JobSubmitted,
    SubmitState,
    WorkerDown,
    WorkerUp,
)
from corral.feed import JobSpec as SubmitSpec
from corral.policy.loader import builtin_dir, load_paths
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.sim.report import RunReport, Sample
from corral.sim.scenario import Night, NightHost, NightJob
from corral.states import FrameState, Hold, InstanceState, JobState, Kind, WorkerState
from corral.store import Done, Store

#: The simulated night starts here (any fixed instant: the store only sees simulated time).
EPOCH = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
#: How far into a frame each fault strikes (share of the frame's time on that host).
BAD_HOST_AT, BROKEN_JOB_AT, FLAKY_AT = 0.1, 0.15, 0.3
#: Exit codes the faults report: a segfaulting host, a scene that cannot load, a flaky licence.
BAD_HOST_EXIT, BROKEN_JOB_EXIT, FLAKY_EXIT = 139, 1, 2
WRANGLER = "user:wrangler"

Progress = Callable[[Sample], None]


def builtin_policies() -> list[Policy]:
    """The built-in pack, loaded (an error in it is a bug: raised)."""
    return load_policies([])


def load_policies(paths: Sequence[str | Path], *, builtin: bool = True) -> list[Policy]:
    loaded = load_paths([*([builtin_dir()] if builtin else []), *paths])
    if loaded.errors:
        raise ValueError("\n".join(str(e) for e in loaded.errors))
    return list(loaded.policies)


@dataclass(eq=False)
class _Work:
    host: _Host
    job: _Job
    frame: int
    start: float
    end: float
    ok: bool
    exit_code: int
    #: Why it fails (None: it renders): bad_host, broken_job or flaky_frame.
    cause: str | None = None


@dataclass(eq=False)
class _Host:
    spec: NightHost
    up: bool = True
    locked: bool = False
    work: _Work | None = None


@dataclass(eq=False)
class _Job:
    spec: NightJob
    submitted: bool = False
    #: No hold and not blocked: the supervisor may dispatch its pending frames.
    open: bool = False
    states: dict[int, FrameState] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    complete: int = 0
    flaked: set[int] = field(default_factory=set)
    lockouts: set[str] = field(default_factory=set)
    instances: set[str] = field(default_factory=set)
    done_at: float | None = None


def instance_id(job_id: int, host: str) -> str:
    """One instance per job and host, as Qube! runs one subjob per host."""
    return f"{job_id}.{host}"


class Simulation:
    """One night on one store: `run()` plays it and returns the report.

    `store` (migrated, empty) is the supervisor's database, seen through `corral.Corral`.  With `policies` (a list, usually
    `builtin_policies()`), a cycle runs every `cycle_seconds`; with None, nobody but the
    wrangler acts (the baseline).
    """

    def __init__(self, night: Night, store: Store, *, policies: Sequence[Policy] | None, label: str = "") -> None:
        self.night = night
        self.scenario = night.scenario
        self.with_corral = policies is not None
        self.label = label or ("with_corral" if self.with_corral else "baseline")
        # One session for the whole night, as the daemon keeps one: its engine and the
        # farm in memory carry over from cycle to cycle.
        self.corral = Corral(store, actor="supervisor", clock=self.at, policies=None if policies is None else PolicySet(policies))
        self.now = 0.0
        self.hosts = {h.name: _Host(h) for h in night.hosts}
        self.jobs = {j.id: _Job(j) for j in night.jobs}
        self._order = sorted(self.jobs.values(), key=lambda j: (-j.spec.priority, j.spec.id))
        #: What happens next: (time, order among same-time happenings, sequence, handler, payload).
        self._heap: list[tuple[float, int, int, Callable[[Any], None], Any]] = []
        self._seq = 0
        self._news: list[tuple[int, Event]] = []
        self._event_no = 0
        # figures
        self.frames_rendered = 0
        self.failed_attempts = 0
        self.aborted = 0
        self.wasted = 0.0  # core-seconds
        self.wasted_by: dict[str, float] = {}
        self.useful = 0.0
        self.actions: Counter[str] = Counter()
        self.actions_by_kind: Counter[str] = Counter()
        self.action_times: list[tuple[float, str]] = []
        self.cycles = 0
        self.cycle_seconds_total = 0.0
        self.cycle_seconds_max = 0.0
        self.samples: list[Sample] = []

    # --- the clock -----------------------------------------------------------------

    def at(self, t: float | None = None) -> datetime:
        return EPOCH + timedelta(seconds=self.now if t is None else t)

    def _schedule(self, t: float, order: int, handler: Callable[[Any], None], payload: Any) -> None:
        self._seq += 1  # unique: the heap never compares two handlers
        heapq.heappush(self._heap, (t, order, self._seq, handler, payload))

    # --- news to the store ------------------------------------------------------------

    def _news_item(self, event: Event) -> None:
        self._event_no += 1
        self._news.append((self._event_no, event))

    def _eid(self, kind: str) -> str:
        return f"sim-{kind}-{self._event_no + 1}"

    def flush(self) -> None:
        """Write the news gathered since the last flush in one transaction."""
        if not self._news:
            return
        news, self._news = self._news, []
        results = self.corral.store.apply_events(news, now=self.corral.clock, actor=self.corral.actor, record=False)
        bad = [r for r in results if isinstance(r, BadLine)]
        if bad:
            raise RuntimeError(f"the simulator wrote an event the store refused: {bad[0].reason}")

    # --- the night -----------------------------------------------------------------------

    def run(self, progress: Progress | None = None) -> RunReport:
        s = self.scenario
        horizon = s.hours * 3600.0
        started = time.perf_counter()
        for job in self.jobs.values():
            self._schedule(job.spec.submit_at, 0, self._on_submit, job)
        for host in self.hosts.values():
            if host.spec.drop is not None:
                down, up = host.spec.drop
                self._schedule(down, 1, self._on_down, host)
                self._schedule(up, 1, self._on_up, host)
        wrangle_every = s.wrangler_every_hours * 3600.0
        next_wrangle = wrangle_every if wrangle_every > 0 else float("inf")
        tick = 0.0
        while True:
            while self._heap and self._heap[0][0] <= tick:
                t, _order, _seq, handler, payload = heapq.heappop(self._heap)
                self.now = t
                handler(payload)
            self.now = tick
            self.flush()
            if self.with_corral:
                self._cycle()
            elif tick >= next_wrangle:
                self._wrangle()
                next_wrangle += wrangle_every
            self._dispatch_all()
            self.flush()
            sample = self._sample()
            self.samples.append(sample)
            if progress is not None:
                progress(sample)
            if tick >= horizon:
                break
            tick = min(horizon, tick + s.cycle_seconds)
        return self._report(time.perf_counter() - started)

    def _on_submit(self, job: _Job) -> None:
        spec = job.spec
        self._news_item(
            JobSubmitted(
                type="job_submitted",
                id=self._eid("submit"),
                at=self.at(),
                job=SubmitSpec(
                    id=spec.id,
                    name=spec.name,
                    priority=spec.priority,
                    state=SubmitState.BLOCKED if spec.depends_on else SubmitState.PENDING,
                    frames=list(range(1, spec.frames + 1)),
                    depends_on=list(spec.depends_on),
                    retry_limit=self.scenario.retry_limit,
                ),
            )
        )
        job.submitted = True
        job.open = not spec.depends_on
        job.states = dict.fromkeys(range(1, spec.frames + 1), FrameState.PENDING)
        job.pending = set(job.states)
        self._dispatch_all()

    def _on_down(self, host: _Host) -> None:
        work = host.work
        if work is not None:
            # The supervisor loses the frame with its host and reports it failed, with no exit code.
            work.cause = "host_dropped"
            self._finish(work, ok=False, exit_code=None)
        host.up = False
        self._news_item(WorkerDown(type="worker_down", id=self._eid("down"), at=self.at(), host=host.spec.name))

    def _on_up(self, host: _Host) -> None:
        host.up = True
        self._news_item(WorkerUp(type="worker_up", id=self._eid("up"), at=self.at(), host=host.spec.name))
        self._dispatch(host)

    def _on_end(self, work: _Work) -> None:
        if work.host.work is not work:
            return  # taken off its host earlier (a block, a drop)
        self._finish(work, ok=work.ok, exit_code=work.exit_code)
        self._dispatch(work.host)

    def _finish(self, work: _Work, *, ok: bool, exit_code: int | None) -> None:
        host, job = work.host, work.job
        host.work = None
        spent = (self.now - work.start) * host.spec.cores
        at, job_id, ident = self.at(), job.spec.id, instance_id(job.spec.id, host.spec.name)
        if ok:
            self.useful += spent
            self.frames_rendered += 1
            job.states[work.frame] = FrameState.COMPLETE
            job.complete += 1
            self._news_item(
                FrameCompleted(
                    type="frame_completed", id=self._eid("done"), at=at, job=job_id, frame=work.frame, instance=ident, exit_code=0
                )
            )
            if job.complete == job.spec.frames and job.done_at is None:
                job.done_at = self.now
                for ident in sorted(job.instances):
                    self._news_item(
                        InstanceEnded(type="instance_ended", id=self._eid("end"), at=self.at(), instance=ident, exit_code=0)
                    )
        else:
            self.wasted += spent
            cause = work.cause or "host_dropped"
            self.wasted_by[cause] = self.wasted_by.get(cause, 0.0) + spent
            self.failed_attempts += 1
            job.states[work.frame] = FrameState.FAILED
            self._news_item(
                FrameFailed(
                    type="frame_failed",
                    id=self._eid("fail"),
                    at=at,
                    job=job_id,
                    frame=work.frame,
                    instance=ident,
                    exit_code=exit_code,
                )
            )

    def _abort(self, work: _Work) -> None:
        """Corral took the frame off its host (it went back to pending): the time it ran is lost."""
        work.host.work = None
        spent = (self.now - work.start) * work.host.spec.cores
        self.wasted += spent
        self.wasted_by["taken_off_host"] = self.wasted_by.get("taken_off_host", 0.0) + spent
        self.aborted += 1

    # --- dispatching ----------------------------------------------------------------

    def _dispatch_all(self) -> None:
        for name in sorted(self.hosts):
            self._dispatch(self.hosts[name])

    def _dispatch(self, host: _Host) -> None:
        if host.work is not None or not host.up or host.locked:
            return
        name = host.spec.name
        for job in self._order:
            if job.open and job.pending and name not in job.lockouts:
                self._start(host, job, min(job.pending))
                return

    def _start(self, host: _Host, job: _Job, frame: int) -> None:
        spec = job.spec
        job.pending.discard(frame)
        job.states[frame] = FrameState.RUNNING
        length = spec.durations[frame - 1] / host.spec.speed
        cause: str | None = None
        if host.spec.bad:
            cause, end, code = "bad_host", max(20.0, length * BAD_HOST_AT), BAD_HOST_EXIT
        elif spec.broken:
            cause, end, code = "broken_job", max(20.0, length * BROKEN_JOB_AT), BROKEN_JOB_EXIT
        elif frame in spec.flaky and frame not in job.flaked:
            job.flaked.add(frame)
            cause, end, code = "flaky_frame", length * FLAKY_AT, FLAKY_EXIT
        else:
            end, code = length, 0
        work = _Work(host, job, frame, self.now, self.now + end, cause is None, code, cause)
        host.work = work
        ident = instance_id(spec.id, host.spec.name)
        job.instances.add(ident)
        self._news_item(
            FrameStarted(
                type="frame_started",
                id=self._eid("start"),
                at=self.at(),
                job=spec.id,
                frame=frame,
                host=host.spec.name,
                instance=ident,
            )
        )
        self._schedule(work.end, 2, self._on_end, work)

    # --- corral and the wrangler ----------------------------------------------------

    def _cycle(self) -> None:
        t0 = time.perf_counter()
        result = self.corral.run_cycle(now=self.at())
        spent = time.perf_counter() - t0
        self.cycles += 1
        self.cycle_seconds_total += spent
        self.cycle_seconds_max = max(self.cycle_seconds_max, spent)
        if result.report is None or not result.report.applied:
            return
        # The farm the cycle planned on is the store as written (the applier updated it
        # in place for what it applied).
        self._learn(result.report.applied, result.farm)

    def _wrangle(self) -> None:
        """The baseline's wrangler: release every job whose dependencies are all complete."""
        farm = self.corral.farm()
        done: list[Done] = []
        for job in sorted(farm.jobs.values(), key=lambda j: j.id):
            if job.state is not JobState.BLOCKED or job.blocked_by is not None or not job.depends_on:
                continue
            if all(d in farm.jobs and farm.jobs[d].state is JobState.COMPLETE for d in job.depends_on):
                done.append(
                    self.corral.act(
                        Kind.JOB, job.id, "unblock", reason="wrangler check-in: its dependencies are complete", actor=WRANGLER
                    )
                )
        if done:
            self._learn(done, self.corral.farm())

    def _learn(self, applied: Sequence[Done], farm: Farm) -> None:
        """Take in what corral (or the wrangler) changed, as the supervisor sees it in its database."""
        jobs: set[int] = set()
        workers: set[str] = set()
        for done in applied:
            p = done.proposal
            label = p.policy or "wrangler"
            self.actions[label] += 1
            self.actions_by_kind[f"{p.action} {p.kind}"] += 1
            self.action_times.append((self.now, label))
            job = farm.job_of(p.kind, p.ident)
            if job is not None:
                jobs.add(job)
            elif p.kind is Kind.WORKER:
                workers.add(p.ident)
        for job_id in sorted(jobs):
            self._sync_job(self.jobs[job_id], farm)
        for name in sorted(workers):
            self.hosts[name].locked = farm.workers[name].state is WorkerState.LOCKED

    def _sync_job(self, job: _Job, farm: Farm) -> None:
        stored = farm.jobs[job.spec.id]
        job.open = stored.hold is Hold.NONE and stored.state not in (JobState.BLOCKED, JobState.KILLED)
        job.lockouts = {i.host for i in stored.instances.values() if i.state is InstanceState.BLOCKED}
        running = {h.work.frame: h.work for h in self.hosts.values() if h.work is not None and h.work.job is job}
        job.pending.clear()
        complete = 0
        for number, frame in stored.frames.items():
            work = running.get(number)
            if work is not None and (
                frame.state is not FrameState.RUNNING or frame.instance != instance_id(job.spec.id, work.host.spec.name)
            ):
                self._abort(work)
                work = None
            state = FrameState.RUNNING if work is not None else frame.state
            job.states[number] = state
            if state is FrameState.PENDING:
                job.pending.add(number)
            complete += state is FrameState.COMPLETE
        job.complete = complete

    # --- figures --------------------------------------------------------------------

    def _sample(self) -> Sample:
        return Sample(
            hours=round(self.now / 3600.0, 4),
            frames_rendered=self.frames_rendered,
            failed_attempts=self.failed_attempts,
            wasted_core_hours=round(self.wasted / 3600.0, 3),
            actions=sum(self.actions.values()),
            busy_hosts=sum(1 for h in self.hosts.values() if h.work is not None),
            jobs_completed=sum(1 for j in self.jobs.values() if j.done_at is not None),
        )

    def _report(self, wall: float) -> RunReport:
        chains = []
        for members in self.night.chains:
            ends = [self.jobs[j].done_at for j in members]
            chains.append(None if any(e is None for e in ends) else max(e for e in ends if e is not None) / 3600.0)
        finished = [c for c in chains if c is not None]
        farm = self.corral.farm()
        states = Counter(str(j.state) for j in farm.jobs.values())
        return RunReport(
            label=self.label,
            jobs_total=len(self.jobs),
            jobs_completed=sum(1 for j in self.jobs.values() if j.done_at is not None),
            jobs_by_state=dict(sorted(states.items())),
            frames_total=sum(j.spec.frames for j in self.jobs.values()),
            frames_rendered=self.frames_rendered,
            failed_attempts=self.failed_attempts,
            frames_taken_off_hosts=self.aborted,
            wasted_core_hours=round(self.wasted / 3600.0, 2),
            wasted_by_cause={k: round(v / 3600.0, 2) for k, v in sorted(self.wasted_by.items())},
            useful_core_hours=round(self.useful / 3600.0, 2),
            chains_total=len(chains),
            chains_finished=len(finished),
            chains_finished_at=round(max(finished), 2) if finished and len(finished) == len(chains) else None,
            chain_finish_hours=[None if c is None else round(c, 2) for c in chains],
            mean_chain_hours=round(sum(finished) / len(finished), 2) if finished else None,
            hosts_locked=sorted(n for n, h in self.hosts.items() if h.locked),
            actions_by_policy=dict(sorted(self.actions.items())),
            actions_by_kind=dict(sorted(self.actions_by_kind.items())),
            action_times=[(round(t / 3600.0, 4), p) for t, p in self.action_times],
            cycles=self.cycles,
            cycle_ms_mean=round(1000 * self.cycle_seconds_total / self.cycles, 2) if self.cycles else None,
            cycle_ms_max=round(1000 * self.cycle_seconds_max, 2) if self.cycles else None,
            wall_seconds=round(wall, 2),
            samples=self.samples,
        )


def open_farm(url: str | None, workdir: Path) -> Store:
    """A fresh, migrated, empty store: `url`, or an SQLite file in `workdir`."""
    url = url or f"sqlite:///{workdir / 'farm.db'}"
    store = Store.open(url)
    store.init()
    if store.read_farm().jobs:
        store.close()
        raise ValueError(f"{url} already holds a farm: the simulator needs an empty store (a new file)")
    return store


def play(
    night: Night,
    *,
    url: str | None = None,
    policies: Sequence[Policy] | None,
    label: str = "",
    progress: Progress | None = None,
) -> RunReport:
    """Play `night` on a new store (`url`, else a temporary SQLite file) and report."""
    with tempfile.TemporaryDirectory(prefix="corral-sim-") as tmp:
        store = open_farm(url, Path(tmp))
        try:
            return Simulation(night, store, policies=policies, label=label).run(progress)
        finally:
            store.close()
