"""The daemon's incremental cycle (live farm, change reads, candidate facts) plans exactly
what a cycle that reads and evaluates the whole farm plans, cycle after cycle."""

from __future__ import annotations

import gc
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from sys import intern
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, text, update

import corral.cycle as cycle_module
from conftest import farms
from corral.cycle import plan_farm, run_cycle
from corral.evaluate import ReferenceEvaluator
from corral.facts import FIELDS, Aggregates, FactBuilder, Needs, frame_runs
from corral.farm import Farm, Frame, FrameRun, Instance, Job, Worker
from corral.live import LiveFarm
from corral.plan import Plan
from corral.policy.loader import builtin_dir, load_paths, load_texts
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.ports import Mark
from corral.session import Session
from corral.snapshot import load_snapshot_file
from corral.states import FrameState, InstanceState, JobState, Kind
from corral.store import Store
from corral.store.tables import table
from strategies import policy_sets

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "farm-snapshot.yaml"
NIGHT = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
PACK = load_paths([builtin_dir()]).policies


def summary(plan: Plan) -> set[tuple[Any, ...]]:
    return {(t.policy, str(t.kind), t.ident, str(t.action), t.from_state, t.to_state, t.reason) for t in plan.transitions}


def _refusals(plan: Plan) -> set[tuple[Any, ...]]:
    return {(s.policy, str(s.kind), s.ident, s.action, s.category, s.why) for s in plan.skipped}


def full_plan(store: Store, now: datetime) -> set[tuple[Any, ...]]:
    """What a cycle that reads the whole farm afresh would plan (the oracle)."""
    plan, _ = plan_farm(store.read_farm(), PolicySet(PACK), engine="reference", now=now,
                        last_actions=_last(store, now))
    return summary(plan)


def _last(store: Store, now: datetime) -> dict[tuple[str, str, str], datetime]:
    raw = store.last_actions(now - timedelta(hours=2))
    return {(p, k, i): at for (p, k, i), at in raw.items() if p is not None}


def supervisor_step(store: Store, rnd: random.Random, at: datetime, hosts: list[str] | None = None) -> None:
    """A supervisor's writes between two cycles: frames start, finish and fail, runs are recorded."""
    fr, runs = table("frames"), table("frame_runs")
    with store.engine.begin() as conn:
        rows = conn.execute(text("SELECT job_id, number, state, host, instance FROM frames")).all()
        for r in rnd.sample(rows, k=min(len(rows), 12)):
            host = r.host or (rnd.choice(hosts) if hosts else f"render0{rnd.randint(1, 9)}")
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


def matches_after_cycle(store: Store, session: Session, now: datetime, kind: Kind, policy: str) -> set[object]:
    """A dry cycle at `now`, then what `policy` matches of `kind` in the session's engine."""
    run_cycle(store, session, commit=False, now=now)
    return set(current(session, kind)[policy])


def one_policy_session(name: str, kind: str, when: str) -> Session:
    """A session that keeps its farm in memory, with one policy blocking what `when` (YAML) matches."""
    loaded = load_texts([("p.yaml", f"policies:\n  - name: {name}\n    kind: {kind}\n    when: {when}\n"
                                    f"    actions: [block]\n    reason: {name}\n")])
    assert loaded.errors == [], [str(e) for e in loaded.errors]
    return Session(PolicySet(loaded.policies), keep_live=True)


def current(session: Session, kind: Kind) -> dict[str, list[object]]:
    """The matches the session's engine holds for `kind` (asked with no change)."""
    return session.evaluator.settle({kind: {}})[kind]


def test_incremental_cycles_plan_what_a_full_read_plans(store: Store) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    rnd = random.Random(3)
    now = NIGHT
    for cycle in range(8):
        expected = full_plan(store, now)
        result = run_cycle(store, session, commit=cycle % 2 == 1, now=now)
        assert summary(result.plan) == expected, f"cycle {cycle}"
        now += timedelta(minutes=3)
        supervisor_step(store, rnd, now)
    # after commits and supervisor writes, the live counts still match a fresh count of the farm
    run_cycle(store, session, commit=False, now=now)
    live = session.live
    assert live is not None
    # every field (but a worker's recent window, which no policy of the pack reads, so it is not kept)
    assert not session.policy_set.reads_recent
    every = Needs.of({kind: {f for f in FIELDS[kind] if "recent_" not in f} for kind in Kind})
    fresh = FactBuilder(store.read_farm(), now, needs=every)
    kept = FactBuilder(live.farm, now, aggregates=live.agg, needs=every)
    for kind in Kind:
        assert sorted(kept.facts(kind), key=lambda f: str(f["id"])) == sorted(fresh.facts(kind), key=lambda f: str(f["id"]))


def test_time_based_conditions_fire_when_due_without_any_change(store: Store) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    early = datetime(2026, 11, 28, 1, 42, tzinfo=UTC)  # job 103 failed at 01:40: its 5m delay is not over
    first = run_cycle(store, session, commit=False, now=early)
    assert not any(t.policy == "retry-failed-jobs" for t in first.plan.transitions)
    later = run_cycle(store, session, commit=False, now=early + timedelta(minutes=4))
    assert ("retry-failed-jobs", "103") in {(t.policy, t.ident) for t in later.plan.transitions}
    assert later.facts < 10  # nothing changed in the store: only the due entity was re-read


def test_rows_read_again_unchanged_rebuild_no_fact(store: Store) -> None:
    """Reads overlap (on PostgreSQL, by as much as the oldest transaction open anywhere on
    the server): a row that comes back unchanged must cost no evaluation, and a changed
    one among them only its own."""
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    farm, mark, _ = store.read_farm_marked()
    live = LiveFarm(farm, mark, spread=PolicySet(PACK).spread)
    start = Mark(mark.generation, 0)  # as if a transaction open since the beginning held the mark back
    again, later, _ = store.read_changes(start)
    assert again is not None and again.jobs and again.frames and again.instances and again.workers
    assert live.apply(again, later) == {kind: set() for kind in Kind}

    fr = table("frames")
    with store.engine.begin() as conn:
        conn.execute(update(fr).where(fr.c.job_id == 101, fr.c.number == 21).values(
            exit_code=7, version=fr.c.version + 1))
    again, later, _ = store.read_changes(start)
    assert again is not None
    dirty = live.apply(again, later)
    assert dirty[Kind.FRAME] == {"101:21"} and dirty[Kind.JOB] == {101}
    assert farm.jobs[101].frames[21].exit_code == 7


def test_an_action_logged_between_cycles_holds_its_entity_in_cooldown(store: Store) -> None:
    """The daemon reads the log whole once, then only the rows appended since: an action
    logged between two cycles (by `corral run --once` before the daemon took the lock,
    say) is seen, and its cooldown holds as a whole read of the log would."""
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    early = datetime(2026, 11, 28, 1, 42, tzinfo=UTC)  # job 103 failed at 01:40; retry-failed-jobs waits 5m
    run_cycle(store, session, commit=False, now=early)
    with store.engine.begin() as conn:
        conn.execute(insert(table("transitions")).values(
            at=early + timedelta(minutes=1), kind="job", entity_id="103", job_id=103, action="retry",
            from_state="failed", to_state="retrying", actor="corral", policy="retry-failed-jobs", applied=True))
    now = early + timedelta(minutes=4)
    result = run_cycle(store, session, commit=False, now=now)
    assert ("retry-failed-jobs", "103") not in {(t.policy, t.ident) for t in result.plan.transitions}
    assert ("retry-failed-jobs", "103", "cooldown") in {(s.policy, s.ident, s.category) for s in result.plan.skipped}
    assert summary(result.plan) == full_plan(store, now)
    # and once the cooldown is over, the policy acts again
    later = run_cycle(store, session, commit=False, now=early + timedelta(minutes=7))
    assert ("retry-failed-jobs", "103") in {(t.policy, t.ident) for t in later.plan.transitions}


def test_deleting_rows_makes_the_next_cycle_read_the_whole_farm(store: Store) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    run_cycle(store, session, commit=False, now=NIGHT)
    store.load_farm(Farm(), replace=True)  # the farm is emptied
    result = run_cycle(store, session, commit=False, now=NIGHT)
    assert result.plan.transitions == []
    assert session.live is not None and session.live.farm.jobs == {}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(farm=farms(max_jobs=4, max_frames=6), seed=st.integers(0, 10_000))
def test_random_farms_and_changes_plan_the_same_both_ways(store: Store, farm: Farm, seed: int) -> None:
    store.init()
    store.load_farm(farm, replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    rnd = random.Random(seed)
    now = NIGHT
    for _ in range(3):
        result = run_cycle(store, session, commit=False, now=now)
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
                one_by_one.run(job.id, frame.number, run)
    at_once = FactBuilder(farm, NIGHT)
    stepwise = FactBuilder(farm, NIGHT, aggregates=one_by_one)
    for kind in Kind:
        assert at_once.facts(kind) == stepwise.facts(kind)


KILL_AND_ORPHANS = """
policies:
  - name: kill-upstream
    kind: job
    when: {name: upstream, state: running}
    actions: [kill]
    reason: kill it
  - name: block-orphans
    kind: job
    when: {state: pending, dependencies.killed: {gte: 1}}
    actions: [block]
    reason: an upstream job was killed
  - name: hold-rest-when-job-fails
    kind: frame
    when: {state: pending, job.frames_failed: {gte: 1}}
    actions: [block]
    reason: a sibling failed
  - name: hold-frames-on-locked
    kind: frame
    when: {state: pending, worker.state: locked}
    actions: [block]
    reason: its host is locked
"""


def _two_jobs() -> Farm:
    from corral.farm import Frame, Instance, Job, Worker
    from corral.states import FrameState, InstanceState, JobState

    j1 = Job(1, "upstream", state=JobState.RUNNING, submitted_at=NIGHT)
    j1.frames[1] = Frame(1, 1, FrameState.RUNNING, host="h1", instance="i1", started_at=NIGHT)
    j1.instances["i1"] = Instance("i1", 1, "h1", InstanceState.RUNNING)
    j2 = Job(2, "downstream", state=JobState.PENDING, depends_on=[1], submitted_at=NIGHT)
    j2.frames = {n: Frame(2, n, FrameState.PENDING) for n in (1, 2, 3)}
    j2.frames[3].host = "h2"
    return Farm(jobs={1: j1, 2: j2}, workers={"h1": Worker("h1"), "h2": Worker("h2")})


RETRY_ANY_FAILED_FRAME = """
policies:
  - name: retry-any-failed-frame
    kind: frame
    when: {state: failed}
    actions: [retry]
    reason: "retry {id}, failed {time_in_state} ago"
"""


def test_a_dry_running_daemon_plays_again_only_the_parts_of_the_plan_that_changed(
    store: Store, monkeypatch: Any
) -> None:
    """A dry run plans the same matches every cycle; the live farm reuses what an
    unchanged job's part of the plan did (its reasons rendered anew), and plays again a
    job whose rows changed: here the supervisor spent the frame's last retry, so the
    same match is now refused."""
    import corral.plan as plan_module
    from corral.farm import Frame, Job
    from corral.states import FrameState

    jobs = {j: Job(j, f"shot{j}", retry_limit=1, submitted_at=NIGHT) for j in (1, 2)}
    for job in jobs.values():
        job.frames[1] = Frame(job.id, 1, FrameState.FAILED, host="h1", exit_code=1, state_since=NIGHT)
        job.state = job.derived_state()
    store.init()
    store.load_farm(Farm(jobs=jobs), replace=True)
    session = Session(PolicySet(load_texts([("p.yaml", RETRY_ANY_FAILED_FRAME)]).policies), keep_live=True)
    played: list[str] = []
    real_play = plan_module._play

    def play(farm: Farm, m: Any, now: datetime, reason: str) -> Any:
        played.append(m.ident)
        return real_play(farm, m, now, reason)

    monkeypatch.setattr(plan_module, "_play", play)
    first = run_cycle(store, session, commit=False, now=NIGHT)
    assert sorted(t.ident for t in first.plan.transitions) == ["1:1", "2:1"] and sorted(played) == ["1:1", "2:1"]
    with store.engine.begin() as conn:  # the supervisor retried frame 2:1 itself, and it failed again
        conn.execute(update(table("frames")).where(table("frames").c.job_id == 2).values(retries=1))
    played.clear()
    later = NIGHT + timedelta(minutes=5)
    second = run_cycle(store, session, commit=False, now=later)
    assert played == ["2:1"]  # job 1 did not change: its part is reused
    assert [(t.ident, t.reason) for t in second.plan.transitions] == [("1:1", "retry 1:1, failed 5m ago")]
    assert [(s.ident, s.category) for s in second.plan.skipped] == [("2:1", "illegal")]
    oracle, _ = plan_farm(store.read_farm(), session.policy_set, engine="reference", now=later)
    assert summary(second.plan) == summary(oracle) and _refusals(second.plan) == _refusals(oracle)


def test_what_corral_itself_changed_reaches_the_facts_that_copy_it(store: Store) -> None:
    """Killing job 1 (corral's own write) must show in job 2's dependencies.* next cycle."""
    policies = load_texts([("p.yaml", KILL_AND_ORPHANS)]).policies
    store.init()
    store.load_farm(_two_jobs(), replace=True)
    session = Session(PolicySet(policies), keep_live=True)
    run_cycle(store, session, commit=True, now=NIGHT)
    later = NIGHT + timedelta(minutes=1)
    oracle, _ = plan_farm(store.read_farm(), PolicySet(policies), engine="reference", now=later)
    assert ("block-orphans", "2") in {(t.policy, t.ident) for t in oracle.transitions}
    assert summary(run_cycle(store, session, commit=False, now=later).plan) == summary(oracle)


def test_a_sibling_failing_and_a_host_locked_reach_the_frames_that_copy_them(store: Store) -> None:
    policies = load_texts([("p.yaml", KILL_AND_ORPHANS)]).policies[2:]
    store.init()
    store.load_farm(_two_jobs(), replace=True)
    session = Session(PolicySet(policies), keep_live=True)
    run_cycle(store, session, commit=False, now=NIGHT)
    fr, wk = table("frames"), table("workers")
    with store.engine.begin() as conn:  # the supervisor: frame 2:1 fails, host h2 is locked
        conn.execute(update(fr).where(fr.c.job_id == 2, fr.c.number == 1).values(state="failed", host="h1"))
        conn.execute(update(wk).where(wk.c.name == "h2").values(state="locked"))
    later = NIGHT + timedelta(minutes=1)
    assert summary(run_cycle(store, session, commit=False, now=later).plan) == full_plan_with(store, policies, later)


def test_a_cycle_that_fails_after_reading_makes_the_next_one_read_everything(store: Store, monkeypatch: Any) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    run_cycle(store, session, commit=False, now=NIGHT)
    assert session.live is not None

    def blip(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(cycle_module, "plan_live", blip)  # the changes were read and applied, then this
    with pytest.raises(RuntimeError):
        run_cycle(store, session, commit=False, now=NIGHT)
    assert session.live is None  # what that cycle read was never evaluated: start over
    assert gc.isenabled()  # the cycle pauses the garbage collector, and a failed one too turns it back on
    monkeypatch.undo()
    assert summary(run_cycle(store, session, commit=False, now=NIGHT).plan) == full_plan(store, NIGHT)


def test_a_cycle_leaves_the_garbage_collector_as_it_found_it(store: Store) -> None:
    """A cycle pauses the cyclic collector while it works: on again after, and left off
    for a caller that had turned it off."""
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    for _ in range(2):  # the first cycle reads the whole farm, the second only what changed
        run_cycle(store, session, commit=False, now=NIGHT)
        assert gc.isenabled()
    gc.disable()
    try:
        run_cycle(store, session, commit=False, now=NIGHT)
        assert not gc.isenabled()
    finally:
        gc.enable()


def full_plan_with(store: Store, policies: list[Any], now: datetime) -> set[tuple[Any, ...]]:
    plan, _ = plan_farm(store.read_farm(), PolicySet(policies), engine="reference", now=now)
    return summary(plan)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(farm=farms(max_jobs=4, max_frames=6), policies=policy_sets(), seed=st.integers(0, 10_000))
def test_any_policies_see_every_change_of_the_fields_they_read(
    store: Store, farm: Farm, policies: list[Policy], seed: int
) -> None:
    """The live farm marks as changed only the entities whose read fields a change can
    move (a run dirties its own instance and the host's, and the job's others only when
    the host starts or stops succeeding or failing on it).  Whatever fields a policy
    reads, the engine's matches after each incremental cycle are a fresh evaluation's,
    and so is the plan (whose unchanged parts the live farm's `PlanMemo` reuses)."""
    store.init()
    store.load_farm(farm, replace=True)
    session = Session(PolicySet(policies), keep_live=True)
    enabled = [p for p in policies if p.enabled]
    rnd = random.Random(seed)
    now = NIGHT
    for cycle in range(3):
        result = run_cycle(store, session, commit=False, now=now)
        whole, _ = plan_farm(store.read_farm(), PolicySet(policies), engine="reference", now=now)
        assert summary(result.plan) == summary(whole), f"cycle {cycle}"
        assert _refusals(result.plan) == _refusals(whole), f"cycle {cycle}"
        fresh = FactBuilder(store.read_farm(), now)
        for kind in Kind:
            want = ReferenceEvaluator(enabled).evaluate(kind, fresh.facts(kind))
            got = current(session, kind)
            assert {n: sorted(map(str, ids)) for n, ids in got.items()} == {
                n: sorted(map(str, ids)) for n, ids in want.items()}, f"cycle {cycle}, {kind}"
        now += timedelta(minutes=rnd.choice([1, 4, 30]))
        supervisor_step(store, rnd, now, hosts=sorted(farm.workers) or None)


def test_a_host_that_starts_succeeding_on_a_job_reaches_the_job_s_other_instances(store: Store) -> None:
    """render04 completing its first frame of job 102 changes `other_hosts_succeeding`
    for the instance on render03, which ran nothing this cycle."""
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    texts = [("p.yaml", "policies:\n  - name: others-succeed\n    kind: instance\n"
              "    when: {other_hosts_succeeding: {gt: 0}}\n    actions: [block]\n    reason: others succeed\n")]
    loaded = load_texts(texts)
    assert loaded.errors == []
    policies = loaded.policies
    session = Session(PolicySet(policies), keep_live=True)
    run_cycle(store, session, commit=False, now=NIGHT)
    assert "102.1" not in current(session, Kind.INSTANCE)["others-succeed"]
    at = NIGHT + timedelta(minutes=1)
    fr, runs = table("frames"), table("frame_runs")
    with store.engine.begin() as conn:
        conn.execute(update(fr).where(fr.c.job_id == 102, fr.c.number == 10).values(
            state="complete", host="render04", instance="102.2", finished_at=at, state_since=at, exit_code=0,
            version=fr.c.version + 1))
        conn.execute(insert(runs).values(job_id=102, number=10, host="render04", instance="102.2", state="complete",
                                         exit_code=0, started_at=at - timedelta(minutes=3), finished_at=at))
    result = run_cycle(store, session, commit=False, now=at)
    assert "102.1" in current(session, Kind.INSTANCE)["others-succeed"]
    assert result.facts < 10  # and still only the entities that change could move were rebuilt


def test_a_frame_starting_reaches_its_host_when_a_policy_counts_running_frames(store: Store) -> None:
    store.init()
    farm = load_snapshot_file(EXAMPLE)
    store.load_farm(farm, replace=True)
    running = FactBuilder(farm, NIGHT).worker("render01")["frames_running"]
    session = one_policy_session("busy", "worker", f"{{frames_running: {{gt: {running}}}}}")
    assert matches_after_cycle(store, session, NIGHT, Kind.WORKER, "busy") == set()
    fr = table("frames")
    with store.engine.begin() as conn:
        conn.execute(update(fr).where(fr.c.job_id == 101, fr.c.number == 28).values(
            state="running", host="render01", instance="101.1", started_at=NIGHT, state_since=NIGHT,
            version=fr.c.version + 1))
    assert matches_after_cycle(store, session, NIGHT + timedelta(minutes=1), Kind.WORKER, "busy") == {"render01"}


def test_reasons_cite_related_and_time_fields_the_same_as_a_full_read(store: Store) -> None:
    """The daemon builds a match's fact with only the fields its reason cites: a reason
    citing the job's and the host's fields, a duration and a parameter reads the same."""
    texts = [("p.yaml", "policies:\n  - name: hold-pending\n    kind: frame\n    params: {why: waiting}\n"
              "    when: {state: pending}\n    actions: [block]\n"
              "    reason: '{why}: {job.name} has {job.frames_total} frames, {job.hosts} hosts; host "
              "{worker.name} runs {worker.frames_running}; pending {time_in_state}'\n")]
    loaded = load_texts(texts)
    assert loaded.ok, [str(e) for e in loaded.errors]
    store.init()
    store.load_farm(_two_jobs(), replace=True)
    session = Session(PolicySet(loaded.policies), keep_live=True)
    later = NIGHT + timedelta(minutes=90)
    got = summary(run_cycle(store, session, commit=False, now=later).plan)
    assert got == full_plan_with(store, loaded.policies, later)
    assert any("downstream has 3 frames, 0 hosts; host h2 runs 0; pending" in t[-1] for t in got), got


def test_the_recent_window_is_kept_only_when_a_policy_reads_it(store: Store) -> None:
    """A host's runs are kept for its `recent_*` counts only if some policy reads them,
    in a condition or only in its reason; a reason citing them then reads as after a
    whole read of the farm."""
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    pack = Session(PolicySet(PACK), keep_live=True)
    run_cycle(store, pack, commit=False, now=NIGHT)
    assert pack.live is not None and not pack.policy_set.reads_recent
    assert not any(pack.live.agg.host_recent.values())
    texts = [("p.yaml", "policies:\n  - name: note-up\n    kind: worker\n    when: {state: up}\n    actions: [block]\n"
              "    reason: '{recent_failures} failed, {recent_successes} done lately'\n")]
    loaded = load_texts(texts)
    assert loaded.ok, [str(e) for e in loaded.errors]
    session = Session(PolicySet(loaded.policies), keep_live=True)
    assert session.policy_set.reads_recent
    got = summary(run_cycle(store, session, commit=False, now=NIGHT).plan)
    assert got == full_plan_with(store, loaded.policies, NIGHT)
    assert any(not t[-1].startswith("0 failed, 0 done") for t in got), got


def test_a_changed_frame_row_keeps_the_farm_s_one_string_for_each_name(store: Store) -> None:
    """The live farm decodes changed rows itself: a name the row kept stays the farm's
    own string, a new one is interned, and the frame reads exactly as a whole read has it."""
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    session = Session(PolicySet(PACK), keep_live=True)
    run_cycle(store, session, commit=False, now=NIGHT)
    fr = table("frames")
    later = NIGHT + timedelta(minutes=1)
    with store.engine.begin() as conn:  # 113:31 finishes where it ran; 113:32 moves to a host new to the farm
        conn.execute(update(fr).where(fr.c.job_id == 113, fr.c.number == 31).values(
            state="complete", finished_at=later, state_since=later, exit_code=0, version=fr.c.version + 1))
        conn.execute(update(fr).where(fr.c.job_id == 113, fr.c.number == 32).values(
            host="render" + "99", instance="113." + "9", version=fr.c.version + 1))
    run_cycle(store, session, commit=False, now=later)
    assert session.live is not None
    farm = session.live.farm
    done, moved = farm.jobs[113].frames[31], farm.jobs[113].frames[32]
    assert done.instance is farm.instances["113.1"].id and done.host is farm.instances["113.1"].host
    assert moved.host is intern("render99") and moved.instance is intern("113.9")
    whole = store.read_farm()
    assert (done, moved) == (whole.jobs[113].frames[31], whole.jobs[113].frames[32])
    assert done.finished_at == later and done.state_since == later and done.finished_at.tzinfo is not None


WINDOWED = """\
policies:
  - name: quarantine-on-recent-failures
    kind: worker
    when: {state: up, recent_failures: {gte: 2}}
    actions: [block]
    reason: "{recent_failures} failures in the last hour"
  - name: lock-out-on-recent-failures
    kind: instance
    when: {state: [pending, running, failed], host_recent_failures_on_job: {gte: 2}}
    actions: [block]
    reason: "{host_recent_failures_on_job} failures of this job in the last hour"
"""


def test_counts_of_the_recent_window_fall_as_time_passes_with_nothing_read(store: Store) -> None:
    """A worker's `recent_failures` and an instance's `host_recent_failures_on_job` count
    the last hour: two hours later, with no row changed, the daemon's farm in memory no
    longer matches them, as a whole read would not."""
    at = NIGHT - timedelta(minutes=10)
    job = Job(1, "shot")
    job.instances = {"1.h": Instance("1.h", 1, "h", InstanceState.RUNNING)}
    job.frames = {n: Frame(1, n, FrameState.FAILED, host="h", instance="1.h", exit_code=1, finished_at=at,
                           state_since=at, runs=[FrameRun("h", "1.h", FrameState.FAILED, 1, at, at)]) for n in (1, 2)}
    job.state = job.derived_state()
    store.init()
    store.load_farm(Farm(jobs={1: job}, workers={"h": Worker("h")}), replace=True)
    policies = load_texts([("p.yaml", WINDOWED)]).policies
    session = Session(PolicySet(policies), keep_live=True)
    first = summary(run_cycle(store, session, commit=False, now=NIGHT).plan)
    assert {t[0] for t in first} == {"quarantine-on-recent-failures", "lock-out-on-recent-failures"}
    _falls_as_a_whole_read_does(store, session, policies,
                                (NIGHT + timedelta(minutes=40), NIGHT + timedelta(minutes=55), NIGHT + timedelta(hours=2)))


def test_failures_read_by_a_steady_cycle_also_leave_the_window_with_nothing_read(store: Store) -> None:
    """The same, for failures the daemon read while running (not in its first whole read):
    an hour after them, with no row changed since, the counts have fallen."""
    job = Job(1, "shot", state=JobState.RUNNING, submitted_at=NIGHT)
    job.instances = {"1.h": Instance("1.h", 1, "h", InstanceState.RUNNING)}
    job.frames = {n: Frame(1, n, FrameState.RUNNING, host="h", instance="1.h", started_at=NIGHT, state_since=NIGHT)
                  for n in (1, 2)}
    store.init()
    store.load_farm(Farm(jobs={1: job}, workers={"h": Worker("h")}), replace=True)
    policies = load_texts([("p.yaml", WINDOWED)]).policies
    session = Session(PolicySet(policies), keep_live=True)
    assert summary(run_cycle(store, session, commit=False, now=NIGHT).plan) == set()
    at = NIGHT + timedelta(minutes=5)
    for number in (1, 2):
        _finish(store, 1, number, "h", "failed", NIGHT, at)
    got = summary(run_cycle(store, session, commit=False, now=at).plan)
    assert {t[0] for t in got} == {"quarantine-on-recent-failures", "lock-out-on-recent-failures"}
    _falls_as_a_whole_read_does(store, session, policies,
                                (at + timedelta(minutes=59), at + timedelta(minutes=61), at + timedelta(hours=3)))


def _falls_as_a_whole_read_does(store: Store, session: Session, policies: Any, times: tuple[datetime, ...]) -> None:
    """Cycles at `times`, nothing written: each plans what a whole read plans, the last nothing."""
    got: set[tuple[Any, ...]] = set()
    for later in times:
        got = summary(run_cycle(store, session, commit=False, now=later).plan)
        assert got == full_plan_with(store, policies, later), later
    assert got == set()


def test_a_host_failing_a_second_job_reaches_the_first_job_s_fact(store: Store) -> None:
    """`failing_hosts_only_here` of job 1 counts 'a' while 'a' has failed nothing else;
    'a' failing a frame of job 2 changes job 1's fact, though no row of job 1 changed."""
    job1 = Job(1, "broken", state=JobState.FAILING, submitted_at=NIGHT)
    job1.frames = {1: Frame(1, 1, FrameState.FAILED, host="a", exit_code=1, finished_at=NIGHT,
                            runs=[FrameRun("a", None, FrameState.FAILED, 1, NIGHT - timedelta(minutes=3), NIGHT)]),
                   2: Frame(1, 2, FrameState.PENDING)}
    job2 = Job(2, "other", state=JobState.RUNNING, submitted_at=NIGHT)
    job2.frames = {1: Frame(2, 1, FrameState.RUNNING, host="a", started_at=NIGHT, state_since=NIGHT)}
    store.init()
    store.load_farm(Farm(jobs={1: job1, 2: job2}, workers={"a": Worker("a")}), replace=True)
    session = one_policy_session("failed-only-here", "job", "{failing_hosts_only_here: {gte: 1}}")
    assert matches_after_cycle(store, session, NIGHT, Kind.JOB, "failed-only-here") == {1}
    at = NIGHT + timedelta(minutes=1)
    _finish(store, 2, 1, "a", "failed", NIGHT, at)
    assert matches_after_cycle(store, session, at, Kind.JOB, "failed-only-here") == set()


def test_a_host_failing_another_job_in_a_row_reaches_the_first_job_s_healthy_count(store: Store) -> None:
    """`failing_hosts_healthy_elsewhere` of job 1 counts 'h' (it completed a frame of job 3)
    until 'h' fails job 2 too, and again once it completes a frame (then job 2's counts it
    too): no row of job 1 changes."""
    before = NIGHT - timedelta(minutes=30)
    job1 = Job(1, "new", state=JobState.FAILING, submitted_at=before)
    job1.frames = {1: Frame(1, 1, FrameState.FAILED, host="h", exit_code=1, finished_at=NIGHT - timedelta(minutes=5),
                            runs=[FrameRun("h", None, FrameState.FAILED, 1, before, NIGHT - timedelta(minutes=5))]),
                   2: Frame(1, 2, FrameState.PENDING)}
    job2 = Job(2, "other", state=JobState.RUNNING, submitted_at=before)
    job2.frames = {1: Frame(2, 1, FrameState.RUNNING, host="h", started_at=NIGHT, state_since=NIGHT)}
    job3 = Job(3, "done", state=JobState.RUNNING, submitted_at=before)
    job3.frames = {1: Frame(3, 1, FrameState.COMPLETE, host="h", exit_code=0, finished_at=before,
                            runs=[FrameRun("h", None, FrameState.COMPLETE, 0, before - timedelta(minutes=9), before)]),
                   2: Frame(3, 2, FrameState.RUNNING, host="x", started_at=NIGHT, state_since=NIGHT)}
    store.init()
    store.load_farm(Farm(jobs={1: job1, 2: job2, 3: job3}, workers={"h": Worker("h"), "x": Worker("x")}),
                    replace=True)
    session = one_policy_session("healthy-host-fails-it", "job", "{failing_hosts_healthy_elsewhere: {gte: 1}}")
    assert matches_after_cycle(store, session, NIGHT, Kind.JOB, "healthy-host-fails-it") == {1}
    at = NIGHT + timedelta(minutes=1)
    _finish(store, 2, 1, "h", "failed", NIGHT, at)
    assert matches_after_cycle(store, session, at, Kind.JOB, "healthy-host-fails-it") == set()
    later = at + timedelta(minutes=1)
    _finish(store, 3, 2, "h", "complete", at, later)
    assert matches_after_cycle(store, session, later, Kind.JOB, "healthy-host-fails-it") == {1, 2}  # job 2 now too


def test_failing_for_moves_with_the_failures_read_and_not_with_the_clock(store: Store) -> None:
    """`failing_for` (from a host's last completed frame to its latest failure): a host that
    failed a frame ten minutes after completing one, then waits for work, is not failing
    for an hour an hour later; a failure read 70 minutes after that completion makes it so."""
    done, failed = NIGHT - timedelta(minutes=50), NIGHT - timedelta(minutes=40)
    job = Job(1, "shot", state=JobState.FAILING, submitted_at=done - timedelta(hours=1))
    job.frames = {1: Frame(1, 1, FrameState.COMPLETE, host="h", exit_code=0, finished_at=done,
                           runs=[FrameRun("h", None, FrameState.COMPLETE, 0, done - timedelta(minutes=5), done)]),
                  2: Frame(1, 2, FrameState.FAILED, host="h", exit_code=1, finished_at=failed,
                           runs=[FrameRun("h", None, FrameState.FAILED, 1, failed - timedelta(minutes=5), failed)]),
                  3: Frame(1, 3, FrameState.RUNNING, host="h", started_at=NIGHT, state_since=NIGHT)}
    store.init()
    store.load_farm(Farm(jobs={1: job}, workers={"h": Worker("h")}), replace=True)
    session = one_policy_session("failing-an-hour", "worker", "{failing_for: {gte: 1h}}")
    for later in (NIGHT, NIGHT + timedelta(minutes=11), NIGHT + timedelta(hours=3)):
        assert matches_after_cycle(store, session, later, Kind.WORKER, "failing-an-hour") == set(), later
    at = done + timedelta(minutes=70)
    _finish(store, 1, 3, "h", "failed", NIGHT, at)
    later = NIGHT + timedelta(hours=3, minutes=1)
    assert matches_after_cycle(store, session, later, Kind.WORKER, "failing-an-hour") == {"h"}


def test_another_host_completing_a_job_reaches_the_fact_of_the_host_that_failed_it(store: Store) -> None:
    """`distinct_jobs_failed_others_complete` of 'h' leaves out job 1 while nobody has
    completed a frame of it; 'x' completing one changes h's fact, though no row of h changed."""
    before = NIGHT - timedelta(minutes=3)
    job1 = Job(1, "new", state=JobState.FAILING, submitted_at=NIGHT)
    job1.frames = {1: Frame(1, 1, FrameState.FAILED, host="h", exit_code=1, finished_at=before,
                            runs=[FrameRun("h", None, FrameState.FAILED, 1, before - timedelta(minutes=3), before)]),
                   2: Frame(1, 2, FrameState.RUNNING, host="x", started_at=before, state_since=before)}
    store.init()
    store.load_farm(Farm(jobs={1: job1}, workers={"h": Worker("h"), "x": Worker("x")}), replace=True)
    session = one_policy_session("fails-what-others-complete", "worker",
                                 "{distinct_jobs_failed_others_complete: {gte: 1}}")
    assert matches_after_cycle(store, session, NIGHT, Kind.WORKER, "fails-what-others-complete") == set()
    at = NIGHT + timedelta(minutes=1)
    _finish(store, 1, 2, "x", "complete", before, at)
    assert matches_after_cycle(store, session, at, Kind.WORKER, "fails-what-others-complete") == {"h"}


def _finish(store: Store, job_id: int, number: int, host: str, state: str, started: datetime, at: datetime) -> None:
    """A frame finished as a supervisor writing SQL would record it: its row, and its run."""
    fr, runs = table("frames"), table("frame_runs")
    code = 0 if state == "complete" else 1
    with store.engine.begin() as conn:
        conn.execute(update(fr).where(fr.c.job_id == job_id, fr.c.number == number).values(
            state=state, finished_at=at, state_since=at, exit_code=code, version=fr.c.version + 1))
        conn.execute(insert(runs).values(job_id=job_id, number=number, host=host, state=state, exit_code=code,
                                         started_at=started, finished_at=at))
