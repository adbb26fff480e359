"""The durable_rules adapter: the only module that imports durable_rules.

durable_rules is fast to misuse (see shared/reference/durable-rules-notes.md); this
adapter deals with each hazard in one place:

- *Background threads*: the stock `Host` starts timer threads that have crashed the
  process on `delete_state`.  `_QuietHost` starts none; we never use timers, and we
  never call `delete_state`.
- *Unhandled facts*: a fact no rule matches raises `MessageNotHandledException`, so
  every ruleset has a catch-all rule on the marker field.  The marker also keeps
  rules from matching the engine's own session-state object (which loops forever).
- *Incremental working memory*: one long-lived session per kind.  Each evaluation
  retracts facts that changed or vanished and asserts the new versions; the engine
  fires on change only, so this adapter keeps the set of active matches itself.
  Only *candidates* are sent: facts that pass some policy's gate (its top-level,
  time-independent comparisons; see `corral.policy.compiler`), and time-based
  conditions are probes re-checked when due (`due`), so an unchanged entity costs
  nothing from one cycle to the next.
- *32-bit fact identity*: a new fact that the engine reports as "already observed"
  collided with another id's hash.  It is never asserted (nor retracted, which would
  retract the other fact); the reference evaluator decides it instead, and the
  collision is counted in `stats`.
- *Numbers the engine cannot read*: its JSON parser refuses 1e-05 (how Python writes
  0.00001) and inf; a fact holding one is decided by the reference evaluator too
  (counted in `stats.unreadable`) instead of failing the whole cycle.
- *Exceptions inside actions* never reach the caller, so the action only records
  the match in a list: nothing in it can fail.
- *Thread safety*: one lock per engine.
- *No unregistering*: a ruleset name lives as long as the Host, so a reload builds
  a new `RuleEngine` (new Host, new generation in the ruleset names).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from durable import engine as _durable  # the one import of durable_rules in corral

from corral.facts import get_path, narrow
from corral.policy.compiler import MARKER, CompiledKind, compile_kind, engine_can_read, next_flip
from corral.policy.model import All, Cmp, Policy, pinned_states
from corral.policy.reference import holds
from corral.states import Kind

log = logging.getLogger(__name__)
_generation = itertools.count(1)


class EngineError(Exception):
    """The rule engine refused a fact or a ruleset; the cycle that hit it is lost."""


class _QuietHost(_durable.Host):  # type: ignore[misc]
    """A Host without the timer threads (we use neither timers nor queued actions)."""

    def _run(self) -> None:
        return None


@dataclass
class EngineStats:
    asserted: int = 0
    retracted: int = 0
    unchanged: int = 0
    collisions: int = 0
    unreadable: int = 0


@dataclass
class _Memory:
    """What one kind's session holds: the facts as asserted and the active matches."""

    ruleset: str
    compiled: CompiledKind
    facts: dict[Any, dict[str, Any]] = field(default_factory=dict)
    matches: dict[Any, set[str]] = field(default_factory=dict)
    fallback: dict[Any, dict[str, Any]] = field(default_factory=dict)
    wake: dict[Any, float] = field(default_factory=dict)
    wakeups: list[tuple[float, int, Any]] = field(default_factory=list)


def _recorder(sink: list[tuple[str, Any]], rule: str) -> Callable[[Any], None]:
    """A plain one-argument function per rule (the engine rejects partials and callables)."""

    def on_match(c: Any) -> None:
        sink.append((rule, c.m["id"]))

    return on_match


def _ignore(c: Any) -> None:
    return None


class RuleEngine:
    """Policies compiled into durable_rules, evaluated incrementally, kind by kind."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.policies = {p.name: p for p in policies}
        self.generation = next(_generation)
        self.stats = EngineStats()
        self._lock = threading.Lock()
        self._sink: list[tuple[str, Any]] = []
        self._seq = itertools.count()
        self._host = _QuietHost()
        self._memory: dict[Kind, _Memory] = {}
        definitions: dict[str, Any] = {}
        for kind in Kind:
            mine = [p for p in self.policies.values() if p.kind is kind]
            if not mine:
                continue
            compiled = compile_kind(kind, mine)
            name = f"corral{self.generation}_{kind}"
            rules: dict[str, Any] = {
                f"r{i}": {"all": [{"m": pattern}], "run": _recorder(self._sink, policy)}
                for i, (policy, pattern) in enumerate(compiled.rules.items())
            }
            rules["seen"] = {"all": [{"m": {MARKER: 1}}], "run": _ignore}
            definitions[name] = rules
            self._memory[kind] = _Memory(name, compiled)
        try:
            self._host.set_rulesets(definitions)
        except Exception as err:  # the C extension raises its own error type
            raise EngineError(f"durable_rules refused the compiled rulesets: {err}") from err

    def kinds(self) -> list[Kind]:
        return list(self._memory)

    def paths(self, kind: Kind) -> set[str]:
        memory = self._memory.get(kind)
        return set(memory.compiled.paths) if memory else set()

    def _engine_fact(self, memory: _Memory, fact: dict[str, Any]) -> dict[str, Any]:
        out = narrow(fact, memory.compiled.paths)
        for probe in memory.compiled.probes:
            out[probe.name] = holds(probe.cond, fact)
        out[MARKER] = 1
        out["sid"] = "0"
        return out

    def evaluate(self, kind: Kind, facts: Iterable[dict[str, Any]], now: float | None = None) -> dict[str, list[Any]]:
        """Matching fact ids per policy name, for the full current set of `kind` facts.

        Facts not passed this time are retracted: the caller passes the whole current
        picture, and the engine's memory follows it (sending only what changed).
        """
        memory = self._memory.get(kind)
        if memory is None:
            return {}
        with self._lock:
            current = {fact["id"]: fact for fact in facts}
            for ident in [i for i in (*memory.facts, *memory.fallback) if i not in current]:
                self._put(memory, ident, None, now)
            for ident, fact in current.items():
                self._put(memory, ident, fact, now)
            return self._result(memory)

    def update(self, kind: Kind, changed: Mapping[Any, dict[str, Any] | None], now: float | None = None) -> None:
        """Tell the engine about the entities whose facts may have changed (None: gone).

        The daemon's incremental path: the engine keeps everything else as it was.
        """
        memory = self._memory.get(kind)
        if memory is None:
            return
        with self._lock:
            for ident, fact in changed.items():
                self._put(memory, ident, fact, now)

    def current(self, kind: Kind) -> dict[str, list[Any]]:
        """The active matches of `kind`, per policy name."""
        memory = self._memory.get(kind)
        if memory is None:
            return {}
        with self._lock:
            return self._result(memory)

    def due(self, kind: Kind, now: float) -> set[Any]:
        """Entities whose time-based conditions may have changed by `now`: re-send their facts."""
        memory = self._memory.get(kind)
        if memory is None:
            return set()
        out: set[Any] = set()
        with self._lock:
            heap = memory.wakeups
            while heap and heap[0][0] <= now:
                at, _, ident = heapq.heappop(heap)
                if memory.wake.get(ident) == at:
                    del memory.wake[ident]
                    out.add(ident)
        return out

    def known(self, kind: Kind) -> set[Any]:
        """Ids the engine holds for `kind` (to drop the ones that vanished on a full re-read)."""
        memory = self._memory.get(kind)
        return set(memory.facts) | set(memory.fallback) if memory else set()

    def state_filter(self, kind: Kind) -> frozenset[str] | None:
        """The states an entity must be in to pass some gate (None: any state may).

        Lets the caller skip building the facts of, say, every complete frame.
        """
        memory = self._memory.get(kind)
        if memory is None:
            return frozenset()
        allowed: set[str] = set()
        for gate in memory.compiled.gates.values():
            states = pinned_states(All(gate))
            if states is None:
                return None
            allowed |= states
        return frozenset(allowed)

    def _passes_gate(self, memory: _Memory, fact: dict[str, Any]) -> bool:
        return any(all(holds(c, fact) for c in gate) for gate in memory.compiled.gates.values())

    def _put(self, memory: _Memory, ident: Any, fact: dict[str, Any] | None, now: float | None) -> None:
        if fact is None or not self._passes_gate(memory, fact):
            memory.wake.pop(ident, None)
            memory.fallback.pop(ident, None)
            if ident in memory.facts:
                self._retract(memory, ident)
            return
        efact = self._engine_fact(memory, fact)
        if now is not None:
            self._schedule(memory, ident, fact, now)
        old = memory.facts.get(ident)
        if old is not None:
            if old == efact:
                self.stats.unchanged += 1
                return
            self._retract(memory, ident)
        elif ident in memory.fallback:
            memory.fallback[ident] = efact
            return
        if not engine_can_read(efact):
            self.stats.unreadable += 1
            memory.fallback[ident] = efact
            return
        self._assert(memory, ident, efact)

    def _schedule(self, memory: _Memory, ident: Any, fact: dict[str, Any], now: float) -> None:
        """Remember when a time-based probe of this fact may flip next."""
        soonest: float | None = None
        for probe in memory.compiled.timed:
            assert isinstance(probe.cond, Cmp)
            at = next_flip(probe.cond, get_path(fact, probe.cond.path), now)
            if at is not None and (soonest is None or at < soonest):
                soonest = at
        if soonest is None:
            memory.wake.pop(ident, None)
        elif memory.wake.get(ident) != soonest:
            memory.wake[ident] = soonest
            heapq.heappush(memory.wakeups, (soonest, next(self._seq), ident))

    def _result(self, memory: _Memory) -> dict[str, list[Any]]:
        result: dict[str, list[Any]] = {name: [] for name in memory.compiled.rules}
        for ident, names in memory.matches.items():
            for name in names:
                result[name].append(ident)
        for ident, efact in memory.fallback.items():
            for name in memory.compiled.rules:
                if holds(self.policies[name].when, efact):
                    result[name].append(ident)
        return result

    def _assert(self, memory: _Memory, ident: Any, efact: dict[str, Any]) -> None:
        self._sink.clear()
        try:
            self._host.assert_fact(memory.ruleset, efact)
        except _durable.MessageObservedException:
            # Another id hashed to the same 32-bit identity: decide this one in Python.
            self.stats.collisions += 1
            log.warning("rule engine: fact id %r collides with another fact's identity; "
                        "evaluating it with the reference evaluator", ident)
            memory.fallback[ident] = efact
            return
        except Exception as err:
            raise EngineError(f"durable_rules refused the {memory.compiled.kind} fact {ident!r}: {err}") from err
        self.stats.asserted += 1
        memory.facts[ident] = efact
        fired = {rule for rule, fid in self._sink if fid == ident}
        if fired:
            memory.matches[ident] = fired
        self._sink.clear()

    def _retract(self, memory: _Memory, ident: Any) -> None:
        old = memory.facts.pop(ident)
        memory.matches.pop(ident, None)
        try:
            self._host.retract_fact(memory.ruleset, old)
        except Exception as err:
            raise EngineError(f"durable_rules could not retract the {memory.compiled.kind} fact {ident!r}: {err}") from err
        self.stats.retracted += 1
