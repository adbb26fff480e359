"""One evaluation cycle: read facts, evaluate, plan, and (only if asked) apply.

`corral plan` (the dry run), `corral run` (the daemon) and `corral run --once` all
come through `run_cycle`; the only difference between a dry run and the real thing
is `commit`.  Evaluation itself (`plan_farm`) is pure and also serves snapshots.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from corral.evaluate import Evaluator, LazyFact, Match, ReferenceEvaluator, find_matches
from corral.facts import SECOND_STAGE, FactBuilder, Needs, Screen, first_stage
from corral.farm import Farm, utcnow
from corral.live import Dirty, LiveFarm, Spread
from corral.plan import Acted, Cooldowns, Found, Moved, Plan, job_of, make_plan, plan_found, reason_paths
from corral.policy.compiler import screen_of
from corral.policy.model import Policy, paths_read
from corral.policy.reference import screen
from corral.states import Kind

if TYPE_CHECKING:
    from corral.store.apply import ApplyReport, Proposal
    from corral.store.store import Store

#: How far back the log is read for cooldowns when no policy sets a longer one.
MIN_HISTORY = timedelta(hours=1)
PAUSE_SETTING = "paused"


class PolicySet:
    """The policies in force and the rule engine compiled from them.

    The engine keeps its working memory between cycles (that is what makes a steady
    cycle cheap), so the daemon holds one PolicySet and replaces it on reload.
    """

    def __init__(
        self,
        policies: Sequence[Policy],
        *,
        engine: str = "durable",
        evaluator_factory: Callable[[list[Policy]], Evaluator] | None = None,
        keep_live: bool = False,
    ) -> None:
        """`keep_live`: hold the farm in memory from the first cycle on, even a dry one
        (the daemon and benchmarks); otherwise a dry run reads the store without writing
        anything, not even the change-tracking counter, and the first committing cycle
        starts the live farm."""
        self.keep_live = keep_live
        self.policies = list(policies)
        self.engine_name = engine
        self._factory = evaluator_factory
        self._evaluator: Evaluator | None = None
        #: The farm kept in memory between cycles (incremental evaluators only).
        self.live: LiveFarm | None = None
        self.cycles_since_full = 0
        self.engine_starts = 0

    @property
    def incremental(self) -> bool:
        """Whether the evaluator keeps its own memory (update/current/due) between cycles."""
        evaluator = self.evaluator
        declared = getattr(evaluator, "incremental", None)
        if declared is not None:
            return bool(declared)
        methods = ("settle", "due_all", "known", "state_filter", "ready")  # the calls a cycle makes
        return all(hasattr(evaluator, name) for name in methods)

    @property
    def evaluator(self) -> Evaluator:
        """Built on first use; `evaluator_factory` lets the daemon run the engine elsewhere."""
        if self._evaluator is None:
            active = [p for p in self.policies if p.enabled]
            if self._factory is not None:
                self._evaluator = self._factory(active)
            elif self.engine_name == "reference":
                self._evaluator = ReferenceEvaluator(active)
            else:
                from corral.engine import RuleEngine

                self._evaluator = RuleEngine(active)
        return self._evaluator

    @cached_property
    def needs(self) -> Needs:
        """The fields the enabled policies read: what the engine's facts are built with."""
        return Needs.of(paths_read(self.policies))

    @cached_property
    def reason_needs(self) -> Needs:
        """The fields the enabled policies' reasons cite: what a match's fact is built with."""
        return Needs.of(reason_paths(self.policies))

    @property
    def reads_recent(self) -> bool:
        """Whether a policy reads a worker's recent window (`recent_*`, in a condition or a
        reason): if none does, the live farm keeps no runs for it."""
        return any(needs.reads(Kind.WORKER, "recent") for needs in (self.needs, self.reason_needs))

    @cached_property
    def screens(self) -> dict[Kind, Screen | None]:
        """Per kind, the screen of the enabled policies (`screen_for`)."""
        enabled = [p for p in self.policies if p.enabled]
        return {kind: screen_for(kind, enabled) for kind in Kind}

    def history_window(self) -> timedelta:
        longest = max((p.limits.cooldown or 0.0 for p in self.policies), default=0.0)
        return max(MIN_HISTORY, timedelta(seconds=longest))


def screen_for(kind: Kind, policies: Sequence[Policy]) -> Screen | None:
    """The policies' gates cut down to a `kind` fact's first stage, then to its second
    (see `FactBuilder.candidate`); None where some policy cannot be screened that way."""
    cut = screen_of(kind, policies, partial(first_stage, kind))
    if cut is None:
        return None
    second = screen_of(kind, policies, partial(first_stage, kind, stage=SECOND_STAGE))
    return screen(kind, cut, then=None if second is None or second == cut else screen(kind, second))


def plan_farm(
    farm: Farm,
    policy_set: PolicySet,
    *,
    now: datetime,
    last_actions: Acted | None = None,
    due: Collection[str] | None = None,
) -> tuple[Plan, list[Match]]:
    """Facts in, plan out: the pure heart of a cycle.  `due` limits it to some policies."""
    builder = FactBuilder(farm, now)
    matches = find_matches(policy_set.policies, builder, policy_set.evaluator)
    if due is not None:
        matches = [m for m in matches if m.policy.name in due]
    plan = make_plan(farm, matches, now=now, last_actions=last_actions)
    return plan, matches


def plan_live(
    live: LiveFarm,
    policy_set: PolicySet,
    dirty: Dirty,
    *,
    now: datetime,
    last_actions: Acted | None = None,
    due: Collection[str] | None = None,
) -> Plan:
    """`plan_farm` for the daemon: only the facts of `dirty` entities (and of those whose
    time-based conditions fell due) are rebuilt and sent to the engine; the engine keeps
    the rest from the previous cycle.  Same matches, same plan, a fraction of the work."""
    engine: Any = policy_set.evaluator
    farm = live.farm
    # A match's fact, for its reason: only the fields reasons cite, and built only if the
    # plan renders it (not for a match held back by a limit or a cooldown).
    builder = FactBuilder(farm, now, aggregates=live.agg, needs=policy_set.reason_needs)

    def whole(kind: Kind, ident: str) -> LazyFact:
        return LazyFact(builder.fact, kind, ident)

    by_name = {p.name: p for p in policy_set.policies if p.enabled}
    # The engine's facts: only the fields the policies read (a job's host counts are
    # not worked out when no policy reads them).
    narrow_builder = FactBuilder(farm, now, aggregates=live.agg, needs=policy_set.needs)
    stamp = now.timestamp()
    kinds = [kind for kind in Kind if any(p.kind is kind for p in by_name.values())]
    woken = engine.due_all(kinds, stamp)
    changes: dict[Kind, dict[Any, dict[str, Any] | None]] = {}
    for kind in kinds:
        allowed, screen = engine.state_filter(kind), policy_set.screens[kind]
        changed: dict[Any, dict[str, Any] | None] = {}
        dropped: list[Any] = []
        find = farm.lookup(kind)
        for ident in dirty[kind] | woken[kind]:
            entity = find(ident)
            # Not a candidate: gone, in a state no policy acts on, or its first stage
            # already fails every gate.
            fact = None
            if entity is not None and (allowed is None or entity.state in allowed):
                fact = narrow_builder.candidate(kind, entity, screen)
            if fact is None:
                dropped.append(ident)
            else:
                changed[ident] = fact
        # Those the engine held as candidates must be forgotten: it tells them from the
        # rest itself (asking it which it holds copied every id it held, each cycle).
        changed.update(dict.fromkeys(dropped))
        changes[kind] = changed
    found: list[Found] = []
    for kind, current in engine.settle(changes, stamp).items():  # every kind in one call
        for name, ids in current.items():
            policy = by_name.get(name)
            if policy is not None and (due is None or name in due):
                found.append(Found(policy, kind, ids, whole))
    # The parts of the plan whose entities changed since the last one: a job's part with
    # any row of the job, its frames or its instances (they all mark the job dirty), a
    # worker's with its row; the others' outcomes are reused (`PlanMemo`).
    moved = Moved(jobs=dirty[Kind.JOB], workers=dirty[Kind.WORKER])
    return plan_found(farm, found, now=now, last_actions=last_actions, memo=live.plan_memo, changed=moved)


#: A daemon re-reads the whole farm this often, to heal anything a change read missed
#: (frame dependencies, which are not tracked incrementally, for one).
FULL_READ_EVERY = 60


def refresh(
    store: Store, policy_set: PolicySet, log_since: datetime | None = None
) -> tuple[LiveFarm, Dirty, Cooldowns | None]:
    """Bring the policy set's live farm up to date: a whole read the first time (or after
    rows were deleted, or every FULL_READ_EVERY cycles), else only the changed rows; and
    with them (`log_since`) its cooldowns, in the same transaction: the log since
    `log_since` with a whole read, else only the actions logged since the last read."""
    live = policy_set.live
    engine: Any = policy_set.evaluator
    engine.ready()  # an isolated engine (re)starts here if it has to
    starts = getattr(engine, "starts", 0)
    if starts != policy_set.engine_starts:
        live, policy_set.engine_starts = None, starts  # a fresh engine knows nothing: send it everything
    if live is not None and policy_set.cycles_since_full < FULL_READ_EVERY:
        changes, mark, log = store.read_changes(live.mark, log_since=log_since, log_after=live.log_after)
        if changes is not None:
            policy_set.cycles_since_full += 1
            live.note_log(log)
            return live, live.apply(changes, mark), live.cooldowns if log is not None else None
    # The farm lives as long as the daemon: keep the cyclic garbage collector from
    # walking its millions of objects again and again.  While they are created it is
    # paused (the whole cycle runs in `_collector_paused`: otherwise it would run a
    # collection every few hundred allocations, each walking more of them, and the read
    # of 100k frames took twice as long); once they are made, freeze them (a full
    # collection of a 1M-frame farm costs about a second, at a moment no cycle chooses).
    farm, mark, log = store.read_farm_marked(log_since=log_since)
    live = LiveFarm(farm, mark, spread=Spread.of(p for p in policy_set.policies if p.enabled),
                    keep_recent=policy_set.reads_recent)
    live.note_log(log)
    gc.freeze()
    dirty = live.everything({kind: engine.state_filter(kind) for kind in Kind})
    for kind in Kind:
        dirty[kind] |= engine.known(kind)
    policy_set.live, policy_set.cycles_since_full = live, 0
    return live, dirty, live.cooldowns if log is not None else None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a cycle, and the young generation collected
    once at its end (inside the cycle, so its time counts).

    A steady cycle makes tens of thousands of short-lived containers (the changed rows,
    probes and facts), nearly all freed by reference counting before the cycle ends; with
    the collector on, each few hundred of them set off a collection that walks the
    young ones alive at that moment (1M frames: 30 collections, about 7 ms a cycle)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect(0)


@dataclass
class CycleResult:
    """What a cycle did.  `facts`: the entities whose facts were (re)built this cycle."""

    cycle_id: str
    at: datetime
    plan: Plan
    matches: int
    facts: int
    committed: bool
    paused: bool = False
    report: ApplyReport | None = None
    timings: dict[str, float] = field(default_factory=dict)


def new_cycle_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_cycle(
    store: Store,
    policy_set: PolicySet,
    *,
    commit: bool,
    now: datetime | None = None,
    due: Collection[str] | None = None,
    cycle_id: str | None = None,
) -> CycleResult:
    """Read, evaluate, plan; apply with compare-and-set when `commit` and not paused.

    Audit-mode transitions are logged as "would have" rows when committing.  While
    corral is paused (`corral pause`) the cycle runs and reports but applies nothing.
    """
    now = now or utcnow()
    cycle_id = cycle_id or new_cycle_id(now)
    t0 = time.perf_counter()
    if policy_set.incremental and (commit or policy_set.keep_live or policy_set.live is not None):
        try:
            with _collector_paused():
                live, dirty, last = refresh(store, policy_set, now - policy_set.history_window())
                return _cycle(store, policy_set, live, dirty, commit=commit, now=now, due=due, cycle_id=cycle_id,
                              t0=t0, last_read=last)
        except BaseException:
            # The live farm may now hold what this cycle read but never evaluated, or
            # changes the database rolled back: start the next cycle from a whole read.
            policy_set.live = None
            raise
    return _cycle(store, policy_set, None, None, commit=commit, now=now, due=due, cycle_id=cycle_id, t0=t0)


def _cycle(
    store: Store,
    policy_set: PolicySet,
    live: LiveFarm | None,
    dirty: Dirty | None,
    *,
    commit: bool,
    now: datetime,
    due: Collection[str] | None,
    cycle_id: str,
    t0: float,
    last_read: Cooldowns | None = None,
) -> CycleResult:
    """`last_read`: the cooldowns, when the read that brought the farm up to date read them."""
    timings: dict[str, float] = {}
    if live is not None:
        assert dirty is not None
        farm = live.farm
        facts = sum(len(ids) for ids in dirty.values())
    else:
        farm = store.read_farm()
        facts = len(farm.jobs) + len(farm.instances) + len(farm.workers) + sum(len(j.frames) for j in farm.jobs.values())
    last = last_read if last_read is not None else Cooldowns(store.last_actions(now - policy_set.history_window()))
    t1 = time.perf_counter()
    timings["read"] = t1 - t0
    if live is not None:
        assert dirty is not None
        plan = plan_live(live, policy_set, dirty, now=now, last_actions=last, due=due)
    else:
        plan, _ = plan_farm(farm, policy_set, now=now, last_actions=last, due=due)
    t2 = time.perf_counter()
    timings["evaluate"] = t2 - t1
    result = CycleResult(cycle_id, now, plan, sum(plan.matched.values()), facts, committed=False, timings=timings)
    if not commit:
        return result
    result.paused = store.get_setting(PAUSE_SETTING) == "1"
    proposals = proposals_of(plan, apply=not result.paused)
    if proposals:
        # The applier changes the farm in place after its writes: keep the live
        # farm's counts right around it (see corral.live).
        jobs = _jobs_of(plan, farm)
        hosts = {f.host for j in jobs if j in farm.jobs for f in farm.jobs[j].frames.values() if f.host}
        if live is not None:
            live.uncount(jobs)
        try:
            result.report = store.apply_transitions(farm, proposals, now=now, actor="corral", cycle_id=cycle_id)
        finally:
            if live is not None:
                live.recount(jobs)
        if live is not None:
            workers = [t.ident for t in plan.transitions if t.kind is Kind.WORKER]
            live.touched_by_corral(jobs, workers, hosts)
    result.committed = True
    timings["apply"] = time.perf_counter() - t2
    return result


def _jobs_of(plan: Plan, farm: Farm) -> set[int]:
    """The jobs whose frames a plan's transitions may change."""
    return {j for t in plan.transitions if (j := job_of(farm, t.kind, t.ident)) is not None}


def proposals_of(plan: Plan, *, apply: bool = True) -> list[Proposal]:
    """The plan's transitions as store proposals; audit ones (and all, when paused) log only."""
    from corral.store.apply import Proposal

    return [
        Proposal(
            kind=t.kind,
            ident=t.ident,
            action=t.action,
            params=dict(t.params),
            reason=t.reason,
            policy=t.policy,
            automatic=True,
            applied=apply and not t.audit,
        )
        for t in plan.transitions
    ]

