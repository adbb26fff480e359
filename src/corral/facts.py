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
instance's `job.*` and `worker.*`, a job's `dependencies.*`.  The rule engine's facts
are built with `Needs`: only the groups of fields some policy reads are worked out
(a job's host counts cost a pass over its hosts; no policy reading them, no pass), and
in stages: the costly groups only for an entity whose cheap first stage, then its host
counts, pass some policy's gate (`FactBuilder.candidate`).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, NamedTuple

from corral.farm import Entity, Farm, Frame, FrameRun, Instance, Job
from corral.states import STATES, VALUE, FrameState, Hold, JobState, Kind


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
    "worst_host_failures": FieldSpec(
        "int", "the most frames of the job one host failed while completing none (Qube!'s activation count)"
    ),
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

#: Fields that cost more than a row lookup, by the group of work that computes them; a
#: builder told which paths the policies read (`needed`) computes only those groups.
_GROUPS: dict[Kind, dict[str, str]] = {
    Kind.JOB: {
        # durations: never in a gate (they change by the second), so not in the first stage
        "time_in_state": "times", "age": "times", "since_retry": "times",
        "frames_total": "frames", "frames_done_percent": "frames",
        **{f"frames_{s}": "frames" for s in STATES[Kind.FRAME]},
        "instances_total": "instances", **{f"instances_{s}": "instances" for s in STATES[Kind.INSTANCE]},
        **{f: "hosts" for f in ("hosts", "failing_hosts", "succeeding_hosts", "hosts_not_failing",
                                "worst_host_failures")},
        **{f"dependencies.{f}": "dependencies" for f in ("total", "complete", "failed", "killed", "incomplete",
                                                          "all_complete")},
    },
    Kind.FRAME: {"run_time": "run_time", **{f"dependencies.{f}": "dependencies"
                                              for f in ("total", "complete", "incomplete")}},
    Kind.INSTANCE: {"other_hosts_succeeding": "other_hosts", "other_hosts_failing": "other_hosts"},
    Kind.WORKER: {"recent_failures": "recent", "recent_successes": "recent"},
}


_NO_FRAMES: dict[str, int] = {}
#: Every group of a job's fact (a builder with no `needs` builds them all).
_ALL_GROUPS = frozenset(_GROUPS[Kind.JOB].values())


def _count_of(state: str) -> Callable[[Job, Mapping[str, int]], int]:
    return lambda _job, counts: counts.get(state, 0)

#: A job's first-stage fields (FIRST_STAGE), each from the job and its frame counts: the
#: one definition both the first stage and a screen's probe (`FactBuilder.candidate`)
#: are made from.  None: unknown (the field is left out).
_JOB_FIRST: dict[str, Callable[[Job, Mapping[str, int]], Any]] = {
    "id": lambda job, _: job.id,
    "name": lambda job, _: job.name,
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
    "frames_done_percent": lambda job, counts: (
        100.0 * counts.get(FrameState.COMPLETE, 0) / len(job.frames) if job.frames else 0.0),
}


#: What `FactBuilder._job_hosts` works out (the "hosts" group).
_JOB_HOST_FIELDS = tuple(name for name, group in _GROUPS[Kind.JOB].items() if group == "hosts")
_JOB_ROW = {name: get for name, get in _JOB_FIRST.items() if _GROUPS[Kind.JOB].get(name, "row") == "row"}

#: An instance's first-stage fields, each from the instance and the builder (its counts
#: and its `now`), as `_JOB_FIRST` is for jobs.  None: unknown (left out).
_INSTANCE_FIRST: dict[str, Callable[[Instance, FactBuilder], Any]] = {
    "id": lambda inst, _: inst.id,
    "job_id": lambda inst, _: inst.job_id,
    "host": lambda inst, _: inst.host,
    "state": lambda inst, _: str(inst.state),
    "time_in_state": lambda inst, b: _secs(inst.state_since, b.now),
    "consecutive_failures": lambda inst, b: _failures(b.agg.inst_tail.get(inst.id)),
    "frames_failed": lambda inst, b: b.agg.inst_failed.get(inst.id, 0),
    "frames_completed": lambda inst, b: b.agg.inst_ok.get(inst.id, 0),
    "host_failures_on_job": lambda inst, b: b.agg.job_host_fail.get((inst.job_id, inst.host), 0),
    "host_successes_on_job": lambda inst, b: b.agg.job_host_ok.get((inst.job_id, inst.host), 0),
}

#: A worker's fields but the "recent" group, each from its name (a host that ran frames
#: may have no worker row: then it has no state) and the builder.
_WORKER_FIRST: dict[str, Callable[[str, FactBuilder], Any]] = {
    "id": lambda name, _: name,
    "name": lambda name, _: name,
    "consecutive_failures": lambda name, b: _failures(b.agg.host_tail.get(name)),
    "distinct_jobs_failed": lambda name, b: (tail.distinct_jobs() if (tail := b.agg.host_tail.get(name)) else 0),
    "frames_running": lambda name, b: b.agg.running_on_host.get(name, 0),
    "state": lambda name, b: None if (worker := b.farm.workers.get(name)) is None else str(worker.state),
    "time_in_state": lambda name, b: None if (worker := b.farm.workers.get(name)) is None
    else _secs(worker.state_since, b.now),
}


def _failures(tail: _Tail | None) -> int:
    return tail.failures if tail else 0


#: One gate of a screen, one comparison at a time: (path, test of the value found there,
#: MISSING when the field is unknown).
ProbeGate = tuple[tuple[str, Callable[[Any], bool]], ...]


class StateScreen(NamedTuple):
    """What a screen asks of an entity in one state."""

    #: The fields the state's gates read.
    paths: tuple[str, ...]
    #: The gates over a fact (or a probe) holding those fields.
    test: Callable[[dict[str, Any]], bool]
    #: The same gates, one field at a time (`Screen.admits`).
    gates: tuple[ProbeGate, ...]


@dataclass(frozen=True)
class Screen:
    """A test over a fact's first stage that every entity some policy can match passes
    (see `corral.policy.compiler.screen_of`; made by `corral.policy.reference.screen`),
    split by the entity's state: for each state some gate admits, the other first-stage
    fields those gates read and the test over them.  A state no gate admits is not
    there, so most entities are ruled out on one lookup, and the rest on the two or
    three fields their state's gates read, not on every field of every gate."""

    by_state: Mapping[str, StateScreen]
    #: The screen over the second stage (SECOND_STAGE), tested once it is built (None:
    #: the gates read nothing more of it).
    then: Screen | None = None

    def passes(self, fact: dict[str, Any]) -> bool:
        rest = self.by_state.get(fact["state"])
        return rest is not None and rest.test(fact)

    def passes_all(self, fact: dict[str, Any]) -> bool:
        """Whether a fact built whole passes every stage's screen."""
        return (self.then or self).passes(fact)

    def admits(self, state: str, fields: Mapping[str, Callable[..., Any]], *entity: Any) -> bool:
        """Whether an entity in `state` passes, probed on only the fields its state's
        gates read, each worked out alone (`fields[path](*entity)`, None: unknown) and
        only until its gate fails: no dict of them is made, and for most entities a
        cycle screens (a running job with frames complete) one field and one test are
        all it costs.  `state` may be the member itself: a `StrEnum` finds its value's
        key (and `str(member)` would copy it, on every entity a cycle screens)."""
        rest = self.by_state.get(state)
        if rest is None:
            return False
        for gate in rest.gates:
            for path, test in gate:
                value = fields[path](*entity)
                if not test(MISSING if value is None else value):
                    break
            else:
                return True
        return False


#: The groups a fact for the rule engine is built with first; a screen over them decides
#: whether the rest is worth building (`FactBuilder.candidate`).
FIRST_STAGE = frozenset({"row", "frames"})
#: Then the host counts (one pass over the job's hosts), screened again before the rest:
#: the job policy a running job with no frame complete yet passes the first screen of
#: is about its hosts all failing, which most such jobs' hosts are not.
SECOND_STAGE = FIRST_STAGE | {"hosts", "other_hosts"}


def first_stage(kind: Kind, path: str, stage: frozenset[str] = FIRST_STAGE) -> bool:
    """Whether `path` is worked out in the first stage of a `kind` fact (or in `stage`)."""
    head, _, rest = path.partition(".")
    if kind in (Kind.FRAME, Kind.INSTANCE) and head in ("job", "worker") and rest:
        return False  # the related entity's fact: built after the screens
    return _GROUPS[kind].get(path, "row") in stage


#: A frame's fields that can be unknown (None), which its fact leaves out.
_FRAME_UNKNOWABLE = ("host", "instance", "exit_code", "time_in_state")
_INSTANCE_COUNTS = tuple((f"instances_{s}", s) for s in STATES[Kind.INSTANCE])


@dataclass(frozen=True)
class Needs:
    """Which groups of fields to compute, per kind: `groups` for an entity's own fact,
    `shown` for the job or worker fact a frame or instance shows (`job.*`, `worker.*`).

    Kept apart because they differ by far: a frame policy reading `job.state` needs only
    the job's row, while a job policy reading `failing_hosts` needs its host counts, and
    every frame fact built would otherwise pay for those too."""

    groups: dict[Kind, frozenset[str]]
    shown: dict[Kind, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, paths_by_kind: dict[Kind, set[str]]) -> Needs:
        own: dict[Kind, set[str]] = {kind: set() for kind in Kind}
        shown: dict[Kind, set[str]] = {Kind.JOB: set(), Kind.WORKER: set()}
        for kind, paths in paths_by_kind.items():
            for path in paths:
                head, _, rest = path.partition(".")
                if kind in (Kind.FRAME, Kind.INSTANCE) and head in ("job", "worker") and rest:
                    related = Kind.JOB if head == "job" else Kind.WORKER
                    own[kind].add(head)  # show the related entity
                    shown[related].add(_GROUPS[related].get(rest, "row"))
                else:
                    own[kind].add(_GROUPS[kind].get(path, "row"))
        return cls({kind: frozenset(groups) for kind, groups in own.items()},
                   {kind: frozenset(groups) for kind, groups in shown.items()})

    def reads(self, kind: Kind, group: str) -> bool:
        """Whether some fact is built with `kind`'s `group`: its own, or shown in another's."""
        return group in self.groups.get(kind, ()) or group in self.shown.get(kind, ())


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


class _Tail:
    """Finished runs since the last success, in finished order (for "in a row" counts).

    Only the tail after the latest success matters for consecutive failures and for
    the distinct jobs failed since a success, so older runs are dropped: the memory
    this keeps is bounded by the failures in a row, not by history.
    """

    __slots__ = ("horizon", "runs")

    def __init__(self) -> None:
        self.horizon: tuple[datetime, int] | None = None  # (finished_at, seq) of the latest success
        self.runs: list[tuple[datetime, int, int]] = []  # (finished_at, seq, job_id) of failures after it

    def add(self, when: datetime, seq: int, ok: bool, job_id: int) -> None:
        key = (when, seq)
        if self.horizon is not None and key < self.horizon:
            return  # happened before the latest success: no longer "in a row"
        if ok:
            # The failures up to it are no longer "in a row": the head of the sorted list,
            # cut off where (finished_at, seq) passes the key (seqs are ints).
            self.horizon = key
            if self.runs:
                del self.runs[:bisect_left(self.runs, (when, seq + 1))]
        else:
            insort(self.runs, (when, seq, job_id))

    @classmethod
    def of(cls, runs: list[tuple[datetime, int, bool, int]]) -> _Tail:
        """The tail of runs sorted by (finished_at, seq)."""
        tail = cls()
        last_ok = max((i for i, r in enumerate(runs) if r[2]), default=-1)
        if last_ok >= 0:
            tail.horizon = (runs[last_ok][0], runs[last_ok][1])
        tail.runs = [(w, s, j) for w, s, ok, j in runs[last_ok + 1:] if not ok]
        return tail

    @property
    def failures(self) -> int:
        return len(self.runs)

    def distinct_jobs(self) -> int:
        return len({r[2] for r in self.runs})


_STATE = attrgetter("state")


class Aggregates:
    """The counts facts are made of, kept by deltas so a cycle can update them cheaply.

    A full build feeds every frame and run once (`from_farm`); the daemon's live farm
    then feeds only what changed: `frame_state(old, +/-)` for a frame whose state moved,
    `run(...)` for each newly recorded run.  Runs are append-only history.
    """

    def __init__(self, recent: timedelta = DEFAULT_RECENT, *, keep_recent: bool = True) -> None:
        """`keep_recent`: keep each host's runs for the recent window's counts (a daemon
        whose policies read no `recent_*` field saves the work on every run it reads)."""
        self.recent, self.keep_recent = recent, keep_recent
        self._kept = 2 * recent  # how far back of a host's newest run `host_recent` keeps
        self.seq = 0
        self.job_frames: dict[int, Counter[str]] = defaultdict(Counter)
        self.job_host_fail: Counter[tuple[int, str]] = Counter()
        self.job_host_ok: Counter[tuple[int, str]] = Counter()
        self.job_host_refs: dict[int, Counter[str]] = defaultdict(Counter)  # runs + running frames per host
        self.running_on_host: Counter[str] = Counter()
        self.host_tail: dict[str, _Tail] = defaultdict(_Tail)
        #: Per host, its finished runs (finished_at, seq, ok) in order, for the recent
        #: window's counts; only the last two windows before its newest run are kept (a
        #: cycle asks for the window ending at its `now`, after the runs it has read), or
        #: a daemon would hold every run of its life here, needed or not.
        self.host_recent: dict[str, list[tuple[datetime, int, bool]]] = defaultdict(list)
        self.inst_tail: dict[str, _Tail] = defaultdict(_Tail)
        self.inst_failed: Counter[str] = Counter()
        self.inst_ok: Counter[str] = Counter()

    @classmethod
    def from_farm(cls, farm: Farm, recent: timedelta = DEFAULT_RECENT, *, keep_recent: bool = True) -> Aggregates:
        """The same counts `frame_state` and `run` would give, for a whole farm at once:
        runs are grouped per host and instance and sorted once, instead of inserted one
        by one (a million frames' history is read this way when the daemon starts)."""
        agg = cls(recent, keep_recent=keep_recent)
        per_host: dict[str, list[tuple[datetime, int, bool, int]]] = defaultdict(list)
        per_inst: dict[str, list[tuple[datetime, int, bool, int]]] = defaultdict(list)
        complete, failed, running = FrameState.COMPLETE, FrameState.FAILED, FrameState.RUNNING
        finished = (complete, failed)
        running_on_host, job_host_ok, job_host_fail = agg.running_on_host, agg.job_host_ok, agg.job_host_fail
        inst_ok, inst_failed, value = agg.inst_ok, agg.inst_failed, VALUE.__getitem__
        seq = agg.seq
        for job in farm.jobs.values():
            job_id = job.id
            refs = agg.job_host_refs[job_id]
            frames = job.frames.values()
            # counted in C (`Counter` of the states' values); the loop below does the rest
            # of `frame_state(frame, +1)` and `run(...)`, inlined: it runs once per frame
            agg.job_frames[job_id] = Counter(map(value, map(_STATE, frames)))
            for frame in frames:
                state = frame.state
                if state == running and frame.host:
                    running_on_host[frame.host] += 1
                    refs[frame.host] += 1
                history = frame.runs or (frame_runs(frame) if state in finished else ())
                for run in history:
                    seq += 1
                    host, instance, ok = run.host, run.instance, run.state == complete
                    if not (ok or run.state == failed):
                        if host:
                            refs[host] += 1
                        continue
                    entry = (run.finished_at or _EPOCH, seq if run.id is None else run.id, ok, job_id)
                    if host:
                        refs[host] += 1
                        (job_host_ok if ok else job_host_fail)[(job_id, host)] += 1
                        per_host[host].append(entry)
                    if instance:
                        (inst_ok if ok else inst_failed)[instance] += 1
                        per_inst[instance].append(entry)
        agg.seq = seq
        for host, runs in per_host.items():
            runs.sort()
            if keep_recent:
                keep = runs[-1][0] - agg._kept
                agg.host_recent[host] = [(w, s, ok) for w, s, ok, _ in runs if w >= keep]
            agg.host_tail[host] = _Tail.of(runs)
        for inst, runs in per_inst.items():
            runs.sort()
            agg.inst_tail[inst] = _Tail.of(runs)
        return agg

    def frame_state(self, frame: Frame, sign: int) -> None:
        """Count (+1) or uncount (-1) a frame's current state."""
        self.job_frames[frame.job_id][VALUE[frame.state]] += sign
        if frame.state == FrameState.RUNNING and frame.host:
            self.running_on_host[frame.host] += sign
            self.job_host_refs[frame.job_id][frame.host] += sign

    def frames_moved(self, moved: Iterable[tuple[int, FrameState | None, str | None, FrameState, str | None]]) -> None:
        """`frame_state(-1)` then `frame_state(+1)` for each frame a change read moved:
        (job id, state before or None for a new frame, host before, state, host).  One
        call for a cycle's changed frames (ten thousand a cycle on a million-frame farm),
        with what the loop reads bound once."""
        job_frames, running_on_host, job_host_refs = self.job_frames, self.running_on_host, self.job_host_refs
        running, value = FrameState.RUNNING, VALUE  # counts keyed by plain strings (see VALUE)
        for job_id, was, old_host, state, host in moved:
            counts = job_frames[job_id]
            if was is not None:
                counts[value[was]] -= 1
                if old_host and was == running:
                    running_on_host[old_host] -= 1
                    job_host_refs[job_id][old_host] -= 1
            counts[value[state]] += 1
            if host and state == running:
                running_on_host[host] += 1
                job_host_refs[job_id][host] += 1

    def run(self, job_id: int, run: FrameRun) -> bool:
        """Record one finished attempt (append-only).  True when it is its host's first
        success or first failure on the job: the host's standing there, which the job's
        other instances show (`other_hosts_*`), moved.  (Told here, where the count is in
        hand: asked of the counts before and after, it cost four more lookups a run in
        tables of a million-frame farm's every host and job.)"""
        self.seq += 1
        seq = run.id if run.id is not None else self.seq
        state, host, instance = run.state, run.host, run.instance
        ok = state == FrameState.COMPLETE
        failed = state == FrameState.FAILED
        when = _ts(run.finished_at)
        first = False
        if host:
            self.job_host_refs[job_id][host] += 1
            if ok or failed:
                counts, pair = (self.job_host_ok if ok else self.job_host_fail), (job_id, host)
                n = counts[pair] + 1
                counts[pair] = n
                first = n == 1
            if ok or failed:
                self.host_tail[host].add(when, seq, ok, job_id)
                if self.keep_recent:
                    recent = self.host_recent[host]
                    insort(recent, (when, seq, ok))
                    keep = recent[-1][0] - self._kept
                    if recent[0][0] < keep:
                        del recent[:bisect_left(recent, (keep,))]
        if instance and (ok or failed):
            self.inst_tail[instance].add(when, seq, ok, job_id)
            if ok:
                self.inst_ok[instance] += 1
            else:
                self.inst_failed[instance] += 1
        return first

    def job_hosts(self, job_id: int) -> list[str]:
        refs = self.job_host_refs.get(job_id)
        return [h for h, n in refs.items() if n > 0] if refs else []

    def recent_counts(self, host: str, now: datetime) -> tuple[int, int]:
        """(failures, successes) of `host` within the recent window before `now`."""
        if not self.keep_recent:
            raise RuntimeError("these counts were kept without the recent window (keep_recent=False)")
        runs = self.host_recent.get(host)
        if not runs:
            return 0, 0
        cutoff = now - self.recent
        first = bisect_left(runs, (cutoff, -1, False))
        if first and runs[0][0] < now - self._kept:
            del runs[:first]  # older than any window still asked for
            first = 0
        ok = sum(1 for r in runs[first:] if r[2])
        return len(runs) - first - ok, ok


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
    ) -> None:
        """`needs`: build only the fields in these groups (the rule engine's facts);
        without it every field is built (what `explain`, reasons and tests show)."""
        self.farm, self.now, self.recent = farm, now, recent
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
            counts = self.agg.job_frames.get(job.id) or _NO_FRAMES
            if not screen.admits(job.state, _JOB_FIRST, job, counts):
                return None
            if screen.then is None:
                return self.job(job)
            # then its host counts, on a probe again (kept for the whole fact: one pass over its hosts)
            rest = screen.then.by_state.get(job.state)
            if rest is None:
                return None
            paths, test, _ = rest
            probe = {p: v for p in paths if p in _JOB_FIRST and (v := _JOB_FIRST[p](job, counts)) is not None}
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
        counts = self.agg.job_frames.get(job.id) or _NO_FRAMES
        fields = _JOB_FIRST if groups is None or "frames" in groups else _JOB_ROW
        fact = {name: get(job, counts) for name, get in fields.items()}
        if fact["blocked_by"] is None:
            del fact["blocked_by"]  # unknown: submitted blocked, or not blocked at all
        return fact

    def _job_hosts(self, job: Job, fact: dict[str, Any], groups: frozenset[str] | None) -> None:
        """The job's host counts (SECOND_STAGE), if `groups` (None: all) has them."""
        if groups is not None and "hosts" not in groups:
            return
        # one pass, with dict.get (a Counter's missing key goes through Python code)
        agg = self.agg
        hosts = agg.job_hosts(job.id)
        ok, failed, job_id = agg.job_host_ok.get, agg.job_host_fail.get, job.id
        failing = succeeding = worst = 0
        for host in hosts:
            if ok((job_id, host), 0) > 0:
                succeeding += 1
            else:
                n = failed((job_id, host), 0)
                if n > 0:
                    failing += 1
                    worst = max(worst, n)
        fact["hosts"] = len(hosts)
        fact["failing_hosts"] = failing
        fact["succeeding_hosts"] = succeeding
        fact["hosts_not_failing"] = len(hosts) - failing
        fact["worst_host_failures"] = worst

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


def _ts(value: datetime | None) -> datetime:
    return value if value is not None else _EPOCH


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
