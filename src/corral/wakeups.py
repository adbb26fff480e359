"""When a candidate's time-based conditions may change: what makes an unchanged entity
worth re-sending to the engine.

A duration condition (`running_for: {gte: 3600}`) flips as time passes without any row
changing.  Each candidate the engine holds is given the moment its duration
comparisons may next flip (`next_flip`), and a cycle asks which moments have passed
(`due`): those entities' facts are built and sent again, and no other unchanged one.

The schedule is a pure function of the facts sent and the policies, so it can live on
either side of a process boundary: the in-process engine (`corral.engine.RuleEngine`)
keeps one per kind, and the isolated engine's daemon side
(`corral.daemon.isolated.IsolatedEvaluator`) keeps its own (`Wakeups`), so a cycle
need not ask the engine child which entities are due: one round trip a cycle instead
of two.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.policy.compiler import CompiledKind, compile_kind, next_flip
from corral.policy.model import Cmp, Policy
from corral.policy.reference import Predicate, any_gate, getter
from corral.ports import EntityId, Fact
from corral.states import Kind

#: A kind's duration comparisons, each with the getter of the value it reads.
Timers = tuple[tuple[Cmp, Callable[[dict[str, Any]], Any]], ...]


def timers(compiled: CompiledKind) -> Timers:
    """The duration probes of a compiled kind, ready to be asked `soonest`."""
    return tuple((p.cond, getter(p.cond.path)) for p in compiled.timed if isinstance(p.cond, Cmp))


def soonest(timed: Timers, fact: Mapping[str, Any], now: float) -> float | None:
    """When the first of `timed` may flip for `fact` (None: none will, as things stand)."""
    first: float | None = None
    for cmp, get in timed:
        at = next_flip(cmp, get(fact), now)  # type: ignore[arg-type]
        if at is not None and (first is None or at < first):
            first = at
    return first


@dataclass
class Schedule:
    """Entities and the moment each is next due, with a heap to find the passed ones.

    A heap entry is only good while it is still the entity's moment in `wake` (a new
    moment pushes a new entry; the old one is skipped when it comes up)."""

    wake: dict[Any, float] = field(default_factory=dict)
    heap: list[tuple[float, int, Any]] = field(default_factory=list)
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def put(self, ident: Any, at: float | None) -> None:
        """`ident` is next due at `at` (None: never, unless it is sent again)."""
        if at is None:
            self.wake.pop(ident, None)
        elif self.wake.get(ident) != at:
            self.wake[ident] = at
            heapq.heappush(self.heap, (at, next(self._seq), ident))

    def discard(self, ident: Any) -> None:
        self.wake.pop(ident, None)

    def __contains__(self, ident: Any) -> bool:
        return ident in self.wake

    def due(self, now: float) -> set[Any]:
        """The entities whose moment has come by `now` (each forgotten: sending it again
        schedules it again)."""
        out: set[Any] = set()
        heap, wake = self.heap, self.wake
        while heap and heap[0][0] <= now:
            at, _, ident = heapq.heappop(heap)
            if wake.get(ident) == at:
                del wake[ident]
                out.add(ident)
        return out


@dataclass
class _KindTimer:
    gate: Predicate
    timed: Timers
    schedule: Schedule = field(default_factory=Schedule)


class Wakeups:
    """Every kind's schedule, kept from the facts sent to an engine: the engine's own
    (`RuleEngine.due`) answers, without asking it.

    `note` must see every fact the engine is sent, with the same `now`: a fact that
    passes a policy's gate is a candidate the engine holds and is scheduled; any other
    (or None, gone) is not."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        policies = list(policies)
        self._kinds: dict[Kind, _KindTimer] = {}
        for kind in Kind:
            mine = [p for p in policies if p.kind is kind]
            if mine:
                compiled = compile_kind(kind, mine)
                self._kinds[kind] = _KindTimer(any_gate(compiled.gates.values()), timers(compiled))

    def clear(self) -> None:
        """Forget every schedule (the engine it mirrors started empty)."""
        for timer in self._kinds.values():
            timer.schedule = Schedule()

    def note(self, kind: Kind, changed: Iterable[tuple[EntityId, Fact | None]], now: float | None) -> None:
        """Take in facts sent to the engine (None: no longer a candidate), as the engine
        does (`RuleEngine._put`).  Without `now` nothing is scheduled (as the engine)."""
        timer = self._kinds.get(kind)
        if timer is None:
            return
        gate, timed, schedule = timer.gate, timer.timed, timer.schedule
        if not timed:  # nothing of this kind ever falls due: only forget what leaves
            return
        for ident, fact in changed:
            if fact is not None and gate(fact):
                if now is not None:
                    schedule.put(ident, soonest(timed, fact, now))
            else:
                schedule.discard(ident)

    def replace(self, kind: Kind, facts: Iterable[tuple[EntityId, Fact]], now: float | None) -> None:
        """The kind's whole picture (`RuleEngine.evaluate`): what is not in it is gone."""
        timer = self._kinds.get(kind)
        if timer is not None:
            timer.schedule = Schedule()
            self.note(kind, facts, now)

    def due(self, kind: Kind, now: float) -> set[EntityId]:
        timer = self._kinds.get(kind)
        return timer.schedule.due(now) if timer is not None else set()
