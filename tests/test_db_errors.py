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


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("host=db port=5432 password=s3cret-pw dbname=farm", "is a libpq connection string; corral takes a URL"),
        ("postgresql://ann:s3cret-pw@127.0.0.1:notaport/farm", "its port is not a number"),
        ("postgresql://postgres@127.0.0.1:5432/corral_no_such_db?password=s3cret-pw", "cannot open"),
        ("postgresql://ann:s3cret-pw@127.0.0.1:1/farm", "Check that the server is running"),
        ("postgresql://ann:s3cret-pw@127.0.0.1:5432/farm?sslmode=bogus", "invalid sslmode value"),
    ],
)
def test_no_form_of_connection_string_shows_its_password(
        tmp_path: Path, url: str, says: str, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A password in a URL's user part or its query, or in libpq's key=value form, is
    masked in every message; a malformed address gets one line, not a traceback.  (The
    console script in this process: a subprocess per command would cost a second each.)"""
    from corral.cli import main

    monkeypatch.chdir(tmp_path)
    for args in (["status"], ["run", "--once"], ["db", "init"]):
        monkeypatch.setattr(sys, "argv", ["corral", *args, "--db", url])
        with pytest.raises(SystemExit) as ended:
            main()
        out, err = capfd.readouterr()
        assert ended.value.code not in (0, None), args
        assert says in err and "s3cret-pw" not in err + out, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)


def test_a_driver_message_that_quotes_the_password_is_masked() -> None:
    from corral.store import Store

    with Store.open("postgresql://ann:s3cret-pw@db/farm") as store:
        assert store.masked('bad option near "s3cret-pw" in host=db password=other') == (
            'bad option near "***" in host=db password=***')
