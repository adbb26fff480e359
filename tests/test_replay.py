"""`corral replay`: the log walked back to each cycle, policies re-run, per-policy diff; never writes."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from corral.cli import app
from corral.cycle import run_cycle
from corral.policy.loader import builtin_dir, load_paths
from corral.policyset import PolicySet
from corral.replay import replay
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
