"""The farm simulator: deterministic, respects corral's decisions, and corral earns its keep."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.farm import Farm
from corral.sim import Scenario, Simulation, builtin_policies, compare, draw_night, open_farm, play
from corral.sim.history import FIRST_JOB, previous_day
from corral.sim.simulator import EPOCH, instance_id
from corral.states import Action, FrameState, InstanceState, JobState, WorkerState
from corral.store import Store

SMALL = Scenario(seed=3, jobs=8, hosts=8, hours=2.0, frames=(10, 30), bad_host_share=0.13, broken_job_share=0.13)


def test_the_same_seed_draws_the_same_night_and_another_seed_another() -> None:
    assert draw_night(SMALL) == draw_night(SMALL)
    assert draw_night(SMALL) != draw_night(Scenario(**{**SMALL.to_dict(), "seed": 4}))
    night = draw_night(SMALL)
    faults = night.faults()
    assert faults["bad_hosts"] and faults["broken_jobs"]
    for job in night.jobs:  # chains: each job waits on the one before it in its chain
        assert all(d == job.id - 1 for d in job.depends_on)


def test_the_same_seed_plays_the_same_night() -> None:
    night = draw_night(SMALL)
    first = play(night, policies=builtin_policies())
    second = play(night, policies=builtin_policies())
    assert first.deterministic() == second.deterministic()
    assert first.frames_rendered > 0 and first.actions_by_policy
    base1, base2 = play(night, policies=None), play(night, policies=None)
    assert base1.deterministic() == base2.deterministic()


def _run(tmp_path: Path, handling: str = "none") -> tuple[Simulation, Farm]:
    store = open_farm(None, tmp_path)
    sim = Simulation(draw_night(SMALL), store, policies=builtin_policies(), handling=handling)
    sim.run()
    farm = store.read_farm()
    store.close()
    return sim, farm


@pytest.mark.parametrize("handling", ["none", "afanasy"])
def test_the_supervisor_view_matches_the_store_after_the_night(tmp_path: Path, handling: str) -> None:
    sim, farm = _run(tmp_path, handling)
    for job_id, job in sim.jobs.items():
        stored = farm.jobs[job_id]
        # a frame the manager requeued is pending in its own view; the store learns when it starts
        # (or has it pending already, when corral retried it too)
        for number, frame in stored.frames.items():
            if number in job.requeued:
                assert job.states[number] is FrameState.PENDING and frame.state in (FrameState.FAILED, FrameState.PENDING)
            else:
                assert frame.state is job.states[number], (job_id, number)
        assert job.lockouts == {i.host for i in stored.instances.values() if i.state is InstanceState.BLOCKED}
    for name, host in sim.hosts.items():
        assert host.locked == (farm.workers[name].state is WorkerState.LOCKED)


def test_the_supervisor_respects_blocked_instances_locked_hosts_and_held_jobs(tmp_path: Path) -> None:
    sim, farm = _run(tmp_path)
    with Store.open(f"sqlite:///{tmp_path / 'farm.db'}") as s:
        log = s.transitions()
    assert sim.actions["block-failing-instance"] + sim.actions.get("lock-host-out-of-job", 0) > 0
    assert any(h.locked for h in sim.hosts.values())
    runs = [(job.id, run) for job in farm.jobs.values() for f in job.frames.values() for run in f.runs]
    running = [(job.id, f) for job in farm.jobs.values() for f in job.frames.values() if f.state is FrameState.RUNNING]
    for t in log:
        if t.actor != "corral" or not t.applied:
            continue
        if t.kind == "instance" and t.to_state == "blocked":
            job_id, _, host = t.entity_id.partition(".")
            late = [r for j, r in runs if j == int(job_id) and r.host == host and r.started_at and r.started_at >= t.at]
            assert not late, f"{host} took frames of job {job_id} after it was locked out at {t.at}"
            assert not [f for j, f in running if j == int(job_id) and f.host == host]
        if t.kind == "worker" and t.to_state == "locked":
            late = [r for _, r in runs if r.host == t.entity_id and r.started_at and r.started_at > t.at]
            assert not late, f"{t.entity_id} took work after it was quarantined at {t.at}"
        if t.kind == "job" and t.to_state == "blocked":
            unblocked = [u.at for u in log if u.kind == "job" and u.entity_id == t.entity_id and u.action == "unblock"]
            until = min((u for u in unblocked if u > t.at), default=None)
            late = [
                r
                for j, r in runs
                if j == int(t.entity_id) and r.started_at and r.started_at >= t.at and (until is None or r.started_at < until)
            ]
            assert not late, f"job {t.entity_id} got frames while blocked"


def test_without_handling_failed_frames_stay_failed_and_only_the_wrangler_releases_jobs() -> None:
    sim = Simulation(draw_night(SMALL), None, policies=None, handling="none")
    report = sim.run()
    assert sim.cycles == 0 and report.cycles == 0
    assert set(sim.actions) <= {"wrangler"}
    for job in sim.jobs.values():
        assert all(n <= 1 for n in job.attempts.values())  # nobody retried anything
    failed = sum(1 for j in sim.jobs.values() for s in j.states.values() if s is FrameState.FAILED)
    assert failed == sim.failed_attempts
    assert {d.action for d in sim.decisions} <= {Action.UNBLOCK}


def test_the_wrangler_checks_in_on_schedule() -> None:
    night = draw_night(
        Scenario(
            seed=5,
            jobs=6,
            hosts=10,
            hours=4.0,
            frames=(3, 6),
            bad_host_share=0,
            broken_job_share=0,
            flaky_frame_share=0,
            drop_host_share=0,
            wrangler_every_hours=2.0,
        )
    )
    sim = Simulation(night, None, policies=None)
    report = sim.run()
    assert sim.decisions and report.actions_by_policy.get("wrangler") == len(sim.decisions)
    assert {d.who for d in sim.decisions} == {"wrangler"}
    assert {round(d.at / 3600, 3) for d in sim.decisions} <= {2.0, 4.0}


def test_instance_ids_name_job_and_host() -> None:
    assert instance_id(12, "render03") == "12.render03"


@pytest.mark.slow  # a whole default night, three ways: run by CI's second step (pytest -m slow)
def test_with_corral_the_default_night_wastes_fewer_core_hours() -> None:
    result = compare(Scenario(), baseline="none")
    w, b, o = result.with_corral, result.baseline, result.oracle
    assert o is not None and sum(o.wrong_actions.values()) == 0
    # the oracle is the floor corral chases, not a bound: dispatch order can let corral waste a
    # little less on one night (seed 1: 101.5 against 103.6); the pack's target is 1.25 of it
    assert w.wasted_core_hours <= 1.25 * o.wasted_core_hours
    assert sum(w.wrong_actions.values()) == 0
    assert w.wasted_core_hours < b.wasted_core_hours
    assert w.frames_rendered > b.frames_rendered
    assert w.jobs_completed > b.jobs_completed
    assert w.chains_finished > b.chains_finished
    assert w.actions_by_policy["quarantine-worker"] >= 1
    assert set(w.hosts_locked) == set(result.faults["bad_hosts"])


def test_a_night_on_a_store_with_a_past_keeps_it_and_still_locks_only_the_bad_host(tmp_path: Path) -> None:
    """`--history`: the store holds yesterday's work of every host tonight (the bad one
    too: it went bad since); the night plays on top, yesterday's jobs stay as they were,
    and the pack locks the bad host and no other, as on an empty store."""
    night = draw_night(SMALL)
    past = previous_day(night, EPOCH)
    assert past == previous_day(night, EPOCH)  # seeded by the night
    assert all(job.id >= FIRST_JOB and job.state is JobState.COMPLETE for job in past.jobs.values())
    rendered = {f.host for job in past.jobs.values() for f in job.frames.values()}
    assert rendered == {h.name for h in night.hosts}
    assert any(r.state is FrameState.FAILED for job in past.jobs.values() for f in job.frames.values() for r in f.runs)
    assert max(f.finished_at for job in past.jobs.values() for f in job.frames.values() if f.finished_at) < EPOCH
    runs = sorted((r.finished_at, r.host, r.state) for job in past.jobs.values() for f in job.frames.values() for r in f.runs)
    last = {host: state for _, host, state in runs}
    assert set(last.values()) == {FrameState.COMPLETE}  # no host ends the day failing (a daemon would have acted)
    store = open_farm(None, tmp_path)
    store.load_farm(past, replace=False)
    sim = Simulation(night, store, policies=builtin_policies())
    report = sim.run()
    farm = store.read_farm()
    store.close()
    assert {j: job.state for j, job in farm.jobs.items() if j >= FIRST_JOB} == dict.fromkeys(past.jobs, JobState.COMPLETE)
    assert {n for n, h in sim.hosts.items() if h.locked} == {h.name for h in night.hosts if h.bad}
    assert not any(report.wrong_actions.values())
    with pytest.raises(ValueError, match="only corral's run"):
        play(night, policies=None, history=True)
