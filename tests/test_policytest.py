"""`corral test`: the built-in pack's own tests pass, wrong expectations fail readably, test-file errors have positions."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app
from corral.policy.loader import builtin_dir
from corral.policytest import parse_ref, run_tests
from corral.states import Kind

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
EXAMPLE = ROOT / "examples" / "farm-snapshot.yaml"
runner = CliRunner()

FARM = """\
    farm:
      jobs:
        - id: 3
          name: comp
          retry_limit: 3
          state_since: 2026-11-28T01:50:00Z
          frames:
            - {number: 1, state: failed, host: r1, exit_code: 2, finished_at: 2026-11-28T01:50:00Z,
               state_since: 2026-11-28T01:50:00Z}
        - id: 4
          name: done
          frames: [{number: 1, state: complete, host: r1, exit_code: 0}]
"""


def write(tmp_path: Path, body: str, name: str = "x.test.yaml") -> Path:
    shutil.copy(RULES / "retry-failed.yaml", tmp_path / "retry-failed.yaml")
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def test_every_policy_file_of_the_pack_ships_with_its_tests() -> None:
    for policy_file in RULES.glob("*.yaml"):
        if policy_file.name.endswith(".test.yaml"):
            continue
        assert (RULES / policy_file.name.replace(".yaml", ".test.yaml")).is_file(), policy_file


def test_the_pack_passes_its_own_tests() -> None:
    result = runner.invoke(app, ["test", str(RULES)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 0, result.output
    assert lines[-1].endswith(" passed, 0 failed")
    assert int(lines[-1].split()[0]) >= 14
    assert all(line.startswith("PASS") for line in lines[:-1])


def test_the_pack_passes_on_the_reference_evaluator_too() -> None:
    result = run_tests([builtin_dir()], engine="reference")
    assert result.ok and result.passed >= 14


def test_a_wrong_expectation_fails_with_an_expected_versus_planned_diff(tmp_path: Path) -> None:
    path = write(tmp_path, f"""\
policies: [retry-failed-jobs]
cases:
  - name: retried too early
{FARM}    at: 2026-11-28T01:53:00Z
    expect:
      - {{policy: retry-failed-jobs, job: 3, action: retry}}
  - name: retried on time
{FARM}    at: 2026-11-28T01:56:00Z
    expect: []
    untouched: [job 3]
""")
    result = runner.invoke(app, ["test", str(path)])
    assert result.exit_code == 1
    out = result.output
    lines = out.strip().splitlines()
    assert lines[-1] == "0 passed, 2 failed"
    assert f"FAIL  {path}:3: retried too early" in out
    assert "--- expected" in out and "+++ planned" in out
    # the missing transition says which condition failed, where, and when it will hold
    assert "- retry-failed-jobs: retry job 3" in out
    assert "did not match: time_in_state ≥ 5m (actual 3m, holds in 2m)" in out
    assert "retry-failed.yaml:40:23" in out
    # the unexpected one is shown with its reason, and the must-not-touch breach too
    assert "+ retry-failed-jobs: retry job 3 (failed → retrying): automatic retry" in out
    assert "! job 3 must not be touched" in out


def test_steps_carry_the_plan_forward_and_cooldowns_apply(tmp_path: Path) -> None:
    path = write(tmp_path, f"""\
policies: [retry-failed-jobs]
cases:
  - name: two cycles
{FARM}    steps:
      - at: 2026-11-28T01:56:00Z
        expect: [{{policy: retry-failed-jobs, job: 3, action: retry, to: retrying}}]
      - at: 2026-11-28T01:57:00Z
        expect: []
        untouched: [job 3]
""")
    result = run_tests([path])
    assert result.ok, result.files


def test_errors_in_the_test_file_have_positions_and_run_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, f"""\
policies: [retry-failed-job]
cases:
  - name: typos
{FARM}    at: 2026-11-28T01:56:00Z
    expect:
      - {{policy: retry-failed-jobs, job: 99, action: retyr}}
      - {{policy: retry-failed-jobs, frame: 3:1, action: retry}}
    untuched: [job 4]
""")
    result = runner.invoke(app, ["test", str(path)])
    out = result.output
    assert result.exit_code == 1
    assert f"{path}:1:12: no policy named 'retry-failed-job'" in out and "did you mean 'retry-failed-jobs'?" in out
    assert f"{path}:18:42: no job '99' in the farm" in out
    assert "did you mean 'retry'?" in out
    assert f"{path}:19:44: write a frame as JOB:FRAME in quotes" in out
    assert f"{path}:20:5: unknown key 'untuched'; did you mean 'untouched'?" in out
    assert "none of its cases ran" in out
    assert out.strip().splitlines()[-1] == "0 passed, 1 failed"


def test_a_yaml_syntax_error_is_placed(tmp_path: Path) -> None:
    path = write(tmp_path, "policies: [a\ncases: []\n")
    out = runner.invoke(app, ["test", str(path)]).output
    assert f"ERROR {path}:" in out and "YAML syntax error" in out


def test_snapshot_path_is_relative_to_the_test_file(tmp_path: Path) -> None:
    (tmp_path / "farms").mkdir()  # not next to the policies: the loader would read it as a policy file
    shutil.copy(EXAMPLE, tmp_path / "farms" / "farm.yaml")
    path = write(tmp_path, """\
policies: [retry-failed-jobs, retry-failed-frames]
cases:
  - name: the example night
    snapshot: farms/farm.yaml
    at: 2026-11-28T02:00:00Z
    expect:
      - {policy: retry-failed-jobs, job: 103, action: retry}
      - {policy: retry-failed-frames, frame: "110:6", action: retry}
      - {policy: retry-failed-frames, frame: "111:6", action: retry}
      - {policy: retry-failed-frames, frame: "112:6", action: retry}
    untouched: [job 104, "frame 104:10"]
""")
    assert run_tests([path]).ok


def test_init_writes_a_starter_test_that_passes(tmp_path: Path) -> None:
    out = tmp_path / "lock.test.yaml"
    result = runner.invoke(app, ["test", "--init", "lock-host-out-of-job", "--snapshot", str(EXAMPLE),
                                 "--now", "2026-11-28T02:00:00Z", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "policies: [lock-host-out-of-job]" in text
    assert "instance: '101.3'" in text and "action: block" in text
    assert "untouched:" in text
    assert "id: 103" not in text  # trimmed: jobs the policy does not look at are left out
    check = runner.invoke(app, ["test", str(out)])
    assert check.exit_code == 0, check.output
    assert check.output.strip().splitlines()[-1] == "1 passed, 0 failed"


def test_init_names_an_unknown_policy() -> None:
    result = runner.invoke(app, ["test", "--init", "lock-host-out", "--snapshot", str(EXAMPLE)])
    assert result.exit_code == 1 and "did you mean 'lock-host-out-of-job'?" in result.output


def test_entity_references() -> None:
    assert parse_ref("job 104") == (Kind.JOB, "104")
    assert parse_ref('frame "110:6"') == (Kind.FRAME, "110:6")
    assert parse_ref("instance:101.3") == (Kind.INSTANCE, "101.3")
    assert parse_ref("worker render01") == (Kind.WORKER, "render01")
    assert parse_ref("host render01") is None
