"""A clean wheel works like a checkout: the built-in pack's tests read only files the wheel
ships, a test file names the pack `rules: builtin` (not a path into one installation), and
`corral test --init` writes that for a policy of the pack.  .ci/run builds the wheel and tries
it in a fresh virtual environment; these are the fast checks of the same promises.
"""

from __future__ import annotations

import fnmatch
import posixpath
import shutil
import tomllib
from pathlib import Path

import yaml
from typer.testing import CliRunner

from corral.cli import app
from corral.policy.loader import builtin_dir
from corral.policytest import read_test_file, run_tests

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "corral"
EXAMPLE = ROOT / "examples" / "farm-snapshot.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
runner = CliRunner()

CASE = """\
cases:
  - name: a failed job with retries left is retried
    farm:
      jobs:
        - {id: 3, name: comp, state: failed, retry_limit: 3, state_since: 2026-11-28T01:00:00Z,
           frames: [{number: 1, state: failed, host: r1, exit_code: 2, finished_at: 2026-11-28T01:00:00Z}]}
    at: 2026-11-28T02:00:00Z
    expect:
      - {policy: retry-failed-jobs, job: 3, action: retry}
"""


def shipped(relative: str) -> bool:
    """Whether a file of the package (a path relative to src/corral) goes into the wheel."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["corral"]
    return relative.endswith(".py") or any(fnmatch.fnmatch(relative, p) for p in patterns)


def test_the_built_in_tests_read_only_files_the_wheel_ships() -> None:
    """In a wheel, rules/ is a real folder of the package: a test's relative path must stay inside it."""
    for test_file in sorted(builtin_dir().glob("*.test.yaml")):
        doc = yaml.safe_load(test_file.read_text(encoding="utf-8"))
        refs = [c["snapshot"] for c in doc["cases"] if "snapshot" in c]
        rules = doc.get("rules", [])
        refs += [r for r in ([rules] if isinstance(rules, str) else rules) if r != "builtin" and not r.startswith("builtin:")]
        for ref in refs:
            inside = posixpath.normpath(posixpath.join("rules", ref))
            assert not inside.startswith(".."), f"{test_file.name}: {ref} is outside the package"
            assert shipped(inside), f"{test_file.name}: {ref} (corral/{inside}) is not package data in pyproject.toml"
            assert (PACKAGE / inside).is_file(), f"{test_file.name}: corral/{inside} does not exist"


def test_the_packaged_example_snapshot_is_the_examples_one() -> None:
    assert (PACKAGE / "examples" / "farm-snapshot.yaml").read_bytes() == EXAMPLE.read_bytes()


def test_rules_builtin_names_the_built_in_pack(tmp_path: Path) -> None:
    path = tmp_path / "mine.test.yaml"
    path.write_text("policies: [retry-failed-jobs]\nrules: builtin\n" + CASE, encoding="utf-8")
    result = run_tests([path])
    assert result.ok, result
    one = tmp_path / "one.test.yaml"
    one.write_text("policies: [retry-failed-jobs]\nrules: [builtin:retry-failed.yaml]\n" + CASE, encoding="utf-8")
    assert run_tests([one]).ok


def test_a_folder_named_builtin_is_written_dot_slash_builtin(tmp_path: Path) -> None:
    (tmp_path / "builtin").mkdir()
    shutil.copy(builtin_dir() / "retry-failed.yaml", tmp_path / "builtin" / "retry-failed.yaml")
    path = tmp_path / "x.test.yaml"
    path.write_text("policies: [retry-failed-jobs]\nrules: ./builtin\n" + CASE, encoding="utf-8")
    test, errors = read_test_file(path)
    assert not errors and test is not None
    assert Path(test.policies[0].source.file).parent == tmp_path / "builtin"  # type: ignore[union-attr]


def test_a_misspelt_built_in_file_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "x.test.yaml"
    path.write_text("policies: [retry-failed-jobs]\nrules: builtin:retry-faild.yaml\n" + CASE, encoding="utf-8")
    _, errors = read_test_file(path)
    assert [e.message for e in errors] == [
        "no policy file 'retry-faild.yaml' in the built-in pack; did you mean 'retry-failed.yaml'?"
    ]
    assert (errors[0].pos.line, errors[0].pos.column) == (2, 8)


def test_init_names_the_built_in_pack_not_a_path_into_an_installation(tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "lock.test.yaml"
    out.parent.mkdir()
    result = runner.invoke(app, ["test", "--init", "lock-host-out-of-job", "--snapshot", str(EXAMPLE),
                                 "--now", "2026-11-28T02:00:00Z", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["rules"] == "builtin"
    check = runner.invoke(app, ["test", str(out)])
    assert check.exit_code == 0 and check.output.strip().splitlines()[-1] == "1 passed, 0 failed", check.output


def test_init_writes_a_relative_path_to_a_policy_of_ones_own(tmp_path: Path) -> None:
    mine = tmp_path / "policies"
    mine.mkdir()
    text = (builtin_dir() / "lock-host-out-of-job.yaml").read_text(encoding="utf-8")
    (mine / "lockout.yaml").write_text(text.replace("name: lock-host-out-of-job", "name: my-lockout"), encoding="utf-8")
    out = tmp_path / "tests" / "lock.test.yaml"
    out.parent.mkdir()
    result = runner.invoke(app, ["test", "--init", "my-lockout", "--rules", str(mine), "--snapshot", str(EXAMPLE),
                                 "--now", "2026-11-28T02:00:00Z", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["rules"] == "../policies/lockout.yaml"
    check = runner.invoke(app, ["test", str(out)])
    assert check.exit_code == 0, check.output


def test_the_metadata_names_its_licence_authors_and_addresses() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in licence
    assert project["authors"] and all(a.get("name") for a in project["authors"])
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(project["urls"])
