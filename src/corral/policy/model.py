"""The compiled form of a policy: plain frozen data, independent of YAML and of the engine.

The loader produces it (with every `$param` substituted and every duration turned
into seconds), the reference evaluator and the durable_rules compiler consume it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from corral.states import Action, Kind
from corral.yamlpos import Pos

#: How long a notifying policy stays quiet about an entity when it sets no cooldown of its
#: own: Qube!'s users complain of a mail on every auto-wrangling action.
NOTIFY_WINDOW = 3600.0


@dataclass(frozen=True)
class Cmp:
    """`path op value`; `pos` points at the condition in its file, for traces."""

    path: str
    op: str
    value: Any
    pos: Pos | None = field(default=None, compare=False)


@dataclass(frozen=True)
class All:
    items: tuple[Cond, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Cond, ...]


@dataclass(frozen=True)
class Not:
    item: Cond


Cond = Cmp | All | AnyOf | Not


@dataclass(frozen=True)
class ActionSpec:
    action: Action
    params: tuple[tuple[str, Any], ...] = ()

    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class Limits:
    """Brakes on a policy.  None means no limit of that sort."""

    max_actions: int | None = None
    max_percent: float | None = None
    cooldown: float | None = None  # seconds


@dataclass(frozen=True)
class Policy:
    name: str
    kind: Kind
    when: Cond
    actions: tuple[ActionSpec, ...]
    reason: str
    description: str = ""
    priority: int = 50
    enabled: bool = True
    mode: str = "enforce"  # "enforce" | "audit"
    limits: Limits = Limits()
    schedule: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    source: Pos | None = field(default=None, compare=False)

    @property
    def audit(self) -> bool:
        return self.mode == "audit"

    @property
    def cooldown(self) -> float | None:
        """Seconds it leaves an entity alone after acting on it: its `cooldown`; a policy
        that notifies and sets none stays quiet about an entity for `NOTIFY_WINDOW` (one
        message per entity and policy within it)."""
        if self.limits.cooldown:
            return self.limits.cooldown
        return NOTIFY_WINDOW if any(a.action == Action.NOTIFY for a in self.actions) else None

    @property
    def only_tells(self) -> bool:
        """It only notifies: it changes nothing on the farm, so it never conflicts with another."""
        return all(a.action == Action.NOTIFY for a in self.actions)


def paths(cond: Cond) -> set[str]:
    """Every field path a condition reads."""
    if isinstance(cond, Cmp):
        return {cond.path}
    if isinstance(cond, Not):
        return paths(cond.item)
    out: set[str] = set()
    for item in cond.items:
        out |= paths(item)
    return out


def paths_read(policies: Iterable[Policy]) -> dict[Kind, set[str]]:
    """Every field path the enabled policies read, per kind of entity."""
    read: dict[Kind, set[str]] = {kind: set() for kind in Kind}
    for policy in policies:
        if policy.enabled:
            read[policy.kind] |= paths(policy.when)
    return read


def pinned_states(cond: Cond) -> set[str] | None:
    """The states `state` is restricted to by top-level `eq`/`in` conditions (None: any).

    The loader uses it to refuse a policy that can never act, the engine adapter to
    skip building facts for entities in states no policy can match.
    """
    if isinstance(cond, Cmp) and cond.path == "state":
        if cond.op == "eq":
            return {cond.value}
        return set(cond.value) if cond.op == "in" else None
    if isinstance(cond, All):
        result: set[str] | None = None
        for item in cond.items:
            pinned = pinned_states(item)
            if pinned is not None:
                result = pinned if result is None else result & pinned
        return result
    return None
