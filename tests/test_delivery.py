"""Delivery end to end: a daemon's cycle applies, queues, and delivers to a command-line
supervisor (a script standing in for qbblock); refusals, a person's undo in the farm
manager, and a deliverer killed mid-send."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from corral.cli import app
from corral.daemon.service import Daemon, DaemonConfig
from corral.farm import Farm, Job, Worker
from corral.outbox import Status
from corral.states import Action, Hold, JobState, Kind, WorkerState
from corral.store import Proposal, Store
from daemon_helpers import BLOCK_PENDING, corral, load, pending_farm, wait_for, write_rules

SUPERVISOR = """\
import json, os, sys, time
log = os.environ["FAKE_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
code = int(os.environ.get("FAKE_EXIT", "0"))
print("refused: job is locked by its owner" if code == 2 else "ok")
sys.exit(code)
"""


def sinks_file(folder: Path, tmp_path: Path) -> Path:
    script = tmp_path / "supervisor.py"
    script.write_text(SUPERVISOR)
    path = folder / "sinks.yaml"
    path.write_text(
        "sinks:\n  - name: qube\n    type: command\n    refused_exit_codes: [2]\n    timeout: 20s\n    commands:\n"
        f"      block: {{job: [{sys.executable!r}, {str(script)!r}, block, '{{job}}']}}\n"
        f"      retry: {{job: [{sys.executable!r}, {str(script)!r}, retry, '{{job}}']}}\n")
    return path


def sent(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "sent.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def make(url: str, rules: Path, tmp_path: Path) -> Daemon:
    return Daemon(DaemonConfig(db_url=url, paths=[rules], engine="reference", isolate=False,
                               sinks_file=sinks_file(rules, tmp_path)))


def test_a_cycle_s_decisions_reach_the_supervisor_once(store_url: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "sent.jsonl"))
    load(store_url, pending_farm(3))
    rules = tmp_path / "rules"
    write_rules(rules)
    daemon = make(store_url, rules, tmp_path)
    try:
        daemon.run_once()
        assert daemon.last_delivery is not None and len(daemon.last_delivery.delivered) == 3
        daemon.run_once()  # nothing new: nothing sent again
    finally:
        daemon.close()
    assert sorted(sent(tmp_path)) == [["block", "1"], ["block", "2"], ["block", "3"]]
    with Store.open(store_url) as store:
        assert {e.status for e in store.outbox_rows()} == {Status.DELIVERED}
        assert all(e.policy == "block-pending" for e in store.outbox_rows())
    metrics = daemon.metrics
    assert metrics.outbox_sent.labels("qube", "delivered")._value.get() == 3
    assert metrics.outbox_unsettled.labels("qube")._value.get() == 0
    assert metrics.outbox_oldest._value.get() == 0


def test_a_person_s_action_through_corral_is_delivered_too(store_url: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "sent.jsonl"))
    load(store_url, pending_farm(1))
    rules = write_rules(tmp_path / "rules", "policies: []\n").parent
    sinks = sinks_file(rules, tmp_path)
    daemon = make(store_url, rules, tmp_path)
    try:
        daemon.run_once()  # publishes the routes: from now on every writer queues
    finally:
        daemon.close()
    out = CliRunner().invoke(app, ["job", "block", "1", "--db", store_url, "--reason", "wrong camera"])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(app, ["deliver", "--db", store_url, "--sinks", str(sinks), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["delivered"] and sent(tmp_path) == [["block", "1"]]


def test_a_refusal_is_taken_back_and_shown(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "sent.jsonl"))
    monkeypatch.setenv("FAKE_EXIT", "2")
    load(store_url, pending_farm(1))
    rules = tmp_path / "rules"
    write_rules(rules)
    daemon = make(store_url, rules, tmp_path)
    try:
        daemon.run_once()
    finally:
        daemon.close()
    with Store.open(store_url) as store:
        assert store.read_farm().jobs[1].hold is Hold.NONE  # corral does not believe it blocked job 1
        (row,) = store.outbox_rows()
        assert row.status is Status.REFUSED and "locked by its owner" in (row.answer or "")
    out = CliRunner().invoke(app, ["outbox", "--dead", "--db", store_url, "--json"])
    (shown,) = json.loads(out.output)
    assert shown["status"] == "refused" and "locked by its owner" in shown["answer"]
    out = CliRunner().invoke(app, ["history", "--db", store_url, "--json"])
    assert any(r["actor"] == "sink:qube" and r["action"] == "unblock" for r in json.loads(out.output))


def test_retry_and_drop_by_hand_are_recorded(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "sent.jsonl"))
    load(store_url, pending_farm(2))
    with Store.open(store_url) as store:
        from corral.outbox import Route
        from corral.states import Action, Kind
        from corral.store import Proposal

        store.set_routes([Route("qube", frozenset({(Kind.JOB, Action.BLOCK)}))])
        farm = store.read_farm()
        store.apply_transitions(farm, [Proposal(Kind.JOB, "1", Action.BLOCK), Proposal(Kind.JOB, "2", Action.BLOCK)],
                                now=datetime.now(UTC), actor="ana")
        first, second = sorted(store.outbox_rows(), key=lambda e: e.id)
        store.outbox_mark(first.id, Status.DEAD, attempts=12, last_error="unreachable")
    out = CliRunner().invoke(app, ["outbox", "retry", str(first.id), "--db", store_url])
    assert out.exit_code == 0 and "queued again" in out.output
    out = CliRunner().invoke(app, ["outbox", "drop", str(second.id), "--db", store_url])
    assert out.exit_code == 0 and "dropped" in out.output
    out = CliRunner().invoke(app, ["outbox", "drop", str(second.id), "--db", store_url])
    assert out.exit_code == 1 and "is dropped" in out.output
    with Store.open(store_url) as store:
        rows = {e.id: e for e in store.outbox_rows()}
    assert rows[first.id].status is Status.PENDING and rows[first.id].attempts == 0
    assert "retry by" in (rows[first.id].last_error or "")
    assert rows[second.id].status is Status.DROPPED and "drop by" in (rows[second.id].answer or "")


class FakeManager:
    """A farm manager whose picture the test sets."""

    name = "manager"

    def __init__(self, farm: Farm) -> None:
        self.farm = farm

    def read(self, now: datetime) -> tuple[Farm, list[str]]:
        return self.farm, []

    def close(self) -> None:
        pass


def test_a_person_undoing_corral_in_the_farm_manager_is_recorded_and_not_fought(store_url: str, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "sent.jsonl"))
    rules = tmp_path / "rules"
    write_rules(rules, BLOCK_PENDING.replace("reason:", "limits: {cooldown: 1h}\n    reason:"))
    manager = FakeManager(Farm(jobs={1: Job(1, "shot1")}, workers={"n1": Worker("n1", WorkerState.UP)}))
    daemon = make(store_url, rules, tmp_path)
    daemon.farm = manager
    try:
        daemon.run_once()  # synced in, blocked, delivered
        assert sent(tmp_path) == [["block", "1"]]
        manager.farm = Farm(jobs={1: Job(1, "shot1", hold=Hold.BLOCKED, state=JobState.BLOCKED)},
                            workers={"n1": Worker("n1", WorkerState.UP)})
        daemon.run_once()  # the manager has it blocked: nothing to do
        manager.farm = Farm(jobs={1: Job(1, "shot1")}, workers={"n1": Worker("n1", WorkerState.UP)})
        daemon.run_once()  # a wrangler released it in the manager's UI
        assert daemon.last_sync is not None and daemon.last_sync.overridden
    finally:
        daemon.close()
    assert sent(tmp_path) == [["block", "1"]]  # corral did not block it again
    with Store.open(store_url) as store:
        assert store.read_farm().jobs[1].hold is Hold.NONE
        undo = store.transitions(job=1)[0]
    assert undo.actor == "manager" and undo.policy == "block-pending" and "undone in manager" in undo.reason
    out = CliRunner().invoke(app, ["explain", "job", "1", "--db", store_url, "--rules", str(rules), "--only-rules"])
    assert "undone in manager" in out.output or "cooldown" in out.output, out.output


def test_a_decision_on_its_way_is_not_undone_by_a_sync(store_url: str, tmp_path: Path) -> None:
    from corral.outbox import Route
    from corral.states import Action, Kind
    from corral.store import Proposal

    with Store.open(store_url) as store:
        store.load_farm(Farm(jobs={1: Job(1, "a"), 2: Job(2, "b")}), replace=True)
        store.set_routes([Route("qube", frozenset({(Kind.JOB, Action.BLOCK)}))])
        store.apply_transitions(store.read_farm(), [Proposal(Kind.JOB, "1", Action.BLOCK, policy="p")],
                                now=datetime.now(UTC), actor="corral")
        report = store.sync_farm(Farm(jobs={1: Job(1, "a"), 2: Job(2, "b", priority=90)}), now=datetime.now(UTC),
                                 actor="manager")
        farm = store.read_farm()
    assert report.held == ["job 1"] and not report.overridden
    assert farm.jobs[1].hold is Hold.BLOCKED and farm.jobs[2].priority == 90


def _corral_deliver(store_url: str, sinks: Path, tmp_path: Path, env: dict[str, str]) -> Any:
    return corral("deliver", "--db", store_url, "--sinks", str(sinks), log=tmp_path / "deliver.log", env=env)


@pytest.mark.slow
@pytest.mark.parametrize("action", ["block", "retry"])
def test_a_deliverer_killed_mid_send_never_repeats_blindly(store_url: str, tmp_path: Path, action: str) -> None:
    """kill -9 while the supervisor's command runs: a block (harmless twice) is sent again;
    a retry (twice would restart work twice) is held in doubt for a person."""
    from corral.outbox import Route
    from corral.states import Action, Kind
    from corral.store import Proposal

    rules = tmp_path / "rules"
    rules.mkdir()
    sinks = sinks_file(rules, tmp_path)
    farm = pending_farm(1)
    if action == "retry":
        farm.jobs[1].state = JobState.FAILED
    load(store_url, farm)
    with Store.open(store_url) as store:
        store.set_routes([Route("qube", frozenset({(Kind.JOB, Action.BLOCK), (Kind.JOB, Action.RETRY)}))])
        report = store.apply_transitions(store.read_farm(), [Proposal(Kind.JOB, "1", Action(action))],
                                         now=datetime.now(UTC), actor="ana")
        assert report.applied, report.refused
    env = {"FAKE_LOG": str(tmp_path / "sent.jsonl"), "FAKE_SLEEP": "30"}
    proc = _corral_deliver(store_url, sinks, tmp_path, env)
    wait_for(lambda: bool(sent(tmp_path)), what="the supervisor called")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store.open(store_url) as store:
        assert store.outbox_rows()[0].status is Status.SENDING
    again = _corral_deliver(store_url, sinks, tmp_path, {"FAKE_LOG": str(tmp_path / "sent.jsonl")})
    assert again.wait(timeout=60) == 0
    with Store.open(store_url) as store:
        (row,) = store.outbox_rows()
    if action == "block":
        assert row.status is Status.DELIVERED and len(sent(tmp_path)) == 2
    else:
        assert row.status is Status.DOUBT and len(sent(tmp_path)) == 1
        assert "corral outbox retry" in (row.last_error or "")
    time.sleep(0)


class DeadManager:
    name = "manager"

    def read(self, now: datetime) -> tuple[Farm, list[str]]:
        from corral.ports import FarmUnreachable

        raise FarmUnreachable("127.0.0.1:51000 refused the connection")

    def close(self) -> None:
        pass


def test_an_unreachable_farm_manager_costs_a_cycle_never_a_decision_on_a_stale_picture(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "sent.jsonl"))
    load(store_url, pending_farm(2))
    rules = tmp_path / "rules"
    write_rules(rules)
    daemon = make(store_url, rules, tmp_path)
    daemon.farm = DeadManager()
    try:
        tick = daemon.tick()
    finally:
        daemon.close()
    assert tick.outcome == "farm_unreachable" and "refused the connection" in (tick.error or "")
    assert daemon.metrics.cycles.labels("farm_unreachable")._value.get() == 1
    with Store.open(store_url) as store:
        assert store.transitions() == [] and store.outbox_rows() == []
    assert sent(tmp_path) == []


def test_a_sync_stamps_first_sight_and_keeps_what_only_corral_knows(store_url: str) -> None:
    """Afanasy shows a paused and a stopped job alike: a job corral killed stays killed;
    a job first seen is in its state since the sync, not since an invented past."""
    from datetime import timedelta

    from corral.states import Hold

    first = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    with Store.open(store_url) as store:
        store.load_farm(Farm(jobs={1: Job(1, "a", hold=Hold.KILLED, state=JobState.KILLED, retry_limit=3)}), replace=True)
        store.sync_farm(Farm(jobs={1: Job(1, "a", hold=Hold.BLOCKED, state=JobState.BLOCKED),
                                   2: Job(2, "new")}), now=first, actor="manager")
        store.sync_farm(Farm(jobs={1: Job(1, "a", hold=Hold.BLOCKED, state=JobState.BLOCKED),
                                   2: Job(2, "new")}), now=first + timedelta(minutes=5), actor="manager")
        farm = store.read_farm()
    assert farm.jobs[1].hold is Hold.KILLED and farm.jobs[1].state is JobState.KILLED and farm.jobs[1].retry_limit == 3
    assert farm.jobs[2].state_since == first


def test_a_process_the_manager_no_longer_shows_is_ended_not_deleted(store_url: str) -> None:
    """Afanasy shows a host against a job only while it runs, failed or is excluded there:
    a task moving on must not delete the row (a deletion makes every cycle re-read the farm)."""
    from corral.farm import Instance
    from corral.states import InstanceState

    first = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    running = Job(1, "a", instances={"1@r1": Instance("1@r1", 1, "r1", InstanceState.RUNNING)})
    with Store.open(store_url) as store:
        store.load_farm(Farm(jobs={1: Job(1, "a")}), replace=True)
        store.sync_farm(Farm(jobs={1: running}), now=first, actor="manager")
        generation = store.read_farm_marked()[1].generation
        report = store.sync_farm(Farm(jobs={1: Job(1, "a")}), now=first, actor="manager")
        farm, mark, _ = store.read_farm_marked()
    assert report.deleted == 0 and mark.generation == generation
    assert farm.jobs[1].instances["1@r1"].state is InstanceState.COMPLETE


def test_a_sync_compares_only_the_jobs_that_moved_or_that_corral_changed(store_url: str) -> None:
    """Jobs the manager shows as at the last sync are not read again (0.75 s a cycle at 100k
    frames otherwise), unless corral logged a change to one since: its block may not have taken."""
    from datetime import timedelta

    from corral.states import Hold

    first = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    picture = Farm(jobs={1: Job(1, "a"), 2: Job(2, "b"), 3: Job(3, "c")})
    with Store.open(store_url) as store:
        store.load_farm(Farm(jobs={1: Job(1, "a"), 2: Job(2, "b"), 3: Job(3, "c")}), replace=True)
        store.sync_farm(picture, now=first, actor="manager")
        later = first + timedelta(minutes=1)
        store.apply_transitions(store.read_farm(), [Proposal(Kind.JOB, "1", Action.BLOCK, policy="p")], now=later,
                                actor="corral")
        # (a row the manager never wrote, changed behind every writer's back: a skipped job keeps it)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE jobs SET priority = 7 WHERE id = 3")
        moved = Farm(jobs={1: Job(1, "a"), 2: Job(2, "b", priority=80), 3: Job(3, "c")})
        report = store.sync_farm(moved, now=later + timedelta(minutes=1), actor="manager", unchanged=[1, 3], since=later)
        farm = store.read_farm()
    assert farm.jobs[2].priority == 80  # moved: written
    assert farm.jobs[1].hold is Hold.NONE and report.overridden  # corral's block did not take: seen all the same
    assert farm.jobs[3].priority == 7  # unchanged in the manager: not read, not compared

