"""`corral check`, `schema`, `fields`, `plan` and `run --once` as a wrangler uses them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from corral.cli import app
from corral.policy.loader import builtin_dir
from corral.policy.reference_doc import render
from corral.yamlpos import load_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "farm-snapshot.yaml"
NIGHT = "2026-11-28T02:00:00Z"
runner = CliRunner()

GOOD = """\
policies:
  - name: kill-long-frames
    kind: frame
    when: {state: running, run_time: {gt: 4h}}
    actions: [kill]
    reason: "ran {run_time}"
"""
BAD = """\
policies:
  - name: oops
    kind: instance
    when:
      consecutve_failures: {gte: 3}
      state: runing
    actions: [suspend]
    reason: "x"
"""


def test_check_accepts_the_builtin_pack() -> None:
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    assert "ok: 8 policies" in result.output


def test_check_reports_every_error_with_file_line_column_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith(str(bad))]
    assert len(lines) == 3
    assert f"{bad}:5:7: unknown field 'consecutve_failures'" in lines[0]
    assert "did you mean 'consecutive_failures'" in lines[0]
    assert f"{bad}:6:14: 'runing' is not a state" in lines[1] and "did you mean 'running'" in lines[1]
    assert f"{bad}:7:15: 'suspend' is not an action on an instance" in lines[2]


def test_check_json_lists_errors_as_objects(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = runner.invoke(app, ["check", "--json", str(bad)])
    data = json.loads(result.output)
    assert data["ok"] is False
    assert {(e["line"], e["column"]) for e in data["errors"]} == {(5, 7), (6, 14), (7, 15)}


def test_check_a_folder_with_one_bad_file_still_counts_the_good_one(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    result = runner.invoke(app, ["check", "--json", str(tmp_path)])
    data = json.loads(result.output)
    assert data["policies"] == ["kill-long-frames"]
    assert result.exit_code == 1


def test_schema_is_valid_json_schema_and_accepts_every_builtin_file() -> None:
    result = runner.invoke(app, ["schema"])
    schema = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted(p for p in builtin_dir().glob("*.yaml") if not p.name.endswith(".test.yaml")):
        data = json.loads(json.dumps(load_file(path)))
        errors = list(validator.iter_errors(data))
        assert not errors, (path, [e.message for e in errors])


def test_schema_rejects_an_unknown_field_and_a_wrong_action() -> None:
    schema = json.loads(runner.invoke(app, ["schema"]).output)
    validator = jsonschema.Draft202012Validator(schema)
    bad_field = {"policies": [{"name": "x", "kind": "job", "when": {"nope": 1}, "actions": ["block"], "reason": "r"}]}
    bad_action = {"policies": [{"name": "x", "kind": "worker", "when": {"state": "up"}, "actions": ["kill"], "reason": "r"}]}
    assert list(validator.iter_errors(bad_field))
    assert list(validator.iter_errors(bad_action))


def test_policy_reference_doc_is_current() -> None:
    assert (ROOT / "docs" / "policy-reference.md").read_text() == render(), (
        "regenerate with: python -m corral.policy.reference_doc > docs/policy-reference.md"
    )


def test_fields_lists_worker_fields_as_json() -> None:
    data = json.loads(runner.invoke(app, ["fields", "worker", "--json"]).output)
    assert data["worker"]["distinct_jobs_failed"]["type"] == "int"


def test_plan_on_a_snapshot_prints_json_and_exits_0() -> None:
    result = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--now", NIGHT, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert {"policy", "kind", "id", "action", "from", "to", "reason"} <= set(plan[0])
    by_id = {(p["kind"], p["id"]): p for p in plan}
    assert by_id[("job", 102)]["action"] == "block"
    assert by_id[("frame", "110:6")]["from"] == "failed"
    assert by_id[("instance", "101.3")]["to"] == "blocked"
    assert by_id[("worker", "render09")]["policy"] == "quarantine-worker"


def test_plan_with_nothing_to_do_exits_0(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(GOOD)
    result = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--now", NIGHT, "--only-rules", "--rules", str(rules)])
    assert result.exit_code == 0, result.output
    assert "Nothing to do" in result.output


def test_plan_with_a_bad_policy_file_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--rules", str(bad)])
    assert result.exit_code == 1


def test_plan_table_groups_by_policy_with_reasons() -> None:
    result = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--now", NIGHT])
    assert result.exit_code == 0
    assert "dry run" in result.output and "lock-host-out-of-job" in result.output


def test_plan_set_overrides_a_parameter() -> None:
    result = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--now", NIGHT, "--json",
                                 "--set", "retry-failed-jobs.delay=1h"])
    ids = {(p["policy"], p["id"]) for p in json.loads(result.output)}
    assert ("retry-failed-jobs", 103) not in ids  # it failed only 20 minutes before


def test_plan_set_naming_an_unknown_parameter_is_an_error() -> None:
    result = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--set", "retry-failed-jobs.dealy=1h"])
    assert result.exit_code == 1
    assert "did you mean 'delay'" in result.output


@pytest.mark.parametrize("engine", ["durable", "reference"])
def test_plan_against_the_store_never_writes(tmp_path: Path, engine: str) -> None:
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    assert runner.invoke(app, ["db", "init", "--db", db]).exit_code == 0
    assert runner.invoke(app, ["load", str(EXAMPLE), "--db", db]).exit_code == 0
    before = runner.invoke(app, ["dump", "--db", db, "--format", "json"]).output
    counter = sqlite3.connect(tmp_path / "farm.db").execute("SELECT value FROM revision").fetchone()
    result = runner.invoke(app, ["plan", "--db", db, "--now", NIGHT, "--json", "--engine", engine])
    assert result.exit_code == 0
    assert runner.invoke(app, ["dump", "--db", db, "--format", "json"]).output == before
    # not even the change-tracking counter moves
    assert sqlite3.connect(tmp_path / "farm.db").execute("SELECT value FROM revision").fetchone() == counter


def test_run_once_applies_the_plan_and_a_second_cycle_applies_nothing(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    runner.invoke(app, ["db", "init", "--db", db])
    runner.invoke(app, ["load", str(EXAMPLE), "--db", db])
    first = json.loads(runner.invoke(app, ["run", "--once", "--db", db, "--json"]).output)
    assert first["applied"] >= 9 and not first["refused"]
    second = json.loads(runner.invoke(app, ["run", "--once", "--db", db, "--json"]).output)
    assert second["applied"] == 0 and second["planned"] == []
    status = {j["id"]: j for j in json.loads(runner.invoke(app, ["status", "--db", db, "--json"]).output)}
    assert status[102]["state"] == "blocked" and status[106]["state"] == "pending" and status[103]["state"] == "retrying"


def test_a_duplicate_name_is_reported_even_when_both_policies_have_other_errors(tmp_path: Path) -> None:
    bad = tmp_path / "dup.yaml"
    bad.write_text(
        "policies:\n"
        "  - name: p1\n    kind: job\n    when: {state: nope}\n    actions: [block]\n    reason: r\n"
        "  - name: p1\n    kind: gadget\n    when: {state: failed}\n    actions: [explode]\n    reason: r\n"
    )
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith(str(bad))]
    assert [line.split(": ")[0] for line in lines] == [f"{bad}:4:19", f"{bad}:7:5", f"{bad}:8:11", f"{bad}:10:15"]
    assert "duplicate policy name 'p1'" in lines[1] and f"{bad}:2:5" in lines[1]


def test_replay_runs_over_a_store_fed_by_the_supervisor(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fed.db'}"
    assert runner.invoke(app, ["db", "init", "--db", db]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(ROOT / "examples" / "events.jsonl"), "--db", db]).exit_code == 0
    assert runner.invoke(app, ["run", "--once", "--db", db]).exit_code == 0
    result = runner.invoke(app, ["replay", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    assert "unblock-when-dependencies-complete" in result.output


def test_run_dry_run_reports_exactly_what_the_real_run_would_apply(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    runner.invoke(app, ["db", "init", "--db", db])
    runner.invoke(app, ["load", str(EXAMPLE), "--db", db])
    dry = json.loads(runner.invoke(app, ["run", "--once", "--dry-run", "--db", db, "--json"]).output)
    assert dry["applied"] == 0
    real = json.loads(runner.invoke(app, ["run", "--once", "--db", db, "--json"]).output)
    key = [(p["policy"], p["kind"], p["id"], p["action"]) for p in dry["planned"]]
    assert sorted(key, key=str) == sorted(((p["policy"], p["kind"], p["id"], p["action"]) for p in real["planned"]), key=str)
    assert real["applied"] == len(real["planned"])


def test_status_says_when_corral_is_paused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    runner.invoke(app, ["db", "init", "--db", db])
    runner.invoke(app, ["load", str(EXAMPLE), "--db", db])
    assert "paused" not in runner.invoke(app, ["status", "--db", db]).output
    runner.invoke(app, ["pause", "--db", db, "--reason", "file server maintenance"])
    assert "corral is paused" in runner.invoke(app, ["status", "--db", db]).output
