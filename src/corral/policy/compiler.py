"""Compiling policies into durable_rules rulesets (plain dicts; no engine import here).

One ruleset per entity kind holds one rule per policy of that kind.  Each rule is a
single-fact pattern over the kind's facts; related entities are nested fields of the
fact, so no joins (and none of the engine's quadratic join paths) are needed.

Three things the engine cannot say directly are handled here, and the parity tests
hold them to the reference meaning in `corral.policy.operators`:
- negation: the engine has no general `not`; it is pushed down to the comparisons
  (De Morgan), keeping "a missing field fails every comparison" by adding `$nex`;
- regular expressions: the engine's `$mt` is a Lua pattern, not a regex, so each
  regex (and each negated glob) becomes a *probe*: a boolean field that the adapter
  computes in Python before asserting the fact, and the rule tests the probe; so
  does a number the engine cannot parse (1e-05, inf), and a whole condition with
  more `$and`/`$or` groups than the engine accepts in one rule (see MAX_GROUPS);
- `in` / `not_in`: the engine rejects `$in`, so they become `$or` / `$and` chains;
- durations (`time_in_state >= 10m`): the value changes every second, so a fact
  holding it would have to be re-asserted every cycle.  Each duration comparison is
  a probe instead; the adapter re-checks it when it is due to flip (`Probe.wake`),
  and the fact the engine holds changes only when something really changed.
Each policy also gets a *gate*: its top-level comparisons that do not depend on
time.  An entity failing every gate of its kind cannot match, so it is not sent to
the engine at all (most frames of a farm are not failed, most jobs not blocked).
Every pattern also tests a marker field: the engine matches rules against its own
session-state object too, and a rule with no marker would fire on it (and loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from corral.facts import FIELDS
from corral.policy.model import All, AnyOf, Cmp, Cond, Not, Policy, pinned_states
from corral.policy.operators import OPERATORS
from corral.states import Kind

MARKER = "_corral"
PROBE_PREFIX = "_p"

_CMP = {"lt": "$lt", "lte": "$lte", "gt": "$gt", "gte": "$gte"}


@dataclass
class Probe:
    """A condition the adapter evaluates in Python and hands the engine as a boolean."""

    name: str
    cond: Cond


@dataclass
class CompiledKind:
    """The ruleset of one kind: rule patterns by policy name, the probes they use, the
    fields the engine's facts carry (`paths`; a field read only through probes is not
    one of them, so a duration ticking by does not change the fact), and each policy's
    gate (top-level, time-independent comparisons)."""

    kind: Kind
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)
    gates: dict[str, tuple[Cmp, ...]] = field(default_factory=dict)

    @property
    def timed(self) -> list[Probe]:
        """Probes over durations: they can flip as time passes."""
        return [p for p in self.probes if isinstance(p.cond, Cmp) and _grows_with_time(self.kind, p.cond.path)]


def _grows_with_time(kind: Kind, path: str) -> bool:
    """A duration that grows with the clock (`FieldSpec.grows`): its comparisons are
    probes, re-checked when due, and stay out of the gates.  One fixed by what happened
    (`failing_for`) is an ordinary field of the engine's fact."""
    spec = FIELDS[kind].get(path)
    return spec is not None and spec.type == "duration" and spec.grows


def gate_of(kind: Kind, when: Cond) -> tuple[Cmp, ...]:
    """The top-level comparisons of a condition that do not depend on time: every match passes them."""
    items = when.items if isinstance(when, All) else (when,)
    return tuple(c for c in items if isinstance(c, Cmp) and not _grows_with_time(kind, c.path))


def admitted_states(gates: Iterable[tuple[Cmp, ...]]) -> frozenset[str] | None:
    """The states an entity must be in to pass at least one of `gates` (None: any state
    may): what lets the cycle skip the facts of, say, every complete frame."""
    allowed: set[str] = set()
    for gate in gates:
        states = pinned_states(All(gate))
        if states is None:
            return None
        allowed |= states
    return frozenset(allowed)


def screen_of(kind: Kind, policies: Iterable[Policy], first: Callable[[str], bool]) -> list[tuple[Cmp, ...]] | None:
    """Each policy's gate cut down to its comparisons on fields of a fact's first stage
    (`first(path)`; see `FactBuilder.candidate`): an entity that fails all of them fails
    every gate, so the rest of its fact is never built.  None: some policy of the kind
    has no such comparison, so no entity can be ruled out early."""
    screens = []
    for policy in policies:
        if policy.kind is not kind:
            continue
        cut = tuple(c for c in gate_of(kind, policy.when) if first(c.path))
        if not cut:
            return None
        screens.append(cut)
    return screens


def next_flip(cmp: Cmp, value: Any, now: float) -> float | None:
    """When a duration comparison that reads `value` seconds at `now` may change its
    answer as time passes (None: never, while the underlying time stays put)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    k = cmp.value
    if cmp.op in ("gte", "gt", "lt", "lte"):
        return now + (k - value) + (0.001 if cmp.op in ("gt", "lte") else 0.0) if value <= k else None
    if cmp.op in ("in", "not_in", "eq", "ne"):
        targets = [v for v in (k if isinstance(k, tuple) else (k,)) if v >= value]
        return now + (min(targets) - value) if targets else None
    return None


def glob_to_lua(pattern: str) -> str:
    """fnmatch syntax to an engine pattern (`$mt`) that must match the whole string.

    The engine's pattern syntax is Lua-like but not Lua: `%` escapes only its own
    special characters (`%-`, `%:` and `%é` make the engine refuse the whole ruleset),
    so every other character is written as itself.  Used only for globs that
    `_glob_is_simple` accepts; the rest become probes.
    """
    out: list[str] = []
    for c in pattern:
        if c == "*":
            if out[-1:] != [".*"]:
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c in ENGINE_SPECIAL:
            out.append("%" + c)
        else:
            out.append(c)
    return "".join(out)


#: Characters the engine's `$mt` patterns treat specially (escaped with `%`).
ENGINE_SPECIAL = frozenset("%().*+?[]{}|")


def _needs_probe(cmp: Cmp, negated: bool) -> bool:
    if cmp.op == "regex" or cmp.path == "id":
        # `id` is the engine's fact identity: it does not compare a numeric id as a
        # number (`id == 6` never matches), so conditions on it are decided in Python.
        return True
    if cmp.op == "glob":
        # $mt has no negation, and the engine's patterns cannot express every fnmatch
        # feature; the probe keeps exact fnmatch semantics in both cases.
        return negated or not _glob_is_simple(str(cmp.value))
    values = cmp.value if isinstance(cmp.value, tuple) else (cmp.value,)
    return not all(engine_can_read(v) for v in values)


def _glob_is_simple(pattern: str) -> bool:
    """Globs the engine matches exactly like fnmatch: text, optionally ending in `*`.

    The engine's `$mt` is a home-grown automaton that gets other shapes wrong:
    `.*aa` does not match 'aaaa', `.*aaab` makes it refuse the whole ruleset (error
    503).  The empty pattern is refused too.  And `?` (`.`) never matches a
    character the engine stores JSON-escaped (`"`, `\\`, control characters).
    Everything else (and character classes) becomes a probe.
    """
    stem = pattern.rstrip("*")
    return bool(pattern) and not any(c in stem for c in "[]?*")


def engine_can_read(value: Any) -> bool:
    """Whether the engine's JSON parser reads `value` back as the same value.

    It rejects numbers written with an exponent (Python writes 0.00001 as 1e-05 and
    10**16 as 1e+16; a fact holding 1e-05 cannot be asserted, a rule comparing with
    1e+16 cannot be created) and infinities/NaN.
    """
    if isinstance(value, float):
        return math.isfinite(value) and "e" not in repr(value)
    if isinstance(value, dict):
        return all(engine_can_read(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(engine_can_read(v) for v in value)
    return True


class _Compiler:
    def __init__(self, out: CompiledKind) -> None:
        self.out = out
        self.kind = out.kind

    def probe(self, cond: Cond) -> str:
        for p in self.out.probes:
            if p.cond == cond:
                return p.name
        name = f"{PROBE_PREFIX}{len(self.out.probes)}"
        self.out.probes.append(Probe(name, cond))
        return name

    def cond(self, cond: Cond, negated: bool = False) -> dict[str, Any]:
        if isinstance(cond, Not):
            return self.cond(cond.item, not negated)
        if isinstance(cond, All | AnyOf):
            op = "$and" if isinstance(cond, All) != negated else "$or"
            parts: list[dict[str, Any]] = []
            for item in cond.items:
                part = self.cond(item, negated)
                # `$and` inside `$and` (or `$or` in `$or`) is one group: fewer groups, same meaning.
                parts.extend(part[op] if list(part) == [op] else [part])
            return parts[0] if len(parts) == 1 else {op: parts}
        return self.cmp(cond, negated)

    def rule(self, when: Cond) -> dict[str, Any]:
        """A policy's pattern; one probe for the whole condition when the engine would refuse it."""
        probes = len(self.out.probes)
        pattern = self.cond(when)
        if _groups(pattern) > MAX_GROUPS:
            del self.out.probes[probes:]
            pattern = {self.probe(when): True}
        return {"$and": [{MARKER: 1}, pattern]}

    def cmp(self, cmp: Cmp, negated: bool) -> dict[str, Any]:
        path, value = cmp.path, cmp.value
        if _needs_probe(cmp, negated) or _grows_with_time(self.kind, cmp.path):
            return {self.probe(cmp): not negated}
        self.out.paths.add(path)  # a probed field stays out of the engine's fact: its probe stands for it
        if cmp.op == "exists":
            return {("$ex" if value != negated else "$nex"): {path: 1}}
        if cmp.op == "glob":
            return {"$mt": {path: glob_to_lua(value)}}
        positive = self.positive(cmp)
        if not negated:
            return positive
        return {"$or": [{"$nex": {path: 1}}, self.positive(_negate(cmp))]}

    def positive(self, cmp: Cmp) -> dict[str, Any]:
        path, value, op = cmp.path, cmp.value, cmp.op
        if op == "eq":
            return {path: value}
        if op == "ne":
            return {"$neq": {path: value}}
        if op in _CMP:
            return {_CMP[op]: {path: value}}
        if op == "in":
            alts = [{path: v} for v in value]
            return alts[0] if len(alts) == 1 else {"$or": alts}
        if op == "not_in":
            alts = [{"$neq": {path: v}} for v in value]
            return {"$and": [{"$ex": {path: 1}}, *alts]}
        raise ValueError(f"operator {op} has no positive form")  # pragma: no cover - loader prevents it


def _negate(cmp: Cmp) -> Cmp:
    """The comparison that holds exactly when `cmp` fails on a present field."""
    flip = {"eq": "ne", "ne": "eq", "in": "not_in", "not_in": "in", "lt": "gte", "gte": "lt", "lte": "gt", "gt": "lte"}
    return Cmp(cmp.path, flip[cmp.op], cmp.value, cmp.pos)


def compile_kind(kind: Kind, policies: list[Policy]) -> CompiledKind:
    """The patterns of every policy of `kind`.  Assumes loader-validated policies."""
    out = CompiledKind(kind)
    compiler = _Compiler(out)
    for policy in policies:
        if policy.kind is not kind:
            continue
        out.rules[policy.name] = compiler.rule(policy.when)
        out.gates[policy.name] = gate_of(kind, policy.when)
    return out


#: The engine refuses a rule with more than 15 `$and`/`$or` groups (error 113,
#: MAX_SEQUENCE_EXPRESSIONS); the marker's `$and` is one of them.  `in`, `not_in` and
#: every negated comparison cost a group, so long policies do reach it.
MAX_GROUPS = 14


def _groups(pattern: Any) -> int:
    """How many `$and`/`$or` groups a pattern holds."""
    if not isinstance(pattern, dict):
        return 0
    count = 0
    for key, value in pattern.items():
        if key in ("$and", "$or"):
            count += 1 + sum(_groups(p) for p in value)
    return count


assert set(OPERATORS) == {"eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "regex", "glob", "exists"}, (
    "a new operator needs a compiled form here"
)
