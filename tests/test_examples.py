"""Every example in examples/ works as its comments and docs say."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli import app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
QUBE = EXAMPLES / "policies" / "qube-autowrangling.yaml"
FLAMENCO = EXAMPLES / "policies" / "flamenco-blocklist.yaml"
SNAPSHOT = EXAMPLES / "farm-snapshot.yaml"
NOW = "2026-11-28T02:00:00Z"


def plan(rules: Path | None, snapshot: Path) -> list[dict[str, object]]:
    args = ["plan", "--snapshot", str(snapshot), "--now", NOW, "--json"]
    if rules is not None:
        args += ["--only-rules", "--rules", str(rules)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 2), result.output
    out: list[dict[str, object]] = json.loads(result.stdout)
    return out


def acted(transitions: list[dict[str, object]]) -> set[tuple[object, object, object, object]]:
    return {(t["policy"], t["kind"], str(t["id"]), t["action"]) for t in transitions}


def farm(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "farm.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", [QUBE, FLAMENCO], ids=lambda p: p.name)
def test_example_policies_pass_check(path: Path) -> None:
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_the_snapshot_plans_as_the_readme_says() -> None:
    got = acted(plan(None, SNAPSHOT))
    assert ("block-job-when-all-hosts-fail", "job", "102", "block") in got
    assert ("lock-host-out-of-job", "instance", "101.3", "block") in got
    assert ("retry-failed-jobs", "job", "103", "retry") in got
    assert ("keep-dependents-blocked", "job", "108", "block") in got
    assert ("quarantine-worker", "worker", "render09", "block") in got
    touched = {str(i) for _, _, i, _ in got}
    assert "104" not in touched  # out of retries: left for a wrangler


QUBE_FARM = """
jobs:
  - id: 1          # render07 failed 6 frames while render01 completes: locked out, frames requeued
    name: others_complete
    instances:
      - {id: "1.a", host: render01, state: running}
      - {id: "1.b", host: render07, state: running}
    frames:
      - {range: 1-4, state: complete, host: render01, instance: "1.a", exit_code: 0, finished_at: 2026-11-28T01:50:00Z}
      - {range: 5-10, state: failed, host: render07, instance: "1.b", exit_code: 139, finished_at: 2026-11-28T01:55:00Z}
      - {range: 11-30, state: pending}
  - id: 2          # both hosts fail, nothing completes: the job is blocked
    name: all_fail
    instances:
      - {id: "2.a", host: render02, state: running}
      - {id: "2.b", host: render03, state: running}
    frames:
      - {range: 1-3, state: failed, host: render02, instance: "2.a", exit_code: 1, finished_at: 2026-11-28T01:55:00Z}
      - {range: 4-6, state: failed, host: render03, instance: "2.b", exit_code: 1, finished_at: 2026-11-28T01:55:00Z}
      - {range: 7-30, state: pending}
  - id: 3          # render04 failed 6, render05 runs its first frame without failing: render04 locked out
    name: none_complete_yet
    instances:
      - {id: "3.a", host: render04, state: running}
      - {id: "3.b", host: render05, state: running}
    frames:
      - {range: 1-6, state: failed, host: render04, instance: "3.a", exit_code: 1, finished_at: 2026-11-28T01:55:00Z}
      - {number: 7, state: running, host: render05, instance: "3.b", started_at: 2026-11-28T01:50:00Z}
      - {range: 8-30, state: pending}
  - id: 4          # only render06 ran it and failed 6: "migrated" (locked out, frames requeued)
    name: single_host
    instances:
      - {id: "4.a", host: render06, state: running}
    frames:
      - {range: 1-6, state: failed, host: render06, instance: "4.a", exit_code: 1, finished_at: 2026-11-28T01:55:00Z}
      - {range: 7-30, state: pending}
  - id: 5          # five failures are not more than five: untouched
    name: below_activation
    instances:
      - {id: "5.a", host: render08, state: running}
      - {id: "5.b", host: render09, state: running}
    frames:
      - {range: 1-5, state: failed, host: render08, instance: "5.a", exit_code: 1, finished_at: 2026-11-28T01:55:00Z}
      - {range: 6-8, state: complete, host: render09, instance: "5.b", exit_code: 0, finished_at: 2026-11-28T01:55:00Z}
"""


def test_qube_policies_act_as_documented(tmp_path: Path) -> None:
    transitions = plan(QUBE, farm(tmp_path, QUBE_FARM))
    assert acted(transitions) == {
        ("qube-lock-host-others-complete", "instance", "1.b", "block"),
        ("qube-block-job-all-hosts-fail", "job", "2", "block"),
        ("qube-lock-host-none-complete-yet", "instance", "3.a", "block"),
        ("qube-migrate-single-host", "instance", "4.a", "block"),
    }
    params = {str(t["id"]): t.get("params") for t in transitions}
    assert params["1.b"] == {"requeue_failed": True}
    assert params["4.a"] == {"requeue_failed": True}
    assert not params["3.a"]


FLAMENCO_FARM = """
jobs:
  - id: 1          # render07 failed 3 frames: blocklisted, its frames requeued; render08 failed 2: not yet
    name: blocklist
    instances:
      - {id: "1.a", host: render07, state: running}
      - {id: "1.b", host: render08, state: running}
      - {id: "1.c", host: render01, state: running}
    frames:
      - {range: 1-3, state: failed, host: render07, instance: "1.a", exit_code: 1, finished_at: 2026-11-28T01:55:00Z}
      - {range: 4-5, state: failed, host: render08, instance: "1.b", exit_code: 1, finished_at: 2026-11-28T01:55:00Z}
      - {range: 6-60, state: complete, host: render01, instance: "1.c", exit_code: 0, finished_at: 2026-11-28T01:55:00Z}
      - {range: 61-100, state: pending}
  - id: 2          # 12 failed frames (one per host, so no blocklist): the job is killed as Flamenco fails it
    name: too_many_failures
    frames:
      - {range: 1-12, state: failed, exit_code: 1, finished_at: 2026-11-28T01:55:00Z}
      - {range: 13-100, state: pending}
"""


def test_flamenco_policies_act_as_documented(tmp_path: Path) -> None:
    transitions = plan(FLAMENCO, farm(tmp_path, FLAMENCO_FARM))
    assert acted(transitions) == {
        ("flamenco-blocklist-worker", "instance", "1.a", "block"),
        ("flamenco-fail-job", "job", "2", "kill"),
    }
    kill = next(t for t in transitions if t["action"] == "kill")
    assert "12 of its 100 frames failed" in str(kill["reason"])


def postgres_commands() -> list[list[str]]:
    text = (EXAMPLES / "postgres.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("corral ")]
    return [shlex.split(line)[1:] for line in lines]


def test_postgres_example_lists_the_commands() -> None:
    commands = postgres_commands()
    assert [c[:2] for c in commands][:2] == [["db", "init"], ["load", "--replace"]]


@pytest.mark.postgres
def test_postgres_example_commands_run(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES.parent)
    monkeypatch.setenv("CORRAL_DB", postgres_url)
    outputs = []
    for args in postgres_commands():
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # a wide pane: names shown whole
        assert result.exit_code in (0, 2), f"corral {' '.join(args)}: {result.output}"
        outputs.append(result.output)
    assert "shot010_lighting" in "".join(outputs)
