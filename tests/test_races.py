"""A decision taken on facts read a moment ago must not overwrite what happened since.

Scenario tests on both databases: the supervisor (through the API, as `corral ingest`
does) or a wrangler changes the farm between corral's read and corral's apply.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral import Corral
from corral.effects import apply_action
from corral.farm import Farm, Frame, Instance, Job, Worker
from corral.states import Action, FrameState, Hold, IllegalAction, InstanceState, JobState, Kind
from corral.store import Store
from corral.store.apply import Proposal

NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def farm() -> Farm:
    job = Job(1, "comp", retry_limit=3, submitted_at=NOW)
    job.frames = {
        1: Frame(1, 1, FrameState.RUNNING, host="h1", instance="1.a", started_at=NOW),
        2: Frame(1, 2, FrameState.PENDING),
        3: Frame(1, 3, FrameState.FAILED, host="h1", instance="1.a", exit_code=1),
    }
    job.instances = {"1.a": Instance("1.a", 1, "h1", InstanceState.RUNNING)}
    job.state = job.derived_state()
    return Farm(jobs={1: job}, workers={"h1": Worker("h1")})


def test_a_kill_decided_before_the_supervisor_started_a_frame_is_refused(store: Store) -> None:
    store.init()
    store.load_farm(farm(), replace=True)
    seen = store.read_farm()
    Corral(store).frame_started(1, 2, host="h1", instance="1.a", at=NOW)  # news arrives after corral's read
    report = store.apply_transitions(seen, [Proposal(Kind.JOB, "1", Action.KILL, policy="p", automatic=True)],
                                     now=NOW, actor="corral")
    assert not report.applied and report.refused and report.refused[0].stale
    job = store.read_farm().jobs[1]
    assert job.state != JobState.KILLED and job.frames[2].state == FrameState.RUNNING


def test_an_automatic_frame_retry_is_refused_once_a_wrangler_blocked_the_job(store: Store) -> None:
    store.init()
    store.load_farm(farm(), replace=True)
    seen = store.read_farm()
    store.apply_transitions(store.read_farm(), [Proposal(Kind.JOB, "1", Action.BLOCK, reason="checking the scene")],
                            now=NOW, actor="user:alice")
    report = store.apply_transitions(seen, [Proposal(Kind.FRAME, "1:3", Action.RETRY, policy="p", automatic=True)],
                                     now=NOW, actor="corral")
    assert not report.applied
    job = store.read_farm().jobs[1]
    assert job.hold is Hold.BLOCKED and job.frames[3].state == FrameState.FAILED and job.frames[3].retries == 0


def test_resubmit_gives_every_frame_a_fresh_retry_count_even_those_already_pending() -> None:
    f = farm()
    f.jobs[1].frames[2].retries = 2  # pending again after two automatic retries
    f.jobs[1].hold, f.jobs[1].state = Hold.KILLED, JobState.KILLED
    apply_action(f, Kind.JOB, "1", Action.RESUBMIT, now=NOW)
    assert {n: fr.retries for n, fr in f.jobs[1].frames.items()} == {1: 0, 2: 0, 3: 0}
    assert f.jobs[1].state == JobState.PENDING


@pytest.mark.parametrize("action", [Action.RETRY, Action.RESUBMIT])
def test_automation_never_retries_or_resubmits_a_killed_job_but_a_wrangler_can(action: Action) -> None:
    f = farm()
    apply_action(f, Kind.JOB, "1", Action.KILL, now=NOW)
    with pytest.raises(IllegalAction, match="by a person"):
        apply_action(f, Kind.JOB, "1", action, now=NOW, automatic=True)
    assert apply_action(f, Kind.JOB, "1", action, now=NOW).to_state != JobState.KILLED
