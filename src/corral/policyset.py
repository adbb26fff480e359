"""A policy set: the policies in force and what evaluating them needs.  Configuration,
never changed once made.

Everything here is worked out from the policies alone, once: the fields their
conditions and reasons read (what facts are built with), the screens that rule an
entity out before its whole fact is built, which changes must spread to the facts that
copy them, and how far back cooldowns look.  What changes from cycle to cycle (the
rule engine's memory, the farm kept in memory, the cooldowns) belongs to the running
`corral.session.Session`, which swaps policy sets on a hot reload and keeps the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from functools import cached_property, partial

from corral.facts import SECOND_STAGE, Needs, Screen, first_stage
from corral.failures import DEFAULT_CLASSES, FailureClasses
from corral.live import Spread
from corral.plan import reason_paths
from corral.policy.compiler import screen_of
from corral.policy.model import Policy, paths_read
from corral.policy.reference import screen
from corral.states import Kind

#: How far back the log is read for cooldowns when no policy sets a longer one.
MIN_HISTORY = timedelta(hours=1)


class PolicySet:
    """The policies in force (enabled or not, in the order they were loaded), and what
    the enabled ones need.  Two sets of equal policies are equal."""

    def __init__(self, policies: Iterable[Policy], classes: FailureClasses = DEFAULT_CLASSES) -> None:
        self._policies = tuple(policies)
        #: The failure classes the facts sort exit codes into (`corral.failures`).
        self.classes = classes

    def __repr__(self) -> str:
        return f"PolicySet({[p.name for p in self._policies]!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicySet) and other._policies == self._policies and other.classes == self.classes

    def __hash__(self) -> int:
        return hash(tuple(p.name for p in self._policies))

    @property
    def policies(self) -> tuple[Policy, ...]:
        return self._policies

    @cached_property
    def active(self) -> tuple[Policy, ...]:
        """The enabled policies: the ones evaluated."""
        return tuple(p for p in self._policies if p.enabled)

    @cached_property
    def by_name(self) -> Mapping[str, Policy]:
        """The enabled policies by name."""
        return {p.name: p for p in self.active}

    @cached_property
    def kinds(self) -> tuple[Kind, ...]:
        """The kinds some enabled policy matches, in `Kind` order."""
        return tuple(kind for kind in Kind if any(p.kind is kind for p in self.active))

    @cached_property
    def needs(self) -> Needs:
        """The fields the enabled policies read: what the engine's facts are built with."""
        return Needs.of(paths_read(self.active))

    @cached_property
    def reason_needs(self) -> Needs:
        """The fields the enabled policies' reasons cite: what a match's fact is built with."""
        return Needs.of(reason_paths(self.active))

    @cached_property
    def reads_recent(self) -> bool:
        """Whether a policy reads a worker's recent window (`recent_*`, in a condition or a
        reason): if none does, the live farm keeps no runs for it."""
        return any(needs.reads(Kind.WORKER, "recent") for needs in (self.needs, self.reason_needs))

    @cached_property
    def screens(self) -> Mapping[Kind, Screen | None]:
        """Per kind, the screen of the enabled policies (`screen_for`)."""
        return {kind: screen_for(kind, self.active) for kind in Kind}

    @cached_property
    def spread(self) -> Spread:
        """Which changes reach which other facts, for the fields these policies read."""
        return Spread.of(self.active)

    @cached_property
    def history_window(self) -> timedelta:
        """How far back cooldowns look: the longest cooldown, at least `MIN_HISTORY`."""
        longest = max((p.cooldown or 0.0 for p in self._policies), default=0.0)
        return max(MIN_HISTORY, timedelta(seconds=longest))


def screen_for(kind: Kind, policies: Sequence[Policy]) -> Screen | None:
    """The policies' gates cut down to a `kind` fact's first stage, then to its second
    (see `FactBuilder.candidate`); None where some policy cannot be screened that way."""
    cut = screen_of(kind, policies, partial(first_stage, kind))
    if cut is None:
        return None
    second = screen_of(kind, policies, partial(first_stage, kind, stage=SECOND_STAGE))
    return screen(kind, cut, then=None if second is None or second == cut else screen(kind, second))


def as_policy_set(policies: PolicySet | Iterable[Policy]) -> PolicySet:
    """A policy set from a set or any iterable of policies."""
    return policies if isinstance(policies, PolicySet) else PolicySet(policies)
