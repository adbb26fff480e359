"""The daemon's farm in memory, kept current by the rows that changed since the last cycle.

A daemon that re-read and re-derived a million frames every 30 seconds would spend
its life doing so; one that applies the 1% that changed, and knows which facts those
rows can affect, does a cycle's work in proportion to what happened.  `apply` updates
the farm and the `Aggregates` in place and says which entities' facts may have
changed (`Dirty`); the cycle rebuilds only those facts and sends only those to the
rule engine.

A row can come back unchanged: reads overlap where a transaction was still open at
the last one, and on PostgreSQL the change mark is the oldest transaction open on the
whole server (`corral.store.changes`), so a long transaction in another database has
every cycle read again what was written since it began.  Such a row changes nothing
and dirties nothing: the read costs the rows, never the evaluation.

Invariant: `agg` always counts each frame's *current* fields.  Whoever changes frames
in place (the applier, after its writes) brackets it with `uncount(jobs)` /
`recount(jobs)`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter
from sys import intern
from typing import Any

from corral.facts import DEFAULT_RECENT, FIELDS, Aggregates
from corral.farm import SCHEMA, Farm, Frame, Instance, Job, Worker, columns
from corral.plan import Cooldowns, PlanMemo
from corral.policy.compiler import admitted_states, gate_of
from corral.policy.model import Policy, paths_read
from corral.ports import ActionLog, EntityId, FarmChanges, FrameChange, Mark
from corral.states import Kind

#: Per kind, the entities whose facts may have changed: rebuilt and sent to the engine.
Dirty = dict[Kind, set[EntityId]]


@dataclass(frozen=True)
class Spread:
    """Which copied fields the policies read, so a change reaches every fact that shows it.

    A frame's fact shows its job (`job.*`) and host (`worker.*`); an instance's shows its
    job and host; a frame's `dependencies.*` show other frames.  Spreading costs work
    (every frame of a changed job), so it is done only where some policy reads the copy.
    """

    job_to_children: bool = True
    worker_to_frames: bool = True
    worker_to_instances: bool = True
    frame_dependents: bool = True
    #: A frame starting or stopping changes its host's `frames_running`: does any policy read it?
    running_on_workers: bool = True
    #: A worker going up, down or locked changes every job's `workers_available`: does any policy read it?
    workers_to_jobs: bool = True
    #: The states some frame policy's gate admits (None: any).  A frame row that changed
    #: but was and is in none of them cannot match, nor be held by the engine as a
    #: candidate: its fact need not be looked at (most changed frames, a running frame
    #: completing, when only failed ones are retried).
    frame_states: frozenset[str] | None = None

    @classmethod
    def of(cls, policies: Iterable[Policy]) -> Spread:
        policies = list(policies)
        read = paths_read(policies)
        child = read[Kind.FRAME] | read[Kind.INSTANCE]
        frame_gates = [gate_of(Kind.FRAME, p.when) for p in policies if p.kind is Kind.FRAME]
        return cls(
            frame_states=admitted_states(frame_gates),
            # job row fields already reach frames and instances when the row changes (_JOB_SHOWN);
            # counts and other derived job facts move with any frame of the job
            job_to_children=any(p.startswith("job.") and p[4:] not in _JOB_SHOWN_FACTS for p in child),
            worker_to_frames=any(p.startswith("worker.") for p in read[Kind.FRAME]),
            worker_to_instances=any(p.startswith("worker.") for p in read[Kind.INSTANCE]),
            frame_dependents=any(p.startswith("dependencies.") for p in read[Kind.FRAME]),
            running_on_workers="frames_running" in read[Kind.WORKER] or "worker.frames_running" in child,
            workers_to_jobs="workers_available" in read[Kind.JOB] or "job.workers_available" in child,
        )

#: The fields of a job, an instance and a worker a changed row brings (all but the key),
#: copied into the entity the farm holds.
_COPIED = {kind: tuple(c.name for c in SCHEMA[kind] if not c.key) for kind in Kind}
_JOB_FIELDS, _INSTANCE_FIELDS, _WORKER_FIELDS = _COPIED[Kind.JOB], _COPIED[Kind.INSTANCE], _COPIED[Kind.WORKER]
#: Those fields as a tuple, to tell a row read again unchanged (a C-level getter each).
_JOB_ROW, _INSTANCE_ROW, _WORKER_ROW = (attrgetter(*_COPIED[k]) for k in (Kind.JOB, Kind.INSTANCE, Kind.WORKER))
#: A frame's row fields in `FrameChange` order (tests/test_schema.py holds the two together).
_FRAME_ROW = attrgetter(*columns(Kind.FRAME))
#: Job fields that frames and instances show as `job.*`: a change there touches them too.
_JOB_SHOWN = tuple(c.name for c in SCHEMA[Kind.JOB] if c.shown)
#: Job facts that come from the job's row alone (its "row" and "times" groups): spread
#: when the row changes; the others (counts) move with the job's frames.
_JOB_SHOWN_FACTS = frozenset(name for name, spec in FIELDS[Kind.JOB].items() if spec.group in ("row", "times"))


#: (A C-level getter: the run loop asks it of each frame's runs, a thousand a cycle.)
_RUN_ID = attrgetter("id")


def no_dirt() -> Dirty:
    return {k: set() for k in Kind}


class LiveFarm:
    def __init__(self, farm: Farm, mark: Mark, recent: timedelta = DEFAULT_RECENT, spread: Spread | None = None,
                 *, keep_recent: bool = True) -> None:
        """`keep_recent`: keep the runs a worker's `recent_*` counts are made of (see
        `Aggregates`); off when no policy reads them."""
        self.farm, self.mark = farm, mark
        self.spread = spread or Spread()
        self.pending: Dirty = no_dirt()
        #: Rows the last `apply` was given that changed nothing (read again), but for the
        #: ones corral's own last write made (they come back once, looking unchanged).
        self.reread = 0
        self._written: tuple[set[int], set[str]] = (set(), set())  # (jobs, workers) of that write
        self.agg = Aggregates.from_farm(farm, recent, keep_recent=keep_recent)
        #: What the previous plan over this farm did, part by part (see `PlanMemo`).
        self.plan_memo = PlanMemo()
        #: The policies' recent actions, and the log row read up to (see `note_log`).
        self.cooldowns = Cooldowns()
        self.log_after: int | None = None
        #: The `now` the window counts were last planned at (see `aged`).
        self.planned_at: datetime | None = None
        self.dependents: dict[int, set[int]] = defaultdict(set)
        self.host_instances: dict[str, set[str]] = defaultdict(set)
        self.frame_dependents: dict[str, set[str]] = defaultdict(set)
        for job in farm.jobs.values():
            for dep in job.depends_on:
                self.dependents[dep].add(job.id)
            for inst in job.instances.values():
                self.host_instances[inst.host].add(inst.id)
            for frame in job.frames.values():
                for dj, dn in frame.depends_on:
                    self.frame_dependents[f"{dj}:{dn}"].add(frame.key)

    def everything(self, states: dict[Kind, frozenset[str] | None] | None = None) -> Dirty:
        """Every entity: what a first cycle evaluates.  With `states` (per kind, None:
        any), only the entities in those states: a first cycle over a million frames
        then names the few thousand that are failed, not every complete one."""
        farm, states = self.farm, states or {}

        def ok(kind: Kind) -> Any:
            allowed = states.get(kind)
            return (lambda state: True) if allowed is None else allowed.__contains__

        job_ok, frame_ok, inst_ok, worker_ok = (ok(k) for k in (Kind.JOB, Kind.FRAME, Kind.INSTANCE, Kind.WORKER))
        return {
            Kind.JOB: {j.id for j in farm.jobs.values() if job_ok(j.state)},
            Kind.FRAME: {f.key for j in farm.jobs.values() for f in j.frames.values() if frame_ok(f.state)},
            Kind.INSTANCE: {i.id for i in farm.instances.values() if inst_ok(i.state)},
            Kind.WORKER: {w.name for w in farm.workers.values() if worker_ok(w.state)},
        }

    def note_log(self, log: ActionLog | None) -> None:
        """Take in the actions logged since the last read (the whole window, the first
        time).  Entries that age out of the window stay until the next whole read of
        the farm (`corral.session.FULL_READ_EVERY`); a cooldown never reaches back further
        than the window, so they only cost memory."""
        if log is not None:
            self.cooldowns.note(log.actions)
            self.log_after = log.after

    # --- applying the rows that changed ------------------------------------------------

    def apply(self, changes: FarmChanges, mark: Mark) -> Dirty:
        dirty, self.pending = self.pending, no_dirt()
        self.reread, (own_jobs, own_workers) = 0, self._written
        self._written = (set(), set())
        for job in changes.jobs:
            self._job(job, dirty, own_jobs)
        for job_id, deps in changes.depends_on.items():
            self._deps(job_id, deps, dirty)
        for inst in changes.instances:
            self._instance(inst, dirty, own_jobs)
        for worker in changes.workers:
            self._worker(worker, dirty, own_workers)
        self._frames(changes.frames, dirty, own_jobs)
        for job_id, number, run in changes.runs:
            owner = self.farm.jobs.get(job_id)
            ran = owner.frames.get(number) if owner else None
            if owner is None or ran is None:
                continue
            if ran.runs and run.id in map(_RUN_ID, ran.runs):
                continue  # read again where two reads overlap: history is counted once
            ran.runs.append(run)
            host = run.host
            moved = self.agg.run(job_id, number, run)
            dirty[Kind.JOB].add(job_id)
            if run.instance:
                dirty[Kind.INSTANCE].add(run.instance)
            if host:
                dirty[Kind.WORKER].add(host)
                # The job's instances on this host count its runs (host_*_on_job); the
                # others count this host only once it starts succeeding or failing on
                # the job (other_hosts_*: the run was its first of the kind there), which
                # most runs do not.
                if moved:
                    dirty[Kind.INSTANCE].update(owner.instances)
                else:
                    dirty[Kind.INSTANCE].update(i for i, inst in owner.instances.items() if inst.host == host)
        # A host's first success anywhere, or its first failure of a second job: the jobs it
        # fails judge it again (failing_hosts_healthy_elsewhere, failing_hosts_only_here).
        agg = self.agg
        if agg.newly_completed_elsewhere:
            # A job's first (or second) host to complete a frame of it: the hosts that failed
            # it judge it again (distinct_jobs_failed_others_complete).
            jobs, agg.newly_completed_elsewhere = agg.newly_completed_elsewhere, set()
            refs = agg.job_host_refs
            for j in jobs:
                dirty[Kind.WORKER].update(h for h, n in refs.get(j, {}).items() if n > 0)
        if agg.newly_healthy or agg.newly_failing_elsewhere:
            moved_hosts = agg.newly_healthy | agg.newly_failing_elsewhere
            agg.newly_healthy, agg.newly_failing_elsewhere = set(), set()
            # (only the jobs they failed: the facts that read a host's standing elsewhere
            # count the hosts failing the job and completing none of it)
            failed_jobs = agg.host_failed_jobs
            for host in moved_hosts:
                dirty[Kind.JOB].update(failed_jobs.get(host, ()))
        self.mark = mark
        return self._spread(dirty)

    def aged(self, dirty: Dirty, now: datetime) -> Dirty:
        """Add the entities whose recent-window counts fell since the last plan with
        nothing read: a worker's `recent_*` (and the `worker.*` that show them) and an
        instance's `host_recent_failures_on_job`.  Without it the engine would go on
        holding a count of failures long past."""
        since, self.planned_at = self.planned_at, now
        if since is None or now <= since:
            return dirty
        hosts, pairs = self.agg.aged(since, now)
        if not hosts and not pairs:
            return dirty
        extra = no_dirt()
        extra[Kind.WORKER] |= hosts
        for job_id, host in pairs:
            job = self.farm.jobs.get(job_id)
            if job is not None:
                extra[Kind.INSTANCE].update(i for i, inst in job.instances.items() if inst.host == host)
        for kind, found in self._spread(extra).items():
            dirty[kind] |= found
        return dirty

    def _spread(self, dirty: Dirty) -> Dirty:
        """Carry each change to the facts that copy it (see `Spread`)."""
        spread, farm = self.spread, self.farm
        if spread.job_to_children:
            for job_id in list(dirty[Kind.JOB]):
                job = farm.jobs.get(int(job_id))
                if job is not None:
                    dirty[Kind.FRAME].update(f.key for f in job.frames.values())
                    dirty[Kind.INSTANCE].update(job.instances)
        hosts = dirty[Kind.WORKER]
        if hosts and spread.worker_to_instances:
            for host in hosts:
                dirty[Kind.INSTANCE].update(self.host_instances.get(str(host), ()))
        if hosts and spread.worker_to_frames:  # rare (a worker policy reads...), so a scan is fine
            dirty[Kind.FRAME].update(
                f.key for j in farm.jobs.values() for f in j.frames.values() if f.host in hosts
            )
        if spread.frame_dependents and self.frame_dependents:
            for key in list(dirty[Kind.FRAME]):
                dirty[Kind.FRAME].update(self.frame_dependents.get(str(key), ()))
        return dirty

    def _job(self, new: Job, dirty: Dirty, own: set[int]) -> None:
        old = self.farm.jobs.get(new.id)
        if old is None:
            dirty[Kind.JOB].add(new.id)
            new.frames, new.instances, new.depends_on = {}, {}, []
            self.farm.jobs[new.id] = new
            return
        if _JOB_ROW(old) == _JOB_ROW(new):
            self.reread += new.id not in own
            return  # read again, unchanged (see the module docstring)
        dirty[Kind.JOB].add(new.id)
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
        if job is None or job.depends_on == deps:
            return
        for dep in job.depends_on:
            self.dependents[dep].discard(job_id)
        job.depends_on = list(deps)
        for dep in deps:
            self.dependents[dep].add(job_id)
        dirty[Kind.JOB].add(job_id)

    def _instance(self, new: Instance, dirty: Dirty, own: set[int]) -> None:
        job = self.farm.jobs.get(new.job_id)
        if job is None:
            return
        old = job.instances.get(new.id)
        if old is None:
            job.instances[new.id] = new
            self.farm.reindex()
        elif _INSTANCE_ROW(old) == _INSTANCE_ROW(new):
            self.reread += new.job_id not in own
            return  # read again, unchanged
        else:
            self.host_instances[old.host].discard(old.id)
            for name in _INSTANCE_FIELDS:
                setattr(old, name, getattr(new, name))
        self.host_instances[new.host].add(new.id)
        dirty[Kind.INSTANCE].add(new.id)
        dirty[Kind.JOB].add(new.job_id)

    def _worker(self, new: Worker, dirty: Dirty, own: set[str]) -> None:
        old = self.farm.workers.get(new.name)
        if old is None:
            self.farm.workers[new.name] = new
        elif _WORKER_ROW(old) == _WORKER_ROW(new):
            self.reread += new.name not in own
            return  # read again, unchanged
        else:
            for name in _WORKER_FIELDS:
                setattr(old, name, getattr(new, name))
        if self.spread.workers_to_jobs:
            dirty[Kind.JOB].update(self.farm.jobs)  # every job's workers_available may have moved
        dirty[Kind.WORKER].add(new.name)
        dirty[Kind.INSTANCE].update(self.host_instances.get(new.name, ()))

    def _frames(self, rows: list[FrameChange], dirty: Dirty, own: set[int]) -> None:
        """The changed frame rows into the farm and the counts: the loop a steady cycle
        runs once per changed frame (ten thousand a cycle on a million-frame farm), so
        what it reads is bound once.

        A host or instance name the row did not change stays the frame's own string (the
        farm's one string for that name), so only a new name is interned.  A row's
        fields go into the frame the farm holds, not into a new object in its place: the
        farm's objects are frozen out of the garbage collector's sight (see
        `Session.refresh`), and a new object per changed row would pile up in its oldest
        generation, every full collection walking more of them."""
        jobs, moved = self.farm.jobs, self.agg.frame_mover()
        dirty_frames, dirty_jobs, dirty_workers = dirty[Kind.FRAME], dirty[Kind.JOB], dirty[Kind.WORKER]
        spread_to_workers = self.spread.running_on_workers  # a frame starting or stopping moves its hosts' counts
        # Frames in no state a frame policy admits need no fact (see Spread.frame_states),
        # unless other frames' facts copy theirs (dependencies).
        admitted = None if self.spread.frame_dependents else self.spread.frame_states
        unchanged = 0
        for row in rows:
            (job_id, number, state, host, instance, attempts, retries, code, started, finished, since, layer, avoid,
             version) = row
            job = jobs.get(job_id)
            if job is None:
                continue
            frame = job.frames.get(number)
            if frame is None:
                was = old_host = None
                job.frames[number] = frame = Frame(job_id, number, state, host and intern(host),
                                                   instance and intern(instance), attempts, retries, code,
                                                   started, finished, since, layer and intern(layer), avoid, version)
                host = frame.host
            else:
                if frame.version == version and _FRAME_ROW(frame) == row:  # (a write moves the version)
                    unchanged += job_id not in own
                    continue  # read again, unchanged
                was, old_host = frame.state, frame.host
                host = old_host if host == old_host else host and intern(host)
                old_instance = frame.instance
                instance = old_instance if instance == old_instance else instance and intern(instance)
                if layer != frame.layer:
                    frame.layer = layer and intern(layer)
                frame.avoid_hosts = avoid
                (frame.state, frame.host, frame.instance, frame.attempts, frame.retries, frame.exit_code,
                 frame.started_at, frame.finished_at, frame.state_since, frame.version) = (
                    state, host, instance, attempts, retries, code, started, finished, since, version)
            moved(job_id, was, old_host, state, host)
            if spread_to_workers:
                if old_host:
                    dirty_workers.add(old_host)
                if host:
                    dirty_workers.add(host)
            if admitted is None or state in admitted or was in admitted:
                dirty_frames.add(f"{job_id}:{number}")
            dirty_jobs.add(job_id)
        self.reread += unchanged

    # --- changes made in place by the applier -----------------------------------------

    @contextmanager
    def changed_in_place(self, job_ids: Collection[int], workers: Iterable[str]) -> Iterator[None]:
        """Around a write that changes these jobs' entities and these workers in place
        (the applier does, after its rows are written): the jobs' frames are taken out of
        the counts before and counted again after (the invariant in the module
        docstring), and their facts, and what copies them, are rebuilt next cycle (the
        rows the write made come back from the next read looking unchanged)."""
        jobs = [job for j in job_ids if (job := self.farm.jobs.get(j)) is not None]
        workers = list(workers)
        hosts = {f.host for job in jobs for f in job.frames.values() if f.host}  # before: a requeue clears them
        self._count(jobs, -1)
        try:
            yield
        finally:
            self._count(jobs, +1)
        pending = self.pending
        for job in jobs:
            pending[Kind.JOB].add(job.id)
            pending[Kind.JOB].update(self.dependents.get(job.id, ()))
            pending[Kind.FRAME].update(f.key for f in job.frames.values())
            pending[Kind.INSTANCE].update(job.instances)
            pending[Kind.WORKER].update(f.host for f in job.frames.values() if f.host)
        pending[Kind.WORKER].update(workers)
        pending[Kind.WORKER].update(hosts)
        if workers and self.spread.workers_to_jobs:
            pending[Kind.JOB].update(self.farm.jobs)
        self._written[0].update(job.id for job in jobs)
        self._written[1].update(workers)

    def _count(self, jobs: Iterable[Job], sign: int) -> None:
        frame_state = self.agg.frame_state
        for job in jobs:
            for frame in job.frames.values():
                frame_state(frame, sign)

    # --- a new policy set -----------------------------------------------------------------

    def retune(self, spread: Spread, *, keep_recent: bool) -> None:
        """Serve a new policy set (`Session.swap`): spread changes as its policies read
        them, keep the recent window's runs if they read it (counted again from the farm
        if they were not kept), plan afresh (the memo's outcomes were the old policies'),
        and read the cooldowns' whole window again next cycle (it may have grown)."""
        self.spread = spread
        if keep_recent and not self.agg.keep_recent:
            self.agg = Aggregates.from_farm(self.farm, self.agg.recent, keep_recent=True)
        self.plan_memo = PlanMemo()
        self.log_after = None
