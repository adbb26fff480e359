"""The actions: one registered class per action, holding all it means beyond the state table.

`corral.states.RULES` says, as data, from which states each action may move each kind
of entity and to which (and what happens to a job's frames and instances).  What the
table cannot say lives here, one class per action, in the manner of Cloud Custodian's
registered actions: the parameters it takes (checked by the one `Param.problem`, for
policies, the CLI and the API alike), what it refuses beyond the table, the bookkeeping
it does besides moving states (retry counts, a resubmit's new priority), how the
planner's replay of history takes it back (`unplay`), and the action a person uses to
undo it, or why there is none.  `corral.effects.apply_action` plays an action through
its class; the loader, the JSON Schema, the reference docs and the CLI read their lists
from `REGISTRY` (tests/test_actions.py walks it).

    >>> REGISTRY[Action.RETRY].inverse is None and "lost" in REGISTRY[Action.RETRY].no_inverse
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from corral.farm import MAX_INT, Frame, Instance, Job, Worker, avoid_text, avoided
from corral.states import RULES, Action, ActionRule, FrameState, Hold, JobState, Kind

Entity = Job | Frame | Instance | Worker


@dataclass(frozen=True)
class Param:
    """One parameter of an action: a whole number from 0 to MAX_INT (what the store's
    columns hold), true/false, or one word of `choices`.
    `kinds`: the kinds of entity it means something for (None: all the action applies to)."""

    name: str
    type: type[int] | type[bool] | type[str]
    help: str
    kinds: frozenset[Kind] | None = None
    choices: tuple[str, ...] = ()

    @property
    def words(self) -> str:
        if self.type is str:
            return "one of " + ", ".join(self.choices)
        return f"a whole number from 0 to {MAX_INT:,}" if self.type is int else "true or false"

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` for this parameter, in words (None: nothing)."""
        if self.type is str:
            return None if isinstance(value, str) and value in self.choices else f"must be {self.words}"
        if self.type is bool:
            return None if isinstance(value, bool) else f"must be {self.words}"
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
            return f"must be {self.words}"
        return None


class ActionDef:
    """What one action means beyond `RULES`.  Subclasses override what differs."""

    action: ClassVar[Action]
    params: ClassVar[tuple[Param, ...]] = ()
    #: The action a person takes to undo this one (`corral undo` plans it), or None and why not.
    inverse: ClassVar[Action | None] = None
    no_inverse: ClassVar[str] = ""

    def kinds(self) -> list[Kind]:
        """The kinds it applies to, in `Kind` order."""
        return [kind for kind in Kind if (kind, self.action) in RULES]

    def rule(self, kind: Kind) -> ActionRule:
        return RULES[(kind, self.action)]

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def params_for(self, kind: Kind) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kinds is None or kind in p.kinds)

    def check_params(self, params: Mapping[str, Any]) -> None:
        """ValueError naming the first parameter it does not take or a value it refuses."""
        for name, value in params.items():
            param = self.param(name)
            if param is None:
                takes = ", ".join(p.name for p in self.params) or "no parameters"
                raise ValueError(f"'{self.action}' takes {takes}; '{name}' is not one of them")
            problem = param.problem(value)
            if problem:
                raise ValueError(f"'{self.action}' parameter '{name}' {problem}, not {value!r}")

    def refuse(self, kind: Kind, entity: Entity, job: Job | None, *, automatic: bool,
               params: Mapping[str, Any] | None = None) -> str | None:
        """Why it may not be applied although the table allows it (None: it may).
        `job`: the entity's job (itself for a job, None for a worker)."""
        return None

    def frame_to(self, kind: Kind, frame: Frame, to: str | None, params: Mapping[str, Any]) -> str | None:
        """Where a job's (or an instance's) frame goes: the table's answer `to`, unless
        a parameter says otherwise."""
        return to

    def bookkeep(self, kind: Kind, entity: Entity, params: Mapping[str, Any], *, automatic: bool, now: datetime
                 ) -> None:
        """What it changes besides states and holds (retry counts, a resubmit's new
        priority), once the table's moves are made."""

    def unplay(self, kind: Kind, entity: Entity, *, automatic: bool) -> None:
        """Take back `bookkeep` on an entity put back in its former state (replaying the
        log backwards, `corral.replay`): what can be known from the log row alone."""


REGISTRY: dict[Action, ActionDef] = {}


def register(cls: type[ActionDef]) -> type[ActionDef]:
    """Class decorator: one instance of each action's class, by its action."""
    if cls.action in REGISTRY:
        raise ValueError(f"action {cls.action} registered twice")
    REGISTRY[cls.action] = cls()
    return cls


def _held(job: Job | None, *, automatic: bool) -> str | None:
    """A held job must not run: automation requeuing its frames would only spend retries
    that a wrangler will want once the job is released."""
    if automatic and job is not None and job.hold in (Hold.BLOCKED, Hold.KILLED):
        return f"its job {job.id} is {job.hold}"
    return None


@register
class Block(ActionDef):
    action = Action.BLOCK
    params = (Param("requeue_failed", bool, "Also put the frames this instance failed back to pending.",
                    frozenset({Kind.INSTANCE})),)
    inverse = Action.UNBLOCK

    def frame_to(self, kind: Kind, frame: Frame, to: str | None, params: Mapping[str, Any]) -> str | None:
        if kind is Kind.INSTANCE and params.get("requeue_failed") and frame.state == FrameState.FAILED:
            return FrameState.PENDING
        return to


@register
class Unblock(ActionDef):
    action = Action.UNBLOCK
    inverse = Action.BLOCK

    def refuse(self, kind: Kind, entity: Entity, job: Job | None, *, automatic: bool,
               params: Mapping[str, Any] | None = None) -> str | None:
        if kind is Kind.JOB and isinstance(entity, Job):
            if entity.state == JobState.PENDING and entity.hold is not Hold.SUSPENDED:
                return "it is pending but neither blocked nor suspended"
            return None
        return _held(job, automatic=automatic) if kind is Kind.FRAME else None


@register
class Interrupt(ActionDef):
    action = Action.INTERRUPT
    no_inverse = "the work it stopped is lost, and the frames it put back to pending run again by themselves"


@register
class Kill(ActionDef):
    action = Action.KILL
    inverse = Action.RETRY  # the killed frames (or the process) back on the queue; what they rendered is lost


@register
class Retry(ActionDef):
    action = Action.RETRY
    params = (Param("spend", bool, "Count this automatic retry against the retry limit (default true); false for "
                    "a failure that is not the work's fault, such as a license server's (OpenCue's back-off)",
                    frozenset({Kind.JOB, Kind.FRAME})),
              Param("avoid_failed_hosts", bool, "Keep every host that failed the frame away from it from now on "
                    "(Flamenco, Afanasy's errors_task_same_host, Qube!'s migrate_on_frame_retry)",
                    frozenset({Kind.FRAME})))
    no_inverse = "a retried frame starts again: what it renders cannot be taken back, and the failure it replaced is lost"

    def refuse(self, kind: Kind, entity: Entity, job: Job | None, *, automatic: bool,
               params: Mapping[str, Any] | None = None) -> str | None:
        if not automatic or job is None:
            return None
        spends = (params or {}).get("spend", True)
        if kind is Kind.JOB:
            if job.hold is Hold.KILLED:  # the seed: "Killed jobs must be manually retried or resubmitted."
                return "a killed job is retried or resubmitted by a person"
            if spends and job.retries >= job.retry_limit:
                return f"it has used all {job.retry_limit} of its retries"
        if kind is Kind.FRAME and isinstance(entity, Frame):
            if spends and entity.retries >= job.retry_limit:
                return f"it has used all {job.retry_limit} of its retries"
            return _held(job, automatic=automatic)
        return None

    def bookkeep(self, kind: Kind, entity: Entity, params: Mapping[str, Any], *, automatic: bool, now: datetime
                 ) -> None:
        if isinstance(entity, Job):
            entity.last_retry_at = now
        if automatic and isinstance(entity, Job | Frame) and params.get("spend", True):
            entity.retries += 1  # only automatic retries spend the limit (a wrangler can always retry)
        if isinstance(entity, Frame) and params.get("avoid_failed_hosts"):
            # the hosts of its recorded failed attempts (the store and snapshots record the last one)
            failed = {r.host for r in entity.runs if r.state == FrameState.FAILED and r.host}
            entity.avoid_hosts = avoid_text(avoided(entity) | failed)

    def unplay(self, kind: Kind, entity: Entity, *, automatic: bool) -> None:
        if automatic and isinstance(entity, Job | Frame) and entity.retries > 0:
            entity.retries -= 1


@register
class Resubmit(ActionDef):
    action = Action.RESUBMIT
    params = (Param("priority", int, "New priority of the resubmitted job.", frozenset({Kind.JOB})),
              Param("retry_limit", int, "New retry limit of the resubmitted job.", frozenset({Kind.JOB})))
    no_inverse = "every frame starts over from scratch: their earlier results and retry counts are gone"

    def refuse(self, kind: Kind, entity: Entity, job: Job | None, *, automatic: bool,
               params: Mapping[str, Any] | None = None) -> str | None:
        if kind is Kind.JOB and automatic and job is not None and job.hold is Hold.KILLED:
            return "a killed job is retried or resubmitted by a person"
        return None

    def bookkeep(self, kind: Kind, entity: Entity, params: Mapping[str, Any], *, automatic: bool, now: datetime
                 ) -> None:
        if isinstance(entity, Job):
            entity.retries, entity.last_retry_at = 0, None
            entity.priority = params.get("priority", entity.priority)
            entity.retry_limit = params.get("retry_limit", entity.retry_limit)
        elif isinstance(entity, Frame):
            entity.retries, entity.exit_code = 0, None


@register
class Suspend(ActionDef):
    action = Action.SUSPEND
    inverse = Action.UNBLOCK  # lifts a suspend as it lifts a block

    def refuse(self, kind: Kind, entity: Entity, job: Job | None, *, automatic: bool,
               params: Mapping[str, Any] | None = None) -> str | None:
        if isinstance(entity, Job) and entity.hold is Hold.SUSPENDED:
            return "it is suspended already"
        return None


@register
class Notify(ActionDef):
    """Tell people, through the sinks that carry it (a webhook to a chat room, a mail
    command): the policy's reason is the message.  One message per entity and policy
    within the policy's cooldown (`corral.policy.model.NOTIFY_WINDOW` when it sets none), and a sink that can
    sends many at once as one digest (`corral.deliver`)."""

    action = Action.NOTIFY
    params = (Param("to", str, "Who is told: the job's submitter, the wranglers' room, or an admin (default: room).",
                    choices=("submitter", "room", "admin")),)
    no_inverse = "a message cannot be unsent"


def action_def(action: Action | str) -> ActionDef:
    """The registered class of an action (KeyError for a name that is no action)."""
    return REGISTRY[Action(action)]
