"""What a policy test file says, and what running it found: the records the reader
builds and the runner fills in (the format is in docs/testing-policies.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from corral.farm import Farm
from corral.plan import Transition
from corral.policy.model import Policy
from corral.states import Action, Kind
from corral.yamlpos import Pos

FILE_KEYS = {
    "policies": "the names of the policies under test (only these are evaluated)",
    "rules": "policy files or folders to load them from, relative to this file, or `builtin` for the built-in pack "
             "(`builtin:NAME.yaml` for one of its files); default: this file's folder",
    "set": "parameter overrides, as with --set: {policy: {param: value}}",
    "cases": "the test cases",
}
CASE_KEYS = {
    "name": "what the case shows, in a sentence",
    "farm": "the farm, inline, in the snapshot format (docs/snapshot.md)",
    "snapshot": "or a snapshot file, relative to this file",
    "history": "earlier actions of policies, for cooldowns: [{policy, job: 3, at: TIME}]",
    "at": "the time of the cycle (ISO 8601)",
    "expect": "the plan expected at that time: [{policy, job: 3, action: retry}]",
    "untouched": "entities no policy under test may act on: [job 104, worker render01]",
    "skipped": "matches expected to be held back: [{policy, job: 3, because: cooldown}]",
    "steps": "several points in time, each with at/expect/untouched/skipped (consecutive cycles)",
}
#: What a test file's `rules:` calls the built-in pack, wherever corral is installed.
BUILTIN = "builtin"
STEP_KEYS = ("at", "expect", "untouched", "skipped")
EXPECT_KEYS = ("policy", "action", "to", "reason")
SKIP_CATEGORIES = ("cooldown", "limit", "conflict", "duplicate", "superseded", "illegal")
KINDS = tuple(k.value for k in Kind)


class PolicyTestError(Exception):
    """A problem in a test file, with its place."""

    def __init__(self, pos: Pos, message: str) -> None:
        self.pos, self.message = pos, message
        super().__init__(f"{pos}: {message}")



def parse_ref(text: str) -> tuple[Kind, str] | None:
    """'job 104', 'frame 110:6', 'instance:101.3', 'worker render01' -> (kind, id)."""
    text = str(text).strip()
    for sep in (" ", ":"):
        kind, found, ident = text.partition(sep)
        ident = ident.strip().strip("'\"")
        if found and kind in KINDS and ident:
            return Kind(kind), ident
    return None


def ref_text(kind: Kind | str, ident: str) -> str:
    return f"{kind} {ident}"


@dataclass(frozen=True)
class Expected:
    policy: str
    kind: Kind
    ident: str
    action: Action
    to: str | None
    reason: str | None
    pos: Pos

    def text(self) -> str:
        extra = f" → {self.to}" if self.to else ""
        extra += f' (reason containing "{self.reason}")' if self.reason else ""
        return f"{self.policy}: {self.action} {self.kind} {self.ident}{extra}"


@dataclass(frozen=True)
class ExpectedSkip:
    policy: str
    kind: Kind
    ident: str
    because: str
    pos: Pos


@dataclass(frozen=True)
class Untouched:
    kind: Kind
    ident: str
    pos: Pos


@dataclass
class Step:
    at: datetime
    expect: list[Expected] | None
    untouched: list[Untouched]
    skipped: list[ExpectedSkip]
    pos: Pos


@dataclass
class Case:
    name: str
    pos: Pos
    farm: Farm
    history: dict[tuple[str, str, str], datetime]
    steps: list[Step]


@dataclass
class PolicyTestFile:
    path: Path
    policies: list[Policy]
    cases: list[Case]



@dataclass
class StepResult:
    at: datetime
    missing: list[tuple[Expected, str]] = field(default_factory=list)
    unexpected: list[Transition] = field(default_factory=list)
    matched: list[Transition] = field(default_factory=list)
    touched: list[tuple[Untouched, Transition]] = field(default_factory=list)
    skips_missing: list[tuple[ExpectedSkip, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.touched or self.skips_missing)


@dataclass
class CaseResult:
    file: str
    name: str
    pos: Pos
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(s.ok for s in self.steps)


@dataclass
class FileResult:
    path: str
    errors: list[str] = field(default_factory=list)
    cases: list[CaseResult] = field(default_factory=list)


@dataclass
class RunResult:
    files: list[FileResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(1 for f in self.files for c in f.cases if c.ok)

    @property
    def failed(self) -> int:
        return sum(1 for f in self.files for c in f.cases if not c.ok) + sum(1 for f in self.files if f.errors)

    @property
    def ok(self) -> bool:
        return self.failed == 0
