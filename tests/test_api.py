"""The Python API (`corral.Corral`): supervisor news and corral's decisions, on every backend."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from conftest import NOW, later
from corral import ActionRefused, Corral, EventRejected, FrameRun, FrameState, InstanceState, JobState, WorkerState
from corral.states import Action, Hold, Kind
from corral.store import Proposal, Store
from corral.store.tables import table


@pytest.fixture
def corral(store: Store) -> Corral:
    return Corral(store, clock=lambda: NOW)


def versions(store: Store, name: str) -> dict[object, int]:
    t = table(name)
    keys = [c for c in t.primary_key.columns]
    with store.engine.connect() as conn:
        return {tuple(r[c.name] for c in keys): r["version"] for r in conn.execute(select(t)).mappings()}


def test_corral_is_importable_from_the_package() -> None:
    import corral

    assert corral.Corral is Corral
    assert set(corral.__all__) >= {"Corral", "EventRejected", "parse_frames", "event_json_schema"}


def test_submit_creates_pending_frames_and_logs_a_submit_row(corral: Corral) -> None:
    up = corral.submit_job("anim", frames="1-3,10", retry_limit=2, priority=70, at=later(1))
    assert up.id == 1 and up.state == JobState.PENDING and up.hold is Hold.NONE
    assert sorted(up.frames) == [1, 2, 3, 10]
    assert all(f.state == FrameState.PENDING and f.state_since == later(1) for f in up.frames.values())
    assert (up.retry_limit, up.priority, up.submitted_at) == (2, 70, later(1))
    down = corral.submit_job("comp", frames=[5, 6], state="blocked", depends_on=[1], job_id=40)
    assert down.id == 40 and down.state == JobState.BLOCKED and down.hold is Hold.BLOCKED
    assert down.blocked_by is None and down.depends_on == [1]
    assert corral.submit_job("next", frames="1").id == 41
    [row] = corral.history(job=40)
    assert (row.action, row.to_state, row.actor) == ("submit", "blocked", "supervisor")
    assert "waiting on job 1" in row.reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depends_on": [99]}, "no job 99 to depend on"),
        ({"job_id": 1}, "job 1 exists already"),
        ({"job_id": 5, "depends_on": [5]}, "cannot depend on itself"),
    ],
)
def test_a_submit_that_cannot_be_applied_raises_and_writes_nothing(
    corral: Corral, kwargs: dict[str, object], message: str
) -> None:
    corral.submit_job("first", frames="1")
    with pytest.raises(EventRejected, match=message):
        corral.submit_job("bad", frames="1-2", **kwargs)  # type: ignore[arg-type]
    assert list(corral.farm().jobs) == [1]


@pytest.mark.parametrize("frames", ["", "3-1", "1-3,2", "a-b", []])
def test_invalid_frames_are_refused(corral: Corral, frames: object) -> None:
    with pytest.raises(ValueError):
        corral.submit_job("bad", frames=frames)  # type: ignore[arg-type]


def test_frame_started_runs_the_frame_and_creates_its_worker_and_instance(corral: Corral) -> None:
    job = corral.submit_job("anim", frames="1-2")
    corral.frame_started(job.id, 1, host="n1", instance="i1", at=later(2))
    farm = corral.farm()
    frame = farm.jobs[1].frames[1]
    assert (frame.state, frame.host, frame.instance, frame.attempts) == (FrameState.RUNNING, "n1", "i1", 1)
    assert frame.started_at == frame.state_since == later(2)
    assert farm.jobs[1].instances["i1"].state == InstanceState.RUNNING
    assert farm.workers["n1"].state == WorkerState.UP
    assert farm.jobs[1].state == JobState.RUNNING and farm.jobs[1].state_since == later(2)
    assert frame.version == 1 and farm.jobs[1].version == 1


def test_finished_frames_keep_their_history_and_move_the_job(corral: Corral) -> None:
    corral.submit_job("anim", frames="1-2")
    corral.frame_started(1, 1, host="n1", instance="i1", at=later(1))
    corral.frame_failed(1, 1, exit_code=139, at=later(5))
    job = corral.job(1)
    frame = job.frames[1]
    assert (frame.state, frame.exit_code, frame.finished_at, frame.host, frame.instance) == (
        FrameState.FAILED, 139, later(5), "n1", "i1",
    )
    assert frame.runs == [FrameRun("n1", "i1", FrameState.FAILED, 139, later(1), later(5))]
    assert job.state == JobState.FAILING
    corral.frame_started(1, 1, host="n2", at=later(6))
    corral.frame_completed(1, 1, at=later(9))
    corral.frame_completed(1, 2, host="n2", at=later(10))  # its start was never reported: still one attempt
    job = corral.job(1)
    assert [r.state for r in job.frames[1].runs] == [FrameState.FAILED, FrameState.COMPLETE]
    assert job.frames[1].runs[1] == FrameRun("n2", None, FrameState.COMPLETE, 0, later(6), later(9))
    assert job.frames[1].attempts == 2 and job.frames[2].attempts == 1
    assert job.state == JobState.COMPLETE


def test_holds_win_over_news(corral: Corral) -> None:
    corral.submit_job("anim", frames="1", state="blocked")
    corral.frame_started(1, 1, host="n1", instance="i1")
    corral.act(Kind.INSTANCE, "i1", Action.BLOCK)
    corral.act(Kind.WORKER, "n1", Action.BLOCK)
    corral.frame_completed(1, 1)
    corral.instance_started("i1", job=1, host="n1")
    corral.worker_up("n1")
    corral.worker_down("n1")
    farm = corral.farm()
    assert farm.jobs[1].state == JobState.BLOCKED
    assert farm.jobs[1].frames[1].state == FrameState.COMPLETE
    assert farm.jobs[1].instances["i1"].state == InstanceState.BLOCKED
    assert farm.workers["n1"].state == WorkerState.LOCKED


def test_instances_and_workers_come_and_go(corral: Corral) -> None:
    corral.submit_job("anim", frames="1")
    corral.instance_started("i1", job=1, host="n1", at=later(1))
    assert corral.job(1).state == JobState.RUNNING
    corral.instance_ended("i1", exit_code=3, at=later(2))
    farm = corral.farm()
    assert farm.jobs[1].instances["i1"].state == InstanceState.FAILED
    assert farm.jobs[1].state == JobState.FAILING
    corral.instance_started("i1", job=1, host="n1")
    corral.instance_ended("i1", state="killed")
    assert corral.job(1).instances["i1"].state == InstanceState.KILLED
    corral.worker_down("n1", at=later(3))
    corral.worker_up("n9")
    farm = corral.farm()
    assert farm.workers["n1"].state == WorkerState.DOWN and farm.workers["n1"].state_since == later(3)
    assert farm.workers["n9"].state == WorkerState.UP
    corral.worker_up("n1")
    assert corral.farm().workers["n1"].state == WorkerState.UP


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.frame_started(9, 1, host="n1"), "no job 9"),
        (lambda c: c.frame_started(1, 7, host="n1"), "job 1 has no frame 7"),
        (lambda c: c.frame_started(1, 1), "give the host"),
        (lambda c: c.frame_started(1, 1, instance="new"), "instance new is unknown: give its host"),
        (lambda c: c.frame_started(2, 1, host="n1", instance="i1"), "instance i1 belongs to job 1, not 2"),
        (lambda c: c.frame_failed(1, 1, exit_code=1, host="n2", instance="i1"), "instance i1 runs on 'n1', not 'n2'"),
        (lambda c: c.instance_ended("nope"), "no instance nope"),
        (lambda c: c.instance_started("i1", job=2, host="n1"), "belongs to job 1"),
    ],
)
def test_news_about_unknown_or_mismatched_things_is_rejected_and_changes_nothing(
    corral: Corral, call: object, message: str
) -> None:
    corral.submit_job("a", frames="1")
    corral.submit_job("b", frames="1")
    corral.instance_started("i1", job=1, host="n1")
    before = corral.farm()
    with pytest.raises(EventRejected, match=message):
        call(corral)  # type: ignore[operator]
    assert corral.farm() == before


def test_an_event_id_makes_a_call_idempotent(corral: Corral, store: Store) -> None:
    corral.submit_job("anim", frames="1", event_id="s1")
    again = corral.submit_job("anim", frames="1", event_id="s1")
    assert list(corral.farm().jobs) == [1] and again.id == 1
    corral.frame_started(1, 1, host="n1", event_id="e1")
    assert corral.frame_started(1, 1, host="n1", event_id="e1").skipped
    assert corral.job(1).frames[1].attempts == 1


def test_record_takes_the_ingest_format(corral: Corral) -> None:
    corral.record({"id": "x", "type": "job_submitted", "job": {"name": "a", "frames": "1-2", "id": 7}})
    result = corral.record({"id": "y", "type": "frame_started", "job": 7, "frame": 2, "host": "n1"})
    assert result.job_change == (7, "pending", "running")
    with pytest.raises(ValueError, match="unknown type 'frame_exploded'"):
        corral.record({"id": "z", "type": "frame_exploded"})


def test_news_bumps_versions_so_corrals_stale_decision_is_refused(corral: Corral, store: Store) -> None:
    corral.submit_job("anim", frames="1-2")
    farm = store.read_farm()  # a cycle reads the farm...
    corral.frame_started(1, 1, host="n1")  # ...the supervisor moves on...
    report = store.apply_transitions(farm, [Proposal(Kind.JOB, "1", Action.BLOCK)], now=NOW, actor="corral")
    assert report.refused and report.refused[0].stale  # ...and corral's write is refused
    assert corral.job(1).frames[1].state == FrameState.RUNNING
    assert versions(store, "frames")[(1, 1)] == 1 and versions(store, "frames")[(1, 2)] == 0


def test_act_applies_an_action_and_refuses_an_illegal_one(corral: Corral) -> None:
    corral.submit_job("anim", frames="1")
    done = corral.act("job", 1, "block", reason="hold it", actor="user:ann")
    assert (done.from_state, done.to_state) == ("pending", "blocked")
    assert corral.history(job=1)[0].actor == "user:ann"
    with pytest.raises(ActionRefused, match="cannot block job 1: it is blocked"):
        corral.act("job", 1, "block")


def test_plan_and_run_cycle_use_the_built_in_pack(corral: Corral) -> None:
    corral.submit_job("anim", frames="1")
    corral.submit_job("comp", frames="1", state="blocked", depends_on=[1])
    assert corral.plan().transitions == []
    corral.frame_started(1, 1, host="n1")
    corral.frame_completed(1, 1)
    [planned] = corral.plan().transitions
    assert (planned.policy, planned.action, planned.ident) == ("unblock-when-dependencies-complete", "unblock", "2")
    assert corral.job(2).state == JobState.BLOCKED  # a plan writes nothing
    result = corral.run_cycle()
    assert result.report is not None and len(result.report.applied) == 1
    assert corral.job(2).state == JobState.PENDING
