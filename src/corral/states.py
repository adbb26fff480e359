"""The state model: every state, every action and every legal transition, as data.

This module is the one place that says what a job, frame, instance or worker may
become.  `shared/reference/job-states.md` (Qube!'s job states) is the law for jobs;
frames, instances and workers follow what a real supervisor needs.  Everything that
changes state (the planner, the applier, the CLI's manual actions) asks these tables,
so the documentation in docs/states.md, the policy checker and the store cannot
disagree about what is legal.

A job's state is mostly *derived* from its frames and instances (running, failing,
retrying, complete, failed); three states are *holds* that a person or a policy puts
on the job and that no frame result can lift: blocked, killed, and suspended (which
the seed says shows as pending).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    """The four kinds of entity a policy can match and act on."""

    JOB = "job"
    FRAME = "frame"
    INSTANCE = "instance"
    WORKER = "worker"


class JobState(StrEnum):
    """Exactly the seed's eight job states."""

    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    FAILING = "failing"
    RETRYING = "retrying"
    KILLED = "killed"
    COMPLETE = "complete"
    FAILED = "failed"


class FrameState(StrEnum):
    """A frame (unit of work).  `running` frames sit on one instance of one host."""

    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    KILLED = "killed"


class InstanceState(StrEnum):
    """A job's worker process on one host.  `blocked` locks that host out of the job."""

    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    KILLED = "killed"


class WorkerState(StrEnum):
    """A host.  `locked` (quarantined) hosts take no work until unblocked."""

    UP = "up"
    DOWN = "down"
    LOCKED = "locked"


class Hold(StrEnum):
    """Why a job is not simply following its frames.  `none` means derived."""

    NONE = "none"
    BLOCKED = "blocked"
    SUSPENDED = "suspended"
    KILLED = "killed"


class Action(StrEnum):
    """The seed's actions, and `notify`, which moves no state (it tells people, through a
    sink).  Which apply to which kind is in `RULES`."""

    BLOCK = "block"
    UNBLOCK = "unblock"
    INTERRUPT = "interrupt"
    KILL = "kill"
    RETRY = "retry"
    RESUBMIT = "resubmit"
    SUSPEND = "suspend"
    NOTIFY = "notify"


STATES: dict[Kind, tuple[str, ...]] = {
    Kind.JOB: tuple(s.value for s in JobState),
    Kind.FRAME: tuple(s.value for s in FrameState),
    Kind.INSTANCE: tuple(s.value for s in InstanceState),
    Kind.WORKER: tuple(s.value for s in WorkerState),
}

#: Every state's value as a plain `str`, looked up by the member (or by the value).
#: States are `StrEnum`s, which hash and compare as their values, so a member finds a
#: plain-string key in a dict or a set as it is; but `str(member)` makes a new string
#: on every call, hashed again at each lookup.  The loops that key counts by state (a
#: million-frame farm's steady cycle counts ten thousand changed frames) use this, so
#: the counts keep plain keys without paying for a copy.
VALUE: Mapping[str, str] = {s: s.value for e in (JobState, FrameState, InstanceState, WorkerState, Hold) for s in e}

#: The target state of a job action that is computed from the frames afterwards.
DERIVED = "derived"

#: States in which a frame still has work to do.
FRAME_ACTIVE = frozenset({FrameState.PENDING, FrameState.BLOCKED, FrameState.RUNNING})
#: States in which an instance is alive or may be started.
INSTANCE_ACTIVE = frozenset({InstanceState.PENDING, InstanceState.RUNNING})


@dataclass(frozen=True)
class ActionRule:
    """What one action does to one kind of entity.

    `moves` maps each legal *from* state to the *to* state (`DERIVED` for jobs whose
    new state follows from their frames).  `frames` and `instances` say what happens
    to a job's children (or, for an instance, to the frames it ran), by state.
    `hold` is the hold a job action sets (None: leave it).  `counts_retry` marks the
    automatic retries that spend the retry limit.
    """

    moves: Mapping[str, str]
    meaning: str
    hold: Hold | None = None
    frames: Mapping[str, str] = field(default_factory=dict)
    instances: Mapping[str, str] = field(default_factory=dict)
    counts_retry: bool = False
    resets: bool = False
    #: False for an action that changes nothing on the farm (notify): no row is written,
    #: only the log's row and the outbox's.
    changes_farm: bool = True


J, F, I, W = JobState, FrameState, InstanceState, WorkerState

RULES: dict[tuple[Kind, Action], ActionRule] = {
    # --- jobs: the seed's action table -----------------------------------------------
    (Kind.JOB, Action.BLOCK): ActionRule(
        moves={J.PENDING: J.BLOCKED, J.RUNNING: J.BLOCKED, J.FAILING: J.BLOCKED, J.RETRYING: J.BLOCKED},
        meaning="hold the job: running frames go back to pending and nothing new starts",
        hold=Hold.BLOCKED,
        frames={F.RUNNING: F.PENDING},
        instances={I.RUNNING: I.PENDING},
    ),
    (Kind.JOB, Action.UNBLOCK): ActionRule(
        moves={J.BLOCKED: DERIVED, J.PENDING: DERIVED},
        meaning="lift a block (or a suspend): the job follows its frames again",
        hold=Hold.NONE,
    ),
    (Kind.JOB, Action.INTERRUPT): ActionRule(
        moves={J.RUNNING: DERIVED, J.FAILING: DERIVED, J.RETRYING: DERIVED},
        meaning="kill the current frames and put them back to pending, to be picked up again",
        frames={F.RUNNING: F.PENDING},
        instances={I.RUNNING: I.PENDING},
    ),
    (Kind.JOB, Action.KILL): ActionRule(
        moves={s: J.KILLED for s in (J.PENDING, J.BLOCKED, J.RUNNING, J.FAILING, J.RETRYING)},
        meaning="end the current frames and do not restart the job; a user must retry or resubmit it",
        hold=Hold.KILLED,
        frames={F.RUNNING: F.KILLED},
        instances={I.RUNNING: I.KILLED, I.PENDING: I.KILLED},
    ),
    (Kind.JOB, Action.RETRY): ActionRule(
        moves={J.FAILING: DERIVED, J.FAILED: DERIVED, J.KILLED: DERIVED},
        meaning="put the job back on the queue as-is: failed and killed frames go back to pending",
        hold=Hold.NONE,
        frames={F.FAILED: F.PENDING, F.KILLED: F.PENDING},
        instances={I.FAILED: I.PENDING, I.KILLED: I.PENDING},
        counts_retry=True,
    ),
    (Kind.JOB, Action.RESUBMIT): ActionRule(
        moves={s: DERIVED for s in (J.PENDING, J.BLOCKED, J.KILLED, J.COMPLETE, J.FAILED)},
        meaning="send the job again, possibly with new parameters: every frame starts over",
        hold=Hold.NONE,
        frames={s: F.PENDING for s in FrameState},
        instances={I.FAILED: I.PENDING, I.KILLED: I.PENDING, I.COMPLETE: I.PENDING, I.RUNNING: I.PENDING},
        resets=True,
    ),
    (Kind.JOB, Action.SUSPEND): ActionRule(
        moves={J.PENDING: J.PENDING, J.RUNNING: J.PENDING, J.FAILING: J.PENDING, J.RETRYING: J.PENDING},
        meaning="like interrupt, but the current frames finish first; the job shows as pending",
        hold=Hold.SUSPENDED,
    ),
    # --- frames ----------------------------------------------------------------------
    (Kind.FRAME, Action.BLOCK): ActionRule(moves={F.PENDING: F.BLOCKED}, meaning="hold this frame"),
    (Kind.FRAME, Action.UNBLOCK): ActionRule(moves={F.BLOCKED: F.PENDING}, meaning="release a held frame"),
    (Kind.FRAME, Action.INTERRUPT): ActionRule(
        moves={F.RUNNING: F.PENDING}, meaning="stop the frame and queue it again"
    ),
    (Kind.FRAME, Action.KILL): ActionRule(
        moves={F.PENDING: F.KILLED, F.BLOCKED: F.KILLED, F.RUNNING: F.KILLED},
        meaning="stop the frame for good",
    ),
    (Kind.FRAME, Action.RETRY): ActionRule(
        moves={F.FAILED: F.PENDING, F.KILLED: F.PENDING},
        meaning="queue a failed or killed frame again",
        counts_retry=True,
    ),
    (Kind.FRAME, Action.RESUBMIT): ActionRule(
        moves={F.COMPLETE: F.PENDING, F.FAILED: F.PENDING, F.KILLED: F.PENDING},
        meaning="render the frame again from scratch, with a fresh retry count",
        resets=True,
    ),
    # --- instances -------------------------------------------------------------------
    (Kind.INSTANCE, Action.BLOCK): ActionRule(
        moves={I.PENDING: I.BLOCKED, I.RUNNING: I.BLOCKED, I.FAILED: I.BLOCKED, I.COMPLETE: I.BLOCKED},
        meaning="lock this host out of this job: its running frame goes back to pending "
        "(and, with requeue_failed, the frames it failed too)",
        frames={F.RUNNING: F.PENDING},
    ),
    (Kind.INSTANCE, Action.UNBLOCK): ActionRule(
        moves={I.BLOCKED: I.PENDING}, meaning="let this host take frames of this job again"
    ),
    (Kind.INSTANCE, Action.INTERRUPT): ActionRule(
        moves={I.RUNNING: I.PENDING},
        meaning="stop the process; its frame goes back to pending",
        frames={F.RUNNING: F.PENDING},
    ),
    (Kind.INSTANCE, Action.KILL): ActionRule(
        moves={I.PENDING: I.KILLED, I.RUNNING: I.KILLED},
        meaning="end the process for good; its frame is killed",
        frames={F.RUNNING: F.KILLED},
    ),
    (Kind.INSTANCE, Action.RETRY): ActionRule(
        moves={I.FAILED: I.PENDING, I.KILLED: I.PENDING}, meaning="start a failed or killed process again"
    ),
    # --- workers ---------------------------------------------------------------------
    (Kind.WORKER, Action.BLOCK): ActionRule(
        moves={W.UP: W.LOCKED, W.DOWN: W.LOCKED},
        meaning="quarantine the host: it takes no work until unblocked",
    ),
    (Kind.WORKER, Action.UNBLOCK): ActionRule(moves={W.LOCKED: W.UP}, meaning="return a quarantined host to service"),
    # --- every kind: telling people changes no state ------------------------------------
    **{(kind, Action.NOTIFY): ActionRule(
        moves={state: state for state in STATES[kind]},
        meaning="tell people through a sink (the submitter, the wranglers' room, an admin); nothing on the farm "
        "changes",
        changes_farm=False,
    ) for kind in Kind},
}

def actions_for(kind: Kind) -> list[Action]:
    """The actions that exist for `kind`, in the seed's order."""
    return [a for a in Action if (kind, a) in RULES]


def legal_from(kind: Kind, action: Action) -> frozenset[str]:
    """The states `action` may be applied from (empty when it never applies to `kind`)."""
    rule = RULES.get((kind, action))
    return frozenset(rule.moves) if rule else frozenset()


class IllegalAction(Exception):
    """An action that the state model forbids; the message says who, what and why."""

    def __init__(self, kind: Kind, ident: str, state: str, action: Action | str, why: str = "") -> None:
        self.kind, self.ident, self.state, self.action = kind, ident, state, str(action)
        rule = RULES.get((kind, Action(action))) if action in Action.__members__.values() else None
        if not why:
            if rule is None:
                why = f"{kind}s have no '{action}' action (they have: {', '.join(actions_for(kind))})"
            else:
                why = f"'{action}' applies only to a {kind} that is {_or_list(sorted(rule.moves))}"
        self.why = why
        super().__init__(f"cannot {action} {kind} {ident}: it is {state}; {why}")


def _or_list(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


_COMPLETE_ONLY = frozenset({F.COMPLETE})


def derive_job_state(
    hold: Hold,
    frame_states: Iterable[str],
    instance_states: Iterable[str],
    retried: bool,
) -> JobState:
    """The seed's definitions, in order of precedence.

    A hold wins over everything (a blocked job with failed frames is still blocked).
    Then: complete when every frame succeeded; failed when no work is left and at
    least one frame or instance failed; killed when no work is left and frames were
    killed (a user must retry or resubmit); failing when work is left and something
    failed; retrying when it was retried automatically at least once; running when a
    frame or instance runs; otherwise pending.
    """
    if hold is Hold.KILLED:
        return JobState.KILLED
    if hold is Hold.BLOCKED:
        return JobState.BLOCKED
    if hold is Hold.SUSPENDED:
        return JobState.PENDING
    # Which states occur is all that decides it (the planner derives a job's state after
    # each action it plays, so this runs over every frame of the job many times a cycle).
    frames = set(frame_states)
    instances = set(instance_states)
    if frames and frames <= _COMPLETE_ONLY:
        return JobState.COMPLETE
    failed = F.FAILED in frames or I.FAILED in instances
    work_left = not frames.isdisjoint(FRAME_ACTIVE)
    if failed and not work_left:
        return JobState.FAILED
    if frames and not work_left and F.KILLED in frames:
        return JobState.KILLED
    if failed:
        return JobState.FAILING
    if retried:
        return JobState.RETRYING
    if F.RUNNING in frames or I.RUNNING in instances:
        return JobState.RUNNING
    return JobState.PENDING


def hold_for_state(state: JobState | str) -> Hold:
    """The hold implied by a job state given explicitly (in a snapshot or on submit)."""
    return {JobState.BLOCKED: Hold.BLOCKED, JobState.KILLED: Hold.KILLED}.get(JobState(state), Hold.NONE)
