"""Every example in examples/ works as its comments and docs say."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from corral.cli import app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
POLICIES = EXAMPLES / "policies"
QUBE = POLICIES / "qube-autowrangling.yaml"
FLAMENCO = POLICIES / "flamenco-blocklist.yaml"
AFANASY = POLICIES / "afanasy-errors.yaml"
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


@pytest.mark.parametrize("path", [QUBE, FLAMENCO, AFANASY], ids=lambda p: p.name)
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


def test_every_example_set_ships_with_a_test_file() -> None:
    sets = sorted(p for p in POLICIES.glob("*.yaml") if not p.name.endswith(".test.yaml"))
    assert {p.name for p in sets} >= {QUBE.name, FLAMENCO.name, AFANASY.name}
    for path in sets:
        assert path.with_name(path.stem + ".test.yaml").is_file(), f"{path.name} has no .test.yaml"


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.test.yaml")), ids=lambda p: p.name)
def test_every_case_cites_a_source_its_file_names(path: Path) -> None:
    """A case says which documentation page or test file shows the behaviour it checks."""
    text = path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    cited = set(re.findall(r"^#\s+\[([A-Z]+)\]", header, re.M))
    assert cited, f"{path.name}: its header names no source"
    for case in yaml.safe_load(text)["cases"]:
        tags = set(re.findall(r"\[([A-Z]+)[\] ]", case["name"]))
        assert tags, f"{path.name}: case {case['name']!r} cites no source"
        assert tags <= cited, f"{path.name}: case {case['name']!r} cites {tags - cited}, not in the header"


def test_example_sets_decide_as_their_test_files_say() -> None:
    result = CliRunner().invoke(app, ["test", str(POLICIES)])
    assert result.exit_code == 0, result.output
    summary = result.output.strip().splitlines()[-1]
    passed = int(summary.split()[0])
    assert summary.endswith(" 0 failed") and passed >= 30, summary


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
