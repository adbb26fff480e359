"""A session keeps the farm in memory across policy edits and engine restarts, and plans
exactly what a fresh whole read would (corral.session)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import farms
from corral.cycle import run_cycle
from corral.evaluate import ReferenceEvaluator
from corral.farm import Farm
from corral.policy.loader import load_texts
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.session import FULL_READ_EVERY, Session
from corral.snapshot import load_snapshot_file
from corral.store import Store
from strategies import policy_sets
from test_live import EXAMPLE, NIGHT, PACK, full_plan, full_plan_with, summary, supervisor_step

#: A policy reading the recent window, which the built-in pack does not keep.
RECENT = """policies:
  - name: note-busy-hosts
    kind: worker
    when: {state: up, recent_successes: {gte: 1}}
    actions: [block]
    reason: '{recent_successes} done lately'
"""


class _WholeReads:
    """Counts the store's whole reads of the farm."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = store.read_farm_marked

        def counted(**kwargs: Any) -> Any:
            self.count += 1
            return real(**kwargs)

        monkeypatch.setattr(store, "read_farm_marked", counted)


def test_a_policy_edit_keeps_the_farm_in_memory_and_plans_as_a_fresh_read(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    reads = _WholeReads(store, monkeypatch)
    rnd, now = random.Random(5), NIGHT
    run_cycle(store, session, commit=False, now=now)
    assert reads.count == 1 and session.live is not None
    live = session.live
    edited = [*PACK, *load_texts([("recent.yaml", RECENT)]).policies]  # a new policy, reading what was not kept
    for policies in (edited, PACK[1:], PACK):
        session.swap(PolicySet(policies))
        now += timedelta(minutes=3)
        supervisor_step(store, rnd, now)
        result = run_cycle(store, session, commit=False, now=now)
        assert summary(result.plan) == full_plan_with(store, policies, now)
        assert session.live is live and reads.count == 1  # the same farm in memory, never read whole again
    assert live.agg.keep_recent  # counted again from the farm when a policy came to read it


def test_swapping_in_equal_policies_changes_nothing() -> None:
    session = Session(PolicySet(PACK))
    evaluator = session.evaluator
    session.swap(PolicySet(list(PACK)))
    assert session.evaluator is evaluator


class _Restartable(ReferenceEvaluator):
    """An engine that can lose its memory, as an engine child process that died does."""

    def __init__(self, policies: Any) -> None:
        super().__init__(policies)
        self._starts = 1

    @property
    def starts(self) -> int:
        return self._starts

    def restart(self) -> None:
        self._held = {kind: {} for kind in self._held}
        self._starts += 1


def test_an_engine_that_lost_its_memory_is_fed_again_from_the_farm_in_memory(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    engines: list[_Restartable] = []

    def factory(policies: Any) -> _Restartable:
        engines.append(_Restartable(policies))
        return engines[-1]

    session = Session(PolicySet(PACK), keep_live=True, evaluator_factory=factory)
    reads = _WholeReads(store, monkeypatch)
    run_cycle(store, session, commit=False, now=NIGHT)
    engines[0].restart()
    result = run_cycle(store, session, commit=False, now=NIGHT)
    assert summary(result.plan) == full_plan(store, NIGHT) and summary(result.plan)
    assert reads.count == 1


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(farm=farms(max_jobs=4, max_frames=6), first=policy_sets(), second=policy_sets(), seed=st.integers(0, 10_000),
       engine=st.sampled_from(["durable", "reference"]))
def test_any_policy_edit_plans_what_a_fresh_session_plans(
        store: Store, farm: Farm, first: list[Policy], second: list[Policy], seed: int, engine: str) -> None:
    """Whatever the policies before and after an edit, and with either engine, the cycle
    after a swap plans what a whole read with the new policies plans."""
    store.init()
    store.load_farm(farm, replace=True)
    session = Session(PolicySet(first), engine=engine, keep_live=True)
    rnd = random.Random(seed)
    now = NIGHT
    run_cycle(store, session, commit=False, now=now)
    session.swap(PolicySet(second))
    now += timedelta(minutes=rnd.choice([1, 4, 30]))
    supervisor_step(store, rnd, now, hosts=sorted(farm.workers) or None)
    result = run_cycle(store, session, commit=False, now=now)
    assert summary(result.plan) == full_plan_with(store, second, now)
    session.close()


def test_cycles_news_brings_do_not_bring_the_whole_read_sooner(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon woken by a busy feed cycles every half second: its whole read (seconds at
    a big farm, a cycle that reacts to nothing meanwhile) still comes at the pace of its
    intervals, once FULL_READ_EVERY cycles *and* `full_read_after` seconds have passed."""
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    clock = [1000.0]
    session = Session(PolicySet(PACK), keep_live=True, full_read_after=600.0, monotonic=lambda: clock[0])
    reads = _WholeReads(store, monkeypatch)
    rnd, now = random.Random(3), NIGHT
    run_cycle(store, session, commit=False, now=now)
    assert reads.count == 1
    for _ in range(3 * FULL_READ_EVERY):  # cycles 0.5 s apart: 90 s, far fewer than 600
        clock[0] += 0.5
        now += timedelta(seconds=0.5)
        supervisor_step(store, rnd, now)
        result = run_cycle(store, session, commit=False, now=now)
    assert reads.count == 1
    assert summary(result.plan) == full_plan(store, now)  # the change reads kept it right meanwhile
    clock[0] += 600.0
    run_cycle(store, session, commit=False, now=now)
    assert reads.count == 2  # the interval's pace: read whole once the time has passed too
    for _ in range(FULL_READ_EVERY):
        clock[0] += 600.0
        run_cycle(store, session, commit=False, now=now)
    assert reads.count == 2  # and never sooner than FULL_READ_EVERY cycles (a slow cycling session)
    run_cycle(store, session, commit=False, now=now)
    assert reads.count == 3


def test_without_a_time_floor_a_session_reads_whole_every_full_read_every_cycles(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    reads = _WholeReads(store, monkeypatch)
    for _ in range(FULL_READ_EVERY + 1):
        run_cycle(store, session, commit=False, now=NIGHT)
    assert reads.count == 1
    run_cycle(store, session, commit=False, now=NIGHT)
    assert reads.count == 2
