"""The reference evaluator: the policy language's meaning in plain Python.

It is the test oracle for the durable_rules compiler (property tests demand that
both find the same matches), the fallback when the engine cannot take a fact, and
the reference the condition-by-condition traces of `explain` (`corral.explain.trace_rows`) are held to.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from corral.facts import MISSING, Screen, StateScreen, get_path
from corral.policy.model import All, AnyOf, Cmp, Cond, Not, Policy
from corral.policy.operators import OPERATORS
from corral.states import STATES, Kind


def holds(cond: Cond, fact: dict[str, Any]) -> bool:
    """Does `fact` meet `cond`?  A missing field fails every comparison but exists: false."""
    if isinstance(cond, Cmp):
        actual = get_path(fact, cond.path)
        if cond.op == "exists":
            return bool((actual is not MISSING) == cond.value)
        if actual is MISSING:
            return False
        return bool(OPERATORS[cond.op].test(actual, cond.value))
    if isinstance(cond, All):
        return all(holds(c, fact) for c in cond.items)
    if isinstance(cond, AnyOf):
        return any(holds(c, fact) for c in cond.items)
    return not holds(cond.item, fact)


Predicate = Callable[[dict[str, Any]], bool]
#: The ordered operators' reference meanings (`a < b` and so on), as C functions.
_ORDERED = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}


def getter(path: str) -> Callable[[dict[str, Any]], Any]:
    """`get_path` for one path, with the path split once instead of at every call."""
    if "." not in path:
        return lambda fact: fact.get(path, MISSING)
    head, rest = path.split(".", 1)
    inner = getter(rest)

    def nested(fact: dict[str, Any]) -> Any:
        sub = fact.get(head, MISSING)
        return inner(sub) if isinstance(sub, dict) else MISSING

    return nested


def predicate(cond: Cond) -> Predicate:
    """`holds(cond, ·)` compiled once into closures: the same meaning (the parity tests
    hold it to `holds`), without walking the condition tree and re-splitting paths for
    every fact.  The engine adapter gates every candidate entity with these."""
    if isinstance(cond, All):
        parts = tuple(predicate(c) for c in cond.items)
        return lambda fact: all(p(fact) for p in parts)
    if isinstance(cond, AnyOf):
        alts = tuple(predicate(c) for c in cond.items)
        return lambda fact: any(p(fact) for p in alts)
    if isinstance(cond, Not):
        inner = predicate(cond.item)
        return lambda fact: not inner(fact)
    get, op, value, path = getter(cond.path), cond.op, cond.value, cond.path
    if op in _ORDERED and "." not in path:  # the commonest gate: a count against a threshold
        ordered = _ORDERED[op]

        def threshold(fact: dict[str, Any]) -> bool:
            actual = fact.get(path, MISSING)
            return actual is not MISSING and bool(ordered(actual, value))

        return threshold
    if op == "eq" and isinstance(value, str) and "." not in path:
        return lambda fact: fact.get(path) == value  # only a str equals a str: _eq's bool rule cannot apply
    if op == "exists":
        return lambda fact: (get(fact) is not MISSING) == value
    if op == "eq" and isinstance(value, str):
        return lambda fact: get(fact) == value  # only a str equals a str: _eq's bool rule cannot apply
    if op == "in" and all(isinstance(v, str) for v in value):
        choices = frozenset(value)

        def one_of(fact: dict[str, Any]) -> bool:
            actual = get(fact)
            return isinstance(actual, str) and actual in choices

        return one_of
    test = OPERATORS[op].test

    def compare(fact: dict[str, Any]) -> bool:
        actual = get(fact)
        return actual is not MISSING and bool(test(actual, value))

    return compare


def value_test(cond: Cmp) -> Callable[[Any], bool]:
    """`predicate(cond)` of a top-level comparison, on the value found at its path
    (MISSING: the field is not in the fact), for a screen that works an entity's fields
    out one at a time (`Screen.admits`).  Case for case the meaning of `predicate` (a
    property test holds it to `holds`)."""
    op, value = cond.op, cond.value
    if op == "exists":
        return lambda actual: (actual is not MISSING) == value
    if op in _ORDERED:
        ordered = _ORDERED[op]
        return lambda actual: actual is not MISSING and bool(ordered(actual, value))
    if op == "eq" and isinstance(value, str):
        return lambda actual: isinstance(actual, str) and actual == value
    if op == "in" and all(isinstance(v, str) for v in value):
        choices = frozenset(value)
        return lambda actual: isinstance(actual, str) and actual in choices
    test = OPERATORS[op].test
    return lambda actual: actual is not MISSING and bool(test(actual, value))


def any_gate(gates: Iterable[tuple[Cmp, ...]]) -> Predicate:
    """Passes a fact that passes every comparison of at least one of `gates` (compiled;
    the first failure exits).  An empty gate passes everything."""
    # The state first: it is the cheapest test and the one most entities fail.
    compiled = [tuple(predicate(c) for c in sorted(gate, key=lambda c: c.path != "state")) for gate in gates]
    if any(not preds for preds in compiled):
        return lambda fact: True

    def passes(fact: dict[str, Any]) -> bool:
        for preds in compiled:
            for test in preds:
                if not test(fact):
                    break
            else:
                return True
        return False

    return passes


def screen(kind: Kind, gates: Sequence[tuple[Cmp, ...]], then: Screen | None = None) -> Screen:
    """`any_gate(gates)` split by state (see `Screen`): for each state of `kind`, the
    gates whose comparisons on `state` admit it, less those comparisons."""
    by_state = {}
    for state in STATES[kind]:
        alone = {"state": state}
        admitting = [tuple(c for c in gate if c.path != "state") for gate in gates
                     if all(holds(c, alone) for c in gate if c.path == "state")]
        if admitting:
            by_state[state] = StateScreen(tuple(sorted({c.path for gate in admitting for c in gate})),
                                          any_gate(admitting),
                                          tuple(tuple((c.path, value_test(c)) for c in gate) for gate in admitting))
    return Screen(by_state, then)


def matching(policy: Policy, facts: Iterable[dict[str, Any]]) -> list[Any]:
    """Ids of the facts the policy matches, in the order given."""
    return [f["id"] for f in facts if holds(policy.when, f)]
