"""The farm managers' own failure handling, the oracle and the audit, on hand-made nights:
each documented default does what a wrangler of that manager would see it do."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.sim import HANDLINGS, Scenario, draw_night, make_handling, play
from corral.sim.audit import WRONG, Decision, audit
from corral.sim.managers import Afanasy, Deadline, Qube
from corral.sim.scenario import Night, NightHost, NightJob
from corral.sim.simulator import Simulation
from corral.states import Action, Kind

HOUR = 3600.0


def _host(name: str, *, bad: bool = False) -> NightHost:
    return NightHost(name, 16, 1.0, bad)


def _job(job_id: int, frames: int, *, minutes: float = 10.0, priority: int = 50, broken: bool = False,
         flaky: frozenset[int] = frozenset(), depends_on: tuple[int, ...] = (), chain: int | None = None) -> NightJob:
    return NightJob(job_id, f"job{job_id}", priority, frames, (minutes * 60.0,) * frames, 0.0,
                    job_id - 1 if chain is None else chain, depends_on, broken, flaky)


def _night(hosts: list[NightHost], jobs: list[NightJob], hours: float) -> Night:
    scenario = Scenario(seed=0, jobs=len(jobs), hosts=len(hosts), hours=hours)
    chains: dict[int, list[int]] = {}
    for j in jobs:
        chains.setdefault(j.chain, []).append(j.id)
    return Night(scenario, tuple(hosts), tuple(jobs), tuple(tuple(c) for c in chains.values()))


def _play(night: Night, handling: str | Afanasy | Deadline | Qube, *, oracle: bool = False) -> Simulation:
    sim = Simulation(night, None, policies=None, handling=handling, oracle=oracle)
    sim.run()
    return sim


def test_every_manager_is_registered_by_name() -> None:
    assert set(HANDLINGS) == {"qube", "afanasy", "deadline", "none"}
    for name in HANDLINGS:
        assert make_handling(name).name == name
    with pytest.raises(ValueError, match="choose one of"):
        make_handling("tractor")


# --- Afanasy ---------------------------------------------------------------------------


def test_afanasy_avoids_a_host_after_three_errors_on_a_job_and_forgives_it_after_five_hours() -> None:
    night = _night([_host("render01", bad=True), _host("render02")], [_job(1, 400)], hours=6.0)
    sim = _play(night, "afanasy")
    tries = [start for start, _, host, job, _, _ in sim.attempt_log if host == "render01" and job == 1]
    assert len([t for t in tries if t < 5 * HOUR]) == 3  # then the job avoids it
    assert [t for t in tries if t >= 5 * HOUR]  # forgiven: it gets the job's tasks again
    # the frame it failed went back to ready each time and rendered on the good host
    first = sorted((s, h, f, c) for s, _, h, _, f, c in sim.attempt_log if f == 1)
    assert [c for *_, c in first[:-1]] == ["bad_host"] * (len(first) - 1)
    assert first[-1][1] == "render02" and first[-1][3] is None


def test_afanasy_retries_a_failing_task_three_times_then_leaves_it_failed() -> None:
    hosts = [_host(f"render{n:02d}") for n in range(1, 11)]
    sim = _play(_night(hosts, [_job(1, 5, broken=True)], hours=2.0), "afanasy")
    attempts: dict[int, int] = {}
    for *_, frame, cause in sim.attempt_log:
        assert cause in ("broken_job", "futile_retry")
        attempts[frame] = attempts.get(frame, 0) + 1
    assert attempts == dict.fromkeys(range(1, 6), 4)
    assert sim._report(0).wasted_by_cause["futile_retry"] > 0


def test_afanasy_sick_render_gets_no_work_after_errors_from_several_users() -> None:
    jobs = [_job(n, 50, chain=n - 1) for n in range(1, 5)]
    night = _night([_host("render01", bad=True), _host("render02")], jobs, hours=1.0)
    healthy_alone = _play(night, Afanasy())
    sick = _play(night, Afanasy(sick_errors_count=2))

    def tries(sim: Simulation) -> int:
        return sum(1 for _, _, host, *_ in sim.attempt_log if host == "render01")

    # three errors on the first artist's job (then that job avoids it), one on the second's: sick, no more work
    assert tries(sick) == 4 < tries(healthy_alone) == 12


# --- Deadline --------------------------------------------------------------------------


def test_deadline_fails_a_job_after_a_hundred_errors() -> None:
    hosts = [_host(f"render{n:02d}") for n in range(1, 11)]
    sim = _play(_night(hosts, [_job(1, 300, broken=True)], hours=3.0), "deadline")
    ends = sorted(end for _, end, *_ in sim.attempt_log)
    hundredth = ends[99]
    assert not [s for s, *_ in sim.attempt_log if s > hundredth], "the failed job got work after its 100th error"
    assert 100 <= len(sim.attempt_log) < 100 + len(hosts)


def test_deadline_puts_a_worker_on_a_jobs_bad_list_after_errors_in_a_row() -> None:
    jobs = [_job(1, 200, priority=90, chain=0), _job(2, 200, priority=10, chain=1)]
    sim = _play(_night([_host("render01", bad=True), _host("render02")], jobs, hours=1.0), "deadline")
    order = [job for _, _, host, job, _, _ in sorted(sim.attempt_log) if host == "render01"]
    # five errors in a row on job 1 put it on job 1's bad list: it moves to job 2 while job 2 has work
    assert order[:10] == [1] * 5 + [2] * 5
    # bad for both, it takes the first job with work again rather than idle
    assert order[10] == 1


# --- Qube! -----------------------------------------------------------------------------


def test_qube_retries_failed_work_after_its_retry_delay() -> None:
    sim = _play(_night([_host("render01")], [_job(1, 20, flaky=frozenset({1}))], hours=1.0), "qube")
    runs = sorted((s, e, c) for s, e, _, _, f, c in sim.attempt_log if f == 1)
    assert runs[0][2] == "flaky_frame" and runs[1][2] is None
    assert runs[1][0] - runs[0][1] >= Qube().retryworkdelay


def test_qube_auto_wrangling_locks_a_failing_host_out_of_a_job_others_run() -> None:
    hosts = [_host("render01", bad=True), *(_host(f"render0{n}") for n in range(2, 5))]
    sim = _play(_night(hosts, [_job(1, 200)], hours=2.0), "qube")
    failed = {f for _, _, h, _, f, c in sim.attempt_log if h == "render01"}
    # more than aw_activation_work_count (5) failures, none completed, others running: locked out
    assert len([a for a in sim.attempt_log if a[2] == "render01"]) == 6
    assert "render01" in sim.handling.locked_out[1]  # type: ignore[attr-defined]
    rendered = {f for _, _, h, _, f, c in sim.attempt_log if c is None}
    assert failed <= rendered  # its failed frames went back to pending and rendered elsewhere


def test_qube_auto_wrangling_blocks_a_job_every_host_fails() -> None:
    hosts = [_host(f"render0{n}") for n in range(1, 5)]
    sim = _play(_night(hosts, [_job(1, 200, broken=True)], hours=2.0), "qube")
    assert sim.handling.stopped(sim.jobs[1])
    last = max(end for _, end, *_ in sim.attempt_log)
    assert last < 0.5 * HOUR and len(sim.attempt_log) < 40


def test_every_real_manager_releases_a_dependent_when_its_input_completes() -> None:
    jobs = [_job(1, 4, minutes=3, chain=0), _job(2, 4, minutes=3, chain=0, depends_on=(1,))]
    night = _night([_host("render01"), _host("render02")], jobs, hours=1.0)
    for name in ("qube", "afanasy", "deadline"):
        sim = _play(night, name)
        assert sim.jobs[2].done_at is not None, name
        assert sim.manager_releases == 1 and not sim.decisions
    assert _play(night, "none").jobs[2].done_at is None  # the wrangler checks in only at 3 h


# --- the oracle and the audit ------------------------------------------------------------


@pytest.mark.parametrize("manager", ["none", "qube", "afanasy", "deadline"])
def test_the_oracle_makes_no_wrong_action(manager: str) -> None:
    for seed in (1, 2, 3):
        night = draw_night(Scenario(seed=seed, jobs=16, hosts=12, hours=3.0, frames=(10, 40), bad_host_share=0.15,
                                    broken_job_share=0.15))
        report = play(night, policies=None, handling=manager, oracle=True)
        assert sum(report.wrong_actions.values()) == 0, report.wrong_action_lines
        assert set(report.hosts_locked) <= set(night.faults()["bad_hosts"])


def test_the_oracle_quarantines_bad_hosts_blocks_broken_jobs_and_retries_healthy_frames() -> None:
    jobs = [_job(1, 30, broken=True, chain=0), _job(2, 30, minutes=3, flaky=frozenset({3}), chain=1)]
    night = _night([_host("render01", bad=True), _host("render02"), _host("render03")], jobs, hours=2.0)
    sim = _play(night, "none", oracle=True)
    did = {(d.kind, d.ident, d.action) for d in sim.decisions}
    assert (Kind.WORKER, "render01", Action.BLOCK) in did
    assert (Kind.JOB, "1", Action.BLOCK) in did
    assert (Kind.FRAME, "2:3", Action.RETRY) in did
    assert sim.jobs[2].done_at is not None
    first = min(end for _, end, h, *_ in sim.attempt_log if h == "render01")
    locked_at = min(d.at for d in sim.decisions if d.kind is Kind.WORKER)
    assert locked_at - first <= night.scenario.cycle_seconds  # at the first cycle after its first failure


def test_the_audit_names_each_wrong_decision() -> None:
    jobs = [_job(1, 10, chain=0), _job(2, 10, chain=0, depends_on=(1,)), _job(3, 10, broken=True, chain=1)]
    night = _night([_host("render01", bad=True), _host("render02")], jobs, hours=2.0)
    decisions = [
        Decision(60.0, "p", Kind.WORKER, "render01", Action.BLOCK),  # right: a bad host
        Decision(60.0, "p", Kind.WORKER, "render02", Action.BLOCK),  # wrong
        Decision(60.0, "p", Kind.JOB, "3", Action.BLOCK),  # right: a broken job
        Decision(120.0, "p", Kind.JOB, "1", Action.KILL),  # wrong
        *(Decision(180.0 + n, "p", Kind.FRAME, "1:4", Action.RETRY) for n in range(3)),  # the third is past the limit
    ]
    counts, lines = audit(night, decisions, done_at={1: 600.0, 2: None, 3: None}, blocked_at_end=[2], grace_seconds=300)
    assert list(counts) == list(WRONG)
    assert counts == {"good_host_locked": 1, "healthy_job_blocked": 1, "retry_past_limit": 1, "healthy_chain_waiting": 1}
    assert any("render02" in line for line in lines) and any("job 2" in line for line in lines)


# --- any night ------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(1, 100_000),
    bad=st.sampled_from([0.0, 0.1, 0.3]),
    broken=st.sampled_from([0.0, 0.15, 0.4]),
    manager=st.sampled_from(["none", "qube", "afanasy", "deadline"]),
)
def test_on_any_night_each_manager_keeps_its_limits_and_the_oracle_is_never_wrong(
    seed: int, bad: float, broken: float, manager: str
) -> None:
    night = draw_night(Scenario(seed=seed, jobs=8, hosts=6, hours=2.0, frames=(5, 20), bad_host_share=bad,
                                broken_job_share=broken, flaky_frame_share=0.1, drop_host_share=0.2))
    alone = _play(night, Deadline(job_error_limit=12) if manager == "deadline" else manager)
    failures: dict[tuple[int, int], int] = {}
    errors: dict[int, list[float]] = {}
    for _, end, _, job, frame, cause in sorted(alone.attempt_log, key=lambda a: a[1]):
        if cause is not None:
            failures[(job, frame)] = failures.get((job, frame), 0) + 1
            errors.setdefault(job, []).append(end)
    if manager == "none":
        assert max(failures.values(), default=0) <= 1  # nobody retries
    if manager == "afanasy":
        assert max(failures.values(), default=0) <= 1 + Afanasy().errors_retries
    if manager == "deadline":
        for job, ends in errors.items():
            if len(ends) >= 12:
                assert not [s for s, _, _, j, _, _ in alone.attempt_log if j == job and s > ends[11]]
    with_oracle = _play(night, manager, oracle=True)
    report = with_oracle._report(0)
    assert sum(report.wrong_actions.values()) == 0, report.wrong_action_lines
    assert {h for h, host in with_oracle.hosts.items() if host.locked} <= {h.name for h in night.hosts if h.bad}


# --- corral's per-frame host avoidance, respected by the simulated supervisor -------------

AVOID = """
policies:
  - name: retry-away
    kind: frame
    when: {state: failed, job.state: [running, failing, retrying]}
    actions: [{retry: {spend: false, avoid_failed_hosts: true}}]
    reason: "retry away from {hosts_failed|host}"
"""


@pytest.mark.parametrize("avoid", [True, False])
def test_the_supervisor_never_gives_a_frame_back_to_a_host_corral_keeps_away_from_it(
        tmp_path: Path, avoid: bool) -> None:
    from corral.policy.loader import load_texts
    from corral.store.store import Store

    text = AVOID if avoid else AVOID.replace("spend: false, avoid_failed_hosts: true", "spend: false")
    policies = load_texts([("p.yaml", text)]).policies
    night = _night([_host("bad", bad=True), _host("good")], [_job(1, 6, minutes=5.0)], hours=3.0)
    store = Store.open(f"sqlite:///{tmp_path}/night.db")
    store.init()
    sim = Simulation(night, store, policies=policies, handling="none")
    sim.run()
    on_bad = [frame for _start, _end, host, _job_id, frame, cause in sim.attempt_log if host == "bad" and cause]
    if avoid:
        assert len(on_bad) == len(set(on_bad))  # each frame failed there once, then went elsewhere
    else:
        assert len(on_bad) > len(set(on_bad))  # without it, frames went back to the bad host
