"""Snapshot files: the format, its errors (with file:line:column) and lossless round trips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from conftest import farms, snap
from corral.facts import frame_runs
from corral.farm import Farm
from corral.snapshot import (
    SnapshotError,
    farm_to_snapshot,
    load_snapshot_file,
    parse_snapshot,
    read_document,
    snapshot_json_schema,
)
from corral.states import FrameState, Hold, JobState, WorkerState
from corral.store import Store
from corral.yamlpos import shown_path

BROKEN = Path(__file__).parent / "data" / "snapshots" / "broken"
EXPECT = re.compile(r"^# expect: (?:(\d+:\d+) )?(.*)$", re.M)


def _expectations(path: Path) -> list[tuple[str | None, str]]:
    side = path.with_name(path.name + ".expect")
    text = side.read_text() if side.exists() else path.read_text()
    return [(m.group(1), m.group(2)) for m in EXPECT.finditer(text)]


@pytest.mark.parametrize("path", sorted(p for p in BROKEN.iterdir() if p.suffix != ".expect"), ids=lambda p: p.name)
def test_every_error_of_a_broken_snapshot_names_its_field_and_line(path: Path) -> None:
    expected = _expectations(path)
    assert expected, f"{path.name} declares no '# expect:' lines"
    with pytest.raises(SnapshotError) as err:
        load_snapshot_file(path)
    assert len(err.value.errors) == len(expected), "\n".join(err.value.errors)
    for place, message in expected:
        shown = shown_path(str(path))  # as a wrangler reads it: relative to the current folder
        prefix = f"{shown}:{place}: " if place else f"{shown}:"
        assert any(e.startswith(prefix) and message in e for e in err.value.errors), (
            f"no error at {prefix} saying {message!r} in:\n" + "\n".join(err.value.errors)
        )


def test_a_job_without_a_state_gets_the_state_its_frames_give_it() -> None:
    farm = snap("""
jobs:
  - id: 1
    name: a
    frames: [{number: 1, state: complete}, {number: 2, state: failed}]
""")
    assert farm.jobs[1].state == JobState.FAILED and farm.jobs[1].hold is Hold.NONE


def test_blocked_and_killed_states_become_holds_and_suspended_shows_as_pending() -> None:
    farm = snap("""
jobs:
  - {id: 1, name: a, state: blocked, frames: [{number: 1, state: failed}]}
  - {id: 2, name: b, state: killed}
  - {id: 3, name: c, suspended: true, frames: [{number: 1, state: running}]}
""")
    assert (farm.jobs[1].state, farm.jobs[1].hold) == (JobState.BLOCKED, Hold.BLOCKED)
    assert (farm.jobs[2].state, farm.jobs[2].hold) == (JobState.KILLED, Hold.KILLED)
    assert (farm.jobs[3].state, farm.jobs[3].hold) == (JobState.PENDING, Hold.SUSPENDED)


def test_a_frame_range_expands_to_one_frame_per_number() -> None:
    farm = snap("jobs: [{id: 1, name: a, frames: [{range: 1-100, state: pending}, {number: 101, state: running}]}]")
    assert sorted(farm.jobs[1].frames) == list(range(1, 102))
    assert farm.jobs[1].frames[100].state == FrameState.PENDING


def test_hosts_that_are_not_listed_become_workers_that_are_up() -> None:
    farm = snap("""
jobs: [{id: 1, name: a, instances: [{id: i1, host: n7}]}]
workers: [{name: n1, state: locked}]
""")
    assert farm.workers["n7"].state == WorkerState.UP and farm.workers["n1"].state == WorkerState.LOCKED


def test_timestamps_without_a_zone_are_utc() -> None:
    farm = snap("jobs: [{id: 1, name: a, submitted_at: 2024-06-01 10:00:00}]")
    stamp = farm.jobs[1].submitted_at
    assert stamp is not None and stamp.isoformat() == "2024-06-01T10:00:00+00:00"


def test_an_empty_file_is_an_empty_farm() -> None:
    assert parse_snapshot(None) == Farm()


def test_a_json_snapshot_reports_errors_with_lines_too(tmp_path: Path) -> None:
    path = tmp_path / "farm.json"
    path.write_text('{\n  "jobs": [\n    {"id": 1, "name": "a", "priority": "high"}\n  ]\n}\n')
    with pytest.raises(SnapshotError) as err:
        load_snapshot_file(path)
    assert err.value.errors[0].startswith(f"{path}:3:40: jobs[0].priority: Input should be a valid integer")


def test_json_that_yaml_cannot_read_still_loads_without_positions() -> None:
    data = read_document('{\n\t"jobs": [{"id": 1, "name": "tabs indent this"}]}', "x.json", json_=True)
    assert parse_snapshot(data).jobs[1].name == "tabs indent this"


def test_the_json_schema_describes_jobs_frames_and_workers() -> None:
    schema = snapshot_json_schema()
    assert set(schema["properties"]) == {"jobs", "workers"}
    frame = schema["$defs"]["FrameModel"]["properties"]
    assert {"number", "range", "state", "depends_on", "runs"} <= set(frame)
    json.dumps(schema)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(farms())
def test_dump_then_load_gives_the_same_farm(farm: Farm) -> None:
    data = json.loads(json.dumps(farm_to_snapshot(farm)))
    assert parse_snapshot(data) == farm


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(farms(max_jobs=3, max_frames=3))
def test_a_random_farm_survives_the_store(tmp_path_factory: pytest.TempPathFactory, farm: Farm) -> None:
    path = tmp_path_factory.mktemp("rt") / "c.db"
    with Store.open(f"sqlite:///{path}") as store:
        store.init()
        store.load_farm(farm, replace=True)
        # A finished frame with no recorded history is stored with its result as its one run.
        for job in farm.jobs.values():
            for frame in job.frames.values():
                frame.runs = frame_runs(frame)
        assert store.read_farm() == farm
