"""Planning: matches become an ordered, checked list of transitions.  Pure.

The planner is where a bad policy is kept from wrecking a farm.  In order:
1. cooldown: an entity a policy acted on recently is left alone;
2. limits: a policy that matches more than `max_actions` entities, or more than
   `max_percent` of all entities of its kind, acts on *none* this cycle and says why
   (a rule that suddenly matches half the farm is far more likely wrong than right);
3. conflicts: when several enforcing policies match one entity, the highest priority
   wins and the others are reported (a job is never both blocked and unblocked);
4. legality: the winners are played forward on the farm (inside `Farm.scratch()`, so
   nothing changes), and a proposal the state model forbids is dropped with the
   state model's reason.
Audit-mode policies go through the same steps, played as if they were switched on
(so `corral run --dry-run` shows exactly what the daemon would do), but they never take
anything away from the enforcing ones: only their own would-be transitions are reported.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from operator import attrgetter
from typing import Any

from corral.effects import apply_action
from corral.evaluate import LazyFact, Match
from corral.facts import FIELDS, MISSING, Aggregates
from corral.failures import DEFAULT_CLASSES, FailureClasses
from corral.farm import Farm
from corral.policy.loader import TEMPLATE_RE, format_duration, noun_for, template_names
from corral.policy.model import Policy
from corral.policy.reference import getter
from corral.recheck import Key, Rechecker, why_not
from corral.states import Action, IllegalAction, Kind

KIND_ORDER = {k: i for i, k in enumerate(Kind)}


@dataclass(frozen=True)
class Transition:
    """One planned change, exactly as it will be applied (or reported, in audit mode)."""

    policy: str
    priority: int
    mode: str
    kind: Kind
    ident: str
    action: Action
    params: tuple[tuple[str, Any], ...]
    from_state: str
    to_state: str
    reason: str

    @property
    def audit(self) -> bool:
        return self.mode == "audit"

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "kind": str(self.kind),
            "id": int(self.ident) if self.kind is Kind.JOB else self.ident,
            "action": str(self.action),
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
            "mode": self.mode,
            **({"params": dict(self.params)} if self.params else {}),
        }


@dataclass(slots=True)  # not frozen: tens of thousands a cycle when a big farm trips a limit
class Skipped:
    """A match that will not become a transition, and why."""

    policy: str
    kind: Kind
    ident: str
    action: str
    category: str  # cooldown | limit | conflict | duplicate | superseded | illegal
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "kind": str(self.kind), "id": self.ident, "action": self.action,
                "skipped": self.category, "why": self.why}


@dataclass(slots=True)
class Held:
    """Every match of a policy that went over its limit this cycle, held back whole."""

    policy: str
    kind: Kind
    idents: Sequence[Any]
    action: str
    why: str


@dataclass
class Plan:
    transitions: list[Transition] = field(default_factory=list)
    #: Matches refused one by one (cooldown, conflict, duplicate, illegal).
    refused: list[Skipped] = field(default_factory=list)
    #: Policies over their limits, with the matches they hold back: a policy gone wrong
    #: on a big farm matches tens of thousands of entities every cycle, and the daemon
    #: never lists them, so they are listed (`skipped`) only when someone asks.
    held: list[Held] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> list[Skipped]:
        """Every match that will not become a transition, and why (a new list on each
        access, the held-back ones listed out: read it once)."""
        return [*self.refused, *(Skipped(h.policy, h.kind, str(i), h.action, "limit", h.why)
                                 for h in self.held for i in h.idents)]

    @property
    def enforced(self) -> list[Transition]:
        return [t for t in self.transitions if not t.audit]

    def to_json(self) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.transitions]


def reason_paths(policies: Iterable[Policy]) -> dict[Kind, set[str]]:
    """The fact fields the enabled policies' reasons cite, per kind: all that a plan reads
    of a match's fact (the daemon builds no more of it than that)."""
    out: dict[Kind, set[str]] = {kind: set() for kind in Kind}
    for policy in policies:
        if policy.enabled:
            out[policy.kind] |= {name for name in template_names(policy.reason) if name in FIELDS[policy.kind]}
    return out


def render_reason(template: str, fact: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """Fill `{field}` and `{param}` in a reason; durations read as 1h30m, not seconds."""
    whole = fact.whole() if isinstance(fact, LazyFact) else fact if isinstance(fact, dict) else dict(fact)
    out: list[str] = []
    for literal, name, get, duration, noun in _pieces(template):
        out.append(literal)
        if name is None:
            continue
        got = get(whole)
        if got is MISSING:
            got = params.get(name, "unknown")
        if isinstance(got, float):
            out.append(format_duration(got) if duration else f"{got:g}")
        else:
            out.append(str(got))
        if noun is not None:
            out.append(" " + noun_for(got, noun))
    return "".join(out)


#: The fields a reason shows as a duration (1h30m, not seconds), whatever the kind.
_DURATIONS = frozenset(name for fields in FIELDS.values() for name, spec in fields.items() if spec.type == "duration")
_Piece = tuple[str, str | None, Callable[[dict[str, Any]], Any], bool, str | None]


def _no_name(_fact: dict[str, Any]) -> Any:
    return MISSING


@lru_cache(maxsize=4096)
def _pieces(template: str) -> tuple[_Piece, ...]:
    """A reason template split once into (literal text, then the name cited or None, its
    getter, whether it is a duration): every transition of every cycle renders one."""
    pieces: list[_Piece] = []
    at = 0
    for m in TEMPLATE_RE.finditer(template):
        name = m.group(1)
        pieces.append((template[at:m.start()], name, getter(name), name in _DURATIONS, m.group(2)))
        at = m.end()
    pieces.append((template[at:], None, _no_name, False, None))
    return tuple(pieces)


@dataclass(slots=True)
class Found:
    """Every entity one policy matched this cycle.  Matches are made (`fact(kind, ident)`
    looked up) only for the entities that go on to be played: a policy over its limit
    holds all of its back without one object per entity."""

    policy: Policy
    kind: Kind
    idents: Sequence[Any]
    fact: Callable[[Kind, str], Mapping[str, Any]]


class Cooldowns:
    """When each policy last acted on each entity, by policy (from the transition log):
    what cooldowns are checked against.  The daemon keeps one between cycles and notes
    only the actions logged since the last (`corral.store.store.read_log`)."""

    def __init__(self, last_actions: Mapping[tuple[Any, str, str], datetime] | None = None) -> None:
        self.by_policy: dict[str, dict[str, datetime]] = defaultdict(dict)
        if last_actions:
            self.note((policy, kind, ident, at) for (policy, kind, ident), at in last_actions.items())

    def note(self, actions: Iterable[tuple[str | None, str, str, datetime]]) -> None:
        """Take in actions (policy, kind, entity id, when); the latest per entity counts."""
        for policy, _kind, ident, at in actions:
            if policy is None:  # a wrangler's own action: no policy's cooldown
                continue
            seen = self.by_policy[policy]
            known = seen.get(ident)
            if known is None or at > known:
                seen[ident] = at


#: When each (policy, kind, entity) last acted, or the same kept as `Cooldowns`.
Acted = Mapping[tuple[str, str, str], datetime] | Cooldowns


def make_plan(
    farm: Farm,
    matches: Sequence[Match],
    *,
    now: datetime,
    last_actions: Acted | None = None,
    totals: Mapping[Kind, int] | None = None,
    aggregates: Aggregates | None = None,
    classes: FailureClasses = DEFAULT_CLASSES,
) -> Plan:
    """Turn matches into a plan (see the module docstring).  Leaves `farm` unchanged."""
    by_policy: dict[str, list[Match]] = defaultdict(list)
    for m in matches:
        by_policy[m.policy.name].append(m)
    found = [Found(group[0].policy, group[0].kind, [m.ident for m in group], _lookup({m.ident: m.fact for m in group}))
             for group in by_policy.values()]
    return plan_found(farm, found, now=now, last_actions=last_actions, totals=totals, aggregates=aggregates,
                      classes=classes)


def _lookup(facts: dict[str, Mapping[str, Any]]) -> Callable[[Kind, str], Mapping[str, Any]]:
    return lambda _kind, ident: facts[ident]


def plan_found(
    farm: Farm,
    found: Sequence[Found],
    *,
    now: datetime,
    last_actions: Acted | None = None,
    totals: Mapping[Kind, int] | None = None,
    memo: PlanMemo | None = None,
    changed: Container[tuple[str, Any]] | None = None,
    aggregates: Aggregates | None = None,
    classes: FailureClasses = DEFAULT_CLASSES,
) -> Plan:
    """`make_plan` over matches grouped by policy (what the incremental cycle has).

    `memo`: the daemon's record of the previous plan (`PlanMemo`), with the parts whose
    entities `changed` since (("job", id), ("worker", name)).  `aggregates`: the farm's
    counts, for checking a match again once earlier transitions reached it (counted
    afresh if not given; put back as they were when the plan is made)."""
    totals = totals if totals is not None else _totals(farm)
    acted = (last_actions if isinstance(last_actions, Cooldowns) else Cooldowns(last_actions)).by_policy
    plan = Plan()
    survivors: list[Match] = []
    for f in sorted(found, key=lambda f: f.policy.name):
        policy, name = f.policy, f.policy.name
        plan.matched[name] = len(f.idents)
        first = str(policy.actions[0].action)
        cooldown, recent = policy.cooldown, acted.get(name)
        idents: Sequence[Any] = f.idents
        if cooldown and recent:
            kept = []
            for ident in idents:
                at = recent.get(str(ident))
                if at is not None and (now - at).total_seconds() < cooldown:
                    waited = format_duration((now - at).total_seconds())
                    plan.refused.append(Skipped(name, f.kind, str(ident), first, "cooldown",
                                                f"acted on it {waited} ago; cooldown is {format_duration(cooldown)}"))
                else:
                    kept.append(ident)
            idents = kept
        why = _over_limit(policy, len(idents), totals.get(policy.kind, 0))
        if why:
            plan.notes[name] = why
            plan.held.append(Held(name, f.kind, idents, first, why))
            continue
        survivors.extend(Match(policy, f.kind, str(i), f.fact(f.kind, str(i))) for i in idents)
    enforcing = [m for m in survivors if not m.policy.audit]
    winners = _ordered(_resolve_conflicts(enforcing, plan))
    # Reasons cite the facts the matches were made on: rendered before anything is played
    # (a match an earlier transition reached is checked again, and its reason rendered again).
    reasons = [_reason(m) for m in winners]
    recorded = (len(plan.transitions), len(plan.refused))
    if memo is None or not _play_all(farm, winners, reasons, now, plan, Rechecker.maker(aggregates, classes), memo, changed,
                                           reuse=True):
        del plan.transitions[recorded[0]:], plan.refused[recorded[1]:]
        _play_all(farm, winners, reasons, now, plan, Rechecker.maker(aggregates, classes), memo, changed, reuse=False)
    auditing = [m for m in survivors if m.policy.audit]
    if auditing:
        # What each audit policy would do if it were switched on: it competes with the
        # enforcing ones by priority and is played after them, but only its own
        # transitions are reported, and nothing it "does" changes the enforced plan.
        trial = Plan()
        winners = _ordered(_resolve_conflicts(enforcing + auditing, trial))
        plan.refused.extend(s for s in trial.refused if s.policy in {m.policy.name for m in auditing})
        reasons = [_reason(m) if m.policy.audit else "" for m in winners]  # (the others' are not reported)
        with farm.scratch():
            checker = Rechecker(farm, now, aggregates, classes)
            try:
                for m, reason in zip(winners, reasons, strict=True):
                    outcome, _keys = _play_checked(farm, m, now, reason, checker, None)
                    if m.policy.audit:
                        _record(plan, outcome)
            finally:
                checker.restore()
    return plan


def _play_all(farm: Farm, winners: Sequence[Match], reasons: Sequence[str], now: datetime, plan: Plan,
              checker_for: Callable[[Farm, datetime], Rechecker], memo: PlanMemo | None,
              changed: Container[tuple[str, Any]] | None, *, reuse: bool) -> bool:
    """Play the winners in order on a scratch farm, each checked again if an earlier one
    reached it (`corral.recheck`); with a memo, reuse what it can.  False: a reused part
    reached another part's matches, and the plan must be played again without reuse."""
    with farm.scratch():
        checker = checker_for(farm, now)
        try:
            if memo is None:
                for m, reason in zip(winners, reasons, strict=True):
                    _record(plan, _play_checked(farm, m, now, reason, checker, None)[0])
                return True
            return memo.play(farm, winners, reasons, now, plan, set() if changed is None else changed, checker,
                             reuse=reuse)
        finally:
            checker.restore()


def _play_checked(farm: Farm, m: Match, now: datetime, reason: str, checker: Rechecker, part: Any
                  ) -> tuple[Played, list[tuple[Key, str]]]:
    """Play one match after checking it again if an earlier transition reached it: its
    outcome, and what it touched (for a memo to replay the touches of a reused part)."""
    hit = checker.reached_by(m)
    if hit is not None:
        ok, fact = checker.holds_now(m)
        if not ok:
            return ([], [Skipped(m.policy.name, m.kind, m.ident, str(m.policy.actions[0].action), "superseded",
                                 f"{hit[0]} earlier in this cycle, and now {why_not(m.kind, m.policy.when, fact)}")]), []
        reason = render_reason(m.policy.reason, checker.fact_for_reason(m), dict(m.policy.params))
    mark = farm.scratch_mark()
    outcome = _play(farm, m, now, reason)
    what = f"policy '{m.policy.name}' planned {m.policy.actions[0].action} on {m.kind} {m.ident}"
    return outcome, checker.played(mark, what, part)


#: What playing one match did: the transitions it makes, or why it was refused.
Played = tuple[list[Transition], list[Skipped]]


@dataclass(frozen=True, slots=True)
class Moved:
    """The parts of a plan whose entities changed (`PlanMemo`): ("job", id) for the jobs,
    ("worker", name) for the workers, asked of the cycle's dirty sets as they are (a set
    of those pairs cost a tuple per dirty job: six thousand a cycle at 1M frames)."""

    jobs: Collection[Any]
    workers: Collection[Any]

    def __contains__(self, part: object) -> bool:
        kind, ident = part if isinstance(part, tuple) and len(part) == 2 else (None, None)
        if kind == "job":
            return ident in self.jobs
        return kind == "worker" and ident in self.workers


class PlanMemo:
    """What each part of the previous plan did, for the daemon's live farm to keep.

    A match's actions change only its own job's entities (or its worker), and whether
    they are legal depends only on those: the plan falls into parts, one per job and one
    per worker.  A part whose entities did not change since the previous plan (`changed`
    names those that did), with the same matches in the same order, and that no other
    part's transition reached then or now (`corral.recheck`), plays out as it did then:
    its outcomes are reused instead of played again on the scratch farm; only their
    reasons are new (they may cite durations).  A dry-running daemon plays the same
    matches cycle after cycle, and a committing one the matches held back (a limit, an
    illegal action) until something changes."""

    def __init__(self) -> None:
        #: part -> (its matches, each one's outcome and touches, whether another part reached it)
        self._parts: dict[tuple[str, Any], tuple[tuple[tuple[str, str], ...],
                                                 list[tuple[Played, list[tuple[Key, str]]]], bool]] = {}

    def play(self, farm: Farm, winners: Sequence[Match], reasons: Sequence[str], now: datetime, plan: Plan,
             changed: Container[tuple[str, Any]], checker: Rechecker, *, reuse: bool = True) -> bool:
        """Play (or reuse) the winners' outcomes into `plan`.  False, with the memo left as
        it was, when a reused part and another part reached each other: the caller plays
        the whole plan again with `reuse=False`."""
        parts = [_part_of(farm, m) for m in winners]
        keys: dict[tuple[str, Any], list[tuple[str, str]]] = defaultdict(list)
        for m, part in zip(winners, parts, strict=True):
            keys[part].append((m.policy.name, m.ident))
        reused: dict[tuple[str, Any], Iterator[tuple[Played, list[tuple[Key, str]]]]] = {}
        if reuse:
            for part, matches in keys.items():
                old = self._parts.get(part)
                if old is not None and part not in changed and old[0] == tuple(matches) and not old[2]:
                    reused[part] = iter(old[1])
        kept: dict[tuple[str, Any], list[tuple[Played, list[tuple[Key, str]]]]] = defaultdict(list)
        reached: set[tuple[str, Any]] = set()
        for m, reason, part in zip(winners, reasons, parts, strict=True):
            hit = checker.reached_by(m)
            others = set() if hit is None else hit[1] - {part}
            if others:
                reached.add(part)
                if part in reused or any(p in reused for p in others):
                    return False
            again = reused.get(part)
            if again is not None:
                (done, refused), touched = next(again)
                outcome: Played = ([replace(t, reason=reason) for t in done], refused)
                checker.replayed(touched, part)
            else:
                outcome, touched = _play_checked(farm, m, now, reason, checker, part)
            kept[part].append((outcome, touched))
            _record(plan, outcome)
        self._parts = {part: (tuple(keys[part]), outcomes, part in reached) for part, outcomes in kept.items()}
        return True


def _part_of(farm: Farm, m: Match) -> tuple[str, Any]:
    """The independent part of a plan a match belongs to: its job's, or its worker's."""
    job = farm.job_of(m.kind, m.ident)
    if job is not None:
        return ("job", job)
    return ("worker", m.ident) if m.kind is Kind.WORKER else ("instance", m.ident)


def _reason(m: Match) -> str:
    return render_reason(m.policy.reason, m.fact, dict(m.policy.params))


def _record(plan: Plan, outcome: Played) -> None:
    plan.transitions.extend(outcome[0])
    plan.refused.extend(outcome[1])


_FRAMES = attrgetter("frames")


def _totals(farm: Farm) -> dict[Kind, int]:
    """How many entities of each kind the farm has (what `max_percent` is a percentage
    of).  The frames are counted in C: every plan asks, and at 1M frames a generator
    over the ten thousand jobs cost 2.9 ms a plan (1.1 ms this way)."""
    return {
        Kind.JOB: len(farm.jobs),
        Kind.FRAME: sum(map(len, map(_FRAMES, farm.jobs.values()))),
        Kind.INSTANCE: len(farm.instances),
        Kind.WORKER: len(farm.workers),
    }


def _over_limit(policy: Policy, count: int, total: int) -> str | None:
    lim = policy.limits
    if lim.max_actions is not None and count > lim.max_actions:
        return (f"matched {count} {policy.kind}s, more than its max_actions of {lim.max_actions}: "
                "acting on none this cycle")
    if lim.max_percent is not None and total:
        allowed = max(1, int(total * lim.max_percent / 100.0))
        if count > allowed:
            pct = 100.0 * count / total
            return (f"matched {count} of {total} {policy.kind}s ({pct:.0f}%), more than its max_percent of "
                    f"{lim.max_percent:g}% ({allowed}): acting on none this cycle")
    return None


def _ordered(matches: list[Match]) -> list[Match]:
    return sorted(matches, key=lambda m: (-m.policy.priority, m.policy.name, KIND_ORDER[m.kind], _id_key(m.ident)))


def _id_key(ident: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in ident.split(":"))


def _resolve_conflicts(matches: list[Match], plan: Plan) -> list[Match]:
    """One enforcing policy per entity: the highest priority (then the first by name).
    A policy that only notifies changes nothing, so it never conflicts: it always plays."""
    by_entity: dict[tuple[Kind, str], list[Match]] = defaultdict(list)
    winners = [m for m in matches if m.policy.only_tells]
    for m in matches:
        if not m.policy.only_tells:
            by_entity[(m.kind, m.ident)].append(m)
    for (_kind, _ident), group in by_entity.items():
        group.sort(key=lambda m: (-m.policy.priority, m.policy.name))
        winner = group[0]
        winners.append(winner)
        for loser in group[1:]:
            same = [a.action for a in loser.policy.actions] == [a.action for a in winner.policy.actions]
            category = "duplicate" if same else "conflict"
            tie = " (same priority: the first by name wins)" if loser.policy.priority == winner.policy.priority else ""
            plan.refused.append(Skipped(
                loser.policy.name, loser.kind, loser.ident, str(loser.policy.actions[0].action), category,
                f"policy '{winner.policy.name}' (priority {winner.policy.priority}) acts on this "
                f"{loser.kind} this cycle{tie}",
            ))
    return winners


def _play(farm: Farm, m: Match, now: datetime, reason: str) -> Played:
    """Apply a match's actions to the (scratch) farm: the transitions, or the refusal."""
    done: list[Transition] = []
    for spec in m.policy.actions:
        try:
            out = apply_action(
                farm, m.kind, m.ident, spec.action, now=now, params=spec.params_dict(), automatic=True, actor=m.policy.name
            )
        except (IllegalAction, KeyError) as err:
            return done, [Skipped(m.policy.name, m.kind, m.ident, str(spec.action), "illegal", str(err))]
        done.append(Transition(
            m.policy.name, m.policy.priority, m.policy.mode, m.kind, m.ident, spec.action, spec.params,
            out.from_state, out.to_state, reason,
        ))
    return done, []
