"""One evaluation cycle: read facts, evaluate, plan, and (only if asked) apply.

`corral plan` (the dry run), `corral run` (the daemon) and `corral run --once` all
come through `run_cycle`; the only difference between a dry run and the real thing
is `commit`.  The cycle talks to the world through the ports of `corral.ports` (the
store implements them) and keeps what lasts between cycles in a `corral.session.Session`.
Evaluation itself (`plan_farm`, `plan_live`) is pure and also serves snapshots.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from corral.evaluate import LazyFact, Match, find_matches, make_evaluator
from corral.facts import FactBuilder
from corral.farm import Farm, utcnow
from corral.live import Dirty, LiveFarm
from corral.plan import Acted, Cooldowns, Found, Moved, Plan, make_plan, plan_found
from corral.policyset import PolicySet
from corral.ports import ApplyReport, CycleStore, EntityId, Evaluator, Fact, IncrementalEvaluator, Proposal
from corral.session import Session
from corral.states import Kind


def plan_farm(
    farm: Farm,
    policy_set: PolicySet,
    *,
    now: datetime,
    evaluator: Evaluator | None = None,
    engine: str = "durable",
    last_actions: Acted | None = None,
    due: Collection[str] | None = None,
) -> tuple[Plan, list[Match]]:
    """Facts in, plan out: the pure heart of a cycle, over a whole farm.  `evaluator`:
    the one to ask (default: a new one of `engine`); `due` limits it to some policies."""
    builder = FactBuilder(farm, now, classes=policy_set.classes)
    evaluator = evaluator if evaluator is not None else make_evaluator(policy_set.active, engine)
    matches = find_matches(policy_set.policies, builder, evaluator)
    if due is not None:
        matches = [m for m in matches if m.policy.name in due]
    plan = make_plan(farm, matches, now=now, last_actions=last_actions, aggregates=builder.agg,
                     classes=policy_set.classes)
    return plan, matches


def plan_live(
    live: LiveFarm,
    policy_set: PolicySet,
    engine: IncrementalEvaluator,
    dirty: Dirty,
    *,
    now: datetime,
    last_actions: Acted | None = None,
    due: Collection[str] | None = None,
) -> Plan:
    """`plan_farm` for a session's farm in memory: only the facts of `dirty` entities
    (and of those whose time-based conditions fell due) are rebuilt and sent to the
    engine; the engine keeps the rest from the previous cycle.  Same matches, same
    plan, a fraction of the work."""
    farm = live.farm
    dirty = live.aged(dirty, now)  # window counts that fell with nothing read
    # A match's fact, for its reason: only the fields reasons cite, and built only if the
    # plan renders it (not for a match held back by a limit or a cooldown).
    builder = FactBuilder(farm, now, aggregates=live.agg, needs=policy_set.reason_needs, classes=policy_set.classes)

    def whole(kind: Kind, ident: str) -> LazyFact:
        return LazyFact(builder.fact, kind, ident)

    by_name = policy_set.by_name
    # The engine's facts: only the fields the policies read (a job's host counts are
    # not worked out when no policy reads them).
    narrow_builder = FactBuilder(farm, now, aggregates=live.agg, needs=policy_set.needs, classes=policy_set.classes)
    stamp = now.timestamp()
    kinds = policy_set.kinds
    woken = engine.due_all(kinds, stamp)
    # Asked before the first kind is sent: an isolated engine's first answer is a round trip,
    # which between two kinds would wait for the child to take the first one in.
    filters = {kind: engine.state_filter(kind) for kind in kinds}

    def changes() -> Iterator[tuple[Kind, dict[EntityId, Fact | None]]]:
        """Each kind's changed facts, yielded as soon as built: an engine in a child process
        takes one kind in while the next is built."""
        for kind in kinds:
            allowed, screen = filters[kind], policy_set.screens[kind]
            changed: dict[EntityId, Fact | None] = {}
            dropped: list[EntityId] = []
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
            yield kind, changed

    found: list[Found] = []
    for kind, current in engine.settle(changes(), stamp).items():  # every kind in one call
        for name, ids in current.items():
            policy = by_name.get(name)
            if policy is not None and (due is None or name in due):
                found.append(Found(policy, kind, ids, whole))
    # The parts of the plan whose entities changed since the last one: a job's part with
    # any row of the job, its frames or its instances (they all mark the job dirty), a
    # worker's with its row; the others' outcomes are reused (`PlanMemo`).
    moved = Moved(jobs=dirty[Kind.JOB], workers=dirty[Kind.WORKER])
    return plan_found(farm, found, now=now, last_actions=last_actions, memo=live.plan_memo, changed=moved,
                      aggregates=live.agg, classes=policy_set.classes)


@contextmanager
def collector_paused() -> Iterator[None]:
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
    """What a cycle did.  `facts`: the entities whose facts were (re)built this cycle;
    `farm`: the farm it planned on, with what was applied applied (in place); `reread`:
    rows its read brought back unchanged (see `corral.live`)."""

    cycle_id: str
    at: datetime
    plan: Plan
    matches: int
    facts: int
    committed: bool
    farm: Farm = field(repr=False)
    paused: bool = False
    report: ApplyReport | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reread: int = 0


def new_cycle_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_cycle(
    store: CycleStore,
    session: Session,
    *,
    commit: bool,
    now: datetime | None = None,
    due: Collection[str] | None = None,
    cycle_id: str | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> CycleResult:
    """Read, evaluate, plan; apply with compare-and-set when `commit` and not paused.

    Audit-mode transitions are logged as "would have" rows when committing.  While
    corral is paused (`corral pause`) the cycle runs and reports but applies nothing.
    A dry run of a session that holds no farm in memory reads the store whole and
    writes nothing; otherwise the session's farm is brought up to date (`Session.refresh`).

    The cycle's time (`now`, unless given) is read from `clock` once the farm has been
    read: the facts are evaluated as of then, and every transition is logged at then
    (its `at`), so each comes after the rows that caused it were written.  (Taken before
    the read, a transition could be stamped seconds before the submission of its own
    job.)  A simulation or a test gives `now` and fixes it.
    """
    t0 = time.perf_counter()
    if commit or session.keep_live or session.live is not None:
        try:
            with collector_paused():
                read_from = (now or clock()) - session.policy_set.history_window
                live, dirty, last = session.refresh(store, read_from)
                return _cycle(store, session, live, dirty, commit=commit, now=now or clock(), due=due,
                              cycle_id=cycle_id, t0=t0, last_read=last)
        except BaseException:
            session.forget()
            raise
    farm = store.read_farm()
    return _cycle(store, session, None, None, commit=commit, now=now or clock(), due=due, cycle_id=cycle_id, t0=t0,
                  farm=farm)


def _cycle(
    store: CycleStore,
    session: Session,
    live: LiveFarm | None,
    dirty: Dirty | None,
    *,
    commit: bool,
    now: datetime,
    due: Collection[str] | None,
    cycle_id: str | None,
    t0: float,
    last_read: Cooldowns | None = None,
    farm: Farm | None = None,
) -> CycleResult:
    """`last_read`: the cooldowns, when the read that brought the farm up to date read
    them; `farm`: the farm read whole (without a live farm)."""
    policy_set = session.policy_set
    cycle_id = cycle_id or new_cycle_id(now)
    timings: dict[str, float] = {}
    if live is not None and dirty is not None:
        farm = live.farm
        facts = sum(len(ids) for ids in dirty.values())
    else:
        assert farm is not None
        facts = len(farm.jobs) + len(farm.instances) + len(farm.workers) + sum(len(j.frames) for j in farm.jobs.values())
    last = last_read if last_read is not None else Cooldowns(store.last_actions(now - policy_set.history_window))
    t1 = time.perf_counter()
    timings["read"] = t1 - t0
    if live is not None and dirty is not None:
        plan = plan_live(live, policy_set, session.evaluator, dirty, now=now, last_actions=last, due=due)
    else:
        plan, _ = plan_farm(farm, policy_set, now=now, evaluator=session.evaluator, last_actions=last, due=due)
    t2 = time.perf_counter()
    timings["evaluate"] = t2 - t1
    result = CycleResult(cycle_id, now, plan, sum(plan.matched.values()), facts, committed=False, farm=farm,
                         timings=timings, reread=live.reread if live is not None else 0)
    if not commit:
        return result
    result.paused = store.paused()
    proposals = proposals_of(plan, apply=not result.paused)
    if proposals:
        if live is None:
            result.report = store.apply_transitions(farm, proposals, now=now, actor="corral", cycle_id=cycle_id)
        else:
            # The applier changes the farm in place after its writes: the live farm keeps
            # its counts right around it (see corral.live).
            jobs = {j for t in plan.transitions if (j := farm.job_of(t.kind, t.ident)) is not None}
            workers = [t.ident for t in plan.transitions if t.kind is Kind.WORKER]
            with live.changed_in_place(jobs, workers):
                result.report = store.apply_transitions(farm, proposals, now=now, actor="corral", cycle_id=cycle_id)
    result.committed = True
    timings["apply"] = time.perf_counter() - t2
    return result


def proposals_of(plan: Plan, *, apply: bool = True) -> list[Proposal]:
    """The plan's transitions as store proposals; audit ones (and all, when paused) log only."""
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
