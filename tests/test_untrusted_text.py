"""The farm's strings (job names, hosts, reasons that quote them) are shown, never obeyed:
no Rich markup is read from them, and control characters are written out, on every
command that shows them and in the daemon's log."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from corral.api import Corral
from corral.cli import app, common
from corral.daemon.logs import setup_logging
from corral.farm import Farm, Frame, Job, Worker
from corral.states import FrameState, Kind
from corral.store import Store
from corral.untrusted import visible

runner = CliRunner()
#: Markup that once crashed `corral status` (an unmatched closing tag) or became a link, a
#: newline that forges a line, an escape sequence that clears the screen.
NASTY = "oops[/bold] [link=http://evil.example]x[/link]\nFAKE 2026 INFO corral.daemon: all good\x1b[2J"


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'corral.db'}"
    with Store.open(url) as store:
        store.init()
        farm = Farm(workers={"n1": Worker("n1")})
        farm.jobs[7] = Job(7, NASTY, frames={1: Frame(7, 1, FrameState.FAILED, host="n1")})
        store.load_farm(farm, replace=True)
        Corral(store, actor="user:[/b]\nann").act(Kind.JOB, 7, "block", reason=f"because {NASTY}")
    return url


def _clean(output: str, *, whole: bool = True) -> None:
    """No raw escape character, no line that starts as the forged one; with `whole` (a
    pane wide enough that nothing is cut), the control characters shown written out."""
    assert "\x1b" not in output
    assert not any(line.lstrip("│┃ ").startswith("FAKE 2026") for line in output.splitlines())
    if whole:
        assert "\\x1b[2J" in output and "\\nFAKE 2026" in output


def _columns(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    """The CLI as started in a pane of `columns` ($COLUMNS, which the tables read when they
    lay out), its consoles as wide (they may have taken a width when they were made)."""
    monkeypatch.setenv("COLUMNS", str(columns))
    for console in (common.console, common.err_console):
        monkeypatch.setattr(console, "_width", columns)


@pytest.mark.parametrize("columns", [60, 200])
def test_status_and_history_show_the_farm_s_strings_as_text(db: str, columns: int, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    _columns(monkeypatch, columns)
    for args in (["status"], ["history"]):
        result = runner.invoke(app, [*args, "--db", db])
        assert result.exit_code == 0, result.output
        _clean(result.output, whole=columns >= 200)
        assert "oops[/bold]" in result.output or columns < 200


def test_plan_and_run_show_reasons_that_quote_a_nasty_name_as_text(db: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _columns(monkeypatch, 300)
    rules = tmp_path / "p.yaml"
    rules.write_text("policies:\n  - name: note\n    kind: job\n    when: {state: blocked}\n    actions: [unblock]\n"
                     "    reason: 'about {name}'\n")
    for args in (["plan", "--rules", str(rules), "--only-rules"],
                 ["run", "--once", "--no-isolate", "--rules", str(rules), "--only-rules"]):
        result = runner.invoke(app, [*args, "--db", db])
        assert result.exit_code in (0, 2), result.output
        _clean(result.output)


def test_a_newline_in_a_logged_name_does_not_forge_a_log_line() -> None:
    stream = io.StringIO()
    handler = setup_logging("human", stream=stream)
    try:
        logging.getLogger("corral.daemon").info("block job %s: %s", 7, NASTY, extra={"policy": "p\nq"})
    finally:
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "\\nFAKE 2026" in lines[0] and "\x1b" not in lines[0] and "policy=p\\nq" in lines[0]


def test_visible_writes_out_every_control_character_and_leaves_text_alone() -> None:
    assert visible("render01 [b]é\u00e9") == "render01 [b]éé"
    assert visible("a\tb\rc\x00d\x7fe\x9bf") == "a\\tb\\rc\\x00d\\x7fe\\x9bf"


@given(st.text(max_size=12))
def test_a_name_is_refused_exactly_when_it_holds_a_control_character(text: str) -> None:
    """`no_controls` lets plain ASCII through without its regex: the same answers."""
    from corral.untrusted import _CONTROL, no_controls

    try:
        no_controls(text)
        refused = False
    except ValueError:
        refused = True
    assert refused == bool(_CONTROL.search(text))
