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
- *Cost and memory per stored fact* (microseconds and about 10 KB each): entities
  whose engine-visible content is the same (the fields the rules carry, the probes'
  values) share one engine fact (`_Shared`).  Every rule is a single-fact pattern,
  so what fires is a function of that content alone; a farm's two thousand failed
  frames of running jobs are a handful of distinct questions, each asked once.
- *32-bit fact identity*: a new fact that the engine reports as "already observed"
  collided with another id's hash (shared facts have ids of their own: s1, s2...).
  It is never asserted (nor retracted, which would retract the other fact); the
  reference evaluator decides it instead, and the collision is counted in `stats`.
- *Numbers the engine cannot read*: its JSON parser refuses 1e-05 (how Python writes
  0.00001) and inf; a fact holding one is decided by the reference evaluator too
  (counted in `stats.unreadable`) instead of failing the whole cycle.
- *Exceptions inside actions* never reach the caller, and `Host.assert_fact` wraps
  each action in a Python closure and writes the session state back after it: the
  adapter asserts through the engine's C half and drains the actions itself (the
  rules' own `run` functions do nothing and are never called), so nothing can fail
  unseen and a match costs no more than reading it.
- *Thread safety*: one lock per engine.
- *No unregistering*: a ruleset name lives as long as the Host, so a reload builds
  a new `RuleEngine` (new Host, new generation in the ruleset names).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import durable_rules_engine as _native  # its C half: asserting and draining actions without the Python layer
from durable import engine as _durable  # the one import of durable_rules in corral (with the line above)

from corral.facts import narrow
from corral.policy.compiler import MARKER, CompiledKind, admitted_states, compile_kind, engine_can_read
from corral.policy.model import Policy
from corral.policy.reference import Predicate, any_gate, getter, holds, predicate
from corral.ports import Changes, EntityId, Fact, change_parts
from corral.states import Kind
from corral.wakeups import Schedule, Timers, soonest, timers

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
    """Counts of what the adapter did: entities are what the caller sends, engine facts
    what durable_rules holds (one per distinct content, see `_Shared`)."""

    asserted: int = 0  # engine facts asserted
    retracted: int = 0  # engine facts retracted
    unchanged: int = 0  # entities re-sent with the same engine-visible content
    shared: int = 0  # entities that joined an engine fact already held for another
    collisions: int = 0
    unreadable: int = 0


@dataclass(slots=True, eq=False)
class _Shared:
    """One engine fact standing for every entity whose engine-visible content is the same.

    Each rule is a single-fact pattern over the fact's carried fields and probes, so
    what fires for a fact is a function of that content alone: a thousand failed frames
    of running jobs with one retry left are one question for the engine, asked once.
    The engine's cost and memory (about 10 KB per stored fact) then follow the number
    of distinct contents, not the size of the farm.
    """

    efact: dict[str, Any]
    members: set[Any]
    fired: frozenset[str] = frozenset()
    in_engine: bool = True  # False: decided by the reference evaluator (collision, unreadable)


@dataclass
class _Memory:
    """What one kind's session holds: each entity's content key, and the shared facts."""

    ruleset: str
    compiled: CompiledKind
    gate: Predicate
    keyer: Callable[[dict[str, Any]], tuple[Any, ...]]
    probes: tuple[tuple[str, Predicate], ...]
    rule_policy: dict[str, str] = field(default_factory=dict)  # engine rule name -> policy name
    timed: Timers = ()  # duration probes and their getters
    handle: int = 0  # the ruleset's handle in the C engine
    key_of: dict[Any, tuple[Any, ...]] = field(default_factory=dict)
    shared: dict[tuple[Any, ...], _Shared] = field(default_factory=dict)
    schedule: Schedule = field(default_factory=Schedule)  # when each candidate is next due


_TRUE, _FALSE = object(), object()  # a bool is an int to a tuple's ==; in a key, it is not


def _key_value(value: Any) -> Any:
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    return (float, value) if isinstance(value, float) else value


def _keyer(paths: Iterable[str], probes: tuple[tuple[str, Predicate], ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The engine-visible content of a fact as a hashable key: carried fields, then probes."""
    getters = tuple(getter(p) for p in sorted(paths) if p != "id")
    tests = tuple(test for _, test in probes)

    def key(fact: dict[str, Any]) -> tuple[Any, ...]:
        return (*(_key_value(g(fact)) for g in getters), *(t(fact) for t in tests))

    return key


def _ignore(c: Any) -> None:
    return None


_NONE: frozenset[str] = frozenset()


def _fired(memory: _Memory, ident: Any) -> frozenset[str]:
    """The policies whose rules the entity's fact fires (none: not a candidate)."""
    key = memory.key_of.get(ident)
    return _NONE if key is None else memory.shared[key].fired


def _assert_native(handle: int, payload: str) -> tuple[int, int]:
    """`Ruleset.assert_fact` without its Python layer: (result code, state handle).

    Codes as durable_rules' `_handle_result` reads them: 1 not handled, 2 already
    observed (the 32-bit identity collided), otherwise asserted.
    """
    code, state = _native.assert_fact(handle, payload)
    return int(code), int(state)


class RuleEngine:
    """Policies compiled into durable_rules, evaluated incrementally, kind by kind: the
    `IncrementalEvaluator` port (`corral.ports`)."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.policies = {p.name: p for p in policies}
        self.generation = next(_generation)
        self.stats = EngineStats()
        self._lock = threading.Lock()
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
            rule_policy = {f"r{i}": policy for i, policy in enumerate(compiled.rules)}
            rules: dict[str, Any] = {
                rule: {"all": [{"m": compiled.rules[policy]}], "run": _ignore} for rule, policy in rule_policy.items()
            }
            # The catch-all that keeps a fact no policy matches from being refused.  It
            # joins the fact with one that never exists, so it accepts every fact and
            # never fires: no action to run and drain for each fact asserted.
            rules["seen"] = {"all": [{"m": {MARKER: 1}}, {"never": {MARKER: 2}}], "run": _ignore}
            definitions[name] = rules
            probes = tuple((probe.name, predicate(probe.cond)) for probe in compiled.probes)
            self._memory[kind] = _Memory(
                name, compiled, any_gate(compiled.gates.values()), _keyer(compiled.paths, probes), probes, rule_policy,
                timers(compiled)
            )
        try:
            self._host.set_rulesets(definitions)
        except Exception as err:  # the C extension raises its own error type
            raise EngineError(f"durable_rules refused the compiled rulesets: {err}") from err
        for memory in self._memory.values():
            memory.handle = self._host.get_ruleset(memory.ruleset)._handle

    def kinds(self) -> list[Kind]:
        return list(self._memory)

    def paths(self, kind: Kind) -> set[str]:
        memory = self._memory.get(kind)
        return set(memory.compiled.paths) if memory else set()

    def evaluate(self, kind: Kind, facts: Iterable[Fact], now: float | None = None) -> dict[str, list[EntityId]]:
        """Matching fact ids per policy name, for the full current set of `kind` facts.

        Facts not passed this time are retracted: the caller passes the whole current
        picture, and the engine's memory follows it (sending only what changed).
        """
        memory = self._memory.get(kind)
        if memory is None:
            return {}
        with self._lock:
            current = {fact["id"]: fact for fact in facts}
            gone = [i for i in memory.key_of if i not in current]
            self._put(memory, current.items(), now)
            self._put(memory, ((i, None) for i in gone), now)  # after: a shared fact another entity took over stays
            return self._result(memory)

    def update(self, kind: Kind, changed: Mapping[Any, dict[str, Any] | None], now: float | None = None) -> None:
        """Tell the engine about the entities whose facts may have changed (None: gone).

        The daemon's incremental path: the engine keeps everything else as it was.
        """
        memory = self._memory.get(kind)
        if memory is None:
            return
        with self._lock:
            self._put(memory, changed.items(), now)

    def settle(self, changes: Changes, now: float | None = None) -> dict[Kind, dict[str, list[EntityId]]]:
        """`update` each kind's changed facts, then `current` of each: what a cycle asks
        of the engine, in one call (one round trip when the engine runs in a child
        process, `corral.daemon.isolated`)."""
        kinds = []
        for kind, changed in change_parts(changes):
            self.update(kind, changed, now)
            kinds.append(kind)
        return {kind: self.current(kind) for kind in kinds}

    def settle_moved(self, changes: Mapping[Kind, Mapping[EntityId, Fact | None]], now: float | None = None
                     ) -> dict[Kind, dict[str, tuple[list[EntityId], list[EntityId]]]]:
        """`settle`, answered with what moved: per kind and policy, the ids among `changes`
        that joined its matches and those that left them (policies and kinds with none
        left out).  Only an entity whose fact was sent can start or stop matching (a
        policy reads one entity's fact, and a shared fact's rules fired once, when it was
        asserted), so this costs what the changes do, where `current` and a comparison
        with the last answer cost every match held (the engine child's answer,
        `corral.daemon.isolated`: 17,000 held matches at 1M frames, 4 ms a cycle)."""
        out: dict[Kind, dict[str, tuple[list[EntityId], list[EntityId]]]] = {}
        for kind, changed in changes.items():
            memory = self._memory.get(kind)
            if memory is None:
                continue
            with self._lock:
                before = {ident: _fired(memory, ident) for ident in changed}
                self._put(memory, changed.items(), now)
                moved: dict[str, tuple[list[EntityId], list[EntityId]]] = {}
                for ident, was in before.items():
                    fired = _fired(memory, ident)
                    if fired == was:
                        continue
                    for name in fired - was:
                        moved.setdefault(name, ([], []))[0].append(ident)
                    for name in was - fired:
                        moved.setdefault(name, ([], []))[1].append(ident)
            if moved:
                out[kind] = moved
        return out

    def due_all(self, kinds: Iterable[Kind], now: float) -> dict[Kind, set[EntityId]]:
        """`due` of each kind, in one call (see `settle`)."""
        return {kind: self.due(kind, now) for kind in kinds}

    @property
    def starts(self) -> int:
        """Its working memory lives as long as it does (see `IsolatedEvaluator.starts`)."""
        return 1

    def ready(self) -> None:
        """Nothing to start: the engine lives in this process (see `IsolatedEvaluator.ready`)."""

    def close(self) -> None:
        """Nothing to release: the Host goes with the object (durable_rules cannot unregister
        a ruleset; `delete_state` is what crashed, see the module docstring)."""

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
        with self._lock:
            return memory.schedule.due(now)

    def known(self, kind: Kind) -> set[EntityId]:
        """Ids the engine holds for `kind` (to drop the ones that vanished on a full re-read)."""
        memory = self._memory.get(kind)
        return set(memory.key_of) if memory else set()

    def state_filter(self, kind: Kind) -> frozenset[str] | None:
        """The states an entity must be in to pass some gate (None: any state may).

        Lets the caller skip building the facts of, say, every complete frame.
        """
        memory = self._memory.get(kind)
        return frozenset() if memory is None else admitted_states(memory.compiled.gates.values())

    def _put(self, memory: _Memory, entities: Iterable[tuple[Any, dict[str, Any] | None]], now: float | None) -> None:
        """Each entity's current fact (None: gone) into the memory."""
        gate, key_of, schedule = memory.gate, memory.key_of, memory.schedule
        for ident, fact in entities:
            # Most entities sent fail every gate and were no candidate before: nothing to
            # do, decided here without a method call (a first cycle sends thousands).
            if fact is not None and gate(fact):
                self._enter(memory, ident, fact, now)
            elif ident in key_of or ident in schedule:
                schedule.discard(ident)
                self._leave(memory, ident)

    def _enter(self, memory: _Memory, ident: Any, fact: dict[str, Any], now: float | None) -> None:
        """A fact that passed a gate: (re)join the shared fact of its content."""
        if now is not None:
            memory.schedule.put(ident, soonest(memory.timed, fact, now))
        key = memory.keyer(fact)
        old = memory.key_of.get(ident)
        if old == key:
            self.stats.unchanged += 1
            return
        if old is not None:
            self._leave(memory, ident)
        shared = memory.shared.get(key)
        if shared is None:
            shared = memory.shared[key] = self._share(memory, fact)
        else:
            self.stats.shared += 1
        shared.members.add(ident)
        memory.key_of[ident] = key

    def _leave(self, memory: _Memory, ident: Any) -> None:
        """The entity is no longer a candidate (or its content changed): drop it from its
        shared fact, and the fact from the engine once nobody shares it."""
        key = memory.key_of.pop(ident, None)
        if key is None:
            return
        shared = memory.shared[key]
        shared.members.discard(ident)
        if not shared.members:
            del memory.shared[key]
            if shared.in_engine:
                self._retract(memory, shared.efact)

    def _share(self, memory: _Memory, fact: dict[str, Any]) -> _Shared:
        """A new engine fact for `fact`'s content, asserted (or decided in Python)."""
        efact = narrow(fact, memory.compiled.paths - {"id"})
        for name, test in memory.probes:
            efact[name] = test(fact)
        efact.update({"id": f"s{next(self._seq)}", MARKER: 1, "sid": "0"})
        shared = _Shared(efact, set())
        if not engine_can_read(efact):
            self.stats.unreadable += 1
            self._decide_in_python(memory, shared, fact)
            return shared
        self._assert(memory, shared, fact)
        return shared

    def _decide_in_python(self, memory: _Memory, shared: _Shared, fact: dict[str, Any]) -> None:
        """The reference evaluator's answer for the content, from one member's whole fact
        (every member has the same carried fields and probe values, so the same answer)."""
        shared.in_engine = False
        shared.fired = frozenset(name for name in memory.compiled.rules if holds(self.policies[name].when, fact))

    def _result(self, memory: _Memory) -> dict[str, list[Any]]:
        result: dict[str, list[Any]] = {name: [] for name in memory.compiled.rules}
        for shared in memory.shared.values():
            for name in shared.fired:
                if name in result:
                    result[name].extend(shared.members)
        return result

    def _assert(self, memory: _Memory, shared: _Shared, fact: dict[str, Any]) -> None:
        """Assert the shared fact and collect the rules it fires.

        Straight through the C engine: `Host.assert_fact` wraps every action in a
        Python closure and writes the session state back as JSON after each one, which
        cost about four times the assert itself.  Actions are drained here instead;
        the rules' own `run` functions are never called.
        """
        efact = shared.efact
        try:
            code, state = _assert_native(memory.handle, json.dumps(efact, ensure_ascii=False))
        except Exception as err:  # the C extension raises its own error type
            raise EngineError(f"durable_rules refused a {memory.compiled.kind} fact {efact!r}: {err}") from err
        if code == 2:
            # Another id hashed to the same 32-bit identity: decide this one in Python.
            self.stats.collisions += 1
            log.warning("rule engine: engine fact %r collides with another fact's identity; "
                        "deciding it with the reference evaluator", efact["id"])
            self._decide_in_python(memory, shared, fact)
            return
        if code == 1:  # pragma: no cover - the catch-all rule accepts every fact
            raise EngineError(f"durable_rules did not take a {memory.compiled.kind} fact {efact!r}")
        self.stats.asserted += 1
        fired: set[str] = set()
        try:
            started = _native.start_action_for_state(memory.handle, state)
            while started:
                for rule, matched in json.loads(started[1]).items():
                    policy = memory.rule_policy.get(rule)
                    if policy is not None and matched.get("m", {}).get("id") == efact["id"]:
                        fired.add(policy)
                message = _native.complete_and_start_action(memory.handle, state)
                started = (None, message) if message else None
        except Exception as err:
            raise EngineError(f"durable_rules failed running the matches of a {memory.compiled.kind} fact: {err}") from err
        shared.fired = frozenset(fired)

    def _retract(self, memory: _Memory, efact: dict[str, Any]) -> None:
        try:
            self._host.retract_fact(memory.ruleset, efact)
        except Exception as err:
            raise EngineError(f"durable_rules could not retract a {memory.compiled.kind} fact {efact['id']!r}: {err}") from err
        self.stats.retracted += 1
