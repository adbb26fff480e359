"""The daemon's incremental cycle (live farm, change reads, candidate facts) plans exactly
what a cycle that reads and evaluates the whole farm plans, cycle after cycle."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, text, update

from conftest import farms
from corral.cycle import PolicySet, plan_farm, run_cycle
from corral.facts import Aggregates, FactBuilder, frame_runs
from corral.farm import Farm
from corral.plan import Plan
from corral.policy.loader import builtin_dir, load_paths
from corral.snapshot import load_snapshot_file
from corral.states import Kind
from corral.store import Store
from corral.store.tables import table

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "farm-snapshot.yaml"
NIGHT = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
PACK = load_paths([builtin_dir()]).policies


def summary(plan: Plan) -> set[tuple[Any, ...]]:
    return {(t.policy, str(t.kind), t.ident, str(t.action), t.from_state, t.to_state, t.reason) for t in plan.transitions}


def full_plan(store: Store, now: datetime) -> set[tuple[Any, ...]]:
    """What a cycle that reads the whole farm afresh would plan (the oracle)."""
    plan, _ = plan_farm(store.read_farm(), PolicySet(PACK, engine="reference"), now=now,
                        last_actions=_last(store, now))
    return summary(plan)


def _last(store: Store, now: datetime) -> dict[tuple[str, str, str], datetime]:
    raw = store.last_actions(now - timedelta(hours=2))
    return {(p, k, i): at for (p, k, i), at in raw.items() if p is not None}


def supervisor_step(store: Store, rnd: random.Random, at: datetime) -> None:
    """A supervisor's writes between two cycles: frames start, finish and fail, runs are recorded."""
    fr, runs = table("frames"), table("frame_runs")
    with store.engine.begin() as conn:
        rows = conn.execute(text("SELECT job_id, number, state, host, instance FROM frames")).all()
        for r in rnd.sample(rows, k=min(len(rows), 12)):
            host = r.host or f"render0{rnd.randint(1, 9)}"
            if r.state == "running" or (r.state == "pending" and rnd.random() < 0.5):
                state = rnd.choice(["complete", "failed"])
                conn.execute(update(fr).where(fr.c.job_id == r.job_id, fr.c.number == r.number).values(
                    state=state, host=host, finished_at=at, state_since=at, exit_code=0 if state == "complete" else 1,
                    version=fr.c.version + 1))
                conn.execute(insert(runs).values(job_id=r.job_id, number=r.number, host=host, instance=r.instance,
                                                 state=state, exit_code=0 if state == "complete" else 1,
                                                 started_at=at - timedelta(minutes=3), finished_at=at))
            elif r.state == "pending":
                conn.execute(update(fr).where(fr.c.job_id == r.job_id, fr.c.number == r.number).values(
                    state="running", host=host, started_at=at, state_since=at, version=fr.c.version + 1))


def test_incremental_cycles_plan_what_a_full_read_plans(store: Store) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    policy_set = PolicySet(PACK, keep_live=True)
    rnd = random.Random(3)
    now = NIGHT
    for cycle in range(8):
        expected = full_plan(store, now)
        result = run_cycle(store, policy_set, commit=cycle % 2 == 1, now=now)
        assert summary(result.plan) == expected, f"cycle {cycle}"
        now += timedelta(minutes=3)
        supervisor_step(store, rnd, now)
    # after commits and supervisor writes, the live counts still match a fresh count of the farm
    run_cycle(store, policy_set, commit=False, now=now)
    live = policy_set.live
    assert live is not None
    fresh = FactBuilder(store.read_farm(), now)
    kept = FactBuilder(live.farm, now, aggregates=live.agg)
    for kind in Kind:
        assert sorted(kept.facts(kind), key=lambda f: str(f["id"])) == sorted(fresh.facts(kind), key=lambda f: str(f["id"]))


def test_time_based_conditions_fire_when_due_without_any_change(store: Store) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    policy_set = PolicySet(PACK, keep_live=True)
    early = datetime(2026, 11, 28, 1, 42, tzinfo=UTC)  # job 103 failed at 01:40: its 5m delay is not over
    first = run_cycle(store, policy_set, commit=False, now=early)
    assert not any(t.policy == "retry-failed-jobs" for t in first.plan.transitions)
    later = run_cycle(store, policy_set, commit=False, now=early + timedelta(minutes=4))
    assert ("retry-failed-jobs", "103") in {(t.policy, t.ident) for t in later.plan.transitions}
    assert later.facts < 10  # nothing changed in the store: only the due entity was re-read


def test_deleting_rows_makes_the_next_cycle_read_the_whole_farm(store: Store) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    policy_set = PolicySet(PACK, keep_live=True)
    run_cycle(store, policy_set, commit=False, now=NIGHT)
    store.load_farm(Farm(), replace=True)  # the farm is emptied
    result = run_cycle(store, policy_set, commit=False, now=NIGHT)
    assert result.plan.transitions == []
    assert policy_set.live is not None and policy_set.live.farm.jobs == {}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(farm=farms(max_jobs=4, max_frames=6), seed=st.integers(0, 10_000))
def test_random_farms_and_changes_plan_the_same_both_ways(store: Store, farm: Farm, seed: int) -> None:
    store.init()
    store.load_farm(farm, replace=True)
    policy_set = PolicySet(PACK, keep_live=True)
    rnd = random.Random(seed)
    now = NIGHT
    for _ in range(3):
        result = run_cycle(store, policy_set, commit=False, now=now)
        assert summary(result.plan) == full_plan(store, now)
        now += timedelta(minutes=rnd.choice([1, 4, 30]))
        supervisor_step(store, rnd, now)


@settings(max_examples=40, deadline=None)
@given(farm=farms(max_jobs=4, max_frames=6))
def test_counting_a_whole_farm_at_once_equals_counting_it_run_by_run(farm: Farm) -> None:
    one_by_one = Aggregates()
    for job in farm.jobs.values():
        for frame in job.frames.values():
            one_by_one.frame_state(frame, +1)
            for run in frame_runs(frame):
                one_by_one.run(job.id, run)
    at_once = FactBuilder(farm, NIGHT)
    stepwise = FactBuilder(farm, NIGHT, aggregates=one_by_one)
    for kind in Kind:
        assert at_once.facts(kind) == stepwise.facts(kind)
