"""The daemon's farm in memory, kept current by the rows that changed since the last cycle.

A daemon that re-read and re-derived a million frames every 30 seconds would spend
its life doing so; one that applies the 1% that changed, and knows which facts those
rows can affect, does a cycle's work in proportion to what happened.  `apply` updates
the farm and the `Aggregates` in place and says which entities' facts may have
changed (`Dirty`); the cycle rebuilds only those facts and sends only those to the
rule engine.

Invariant: `agg` always counts each frame's *current* fields.  Whoever changes frames
in place (the applier, after its writes) brackets it with `uncount(jobs)` /
`recount(jobs)`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

from corral.facts import DEFAULT_RECENT, Aggregates
from corral.farm import Farm, Frame, Instance, Job, Worker
from corral.states import Kind
from corral.store.changes import FarmChanges, Mark

Dirty = dict[Kind, set[object]]

_JOB_FIELDS = ("name", "priority", "state", "hold", "blocked_by", "retry_limit", "retries", "submitted_at",
               "state_since", "last_retry_at", "version")
#: Job fields that frames and instances show as `job.*`: a change there touches them too.
_JOB_SHOWN = ("name", "priority", "state", "hold", "blocked_by", "retry_limit", "retries")
_FRAME_FIELDS = ("state", "host", "instance", "attempts", "retries", "exit_code", "started_at", "finished_at",
                 "state_since", "version")


def no_dirt() -> Dirty:
    return {k: set() for k in Kind}


class LiveFarm:
    def __init__(self, farm: Farm, mark: Mark, recent: timedelta = DEFAULT_RECENT) -> None:
        self.farm, self.mark = farm, mark
        self.agg = Aggregates.from_farm(farm, recent)
        self.dependents: dict[int, set[int]] = defaultdict(set)
        self.host_instances: dict[str, set[str]] = defaultdict(set)
        for job in farm.jobs.values():
            for dep in job.depends_on:
                self.dependents[dep].add(job.id)
            for inst in job.instances.values():
                self.host_instances[inst.host].add(inst.id)

    def everything(self) -> Dirty:
        """Every entity: what a first cycle evaluates."""
        farm = self.farm
        return {
            Kind.JOB: set(farm.jobs),
            Kind.FRAME: {f.key for j in farm.jobs.values() for f in j.frames.values()},
            Kind.INSTANCE: set(farm.instances),
            Kind.WORKER: set(farm.workers),
        }

    # --- applying the rows that changed ------------------------------------------------

    def apply(self, changes: FarmChanges, mark: Mark) -> Dirty:
        dirty = no_dirt()
        for job in changes.jobs:
            self._job(job, dirty)
        for job_id, deps in changes.depends_on.items():
            self._deps(job_id, deps, dirty)
        for inst in changes.instances:
            self._instance(inst, dirty)
        for worker in changes.workers:
            self._worker(worker, dirty)
        for frame in changes.frames:
            self._frame(frame, dirty)
        for _run_id, job_id, number, run in changes.runs:
            owner = self.farm.jobs.get(job_id)
            ran = owner.frames.get(number) if owner else None
            if owner is None or ran is None:
                continue
            if any(r.id == run.id for r in ran.runs):
                continue  # read again where two reads overlap: history is counted once
            ran.runs.append(run)
            self.agg.run(job_id, run)
            dirty[Kind.JOB].add(job_id)
            dirty[Kind.INSTANCE].update(owner.instances)
            if run.host:
                dirty[Kind.WORKER].add(run.host)
        self.mark = mark
        return dirty

    def _job(self, new: Job, dirty: Dirty) -> None:
        old = self.farm.jobs.get(new.id)
        dirty[Kind.JOB].add(new.id)
        if old is None:
            new.frames, new.instances, new.depends_on = {}, {}, []
            self.farm.jobs[new.id] = new
            return
        shown = any(getattr(old, f) != getattr(new, f) for f in _JOB_SHOWN)
        state_moved = old.state != new.state
        for name in _JOB_FIELDS:
            setattr(old, name, getattr(new, name))
        if shown:
            dirty[Kind.FRAME].update(f.key for f in old.frames.values())
            dirty[Kind.INSTANCE].update(old.instances)
        if state_moved:
            dirty[Kind.JOB].update(self.dependents.get(old.id, ()))

    def _deps(self, job_id: int, deps: list[int], dirty: Dirty) -> None:
        job = self.farm.jobs.get(job_id)
        if job is None:
            return
        for dep in job.depends_on:
            self.dependents[dep].discard(job_id)
        job.depends_on = list(deps)
        for dep in deps:
            self.dependents[dep].add(job_id)
        dirty[Kind.JOB].add(job_id)

    def _instance(self, new: Instance, dirty: Dirty) -> None:
        job = self.farm.jobs.get(new.job_id)
        if job is None:
            return
        old = job.instances.get(new.id)
        if old is None:
            job.instances[new.id] = new
            self.farm.reindex()
        else:
            self.host_instances[old.host].discard(old.id)
            old.host, old.state, old.state_since, old.version = new.host, new.state, new.state_since, new.version
        self.host_instances[new.host].add(new.id)
        dirty[Kind.INSTANCE].add(new.id)
        dirty[Kind.JOB].add(new.job_id)

    def _worker(self, new: Worker, dirty: Dirty) -> None:
        old = self.farm.workers.get(new.name)
        if old is None:
            self.farm.workers[new.name] = new
        else:
            old.state, old.state_since, old.version = new.state, new.state_since, new.version
        dirty[Kind.WORKER].add(new.name)
        dirty[Kind.INSTANCE].update(self.host_instances.get(new.name, ()))

    def _frame(self, new: Frame, dirty: Dirty) -> None:
        job = self.farm.jobs.get(new.job_id)
        if job is None:
            return
        old = job.frames.get(new.number)
        if old is None:
            job.frames[new.number] = new
            self.agg.frame_state(new, +1)
            hosts = {new.host}
        else:
            hosts = {old.host, new.host}
            self.agg.frame_state(old, -1)
            for name in _FRAME_FIELDS:
                setattr(old, name, getattr(new, name))
            self.agg.frame_state(old, +1)
        dirty[Kind.FRAME].add(new.key)
        dirty[Kind.JOB].add(new.job_id)
        dirty[Kind.WORKER].update(h for h in hosts if h)

    # --- changes made in place by the applier -----------------------------------------

    def uncount(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            job = self.farm.jobs.get(job_id)
            for frame in job.frames.values() if job else ():
                self.agg.frame_state(frame, -1)

    def recount(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            job = self.farm.jobs.get(job_id)
            for frame in job.frames.values() if job else ():
                self.agg.frame_state(frame, +1)
