"""The seed's eight job states, each reached as the definitions say, and the invariants.

Scenario style: each test builds a small farm in the snapshot format, applies what a
wrangler, a policy or the supervisor would do, and checks the state a user would see.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import NOW, farms, snap
from corral.effects import apply_action
from corral.farm import Farm, FrameRun
from corral.states import (
    RULES,
    STATES,
    Action,
    FrameState,
    Hold,
    IllegalAction,
    JobState,
    Kind,
    derive_job_state,
)

JOB = """
jobs:
  - id: 1
    name: a
    retry_limit: 2
    instances: [{id: i1, host: n1, state: running}]
    frames:
      - {number: 1, state: running, host: n1, instance: i1}
      - {number: 2, state: pending}
"""


def test_a_submitted_job_whose_frames_all_wait_is_pending() -> None:
    assert snap("jobs: [{id: 1, name: a, frames: [{number: 1}, {number: 2}]}]").jobs[1].state == JobState.PENDING


def test_a_blocked_job_is_blocked_even_with_failed_frames() -> None:
    farm = snap(JOB)
    apply_action(farm, Kind.JOB, "1", Action.BLOCK, now=NOW)
    farm.jobs[1].frames[2].state = FrameState.FAILED
    assert farm.jobs[1].derived_state() == JobState.BLOCKED


def test_a_job_doing_work_with_no_failures_is_running() -> None:
    assert snap(JOB).jobs[1].state == JobState.RUNNING


def test_a_job_with_a_failed_frame_and_work_left_is_failing() -> None:
    farm = snap(JOB)
    farm.jobs[1].frames[2].state = FrameState.FAILED
    assert farm.jobs[1].derived_state() == JobState.FAILING


def test_a_job_with_a_failed_instance_and_work_left_is_failing() -> None:
    farm = snap(JOB.replace("state: running}]", "state: failed}]"))
    assert farm.jobs[1].state == JobState.FAILING


def test_a_job_retried_automatically_once_is_retrying() -> None:
    farm = snap(JOB.replace("{number: 2, state: pending}", "{number: 2, state: failed}"))
    apply_action(farm, Kind.FRAME, "1:2", Action.RETRY, now=NOW, automatic=True)
    assert farm.jobs[1].state == JobState.RETRYING


def test_a_job_retried_by_hand_is_not_retrying() -> None:
    farm = snap(JOB.replace("{number: 2, state: pending}", "{number: 2, state: failed}"))
    apply_action(farm, Kind.FRAME, "1:2", Action.RETRY, now=NOW)
    assert farm.jobs[1].state == JobState.RUNNING


def test_a_job_killed_by_a_user_is_killed_until_retried() -> None:
    farm = snap(JOB)
    apply_action(farm, Kind.JOB, "1", Action.KILL, now=NOW)
    assert farm.jobs[1].state == JobState.KILLED
    apply_action(farm, Kind.JOB, "1", Action.RETRY, now=NOW)
    assert farm.jobs[1].state == JobState.PENDING


def test_a_job_whose_frames_all_succeeded_is_complete() -> None:
    assert snap("jobs: [{id: 1, name: a, frames: [{range: 1-3, state: complete}]}]").jobs[1].state == JobState.COMPLETE


def test_a_job_with_no_work_left_and_a_failure_is_failed() -> None:
    farm = snap("jobs: [{id: 1, name: a, frames: [{number: 1, state: complete}, {number: 2, state: failed}]}]")
    assert farm.jobs[1].state == JobState.FAILED


def test_a_suspended_job_shows_as_pending() -> None:
    farm = snap(JOB)
    apply_action(farm, Kind.JOB, "1", Action.SUSPEND, now=NOW)
    assert (farm.jobs[1].state, farm.jobs[1].hold) == (JobState.PENDING, Hold.SUSPENDED)
    assert farm.jobs[1].frames[1].state == FrameState.RUNNING  # the current frame finishes first


def test_every_job_state_of_the_seed_is_reachable_and_no_other() -> None:
    assert set(STATES[Kind.JOB]) == {s.value for s in JobState}
    reached = {
        derive_job_state(hold, frames, instances, retried)
        for hold in Hold
        for frames in (["pending"], ["running"], ["failed", "pending"], ["complete"], ["failed"], ["killed"])
        for instances in ([], ["running"], ["failed"])
        for retried in (False, True)
    }
    assert reached == set(JobState)


# --- properties ----------------------------------------------------------------------------

ACTIONS = sorted(RULES, key=str)


@st.composite
def steps(draw: st.DrawFn, farm: Farm) -> list[tuple[str, object]]:
    """Actions on random entities, and frame results as the supervisor would report them."""
    out: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()) and farm.jobs:
            job = draw(st.sampled_from(sorted(farm.jobs)))
            frames = sorted(farm.jobs[job].frames)
            if frames:
                out.append(("result", (job, draw(st.sampled_from(frames)), draw(st.sampled_from(["complete", "failed"])))))
                continue
        kind, action = draw(st.sampled_from(ACTIONS))
        ids = _ids(farm, kind)
        if ids:
            out.append(("action", (kind, draw(st.sampled_from(ids)), action, draw(st.booleans()))))
    return out


def _ids(farm: Farm, kind: Kind) -> list[str]:
    if kind is Kind.JOB:
        return [str(j) for j in sorted(farm.jobs)]
    if kind is Kind.FRAME:
        return sorted(f.key for j in farm.jobs.values() for f in j.frames.values())
    if kind is Kind.INSTANCE:
        return sorted(farm.instances)
    return sorted(farm.workers)


def _supervisor_reports(farm: Farm, job_id: int, number: int, result: str) -> None:
    """A running frame finishes (anything else: the supervisor has nothing to report)."""
    job = farm.jobs[job_id]
    frame = job.frames[number]
    if frame.state != FrameState.RUNNING:
        return
    frame.state = FrameState(result)
    frame.runs.append(FrameRun(frame.host, frame.instance, frame.state, 0 if result == "complete" else 1))
    job.state = job.derived_state()


def _check_invariants(farm: Farm) -> None:
    for job in farm.jobs.values():
        assert job.state in STATES[Kind.JOB]
        assert job.state == job.derived_state(), f"job {job.id} is {job.state}, its definition says otherwise"
        assert all(f.state in STATES[Kind.FRAME] for f in job.frames.values())
        assert all(i.state in STATES[Kind.INSTANCE] for i in job.instances.values())
    assert all(w.state in STATES[Kind.WORKER] for w in farm.workers.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_actions_and_results_keep_every_state_in_the_tables_and_illegal_ones_change_nothing(
    data: st.DataObject,
) -> None:
    farm = data.draw(farms())
    _check_invariants(farm)
    for what, step in data.draw(steps(farm)):
        if what == "result":
            _supervisor_reports(farm, *step)  # type: ignore[misc]
        else:
            kind, ident, action, automatic = step  # type: ignore[misc]
            before = copy.deepcopy(farm)
            try:
                apply_action(farm, kind, ident, action, now=datetime(2024, 1, 1, tzinfo=UTC), automatic=automatic)
            except IllegalAction:
                assert farm == before, f"illegal {action} {kind} {ident} changed the farm"
                assert all(a.version == b.version for a, b in zip(farm.jobs.values(), before.jobs.values(), strict=True))
        _check_invariants(farm)


@pytest.mark.parametrize(("kind", "action"), ACTIONS, ids=lambda x: str(x))
def test_each_action_moves_only_between_states_of_its_kind(kind: Kind, action: Action) -> None:
    rule = RULES[(kind, action)]
    allowed = set(STATES[kind]) | {"derived"}
    assert set(rule.moves) <= set(STATES[kind]) and set(rule.moves.values()) <= allowed
