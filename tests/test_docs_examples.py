"""Every example in README.md and docs/*.md works as written, so that a doc example cannot rot.

Fenced blocks are extracted and run, each in a fresh temporary folder that holds a copy of the
repository's `examples/` (the docs are read from the top of a checkout and name `examples/...`
from there), with the virtual environment's `corral` and `python` first on PATH and CORRAL_DB
unset (so the store is `corral.db` in that folder):

* ```sh: each command (a line; a trailing backslash continues it; `#` lines are comments) runs
  with bash in the folder and must exit 0 (`corral plan --detailed-exitcode` may exit 2: its plan
  holds transitions).
* ```console: each `$ command` runs the same way, and every output line shown (but `...`) must
  appear in what it prints, in that order (runs of spaces compared as one).
* ```python: the block runs as a script, with the venv's python, in the folder.
* ```yaml, by what it is: a policy file (`policies:`, or one policy starting with `name:`) must
  load with `corral.policy.loader.load_texts`; a list of policies is checked as the `policies:` of
  a file; a fragment of a policy (`kind:` and `when:`, no `name:`) is completed with a name, a
  `notify` action and a reason, then checked; a policy test (`cases:`) must pass under
  `corral.policytest`; a sinks file (`sinks:`) must load with
  `corral.sinks.config.load_sinks_text`; a farm snapshot (`jobs:` or `workers:`) must parse with
  `corral.snapshot`.  A YAML block that is none of these must be marked.
* ```json lines: supervisor events, ingested into a fresh store: no line may be bad.

Other blocks (plain ```, json, toml: output and payloads) are not run.

Markers: an HTML comment on the line right before a fence (directives separated by `;`):

    <!-- doc-test: skip (why it cannot run here) -->  not run; the reason is required
    <!-- doc-test: session NAME -->                   the blocks of a doc with the same session share
                                                      one folder and run in order (the README's steps)
    <!-- doc-test: file PATH -->                      the block is also written to PATH in its folder,
                                                      for the blocks after it
    <!-- doc-test: needs store -->                   the folder first gets a store holding
                                                      examples/farm-snapshot.yaml after one cycle
                                                      (`corral db init`, `load`, `run --once`)

The docs this file may not edit carry their markers in READ_ONLY_MARKERS, keyed by the block's
first line.  An example that fails because of a bug in corral is listed in KNOWN_BUGS (with its
session, if it has one) and runs as a strict expected failure, so the test flips when the bug is
fixed.  One test per doc, so that a parallel run spreads the docs over the workers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
CORRAL = BIN / "corral"

#: The languages of the blocks that are run; every other fence is left alone.
RUN = ("sh", "console", "python", "yaml", "json lines")

#: Markers of the docs this change may not edit (owned elsewhere), keyed by (doc, start of the
#: block's first line).  Move them into the markdown as `<!-- doc-test: ... -->` when convenient.
READ_ONLY_MARKERS: dict[tuple[str, str], str] = {
    ("docs/afanasy.md", 'python3 -c "import socket'): "skip (needs a live Afanasy server at afserver.example)",
    ("docs/afanasy.md", "pip install corral"): "skip (installs corral and names a PostgreSQL server)",
    ("docs/afanasy.md", "corral sync --farm afanasy://"): "skip (needs a live Afanasy server)",
    ("docs/afanasy.md", "corral plan --rules rules/"): "skip (reads a live Afanasy server and the reader's own rules/)",
    ("docs/afanasy.md", "corral run --farm afanasy://"): "skip (a daemon wrangling a live Afanasy server)",
    ("docs/afanasy.md", "corral db init --db sqlite:////tmp/live"): "skip (a daemon wrangling a live Afanasy server)",
    ("docs/benchmarks.md", ".venv/bin/python bench/cycle_bench.py"): "skip (benchmarks: minutes each, some on PostgreSQL)",
}

#: Examples that fail because of a bug in corral's code: (doc, start of the block's first line)
#: -> the bug.  Each runs (with the rest of its session) as xfail(strict=True).
KNOWN_BUGS: dict[tuple[str, str], str] = {}

MARKER = re.compile(r"^\s*<!--\s*doc-test:(?P<body>.*?)-->\s*$")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str
    marker: str | None = None
    skip: str | None = None
    session: str | None = None
    file: str | None = None
    needs_store: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def first(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")

    @property
    def runs(self) -> bool:
        return self.lang in RUN and self.skip is None


def _directives(body: str) -> list[str]:
    """Split on `;`, but not inside a skip's parentheses (a reason may hold one)."""
    out, depth, current = [], 0, ""
    for char in body:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == ";" and depth <= 0:
            out.append(current)
            current = ""
        else:
            current += char
    return [*out, current]


def _apply_marker(block: Block, body: str) -> None:
    block.marker = body.strip()
    for directive in filter(None, (d.strip() for d in _directives(body))):
        if directive == "skip" or directive.startswith("skip ") or directive.startswith("skip("):
            m = re.fullmatch(r"skip\s*\((.*)\)", directive)
            if not m or not m.group(1).strip():
                block.problems.append(f"{block.where}: `{directive}`: a skip says why, as `skip (reason)`")
            else:
                block.skip = m.group(1).strip()
        elif m := re.fullmatch(r"session\s+([\w.-]+)", directive):
            block.session = m.group(1)
        elif m := re.fullmatch(r"file\s+(\S+)", directive):
            block.file = m.group(1)
        elif directive == "needs store":
            block.needs_store = True
        else:
            block.problems.append(f"{block.where}: unknown doc-test directive `{directive}` "
                                  "(skip (REASON), session NAME, file PATH, needs store)")


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a markdown file, with their markers, and the problems with its markers."""
    doc = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: tuple[int, str] | None = None     # a marker waiting for its fence
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := MARKER.match(line):
            if pending:
                problems.append(f"{doc}:{pending[0]}: a doc-test marker not followed by a fence")
            pending = (i + 1, m.group("body"))
        elif m := FENCE.match(line):
            indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").strip()
            body: list[str] = []
            j = i + 1
            while j < len(lines):
                close = FENCE.match(lines[j])
                if close and close.group("fence")[0] == fence[0] and len(close.group("fence")) >= len(fence) \
                        and not close.group("info").strip():
                    break
                body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
                j += 1
            block = Block(doc, i + 1, info, "\n".join(body) + "\n")
            marker = pending[1] if pending else None
            external = [(k, v) for k, v in READ_ONLY_MARKERS.items() if k[0] == doc and block.first.startswith(k[1])]
            if external:
                marker = (marker + ";" if marker else "") + external[0][1]
            if marker is not None:
                _apply_marker(block, marker)
            blocks.append(block)
            pending = None
            i = j
        elif line.strip() and pending:
            problems.append(f"{doc}:{pending[0]}: a doc-test marker not right before a fence")
            pending = None
        i += 1
    if pending:
        problems.append(f"{doc}:{pending[0]}: a doc-test marker not followed by a fence")
    return blocks, problems + [p for b in blocks for p in b.problems]


# --- what a YAML block is ------------------------------------------------------------------------

def yaml_kind(text: str) -> str | None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return "policy"          # let the policy loader say where and why
    if isinstance(data, list) and data and all(isinstance(d, dict) and "name" in d for d in data):
        return "policy list"
    if not isinstance(data, dict):
        return None
    if "cases" in data:
        return "policy test"
    if "policies" in data or ("name" in data and "kind" in data):
        return "policy"
    if "kind" in data and "when" in data:
        return "policy fragment"
    if "sinks" in data:
        return "sinks"
    if "jobs" in data or "workers" in data:
        return "snapshot"
    return None


# --- running a block ---------------------------------------------------------------------------------

def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_DB"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "80"          # a terminal's width, whatever the one running the tests
    return env


def commands(text: str) -> list[str]:
    out: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    if current:
        out.append(current)
    return out


def shell(command: str, folder: Path) -> tuple[bool, str]:
    """Run one command as a reader would; (as documented?, what it printed)."""
    done = subprocess.run(["bash", "-c", "set -o pipefail\n" + command], cwd=folder, env=environment(),
                          capture_output=True, text=True, timeout=180, check=False)
    allowed = {0, 2} if re.match(r"\s*corral\s+plan\b.*--detailed-exitcode", command) else {0}
    output = done.stdout + done.stderr
    return done.returncode in allowed, f"$ {command}\n(exit {done.returncode})\n{output}"


def run_sh(block: Block, folder: Path) -> list[str]:
    failures = []
    for command in commands(block.text):
        ok, transcript = shell(command, folder)
        if not ok:
            failures.append(transcript)
    return failures


def _squash(line: str) -> str:
    return " ".join(line.split())


def run_console(block: Block, folder: Path) -> list[str]:
    failures = []
    steps: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip() and line.strip() != "...":
            steps[-1][1].append(_squash(line))
    for command, expected in steps:
        ok, transcript = shell(command, folder)
        got = [_squash(line) for line in transcript.splitlines()]
        at = 0
        for want in expected:
            while at < len(got) and got[at] != want:
                at += 1
            if at == len(got):
                failures.append(f"{transcript}\n--- the doc shows this line, missing (or out of order) above:\n{want}")
                break
            at += 1
        else:
            if not ok:
                failures.append(transcript)
    return failures


def run_python(block: Block, folder: Path) -> list[str]:
    script = folder / f"doc_example_{block.line}.py"
    script.write_text(block.text)
    done = subprocess.run([sys.executable, script.name], cwd=folder, env=environment(),
                          capture_output=True, text=True, timeout=180, check=False)
    return [] if done.returncode == 0 else [f"(exit {done.returncode})\n{done.stdout}{done.stderr}"]


def run_yaml(block: Block, folder: Path) -> list[str]:
    from corral.policy.loader import load_texts

    kind = yaml_kind(block.text)
    # Blank lines in front, so that every position reported is the doc's own line.
    padded = "\n" * block.line + block.text
    if kind in ("policy", "policy list", "policy fragment"):
        text = padded
        if kind == "policy list":
            text = "\n" * (block.line - 1) + "policies:\n" + "".join(f"  {line}\n" for line in block.text.splitlines())
        if kind == "policy fragment":
            data = yaml.safe_load(text)
            text += "name: doc-fragment\n" + ("" if "actions" in data else "actions: [notify]\n") \
                + ("" if "reason" in data else "reason: a fragment of a doc\n")
        result = load_texts([(block.doc, text)])
        if result.errors or not result.policies:
            return [f"{kind} ({len(result.policies)} loaded):\n" + "\n".join(map(str, result.errors))]
        return []
    if kind == "policy test":
        from corral.policytest.render import render
        from corral.policytest.runner import run_tests

        path = folder / (block.file or f"doc-example-{block.line}.test.yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(padded)
        run = run_tests([path])
        return [] if run.ok and run.passed else ["\n".join(render(run))]
    if kind == "sinks":
        from corral.sinks.config import load_sinks_text

        sinks = load_sinks_text(padded, block.doc)
        return ["\n".join(map(str, sinks.errors))] if sinks.errors else []
    if kind == "snapshot":
        from corral.snapshot import SnapshotError, parse_snapshot, read_document

        try:
            parse_snapshot(read_document(padded, block.doc), block.doc)
        except SnapshotError as err:
            return [str(err)]
        return []
    return ["a YAML block that is neither a policy, a policy test, a sinks file nor a snapshot: "
            "mark it `<!-- doc-test: skip (why) -->`"]


def run_json_lines(block: Block, folder: Path) -> list[str]:
    from corral import Corral

    with Corral.open(f"sqlite:///{folder / 'events.db'}", init=True) as corral:
        report = corral.ingest(block.text.splitlines())
    return [f"line {bad.line}: {bad.reason}" for bad in report.bad]


RUNNERS: dict[str, Any] = {"sh": run_sh, "console": run_console, "python": run_python, "yaml": run_yaml,
                           "json lines": run_json_lines}


def fresh_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    shutil.copytree(ROOT / "examples", path / "examples")
    return path


def make_store(folder: Path) -> Path:
    """`corral.db` in `folder`: the example farm after one cycle, made as a reader would."""
    fresh_folder(folder)
    for command in ("corral db init", "corral load examples/farm-snapshot.yaml", "corral run --once"):
        ok, transcript = shell(command, folder)
        assert ok, f"(preparing the store that `needs store` blocks need)\n{transcript}"
    return folder / "corral.db"


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made once a worker, copied into each folder that needs it (three commands less each time)."""
    return make_store(tmp_path_factory.mktemp("store-template") / "farm")


def run_blocks(blocks: list[Block], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    folders: dict[str, Path] = {}
    failures: list[str] = []
    for block in blocks:
        key = f"session-{block.session}" if block.session else f"line-{block.line}"
        if key not in folders:
            folders[key] = fresh_folder(tmp_path / key)
        folder = folders[key]
        problems = []
        if block.needs_store and not (folder / "corral.db").exists():
            shutil.copy(request.getfixturevalue("store_template"), folder / "corral.db")
        if block.file:
            target = folder / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
        problems += RUNNERS[block.lang](block, folder)
        failures += [f"--- {block.where} ({block.lang}{', session ' + block.session if block.session else ''}):\n{p}"
                     for p in problems]
    assert not failures, "doc examples that do not work as written:\n" + "\n".join(failures)


# --- the tests ---------------------------------------------------------------------------------------------

PARSED = {path.relative_to(ROOT).as_posix(): parse(path) for path in DOCS}


def _bug(block: Block) -> str | None:
    return next((why for (doc, start), why in KNOWN_BUGS.items() if doc == block.doc and block.first.startswith(start)), None)


def _group(block: Block) -> str:
    return block.session or f"line-{block.line}"


def _cases() -> list[Any]:
    """One case a doc; a known bug takes its block (or its whole session) into an xfail case of its own."""
    cases = []
    for doc, (blocks, _) in PARSED.items():
        runnable = [b for b in blocks if b.runs]
        buggy = {_group(b): why for b in runnable if (why := _bug(b))}
        sound = [b for b in runnable if _group(b) not in buggy]
        if sound:
            cases.append(pytest.param(sound, id=doc))
        for name, why in buggy.items():
            cases.append(pytest.param([b for b in runnable if _group(b) == name], id=f"{doc}::{name}",
                                      marks=pytest.mark.xfail(strict=True, reason=why)))
    return cases


@pytest.mark.parametrize("blocks", _cases())
def test_doc_examples_work_as_written(blocks: list[Block], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run_blocks(blocks, tmp_path, request)


def test_every_marker_is_well_formed_and_every_skip_says_why() -> None:
    problems = [p for _, doc_problems in PARSED.values() for p in doc_problems]
    for (doc, start), marker in READ_ONLY_MARKERS.items():
        matching = [b for b in PARSED[doc][0] if b.first.startswith(start)]
        if len(matching) != 1:
            problems.append(f"READ_ONLY_MARKERS[{doc!r}, {start!r}] ({marker}) matches {len(matching)} blocks, not 1")
    for doc, start in KNOWN_BUGS:
        if not [b for b in PARSED[doc][0] if b.first.startswith(start) and b.runs]:
            problems.append(f"KNOWN_BUGS[{doc!r}, {start!r}] matches no block that runs")
    for blocks, _ in PARSED.values():
        for b in blocks:
            if b.skip is not None and len(b.skip) < 10:
                problems.append(f"{b.where}: skip ({b.skip}): say why it cannot run here")
            if b.runs and b.lang == "yaml" and yaml_kind(b.text) is None:
                problems.append(f"{b.where}: a YAML block that is neither a policy, a policy test, a sinks file "
                                "nor a snapshot: mark it `<!-- doc-test: skip (why) -->`")
            if b.file and not b.session:
                problems.append(f"{b.where}: `file {b.file}` without a session: no later block can use it")
        sessions = [b.session for b in blocks if b.session]
        for name in set(sessions):
            if sessions.count(name) == 1:
                problems.append(f"{blocks[0].doc}: session {name} has one block")
    assert not problems, "\n".join(problems)


def test_the_docs_hold_examples_that_run() -> None:
    """A guard against an extractor that finds nothing, which would pass every doc vacuously."""
    assert CORRAL.is_file(), f"the doc examples run {CORRAL}: install corral into this virtual environment"
    runnable = {doc: [b for b in blocks if b.runs] for doc, (blocks, _) in PARSED.items()}
    assert sum(map(len, runnable.values())) >= 25, {d: len(b) for d, b in runnable.items()}
    first_policy = [b for b in runnable["README.md"] if b.session == "first-policy"]
    assert len(first_policy) >= 5
    assert {b.lang for b in first_policy} >= {"yaml", "sh"}
    for doc in ("docs/testing-policies.md", "docs/api.md", "docs/snapshot.md", "docs/policies.md"):
        assert runnable[doc], doc


def test_a_set_for_a_policy_not_loaded_is_blamed_on_the_command_line(tmp_path: Path) -> None:
    ok, transcript = shell("corral plan --snapshot examples/farm-snapshot.yaml --set kill-runaway-frames.max_run=6h",
                           fresh_folder(tmp_path / "folder"))
    assert not ok and "kill-runaway-frames" in transcript
    assert "policy files" not in transcript and "--set" in transcript and "--rules" in transcript, transcript
