"""Each action of the seed's action table, and what it does to jobs, frames and instances."""

from __future__ import annotations

import pytest

from conftest import NOW, snap
from corral.effects import apply_action
from corral.farm import Farm
from corral.states import Action, FrameState, Hold, IllegalAction, InstanceState, JobState, Kind, WorkerState

RUNNING = """
jobs:
  - id: 1
    name: a
    retry_limit: 1
    instances:
      - {id: i1, host: n1, state: running}
      - {id: i2, host: n2, state: failed}
    frames:
      - {number: 1, state: running, host: n1, instance: i1}
      - {number: 2, state: failed, host: n2, instance: i2}
      - {number: 3, state: complete}
      - {number: 4, state: pending}
"""


def frames(farm: Farm) -> dict[int, str]:
    return {n: str(f.state) for n, f in farm.jobs[1].frames.items()}


def test_block_running_job_puts_running_frames_back_to_pending() -> None:
    farm = snap(RUNNING)
    out = apply_action(farm, Kind.JOB, "1", Action.BLOCK, now=NOW, actor="user:ann")
    assert (out.from_state, out.to_state) == ("failing", "blocked")
    assert frames(farm) == {1: "pending", 2: "failed", 3: "complete", 4: "pending"}
    assert farm.jobs[1].instances["i1"].state == InstanceState.PENDING
    assert farm.jobs[1].frames[1].host is None and farm.jobs[1].blocked_by == "user:ann"


def test_unblock_lets_the_job_follow_its_frames_again() -> None:
    farm = snap(RUNNING)
    apply_action(farm, Kind.JOB, "1", Action.BLOCK, now=NOW)
    out = apply_action(farm, Kind.JOB, "1", Action.UNBLOCK, now=NOW)
    assert out.to_state == "failing" and farm.jobs[1].hold is Hold.NONE


def test_unblock_of_a_plain_pending_job_is_refused() -> None:
    farm = snap("jobs: [{id: 1, name: a, frames: [{number: 1}]}]")
    with pytest.raises(IllegalAction, match="neither blocked nor suspended"):
        apply_action(farm, Kind.JOB, "1", Action.UNBLOCK, now=NOW)


def test_interrupt_kills_the_current_frame_and_queues_it_again() -> None:
    farm = snap(RUNNING)
    apply_action(farm, Kind.JOB, "1", Action.INTERRUPT, now=NOW)
    assert frames(farm)[1] == "pending" and farm.jobs[1].hold is Hold.NONE
    assert farm.jobs[1].state == JobState.FAILING


def test_kill_ends_the_current_frame_and_does_not_restart_the_job() -> None:
    farm = snap(RUNNING)
    apply_action(farm, Kind.JOB, "1", Action.KILL, now=NOW)
    assert farm.jobs[1].state == JobState.KILLED and frames(farm)[1] == "killed"
    assert farm.jobs[1].instances["i1"].state == InstanceState.KILLED
    with pytest.raises(IllegalAction, match="cannot interrupt job 1: it is killed"):
        apply_action(farm, Kind.JOB, "1", Action.INTERRUPT, now=NOW)


def test_retry_puts_failed_and_killed_frames_back_on_the_queue_as_is() -> None:
    farm = snap(RUNNING)
    apply_action(farm, Kind.JOB, "1", Action.KILL, now=NOW)
    apply_action(farm, Kind.JOB, "1", Action.RETRY, now=NOW)
    assert frames(farm) == {1: "pending", 2: "pending", 3: "complete", 4: "pending"}
    assert farm.jobs[1].state == JobState.PENDING and farm.jobs[1].last_retry_at == NOW


def test_an_automatic_retry_spends_the_retry_limit_and_stops_at_it() -> None:
    farm = snap(RUNNING.replace("state: running, host: n1", "state: failed, host: n1"))
    apply_action(farm, Kind.JOB, "1", Action.RETRY, now=NOW, automatic=True)
    assert farm.jobs[1].retries == 1 and farm.jobs[1].state == JobState.RETRYING
    farm.jobs[1].frames[1].state = FrameState.FAILED
    farm.jobs[1].state = farm.jobs[1].derived_state()
    with pytest.raises(IllegalAction, match="used all 1 of its retries"):
        apply_action(farm, Kind.JOB, "1", Action.RETRY, now=NOW, automatic=True)


def test_resubmit_starts_every_frame_over_with_new_parameters() -> None:
    farm = snap("""
jobs:
  - id: 1
    name: a
    retries: 2
    frames: [{number: 1, state: complete}, {number: 2, state: failed, retries: 1}]
""")
    apply_action(farm, Kind.JOB, "1", Action.RESUBMIT, now=NOW, params={"priority": 80, "retry_limit": 3})
    job = farm.jobs[1]
    assert frames(farm) == {1: "pending", 2: "pending"} and job.frames[2].retries == 0
    assert (job.priority, job.retry_limit, job.retries, job.state) == (80, 3, 0, JobState.PENDING)


def test_resubmit_refuses_parameters_it_does_not_take() -> None:
    farm = snap("jobs: [{id: 1, name: a, frames: [{number: 1, state: complete}]}]")
    with pytest.raises(IllegalAction, match="'colour' is not one of them"):
        apply_action(farm, Kind.JOB, "1", Action.RESUBMIT, now=NOW, params={"colour": "red"})


def test_suspend_lets_the_current_frame_finish_and_shows_pending() -> None:
    farm = snap(RUNNING)
    apply_action(farm, Kind.JOB, "1", Action.SUSPEND, now=NOW)
    assert farm.jobs[1].state == JobState.PENDING and frames(farm)[1] == "running"
    out = apply_action(farm, Kind.JOB, "1", Action.UNBLOCK, now=NOW)
    assert out.to_state == "failing"


def test_frame_kill_moves_the_job_along_and_says_so() -> None:
    farm = snap("jobs: [{id: 1, name: a, frames: [{number: 1, state: running}, {number: 2, state: complete}]}]")
    out = apply_action(farm, Kind.FRAME, "1:1", Action.KILL, now=NOW)
    assert out.job_change == (1, "running", "killed")


def test_frame_block_and_unblock_hold_a_pending_frame() -> None:
    farm = snap(RUNNING)
    apply_action(farm, Kind.FRAME, "1:4", Action.BLOCK, now=NOW)
    assert frames(farm)[4] == "blocked"
    apply_action(farm, Kind.FRAME, "1:4", Action.UNBLOCK, now=NOW)
    assert frames(farm)[4] == "pending"


def test_instance_block_locks_the_host_out_and_requeues_its_running_frame() -> None:
    farm = snap(RUNNING)
    out = apply_action(farm, Kind.INSTANCE, "i1", Action.BLOCK, now=NOW)
    assert out.to_state == "blocked" and frames(farm)[1] == "pending"


def test_instance_block_with_requeue_failed_requeues_the_frames_it_failed() -> None:
    farm = snap(RUNNING)
    apply_action(farm, Kind.INSTANCE, "i2", Action.BLOCK, now=NOW, params={"requeue_failed": True})
    assert frames(farm)[2] == "pending"
    assert farm.jobs[1].instances["i2"].state == InstanceState.BLOCKED


def test_instance_kill_kills_its_frame() -> None:
    farm = snap(RUNNING)
    apply_action(farm, Kind.INSTANCE, "i1", Action.KILL, now=NOW)
    assert frames(farm)[1] == "killed"


def test_worker_block_quarantines_and_unblock_returns_it() -> None:
    farm = snap("workers: [{name: n1}]")
    apply_action(farm, Kind.WORKER, "n1", Action.BLOCK, now=NOW)
    assert farm.workers["n1"].state == WorkerState.LOCKED
    apply_action(farm, Kind.WORKER, "n1", Action.UNBLOCK, now=NOW)
    assert farm.workers["n1"].state == WorkerState.UP


def test_an_action_a_kind_does_not_have_is_refused_with_what_it_has() -> None:
    farm = snap("workers: [{name: n1}]")
    with pytest.raises(IllegalAction, match="workers have no 'kill' action"):
        apply_action(farm, Kind.WORKER, "n1", Action.KILL, now=NOW)


def test_every_touched_row_is_listed_with_the_version_it_was_read_at() -> None:
    farm = snap(RUNNING)
    farm.jobs[1].frames[1].version = 7
    out = apply_action(farm, Kind.JOB, "1", Action.BLOCK, now=NOW)
    touched = {(k, v) for k, _, v in out.touched}
    assert (Kind.FRAME, 7) in touched and (Kind.JOB, 0) in touched
