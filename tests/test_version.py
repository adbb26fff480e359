"""`corral --version` prints the installed version, the one `corral.__version__` holds, and
Typer's shell completion is on (`--install-completion`, `--show-completion`)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from typer.testing import CliRunner

import corral
from corral.cli import app

runner = CliRunner()


def test_version_is_the_installed_distributions() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"corral {version('corral')}\n"
    assert version("corral") == corral.__version__  # pyproject.toml reads it from there


def test_version_goes_before_any_command_and_needs_none() -> None:
    assert runner.invoke(app, ["--version", "plan"]).output.startswith("corral ")


def test_help_offers_completion_and_the_version() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for option in ("--version", "--install-completion", "--show-completion"):
        assert option in result.output


def test_the_console_script_completes_a_command_in_bash() -> None:
    script = Path(sys.executable).parent / "corral"
    env = {**os.environ, "_CORRAL_COMPLETE": "complete_bash", "COMP_WORDS": "corral pl", "COMP_CWORD": "1"}
    done = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["plan"]
