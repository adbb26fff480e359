"""`corral job submit`: the API's submit on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli import app
from corral.snapshot import parse_snapshot
from corral.states import Hold, JobState
from corral.store import Store

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'corral.db'}"
    assert runner.invoke(app, ["db", "init", "--db", url]).exit_code == 0
    return url


def submit(db: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["job", "submit", *args, "--db", db])
    return result.exit_code, result.output


def test_submit_prints_the_new_jobs_id(db: str) -> None:
    assert submit(db, "--name", "anim", "--frames", "1-100") == (0, "1\n")
    assert submit(db, "--name", "light", "--frames", "1-10,20,30-40") == (0, "2\n")
    with Store.open(db) as store:
        farm = store.read_farm()
    assert len(farm.jobs[1].frames) == 100
    assert sorted(farm.jobs[2].frames) == [*range(1, 11), 20, *range(30, 41)]
    assert farm.jobs[2].state == JobState.PENDING
    [row] = Store.open(db).transitions(job=1)
    assert row.action == "submit" and row.actor.startswith("user:")


def test_submit_blocked_with_dependencies_and_json(db: str) -> None:
    submit(db, "--name", "anim", "--frames", "1-2")
    submit(db, "--name", "fx", "--frames", "1")
    code, out = submit(
        db, "--name", "comp", "--frames", "1-3", "--state", "blocked", "--depends-on", "1", "--depends-on", "2",
        "--retry-limit", "2", "--priority", "80", "--id", "50", "--json",
    )
    assert code == 0, out
    job = json.loads(out)
    assert {k: job[k] for k in ("id", "name", "state", "priority", "retry_limit", "depends_on")} == {
        "id": 50, "name": "comp", "state": "blocked", "priority": 80, "retry_limit": 2, "depends_on": [1, 2],
    }
    assert [f["number"] for f in job["frames"]] == [1, 2, 3]
    farm = parse_snapshot({"jobs": [job, {"id": 1, "name": "a"}, {"id": 2, "name": "b"}]})  # the snapshot's JobModel reads it
    assert farm.jobs[50].hold is Hold.BLOCKED
    with Store.open(db) as store:
        stored = store.read_farm().jobs[50]
    assert stored.hold is Hold.BLOCKED and stored.blocked_by is None and stored.depends_on == [1, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "5-1"], "range 5-1 runs backwards"),
        (["--frames", "1-3,2"], "frame 2 is listed twice"),
        (["--frames", "1", "--depends-on", "7"], "no job 7 to depend on"),
        (["--frames", "1", "--id", "1"], "job 1 exists already"),
        (["--frames", "1", "--state", "running"], "'running' is not one of"),
        (["--frames", "1", "--retry-limit", "-1"], "Invalid value for '--retry-limit'"),
    ],
)
def test_a_bad_submit_says_why_and_adds_nothing(db: str, args: list[str], message: str) -> None:
    submit(db, "--name", "first", "--frames", "1")
    code, out = submit(db, "--name", "bad", *args)
    assert code != 0
    assert message in " ".join(out.split()), out
    with Store.open(db) as store:
        assert list(store.read_farm().jobs) == [1]


def test_submit_needs_a_name_and_frames(db: str) -> None:
    code, out = submit(db, "--frames", "1")
    assert code == 2 and "--name" in out


def test_submit_is_listed_with_the_manual_job_actions() -> None:
    result = runner.invoke(app, ["job", "--help"])
    assert result.exit_code == 0
    for command in ("submit", "block", "unblock", "retry"):
        assert command in result.output


def test_a_job_s_owner_and_its_frames_layers_are_stored_and_seen_by_policies(db: str) -> None:
    code, out = submit(db, "--name", "shot", "--frames", "1-10", "--owner", "ann", "--layer", "render=1-8",
                       "--layer", "comp=9-10", "--json")
    assert code == 0, out
    job = json.loads(out)
    assert job["owner"] == "ann"
    assert {f["number"]: f.get("layer") for f in job["frames"]} == {**dict.fromkeys(range(1, 9), "render"), 9: "comp",
                                                                     10: "comp"}
    with Store.open(db) as store:
        from corral.facts import FactBuilder
        from corral.farm import utcnow
        from corral.states import Kind
        builder = FactBuilder(store.read_farm(), utcnow())
        assert builder.fact(Kind.FRAME, f"{job['id']}:9")["layer"] == "comp"
        assert builder.fact(Kind.FRAME, f"{job['id']}:9")["job"]["owner"] == "ann"


@pytest.mark.parametrize(("layer", "message"), [
    ("comp", "write NAME=FRAMES"),
    ("comp=11-12", "not among the job's frames"),
])
def test_a_bad_layer_says_why(db: str, layer: str, message: str) -> None:
    code, out = submit(db, "--name", "shot", "--frames", "1-10", "--layer", layer)
    assert code != 0 and message in out
