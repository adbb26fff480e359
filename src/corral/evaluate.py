"""Evaluation: which entities does each policy match?  Facts in, matches out.

Two evaluators speak the same language: the durable_rules engine (`corral.engine`,
the production path) and the reference evaluator (plain Python, the test oracle and
the fallback).  Both are handed the full facts of a kind and answer with ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from corral.facts import FactBuilder
from corral.policy.model import Policy
from corral.policy.reference import matching
from corral.states import Kind


class Evaluator(Protocol):
    def evaluate(self, kind: Kind, facts: Iterable[dict[str, Any]]) -> dict[str, list[Any]]: ...


class ReferenceEvaluator:
    """The policy language in plain Python."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.policies = list(policies)

    def evaluate(self, kind: Kind, facts: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
        facts = list(facts)
        return {p.name: matching(p, facts) for p in self.policies if p.kind is kind}


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
