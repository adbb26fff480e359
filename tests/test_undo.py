"""`corral undo`: the inverse of what the policies applied in a window, newest first,
leaving alone what moved since or cannot be undone, applied only with --yes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from conftest import snap
from corral.cli import app
from corral.states import Action, JobState, Kind, WorkerState
from corral.store import Proposal, Store
from corral.undo import plan_undo

FARM = """
jobs:
  - id: 1
    name: a
    frames: [{number: 1, state: running, host: n1}]
  - id: 2
    name: b
    frames: [{number: 1, state: running, host: n1}]
  - id: 3
    name: c
    retry_limit: 2
    frames: [{number: 1, state: failed, host: n1}]
workers:
  - {name: n1, state: up}
"""
runner = CliRunner()


def _night(url: str) -> None:
    """A misfiring policy blocked two jobs and quarantined a host; another retried a job;
    then a person unblocked job 2 by hand."""
    now = datetime.now(UTC) - timedelta(minutes=30)
    with Store.open(url) as store:
        store.load_farm(snap(FARM), replace=True)
        store.apply_transitions(store.read_farm(), [
            Proposal(Kind.JOB, "1", Action.BLOCK, reason="r", policy="misfire", automatic=True),
            Proposal(Kind.JOB, "2", Action.BLOCK, reason="r", policy="misfire", automatic=True),
            Proposal(Kind.WORKER, "n1", Action.BLOCK, reason="r", policy="misfire", automatic=True),
            Proposal(Kind.JOB, "3", Action.RETRY, reason="r", policy="retry-failed-jobs", automatic=True),
        ], now=now, actor="corral", cycle_id="c1")
        store.apply_transitions(store.read_farm(), [Proposal(Kind.JOB, "2", Action.UNBLOCK)],
                                now=now + timedelta(minutes=5), actor="user:ana")


def test_undo_plans_the_inverse_newest_first_and_leaves_alone_what_moved(store_url: str) -> None:
    _night(store_url)
    with Store.open(store_url) as store:
        plan = plan_undo(store.read_farm(), store.transitions(), now=datetime.now(UTC))
        farm_after = store.read_farm()
    undone = [(e.entity_id, str(p.action)) for e, p in plan.proposals]
    assert undone == [("n1", "unblock"), ("1", "unblock")]  # newest first
    why = {e.entity_id: w for e, w in plan.skipped}
    assert "moved since" in why["2"] and "a person" in why["2"]
    assert "cannot be undone" in why["3"]
    assert farm_after.jobs[1].state is JobState.BLOCKED  # planning changed nothing


def test_undo_is_shown_then_applied_with_yes_logged_as_the_wrangler(store_url: str) -> None:
    _night(store_url)
    shown = runner.invoke(app, ["undo", "--db", store_url, "--json", "--detailed-exitcode"])
    assert shown.exit_code == 2, shown.output
    data = json.loads(shown.stdout)
    assert [u["undoes"] for u in data["undo"]] == ["block worker n1", "block job 1"]
    with Store.open(store_url) as store:
        assert store.read_farm().workers["n1"].state is WorkerState.LOCKED  # shown only
    applied = runner.invoke(app, ["undo", "--db", store_url, "--policy", "misfire", "--yes"])
    assert applied.exit_code == 0, applied.output
    with Store.open(store_url) as store:
        farm = store.read_farm()
        log = store.transitions(limit=2)
    assert farm.workers["n1"].state is WorkerState.UP and farm.jobs[1].state is not JobState.BLOCKED
    assert all(r.actor.startswith("user:") and r.cycle_id and r.cycle_id.startswith("undo-") for r in log)
    assert "undo of block by policy misfire" in log[0].reason
    again = runner.invoke(app, ["undo", "--db", store_url, "--policy", "misfire", "--json"])
    assert json.loads(again.stdout)["undo"] == []  # nothing twice


def test_a_window_before_anything_happened_has_nothing_to_undo(tmp_path: Path, store_url: str) -> None:
    _night(store_url)
    out = runner.invoke(app, ["undo", "--db", store_url, "--since", "3h", "--until", "2h"])
    assert out.exit_code == 0 and "nothing to undo" in out.output
    bad = runner.invoke(app, ["undo", "--db", store_url, "--since", "1h", "--until", "2h"])
    assert bad.exit_code == 1 and "before --since" in bad.output
