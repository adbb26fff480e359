"""Facts: what a policy can see of each job, frame, instance and worker.

A fact is a flat-ish dict per entity, built from a `Farm` at a given `now`.  The
fields are the vocabulary wranglers think in ("failed 5 frames in a row on this
host", "all dependencies complete"), declared once in `FIELDS` with their type and
meaning.  The policy loader checks field names and value types against this table,
`docs/policies.md` and the JSON Schema are generated from it, and the builder below
computes exactly these fields, so the three cannot drift apart.

A fact omits a field whose value is unknown (a frame that never ran has no
`exit_code`): every comparison on a missing field is false, `exists: false` is true.
Related entities appear as nested dicts: a frame's `job.*` and `worker.*`, an
instance's `job.*` and `worker.*`, a job's `dependencies.*`.  Only the fields some
policy needs are built (`needed`), which keeps facts small for the rule engine.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.farm import Farm, Frame, FrameRun, Job
from corral.states import STATES, FrameState, Hold, JobState, Kind


@dataclass(frozen=True)
class FieldSpec:
    """One fact field: its type decides which operators and values the loader accepts."""

    type: str  # "int" | "float" | "str" | "bool" | "duration" | "state"
    doc: str
    states: tuple[str, ...] = ()


def _counts(prefix: str, states: Iterable[str], what: str) -> dict[str, FieldSpec]:
    return {f"{prefix}_{s}": FieldSpec("int", f"number of {what} that are {s}") for s in states}


_JOB: dict[str, FieldSpec] = {
    "id": FieldSpec("int", "the job's id"),
    "name": FieldSpec("str", "the job's name"),
    "priority": FieldSpec("int", "the job's priority (higher runs first)"),
    "state": FieldSpec("state", "the job's state", STATES[Kind.JOB]),
    "suspended": FieldSpec("bool", "true when the job was suspended (it shows as pending)"),
    "blocked_by": FieldSpec(
        "str",
        "who blocked the job: a policy's name or user:NAME (missing when it was submitted blocked)",
    ),
    "retry_limit": FieldSpec("int", "how many automatic retries the job (and each of its frames) may have"),
    "retries": FieldSpec("int", "automatic retries of the job used so far"),
    "retries_left": FieldSpec("int", "retry_limit minus retries, never below 0"),
    "time_in_state": FieldSpec("duration", "how long the job has been in its current state"),
    "age": FieldSpec("duration", "how long ago the job was submitted"),
    "since_retry": FieldSpec("duration", "how long ago the job was last retried (missing if never)"),
    "frames_total": FieldSpec("int", "number of frames of the job"),
    **_counts("frames", STATES[Kind.FRAME], "the job's frames"),
    "frames_done_percent": FieldSpec("float", "percentage of the job's frames that are complete"),
    "instances_total": FieldSpec("int", "number of instances (processes) of the job"),
    **_counts("instances", STATES[Kind.INSTANCE], "the job's instances"),
    "hosts": FieldSpec("int", "distinct hosts that have run frames of the job"),
    "failing_hosts": FieldSpec("int", "hosts that failed frames of the job and completed none"),
    "succeeding_hosts": FieldSpec("int", "hosts that completed at least one frame of the job"),
    "hosts_not_failing": FieldSpec("int", "hosts minus failing_hosts: 0 means every host that ran it is failing"),
    "dependencies.total": FieldSpec("int", "number of jobs this job waits on"),
    "dependencies.complete": FieldSpec("int", "dependencies that are complete"),
    "dependencies.failed": FieldSpec("int", "dependencies that are failed"),
    "dependencies.killed": FieldSpec("int", "dependencies that are killed"),
    "dependencies.incomplete": FieldSpec("int", "dependencies that are not complete yet"),
    "dependencies.all_complete": FieldSpec("bool", "true when the job has dependencies and all are complete"),
}

_WORKER: dict[str, FieldSpec] = {
    "id": FieldSpec("str", "the worker's (host's) name"),
    "name": FieldSpec("str", "the worker's (host's) name"),
    "state": FieldSpec("state", "the worker's state", STATES[Kind.WORKER]),
    "time_in_state": FieldSpec("duration", "how long the worker has been in its current state"),
    "recent_failures": FieldSpec("int", "frames it failed within the recent window (default 1h)"),
    "recent_successes": FieldSpec("int", "frames it completed within the recent window (default 1h)"),
    "consecutive_failures": FieldSpec("int", "frames it failed since its last completed frame"),
    "distinct_jobs_failed": FieldSpec("int", "different jobs whose frames it failed since its last completed frame"),
    "frames_running": FieldSpec("int", "frames running on it now"),
}

_FRAME_OWN: dict[str, FieldSpec] = {
    "id": FieldSpec("str", "the frame's id, JOB:FRAME"),
    "job_id": FieldSpec("int", "the id of the frame's job"),
    "number": FieldSpec("int", "the frame number"),
    "state": FieldSpec("state", "the frame's state", STATES[Kind.FRAME]),
    "host": FieldSpec("str", "the host that runs or last ran it (missing if none)"),
    "instance": FieldSpec("str", "the instance that runs or last ran it (missing if none)"),
    "attempts": FieldSpec("int", "how many times it was started"),
    "retries": FieldSpec("int", "automatic retries of this frame used so far"),
    "retries_left": FieldSpec("int", "the job's retry_limit minus this frame's retries, never below 0"),
    "exit_code": FieldSpec("int", "exit code of its last attempt (missing if none)"),
    "run_time": FieldSpec("duration", "how long its last attempt ran (so far, if running)"),
    "time_in_state": FieldSpec("duration", "how long the frame has been in its current state"),
    "dependencies.total": FieldSpec("int", "number of frames this frame waits on"),
    "dependencies.complete": FieldSpec("int", "frames it waits on that are complete"),
    "dependencies.incomplete": FieldSpec("int", "frames it waits on that are not complete"),
}

_INSTANCE_OWN: dict[str, FieldSpec] = {
    "id": FieldSpec("str", "the instance's id"),
    "job_id": FieldSpec("int", "the id of the instance's job"),
    "host": FieldSpec("str", "the host it runs on"),
    "state": FieldSpec("state", "the instance's state", STATES[Kind.INSTANCE]),
    "time_in_state": FieldSpec("duration", "how long the instance has been in its current state"),
    "consecutive_failures": FieldSpec("int", "frames it failed since the last frame it completed"),
    "frames_failed": FieldSpec("int", "frames it failed in all"),
    "frames_completed": FieldSpec("int", "frames it completed in all"),
    "host_failures_on_job": FieldSpec("int", "frames of this job that failed on this host, over all its instances"),
    "host_successes_on_job": FieldSpec("int", "frames of this job that this host completed"),
    "other_hosts_succeeding": FieldSpec("int", "other hosts that completed frames of this job"),
    "other_hosts_failing": FieldSpec("int", "other hosts that failed frames of this job and completed none"),
}


def _related(prefix: str, fields: dict[str, FieldSpec], what: str) -> dict[str, FieldSpec]:
    return {
        f"{prefix}.{name}": FieldSpec(spec.type, f"{what}: {spec.doc}", spec.states)
        for name, spec in fields.items()
        if not name.startswith("dependencies.")
    }


FIELDS: dict[Kind, dict[str, FieldSpec]] = {
    Kind.JOB: _JOB,
    Kind.FRAME: {**_FRAME_OWN, **_related("job", _JOB, "its job"), **_related("worker", _WORKER, "its host")},
    Kind.INSTANCE: {
        **_INSTANCE_OWN,
        **_related("job", _JOB, "its job"),
        **_related("worker", _WORKER, "its host"),
    },
    Kind.WORKER: _WORKER,
}

DEFAULT_RECENT = timedelta(hours=1)


def _secs(since: datetime | None, now: datetime) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())


def frame_runs(frame: Frame) -> list[FrameRun]:
    """A frame's finished attempts; a snapshot that omits history gets its last one."""
    if frame.runs:
        return frame.runs
    if frame.state in (FrameState.COMPLETE, FrameState.FAILED) and frame.host:
        return [
            FrameRun(frame.host, frame.instance, frame.state, frame.exit_code, frame.started_at, frame.finished_at)
        ]
    return []


class FactBuilder:
    """Builds facts for one farm at one instant.

    Aggregates are computed once per farm (one pass over the frames and their runs)
    and reused by every kind; `needed` narrows each fact to the fields some policy
    reads, which is what the rule engine pays for.
    """

    def __init__(self, farm: Farm, now: datetime, recent: timedelta = DEFAULT_RECENT) -> None:
        self.farm, self.now, self.recent = farm, now, recent
        self._job_cache: dict[int, dict[str, Any]] = {}
        self._worker_cache: dict[str, dict[str, Any]] = {}
        self._aggregate()

    def _aggregate(self) -> None:
        # host -> its runs, time ordered; (job, host) -> failed / completed counts; instance -> runs
        cutoff = self.now - self.recent
        self.job_host_fail: Counter[tuple[int, str]] = Counter()
        self.job_host_ok: Counter[tuple[int, str]] = Counter()
        self.job_hosts: dict[int, set[str]] = defaultdict(set)
        host_runs: dict[str, list[tuple[int, FrameRun, int]]] = defaultdict(list)
        inst_runs: dict[str, list[tuple[int, FrameRun]]] = defaultdict(list)
        self.running_on_host: Counter[str] = Counter()
        seq = 0
        for job in self.farm.jobs.values():
            for frame in job.frames.values():
                if frame.state == FrameState.RUNNING and frame.host:
                    self.running_on_host[frame.host] += 1
                    self.job_hosts[job.id].add(frame.host)
                for run in frame_runs(frame):
                    seq += 1
                    if run.host:
                        self.job_hosts[job.id].add(run.host)
                        host_runs[run.host].append((seq, run, job.id))
                        if run.state == FrameState.FAILED:
                            self.job_host_fail[(job.id, run.host)] += 1
                        elif run.state == FrameState.COMPLETE:
                            self.job_host_ok[(job.id, run.host)] += 1
                    if run.instance:
                        inst_runs[run.instance].append((seq, run))
        self.host_stats: dict[str, dict[str, int]] = {}
        for host, runs in host_runs.items():
            runs.sort(key=lambda r: (_ts(r[1].finished_at), r[0]))
            recent_f = sum(1 for _, r, _ in runs if r.state == FrameState.FAILED and _ts(r.finished_at) >= cutoff)
            recent_ok = sum(1 for _, r, _ in runs if r.state == FrameState.COMPLETE and _ts(r.finished_at) >= cutoff)
            consecutive, jobs_failed = 0, set()
            for _, run, job_id in reversed(runs):
                if run.state == FrameState.COMPLETE:
                    break
                if run.state == FrameState.FAILED:
                    consecutive += 1
                    jobs_failed.add(job_id)
            self.host_stats[host] = {
                "recent_failures": recent_f,
                "recent_successes": recent_ok,
                "consecutive_failures": consecutive,
                "distinct_jobs_failed": len(jobs_failed),
            }
        self.inst_stats: dict[str, dict[str, int]] = {}
        for inst, iruns in inst_runs.items():
            iruns.sort(key=lambda r: (_ts(r[1].finished_at), r[0]))
            consecutive = 0
            for _, run in reversed(iruns):
                if run.state == FrameState.COMPLETE:
                    break
                if run.state == FrameState.FAILED:
                    consecutive += 1
            self.inst_stats[inst] = {
                "consecutive_failures": consecutive,
                "frames_failed": sum(1 for _, r in iruns if r.state == FrameState.FAILED),
                "frames_completed": sum(1 for _, r in iruns if r.state == FrameState.COMPLETE),
            }

    # --- per kind -------------------------------------------------------------------
    def job(self, job: Job) -> dict[str, Any]:
        cached = self._job_cache.get(job.id)
        if cached is not None:
            return cached
        now = self.now
        frames = Counter(str(f.state) for f in job.frames.values())
        insts = Counter(str(i.state) for i in job.instances.values())
        hosts = self.job_hosts.get(job.id, set())
        failing = sum(
            1 for h in hosts if self.job_host_fail[(job.id, h)] > 0 and self.job_host_ok[(job.id, h)] == 0
        )
        succeeding = sum(1 for h in hosts if self.job_host_ok[(job.id, h)] > 0)
        deps = [self.farm.jobs[d].state for d in job.depends_on if d in self.farm.jobs]
        total = len(job.frames)
        fact: dict[str, Any] = {
            "id": job.id,
            "name": job.name,
            "priority": job.priority,
            "state": str(job.state),
            "suspended": job.hold is Hold.SUSPENDED,
            "blocked_by": job.blocked_by if job.hold is Hold.BLOCKED else None,
            "retry_limit": job.retry_limit,
            "retries": job.retries,
            "retries_left": max(0, job.retry_limit - job.retries),
            "time_in_state": _secs(job.state_since, now),
            "age": _secs(job.submitted_at, now),
            "since_retry": _secs(job.last_retry_at, now),
            "frames_total": total,
            **{f"frames_{s}": frames.get(s, 0) for s in STATES[Kind.FRAME]},
            "frames_done_percent": (100.0 * frames.get(FrameState.COMPLETE, 0) / total) if total else 0.0,
            "instances_total": len(job.instances),
            **{f"instances_{s}": insts.get(s, 0) for s in STATES[Kind.INSTANCE]},
            "hosts": len(hosts),
            "failing_hosts": failing,
            "succeeding_hosts": succeeding,
            "hosts_not_failing": len(hosts) - failing,
            "dependencies": {
                "total": len(job.depends_on),
                "complete": sum(1 for s in deps if s == JobState.COMPLETE),
                "failed": sum(1 for s in deps if s == JobState.FAILED),
                "killed": sum(1 for s in deps if s == JobState.KILLED),
                "incomplete": len(job.depends_on) - sum(1 for s in deps if s == JobState.COMPLETE),
                "all_complete": bool(job.depends_on) and all(s == JobState.COMPLETE for s in deps)
                and len(deps) == len(job.depends_on),
            },
        }
        fact = _drop_none(fact)
        self._job_cache[job.id] = fact
        return fact

    def worker(self, name: str) -> dict[str, Any]:
        cached = self._worker_cache.get(name)
        if cached is not None:
            return cached
        worker = self.farm.workers.get(name)
        stats = self.host_stats.get(name, {})
        fact: dict[str, Any] = {
            "id": name,
            "name": name,
            "recent_failures": stats.get("recent_failures", 0),
            "recent_successes": stats.get("recent_successes", 0),
            "consecutive_failures": stats.get("consecutive_failures", 0),
            "distinct_jobs_failed": stats.get("distinct_jobs_failed", 0),
            "frames_running": self.running_on_host.get(name, 0),
        }
        if worker is not None:
            fact["state"] = str(worker.state)
            since = _secs(worker.state_since, self.now)
            if since is not None:
                fact["time_in_state"] = since
        self._worker_cache[name] = fact
        return fact

    def frame(self, frame: Frame) -> dict[str, Any]:
        job = self.farm.jobs[frame.job_id]
        run_time = None
        if frame.started_at is not None:
            end = frame.finished_at if frame.state != FrameState.RUNNING else None
            run_time = _secs(frame.started_at, end or self.now)
        deps = [
            self.farm.jobs[j].frames[n].state
            for j, n in frame.depends_on
            if j in self.farm.jobs and n in self.farm.jobs[j].frames
        ]
        done = sum(1 for s in deps if s == FrameState.COMPLETE)
        fact: dict[str, Any] = {
            "id": frame.key,
            "job_id": frame.job_id,
            "number": frame.number,
            "state": str(frame.state),
            "host": frame.host,
            "instance": frame.instance,
            "attempts": frame.attempts,
            "retries": frame.retries,
            "retries_left": max(0, job.retry_limit - frame.retries),
            "exit_code": frame.exit_code,
            "run_time": run_time,
            "time_in_state": _secs(frame.state_since, self.now),
            "dependencies": {
                "total": len(frame.depends_on),
                "complete": done,
                "incomplete": len(frame.depends_on) - done,
            },
            "job": _without_deps(self.job(job)),
        }
        if frame.host:
            fact["worker"] = self.worker(frame.host)
        return _drop_none(fact)

    def instance(self, inst_id: str) -> dict[str, Any]:
        inst = self.farm.instances[inst_id]
        job = self.farm.jobs[inst.job_id]
        stats = self.inst_stats.get(inst.id, {})
        hosts = self.job_hosts.get(job.id, set()) - {inst.host}
        fact: dict[str, Any] = {
            "id": inst.id,
            "job_id": inst.job_id,
            "host": inst.host,
            "state": str(inst.state),
            "time_in_state": _secs(inst.state_since, self.now),
            "consecutive_failures": stats.get("consecutive_failures", 0),
            "frames_failed": stats.get("frames_failed", 0),
            "frames_completed": stats.get("frames_completed", 0),
            "host_failures_on_job": self.job_host_fail[(job.id, inst.host)],
            "host_successes_on_job": self.job_host_ok[(job.id, inst.host)],
            "other_hosts_succeeding": sum(1 for h in hosts if self.job_host_ok[(job.id, h)] > 0),
            "other_hosts_failing": sum(
                1 for h in hosts if self.job_host_fail[(job.id, h)] > 0 and self.job_host_ok[(job.id, h)] == 0
            ),
            "job": _without_deps(self.job(job)),
            "worker": self.worker(inst.host),
        }
        return _drop_none(fact)

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
        entity = self.farm.entity(kind, ident)
        if kind is Kind.JOB:
            return self.job(entity)  # type: ignore[arg-type]
        if kind is Kind.FRAME:
            return self.frame(entity)  # type: ignore[arg-type]
        if kind is Kind.INSTANCE:
            return self.instance(str(ident))
        return self.worker(str(ident))


def _ts(value: datetime | None) -> datetime:
    return value if value is not None else _EPOCH


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _drop_none(fact: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fact.items() if v is not None}


def _without_deps(job_fact: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job_fact.items() if k != "dependencies"}


def get_path(fact: dict[str, Any], path: str) -> Any:
    """The value at a dotted path, or `MISSING`."""
    value: Any = fact
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


def narrow(fact: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """Only the fields at `paths` (plus `id`): what the engine needs to see."""
    out: dict[str, Any] = {"id": fact["id"]}
    for path in paths:
        value = get_path(fact, path)
        if value is MISSING:
            continue
        parts = path.split(".")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out
