"""Evaluation: which entities does each policy match?  Facts in, matches out.

Two evaluators speak the same language (the `Evaluator` and `IncrementalEvaluator`
ports): the durable_rules engine (`corral.engine`, the production path) and the
reference evaluator below (plain Python, the test oracle and the fallback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corral.facts import FactBuilder
from corral.policy.compiler import admitted_states, gate_of
from corral.policy.model import Policy
from corral.policy.reference import matching
from corral.ports import Changes, EntityId, Evaluator, Fact, IncrementalEvaluator, change_parts
from corral.states import Kind


class ReferenceEvaluator:
    """The policy language in plain Python (`corral.policy.reference`): the test oracle,
    and the engine of `--engine reference`.

    It speaks the incremental protocol too, simply: it holds the last fact sent for each
    candidate and evaluates every held fact again when asked, and it says every held
    entity is due each cycle (its time-based fields are rebuilt), so what it answers
    never depends on scheduling.  Slower than the rule engine on a big farm, never
    differently right."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.policies = list(policies)
        self._held: dict[Kind, dict[Any, dict[str, Any]]] = {kind: {} for kind in Kind}

    def evaluate(self, kind: Kind, facts: Iterable[Fact], now: float | None = None) -> dict[str, list[EntityId]]:
        """`now` as the durable engine takes it (an engine child passes it on): nothing
        here is scheduled, so it is not needed."""
        facts = list(facts)
        return {p.name: matching(p, facts) for p in self.policies if p.kind is kind}

    @property
    def starts(self) -> int:
        return 1  # its memory lives as long as it does

    def ready(self) -> None:
        """Nothing to start: it lives in this process."""

    def state_filter(self, kind: Kind) -> frozenset[str] | None:
        mine = [p for p in self.policies if p.kind is kind]
        return frozenset() if not mine else admitted_states(gate_of(kind, p.when) for p in mine)

    def known(self, kind: Kind) -> set[EntityId]:
        return set(self._held[kind])

    def due_all(self, kinds: Iterable[Kind], now: float) -> dict[Kind, set[EntityId]]:
        return {kind: set(self._held[kind]) for kind in kinds}

    def settle(self, changes: Changes, now: float | None = None) -> dict[Kind, dict[str, list[EntityId]]]:
        kinds = []
        for kind, changed in change_parts(changes):
            held = self._held[kind]
            for ident, fact in changed.items():
                if fact is None:
                    held.pop(ident, None)
                else:
                    held[ident] = fact
            kinds.append(kind)
        return {kind: self.evaluate(kind, self._held[kind].values()) for kind in kinds}

    def close(self) -> None:
        """Nothing to release."""


def make_evaluator(policies: Sequence[Policy], engine: str = "durable") -> IncrementalEvaluator:
    """An evaluator of `policies` (the enabled ones) in this process: durable_rules
    (`corral.engine`, imported only here and only when asked for) or the reference."""
    if engine == "reference":
        return ReferenceEvaluator(policies)
    from corral.engine import RuleEngine

    return RuleEngine(policies)


class LazyFact(Mapping[str, Any]):
    """A fact built on first use: most matches of a cycle never need theirs (they are
    skipped by a limit or a cooldown), and building a fact is most of a match's cost.
    `build(*args)` makes it; a million-frame farm can have tens of thousands of matches
    a cycle, so no closure or partial is made per match."""

    __slots__ = ("_args", "_build", "_fact")

    def __init__(self, build: Callable[..., dict[str, Any]], *args: Any) -> None:
        self._build: Callable[..., dict[str, Any]] | None = build
        self._args = args
        self._fact: dict[str, Any] = {}

    def _get(self) -> dict[str, Any]:
        if self._build is not None:
            self._fact, self._build = self._build(*self._args), None
        return self._fact

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def whole(self) -> dict[str, Any]:
        """The fact itself (a reason template reads it as a plain dict, not key by key)."""
        return self._get()

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


@dataclass(slots=True)  # not frozen: a frozen dataclass costs four times as much to make, per match
class Match:
    """A policy matched an entity; `fact` is its fact, for the reason (the daemon's holds
    only the fields reasons cite, see `corral.plan.reason_paths`)."""

    policy: Policy
    kind: Kind
    ident: str
    fact: Mapping[str, Any]


def find_matches(policies: Sequence[Policy], builder: FactBuilder, evaluator: Evaluator) -> list[Match]:
    """Every match of every enabled policy, grouped by kind, in policy order."""
    by_name = {p.name: p for p in policies if p.enabled}
    out: list[Match] = []
    for kind in Kind:
        if not any(p.kind is kind for p in by_name.values()):
            continue
        facts = builder.facts(kind)
        index = {f["id"]: f for f in facts}
        found = evaluator.evaluate(kind, facts)
        for name, ids in found.items():
            policy = by_name.get(name)
            if policy is None:
                continue
            out.extend(Match(policy, kind, str(i), index[i]) for i in ids)
    return out
