"""The built-in policy pack on small farms: what each policy does, and what it must leave alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.cycle import plan_farm
from corral.plan import Plan
from corral.policy.loader import builtin_dir, load_paths, load_texts
from corral.policyset import PolicySet
from corral.snapshot import load_snapshot_file, parse_snapshot

NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "farm-snapshot.yaml"


def ago(**kw: float) -> str:
    return (NOW - timedelta(**kw)).isoformat()


@pytest.fixture(scope="module")
def pack() -> list[Any]:
    result = load_paths([builtin_dir()])
    assert result.ok, result.errors
    return result.policies


@pytest.fixture(params=["durable", "reference"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def plan_for(
    pack: list[Any], snapshot: dict[str, Any], engine: str = "durable", overrides: dict[str, Any] | None = None
) -> Plan:
    farm = parse_snapshot(snapshot, "test")
    policies = pack
    if overrides:
        result = load_paths([builtin_dir()], overrides)
        assert result.ok, result.errors
        policies = result.policies
    plan, _ = plan_farm(farm, PolicySet(policies), now=NOW, engine=engine)
    return plan


def acts(plan: Plan) -> set[tuple[str, str, str, str]]:
    return {(t.policy, str(t.kind), t.ident, str(t.action)) for t in plan.transitions}


def touched(plan: Plan) -> set[str]:
    return {f"{t.kind}:{t.ident}" for t in plan.transitions}


def workers(*names: str) -> list[dict[str, Any]]:
    return [{"name": n} for n in names]


# --- block-failing-instance -------------------------------------------------------------


def failing_instance_farm(failures: int, success_after: bool = False) -> dict[str, Any]:
    frames: list[dict[str, Any]] = [
        {"number": n, "state": "failed", "host": "r1", "instance": "1.1", "exit_code": 1,
         "finished_at": ago(minutes=30 - n), "state_since": ago(minutes=30 - n)}
        for n in range(1, failures + 1)
    ]
    if success_after:
        frames.append({"number": 99, "state": "complete", "host": "r1", "instance": "1.1", "exit_code": 0,
                       "finished_at": ago(minutes=1)})
    frames.append({"number": 100, "state": "pending"})
    return {"jobs": [{"id": 1, "name": "a", "instances": [{"id": "1.1", "host": "r1", "state": "running"}],
                      "frames": frames}], "workers": workers("r1")}


def test_instance_failing_five_frames_in_a_row_is_blocked(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, failing_instance_farm(5), engine)
    assert ("block-failing-instance", "instance", "1.1", "block") in acts(plan)
    (t,) = [t for t in plan.transitions if t.ident == "1.1"]
    assert (t.from_state, t.to_state) == ("running", "blocked")
    assert t.reason == "blocked: 5 failed attempts in a row on r1"


def test_instance_with_four_failures_is_left_alone(pack: list[Any], engine: str) -> None:
    assert "instance:1.1" not in touched(plan_for(pack, failing_instance_farm(4), engine))


def test_a_success_resets_the_consecutive_failure_count(pack: list[Any], engine: str) -> None:
    assert "instance:1.1" not in touched(plan_for(pack, failing_instance_farm(6, success_after=True), engine))


def test_threshold_is_a_parameter(pack: list[Any]) -> None:
    plan = plan_for(pack, failing_instance_farm(3), overrides={"block-failing-instance": {"consecutive_failures": 3}})
    assert ("block-failing-instance", "instance", "1.1", "block") in acts(plan)


# --- lock-host-out-of-job ---------------------------------------------------------------


def lockout_farm(bad_failures: int, others_complete: bool = True, bad_completes: int = 0) -> dict[str, Any]:
    frames: list[dict[str, Any]] = [
        {"number": n, "state": "failed", "host": "bad", "instance": "1.b", "exit_code": 1, "finished_at": ago(minutes=5)}
        for n in range(1, bad_failures + 1)
    ]
    frames += [
        {"number": 50 + n, "state": "complete", "host": "bad", "instance": "1.b", "exit_code": 0,
         "finished_at": ago(minutes=40)}
        for n in range(bad_completes)
    ]
    if others_complete:
        frames += [{"number": 100 + n, "state": "complete", "host": "good", "instance": "1.g", "exit_code": 0,
                    "finished_at": ago(minutes=3)} for n in range(3)]
    frames.append({"number": 200, "state": "pending"})
    return {"jobs": [{"id": 1, "name": "a", "retry_limit": 0, "instances": [
        {"id": "1.b", "host": "bad", "state": "running"}, {"id": "1.g", "host": "good", "state": "running"}],
        "frames": frames}], "workers": workers("bad", "good")}


def test_host_failing_a_job_others_complete_is_locked_out_and_its_frames_requeued(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, lockout_farm(6), engine)
    lock = [t for t in plan.transitions if t.ident == "1.b"]
    assert [(t.policy, str(t.action)) for t in lock] == [("lock-host-out-of-job", "block")]
    assert dict(lock[0].params) == {"requeue_failed": True}
    assert "locked bad out of job 1" in lock[0].reason
    # the plainer block-failing-instance matched too, and lost to the higher priority
    assert any(s.policy == "block-failing-instance" and s.category == "duplicate" for s in plan.skipped)


def test_lockout_needs_more_than_five_failures(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, lockout_farm(5), engine)
    assert not any(t.policy == "lock-host-out-of-job" for t in plan.transitions)


def test_no_lockout_when_no_other_host_succeeds(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, lockout_farm(6, others_complete=False), engine)
    assert not any(t.policy == "lock-host-out-of-job" for t in plan.transitions)


def test_no_lockout_of_a_host_that_also_completed_frames_of_the_job(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, lockout_farm(6, bad_completes=1), engine)
    assert not any(t.policy == "lock-host-out-of-job" for t in plan.transitions)


def test_good_host_is_never_touched(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, lockout_farm(6), engine)
    assert "instance:1.g" not in touched(plan) and "worker:good" not in touched(plan)


# --- block-job-when-all-hosts-fail ------------------------------------------------------


def all_fail_farm(hosts: list[str], per_host: int = 6, succeeding: str | None = None) -> dict[str, Any]:
    frames: list[dict[str, Any]] = []
    n = 0
    for h in hosts:
        for _ in range(per_host):
            n += 1
            frames.append({"number": n, "state": "failed", "host": h, "exit_code": 1, "finished_at": ago(minutes=1),
                           "state_since": ago(minutes=1)})
    if succeeding:
        frames.append({"number": 900, "state": "complete", "host": succeeding, "exit_code": 0, "finished_at": ago(minutes=1)})
    frames.append({"number": 999, "state": "pending"})
    # each failing host rendered a frame of another job earlier: healthy hosts, so their
    # failures speak against job 7 (failing_hosts_healthy_elsewhere)
    elsewhere = [{"number": i, "state": "complete", "host": h, "exit_code": 0, "finished_at": ago(minutes=90)}
                 for i, h in enumerate(hosts, 1)]
    return {"jobs": [{"id": 7, "name": "broken", "retry_limit": 3, "frames": frames},
                     {"id": 8, "name": "earlier", "frames": elsewhere}],
            "workers": workers(*hosts, *([succeeding] if succeeding else []))}


FOUR = ["r1", "r2", "r3", "r4"]  # block-job-when-all-hosts-fail's min_hosts


def test_job_every_host_fails_is_blocked(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, all_fail_farm(FOUR, per_host=1), engine)
    assert ("block-job-when-all-hosts-fail", "job", "7", "block") in acts(plan)
    (t,) = [t for t in plan.transitions if t.kind == "job"]
    assert (t.from_state, t.to_state) == ("failing", "blocked")


def test_three_hosts_healthy_elsewhere_failing_a_job_are_not_yet_enough(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, all_fail_farm(["r1", "r2", "r3"], per_host=2), engine)
    assert "job:7" not in touched(plan)


def test_job_failing_on_one_host_only_is_not_blocked(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, all_fail_farm(["r1"], per_host=6), engine)
    assert "job:7" not in touched(plan)


def test_job_some_host_completes_is_not_blocked(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, all_fail_farm(FOUR, succeeding="r5"), engine)
    assert "job:7" not in touched(plan)


def test_frames_of_a_job_blocked_this_cycle_are_not_retried(pack: list[Any]) -> None:
    """Its hosts are healthy elsewhere and none completed a frame of it: retry-failed-frames
    leaves its frames alone (and were it to match them, the block played first would
    supersede it: tests/test_recheck.py)."""
    farm = all_fail_farm(FOUR)
    for f in farm["jobs"][0]["frames"]:
        if f["state"] == "failed":
            f["finished_at"] = f["state_since"] = ago(minutes=10)
    plan = plan_for(pack, farm)
    assert ("block-job-when-all-hosts-fail", "job", "7", "block") in acts(plan)
    assert not any(t.kind == "frame" for t in plan.transitions)


# --- retry-failed -------------------------------------------------------------------


def failed_job(retry_limit: int, retries: int, failed_ago: timedelta) -> dict[str, Any]:
    since = (NOW - failed_ago).isoformat()
    return {"jobs": [{"id": 3, "name": "comp", "retry_limit": retry_limit, "retries": retries, "state_since": since,
                      "frames": [{"number": 1, "state": "complete", "host": "r1", "exit_code": 0},
                                 {"number": 2, "state": "failed", "host": "r1", "exit_code": 2, "finished_at": since,
                                  "state_since": since, "retries": retries}]}],
            "workers": workers("r1")}


def test_failed_job_with_retries_left_is_retried_and_shows_retrying(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, failed_job(3, 0, timedelta(minutes=6)), engine)
    (t,) = [t for t in plan.transitions if t.kind == "job"]
    assert (t.policy, str(t.action), t.from_state, t.to_state) == ("retry-failed-jobs", "retry", "failed", "retrying")
    assert "3 of 3 retries left" in t.reason


def test_failed_job_is_not_retried_before_the_delay(pack: list[Any], engine: str) -> None:
    assert "job:3" not in touched(plan_for(pack, failed_job(3, 0, timedelta(minutes=2)), engine))


def test_job_out_of_retries_is_left_for_a_wrangler(pack: list[Any], engine: str) -> None:
    assert touched(plan_for(pack, failed_job(2, 2, timedelta(hours=1)), engine)) == set()


def test_failed_frame_of_a_running_job_is_retried_after_the_delay(pack: list[Any], engine: str) -> None:
    farm = {"jobs": [{"id": 4, "name": "fx", "retry_limit": 2, "frames": [
        {"number": 1, "state": "failed", "host": "r1", "exit_code": 1, "finished_at": ago(minutes=3),
         "state_since": ago(minutes=3)},
        {"number": 2, "state": "running", "host": "r2", "started_at": ago(minutes=1)},
        {"number": 3, "state": "failed", "host": "r1", "exit_code": 1, "finished_at": ago(seconds=30),
         "state_since": ago(seconds=30)}]}], "workers": workers("r1", "r2")}
    plan = plan_for(pack, farm, engine)
    assert acts(plan) == {("retry-failed-frames", "frame", "4:1", "retry")}


# --- dependencies -------------------------------------------------------------------


def deps_farm(upstream_state: str, dependent: dict[str, Any]) -> dict[str, Any]:
    up_frames = {"complete": [{"number": 1, "state": "complete", "host": "r1", "exit_code": 0}],
                 "failed": [{"number": 1, "state": "failed", "host": "r1", "exit_code": 1}],
                 "running": [{"number": 1, "state": "running", "host": "r1"}],
                 "killed": [{"number": 1, "state": "killed"}]}[upstream_state]
    up: dict[str, Any] = {"id": 1, "name": "up", "frames": up_frames}
    return {"jobs": [up, {"id": 2, "name": "down", "depends_on": [1], "frames": [{"number": 1}], **dependent}],
            "workers": workers("r1")}


def test_blocked_job_is_unblocked_when_all_dependencies_complete(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, deps_farm("complete", {"state": "blocked"}), engine)
    (t,) = plan.transitions
    assert (t.policy, t.ident, str(t.action), t.to_state) == ("unblock-when-dependencies-complete", "2", "unblock", "pending")


def test_blocked_job_waits_while_a_dependency_runs(pack: list[Any], engine: str) -> None:
    assert "job:2" not in touched(plan_for(pack, deps_farm("running", {"state": "blocked"}), engine))


def test_a_job_a_wrangler_blocked_is_never_unblocked_automatically(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, deps_farm("complete", {"state": "blocked", "blocked_by": "user:alice"}), engine)
    assert "job:2" not in touched(plan)


@pytest.mark.parametrize("upstream", ["failed", "killed"])
def test_pending_dependent_of_a_failed_or_killed_job_is_blocked_with_a_reason(
    pack: list[Any], engine: str, upstream: str
) -> None:
    plan = plan_for(pack, deps_farm(upstream, {}), engine)
    (t,) = [t for t in plan.transitions if t.ident == "2"]
    assert (t.policy, str(t.action), t.to_state) == ("keep-dependents-blocked", "block", "blocked")
    assert f"of its 1 dependency, {int(upstream == 'failed')} failed and {int(upstream == 'killed')} killed" in t.reason


def test_blocked_dependent_of_a_failed_job_stays_blocked_untouched(pack: list[Any], engine: str) -> None:
    assert "job:2" not in touched(plan_for(pack, deps_farm("failed", {"state": "blocked"}), engine))


def test_dependent_held_by_corral_is_released_once_its_dependency_completes(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, deps_farm("complete", {"state": "blocked", "blocked_by": "keep-dependents-blocked"}), engine)
    assert ("unblock-when-dependencies-complete", "job", "2", "unblock") in acts(plan)


# --- quarantine-worker --------------------------------------------------------------


def sick_host_farm(jobs: int, success_between: bool = False, healthy_hosts: int = 20) -> dict[str, Any]:
    out = []
    for j in range(1, jobs + 1):
        frames: list[dict[str, Any]] = [
            {"number": 1, "state": "failed", "host": "sick", "exit_code": 1, "finished_at": ago(minutes=30 - j),
             "state_since": ago(minutes=30 - j), "retries": 0},
            {"number": 2, "state": "running", "host": f"h{j}"},
        ]
        out.append({"id": j, "name": f"j{j}", "frames": frames})
    if success_between:
        out[0]["frames"].append({"number": 3, "state": "complete", "host": "sick", "exit_code": 0,
                                 "finished_at": ago(minutes=28, seconds=30)})
    return {"jobs": out, "workers": workers("sick", *[f"h{i}" for i in range(1, healthy_hosts + 1)])}


def test_host_failing_three_different_jobs_in_a_row_is_quarantined(pack: list[Any], engine: str) -> None:
    plan = plan_for(pack, sick_host_farm(3), engine)
    (t,) = [t for t in plan.transitions if t.kind == "worker"]
    assert (t.policy, t.ident, t.from_state, t.to_state) == ("quarantine-worker", "sick", "up", "locked")
    assert "3 different jobs" in t.reason


def test_a_success_in_between_keeps_the_host_in_service(pack: list[Any], engine: str) -> None:
    assert "worker:sick" not in touched(plan_for(pack, sick_host_farm(3, success_between=True), engine))


def test_quarantine_acts_on_none_when_too_much_of_the_farm_looks_sick(pack: list[Any]) -> None:
    # 3 of 4 hosts failing at once smells like a file server, not three sick hosts.
    farm = sick_host_farm(3, healthy_hosts=0)
    farm["workers"] = workers("sick", "sick2", "sick3", "ok")
    for j, host in zip(farm["jobs"], ["sick", "sick2", "sick3"], strict=False):
        j["frames"] = [
            {"number": n, "state": "failed", "host": host, "exit_code": 1, "finished_at": ago(minutes=20 - n)}
            for n in range(1, 4)
        ]
    for k, job in enumerate(farm["jobs"]):
        job["frames"] += [{"number": 10 + i, "state": "failed", "host": h, "exit_code": 1, "finished_at": ago(minutes=9 - i - k)}
                          for i, h in enumerate(["sick", "sick2", "sick3"])]
    plan = plan_for(pack, farm)
    assert not any(t.kind == "worker" for t in plan.transitions)
    assert "quarantine-worker" in plan.notes and "acting on none" in plan.notes["quarantine-worker"]


# --- the example farm -------------------------------------------------------------------


def test_example_farm_gets_the_documented_plan(pack: list[Any], engine: str) -> None:
    farm = load_snapshot_file(EXAMPLE)
    plan, _ = plan_farm(farm, PolicySet(pack), now=NOW, engine=engine)
    assert acts(plan) == {
        ("block-job-when-all-hosts-fail", "job", "102", "block"),
        ("keep-dependents-blocked", "job", "108", "block"),
        ("lock-host-out-of-job", "instance", "101.3", "block"),
        ("quarantine-worker", "worker", "render09", "block"),
        ("unblock-when-dependencies-complete", "job", "106", "unblock"),
        ("retry-failed-frames", "frame", "110:6", "retry"),
        ("retry-failed-frames", "frame", "111:6", "retry"),
        ("retry-failed-frames", "frame", "112:6", "retry"),
        ("retry-failed-jobs", "job", "103", "retry"),
    }
    # what must not be touched: the healthy job, the job out of retries, the job blocked on a
    # failed dependency, the job a wrangler blocked, the good hosts
    for untouched in ("job:104", "job:109", "job:113", "job:114", "worker:render01", "instance:101.1"):
        assert untouched not in touched(plan)


# --- one cycle, in order: two policies on one job, its instances and its hosts ---------------


def test_a_job_blocked_this_cycle_has_none_of_its_instances_blocked_in_the_same_cycle(pack: list[Any], engine: str) -> None:
    """block-job-when-all-hosts-fail (priority 80) blocks the job; block-failing-instance
    (60) matched its instances on the farm as it was, but its guard `not: {job.state:
    [blocked, killed]}` no longer holds once the job is blocked: superseded, saying why."""
    farm = all_fail_farm(FOUR)
    farm["jobs"][0]["instances"] = [{"id": f"7.{n}", "host": h, "state": "running"} for n, h in enumerate(FOUR, 1)]
    for i, f in enumerate(f for f in farm["jobs"][0]["frames"] if f.get("host")):
        f["instance"] = f"7.{FOUR.index(f['host']) + 1}"
        f["finished_at"] = ago(minutes=30 - i)
    farm["jobs"].append({"id": 9, "name": "healthy",  # keeps four blocks under block-failing-instance's max_percent
                         "instances": [{"id": f"8.{i}", "host": "r5"} for i in range(16)],
                         "frames": [{"number": 1, "state": "pending"}]})
    plan = plan_for(pack, farm, engine)
    assert [(t.policy, t.kind, t.ident) for t in plan.transitions] == [("block-job-when-all-hosts-fail", "job", "7")]
    superseded = {(s.policy, s.ident): s.why for s in plan.skipped if s.category == "superseded"}
    assert set(superseded) == {("block-failing-instance", f"7.{n}") for n in range(1, 5)}
    assert all("block on job 7 earlier in this cycle" in why and "job.state is blocked" in why
               for why in superseded.values())


def test_a_host_quarantined_this_cycle_is_not_also_locked_out_of_a_job_it_fails(
        pack: list[Any], engine: str) -> None:
    """Without the re-check, both would be planned: the worker locked and its instance
    blocked.  A policy that reads the host's state sees the lock; one that does not, here
    lock-host-out-of-job, still acts (its conditions hold either way)."""
    frames: list[dict[str, Any]] = []
    for n in range(1, 7):  # 'bad' fails six frames of job 1 while 'good' completes two
        frames.append({"number": n, "state": "failed", "host": "bad", "instance": "1.b", "exit_code": 1,
                       "finished_at": ago(minutes=40 - n), "state_since": ago(minutes=40 - n)})
    frames += [{"number": 7, "state": "complete", "host": "good", "instance": "1.g", "exit_code": 0,
                "finished_at": ago(minutes=20)},
               {"number": 8, "state": "complete", "host": "good", "instance": "1.g", "exit_code": 0,
                "finished_at": ago(minutes=20)}]
    jobs = [{"id": 1, "name": "shot", "frames": frames,
             "instances": [{"id": "1.b", "host": "bad", "state": "running"}, {"id": "1.g", "host": "good", "state": "running"}]}]
    for j in (2, 3):  # 'bad' then fails two other jobs: three different jobs in a row
        jobs.append({"id": j, "name": f"other{j}", "frames": [{"number": 1, "state": "failed", "host": "bad", "exit_code": 1,
                                                             "finished_at": ago(minutes=10 - j)}]})
    jobs[1]["instances"] = [{"id": "2.b", "host": "bad", "state": "running"}]
    snapshot = {"jobs": jobs, "workers": workers("bad", "good", *[f"r{i}" for i in range(20)])}
    guarded = load_texts([("guard.yaml", """
policies:
  - name: block-instance-on-an-up-host
    kind: instance
    priority: 10
    when: {state: running, job_id: 2, worker.state: up}
    actions: [block]
    reason: "{worker.state}"
""")]).policies
    plan = plan_for([*pack, *guarded], snapshot, engine)
    acted = {(t.policy, t.ident) for t in plan.transitions}
    assert ("quarantine-worker", "bad") in acted and ("lock-host-out-of-job", "1.b") in acted
    (s,) = [s for s in plan.skipped if s.policy == "block-instance-on-an-up-host"]
    assert (s.ident, s.category) == ("2.b", "superseded")
    assert "block on worker bad earlier in this cycle, and now worker.state is locked" in s.why
