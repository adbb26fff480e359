"""`corral status`, `history` and `outbox` in a pane of 60, 80 and 200 columns, and piped
(`corral.cli.tables`): ids, states, numbers, times and from → to are always shown
whole; a long job name gives way with an ellipsis; a long reason is wrapped at word
boundaries, never mid-word; piped output is one record per line, the same whatever the
pane, with every value whole."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from corral.cli import app, common, tables
from corral.cli.daemon_cmds import HISTORY_COLUMNS
from corral.cli.farm_cmds import STATUS_COLUMNS
from corral.cli.outbox_cmds import OUTBOX_COLUMNS
from corral.farm import Farm, Frame, Job, Worker
from corral.outbox import Route, Status
from corral.states import Action, FrameState, Kind
from corral.store import Proposal, Store

runner = CliRunner()
AT = datetime(2026, 12, 2, 16, 49, 22, tzinfo=UTC)
CYCLE = "20261202T164922-ab12cd"
#: 200 characters and not one space: the job name that used to push id, priority and the
#: counts out of `corral status`.
LONG_NAME = ("seq040_sh0120_lighting_beauty_pass_" + "_".join(f"variant{i:02d}" for i in range(30)))[:200]
#: Markup and an emoji code, which must be shown as they are.
ODD_NAME = "lookdev [bold]v2[/bold] :smile: review"
REASON = ("frames failed on three different hosts within the last hour with the same texture cache error; "
          "blocking until the pipeline team republishes the lookdev asset")
#: Holds a word (a host name) longer than a narrow answer column.
ANSWER = ("connection refused by qube-supervisor.render.studio.internal:50001 after 12 attempts; "
          "the supervisor may be down for maintenance")
COMMANDS: dict[str, tuple[tables.Col, ...]] = {
    "status": STATUS_COLUMNS, "history": HISTORY_COLUMNS, "outbox": OUTBOX_COLUMNS,
}
#: The layout each command takes in a pane this wide, with this farm.  History's fixed
#: columns (time, entity, action, from → to, a cycle id) with a reason need ~120 columns.
LAYOUTS = {
    60: {"status": "records", "history": "records", "outbox": "records"},
    80: {"status": "table", "history": "records", "outbox": "table"},
    200: {"status": "table", "history": "table", "outbox": "table"},
}


@pytest.fixture
def db(tmp_path: Path, sqlite_template: Path) -> str:
    shutil.copy(sqlite_template, tmp_path / "corral.db")
    url = f"sqlite:///{tmp_path / 'corral.db'}"
    with Store.open(url) as store:
        farm = Farm(workers={"n1": Worker("n1")})
        states = [FrameState.FAILED, FrameState.PENDING, FrameState.COMPLETE, FrameState.PENDING]
        farm.jobs[12] = Job(12, LONG_NAME, priority=50, frames={i: Frame(12, i, s) for i, s in enumerate(states, 1)})
        farm.jobs[14] = Job(14, ODD_NAME, frames={1: Frame(14, 1, FrameState.COMPLETE)})
        farm.jobs[1045] = Job(1045, "fx_sim_cache", priority=100,
                              frames={i: Frame(1045, i, FrameState.PENDING) for i in range(1, 130)})
        store.load_farm(farm, replace=True)
        store.set_routes([Route("qube", frozenset({(Kind.JOB, Action.BLOCK)}))])
        farm = store.read_farm()
        store.apply_transitions(farm, [Proposal(Kind.JOB, "12", Action.BLOCK, reason=REASON)], now=AT, actor="user:ana")
        store.apply_transitions(farm, [
            Proposal(Kind.JOB, "1045", Action.BLOCK, reason="stuck", policy="block-stuck-sims", automatic=True),
            Proposal(Kind.JOB, "14", Action.BLOCK, reason="audit only", policy="block-odd", applied=False),
        ], now=AT, actor="corral", cycle_id=CYCLE)
        first = min(store.outbox_rows(), key=lambda e: e.id)
        store.outbox_mark(first.id, Status.DEAD, attempts=12, last_error=ANSWER)
    return url


@pytest.fixture
def pane(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], None]:
    """As if corral were started in a pane `columns` wide ($COLUMNS), or piped (None).
    The shared console read $COLUMNS when it was imported: it is made to read it again."""

    def set_pane(columns: int | None) -> None:
        monkeypatch.setattr(common.console, "_width", None)
        for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # colours would add escapes to the output
            monkeypatch.delenv(name, raising=False)
        if columns is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", str(columns))

    return set_pane


# --- reading the three layouts back -------------------------------------------------------


def read_table(out: str, columns: Sequence[tables.Col]) -> list[dict[str, str]]:
    """A Rich table's rows, a wrapped cell's lines joined with spaces (so a word split in
    two would show as two words), by column key."""
    heads = [line for line in out.splitlines() if line.startswith("┃")]
    assert len(heads) == 1, out  # no header is wrapped
    names = {c.header: c.name for c in columns}
    keys = [names[h.strip()] for h in heads[0].strip("┃").split("┃")]
    rows: list[list[list[str]]] = []
    for line in out.splitlines():
        if line.startswith("│"):
            parts = [p.strip() for p in line.strip("│").split("│")]
            if parts[0]:  # the first column is fixed: written on a row's first line only
                rows.append([[] for _ in parts])
            for cell, part in zip(rows[-1], parts, strict=True):
                cell.extend([part] if part else [])
    return [{k: " ".join(cell) for k, cell in zip(keys, row, strict=True)} for row in rows]


def read_records(out: str, columns: Sequence[tables.Col]) -> list[dict[str, str]]:
    """Blocks of `label: value` lines, continuation lines joined with spaces."""
    labels = {f"{c.title}:": c.name for c in columns}
    rows: list[dict[str, str]] = []
    key = ""
    for line in out.splitlines():
        label = next((lb for lb in labels if line.startswith(lb)), None)
        if label is not None:
            key = labels[label]
            if key == columns[0].name:
                rows.append({})
            rows[-1][key] = line[len(label):].strip()
        elif line.startswith(" ") and line.strip():
            rows[-1][key] += " " + line.strip()
    return rows


PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"=]*)')


def read_lines(out: str, columns: Sequence[tables.Col]) -> list[dict[str, str]]:
    keys = [c.name for c in columns]
    rows = []
    for line in out.splitlines():
        pairs = {k: json.loads(v) if v.startswith('"') else v for k, v in PAIR.findall(line)}
        if list(pairs) == keys:
            rows.append(pairs)
    return rows


def read(out: str, layout: str, columns: Sequence[tables.Col]) -> list[dict[str, str]]:
    return {"table": read_table, "records": read_records, "lines": read_lines}[layout](out, columns)


def layout_of(out: str) -> str:
    if any(line.startswith("┃") for line in out.splitlines()):
        return "table"
    return "lines" if re.match(r"^\w+=", out) else "records"


def gives_way(shown: str, whole: str) -> bool:
    """`shown` is `whole`, or `whole` cut with an ellipsis, or `whole`'s words in which a
    word too long for its column ends in an ellipsis: never a word split in two."""
    if shown == whole or (shown.endswith("…") and whole.startswith(shown[:-1])):
        return True
    words, full = shown.split(), whole.split()
    return len(words) == len(full) and all(
        w == f or (w.endswith("…") and f.startswith(w[:-1])) for w, f in zip(words, full, strict=True))


def shown(command: str, db: str) -> list[dict[str, str]]:
    out = run(command, "--db", db)
    return read(out, layout_of(out), COMMANDS[command])


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


# --- what each command must show whole ------------------------------------------------------


def expected(command: str, db: str) -> list[dict[str, str]]:
    """The rows as --json has them, in the strings the layouts show."""
    data = json.loads(run(command, "--db", db, "--json"))
    if command == "status":
        return [{"id": str(j["id"]), "name": j["name"], "state": j["state"], "priority": str(j["priority"]),
                 **{k: str(n) for k, n in j["frames"].items()}} for j in data]
    if command == "history":
        return [{"at": datetime.fromisoformat(r["at"]).strftime("%Y-%m-%d %H:%M:%S"), "entity": f"{r['kind']} {r['id']}",
                 "action": r["action"] if r["applied"] else f"would {r['action']}",
                 "from_to": f"{r['from']} → {r['to']}", "by": f"policy {r['policy']}" if r["policy"] else r["actor"],
                 "reason": r["reason"], "cycle": r["cycle"] or ""} for r in data]
    return [{"id": str(e["id"]), "queued": datetime.fromisoformat(e["at"]).strftime("%m-%d %H:%M:%S"), "sink": e["sink"],
             "action": f"{e['action']} {e['kind']} {e['entity']}", "status": e["status"], "tries": str(e["attempts"]),
             "answer": e["answer"] or e["last_error"] or ""} for e in data]


def check(command: str, shown: list[dict[str, str]], want: list[dict[str, str]], layout: str) -> None:
    assert len(shown) == len(want) > 0
    for got, row in zip(shown, want, strict=True):
        for col in COMMANDS[command]:
            value, whole = got[col.name], row[col.name]
            if col.fixed:
                zero = layout == "table" and col.zero is not None and whole == "0"
                assert value == (col.zero if zero else whole), (col.name, value, whole)
            else:
                assert gives_way(value, whole), (col.name, value, whole)


@pytest.mark.parametrize("columns", [60, 80, 200])
@pytest.mark.parametrize("command", ["status", "history", "outbox"])
def test_ids_states_and_numbers_are_whole_in_any_pane(db: str, pane: Callable[[int | None], None], command: str,
                                                      columns: int) -> None:
    pane(columns)
    out = run(command, "--db", db)
    layout = layout_of(out)
    assert layout == LAYOUTS[columns][command], out
    assert max(cell_len(line) for line in out.splitlines()) <= columns, out
    check(command, read(out, layout, COMMANDS[command]), expected(command, db), layout)


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_long_names_give_way_and_reasons_wrap_at_word_boundaries(db: str, pane: Callable[[int | None], None],
                                                                  columns: int) -> None:
    pane(columns)
    jobs = {r["id"]: r for r in shown("status", db)}
    name = jobs["12"]["name"]
    assert name.endswith("…") and LONG_NAME.startswith(name[:-1]) and len(name) < len(LONG_NAME)
    assert gives_way(jobs["14"]["name"], ODD_NAME)
    (manual,) = [r for r in shown("history", db) if r["entity"] == "job 12"]
    assert manual["reason"] == REASON  # wrapped on several lines, at spaces only
    if columns < 200:
        assert not any(REASON in line for line in run("history", "--db", db).splitlines())
    (dead,) = [r for r in shown("outbox", db) if r["tries"] == "12"]
    assert gives_way(dead["answer"], ANSWER)
    if columns == 80:  # the host name is longer than the column: it ends in "…", never split
        assert "qube-superv…" in dead["answer"].split()


def test_a_wide_pane_shows_a_job_s_name_and_every_column(db: str, pane: Callable[[int | None], None]) -> None:
    pane(250)
    out = run("status", "--db", db)
    jobs = {r["id"]: r for r in read_table(out, STATUS_COLUMNS)}
    assert jobs["12"]["name"] == LONG_NAME[: len(jobs["12"]["name"]) - 1] + "…"  # 250 columns: still too long
    assert jobs["14"]["name"] == ODD_NAME and jobs["1045"]["pending"] == "129" and jobs["1045"]["blocked"] == "·"
    assert "frames: pending, blocked, running, complete, failed, killed" in out


@pytest.mark.parametrize("command", ["status", "history", "outbox"])
def test_piped_output_is_one_whole_record_per_line_whatever_the_pane(db: str, pane: Callable[[int | None], None],
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     command: str) -> None:
    pane(None)
    out = run(command, "--db", db)
    assert layout_of(out) == "lines" and "…" not in out
    shown = read_lines(out, COMMANDS[command])
    assert shown == expected(command, db)  # every value whole, zeros written 0
    assert len(shown) == len([line for line in out.splitlines() if "=" in line.split(" ")[0]])
    for width in (60, 200):  # the pane it was piped from does not matter
        monkeypatch.setattr(common.console, "_width", width)
        assert run(command, "--db", db) == out


def test_piped_lines_quote_what_needs_it(db: str, pane: Callable[[int | None], None]) -> None:
    pane(None)
    lines = run("status", "--db", db).splitlines()
    assert lines[0].startswith(f"id=12 name={LONG_NAME} state=blocked priority=50 pending=2 blocked=0 ")
    assert f"id=14 name={json.dumps(ODD_NAME)} state=" in lines[1]
    history = run("history", "--db", db)
    assert f'action=block from_to="pending → blocked" by=user:ana reason={json.dumps(REASON)} cycle=""' in history
    assert f'action="would block" from_to="pending → blocked" by="policy block-odd" reason="audit only" cycle={CYCLE}' \
        in history


def test_json_does_not_depend_on_the_pane(db: str, pane: Callable[[int | None], None]) -> None:
    outs = set()
    for columns in (60, 200, None):
        pane(columns)
        outs.add(tuple(run(command, "--db", db, "--json") for command in COMMANDS))
    assert len(outs) == 1


def test_help_says_what_a_pipe_gets() -> None:
    for command in (["status"], ["history"], ["outbox"]):
        text = " ".join(run(*command, "--help").split())
        assert "when piped" in text and "COLUMNS" in text


# --- the helper itself --------------------------------------------------------------------------


def test_fixed_columns_keep_their_width_and_elastic_ones_share_the_rest() -> None:
    cols = [tables.fixed("id"), tables.elastic("name", min_width=6), tables.elastic("why", wrap=True, min_width=6)]
    rows = [["12345", "n" * 40, "w" * 10]]
    assert tables.table_widths(cols, rows, 200) == [5, 40, 10]
    # 3 columns cost 10 cells of rules and padding: 40 - 10 - 5 = 25 for the two others
    assert tables.table_widths(cols, rows, 40) == [5, 15, 10]
    assert tables.table_widths(cols, rows, 10 + 5 + 6 + 6) == [5, 6, 6]
    assert tables.table_widths(cols, rows, 10 + 5 + 6 + 5) is None  # records then


def test_a_column_s_key_is_one_word() -> None:
    with pytest.raises(ValueError, match="one word"):
        tables.fixed("from → to")
    assert tables.logfmt([tables.fixed("a"), tables.fixed("b"), tables.fixed("c")], ["x", "", 'say "hi"=1']) == \
        'a=x b="" c="say \\"hi\\"=1"'


def _in_terminal(args: list[str], columns: int) -> str:
    """`corral args` in a pseudo-terminal `columns` wide (no $COLUMNS): what a person sees."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = subprocess.Popen([sys.executable, "-m", "corral", *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**env, "TERM": "xterm", "NO_COLOR": "1"})
    os.close(slave)
    data = b""
    try:
        while select.select([master], [], [], 60)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command ended
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(master)
        assert proc.wait(timeout=60) == 0, data
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", data.decode()).replace("\r\n", "\n")


@pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")), reason="needs a pseudo-terminal")
def test_in_a_real_terminal_the_pane_s_width_decides(db: str) -> None:
    narrow = _in_terminal(["history", "--db", db], 60)
    assert layout_of(narrow) == "records" and max(cell_len(line) for line in narrow.splitlines()) <= 60
    check("history", read_records(narrow, HISTORY_COLUMNS), expected("history", db), "records")
    wide = _in_terminal(["status", "--db", db], 120)
    assert layout_of(wide) == "table" and max(cell_len(line) for line in wide.splitlines()) <= 120
    check("status", read_table(wide, STATUS_COLUMNS), expected("status", db), "table")
