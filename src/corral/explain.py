"""`corral explain`: why a policy would (or would not) act on one entity.

For one job, frame, instance or worker: every enabled policy of its kind, condition
by condition (the actual value, the expected value, pass or fail, and where the
condition is written), then the verdict of the *real* planner run over the whole farm
(so cooldowns, limits, conflicts and the state model are accounted for exactly as a
cycle would), how long until a failing duration condition would hold, and the latest
transitions of the entity from the log.  Pure apart from `entity_history`, which
reads the store.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from corral.cycle import plan_farm
from corral.facts import FIELDS, MISSING, FactBuilder, get_path
from corral.farm import Farm, Frame, avoided
from corral.plan import Plan
from corral.policy.compiler import next_flip
from corral.policy.loader import format_duration
from corral.policy.model import All, Cmp, Cond, Not, Policy
from corral.policy.reference import holds
from corral.policyset import PolicySet
from corral.states import Kind

if TYPE_CHECKING:
    from corral.ports import LogEntry
    from corral.store.store import Store

SYMBOLS = {
    "eq": "=", "ne": "≠", "lt": "<", "lte": "≤", "gt": ">", "gte": "≥", "in": "in", "not_in": "not in",
    "regex": "matches", "glob": "like", "exists": "exists",
}
#: When negated, an order comparison turns into its opposite.


class UnknownEntity(LookupError):
    """The entity is not in the farm; the message names it and hints at the id format."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class CondRow:
    """One line of a condition trace: a comparison (leaf) or an all/any/not group."""

    depth: int
    label: str
    passed: bool
    leaf: bool
    where: str = ""
    path: str = ""
    op: str = ""
    expected: str = ""
    actual: str = ""
    holds_in: str | None = None
    negated: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"depth": self.depth, "condition": self.label, "pass": self.passed}
        if self.leaf:
            out.update(field=self.path, op=self.op, expected=self.expected, actual=self.actual, where=self.where)
            if self.holds_in:
                out["holds_in"] = self.holds_in
        return out


@dataclass
class PolicyVerdict:
    """One policy against one entity."""

    policy: Policy
    matched: bool
    rows: list[CondRow]
    verdict: str  # would-act | would-not-act | skipped
    detail: str
    category: str | None = None  # for skipped: cooldown | limit | conflict | duplicate | illegal
    matches_in: str | None = None

    @property
    def source(self) -> str:
        return relative(str(self.policy.source or ""))

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "source": self.source,
            "mode": self.policy.mode,
            "priority": self.policy.priority,
            "matched": self.matched,
            "verdict": self.verdict,
            **({"skipped": self.category} if self.category else {}),
            "detail": self.detail,
            **({"matches_in": self.matches_in} if self.matches_in else {}),
            "conditions": [r.to_json() for r in self.rows],
        }


@dataclass
class Explanation:
    kind: Kind
    ident: str
    state: str
    now: datetime
    verdicts: list[PolicyVerdict]
    other_kinds_disabled: list[str] = field(default_factory=list)
    history: list[LogEntry] | None = None
    #: Hosts kept away from the frame (a retry that avoided the hosts that failed it).
    avoided: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "id": self.ident,
            "state": self.state,
            "now": self.now.isoformat(),
            "policies": [v.to_json() for v in self.verdicts],
            **({"avoided_hosts": self.avoided} if self.avoided else {}),
            "disabled": self.other_kinds_disabled,
            **({"history": [_row_json(r) for r in self.history]} if self.history is not None else {}),
        }


# --- values ---------------------------------------------------------------------------------


def relative(where: str) -> str:
    """`file:line:col` with the file relative to the current folder when it is below it."""
    import os

    if not where.startswith("/"):
        return where
    try:
        rel = os.path.relpath(where)
    except ValueError:
        return where
    return where if rel.startswith("..") else rel


def field_type(kind: Kind, path: str) -> str:
    spec = FIELDS[kind].get(path)
    return spec.type if spec else ""


def show(value: Any, ftype: str = "") -> str:
    """A value as a wrangler writes it: durations as 1h30m, lists as [a, b]."""
    if value is None or value is MISSING:
        return "(missing)"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(show(v, ftype) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if ftype == "duration" and isinstance(value, int | float):
        return format_duration(float(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _growing(path: str, fact: Mapping[str, Any], kind: Kind) -> bool:
    """Duration fields grow with the clock (but those fixed by what happened, such as
    `failing_for`); a frame's run_time only while it runs."""
    spec = FIELDS[kind].get(path)
    if field_type(kind, path) != "duration" or (spec is not None and not spec.grows):
        return False
    if path == "run_time":
        return fact.get("state") == "running"
    return True


def _flips_in(cmp: Cmp, fact: Mapping[str, Any], kind: Kind) -> float | None:
    """Seconds until a duration comparison changes its answer, if time alone moves it
    (`next_flip`, which the engine schedules its wake-ups with)."""
    actual = get_path(dict(fact), cmp.path)
    if actual is MISSING or not _growing(cmp.path, fact, kind):
        return None
    return next_flip(cmp, actual, 0.0)


# --- the trace --------------------------------------------------------------------------


def trace_rows(cond: Cond, fact: Mapping[str, Any], kind: Kind, depth: int = 0, negated: bool = False) -> list[CondRow]:
    """Every comparison of `cond` on `fact`, with all/any/not groups, no short-circuit.

    A leaf's `passed` is the comparison itself; a group's is the group's result (so a
    comparison under `not:` that passes makes the `not:` fail).
    """
    fact = dict(fact)
    if isinstance(cond, Cmp):
        ftype = field_type(kind, cond.path)
        result = holds(cond, fact)
        wait = None if result != negated else _flips_in(cond, fact, kind)
        expected = show(cond.value, ftype)
        return [CondRow(
            depth, f"{cond.path} {SYMBOLS.get(cond.op, cond.op)} {expected}", result, True, relative(str(cond.pos or "")),
            cond.path, cond.op, expected, show(get_path(fact, cond.path), ftype),
            f"holds in {format_duration(wait)}" if wait is not None else None, negated,
        )]
    if isinstance(cond, Not):
        inner = trace_rows(cond.item, fact, kind, depth + 1, not negated)
        return [CondRow(depth, "not:", not holds(cond.item, fact), False), *inner]
    rows: list[CondRow] = []
    if isinstance(cond, All) and depth == 0:
        for item in cond.items:
            rows.extend(trace_rows(item, fact, kind, depth, negated))
        return rows
    label = "all of:" if isinstance(cond, All) else "any of:"
    rows.append(CondRow(depth, label, holds(cond, fact), False))
    for item in cond.items:
        rows.extend(trace_rows(item, fact, kind, depth + 1, negated))
    return rows


def failing_rows(rows: Sequence[CondRow]) -> list[CondRow]:
    """The comparisons that keep a policy from matching (for short summaries)."""
    return [r for r in rows if r.leaf and r.passed == r.negated]


def matches_in(policy: Policy, farm: Farm, kind: Kind, ident: str, now: datetime, fact: Mapping[str, Any]) -> float | None:
    """If waiting alone would make the policy match, how long (checked by re-evaluating later)."""
    waits = sorted({_flips_in(c, fact, kind) or 0.0 for c, _ in _cmps(policy.when)} - {0.0})
    for wait in waits:
        later = now + timedelta(seconds=wait)
        if holds(policy.when, FactBuilder(farm, later).fact(kind, ident)):
            return wait
    return None


def _cmps(cond: Cond, negated: bool = False) -> list[tuple[Cmp, bool]]:
    if isinstance(cond, Cmp):
        return [(cond, negated)]
    if isinstance(cond, Not):
        return _cmps(cond.item, not negated)
    return [pair for item in cond.items for pair in _cmps(item, negated)]


# --- entities ---------------------------------------------------------------------------


def normalise_id(kind: Kind, ident: str) -> str:
    return str(int(ident)) if kind is Kind.JOB and ident.strip().isdigit() else ident.strip()


def check_entity(farm: Farm, kind: Kind, ident: str) -> None:
    """Raise UnknownEntity naming the entity, with the id format and close names."""
    try:
        farm.entity(kind, ident)
        return
    except KeyError:
        pass
    if kind is Kind.JOB:
        known = [str(j) for j in farm.jobs]
        hint = "" if ident.isdigit() else " (a job is named by its number, e.g. 12)"
    elif kind is Kind.FRAME:
        known = [f.key for j in farm.jobs.values() for f in j.frames.values()]
        hint = " (a frame is named JOB:FRAME, e.g. 12:1001)"
        job, sep, _ = ident.partition(":")
        if sep and job.isdigit() and int(job) in farm.jobs:
            numbers = sorted(farm.jobs[int(job)].frames)
            span = f"{numbers[0]}-{numbers[-1]}" if numbers else "none"
            hint = f" (job {job} has frames {span})"
    elif kind is Kind.INSTANCE:
        known = list(farm.instances)
        hint = " (an instance is named by its id, e.g. 101.3)"
    else:
        known = list(farm.workers)
        hint = " (a worker is named by its host name)"
    close = difflib.get_close_matches(ident, known, n=1, cutoff=0.6)
    suggestion = f"; did you mean '{close[0]}'?" if close else ""
    raise UnknownEntity(f"no {kind} '{ident}' in the farm{hint}{suggestion}")


# --- explain -----------------------------------------------------------------------------


def explain(
    farm: Farm,
    policies: Sequence[Policy],
    kind: Kind,
    ident: str,
    *,
    now: datetime,
    last_actions: Mapping[tuple[str, str, str], datetime] | None = None,
    engine: str = "durable",
    plan: Plan | None = None,
) -> Explanation:
    """Explain every enabled policy of `kind` against one entity (UnknownEntity if absent)."""
    ident = normalise_id(kind, ident)
    check_entity(farm, kind, ident)
    if plan is None:
        plan, _ = plan_farm(farm, PolicySet(policies), now=now, engine=engine, last_actions=dict(last_actions or {}))
    fact = FactBuilder(farm, now).fact(kind, ident)
    state = str(farm.entity(kind, ident).state)
    verdicts = []
    for policy in policies:
        if policy.kind is not kind or not policy.enabled:
            continue
        rows = trace_rows(policy.when, fact, kind)
        matched = holds(policy.when, fact)
        verdict = _verdict(policy, matched, plan, kind, ident)
        if not matched:
            wait = matches_in(policy, farm, kind, ident, now, fact)
            if wait is not None:
                verdict.matches_in = format_duration(wait)
                verdict.detail += f"; it would match in {format_duration(wait)} if nothing else changes"
        verdict.rows = rows
        verdicts.append(verdict)
    disabled = [p.name for p in policies if p.kind is kind and not p.enabled]
    entity = farm.entity(kind, ident)
    kept_away = sorted(avoided(entity)) if isinstance(entity, Frame) else []
    return Explanation(kind, ident, state, now, verdicts, disabled, avoided=kept_away)


def _verdict(policy: Policy, matched: bool, plan: Plan, kind: Kind, ident: str) -> PolicyVerdict:
    mine = [t for t in plan.transitions if t.policy == policy.name and t.kind is kind and t.ident == ident]
    skipped = [s for s in plan.skipped if s.policy == policy.name and s.kind is kind and s.ident == ident]
    if mine:
        acts = ", then ".join(f"{t.action} ({t.from_state} → {t.to_state})" for t in mine)
        audit = " [audit mode: reported, not applied]" if policy.audit else ""
        detail = f"would {acts}{audit}: {mine[0].reason}"
        if skipped:
            detail += f"; then stopped: {skipped[0].category}: {skipped[0].why}"
        return PolicyVerdict(policy, matched, [], "would-act", detail)
    if skipped:
        s = skipped[0]
        return PolicyVerdict(policy, matched, [], "skipped", f"matches, but would not act ({s.category}): {s.why}",
                             s.category)
    if matched:
        return PolicyVerdict(policy, matched, [], "would-not-act",
                             "matches, but the planner made no transition of it (not due this cycle?)")
    return PolicyVerdict(policy, matched, [], "would-not-act", "would not act: its conditions do not all hold")


# --- the log ------------------------------------------------------------------------------


def entity_history(store: Store, kind: Kind, ident: str, limit: int = 10) -> list[LogEntry]:
    """The entity's latest transitions, newest first (read only)."""
    return store.transitions(entity=(kind, ident), limit=limit)


def _row_json(r: LogEntry) -> dict[str, Any]:
    return {"at": r.at.isoformat(), "action": r.action, "from": r.from_state, "to": r.to_state, "actor": r.actor,
            "policy": r.policy, "reason": r.reason, "cycle": r.cycle_id, "applied": r.applied}


# --- text --------------------------------------------------------------------------------


def render(ex: Explanation) -> list[str]:
    """The explanation as plain lines (the CLI prints them without markup)."""
    lines = [f"{ex.kind} {ex.ident} ({ex.state}) as of {ex.now.isoformat()}"]
    if ex.avoided:
        lines.append(f"kept away from it: {', '.join(ex.avoided)} (a retry that avoided the hosts that failed it)")
    if not ex.verdicts:
        lines.append(f"no enabled policy matches {ex.kind}s")
    for v in ex.verdicts:
        mode = ", audit" if v.policy.audit else ""
        lines.append("")
        lines.append(f"{v.policy.name} (priority {v.policy.priority}{mode}) {v.source}")
        width = max((len(r.label) + 2 * r.depth for r in v.rows), default=0)
        for r in v.rows:
            pad = "  " * r.depth
            mark = "pass" if r.passed else "FAIL"
            if r.leaf:
                extra = f"  ({r.holds_in})" if r.holds_in else ""
                neg = " (under not)" if r.negated else ""
                lines.append(f"  {mark}  {pad}{r.label:<{width - 2 * r.depth}}  actual {r.actual}{neg}{extra}  {r.where}")
            else:
                lines.append(f"  {mark}  {pad}{r.label}")
        label = {"would-act": "WOULD ACT", "would-not-act": "would not act", "skipped": "SKIPPED"}[v.verdict]
        lines.append(f"  → {label}: {v.detail}" if v.verdict != "would-not-act" or v.matched else f"  → {v.detail}")
    if ex.other_kinds_disabled:
        lines.append("")
        lines.append(f"disabled (not evaluated): {', '.join(ex.other_kinds_disabled)}")
    if ex.history is not None:
        lines.append("")
        if not ex.history:
            lines.append("history: no transitions of this entity in the log")
        else:
            lines.append(f"history (latest {len(ex.history)}, newest first):")
            for h in ex.history:
                who = f"policy {h.policy}" if h.policy else h.actor
                would = "would " if not h.applied else ""
                cycle = f" [cycle {h.cycle_id}]" if h.cycle_id else ""
                lines.append(f"  {h.at.isoformat()}  {would}{h.action} {h.from_state} → {h.to_state} by {who}{cycle}: {h.reason}")
    return lines
