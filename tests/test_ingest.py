"""`corral ingest`: supervisor events as JSON lines, applied in order, once, bad lines alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import NOW, later
from corral import Corral, Farm, JobState, event_json_schema, parse_frames
from corral.cli import app
from corral.cycle import run_cycle
from corral.feed import BadEvent, parse_line
from corral.policy.loader import builtin_dir, load_paths
from corral.policyset import PolicySet
from corral.session import Session
from corral.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "events.jsonl"
runner = CliRunner()


def stamp(minutes: int) -> str:
    return later(minutes).isoformat().replace("+00:00", "Z")


def line(**fields: Any) -> str:
    return json.dumps(fields)


STREAM = [
    line(id="s1", type="job_submitted", at=stamp(0), job={"id": 11, "name": "anim", "frames": "1-3", "retry_limit": 1}),
    line(id="s2", type="job_submitted", at=stamp(1),
         job={"id": 12, "name": "comp", "frames": [1, 2], "state": "blocked", "depends_on": [11], "priority": 70}),
    line(id="w1", type="worker_up", host="n3", at=stamp(1)),
    line(id="i1", type="instance_started", instance="11.a", job=11, host="n1", at=stamp(2)),
    line(id="f1", type="frame_started", job=11, frame=1, host="n1", instance="11.a", at=stamp(3)),
    line(id="f2", type="frame_started", job=11, frame=2, host="n2", instance="11.b", at=stamp(3)),
    line(id="f3", type="frame_failed", job=11, frame=2, exit_code=139, at=stamp(5)),
    line(id="f4", type="frame_completed", job=11, frame=1, at=stamp(6)),
    line(id="f5", type="frame_started", job=11, frame=2, host="n1", instance="11.a", at=stamp(7)),
    line(id="f6", type="frame_completed", job=11, frame=2, at=stamp(9)),
    line(id="f7", type="frame_started", job=11, frame=3, host="n3", at=stamp(9)),
    line(id="f8", type="frame_completed", job=11, frame=3, host="n3", exit_code=0, at=stamp(12)),
    line(id="i2", type="instance_ended", instance="11.b", exit_code=1, at=stamp(12)),
    line(id="i3", type="instance_ended", instance="11.a", at=stamp(13)),
    line(id="w2", type="worker_down", host="n2", at=stamp(14)),
]


def build_through_api(c: Corral) -> None:
    """STREAM, call by call."""
    c.submit_job("anim", frames="1-3", retry_limit=1, job_id=11, at=later(0))
    c.submit_job("comp", frames=[1, 2], state="blocked", depends_on=[11], priority=70, job_id=12, at=later(1))
    c.worker_up("n3", at=later(1))
    c.instance_started("11.a", job=11, host="n1", at=later(2))
    c.frame_started(11, 1, host="n1", instance="11.a", at=later(3))
    c.frame_started(11, 2, host="n2", instance="11.b", at=later(3))
    c.frame_failed(11, 2, exit_code=139, at=later(5))
    c.frame_completed(11, 1, at=later(6))
    c.frame_started(11, 2, host="n1", instance="11.a", at=later(7))
    c.frame_completed(11, 2, at=later(9))
    c.frame_started(11, 3, host="n3", at=later(9))
    c.frame_completed(11, 3, host="n3", exit_code=0, at=later(12))
    c.instance_ended("11.b", exit_code=1, at=later(12))
    c.instance_ended("11.a", at=later(13))
    c.worker_down("n2", at=later(14))


def rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every farm row and the log, raw (versions and updated_at included), for exact comparison."""
    from sqlalchemy import select

    from corral.store.tables import table

    out = {}
    with store.engine.connect() as conn:
        for name in ("jobs", "frames", "frame_runs", "instances", "workers", "job_dependencies", "transitions",
                     "applied_events"):
            t = table(name)
            out[name] = [dict(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns)).mappings()]
    return out


def test_a_farm_built_through_ingest_equals_the_same_farm_built_through_the_api(store: Store) -> None:
    c = Corral(store, clock=lambda: NOW)
    build_through_api(c)
    by_api = store.read_farm()
    history_api = [(t.action, t.entity_id, t.to_state, t.reason, t.at) for t in store.transitions()]
    store.load_farm(Farm(), replace=True)
    report = c.ingest(STREAM)
    assert (len(report.applied), report.bad) == (len(STREAM), [])
    assert store.read_farm() == by_api
    assert [(t.action, t.entity_id, t.to_state, t.reason, t.at) for t in store.transitions()][:2] == history_api
    job = by_api.jobs[11]
    assert job.state == JobState.COMPLETE and job.frames[2].attempts == 2 and len(job.frames[2].runs) == 2
    assert by_api.jobs[12].state == JobState.BLOCKED
    assert {n: str(w.state) for n, w in by_api.workers.items()} == {"n1": "up", "n2": "down", "n3": "up"}


def test_replaying_a_stream_changes_nothing(store: Store) -> None:
    c = Corral(store, clock=lambda: NOW)
    first = c.ingest(STREAM)
    before = rows(store)
    clock = iter(range(1, 10**6))
    c.clock = lambda: later(60 + next(clock))  # a replay later on would stamp new times if it wrote anything
    again = c.ingest(STREAM + STREAM, batch=4)
    assert (len(again.applied), len(again.skipped), again.bad) == (0, 2 * len(STREAM), [])
    assert [r.job_id for r in again.skipped[:2]] == [11, 12]
    assert rows(store) == before
    assert len(first.applied) == len(STREAM)


def test_a_stream_replayed_with_a_new_tail_applies_only_the_tail(store: Store) -> None:
    c = Corral(store, clock=lambda: NOW)
    c.ingest(STREAM[:6])
    report = c.ingest(STREAM)
    assert (len(report.skipped), len(report.applied)) == (6, len(STREAM) - 6)


BAD = {
    "{not json": "not JSON",
    "[1, 2]": "an event is a JSON object, not an array",
    line(id="b1"): "'type' is missing",
    line(id="b2", type="frame_exploded"): "unknown type 'frame_exploded'",
    line(id="b3", type="frame_failed", job=11, frame=1): "frame_failed: exit_code: required field is missing",
    line(id="b4", type="frame_started", job=11, frame=1, host="n1", colour="red"): "colour: unknown field",
    line(id="b5", type="frame_started", job=99, frame=1, host="n1"): "no job 99",
    line(id="b6", type="frame_completed", job=11, frame=77): "job 11 has no frame 77",
    line(id="b7", type="job_submitted", job={"id": 11, "name": "again", "frames": "1"}): "job 11 exists already",
    line(id="b8", type="job_submitted", job={"name": "x", "frames": "5-1"}): "range 5-1 runs backwards",
    line(id="b9", type="frame_started", job=11, frame=1, host="n1", at="yesterday"): "at: Input should be a valid datetime",
    line(type="worker_up", host="n1"): "id: required field is missing",
    # the hardening audit's: one line nested a thousand deep once ended the whole file, and
    # wrong JSON types were taken by coercion
    '{"id": "b10", "type": "worker_up", "host": ' + "[" * 1000 + "]" * 1000 + "}": "nested more than 32 levels deep",
    line(id="b11", type="frame_failed", job=True, frame=1, exit_code=1): "job: Input should be a valid integer",
    line(id="b12", type="frame_failed", job=11, frame=1, exit_code="0"): "exit_code: Input should be a valid integer",
    line(id="b13\u0000", type="worker_up", host="n1"): "id: holds the control character",
}


def test_a_source_that_never_pauses_commits_what_waited_max_wait_seconds(store: Store) -> None:
    """A pipe fed steadily never goes quiet for `--poll`, so a batch of 2,000 lines could
    hold its first line for seconds; a line waits at most `max_wait` (a fake clock that
    moves 0.1 s each time it is read)."""
    from corral.ingest import ingest_lines

    def run(max_wait: float) -> list[int]:
        ticks = iter(x / 10 for x in range(10_000))
        sizes: list[int] = []
        report = ingest_lines(store, STREAM, batch=2000, max_wait=max_wait, clock=lambda: next(ticks),
                              on_batch=lambda part: sizes.append(len(part.applied) + len(part.skipped)))
        assert report.lines == len(STREAM) and not report.bad
        return sizes

    hurried = run(0.25)
    assert len(hurried) > 1 and max(hurried) <= 3 and sum(hurried) == len(STREAM)
    assert run(3600) == [len(STREAM)]  # (replayed: all skipped, in one batch)


@pytest.mark.parametrize("batch", [1, 3, 500])
def test_a_stream_with_bad_lines_loses_none_of_its_good_ones(store: Store, batch: int) -> None:
    bad = list(BAD.items())
    mixed: list[str] = []
    expected: dict[int, str] = {}
    for n, good in enumerate(STREAM):
        mixed.append(good)
        if n < len(bad):
            mixed.append(bad[n][0])
            expected[len(mixed)] = bad[n][1]
    mixed.insert(5, "")  # blank lines are skipped, but counted
    expected = {(k + 1 if k >= 6 else k): v for k, v in expected.items()}
    report = Corral(store, clock=lambda: NOW).ingest(mixed, batch=batch)
    assert len(report.applied) == len(STREAM)
    assert [b.line for b in report.bad] == sorted(expected)
    for b in report.bad:
        assert expected[b.line] in b.reason, b
    farm = store.read_farm()
    store.load_farm(Farm(), replace=True)
    Corral(store, clock=lambda: NOW).ingest(STREAM)
    assert store.read_farm() == farm


def test_end_to_end_a_dependent_job_is_unblocked_once_its_upstream_frames_complete(store: Store) -> None:
    c = Corral(store, clock=lambda: NOW)
    upstream = c.submit_job("shot_010_anim", frames="1-2", at=later(0))
    dependent = c.submit_job("shot_010_comp", frames="1-10", state="blocked", depends_on=[upstream.id], at=later(0))
    report = c.ingest([
        line(id="e1", type="frame_started", job=upstream.id, frame=1, host="n1", at=stamp(1)),
        line(id="e2", type="frame_started", job=upstream.id, frame=2, host="n2", at=stamp(1)),
        line(id="e3", type="frame_completed", job=upstream.id, frame=1, at=stamp(20)),
        line(id="e4", type="frame_completed", job=upstream.id, frame=2, at=stamp(21)),
    ])
    assert report.bad == [] and c.job(upstream.id).state == JobState.COMPLETE
    loaded = load_paths([builtin_dir()])
    assert loaded.errors == []
    result = run_cycle(store, Session(PolicySet(loaded.policies)), commit=True, now=later(30))
    assert result.report is not None and result.report.refused == []
    assert c.job(dependent.id).state == JobState.PENDING
    history = store.transitions(job=dependent.id)
    assert [(t.action, t.actor, t.policy) for t in history] == [
        ("unblock", "corral", "unblock-when-dependencies-complete"),
        ("submit", "supervisor", None),
    ]
    assert (history[0].from_state, history[0].to_state) == ("blocked", "pending")
    assert history[0].reason == "its 1 dependency completed"
    assert history[0].cycle_id == result.cycle_id


# --- parsing and the schema --------------------------------------------------------------


def test_parse_frames_reads_ranges_and_lists() -> None:
    assert parse_frames("1-3,7, 9-10") == [1, 2, 3, 7, 9, 10]
    assert parse_frames("5") == [5]
    assert parse_frames([3, 1]) == [3, 1]
    for bad, message in [("1-3,2", "frame 2 is listed twice"), ("x", "'x' is not a frame number"), ("", "no frames")]:
        with pytest.raises(ValueError, match=message):
            parse_frames(bad)


def test_the_schema_accepts_every_example_line_and_matches_the_models() -> None:
    schema = event_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for text in EXAMPLE.read_text().splitlines() + STREAM:
        validator.validate(json.loads(text))
        parse_line(text)
    structural = ["[1, 2]", line(id="b1"), line(id="b2", type="frame_exploded"),
                  line(id="b3", type="frame_failed", job=11, frame=1),
                  line(id="b4", type="frame_started", job=11, frame=1, host="n1", colour="red"),
                  line(type="worker_up", host="n1"), line(id="b5", type=["worker_up"], host="n1"),
                  line(id="b6", type={"worker_up": 1}, host="n1")]
    for text in structural:
        assert not validator.is_valid(json.loads(text)), text
        with pytest.raises(BadEvent):
            parse_line(text)


def test_the_example_stream_loads_and_unblocks_the_comp(store: Store) -> None:
    c = Corral(store, clock=lambda: NOW)
    report = c.ingest(EXAMPLE.read_text().splitlines())
    assert report.bad == [] and len(report.applied) > 10
    c.use_policies(engine="reference")
    c.run_cycle()
    assert c.job(12).state == JobState.PENDING


# --- the command ---------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'corral.db'}"
    assert runner.invoke(app, ["db", "init", "--db", url]).exit_code == 0
    return url


def test_ingest_schema_prints_the_json_schema() -> None:
    result = runner.invoke(app, ["ingest", "--schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == event_json_schema()


def test_ingest_a_file_then_standard_input(db: str, tmp_path: Path) -> None:
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join(STREAM[:4]) + "\n")
    result = runner.invoke(app, ["ingest", str(stream), "--db", db])
    assert result.exit_code == 0, result.output
    assert "4 event(s) applied, 0 skipped" in result.output
    result = runner.invoke(app, ["ingest", "--json", "--db", db], input="\n".join(STREAM) + "\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "source": "<stdin>", "lines": len(STREAM), "applied": len(STREAM) - 4, "skipped": 4, "bad": [], "stopped_by": None,
    }


def test_ingest_reports_bad_lines_with_their_numbers_and_exits_1(db: str, tmp_path: Path) -> None:
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join([STREAM[0], "{oops", STREAM[1], line(id="z", type="frame_started", job=5, frame=1, host="h")]))
    result = runner.invoke(app, ["ingest", str(stream), "--db", db])
    assert result.exit_code == 1
    assert f"{stream}:2: not JSON" in result.output
    assert f"{stream}:4: frame_started: no job 5" in result.output
    assert "2 event(s) applied" in result.output
    with Store.open(db) as store:
        assert sorted(store.read_farm().jobs) == [11, 12]


def test_ingest_of_a_missing_file_says_so(db: str) -> None:
    result = runner.invoke(app, ["ingest", "/nonexistent/events.jsonl", "--db", db])
    assert result.exit_code == 1 and "cannot read" in result.output


def _wait(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _jobs(db: str) -> list[int]:
    with Store.open(db) as store:
        return sorted(store.read_farm().jobs)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_follow_reads_a_growing_file_and_stops_cleanly_on_a_signal(db: str, tmp_path: Path, sig: signal.Signals) -> None:
    spool = tmp_path / "spool.jsonl"
    spool.write_text(STREAM[0] + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from corral.cli import main; main()", "ingest", "--follow", "--poll", "0.05", str(spool),
         "--db", db],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait(lambda: _jobs(db) == [11])
        with spool.open("a") as f:
            f.write(STREAM[1][:20])  # half a line: nothing happens until its newline
            f.flush()
            time.sleep(0.3)
            f.write(STREAM[1][20:] + "\n" + "{bad\n")
        _wait(lambda: _jobs(db) == [11, 12])
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err  # one bad line
    assert f"{spool}:3: not JSON" in err
    assert f"stopped by {sig.name}" in err and "2 event(s) applied" in err


def test_the_example_feeder_writes_lines_that_ingest_applies(db: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    feeder = [sys.executable, str(ROOT / "examples" / "feeder.py"), "--spool", str(spool)]
    for args in (
        ["job_submitted", "--job", "3", "--name", "anim", "--frames", "1-2"],
        ["job_submitted", "--job", "4", "--name", "comp", "--frames", "1", "--state", "blocked", "--depends-on", "3"],
        ["frame_started", "--job", "3", "--frame", "1", "--host", "n1", "--instance", "3.n1"],
        ["frame_failed", "--job", "3", "--frame", "1", "--exit-code", "139"],
        ["frame_failed", "--job", "3", "--frame", "2", "--host", "n2"],
        ["instance_ended", "--instance", "3.n1", "--exit-code", "0"],
        ["worker_down", "--host", "n2"],
    ):
        subprocess.run([*feeder, *args], check=True, env={**os.environ, "PYTHONPATH": ""})
    result = runner.invoke(app, ["ingest", str(spool), "--db", db])
    assert result.exit_code == 0, result.output
    with Store.open(db) as store:
        farm = store.read_farm()
    assert farm.jobs[3].state == JobState.FAILED and farm.jobs[4].state == JobState.BLOCKED
    assert farm.jobs[3].frames[2].exit_code is None and farm.jobs[3].frames[1].exit_code == 139
    assert str(farm.workers["n2"].state) == "down"


def _slow_parse(text: str) -> Any:
    """The line through `json.loads` then validation: what `parse_line` did before it tried
    pydantic's JSON parser first (kept as its path for a refused line)."""
    from corral.feed import validate_event

    return validate_event(json.loads(text))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_event_keys = st.sampled_from(["id", "type", "job", "frame", "host", "instance", "exit_code", "at", "state", "frames",
                               "name", "depends_on", "priority"])


@st.composite
def _lines(draw: Any) -> str:
    """Lines near the format: right types with wrong or odd values, missing and extra fields."""
    event: dict[str, Any] = {"id": draw(st.text(min_size=0, max_size=4)),
                             "type": draw(st.sampled_from(["frame_started", "frame_failed", "job_submitted",
                                                           "instance_ended", "worker_up", "nope"]))}
    for key in draw(st.lists(_event_keys, max_size=5)):
        event[key] = draw(_json_values | st.integers(0, 9) | st.sampled_from(["n1", "2031-01-01T00:00:00Z", "1-3"]))
    if draw(st.booleans()):
        event["job"] = {"name": draw(st.text(max_size=3)), "frames": draw(st.sampled_from(["1-3", "2", "", 5]))}
    text = json.dumps(event, allow_nan=True)
    return text.replace(', "', ',"') if draw(st.booleans()) else text


@settings(max_examples=300, deadline=None)
@given(text=_lines())
def test_a_line_parses_to_the_same_event_or_the_same_error_as_through_json_loads(text: str) -> None:
    """pydantic's JSON parser goes first for speed; the events and the messages are those
    of the path through `json.loads`."""
    try:
        fast: Any = parse_line(text)
    except BadEvent as err:
        fast = ("bad", str(err))
    try:
        slow: Any = _slow_parse(text)
    except BadEvent as err:
        slow = ("bad", str(err))
    assert fast == slow
