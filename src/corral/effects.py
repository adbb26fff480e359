"""Applying one action to the in-memory farm: the table in `corral.states` moves the
states, the action's class in `corral.actions` does the rest.

The same function serves the planner (which plays proposals forward inside
`Farm.scratch()`), the applier (which then writes the touched rows with
compare-and-set) and the CLI's manual actions.  It changes nothing when it raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from corral.actions import ActionDef, action_def
from corral.farm import Entity, Farm, Frame, Instance, Job, entity_id
from corral.states import (
    DERIVED,
    RULES,
    Action,
    ActionRule,
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
    """Refuse parameters the action does not take, with what it does take (`corral.actions`)."""
    action_def(action).check_params(params)


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
    definition = action_def(action)
    try:
        definition.check_params(params)
    except ValueError as err:
        raise IllegalAction(kind, ident, state, action, str(err)) from None
    job = entity if isinstance(entity, Job) else farm.jobs[entity.job_id] if isinstance(entity, Frame | Instance) else None
    why = definition.refuse(kind, entity, job, automatic=automatic, params=params)
    if why:
        raise IllegalAction(kind, ident, state, action, why)
    out = Outcome(kind, entity_id(kind, entity), action, state, state)
    if not rule.changes_farm:  # notify: logged and delivered, no row written
        return out
    if isinstance(entity, Job):
        _job_action(farm, entity, definition, rule, params, automatic, now, out, actor)
    elif isinstance(entity, Frame):
        assert job is not None
        _frame_action(farm, job, entity, definition, rule, params, automatic, now, out)
    elif isinstance(entity, Instance):
        assert job is not None
        _instance_action(farm, job, entity, definition, rule, params, now, out)
    else:
        _set_state(farm, out, Kind.WORKER, entity, WorkerState(rule.moves[entity.state]), now)
        out.to_state = str(entity.state)
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


def _move_frame(farm: Farm, out: Outcome, frame: Frame, to: str | None, now: datetime) -> None:
    if to is not None and to != frame.state:
        _set_state(farm, out, Kind.FRAME, frame, to, now)
        if to == FrameState.PENDING:
            frame.host = frame.instance = None


def _job_action(farm: Farm, job: Job, definition: ActionDef, rule: ActionRule, params: dict[str, Any],
                automatic: bool, now: datetime, out: Outcome, actor: str | None) -> None:
    """The table's moves of the job's frames and instances, its hold, the action's own
    bookkeeping, then the job's state (set, or derived from its frames)."""
    _set_state(farm, out, Kind.JOB, job, job.state, now)
    for frame in job.frames.values():
        _move_frame(farm, out, frame, definition.frame_to(Kind.JOB, frame, rule.frames.get(frame.state), params), now)
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
    definition.bookkeep(Kind.JOB, job, params, automatic=automatic, now=now)
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


def _frame_action(farm: Farm, job: Job, frame: Frame, definition: ActionDef, rule: ActionRule,
                  params: dict[str, Any], automatic: bool, now: datetime, out: Outcome) -> None:
    _check_job(farm, job, now, out)
    _set_state(farm, out, Kind.FRAME, frame, FrameState(rule.moves[frame.state]), now)
    if frame.state == FrameState.PENDING:
        frame.host = frame.instance = None
    definition.bookkeep(Kind.FRAME, frame, params, automatic=automatic, now=now)
    out.to_state = str(frame.state)
    _follow(farm, job, now, out)


def _instance_action(farm: Farm, job: Job, inst: Instance, definition: ActionDef, rule: ActionRule,
                     params: dict[str, Any], now: datetime, out: Outcome) -> None:
    _check_job(farm, job, now, out)
    _set_state(farm, out, Kind.INSTANCE, inst, InstanceState(rule.moves[inst.state]), now)
    for frame in job.frames.values():
        if frame.instance == inst.id:
            _move_frame(farm, out, frame, definition.frame_to(Kind.INSTANCE, frame, rule.frames.get(frame.state), params),
                        now)
    out.to_state = str(inst.state)
    _follow(farm, job, now, out)
