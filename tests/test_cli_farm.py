"""The farm commands, run through Typer's CliRunner against a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli import app
from corral.states import RULES, Kind
from corral.store import Store

FARM = """\
jobs:
  - id: 12
    name: shot_010
    retry_limit: 1
    instances: [{id: i1, host: n1, state: running}]
    frames:
      - {number: 1, state: running, host: n1, instance: i1}
      - {number: 2, state: failed}
      - {number: 3, state: complete}
  - {id: 13, name: comp, frames: [{range: 1-4, state: complete}]}
workers: [{name: n1}]
"""

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'corral.db'}"
    assert runner.invoke(app, ["db", "init", "--db", url]).exit_code == 0
    farm = tmp_path / "farm.yaml"
    farm.write_text(FARM)
    result = runner.invoke(app, ["load", str(farm), "--db", url])
    assert result.exit_code == 0, result.output
    return url


def test_db_init_twice_is_harmless(db: str) -> None:
    result = runner.invoke(app, ["db", "init", "--db", db])
    assert result.exit_code == 0 and "ready" in result.output


def test_status_on_an_uninitialised_database_says_run_db_init(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--db", f"sqlite:///{tmp_path / 'new.db'}"])
    assert result.exit_code == 1 and "run `corral db init`" in result.output


def test_status_json_lists_jobs_with_frame_counts(db: str) -> None:
    result = runner.invoke(app, ["status", "--json", "--db", db])
    assert result.exit_code == 0
    jobs = json.loads(result.output)
    assert jobs[0] == {
        "id": 12,
        "name": "shot_010",
        "state": "failing",
        "priority": 50,
        "frames": {"pending": 0, "blocked": 0, "running": 1, "complete": 1, "failed": 1, "killed": 0},
    }
    assert jobs[1]["state"] == "complete" and jobs[1]["frames"]["complete"] == 4


def test_status_prints_a_table(db: str) -> None:
    result = runner.invoke(app, ["status", "--db", db])
    assert result.exit_code == 0 and "shot_010" in result.output


def test_a_broken_file_prints_every_error_with_its_place_and_loads_nothing(db: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  - {id: 20, name: x, state: sleeping}\n  - {id: 21, name: y, depends_on: [99]}\n")
    result = runner.invoke(app, ["load", str(bad), "--db", db])
    assert result.exit_code == 1
    assert f"{bad}:2:30: jobs[0].state: Input should be" in result.output
    assert f"{bad}:3:36: jobs[1].depends_on[0]: no job 99 in this snapshot" in result.output
    assert "2 error(s); nothing was loaded" in result.output
    assert sorted(json.loads(runner.invoke(app, ["status", "--json", "--db", db]).output)[i]["id"] for i in (0, 1)) == [
        12,
        13,
    ]


def test_dump_then_load_with_replace_gives_the_same_farm(db: str, tmp_path: Path) -> None:
    before = Store.open(db).read_farm()
    for fmt in ("yaml", "json"):
        out = tmp_path / f"dump.{fmt}"
        assert runner.invoke(app, ["dump", "--format", fmt, "-o", str(out), "--db", db]).exit_code == 0
        result = runner.invoke(app, ["load", str(out), "--replace", "--db", db])
        assert result.exit_code == 0, result.output
        assert Store.open(db).read_farm() == before


def test_dump_to_stdout_is_yaml_by_default(db: str) -> None:
    result = runner.invoke(app, ["dump", "--db", db])
    assert result.exit_code == 0 and result.output.startswith("jobs:\n- id: 12\n")


def test_block_running_job_puts_running_frames_back_to_pending_and_is_logged_as_the_user(db: str) -> None:
    result = runner.invoke(app, ["job", "block", "12", "--reason", "bad textures", "--db", db])
    assert result.exit_code == 0, result.output
    assert "job 12: failing -> blocked" in result.output
    with Store.open(db) as store:
        farm = store.read_farm()
        (t,) = store.transitions()
    assert farm.jobs[12].frames[1].state == "pending"
    assert t.actor.startswith("user:") and t.reason == "bad textures" and t.policy is None


def test_an_illegal_action_prints_why_and_changes_nothing(db: str) -> None:
    result = runner.invoke(app, ["job", "block", "13", "--db", db])
    assert result.exit_code == 1
    assert "cannot block job 13: it is complete" in result.output
    with Store.open(db) as store:
        assert store.transitions() == [] and store.read_farm().jobs[13].version == 0


def test_resubmit_takes_a_new_priority_and_retry_limit(db: str) -> None:
    result = runner.invoke(app, ["job", "resubmit", "13", "--priority", "90", "--retry-limit", "3", "--db", db])
    assert result.exit_code == 0, result.output
    job = Store.open(db).read_farm().jobs[13]
    assert (job.priority, job.retry_limit, job.state) == (90, 3, "pending")


def test_frame_retry_names_the_frame_as_job_colon_frame(db: str) -> None:
    result = runner.invoke(app, ["frame", "retry", "12:2", "--db", db])
    assert result.exit_code == 0, result.output
    assert "frame 12:2: failed -> pending" in result.output
    assert "job 12: failing -> running" in result.output


def test_an_unknown_entity_is_an_error(db: str) -> None:
    result = runner.invoke(app, ["instance", "kill", "nope", "--db", db])
    assert result.exit_code == 1 and "no instance 'nope' in the farm" in result.output


def test_worker_block_quarantines_the_host(db: str) -> None:
    assert runner.invoke(app, ["worker", "block", "n1", "--db", db]).exit_code == 0
    assert Store.open(db).read_farm().workers["n1"].state == "locked"


def test_there_is_one_command_per_action_of_the_state_model() -> None:
    for kind, action in RULES:
        result = runner.invoke(app, [kind.value, action.value, "--help"])
        assert result.exit_code == 0, (kind, action)
    assert runner.invoke(app, [Kind.WORKER.value, "kill", "--help"]).exit_code != 0
