"""A wrong or missing database ends a command with one line saying what to do, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("bogus://x", "is not a database URL corral can use"),
        ("postgresql://postgres@127.0.0.1:1/none", "Check that the server is running"),
        ("sqlite:////nonexistent/dir/x.db", "there is no store at /nonexistent/dir/x.db: run `corral db init`"),
    ],
)
def test_a_bad_database_gets_one_clear_line(tmp_path: Path, url: str, says: str) -> None:
    result = corral("status", "--db", url, cwd=tmp_path)
    assert result.returncode == 1
    assert says in result.stderr and "Traceback" not in result.stderr


def test_a_read_only_command_does_not_create_the_store(tmp_path: Path) -> None:
    result = corral("status", cwd=tmp_path)
    assert result.returncode == 1 and "corral db init" in result.stderr
    assert not (tmp_path / "corral.db").exists()
