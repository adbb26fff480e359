"""Undo: the inverse of what corral's policies applied in a window, as a plan.

A policy misfired at 3 a.m. (a bad threshold, a file server outage read as failing
hosts): the wrangler on shift wants the farm back as it was before it.  `plan_undo`
takes the policies' applied transitions in the window, newest first, and plays the
inverse of each (`corral.actions`: unblock for a block, block for an unblock, retry for
a kill...) on a scratch copy of the farm, as the planner plays a plan.  Pure: the CLI
reads the log and the farm, shows the plan, and applies it only when asked, with
compare-and-set and the wrangler as actor, so it is delivered like any action.

A transition is left alone, with the reason, when its action has no inverse (a retry
cannot un-render a frame), when the entity has moved since (the supervisor or a person
changed it: it is not in the state corral left it in), or when the inverse is not legal
now.  Knock-on rows (a job that followed its frame) are undone with their cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from corral.actions import action_def
from corral.effects import apply_action
from corral.farm import Farm
from corral.ports import LogEntry, Proposal
from corral.states import Action, IllegalAction

#: The reason a knock-on row starts with (`corral.store.apply._log_rows`).
FOLLOWS = "follows "


@dataclass
class UndoPlan:
    """What an undo would do, and what it leaves alone and why."""

    proposals: list[tuple[LogEntry, Proposal]] = field(default_factory=list)
    skipped: list[tuple[LogEntry, str]] = field(default_factory=list)


def undoable(entry: LogEntry) -> bool:
    """A policy's own applied transition (not a person's, not a knock-on, not a sink's)."""
    return (entry.applied and entry.policy is not None and not entry.reason.startswith(FOLLOWS)
            and not entry.actor.startswith("sink:") and entry.actor == "corral")


def plan_undo(farm: Farm, entries: Sequence[LogEntry], *, now: datetime) -> UndoPlan:
    """The inverse of `entries` (the log, newest first), played on `farm` in a scratch."""
    plan = UndoPlan()
    with farm.scratch():
        for entry in entries:
            if not undoable(entry):
                continue
            definition = action_def(entry.action)
            if definition.inverse is None:
                why = definition.no_inverse or "it changes nothing to take back"
                plan.skipped.append((entry, f"{entry.action} cannot be undone: {why}"))
                continue
            try:
                entity = farm.entity(entry.kind, entry.entity_id)
            except KeyError:
                plan.skipped.append((entry, f"{entry.kind} {entry.entity_id} no longer exists"))
                continue
            if str(entity.state) != entry.to_state:
                plan.skipped.append((entry, f"moved since: it is {entity.state} now, corral left it {entry.to_state} "
                                            "(the supervisor or a person changed it)"))
                continue
            reason = (f"undo of {entry.action} by policy {entry.policy} at {entry.at:%Y-%m-%d %H:%M:%S}"
                      + (f" (cycle {entry.cycle_id})" if entry.cycle_id else "") + f": {entry.reason}")
            proposal = Proposal(entry.kind, entry.entity_id, Action(definition.inverse), reason=reason)
            try:
                apply_action(farm, entry.kind, entry.entity_id, proposal.action, now=now)
            except IllegalAction as err:
                plan.skipped.append((entry, f"its inverse is not legal now: {err.why}"))
                continue
            plan.proposals.append((entry, proposal))
    return plan
