"""Building facts: what a policy sees of each entity, from a farm at an instant.

The rule engine's facts are built with `Needs`: only the groups of fields some policy
reads are worked out (a job's host counts cost a pass over its hosts; no policy reading
them, no pass), and in stages: the costly groups only for an entity whose cheap first
stage, then its host counts, pass some policy's screen (`FactBuilder.candidate`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.facts.aggregates import Aggregates, _Tail, frame_runs
from corral.facts.screens import Screen
from corral.facts.vocabulary import DEFAULT_RECENT, GROUPS, Needs
from corral.failures import DEFAULT_CLASSES, FailureClasses
from corral.farm import Entity, Farm, Frame, FrameRun, Instance, Job
from corral.states import STATES, FrameState, Hold, InstanceState, JobState, Kind, WorkerState

_NO_FRAMES: dict[str, int] = {}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Every group of a job's fact (a builder with no `needs` builds them all).
_ALL_GROUPS = frozenset(GROUPS[Kind.JOB].values())


#: How a first-stage field is worked out: from its subject (the job, the instance, or the
#: worker's *name*: a host that ran frames may have no worker row, and then it has no
#: state) and the builder (its counts, its farm, its `now`).  None: unknown (the field is
#: left out of the fact).
Getter = Callable[[Any, "FactBuilder"], Any]


def _count_of(state: str) -> Getter:
    return lambda job, b: b.frame_counts(job).get(state, 0)


def _done_percent(job: Job, b: FactBuilder) -> float:
    return 100.0 * b.frame_counts(job).get(FrameState.COMPLETE, 0) / len(job.frames) if job.frames else 0.0


def _failed_percent(job: Job, b: FactBuilder) -> float:
    return 100.0 * b.frame_counts(job).get(FrameState.FAILED, 0) / len(job.frames) if job.frames else 0.0


def _since_last_failure(inst: Instance, b: FactBuilder) -> float | None:
    return _secs(b.agg.job_host_last_fail.get((inst.job_id, inst.host)), b.now)


def _finished(run: FrameRun) -> datetime:
    return run.finished_at or _EPOCH


def _failures(tail: _Tail | None) -> int:
    return tail.failures if tail else 0


#: Each kind's first-stage fields (FIRST_STAGE): the one definition both a fact's first
#: stage and a screen's probe (`FactBuilder.candidate`) are made from.  A frame's fact
#: is written out whole in `FactBuilder.frame` instead (it is nearly all first stage);
#: tests/test_facts.py holds each kind's fields to the vocabulary.
FIRST: dict[Kind, dict[str, Getter]] = {
    Kind.JOB: {
        "id": lambda job, _: job.id,
        "name": lambda job, _: job.name,
        "owner": lambda job, _: job.owner,
        "priority": lambda job, _: job.priority,
        "state": lambda job, _: str(job.state),
        "suspended": lambda job, _: job.hold is Hold.SUSPENDED,
        "blocked_by": lambda job, _: job.blocked_by if job.hold is Hold.BLOCKED else None,
        "retry_limit": lambda job, _: job.retry_limit,
        "retries": lambda job, _: job.retries,
        "retries_left": lambda job, _: max(0, job.retry_limit - job.retries),
        # the "frames" group
        "frames_total": lambda job, _: len(job.frames),
        **{f"frames_{s}": _count_of(s) for s in STATES[Kind.FRAME]},
        "frames_done_percent": _done_percent,
        "frames_failed_percent": _failed_percent,
        "failed_attempts": lambda job, b: b.agg.job_failed_attempts.get(job.id, 0),
    },
    Kind.INSTANCE: {
        "id": lambda inst, _: inst.id,
        "job_id": lambda inst, _: inst.job_id,
        "host": lambda inst, _: inst.host,
        "state": lambda inst, _: str(inst.state),
        "time_in_state": lambda inst, b: _secs(inst.state_since, b.now),
        "consecutive_failures": lambda inst, b: _failures(b.agg.inst_tail.get(inst.id)),
        "frames_failed": lambda inst, b: b.agg.inst_failed.get(inst.id, 0),
        "frames_completed": lambda inst, b: b.agg.inst_ok.get(inst.id, 0),
        "host_failed_frames_on_job": lambda inst, b: b.agg.job_host_fail_frames.get((inst.job_id, inst.host), 0),
        "host_failed_attempts_on_job": lambda inst, b: b.agg.job_host_fail.get((inst.job_id, inst.host), 0),
        "host_failures_on_job": lambda inst, b: b.agg.job_host_fail.get((inst.job_id, inst.host), 0),
        "host_since_last_failure_on_job": _since_last_failure,
        "host_recent_failures_on_job": lambda inst, b: b.agg.recent_failures_on_job(inst.job_id, inst.host, b.now),
        "host_successes_on_job": lambda inst, b: b.agg.job_host_ok.get((inst.job_id, inst.host), 0),
    },
    Kind.WORKER: {  # all but the "recent" group
        "id": lambda name, _: name,
        "name": lambda name, _: name,
        "consecutive_failures": lambda name, b: _failures(b.agg.host_tail.get(name)),
        "distinct_jobs_failed": lambda name, b: (tail.distinct_jobs() if (tail := b.agg.host_tail.get(name)) else 0),
        "distinct_jobs_failed_others_complete": lambda name, b: b.agg.jobs_failed_others_complete(name),
        "frames_completed": lambda name, b: b.agg.host_ok.get(name, 0),
        "failing_for": lambda name, b: None if (tail := b.agg.host_tail.get(name)) is None else tail.failing_for(),
        "frames_running": lambda name, b: b.agg.running_on_host.get(name, 0),
        "state": lambda name, b: None if (worker := b.farm.workers.get(name)) is None else str(worker.state),
        "time_in_state": lambda name, b: None if (worker := b.farm.workers.get(name)) is None
        else _secs(worker.state_since, b.now),
    },
}
_JOB_FIRST, _INSTANCE_FIRST, _WORKER_FIRST = FIRST[Kind.JOB], FIRST[Kind.INSTANCE], FIRST[Kind.WORKER]

#: What `FactBuilder._job_hosts` works out (the "hosts" group).
_JOB_HOST_FIELDS = tuple(name for name, group in GROUPS[Kind.JOB].items() if group == "hosts")
_JOB_ROW = {name: get for name, get in _JOB_FIRST.items() if GROUPS[Kind.JOB].get(name, "row") == "row"}


#: A frame's fields that can be unknown (None), which its fact leaves out.
_FRAME_UNKNOWABLE = ("host", "instance", "exit_code", "time_in_state", "layer")
_INSTANCE_COUNTS = tuple((f"instances_{s}", s) for s in STATES[Kind.INSTANCE])


def _secs(since: datetime | None, now: datetime) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())



class FactBuilder:
    """Builds facts for one farm at one instant.

    The counts come from `Aggregates`, built once per farm (one pass over the frames
    and their runs) or handed over kept current by the daemon's live farm, so a fact
    costs the same whether the farm was read whole or updated by deltas.
    """

    farm: Farm
    now: datetime
    agg: Aggregates

    def __init__(
        self,
        farm: Farm,
        now: datetime,
        recent: timedelta = DEFAULT_RECENT,
        aggregates: Aggregates | None = None,
        needs: Needs | None = None,
        classes: FailureClasses = DEFAULT_CLASSES,
    ) -> None:
        """`needs`: build only the fields in these groups (the rule engine's facts);
        without it every field is built (what `explain`, reasons and tests show)."""
        self.farm, self.now, self.recent, self.classes = farm, now, recent, classes
        self.agg = aggregates if aggregates is not None else Aggregates.from_farm(farm, recent)
        self.needs = needs
        #: The groups of each kind's own facts, and of the job and worker facts frames and
        #: instances show (None: all).
        self._groups: dict[Kind, frozenset[str] | None] = {
            kind: None if needs is None else needs.groups[kind] for kind in Kind}
        self._shown_groups: dict[Kind, frozenset[str] | None] = {
            kind: None if needs is None else needs.shown.get(kind, frozenset()) for kind in (Kind.JOB, Kind.WORKER)}
        self._job_cache: dict[int, dict[str, Any]] = {}
        self._worker_cache: dict[str, dict[str, Any]] = {}
        self._shown_job_cache: dict[int, dict[str, Any]] = {}
        self._shown_worker_cache: dict[str, dict[str, Any]] = {}
        self._up: frozenset[str] | None = None

    def frame_counts(self, job: Job) -> Mapping[str, int]:
        """How many of the job's frames are in each state (by the state's value)."""
        return self.agg.job_frames.get(job.id) or _NO_FRAMES

    def up_workers(self) -> frozenset[str]:
        """The workers up now (worked out once per builder: every job's `workers_available` reads it)."""
        if self._up is None:
            up = WorkerState.UP
            self._up = frozenset(name for name, w in self.farm.workers.items() if w.state == up)
        return self._up

    def _wants(self, kind: Kind, group: str) -> bool:
        groups = self._groups[kind]
        return groups is None or group in groups

    def _shown_job(self, job: Job) -> dict[str, Any]:
        """A job's fact as its frames and instances show it (`job.*`: no dependencies),
        with only the groups they read of it."""
        shown = self._shown_job_cache.get(job.id)
        if shown is None:
            if self.needs is None:  # every field: the job's own fact, less its dependencies
                fact = self.job(job)
                shown = _without_deps(fact) if "dependencies" in fact else fact
            else:
                groups = self._shown_groups[Kind.JOB]
                shown = self._job_first(job, groups)
                self._job_hosts(job, shown, groups)
                self._job_rest(job, shown, groups, dependencies=False)
            self._shown_job_cache[job.id] = shown
        return shown

    def _shown_worker(self, name: str) -> dict[str, Any]:
        """A worker's fact as the frames and instances on it show it (`worker.*`)."""
        if self.needs is None:
            return self.worker(name)
        shown = self._shown_worker_cache.get(name)
        if shown is None:
            shown = self._shown_worker_cache[name] = self._worker(name, self._shown_groups[Kind.WORKER])
        return shown

    # --- per kind -------------------------------------------------------------------
    def candidate(self, kind: Kind, entity: Entity, screen: Screen | None) -> dict[str, Any] | None:
        """The fact of an entity for the rule engine, or None when its first stage (the
        row's own fields and a job's frame counts) already fails `screen`, or its second
        (host counts) fails `screen.then`: then no policy can match it, and the rest
        (durations, dependencies, an instance's job and worker) is never worked out.
        Most of the jobs a steady cycle touches are running jobs with frames complete,
        which one comparison rules out."""
        if screen is None or kind is Kind.FRAME:
            return self.of(kind, entity)  # its first stage is nearly all of it
        if kind is Kind.JOB:
            job: Job = entity  # type: ignore[assignment]
            fact = self._job_cache.get(job.id)
            if fact is not None:
                return fact if screen.passes_all(fact) else None
            # Only the fields the screen reads for the job's state, first: most jobs fail it.
            if not screen.admits(job.state, _JOB_FIRST, job, self):
                return None
            if screen.then is None:
                return self.job(job)
            # then its host counts, on a probe again (kept for the whole fact: one pass over its hosts)
            rest = screen.then.by_state.get(job.state)
            if rest is None:
                return None
            paths, test, _ = rest
            probe = {p: v for p in paths if p in _JOB_FIRST and (v := _JOB_FIRST[p](job, self)) is not None}
            self._job_hosts(job, probe, None)
            return self.job(job, hosts=probe) if test(probe) else None
        if kind is Kind.WORKER:
            name = entity.name  # type: ignore[union-attr]
            cached = self._worker_cache.get(name)
            if cached is not None:
                return cached if screen.passes_all(cached) else None
            if not screen.admits(entity.state, _WORKER_FIRST, name, self):
                return None
            return self.worker(name)  # (a worker has no second stage)
        inst: Instance = entity  # type: ignore[assignment]
        if not screen.admits(inst.state, _INSTANCE_FIRST, inst, self):
            return None
        fact = self._instance_first(inst)
        self._instance_hosts(inst, fact)
        if screen.then is not None and not screen.then.passes(fact):
            return None
        return self._instance_rest(inst, fact)

    def job(self, job: Job, *, hosts: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`hosts`: the job's host counts already worked out (a screen's probe), taken
        instead of a second pass over its hosts."""
        cached = self._job_cache.get(job.id)
        if cached is not None:
            return cached
        groups = self._groups[Kind.JOB]
        fact = self._job_first(job, groups)
        if hosts is not None and (groups is None or "hosts" in groups):
            fact.update((name, hosts[name]) for name in _JOB_HOST_FIELDS)
        else:
            self._job_hosts(job, fact, groups)
        self._job_rest(job, fact, groups)
        self._job_cache[job.id] = fact
        return fact

    def _job_first(self, job: Job, groups: frozenset[str] | None) -> dict[str, Any]:
        """The job's row fields and, if `groups` (None: all) has them, frame counts (FIRST_STAGE)."""
        fields = _JOB_FIRST if groups is None or "frames" in groups else _JOB_ROW
        fact = {name: get(job, self) for name, get in fields.items()}
        if fact["blocked_by"] is None:
            del fact["blocked_by"]  # unknown: submitted blocked, or not blocked at all
        if fact["owner"] is None:
            del fact["owner"]
        return fact

    def _job_hosts(self, job: Job, fact: dict[str, Any], groups: frozenset[str] | None) -> None:
        """The job's host counts (SECOND_STAGE), if `groups` (None: all) has them."""
        if groups is not None and "hosts" not in groups:
            return
        # one pass, with dict.get (a Counter's missing key goes through Python code)
        agg = self.agg
        hosts = agg.job_hosts(job.id)
        ok, failed, job_id = agg.job_host_ok.get, agg.job_host_fail.get, job.id
        failed_frames, host_ok, jobs_failed = agg.job_host_fail_frames.get, agg.host_ok.get, agg.host_failed_jobs.get
        tails = agg.host_tail.get
        failing = succeeding = worst = worst_frames = healthy = only_here = 0
        for host in hosts:
            if ok((job_id, host), 0) > 0:
                succeeding += 1
            else:
                n = failed((job_id, host), 0)
                if n > 0:
                    failing += 1
                    worst = max(worst, n)
                    worst_frames = max(worst_frames, failed_frames((job_id, host), 0))
                    # It completed frames, none of this job (so all elsewhere), and is not
                    # failing other jobs now: a host that turned bad after weeks of good
                    # work fails everything it takes, and speaks against no job.
                    if host_ok(host, 0) > 0 and not ((tail := tails(host)) and tail.fails_other_than(job_id)):
                        healthy += 1
                    if len(jobs_failed(host, ())) == 1:  # this one: it failed no other job
                        only_here += 1
        fact["hosts"] = len(hosts)
        fact["failing_hosts"] = failing
        fact["succeeding_hosts"] = succeeding
        fact["hosts_not_failing"] = len(hosts) - failing
        fact["failing_hosts_percent"] = 100.0 * failing / len(hosts) if hosts else 0.0
        fact["failing_hosts_healthy_elsewhere"] = healthy
        fact["failing_hosts_only_here"] = only_here
        fact["worst_host_failed_frames"] = worst_frames
        fact["worst_host_failed_attempts"] = fact["worst_host_failures"] = worst

    def _job_rest(self, job: Job, fact: dict[str, Any], groups: frozenset[str] | None, *,
                  dependencies: bool = True) -> None:
        """The job's last groups in `groups` (None: all): durations, instance counts, and
        (unless shown in another entity's fact) dependencies."""
        groups = _ALL_GROUPS if groups is None else groups
        if "times" in groups:
            now = self.now
            for key, since in (("time_in_state", job.state_since), ("age", job.submitted_at),
                               ("since_retry", job.last_retry_at)):
                if since is not None:  # unknown otherwise (never retried, say)
                    fact[key] = max(0.0, (now - since).total_seconds())
        if "workers" in groups:
            up = self.up_workers()
            locked_out = {i.host for i in job.instances.values() if i.state == InstanceState.BLOCKED and i.host in up}
            fact["workers_available"] = len(up) - len(locked_out)
        if "failures" in groups:
            fact["failures"] = self.classes.counts(self.agg.job_fail_codes.get(job.id) or {})
        if "instances" in groups:
            insts = Counter(str(i.state) for i in job.instances.values())
            fact["instances_total"] = len(job.instances)
            for key, s in _INSTANCE_COUNTS:
                fact[key] = insts.get(s, 0)
        if dependencies and "dependencies" in groups:
            deps = [self.farm.jobs[d].state for d in job.depends_on if d in self.farm.jobs]
            complete = sum(1 for s in deps if s == JobState.COMPLETE)
            fact["dependencies"] = {
                "total": len(job.depends_on),
                "complete": complete,
                "failed": sum(1 for s in deps if s == JobState.FAILED),
                "killed": sum(1 for s in deps if s == JobState.KILLED),
                "incomplete": len(job.depends_on) - complete,
                "all_complete": bool(job.depends_on) and complete == len(deps) == len(job.depends_on),
            }

    def worker(self, name: str) -> dict[str, Any]:
        cached = self._worker_cache.get(name)
        if cached is None:
            cached = self._worker_cache[name] = self._worker(name, self._groups[Kind.WORKER])
        return cached

    def _worker(self, name: str, groups: frozenset[str] | None) -> dict[str, Any]:
        fact = {field: v for field, get in _WORKER_FIRST.items() if (v := get(name, self)) is not None}
        if groups is None or "recent" in groups:
            fact["recent_failures"], fact["recent_successes"] = self.agg.recent_counts(name, self.now)
        return fact

    def frame(self, frame: Frame) -> dict[str, Any]:
        job = self.farm.jobs[frame.job_id]
        fact: dict[str, Any] = {
            "id": frame.key,
            "job_id": frame.job_id,
            "number": frame.number,
            "layer": frame.layer,
            "hosts_avoided": len(frame.avoid_hosts.split()) if frame.avoid_hosts else 0,
            "state": str(frame.state),
            "host": frame.host,
            "instance": frame.instance,
            "attempts": frame.attempts,
            "retries": frame.retries,
            "retries_left": max(0, job.retry_limit - frame.retries),
            "exit_code": frame.exit_code,
            "time_in_state": _secs(frame.state_since, self.now),
        }
        if self._wants(Kind.FRAME, "run_time") and frame.started_at is not None:
            end = frame.finished_at if frame.state != FrameState.RUNNING else None
            fact["run_time"] = _secs(frame.started_at, end or self.now)
        if self._wants(Kind.FRAME, "history"):
            runs = frame_runs(frame)
            failed = [r for r in runs if r.state == FrameState.FAILED]
            fact["failed_attempts"] = len(failed)
            fact["hosts_failed"] = len({r.host for r in failed if r.host})
            fact["failures"] = self.classes.counts(Counter(r.exit_code for r in failed))
            last = max(failed, key=_finished, default=None)
            if last is not None:
                fact["failure_class"] = self.classes.classify(last.exit_code) or "error"
        if self._wants(Kind.FRAME, "dependencies"):
            deps = [
                self.farm.jobs[j].frames[n].state
                for j, n in frame.depends_on
                if j in self.farm.jobs and n in self.farm.jobs[j].frames
            ]
            done = sum(1 for s in deps if s == FrameState.COMPLETE)
            fact["dependencies"] = {
                "total": len(frame.depends_on),
                "complete": done,
                "incomplete": len(frame.depends_on) - done,
            }
        if self._wants(Kind.FRAME, "job"):
            fact["job"] = self._shown_job(job)
        if frame.host and self._wants(Kind.FRAME, "worker"):
            fact["worker"] = self._shown_worker(frame.host)
        for key in _FRAME_UNKNOWABLE:  # left out when unknown (a frame that never ran)
            if fact[key] is None:
                del fact[key]
        return fact

    def instance(self, inst_id: str) -> dict[str, Any]:
        inst = self.farm.instances[inst_id]
        fact = self._instance_first(inst)
        self._instance_hosts(inst, fact)
        return self._instance_rest(inst, fact)

    def _instance_first(self, inst: Instance) -> dict[str, Any]:
        """The instance's own counts (FIRST_STAGE), without None values."""
        return {field: v for field, get in _INSTANCE_FIRST.items() if (v := get(inst, self)) is not None}

    def _instance_hosts(self, inst: Instance, fact: dict[str, Any]) -> None:
        """The other hosts' standing on the instance's job (SECOND_STAGE)."""
        if not self._wants(Kind.INSTANCE, "other_hosts"):
            return
        agg = self.agg
        ok, failed, job_id = agg.job_host_ok.get, agg.job_host_fail.get, inst.job_id
        succeeding = failing = 0
        for host in agg.job_hosts(job_id):
            if host == inst.host:
                continue
            if ok((job_id, host), 0) > 0:
                succeeding += 1
            elif failed((job_id, host), 0) > 0:
                failing += 1
        fact["other_hosts_succeeding"] = succeeding
        fact["other_hosts_failing"] = failing

    def _instance_rest(self, inst: Instance, fact: dict[str, Any]) -> dict[str, Any]:
        """The instance's last groups: its job and its worker."""
        job = self.farm.jobs[inst.job_id]
        if self._wants(Kind.INSTANCE, "job"):
            fact["job"] = self._shown_job(job)
        if self._wants(Kind.INSTANCE, "worker"):
            fact["worker"] = self._shown_worker(inst.host)
        return fact

    def facts(self, kind: Kind) -> list[dict[str, Any]]:
        """Every fact of one kind, in a stable order."""
        if kind is Kind.JOB:
            return [self.job(j) for j in self.farm.jobs.values()]
        if kind is Kind.FRAME:
            return [self.frame(f) for j in self.farm.jobs.values() for f in j.frames.values()]
        if kind is Kind.INSTANCE:
            return [self.instance(i) for i in self.farm.instances]
        return [self.worker(w) for w in self.farm.workers]

    def fact(self, kind: Kind, ident: str) -> dict[str, Any]:
        """The fact of one entity (KeyError naming it when it does not exist)."""
        return self.of(kind, self.farm.entity(kind, ident))

    def of(self, kind: Kind, entity: Entity) -> dict[str, Any]:
        """The fact of an entity already looked up."""
        if kind is Kind.JOB:
            return self.job(entity)  # type: ignore[arg-type]
        if kind is Kind.FRAME:
            return self.frame(entity)  # type: ignore[arg-type]
        if kind is Kind.INSTANCE:
            return self.instance(str(entity.id))  # type: ignore[union-attr]
        return self.worker(entity.name)  # type: ignore[union-attr]



def _without_deps(job_fact: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job_fact.items() if k != "dependencies"}

