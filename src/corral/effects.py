"""Applying one action to the in-memory farm, following the tables in `corral.states`.

The same function serves the planner (which plays proposals forward inside
`Farm.scratch()`), the applier (which then writes the touched rows with
compare-and-set) and the CLI's manual actions.  It changes nothing when it raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from corral.farm import Entity, Farm, Frame, Instance, Job, Worker, entity_id
from corral.states import (
    ACTION_PARAMS,
    DERIVED,
    RULES,
    Action,
    FrameState,
    Hold,
    IllegalAction,
    InstanceState,
    JobState,
    Kind,
    WorkerState,
)


@dataclass
class Outcome:
    """What an action did: the state change of its target and every row it touched.

    `touched` holds (kind, entity, version-as-read) for each row to be written; the
    store uses the version for compare-and-set.  `job_change` records the knock-on
    change of a frame's or instance's job (from, to), which is logged too.
    """

    kind: Kind
    ident: str
    action: Action
    from_state: str
    to_state: str
    touched: list[tuple[Kind, Entity, int]] = field(default_factory=list)
    job_change: tuple[int, str, str] | None = None
    _seen: set[int] = field(default_factory=set, repr=False, compare=False)  # id() of each touched entity


def check_params(action: Action, params: Mapping[str, Any]) -> None:
    """Refuse parameters the action does not take, with what it does take."""
    allowed = ACTION_PARAMS[action]
    for name, value in params.items():
        if name not in allowed:
            takes = ", ".join(allowed) or "no parameters"
            raise ValueError(f"'{action}' takes {takes}; '{name}' is not one of them")
        want = allowed[name]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ValueError(f"'{action}' parameter '{name}' must be {want.__name__}, not {value!r}")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"'{action}' parameter '{name}' must be 0 or more, not {value}")


def apply_action(
    farm: Farm,
    kind: Kind,
    ident: str,
    action: Action,
    *,
    now: datetime,
    params: Mapping[str, Any] | None = None,
    automatic: bool = False,
    actor: str | None = None,
) -> Outcome:
    """Apply `action` to one entity of `farm`, in place, and say what changed.

    `automatic` marks a policy's action: only automatic retries spend the retry
    limit and may not exceed it (a wrangler can always retry by hand).  `actor` is
    remembered as the job's `blocked_by`, so automation can tell a job blocked by a
    wrangler (never unblocked automatically) from one waiting on its dependencies.
    Raises IllegalAction (nothing changed) when the state model forbids it.
    """
    params = dict(params or {})
    action = Action(action)
    entity = farm.entity(kind, ident)
    state = str(entity.state)
    rule = RULES.get((kind, action))
    if rule is None or state not in rule.moves:
        raise IllegalAction(kind, ident, state, action)
    try:
        check_params(action, params)
    except ValueError as err:
        raise IllegalAction(kind, ident, state, action, str(err)) from None
    out = Outcome(kind, entity_id(kind, entity), action, state, state)
    if isinstance(entity, Job):
        _job_action(farm, entity, action, params, automatic, now, out, actor)
    elif isinstance(entity, Frame):
        _frame_action(farm, entity, action, automatic, now, out)
    elif isinstance(entity, Instance):
        _instance_action(farm, entity, action, params, now, out)
    else:
        _worker_action(farm, entity, action, now, out)
    return out


def _set_state(farm: Farm, out: Outcome, kind: Kind, entity: Entity, state: Any, now: datetime) -> None:
    """Record the row as touched (once) and move it to `state`."""
    if id(entity) not in out._seen:  # an instance block touches each of its failed frames: no scan per frame
        out._seen.add(id(entity))
        farm.touch(entity)
        out.touched.append((kind, entity, entity.version))
    if entity.state != state:
        entity.state = state
        entity.state_since = now


def _job_action(
    farm: Farm,
    job: Job,
    action: Action,
    params: dict[str, Any],
    automatic: bool,
    now: datetime,
    out: Outcome,
    actor: str | None,
) -> None:
    rule = RULES[(Kind.JOB, action)]
    if action is Action.UNBLOCK and job.state == JobState.PENDING and job.hold is not Hold.SUSPENDED:
        raise IllegalAction(Kind.JOB, str(job.id), job.state, action, "it is pending but neither blocked nor suspended")
    if action is Action.SUSPEND and job.hold is Hold.SUSPENDED:
        raise IllegalAction(Kind.JOB, str(job.id), job.state, action, "it is suspended already")
    if automatic and action in (Action.RETRY, Action.RESUBMIT) and job.hold is Hold.KILLED:
        # The seed: "Killed jobs must be manually retried or resubmitted."
        raise IllegalAction(Kind.JOB, str(job.id), job.state, action, "a killed job is retried or resubmitted by a person")
    if action is Action.RETRY and automatic and job.retries >= job.retry_limit:
        raise IllegalAction(
            Kind.JOB, str(job.id), job.state, action, f"it has used all {job.retry_limit} of its retries"
        )
    _set_state(farm, out, Kind.JOB, job, job.state, now)
    for frame in job.frames.values():
        to = rule.frames.get(frame.state)
        if to is not None and to != frame.state:
            _set_state(farm, out, Kind.FRAME, frame, to, now)
            if to == FrameState.PENDING:
                frame.host = frame.instance = None
        if rule.resets and (frame.retries or frame.exit_code is not None):
            _set_state(farm, out, Kind.FRAME, frame, frame.state, now)  # written, even if already pending
            frame.retries, frame.exit_code = 0, None
    for inst in job.instances.values():
        to = rule.instances.get(inst.state)
        if to is not None and to != inst.state:
            _set_state(farm, out, Kind.INSTANCE, inst, to, now)
    if rule.hold is not None:
        job.hold = rule.hold
        job.blocked_by = actor if rule.hold is Hold.BLOCKED else None
    if action is Action.RETRY:
        job.last_retry_at = now
        if automatic:
            job.retries += 1
    if rule.resets:
        job.retries = 0
        job.last_retry_at = None
        job.priority = params.get("priority", job.priority)
        job.retry_limit = params.get("retry_limit", job.retry_limit)
    new = job.derived_state() if rule.moves[out.from_state] == DERIVED else JobState(rule.moves[out.from_state])
    if new != job.state:
        job.state, job.state_since = new, now
    out.to_state = str(job.state)


def _check_job(farm: Farm, job: Job, now: datetime, out: Outcome) -> None:
    """A frame's or instance's action depends on its job (its hold, its retry limit):
    the job row is written too, so compare-and-set refuses the action if the job moved."""
    _set_state(farm, out, Kind.JOB, job, job.state, now)


def _follow(farm: Farm, job: Job, now: datetime, out: Outcome) -> None:
    """After a frame or instance changed, the job's derived state may change too."""
    new = job.derived_state()
    if new != job.state:
        old = str(job.state)
        _set_state(farm, out, Kind.JOB, job, new, now)
        out.job_change = (job.id, old, str(new))


def _frame_action(farm: Farm, frame: Frame, action: Action, automatic: bool, now: datetime, out: Outcome) -> None:
    job = farm.jobs[frame.job_id]
    rule = RULES[(Kind.FRAME, action)]
    _check_job(farm, job, now, out)
    if action is Action.RETRY and automatic and frame.retries >= job.retry_limit:
        raise IllegalAction(
            Kind.FRAME, frame.key, frame.state, action, f"it has used all {job.retry_limit} of its retries"
        )
    if automatic and action in (Action.RETRY, Action.UNBLOCK) and job.hold in (Hold.BLOCKED, Hold.KILLED):
        # A held job must not run: automation requeuing its frames would only spend
        # retries that a wrangler will want once the job is released.
        raise IllegalAction(Kind.FRAME, frame.key, frame.state, action, f"its job {job.id} is {job.hold}")
    to = FrameState(rule.moves[frame.state])
    _set_state(farm, out, Kind.FRAME, frame, to, now)
    if to == FrameState.PENDING:
        frame.host = frame.instance = None
    if action is Action.RETRY and automatic:
        frame.retries += 1
    if rule.resets:
        frame.retries, frame.exit_code = 0, None
    out.to_state = str(frame.state)
    _follow(farm, job, now, out)


def _instance_action(
    farm: Farm, inst: Instance, action: Action, params: dict[str, Any], now: datetime, out: Outcome
) -> None:
    job = farm.jobs[inst.job_id]
    rule = RULES[(Kind.INSTANCE, action)]
    _check_job(farm, job, now, out)
    _set_state(farm, out, Kind.INSTANCE, inst, InstanceState(rule.moves[inst.state]), now)
    requeue = bool(params.get("requeue_failed"))
    for frame in job.frames.values():
        if frame.instance != inst.id:
            continue
        to = rule.frames.get(frame.state)
        if requeue and frame.state == FrameState.FAILED:
            to = FrameState.PENDING
        if to is not None and to != frame.state:
            _set_state(farm, out, Kind.FRAME, frame, to, now)
            if to == FrameState.PENDING:
                frame.host = frame.instance = None
    out.to_state = str(inst.state)
    _follow(farm, job, now, out)


def _worker_action(farm: Farm, worker: Worker, action: Action, now: datetime, out: Outcome) -> None:
    rule = RULES[(Kind.WORKER, action)]
    _set_state(farm, out, Kind.WORKER, worker, WorkerState(rule.moves[worker.state]), now)
    out.to_state = str(worker.state)
