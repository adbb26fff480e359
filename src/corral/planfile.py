"""A saved plan: `corral plan -o FILE`, then `corral apply FILE` applies exactly it.

As with terraform's saved plans, a wrangler reviews what corral would do, and what is
applied later is that, not whatever a new evaluation would decide then.  Each planned
transition carries the version of every row it would write, as planned; `apply`
refuses a transition any of whose rows has moved since (the supervisor or a person
changed it: the plan's reason may no longer hold) and applies the rest with the usual
compare-and-set, logged with the wrangler who applied it as actor and the plan's id as
the cycle.  Pure: building the file's content and checking it against a farm; the CLI
reads and writes it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corral.effects import apply_action
from corral.farm import Farm, key_columns
from corral.plan import Plan, Transition
from corral.ports import Proposal
from corral.states import Action, IllegalAction, Kind

#: The format's version: a file of another is refused, never guessed at.
FORMAT = 1


class PlanFileError(ValueError):
    """A file that is not a saved plan corral can apply; the message says what to do."""


def _row_key(kind: Kind, entity: Any) -> str:
    return f"{kind.value}:" + ":".join(str(getattr(entity, c)) for c in key_columns(kind))


def _rows_of(farm: Farm, t: Transition, now: datetime) -> dict[str, int]:
    """The rows a transition writes, with their versions, played on the farm as the plan
    leaves it (inside the caller's scratch)."""
    out = apply_action(farm, t.kind, t.ident, t.action, now=now, params=dict(t.params), automatic=True, actor=t.policy)
    return {_row_key(kind, entity): version for kind, entity, version in out.touched}


def save(plan: Plan, farm: Farm, *, now: datetime, store: str) -> dict[str, Any]:
    """The file's content for the enforced transitions of `plan`, made on `farm` (the
    farm as read for it, unchanged: the transitions are played in a scratch)."""
    items = []
    with farm.scratch():
        for t in plan.enforced:
            try:
                rows = _rows_of(farm, t, now)
            except (IllegalAction, KeyError):  # (the planner played it: cannot happen)
                continue
            items.append({**t.to_json(), "priority": t.priority, "rows": rows})
    return {"corral_plan": FORMAT, "id": f"plan-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
            "planned_at": now.isoformat(), "store": store, "transitions": items}


@dataclass(frozen=True)
class Checked:
    """A saved plan held against the farm now: what can be applied, what moved."""

    id: str
    proposals: list[Proposal]
    moved: list[tuple[str, str]]  # (the transition in words, why it is not applied)


def load(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanFileError(f"{source}:{err.lineno}:{err.colno}: not a saved plan (JSON: {err.msg}); "
                            "make one with `corral plan -o FILE`") from None
    if not isinstance(data, dict) or data.get("corral_plan") != FORMAT or not isinstance(data.get("transitions"), list):
        raise PlanFileError(f"{source}: not a saved plan of this corral (format {FORMAT}); make one with "
                            "`corral plan -o FILE`")
    return data


def check(data: Mapping[str, Any], farm: Farm, *, store: str) -> Checked:
    """Which planned transitions still stand on `farm` (every row at its planned version)."""
    if data.get("store") != store:
        raise PlanFileError(f"the plan was made on {data.get('store')}, not on {store}: apply it to the store it "
                            "was planned on, or plan again here")
    current: dict[str, int] = {}
    for kind in Kind:
        for entity in _entities(farm, kind):
            current[_row_key(kind, entity)] = entity.version
    proposals, moved = [], []
    for item in data["transitions"]:
        words = f"{item.get('action')} {item.get('kind')} {item.get('id')}"
        try:
            kind, action = Kind(item["kind"]), Action(item["action"])
            rows: Mapping[str, int] = item["rows"]
        except (KeyError, ValueError, TypeError):
            raise PlanFileError(f"the plan's transition '{words}' is not one corral wrote; plan again") from None
        changed = [key for key, version in rows.items() if current.get(key) != version]
        if changed:
            gone = [k for k in changed if k not in current]
            why = (f"{gone[0].replace(':', ' ', 1)} no longer exists" if gone else
                   f"{changed[0].replace(':', ' ', 1)} changed since it was planned (version {rows[changed[0]]} -> "
                   f"{current[changed[0]]})")
            moved.append((words, why))
            continue
        proposals.append(Proposal(kind, str(item["id"]), action, dict(item.get("params") or {}),
                                  reason=str(item.get("reason", "")), policy=item.get("policy"), automatic=True))
    return Checked(str(data.get("id")), proposals, moved)


def _entities(farm: Farm, kind: Kind) -> Sequence[Any]:
    if kind is Kind.JOB:
        return list(farm.jobs.values())
    if kind is Kind.WORKER:
        return list(farm.workers.values())
    if kind is Kind.FRAME:
        return [f for j in farm.jobs.values() for f in j.frames.values()]
    return [i for j in farm.jobs.values() for i in j.instances.values()]

