"""Same-cycle semantics: a later match is checked again against the farm as the
transitions planned before it leave it.  Pure.

The engine matches every policy against the farm as it stood at the start of the
cycle.  Played one after another, in priority order, those matches can contradict
each other: a policy that blocks a job and a lower one that locks a host out of that
same job, each right on the farm as it was, wrong together.  The rule a wrangler can
predict (docs/policies.md, "One cycle, in order"): matches are planned in priority
order, and each one's conditions are checked again against the farm as the
transitions planned before it leave it; a match whose conditions no longer hold is
dropped as `superseded`, naming the transition that changed its mind.

Only a match that an earlier transition *reaches* is checked again (its job's
entities, a job it depends on, its host, or, for `workers_available`, any worker):
the facts of the others cannot have moved, so their start-of-cycle match stands.
tests/test_recheck.py holds this to checking every match again on a fresh count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from corral.evaluate import Match
from corral.facts import FIELDS, MISSING, Aggregates, FactBuilder, Needs, get_path
from corral.failures import DEFAULT_CLASSES, FailureClasses
from corral.farm import Farm, Frame, Instance, Job, Worker
from corral.policy.loader import format_duration, template_names
from corral.policy.model import All, AnyOf, Cmp, Cond, Not, Policy, paths, paths_read
from corral.policy.reference import holds
from corral.states import FrameState, Kind

#: What an earlier transition reached: ("job", id) for a job's own entities, ("worker",
#: name) for a worker's row, ("running", name) for the frames running on a host (its
#: `frames_running`), or ("workers", None) for any worker's row (every job's
#: `workers_available` reads them all).
Key = tuple[str, Any]


@dataclass
class Touches:
    """What the transitions played so far reached, and which played it (for the why)."""

    by: dict[Key, str] = field(default_factory=dict)  # key -> "policy 'P' blocked job 12"
    part_of: dict[Key, set[Any]] = field(default_factory=dict)  # key -> the plan parts that reached it

    def add(self, key: Key, what: str, part: Any) -> None:
        self.by[key] = what
        self.part_of.setdefault(key, set()).add(part)


class Rechecker:
    """Plays the plan's bookkeeping: after each match is played on the scratch farm,
    notes what it touched and keeps the counts (`Aggregates`) true to the scratch farm;
    before each match, says whether an earlier one reached it and, if so, whether its
    conditions still hold.  `restore()` puts the counts back as they were (they may be
    the daemon's live counts), and must run before the scratch farm is put back."""

    def __init__(self, farm: Farm, now: datetime, aggregates: Aggregates | None,
                 classes: FailureClasses = DEFAULT_CLASSES) -> None:
        self.farm, self.now, self.classes = farm, now, classes
        self._agg, self._own_agg = aggregates, aggregates is None
        self._moved: list[tuple[int, Any, str | None, Any, str | None]] = []
        self.touches = Touches()
        self._needs: dict[str, tuple[Needs, frozenset[str]]] = {}

    @classmethod
    def maker(cls, aggregates: Aggregates | None, classes: FailureClasses) -> Callable[[Farm, datetime], Rechecker]:
        """A factory of checkers over these counts and classes, for each scratch play."""
        return lambda farm, now: cls(farm, now, aggregates, classes)

    # --- after a match is played ------------------------------------------------------
    def played(self, mark: int, what: str, part: Any) -> list[tuple[Key, str]]:
        """Note what the match just played (the scratch journal since `mark`) touched,
        and return it (a memo replays it for a part it reuses instead of playing)."""
        touched = self.farm.scratch_since(mark)
        if not touched:
            return []
        keys: dict[Key, str] = {}

        def add(key: Key, what: str, part: Any) -> None:
            keys[key] = what
            self.touches.add(key, what, part)

        agg = self._agg
        mover = agg.frame_mover() if agg is not None else None
        for obj, before in touched:
            if isinstance(obj, Frame):
                add(("job", obj.job_id), what, part)
                # a host's facts (its own, and the `worker.*` others show) count only the
                # frames running on it, and its runs, which no action changes
                if before["state"] == FrameState.RUNNING or obj.state == FrameState.RUNNING:
                    for host in (before["host"], obj.host):
                        if host:
                            add(("running", host), what, part)
                if before["state"] != obj.state or before["host"] != obj.host:
                    move = (obj.job_id, before["state"], before["host"], obj.state, obj.host)
                    if mover is not None:
                        mover(*move)
                    self._moved.append(move)
            elif isinstance(obj, Instance):
                add(("job", obj.job_id), what, part)  # no host fact reads an instance's state
            elif isinstance(obj, Job):
                add(("job", obj.id), what, part)
            elif isinstance(obj, Worker):
                add(("worker", obj.name), what, part)
                add(("workers", None), what, part)
        return list(keys.items())

    def replayed(self, keys: list[tuple[Key, str]], part: Any) -> None:
        """Note the touches of a match a memo reused instead of playing it (the scratch
        farm does not show them: a match they reach cannot be checked on it)."""
        for key, what in keys:
            self.touches.add(key, what, part)

    def restore(self) -> None:
        """Put the counts back as the farm will be once the scratch ends."""
        if self._agg is not None and not self._own_agg and self._moved:
            mover = self._agg.frame_mover()
            for job_id, state, host, new_state, new_host in reversed(self._moved):
                mover(job_id, new_state, new_host, state, host)
        self._moved.clear()

    # --- before a match is played -----------------------------------------------------
    def reached_by(self, m: Match) -> tuple[str, set[Any]] | None:
        """The latest transition that reached `m`'s facts and the parts that played
        such transitions, or None when nothing played so far could have changed them."""
        if not self.touches.by:
            return None
        keys = self._keys(m)
        hits = [k for k in keys if k in self.touches.by]
        if not hits:
            return None
        parts: set[Any] = set()
        for k in hits:
            parts |= self.touches.part_of[k]
        return self.touches.by[hits[-1]], parts

    def _keys(self, m: Match) -> list[Key]:
        """What an earlier transition must have touched to change what `m`'s policy reads
        of it (its conditions and its reason): its job always; a job it depends on, its
        host's row, the frames running there, or any worker, only when the policy reads them."""
        _needs, reads = self._policy_needs(m.policy)
        keys: list[Key] = []
        if "workers" in reads:
            keys.append(("workers", None))
        if m.kind is Kind.WORKER:
            keys.append(("worker", m.ident))
            if "frames_running" in reads:
                keys.append(("running", m.ident))
            return keys
        entity: Any = self.farm.lookup(m.kind)(int(m.ident) if m.kind is Kind.JOB else m.ident)
        if entity is None:
            return keys
        if m.kind is Kind.JOB:
            if "dependencies" in reads:
                keys.extend(("job", d) for d in entity.depends_on)
            keys.append(("job", entity.id))
            return keys
        if "dependencies" in reads:
            keys.extend(("job", j) for j, _n in getattr(entity, "depends_on", ()))
        if "worker" in reads and entity.host:
            keys.append(("worker", entity.host))
            if "frames_running" in reads:
                keys.append(("running", entity.host))
        keys.append(("job", entity.job_id))
        return keys

    def holds_now(self, m: Match) -> tuple[bool, dict[str, Any]]:
        """Whether `m`'s conditions hold on the farm as played so far, and the fact."""
        needs, _reads = self._policy_needs(m.policy)
        fact = self._builder(needs).fact(m.kind, m.ident)
        return holds(m.policy.when, fact), fact

    def fact_for_reason(self, m: Match) -> dict[str, Any]:
        """The fact as played so far, with the fields a re-checked match's reason quotes."""
        cited = {m.kind: {n for n in template_names(m.policy.reason) if n in FIELDS[m.kind]}}
        needs = Needs.of(cited)
        return self._builder(needs).fact(m.kind, m.ident)

    def _builder(self, needs: Needs) -> FactBuilder:
        return FactBuilder(self.farm, self.now, aggregates=self._counts(), needs=needs, classes=self.classes)

    def _counts(self) -> Aggregates:
        if self._agg is None:  # counted once, on the farm as played so far; kept by deltas after
            self._agg = Aggregates.from_farm(self.farm)
        return self._agg

    def _policy_needs(self, policy: Policy) -> tuple[Needs, frozenset[str]]:
        """What to build to check `policy` again, and which related things it reads
        ("dependencies", "worker" for a frame's or an instance's host, "workers" for
        `workers_available`), in its conditions or its reason."""
        got = self._needs.get(policy.name)
        if got is None:
            cited = paths(policy.when) | {n for n in template_names(policy.reason) if n in FIELDS[policy.kind]}
            reads = set()
            for path in cited:
                head, _, last = path.rpartition(".")
                if last == "workers_available":
                    reads.add("workers")
                if path.startswith("dependencies."):
                    reads.add("dependencies")
                if head == "worker":
                    reads.add("worker")
                if last == "frames_running" and head in ("", "worker"):
                    reads.add("frames_running")
            got = self._needs[policy.name] = (Needs.of(paths_read([policy])), frozenset(reads))
        return got


def why_not(kind: Kind, cond: Cond, fact: dict[str, Any]) -> str:
    """The first condition of `cond` that `fact` fails, in words ("job.state is blocked")."""
    if isinstance(cond, All):
        for item in cond.items:
            if not holds(item, fact):
                return why_not(kind, item, fact)
        return "its conditions hold"
    if isinstance(cond, AnyOf):
        return "none of its `any` conditions holds"
    if isinstance(cond, Not):
        return f"{_what_holds(kind, cond.item, fact)}, which its `not:` excludes"
    return _value_of(kind, cond, fact)


def _what_holds(kind: Kind, cond: Cond, fact: dict[str, Any]) -> str:
    """What makes `cond` hold on `fact`, in words (for a `not:` that now excludes it)."""
    if isinstance(cond, All):
        return " and ".join(_what_holds(kind, c, fact) for c in cond.items)
    if isinstance(cond, AnyOf):
        return next((_what_holds(kind, c, fact) for c in cond.items if holds(c, fact)), "one of its conditions holds")
    if isinstance(cond, Not):
        return why_not(kind, cond.item, fact)
    return _value_of(kind, cond, fact)


def _value_of(kind: Kind, cond: Cmp, fact: dict[str, Any]) -> str:
    actual = get_path(fact, cond.path)
    if actual is MISSING:
        return f"{cond.path} is unknown"
    spec = FIELDS[kind].get(cond.path)
    shown = format_duration(actual) if spec is not None and spec.type == "duration" else actual
    return f"{cond.path} is {shown}"

