"""`corral replay`: the log walked back to each cycle, policies re-run, per-policy diff; never writes."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from corral.cli import app
from corral.cycle import run_cycle
from corral.policy.loader import builtin_dir, load_paths
from corral.policyset import PolicySet
from corral.replay import render, replay
from corral.session import Session
from corral.snapshot import parse_snapshot
from corral.store.store import Store
from corral.store.tables import TABLE_ORDER, table
from corral.yamlpos import load_text

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
runner = CliRunner()

FARM = """\
jobs:
  - id: 1
    name: layout
    frames: [{number: 1, state: complete, host: r1, exit_code: 0, finished_at: "2026-11-28T01:30:00Z",
              runs: [{host: r1, state: complete, exit_code: 0, finished_at: "2026-11-28T01:30:00Z"}]}]
  - id: 2
    name: anim
    state: blocked
    depends_on: [1]
    frames: [{number: 1}]
  - id: 3
    name: comp
    retry_limit: 3
    state_since: "2026-11-28T01:40:00Z"
    frames:
      - number: 1
        state: failed
        host: r1
        exit_code: 2
        finished_at: "2026-11-28T01:40:00Z"
        state_since: "2026-11-28T01:40:00Z"
        runs: [{host: r1, state: failed, exit_code: 2, finished_at: "2026-11-28T01:40:00Z"}]
workers: [{name: r1}]
"""


def make_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'corral.db'}"
    pack = load_paths([builtin_dir()]).policies
    with Store.open(url) as store:
        store.init()
        store.load_farm(parse_snapshot(load_text(FARM, "farm"), "farm"), replace=True)
        for minutes in (0, 10):
            run_cycle(store, Session(PolicySet(pack), engine="reference"), commit=True, now=T0 + timedelta(minutes=minutes))
    return url


def counts(url: str) -> dict[str, int]:
    with Store.open(url) as store, store.engine.connect() as conn:
        return {name: conn.execute(select(func.count()).select_from(table(name))).scalar_one() for name in TABLE_ORDER}


def test_the_same_policies_reproduce_what_was_done(tmp_path: Path) -> None:
    url = make_store(tmp_path)
    pack = load_paths([builtin_dir()]).policies
    with Store.open(url) as store:
        report = replay(store, pack, engine="reference")
    assert len(report.cycles) == 1  # the second cycle changed nothing, so logged nothing
    assert report.cycles[0].actual == {
        ("retry-failed-jobs", "job", "3", "retry"),
        ("unblock-when-dependencies-complete", "job", "2", "unblock"),
    }
    assert report.cycles[0].replayed == report.cycles[0].actual
    assert report.policies["retry-failed-jobs"].unchanged == 1
    assert all(not d.added and not d.removed for d in report.policies.values())


def test_a_changed_parameter_shows_removed_actions(tmp_path: Path) -> None:
    url = make_store(tmp_path)
    result = runner.invoke(app, ["replay", "--db", url, "--engine", "reference", "--set", "retry-failed-jobs.delay=1h"])
    out = result.output
    assert result.exit_code == 0, out
    assert "replayed 1 cycle(s)" in out and "(nothing was written)" in out
    assert "retry-failed-jobs: +0 added, -1 removed, 0 unchanged" in out
    assert "  - retry job 3  [cycle 20261128T020000-" in out
    assert "unblock-when-dependencies-complete: +0 added, -0 removed, 1 unchanged" in out


def test_a_new_policy_shows_added_actions_as_json(tmp_path: Path) -> None:
    url = make_store(tmp_path)
    extra = tmp_path / "extra.yaml"
    extra.write_text("""\
policies:
  - name: resubmit-failed-comps
    kind: job
    when: {state: failed, name: {glob: "comp*"}}
    actions: [resubmit]
    reason: "resubmitted"
""")
    result = runner.invoke(app, ["replay", "--db", url, "--engine", "reference", "--rules", str(extra), "--json"])
    data = json.loads(result.output)
    (resub,) = [p for p in data["policies"] if p["policy"] == "resubmit-failed-comps"]
    assert resub["added"] == 1 and resub["examples"]["added"][0]["id"] == "3"


def test_replay_never_writes(tmp_path: Path) -> None:
    url = make_store(tmp_path)
    path = tmp_path / "corral.db"
    before_rows = counts(url)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = runner.invoke(app, ["replay", "--db", url, "--engine", "reference", "--set", "retry-failed-jobs.delay=1h"])
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert counts(url) == before_rows


def test_replay_of_an_empty_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with Store.open(url) as store:
        store.init()
    result = runner.invoke(app, ["replay", "--db", url])
    assert result.exit_code == 0 and "no recorded policy cycles to replay" in result.output


def test_replaying_the_pack_that_made_a_night_finds_no_difference(tmp_path: Path) -> None:
    """The demo's own night, replayed with the unchanged built-in pack: the supervisor's
    writes between cycles (frames that finished later, jobs submitted later, frames corral
    had already requeued) are put back as they stood at each cycle, so nothing is 'added'
    or 'removed' (it was 105 added and 34 removed on the default night)."""
    from corral.sim import builtin_policies, draw_night, play
    from corral.sim.scenario import Scenario

    url = f"sqlite:///{tmp_path / 'night.db'}"
    night = draw_night(Scenario(seed=3, jobs=14, hosts=12, hours=3.0, frames=(10, 40), bad_host_share=0.1,
                                broken_job_share=0.1, flaky_frame_share=0.1))
    play(night, url=url, policies=builtin_policies())
    with Store.open(url) as store:
        report = replay(store, builtin_policies(), engine="reference")
    assert report.cycles, "the night logged cycles"
    acted = sum(d.unchanged for d in report.policies.values())
    assert acted >= 10, "the night was eventful enough to tell"
    differences = {name: (len(d.added), len(d.removed)) for name, d in report.policies.items() if d.added or d.removed}
    assert differences == {}


@pytest.mark.parametrize("seed", [1, 6])
def test_replay_under_a_farm_managers_own_handling_marks_what_it_cannot_know(tmp_path: Path, seed: int) -> None:
    """Under Qube!'s own handling (its retries, corral locking hosts out of jobs), actions
    take running frames off their hosts, and the store keeps no record of an attempt cut
    short. Replaying the pack that made the night finds no difference but those, and
    each of those is marked approximate, with a note that says why (seed 1: a job's
    failure time is its last frame's end, whichever way that frame ended; seed 6: frames
    cut short)."""
    from corral.sim import builtin_policies, draw_night, play
    from corral.sim.scenario import Scenario

    url = f"sqlite:///{tmp_path / 'night.db'}"
    night = draw_night(Scenario(seed=seed, jobs=14, hosts=12, hours=3.0, frames=(10, 40), bad_host_share=0.1,
                                broken_job_share=0.15, flaky_frame_share=0.1))
    play(night, url=url, policies=builtin_policies(), handling="qube")
    with Store.open(url) as store:
        report = replay(store, builtin_policies(), engine="reference")
    assert sum(d.unchanged for d in report.policies.values()) >= 10
    differences = [(c, k) for d in report.policies.values() for c, k in d.added + d.removed]
    unexplained = [(c, k) for d in report.policies.values() for c, k in d.added + d.removed
                   if (c, k) not in d.approximate]
    assert unexplained == []
    text = "\n".join(render(report, examples=50))
    assert "of the supervisor's own changes" in text and "manual action" not in text
    if seed == 6:
        assert differences, "this night has frames cut short while their policies were due"
        assert text.count("(approximate)") == len(differences)
        assert "keeps no record of that cut-short attempt" in text
        as_json = report.to_json()
        assert sum(p["approximate"] for p in as_json["policies"]) == len(differences) == as_json["approximate"]
    else:
        assert differences == []


def _night_farm() -> tuple[datetime, object]:
    """One job as a night's end leaves it: frame 1 failed on a, then ran on b across the
    cycle at `at`, failed there after it, and completed on a; frame 2 first started after
    `at`, on an instance the supervisor started for it then (c)."""
    from corral.farm import Farm, Frame, FrameRun, Instance, Job
    from corral.states import FrameState, InstanceState, JobState

    at = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    m = timedelta(minutes=1)
    job = Job(id=1, name="shot", state=JobState.COMPLETE, submitted_at=at - 60 * m)
    job.instances = {i: Instance(id=i, job_id=1, host=i.split(".")[1], state=InstanceState.COMPLETE)
                     for i in ("1.a", "1.b", "1.c")}
    job.frames[1] = Frame(job_id=1, number=1, state=FrameState.COMPLETE, host="a", instance="1.a", attempts=3,
                          started_at=at + 4 * m, finished_at=at + 6 * m, state_since=at + 6 * m,
                          runs=[FrameRun("a", "1.a", FrameState.FAILED, 1, at - 9 * m, at - 5 * m),
                                FrameRun("b", "1.b", FrameState.FAILED, 1, at - 2 * m, at + 3 * m),
                                FrameRun("a", "1.a", FrameState.COMPLETE, 0, at + 4 * m, at + 6 * m)])
    job.frames[2] = Frame(job_id=1, number=2, state=FrameState.COMPLETE, host="c", instance="1.c", attempts=1,
                          started_at=at + 1 * m, finished_at=at + 4 * m, state_since=at + 4 * m,
                          runs=[FrameRun("c", "1.c", FrameState.COMPLETE, 0, at + 1 * m, at + 4 * m)])
    farm = Farm(jobs={1: job})
    return at, farm


def test_a_frame_on_an_attempt_across_a_cycle_is_running_there_on_that_host() -> None:
    """What the supervisor recorded when an attempt ended says where the frame was running
    at a cycle that attempt spanned (not 'failed on the host before'); an instance whose
    first work came after the cycle did not exist yet; attempts are counted as of then."""
    from corral.replay import _as_of
    from corral.states import FrameState

    at, farm = _night_farm()
    then = _as_of(farm, at)  # type: ignore[arg-type]
    frame = then.jobs[1].frames[1]
    assert (frame.state, frame.host, frame.instance, frame.started_at) == (
        FrameState.RUNNING, "b", "1.b", at - timedelta(minutes=2))
    assert frame.attempts == 2 and len(frame.runs) == 1  # the failure on a, and the attempt on b
    assert then.jobs[1].frames[2].state is FrameState.PENDING and then.jobs[1].frames[2].attempts == 0
    assert sorted(then.jobs[1].instances) == ["1.a", "1.b"]
    assert str(then.jobs[1].state) == "running"  # derived again: one frame running, one pending


def test_undoing_a_lock_out_puts_back_the_attempt_it_cut_short_and_a_blocks_instances() -> None:
    """corral's block of an instance took a running frame off its host (the frame keeps its
    start, not its host, and no run records the attempt): undone, the frame is running on
    that instance again from that start. A job's block sent its running instances back to
    pending (not logged): undone, they run again."""
    from corral.farm import Farm, Frame, FrameRun, Instance, Job
    from corral.ports import LogEntry
    from corral.replay import _undo
    from corral.states import FrameState, Hold, InstanceState, JobState, Kind

    t = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    m = timedelta(minutes=1)
    job = Job(id=1, name="shot", state=JobState.BLOCKED, hold=Hold.BLOCKED, state_since=t + 5 * m)
    job.instances = {"1.a": Instance(id="1.a", job_id=1, host="a", state=InstanceState.PENDING, state_since=t + 5 * m),
                     "1.b": Instance(id="1.b", job_id=1, host="b", state=InstanceState.BLOCKED, state_since=t)}
    job.frames[1] = Frame(job_id=1, number=1, state=FrameState.PENDING, attempts=2, started_at=t - m,
                          state_since=t, runs=[FrameRun("a", "1.a", FrameState.FAILED, 1, t - 9 * m, t - 5 * m)])
    farm = Farm(jobs={1: job})

    def row(ident: int, at: datetime, kind: Kind, entity: str, frm: str, to: str) -> LogEntry:
        return LogEntry(ident, at, kind, entity, 1, "block", frm, to, "corral", "p", "why", f"c{ident}", True)

    _undo(farm, row(2, t + 5 * m, Kind.JOB, "1", "running", "blocked"), None)
    assert farm.jobs[1].instances["1.a"].state is InstanceState.RUNNING
    _undo(farm, row(1, t, Kind.INSTANCE, "1.b", "running", "blocked"), None)
    frame = farm.jobs[1].frames[1]
    assert (frame.state, frame.host, frame.instance, frame.state_since) == (FrameState.RUNNING, "b", "1.b", t - m)
    assert farm.jobs[1].instances["1.b"].state is InstanceState.RUNNING


def test_a_job_ended_when_its_last_frame_ended_whichever_way_that_frame_ended() -> None:
    """A failed job's time in state counts from its last frame's end, not its last failure
    (a retry-failed-jobs delay would otherwise be replayed as already over)."""
    from corral.farm import Farm, Frame, FrameRun, Job
    from corral.replay import _since_from_runs
    from corral.states import FrameState, JobState, Kind

    t = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    m = timedelta(minutes=1)
    job = Job(id=1, name="comp", state=JobState.FAILED)
    job.frames[1] = Frame(job_id=1, number=1, state=FrameState.FAILED,
                          runs=[FrameRun("a", None, FrameState.FAILED, 1, t - 12 * m, t - 10 * m)])
    job.frames[2] = Frame(job_id=1, number=2, state=FrameState.COMPLETE,
                          runs=[FrameRun("b", None, FrameState.COMPLETE, 0, t - 9 * m, t - 2 * m)])
    farm = Farm(jobs={1: job})
    assert _since_from_runs(farm, Kind.JOB, "1", "failed", t) == t - 2 * m
    assert _since_from_runs(farm, Kind.FRAME, "1:1", "failed", t) == t - 10 * m
