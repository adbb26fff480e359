"""The fact vocabulary: every field a policy can test, its type, meaning and group.

The fields are the words wranglers think in ("failed 5 frames in a row on this host",
"all dependencies complete"), declared once in `FIELDS`.  The policy loader checks
field names and value types against this table, `corral fields`, docs/policy-reference.md
and the JSON Schema are generated from it, and the builder (`corral.facts.builder`)
computes exactly these fields (tests/test_facts.py holds it to that).

A fact omits a field whose value is unknown: every comparison on a missing field is
false (`MISSING`), `exists: false` is true.  Related entities appear as nested dicts:
a frame's `job.*` and `worker.*`, an instance's `job.*` and `worker.*`, a job's
`dependencies.*`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from corral.failures import CLASSES
from corral.states import STATES, Kind


@dataclass(frozen=True)
class FieldSpec:
    """One fact field: its type decides which operators and values the loader accepts."""

    type: str  # "int" | "float" | "str" | "bool" | "duration" | "state"
    doc: str
    states: tuple[str, ...] = ()
    #: The group of work that computes it (`GROUPS`): "row" for a field read off the
    #: entity's row (or its frame counts' row in `Aggregates`), else the costlier pass
    #: that works it out, which a builder makes only when some policy reads the group.
    group: str = "row"
    #: A duration that grows with the clock (`time_in_state`): a comparison over it can
    #: change its answer with nothing written, so the engine wakes to check it again.
    #: False for one fixed by what happened (`failing_for`), which moves only with a row.
    grows: bool = True


def _by_class(what: str, group: str) -> dict[str, FieldSpec]:
    return {f"failures.{c}": FieldSpec("int", f"{what} whose exit code is in the failure class {c} "
                                       "(docs/policies.md, Failure classes)", group=group) for c in CLASSES}


def _counts(prefix: str, states: Iterable[str], what: str) -> dict[str, FieldSpec]:
    return {f"{prefix}_{s}": FieldSpec("int", f"number of {what} that are {s}", group=prefix) for s in states}


_JOB: dict[str, FieldSpec] = {
    "id": FieldSpec("int", "the job's id"),
    "name": FieldSpec("str", "the job's name"),
    "owner": FieldSpec("str", "who submitted the job (missing when the supervisor does not say)"),
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
    "time_in_state": FieldSpec("duration", "how long the job has been in its current state", group="times"),
    "age": FieldSpec("duration", "how long ago the job was submitted", group="times"),
    "since_retry": FieldSpec("duration", "how long ago the job was last retried (missing if never)", group="times"),
    "frames_total": FieldSpec("int", "number of frames of the job", group="frames"),
    **_counts("frames", STATES[Kind.FRAME], "the job's frames"),
    "frames_done_percent": FieldSpec("float", "percentage of the job's frames that are complete", group="frames"),
    "frames_failed_percent": FieldSpec("float", "percentage of the job's frames that are failed now (Flamenco's "
                                       "failed share of tasks)", group="frames"),
    "failed_attempts": FieldSpec("int", "failed attempts of the job's frames over its whole life, retried or not "
                                 "(Deadline fails a job after 100 errors)", group="frames"),
    "instances_total": FieldSpec("int", "number of instances (processes) of the job", group="instances"),
    **_counts("instances", STATES[Kind.INSTANCE], "the job's instances"),
    "hosts": FieldSpec("int", "distinct hosts that have run frames of the job", group="hosts"),
    "failing_hosts": FieldSpec("int", "hosts that failed frames of the job and completed none", group="hosts"),
    "succeeding_hosts": FieldSpec("int", "hosts that completed at least one frame of the job", group="hosts"),
    "hosts_not_failing": FieldSpec("int", "hosts minus failing_hosts: 0 means every host that ran it is failing",
                                   group="hosts"),
    "failing_hosts_percent": FieldSpec(
        "float", "failing_hosts as a percentage of hosts (0 with no host): a broken job's hosts mostly fail it, a "
        "healthy job's flaky frames fail a few of its many hosts, however large the farm", group="hosts",
    ),
    "failing_hosts_healthy_elsewhere": FieldSpec(
        "int", "failing_hosts that completed frames of other jobs and have failed no other job since their last "
        "completed frame: a host failing everything (a bad host, even one with a long good past) does not count, "
        "so two bad hosts cannot make a healthy job look broken", group="hosts",
    ),
    "failing_hosts_only_here": FieldSpec(
        "int", "failing_hosts that failed no frame of any other job: a bad host fails every job it takes, a broken "
        "job is failed by hosts that fail nothing else (known from a host's first failure, before it completes "
        "anything anywhere)", group="hosts",
    ),
    "worst_host_failed_frames": FieldSpec(
        "int", "the most distinct frames of the job one host failed while completing none (Qube!'s activation count)",
        group="hosts",
    ),
    "worst_host_failed_attempts": FieldSpec(
        "int", "the most failed attempts of the job's frames on one host that completed none (a frame failed three "
        "times there counts 3)", group="hosts",
    ),
    "worst_host_failures": FieldSpec(
        "int", "deprecated: worst_host_failed_attempts under its old name (it counted attempts, not frames)",
        group="hosts",
    ),
    **_by_class("failed attempts of its frames over its life", "failures"),
    "workers_available": FieldSpec(
        "int", "workers that could still run the job: up (not down, not locked) and not locked out of it "
        "(no blocked instance of the job on them); 0 means nothing left to run it", group="workers",
    ),
    "dependencies.total": FieldSpec("int", "number of jobs this job waits on", group="dependencies"),
    "dependencies.complete": FieldSpec("int", "dependencies that are complete", group="dependencies"),
    "dependencies.failed": FieldSpec("int", "dependencies that are failed", group="dependencies"),
    "dependencies.killed": FieldSpec("int", "dependencies that are killed", group="dependencies"),
    "dependencies.incomplete": FieldSpec("int", "dependencies that are not complete yet", group="dependencies"),
    "dependencies.all_complete": FieldSpec("bool", "true when the job has dependencies and all are complete",
                                           group="dependencies"),
}

_WORKER: dict[str, FieldSpec] = {
    "id": FieldSpec("str", "the worker's (host's) name"),
    "name": FieldSpec("str", "the worker's (host's) name"),
    "state": FieldSpec("state", "the worker's state", STATES[Kind.WORKER]),
    "time_in_state": FieldSpec("duration", "how long the worker has been in its current state"),
    "recent_failures": FieldSpec("int", "failed attempts on it within the recent window (default 1h)",
                                 group="recent"),
    "recent_successes": FieldSpec("int", "completed attempts on it within the recent window (default 1h)",
                                  group="recent"),
    "consecutive_failures": FieldSpec("int", "failed attempts on it since its last completed one (a frame failed "
                                      "twice counts 2)"),
    "distinct_jobs_failed": FieldSpec("int", "different jobs whose frames it failed since its last completed frame"),
    "frames_completed": FieldSpec("int", "frames it completed over the history the store holds (completed attempts): "
                                  "0 for a host that has never rendered a frame"),
    "failing_for": FieldSpec("duration", "how long it has failed without completing a frame: from its last completed "
                             "frame to its latest failed attempt since (0 if none; missing if it never completed a "
                             "frame, in the history the store holds). What it did last week does not speak for it "
                             "tonight, and an idle host's count does not grow while it waits for work",
                             grows=False),
    "distinct_jobs_failed_others_complete": FieldSpec(
        "int", "distinct_jobs_failed that other hosts completed frames of: a broken job every host fails, or a new "
        "job nobody has completed a frame of yet, does not count against the host"),
    "frames_running": FieldSpec("int", "frames running on it now"),
}

_FRAME_OWN: dict[str, FieldSpec] = {
    "id": FieldSpec("str", "the frame's id, JOB:FRAME"),
    "job_id": FieldSpec("int", "the id of the frame's job"),
    "number": FieldSpec("int", "the frame number"),
    "layer": FieldSpec("str", "its task type: the job's layer, block or task type (missing when not given)"),
    "state": FieldSpec("state", "the frame's state", STATES[Kind.FRAME]),
    "host": FieldSpec("str", "the host that runs or last ran it (missing if none)"),
    "instance": FieldSpec("str", "the instance that runs or last ran it (missing if none)"),
    "attempts": FieldSpec("int", "how many times it was started"),
    "retries": FieldSpec("int", "automatic retries of this frame used so far"),
    "retries_left": FieldSpec("int", "the job's retry_limit minus this frame's retries, never below 0"),
    "exit_code": FieldSpec("int", "exit code of its last attempt (missing if none)"),
    "failed_attempts": FieldSpec("int", "its attempts that failed, on any host", group="history"),
    "hosts_failed": FieldSpec("int", "distinct hosts that failed it (Flamenco fails a task once several "
                              "different workers failed it)", group="history"),
    "hosts_avoided": FieldSpec("int", "hosts kept away from it by a retry that avoided the hosts that failed it"),
    "failure_class": FieldSpec("state", "the failure class of its last failed attempt, by its exit code (missing "
                               "if it never failed): oom, license, user_kill, crash, timeout or error",
                               CLASSES, group="history"),
    **_by_class("its failed attempts", "history"),
    "run_time": FieldSpec("duration", "how long its last attempt ran (so far, if running)", group="run_time"),
    "time_in_state": FieldSpec("duration", "how long the frame has been in its current state"),
    "dependencies.total": FieldSpec("int", "number of frames this frame waits on", group="dependencies"),
    "dependencies.complete": FieldSpec("int", "frames it waits on that are complete", group="dependencies"),
    "dependencies.incomplete": FieldSpec("int", "frames it waits on that are not complete", group="dependencies"),
}

_INSTANCE_OWN: dict[str, FieldSpec] = {
    "id": FieldSpec("str", "the instance's id"),
    "job_id": FieldSpec("int", "the id of the instance's job"),
    "host": FieldSpec("str", "the host it runs on"),
    "state": FieldSpec("state", "the instance's state", STATES[Kind.INSTANCE]),
    "time_in_state": FieldSpec("duration", "how long the instance has been in its current state"),
    "consecutive_failures": FieldSpec("int", "failed attempts since the last frame it completed"),
    "frames_failed": FieldSpec("int", "failed attempts in all (a frame it failed twice counts 2)"),
    "frames_completed": FieldSpec("int", "frames it completed in all"),
    "host_failed_frames_on_job": FieldSpec("int", "distinct frames of this job that failed on this host, over all "
                                           "its instances (a frame failed three times there counts 1)"),
    "host_failed_attempts_on_job": FieldSpec("int", "failed attempts of this job's frames on this host, over all "
                                             "its instances (a frame failed three times there counts 3)"),
    "host_failures_on_job": FieldSpec("int", "deprecated: host_failed_attempts_on_job under its old name (it "
                                      "counted attempts, not frames)"),
    "host_recent_failures_on_job": FieldSpec("int", "failed attempts of this job's frames on this host within the "
                                             "recent window (default 1h)"),
    "host_since_last_failure_on_job": FieldSpec("duration", "how long ago this host last failed a frame of this "
                                                "job (missing if never; Afanasy forgives a host after 5h)"),
    "host_successes_on_job": FieldSpec("int", "frames of this job that this host completed"),
    "other_hosts_succeeding": FieldSpec("int", "other hosts that completed frames of this job", group="other_hosts"),
    "other_hosts_failing": FieldSpec("int", "other hosts that failed frames of this job and completed none",
                                     group="other_hosts"),
}


#: Fields kept under an old name for a release: `corral check` warns where a policy
#: reads them, naming the field to use instead (by the field's own name, any kind).
DEPRECATED: dict[str, str] = {
    "host_failures_on_job": "host_failed_attempts_on_job (what it counted) or host_failed_frames_on_job "
                            "(distinct frames, what its old description said)",
    "worst_host_failures": "worst_host_failed_attempts (what it counted) or worst_host_failed_frames "
                           "(distinct frames, what its old description said)",
}


def deprecated(path: str) -> str | None:
    """What to write instead of a deprecated field (`job.worst_host_failures` too), or None."""
    return DEPRECATED.get(path.rpartition(".")[2])


def _related(prefix: str, fields: dict[str, FieldSpec], what: str) -> dict[str, FieldSpec]:
    return {
        f"{prefix}.{name}": FieldSpec(spec.type, f"{what}: {spec.doc}", spec.states, spec.group, spec.grows)
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

#: Each kind's own fields (not the related entities' it shows).
_OWN: dict[Kind, dict[str, FieldSpec]] = {Kind.JOB: _JOB, Kind.FRAME: _FRAME_OWN, Kind.INSTANCE: _INSTANCE_OWN,
                                          Kind.WORKER: _WORKER}

#: Fields that cost more than a row lookup, by the group of work that computes them (from
#: `FieldSpec.group`); a builder told which paths the policies read computes only those groups.
GROUPS: dict[Kind, dict[str, str]] = {
    kind: {name: spec.group for name, spec in own.items() if spec.group != "row"} for kind, own in _OWN.items()
}

DEFAULT_RECENT = timedelta(hours=1)

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
    return GROUPS[kind].get(path, "row") in stage



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
                    shown[related].add(GROUPS[related].get(rest, "row"))
                else:
                    own[kind].add(GROUPS[kind].get(path, "row"))
        return cls({kind: frozenset(groups) for kind, groups in own.items()},
                   {kind: frozenset(groups) for kind, groups in shown.items()})

    def reads(self, kind: Kind, group: str) -> bool:
        """Whether some fact is built with `kind`'s `group`: its own, or shown in another's."""
        return group in self.groups.get(kind, ()) or group in self.shown.get(kind, ())



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

