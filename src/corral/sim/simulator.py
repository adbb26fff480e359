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
its host (a blocked job or instance puts it back to pending).  Its own failure handling
is a farm manager's (`corral.sim.managers`: Afanasy's, Deadline's, Qube!'s, or none):
the manager retries, avoids hosts, gives up on jobs and releases dependents by itself,
with corral or without it.

Three ways to play a night, each on its own store: the baseline (the manager alone, and
a wrangler who checks in every `wrangler_every_hours` to release the jobs whose
dependencies are complete); with corral (the manager and one corral cycle every
`cycle_seconds`, no wrangler); and the oracle (the manager and a wrangler who knows the
ground truth, `corral.sim.oracle`, acting at every cycle on what failed since the last).
"""

from __future__ import annotations

import heapq
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from corral.api import Corral
from corral.farm import Farm, avoided
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
from corral.ports import SUPERVISOR, Proposal
from corral.sim.audit import Decision, audit, healthy_chains
from corral.sim.books import Host as _Host
from corral.sim.books import Job as _Job
from corral.sim.books import Work as _Work
from corral.sim.history import previous_day
from corral.sim.managers import Admit, Handling, make_handling
from corral.sim.oracle import ORACLE_ACTOR, Oracle
from corral.sim.report import RunReport, Sample
from corral.sim.scenario import Night
from corral.states import Action, FrameState, Hold, InstanceState, JobState, Kind, WorkerState, derive_job_state
from corral.store import Done, Store

#: The simulated night starts here (any fixed instant: the store only sees simulated time).
EPOCH = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
#: How far into a frame each fault strikes (share of the frame's time on that host).
BAD_HOST_AT, BROKEN_JOB_AT, FLAKY_AT = 0.1, 0.15, 0.3
#: Exit codes the faults report: a segfaulting host, a scene that cannot load, a flaky licence.
BAD_HOST_EXIT, BROKEN_JOB_EXIT, FLAKY_EXIT = 139, 1, 2
WRANGLER = "user:wrangler"
#: Who the farm manager's own changes in the store (releasing dependents) are logged as.
MANAGER = SUPERVISOR
#: The modes a night is played in.
BASELINE, CORRAL, ORACLE_MODE = "baseline", "with_corral", "oracle"

Progress = Callable[[Sample], None]


def builtin_policies() -> list[Policy]:
    """The built-in pack, loaded (an error in it is a bug: raised)."""
    return load_policies([])


def load_policies(paths: Sequence[str | Path], *, builtin: bool = True) -> list[Policy]:
    loaded = load_paths([*([builtin_dir()] if builtin else []), *paths])
    if loaded.errors:
        raise ValueError("\n".join(str(e) for e in loaded.errors))
    return list(loaded.policies)


def instance_id(job_id: int, host: str) -> str:
    """One instance per job and host, as Qube! runs one subjob per host."""
    return f"{job_id}.{host}"


class Simulation:
    """One night on one store: `run()` plays it and returns the report.

    `store` (migrated, empty) is the supervisor's database, seen through `corral.Corral`.
    `handling` is the farm manager's own failure handling (a name in
    `corral.sim.managers.HANDLINGS`, or a `Handling`).  With `policies` (a list, usually
    `builtin_policies()`), a corral cycle runs every `cycle_seconds`; with `oracle`, the
    ground-truth wrangler acts then instead; with neither, only the manager and the
    wrangler's check-ins act (the baseline).
    """

    def __init__(
        self,
        night: Night,
        store: Store | None,
        *,
        policies: Sequence[Policy] | None,
        handling: Handling | str = "none",
        oracle: bool = False,
        label: str = "",
    ) -> None:
        if oracle and policies is not None:
            raise ValueError("a night is played with corral's policies or with the oracle, not both")
        self.night = night
        self.scenario = night.scenario
        self.with_corral = policies is not None
        self.mode = CORRAL if self.with_corral else ORACLE_MODE if oracle else BASELINE
        self.label = label or self.mode
        self.handling = make_handling(handling) if isinstance(handling, str) else handling
        self.handling.attach(self)
        self.oracle = Oracle(self) if oracle else None
        # One session for the whole night, as the daemon keeps one: its engine and the
        # farm in memory carry over from cycle to cycle.
        # Only corral reads the store: the baseline and the oracle keep their books in the
        # simulator (writing a night's news costs ~5 ms an event, most of a run's time).
        if policies is not None and store is None:
            raise ValueError("corral's run needs a store to read")
        self.corral = (
            Corral(store, actor=SUPERVISOR, clock=self.at, policies=PolicySet(policies))
            if store is not None and policies is not None
            else None
        )
        self.now = 0.0
        self.hosts = {h.name: _Host(h) for h in night.hosts}
        self.jobs = {j.id: _Job(j) for j in night.jobs}
        self._order = sorted(self.jobs.values(), key=lambda j: (-j.spec.priority, j.spec.id))
        self._dependents: dict[int, list[_Job]] = {}
        for job in self.jobs.values():
            for dep in job.spec.depends_on:
                self._dependents.setdefault(dep, []).append(job)
        #: Jobs whose dependencies all completed since the last tick (for the manager to release).
        self._release: set[int] = set()
        #: Failed attempts since the last tick (what the oracle acts on).
        self.fresh_failures: list[_Work] = []
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
        self.manager_releases = 0
        self.decisions: list[Decision] = []
        #: Every attempt that ended: (start, end, host, job id, frame, cause or None when it rendered).
        self.attempt_log: list[tuple[float, float, str, int, int, str | None]] = []
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
        if self.corral is not None:
            self._news.append((self._event_no, event))

    def _eid(self, kind: str) -> str:
        return f"sim-{kind}-{self._event_no + 1}"

    def flush(self) -> None:
        """Write the news gathered since the last flush in one transaction."""
        if not self._news or self.corral is None:
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
            if self._release:
                self._release_dependents()
            if self.mode == CORRAL:
                self._cycle()
            elif self.oracle is not None:
                self.oracle.act()
            elif tick >= next_wrangle:
                self._wrangle()
                next_wrangle += wrangle_every
            self.fresh_failures.clear()
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

    def requeue(self, job: _Job, frame: int, delay: float = 0.0) -> None:
        """The manager puts a failed frame back to pending (now, or after `delay`)."""
        if delay > 0:
            self._schedule(self.now + delay, 3, self._on_requeue, (job, frame))
        else:
            self._on_requeue((job, frame))

    def running(self, job: _Job) -> list[str]:
        return [name for name, h in self.hosts.items() if h.work is not None and h.work.job is job]

    def _on_requeue(self, payload: tuple[_Job, int]) -> None:
        job, frame = payload
        if job.states.get(frame) is FrameState.FAILED:
            job.states[frame] = FrameState.PENDING
            job.pending.add(frame)
            job.requeued.add(frame)

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
        self.attempt_log.append((work.start, self.now, host.spec.name, job.spec.id, work.frame, None if ok else work.cause))
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
                if self.handling.releases_dependents or self.oracle is not None:
                    for waiting in self._dependents.get(job.spec.id, ()):
                        if all(self.jobs[d].done_at is not None for d in waiting.spec.depends_on):
                            self._release.add(waiting.spec.id)
            self.handling.rendered(work)
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
            self.fresh_failures.append(work)
            self.handling.failed(work)

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
        handling = self.handling
        fallback: tuple[_Job, int] | None = None
        for job in self._order:
            if not (job.open and job.pending) or name in job.lockouts:
                continue
            admit = handling.admits(name, job)
            if admit is Admit.NO or (admit is Admit.LAST and fallback is not None):
                continue
            frame = handling.frame_for(name, job)
            if frame is None:
                continue
            if admit is Admit.LAST:
                fallback = (job, frame)
                continue
            self._start(host, job, frame)
            return
        if fallback is not None:
            self._start(host, *fallback)

    def _start(self, host: _Host, job: _Job, frame: int) -> None:
        spec = job.spec
        job.pending.discard(frame)
        job.requeued.discard(frame)
        job.states[frame] = FrameState.RUNNING
        attempt = job.attempts[frame] = job.attempts.get(frame, 0) + 1
        length = spec.durations[frame - 1] / host.spec.speed
        cause: str | None = None
        if host.spec.bad:
            cause, end, code = "bad_host", max(20.0, length * BAD_HOST_AT), BAD_HOST_EXIT
        elif spec.broken:
            cause = "broken_job" if attempt == 1 else "futile_retry"
            end, code = max(20.0, length * BROKEN_JOB_AT), BROKEN_JOB_EXIT
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
        assert self.corral is not None
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
        for job in sorted(self.jobs.values(), key=lambda j: j.spec.id):
            if self._waiting(job):
                self._open(job, WRANGLER, "wrangler")

    def _waiting(self, job: _Job) -> bool:
        """Submitted waiting on its dependencies, all of which completed, and held by nobody."""
        return (
            job.submitted
            and not job.open
            and not job.held
            and bool(job.spec.depends_on)
            and all(self.jobs[d].done_at is not None for d in job.spec.depends_on)
        )

    def _open(self, job: _Job, actor: str, label: str | None) -> None:
        """Release a waiting job on the sim's own books (no store: the baseline and the oracle)."""
        job.open = True
        self._decided(Kind.JOB, str(job.spec.id), Action.UNBLOCK, label)

    def _decided(self, kind: Kind, ident: str, action: Action, label: str | None) -> None:
        """Count a decision someone took (None: the manager's own, not counted)."""
        if label is None:
            self.manager_releases += 1
            return
        self.actions[label] += 1
        self.actions_by_kind[f"{action} {kind}"] += 1
        self.action_times.append((self.now, label))
        self.decisions.append(Decision(self.now, label, kind, ident, action))

    def _release_dependents(self) -> None:
        """The manager (or the oracle) releases the jobs whose dependencies all completed."""
        ids, self._release = sorted(self._release), set()
        manager = self.handling.releases_dependents
        if self.corral is None:
            for i in ids:
                if self._waiting(self.jobs[i]):
                    self._open(self.jobs[i], MANAGER if manager else ORACLE_ACTOR, None if manager else "oracle")
            return
        farm = self.corral.farm()
        proposals = [
            Proposal(Kind.JOB, str(i), Action.UNBLOCK, reason="its dependencies are complete")
            for i in ids
            if i in farm.jobs and farm.jobs[i].state is JobState.BLOCKED and farm.jobs[i].blocked_by is None
        ]
        if not proposals:
            return
        actor = MANAGER if manager else ORACLE_ACTOR
        report = self.corral.store.apply_transitions(farm, proposals, now=self.at(), actor=actor)
        if manager:
            self.manager_releases += len(report.applied)
            self._learn(report.applied, farm, record=False)
        else:
            self._learn(report.applied, farm, label="oracle")

    def apply(self, proposals: Sequence[Proposal], *, label: str) -> None:
        """Carry out a person's decisions on the sim's own books (the oracle's hands): a host
        quarantined, a job blocked (its running frames stopped and put back to pending), a
        failed frame queued again."""
        for p in proposals:
            if p.kind is Kind.WORKER and p.action is Action.BLOCK:
                self.hosts[p.ident].locked = True
            elif p.kind is Kind.JOB and p.action is Action.BLOCK:
                job = self.jobs[int(p.ident)]
                job.open, job.held = False, True
                for host in self.hosts.values():
                    if host.work is not None and host.work.job is job:
                        frame = host.work.frame
                        self._abort(host.work)
                        job.states[frame] = FrameState.PENDING
                        job.pending.add(frame)
            elif p.kind is Kind.FRAME and p.action is Action.RETRY:
                job_id, _, number = p.ident.partition(":")
                job, frame = self.jobs[int(job_id)], int(number)
                if job.states.get(frame) is not FrameState.FAILED:
                    continue
                job.states[frame] = FrameState.PENDING
                job.pending.add(frame)
            else:
                raise ValueError(f"the simulator cannot carry out {p} by hand")
            self._decided(p.kind, p.ident, p.action, label)

    def _learn(self, applied: Sequence[Done], farm: Farm, *, label: str = "wrangler", record: bool = True) -> None:
        """Take in what corral (or a person, or the manager) changed, as the supervisor sees it in its database."""
        jobs: set[int] = set()
        workers: set[str] = set()
        for done in applied:
            p = done.proposal
            if record:
                who = p.policy or label
                self.actions[who] += 1
                self.actions_by_kind[f"{p.action} {p.kind}"] += 1
                self.action_times.append((self.now, who))
                self.decisions.append(Decision(self.now, who, p.kind, str(p.ident), p.action))
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
        job.avoid = {n: avoided(f) for n, f in stored.frames.items() if f.avoid_hosts}
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
            if state is FrameState.FAILED and number in job.requeued:
                state = FrameState.PENDING  # the manager requeued it; the store learns when it starts
            elif state is not FrameState.PENDING:
                job.requeued.discard(number)
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

    @staticmethod
    def _state_of(job: _Job) -> JobState:
        """A job's state from the sim's books (the store's derivation, without instances)."""
        retried = any(n > 1 for n in job.attempts.values())
        return derive_job_state(Hold.NONE if job.open else Hold.BLOCKED, job.states.values(), (), retried)

    def _report(self, wall: float) -> RunReport:
        chains = []
        for members in self.night.chains:
            ends = [self.jobs[j].done_at for j in members]
            chains.append(None if any(e is None for e in ends) else max(e for e in ends if e is not None) / 3600.0)
        finished = [c for c in chains if c is not None]
        healthy = healthy_chains(self.night)
        if self.corral is not None:
            farm = self.corral.farm()
            states = Counter(str(j.state) for j in farm.jobs.values())
            blocked = [i for i, j in farm.jobs.items() if j.state is JobState.BLOCKED]
        else:
            states = Counter(str(self._state_of(j)) for j in self.jobs.values() if j.submitted)
            blocked = [i for i, j in self.jobs.items() if j.submitted and not j.open]
        wrong, wrong_lines = audit(
            self.night,
            self.decisions,
            done_at={i: j.done_at for i, j in self.jobs.items()},
            blocked_at_end=blocked,
            grace_seconds=5 * self.scenario.cycle_seconds,
        )
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
            manager=self.handling.name,
            manager_settings=self.handling.describe(),
            manager_releases=self.manager_releases,
            healthy_chains_total=len(healthy),
            healthy_chains_finished=sorted(n for n in healthy if chains[n] is not None),
            wrong_actions=wrong,
            wrong_action_lines=wrong_lines,
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
    handling: Handling | str = "none",
    oracle: bool = False,
    label: str = "",
    progress: Progress | None = None,
    history: bool = False,
) -> RunReport:
    """Play `night` and report: with `policies`, on a new store (`url`, else a temporary
    SQLite file) that corral reads; without, on the simulator's own books.  `history`:
    the store holds a day of the hosts' past work first (`corral.sim.history`), as a
    studio's does; only corral reads it (the manager and the oracle judge tonight)."""
    if policies is None:
        if url is not None or history:
            raise ValueError("only corral's run is played on a store: give policies with url or history")
        return Simulation(night, None, policies=None, handling=handling, oracle=oracle, label=label).run(progress)
    with tempfile.TemporaryDirectory(prefix="corral-sim-") as tmp:
        store = open_farm(url, Path(tmp))
        if history:
            store.load_farm(previous_day(night, EPOCH), replace=False)
        try:
            sim = Simulation(night, store, policies=policies, handling=handling, label=label)
            return sim.run(progress)
        finally:
            store.close()
