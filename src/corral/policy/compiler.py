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
  computes in Python before asserting the fact, and the rule tests the probe;
- `in` / `not_in`: the engine rejects `$in`, so they become `$or` / `$and` chains.
Every pattern also tests a marker field: the engine matches rules against its own
session-state object too, and a rule with no marker would fire on it (and loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.policy.model import All, AnyOf, Cmp, Cond, Not, Policy
from corral.policy.operators import OPERATORS
from corral.states import Kind

MARKER = "_corral"
PROBE_PREFIX = "_p"

_NEGATED_CMP = {"lt": "$gte", "lte": "$gt", "gt": "$lte", "gte": "$lt"}
_CMP = {"lt": "$lt", "lte": "$lte", "gt": "$gt", "gte": "$gte"}


@dataclass
class Probe:
    """A condition the adapter evaluates in Python and hands the engine as a boolean."""

    name: str
    cmp: Cmp


@dataclass
class CompiledKind:
    """The ruleset of one kind: rule patterns by policy name, and the probes they use."""

    kind: Kind
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)


def glob_to_lua(pattern: str) -> str:
    """fnmatch syntax to a Lua pattern that must match the whole string."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if end == -1:
                out.append("%[")
            else:
                body = pattern[i + 1:end]
                neg = body.startswith("!")
                body = body[1:] if neg else body
                parts = []
                j = 0
                while j < len(body):
                    if j + 2 < len(body) and body[j + 1] == "-":
                        parts.append(_lua_escape_set(body[j]) + "-" + _lua_escape_set(body[j + 2]))
                        j += 3
                    else:
                        parts.append(_lua_escape_set(body[j]))
                        j += 1
                out.append("[" + ("^" if neg else "") + "".join(parts) + "]")
                i = end
        elif c.isalnum() or c == "_":
            out.append(c)
        else:
            out.append("%" + c)
        i += 1
    return "".join(out)


def _lua_escape_set(c: str) -> str:
    return c if c.isalnum() else "%" + c


def _needs_probe(cmp: Cmp, negated: bool) -> bool:
    if cmp.op == "regex":
        return True
    if cmp.op == "glob":
        # $mt has no negation, and Lua patterns cannot express every fnmatch
        # character class; the probe keeps exact fnmatch semantics in both cases.
        return negated or not _glob_is_simple(str(cmp.value))
    return False


def _glob_is_simple(pattern: str) -> bool:
    return "[" not in pattern and "]" not in pattern


class _Compiler:
    def __init__(self, out: CompiledKind) -> None:
        self.out = out

    def probe(self, cmp: Cmp) -> str:
        for p in self.out.probes:
            if p.cmp == cmp:
                return p.name
        name = f"{PROBE_PREFIX}{len(self.out.probes)}"
        self.out.probes.append(Probe(name, cmp))
        return name

    def cond(self, cond: Cond, negated: bool = False) -> dict[str, Any]:
        if isinstance(cond, Not):
            return self.cond(cond.item, not negated)
        if isinstance(cond, All | AnyOf):
            is_and = isinstance(cond, All) != negated
            parts = [self.cond(c, negated) for c in cond.items]
            return parts[0] if len(parts) == 1 else {("$and" if is_and else "$or"): parts}
        return self.cmp(cond, negated)

    def cmp(self, cmp: Cmp, negated: bool) -> dict[str, Any]:
        self.out.paths.add(cmp.path)
        path, value = cmp.path, cmp.value
        if _needs_probe(cmp, negated):
            return {self.probe(cmp): not negated}
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
        pattern = compiler.cond(policy.when)
        out.rules[policy.name] = {"$and": [{MARKER: 1}, pattern]}
    return out


assert set(OPERATORS) == {"eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "regex", "glob", "exists"}, (
    "a new operator needs a compiled form here"
)
