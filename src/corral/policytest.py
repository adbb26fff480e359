"""Policy tests: YAML files that prove a policy does what its author means.

A test file (`*.test.yaml`, skipped by the policy loader) names the policies under
test, and holds cases.  Each case gives a farm (inline, in the snapshot format, or
`snapshot: path` relative to the test file), an optional `history:` of earlier
actions (for cooldowns), and one or more points in time, each with the plan it
expects (policy, entity, action) and the entities that must not be touched.  Points
in time are consecutive cycles: what one plans (enforce mode) is applied to the farm
and added to the history before the next, exactly as `corral run` would.

Only the policies under test are evaluated, so a case says what *they* do, whatever
else is loaded.  The format is in docs/testing-policies.md.  Every mistake in a test
file is reported with file:line:column; a file with any mistake runs no case.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from corral.cycle import plan_farm
from corral.effects import apply_action
from corral.explain import failing_rows, trace_rows
from corral.facts import FactBuilder
from corral.farm import Farm
from corral.plan import Plan, Transition
from corral.policy.loader import TEST_SUFFIXES, describe_value, load_paths, parse_duration
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.snapshot import SnapshotError, farm_to_snapshot, load_snapshot_file, parse_snapshot
from corral.states import RULES, Action, IllegalAction, Kind
from corral.yamlpos import Pos, PosDict, PosList, YamlError, load_text

FILE_KEYS = {
    "policies": "the names of the policies under test (only these are evaluated)",
    "rules": "policy files or folders to load them from, relative to this file (default: this file's folder)",
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
STEP_KEYS = ("at", "expect", "untouched", "skipped")
EXPECT_KEYS = ("policy", "action", "to", "reason")
SKIP_CATEGORIES = ("cooldown", "limit", "conflict", "duplicate", "illegal")
KINDS = tuple(k.value for k in Kind)


class PolicyTestError(Exception):
    """A problem in a test file, with its place."""

    def __init__(self, pos: Pos, message: str) -> None:
        self.pos, self.message = pos, message
        super().__init__(f"{pos}: {message}")


# --- entity references ----------------------------------------------------------------------


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


# --- results -----------------------------------------------------------------------------


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


# --- reading a test file -------------------------------------------------------------------


_what = describe_value


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class _Reader:
    """Checks one test file, collecting every error with its position."""

    def __init__(self, path: Path, engine: str) -> None:
        self.path, self.engine = path, engine
        self.errors: list[PolicyTestError] = []
        self.under_test: dict[str, Policy] = {}

    def error(self, pos: Pos, message: str) -> None:
        self.errors.append(PolicyTestError(pos, message))

    def read(self) -> PolicyTestFile | None:
        start = Pos(str(self.path), 1, 1)
        try:
            data = load_text(self.path.read_text(encoding="utf-8"), str(self.path))
        except YamlError as err:
            self.error(err.pos, err.message)
            return None
        except (OSError, UnicodeDecodeError) as err:
            self.error(start, f"cannot read the file: {err}")
            return None
        if not isinstance(data, PosDict):
            self.error(getattr(data, "start", start), "a test file is a mapping with `policies:` and `cases:`")
            return None
        for key in data:
            if key not in FILE_KEYS:
                self.error(data.pos_of(key), f"unknown key '{key}'{_suggest(key, FILE_KEYS)} (a test file has: "
                           f"{', '.join(FILE_KEYS)})")
        for key in ("policies", "cases"):
            if key not in data:
                self.error(data.start, f"the test file has no `{key}:` ({FILE_KEYS[key]})")
        self._load_policies(data)
        cases: list[Case] = []
        raw_cases = data.get("cases")
        if "cases" in data:
            if not isinstance(raw_cases, PosList) or not raw_cases:
                self.error(data.value_pos_of("cases"), "`cases` is a non-empty list (each item starts with `- name:`)")
            else:
                seen: dict[str, Pos] = {}
                for i, raw in enumerate(raw_cases):
                    case = self._case(raw, raw_cases.pos_of(i))
                    if case is None:
                        continue
                    if case.name in seen:
                        self.error(case.pos, f"duplicate case name '{case.name}' (also at {seen[case.name]})")
                    seen[case.name] = case.pos
                    cases.append(case)
        if self.errors:
            return None
        return PolicyTestFile(self.path, list(self.under_test.values()), cases)

    # --- policies -----------------------------------------------------------------------
    def _load_policies(self, data: PosDict) -> None:
        base = self.path.parent
        rules: list[Path] = []
        raw_rules = data.get("rules")
        if raw_rules is None:
            rules = [base]
        else:
            items = raw_rules if isinstance(raw_rules, list) else [raw_rules]
            for i, item in enumerate(items):
                pos = raw_rules.pos_of(i) if isinstance(raw_rules, PosList) else data.value_pos_of("rules")
                if not isinstance(item, str):
                    self.error(pos, f"each of `rules` is a path, not {_what(item)}")
                    continue
                p = (base / item)
                if not p.exists():
                    self.error(pos, f"no such policy file or folder: {p}")
                rules.append(p)
        overrides: dict[str, dict[str, Any]] = {}
        raw_set = data.get("set")
        if raw_set is not None:
            if not isinstance(raw_set, dict) or not all(isinstance(v, dict) for v in raw_set.values()):
                self.error(data.value_pos_of("set"), "`set` is a mapping {policy: {param: value}}")
            else:
                overrides = {str(k): dict(v) for k, v in raw_set.items()}
        names_raw = data.get("policies")
        if "policies" not in data:
            return
        names = [names_raw] if isinstance(names_raw, str) else names_raw
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            self.error(data.value_pos_of("policies"), "`policies` is a policy name or a list of names")
            return
        if self.errors and any(e.pos.file != str(self.path) for e in self.errors):
            return
        loaded = load_paths(rules, overrides)
        for err in loaded.errors:
            where = data.value_pos_of("set") if err.pos.file == "--set" else data.value_pos_of("rules") \
                if "rules" in data else data.value_pos_of("policies")
            self.error(where, f"the policies under test do not load: {err}")
        known = {p.name: p for p in loaded.policies}
        for i, name in enumerate(names):
            pos = names_raw.pos_of(i) if isinstance(names_raw, PosList) else data.value_pos_of("policies")
            if name not in known:
                if not loaded.errors:
                    self.error(pos, f"no policy named '{name}' in {', '.join(str(r) for r in rules)}"
                               f"{_suggest(name, known)}")
                continue
            self.under_test[name] = known[name]

    # --- cases -----------------------------------------------------------------------------
    def _case(self, raw: Any, pos: Pos) -> Case | None:
        if not isinstance(raw, PosDict):
            self.error(pos, f"a case is a mapping with `name:`, `farm:` and `at:`; got {_what(raw)}")
            return None
        before = len(self.errors)
        for key in raw:
            if key not in CASE_KEYS:
                self.error(raw.pos_of(key), f"unknown key '{key}'{_suggest(key, CASE_KEYS)} (a case has: "
                           f"{', '.join(CASE_KEYS)})")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            self.error(raw.value_pos_of("name") if "name" in raw else raw.start, "every case needs a `name:` (text)")
            name = "?"
        farm = self._farm(raw)
        history = self._history(raw, farm)
        steps: list[Step] = []
        if "steps" in raw:
            for key in STEP_KEYS:
                if key in raw:
                    self.error(raw.pos_of(key), f"`{key}` goes inside each of `steps`, not next to them")
            raw_steps = raw["steps"]
            if not isinstance(raw_steps, PosList) or not raw_steps:
                self.error(raw.value_pos_of("steps"), "`steps` is a non-empty list of {at, expect, untouched}")
            else:
                for i, item in enumerate(raw_steps):
                    if not isinstance(item, PosDict):
                        self.error(raw_steps.pos_of(i), f"each step is a mapping with `at:`; got {_what(item)}")
                        continue
                    for key in item:
                        if key not in STEP_KEYS:
                            self.error(item.pos_of(key), f"unknown key '{key}' in a step{_suggest(key, STEP_KEYS)} "
                                       f"(a step has: {', '.join(STEP_KEYS)})")
                    step = self._step(item, farm)
                    if step is not None:
                        steps.append(step)
                times = [s.at for s in steps]
                if times != sorted(times):
                    self.error(raw.value_pos_of("steps"), "steps must be in time order (each `at` after the last)")
        else:
            step = self._step(raw, farm)
            if step is not None:
                steps.append(step)
        if len(self.errors) > before or farm is None:
            return None
        return Case(name, raw.start, farm, history, steps)

    def _farm(self, raw: PosDict) -> Farm | None:
        if ("farm" in raw) == ("snapshot" in raw):
            self.error(raw.start, "give the farm inline (`farm:`) or as a file (`snapshot: path`), one of the two")
            return None
        try:
            if "farm" in raw:
                return parse_snapshot(raw["farm"], str(self.path))
            ref = raw["snapshot"]
            if not isinstance(ref, str):
                self.error(raw.value_pos_of("snapshot"), f"`snapshot` is a path, not {_what(ref)}")
                return None
            path = self.path.parent / ref
            if not path.is_file():
                self.error(raw.value_pos_of("snapshot"), f"no such snapshot file: {path}")
                return None
            return load_snapshot_file(path)
        except SnapshotError as err:
            for line in err.errors:
                self.errors.append(PolicyTestError(Pos(str(self.path), 0, 0), line))  # already placed
            return None

    def _time(self, value: Any, pos: Pos) -> datetime | None:
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                parsed = None
            if parsed is not None:
                return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        self.error(pos, f"a time is ISO 8601 such as 2026-11-28T02:00:00Z, not {_what(value)}")
        return None

    def _entity(self, item: PosDict, farm: Farm | None, what: str) -> tuple[Kind, str] | None:
        """The one `job:`/`frame:`/`instance:`/`worker:` key of a mapping."""
        keys = [k for k in item if k in KINDS]
        if len(keys) != 1:
            self.error(item.start, f"{what} names one entity: one of `job:`, `frame:`, `instance:`, `worker:`")
            return None
        kind = Kind(keys[0])
        return self._ident(kind, item[keys[0]], item.value_pos_of(keys[0]), farm)

    def _ident(self, kind: Kind, value: Any, pos: Pos, farm: Farm | None) -> tuple[Kind, str] | None:
        if kind is Kind.FRAME and not isinstance(value, str):
            self.error(pos, "write a frame as JOB:FRAME in quotes, e.g. \"110:6\" (unquoted, YAML reads 110:6 "
                       "as a number)")
            return None
        if kind is Kind.INSTANCE and isinstance(value, float):
            self.error(pos, f"put the instance id in quotes (\"{value}\"): unquoted, YAML reads it as a number")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.error(pos, f"a {kind} id is text or a number, not {_what(value)}")
            return None
        ident = str(value).strip()
        if farm is not None:
            from corral.explain import UnknownEntity, check_entity, normalise_id

            ident = normalise_id(kind, ident)
            try:
                check_entity(farm, kind, ident)
            except UnknownEntity as err:
                self.error(pos, str(err))
                return None
        return kind, ident

    def _policy_name(self, item: PosDict, what: str) -> str | None:
        name = item.get("policy")
        if not isinstance(name, str):
            self.error(item.value_pos_of("policy") if "policy" in item else item.start,
                       f"{what} names its `policy:` (one of the policies under test)")
            return None
        if self.under_test and name not in self.under_test:
            self.error(item.value_pos_of("policy"), f"'{name}' is not a policy under test"
                       f"{_suggest(name, self.under_test)} (under test: {', '.join(self.under_test)})")
            return None
        return name

    def _history(self, raw: PosDict, farm: Farm | None) -> dict[tuple[str, str, str], datetime]:
        out: dict[tuple[str, str, str], datetime] = {}
        items = raw.get("history")
        if items is None:
            return out
        if not isinstance(items, PosList):
            self.error(raw.value_pos_of("history"), "`history` is a list of {policy, job: ID, at: TIME}")
            return out
        first = self._first_time(raw)
        for i, item in enumerate(items):
            if not isinstance(item, PosDict):
                self.error(items.pos_of(i), f"each history entry is {{policy, job: ID, at: TIME}}; got {_what(item)}")
                continue
            for key in item:
                if key not in ("policy", "at", "ago", "action", *KINDS):
                    self.error(item.pos_of(key), f"unknown key '{key}' in a history entry (it has: policy, "
                               "job/frame/instance/worker, at or ago, action)")
            name = self._policy_name(item, "a history entry")
            ref = self._entity(item, farm, "a history entry")
            when: datetime | None = None
            if ("at" in item) == ("ago" in item):
                self.error(item.start, "a history entry has `at: TIME` or `ago: DURATION` (before the case's first time)")
            elif "at" in item:
                when = self._time(item["at"], item.value_pos_of("at"))
            else:
                secs = parse_duration(item["ago"]) if isinstance(item["ago"], str) else None
                if secs is None:
                    self.error(item.value_pos_of("ago"), f"`ago` is a duration such as 90s or 10m, not {_what(item['ago'])}")
                elif first is not None:
                    when = first - timedelta(seconds=secs)
            if name and ref and when:
                out[(name, str(ref[0]), ref[1])] = when
        return out

    def _first_time(self, raw: PosDict) -> datetime | None:
        value = raw.get("at")
        steps = raw.get("steps")
        if value is None and isinstance(steps, list) and steps and isinstance(steps[0], dict):
            value = steps[0].get("at")
        if value is None:
            return None
        errors = len(self.errors)
        got = self._time(value, raw.start)
        del self.errors[errors:]  # reported where the time itself is read
        return got

    def _step(self, raw: PosDict, farm: Farm | None) -> Step | None:
        if "at" not in raw:
            self.error(raw.start, "give the time of the cycle: `at: 2026-11-28T02:00:00Z`")
            return None
        at = self._time(raw["at"], raw.value_pos_of("at"))
        expect = self._expect(raw, farm) if "expect" in raw else None
        untouched = self._untouched(raw, farm)
        skipped = self._skipped(raw, farm)
        if expect is None and not untouched and not skipped:
            self.error(raw.pos_of("at"), "say what to expect at this time: `expect:` (the plan; [] for nothing), "
                       "`untouched:` or `skipped:`")
        return None if at is None else Step(at, expect, untouched, skipped, raw.pos_of("at"))

    def _expect(self, raw: PosDict, farm: Farm | None) -> list[Expected]:
        items = raw["expect"]
        out: list[Expected] = []
        if items is None:
            return out
        if not isinstance(items, PosList):
            self.error(raw.value_pos_of("expect"), "`expect` is a list of {policy, job: ID, action} ([] for nothing)")
            return out
        for i, item in enumerate(items):
            if not isinstance(item, PosDict):
                self.error(items.pos_of(i), f"each expectation is {{policy, job: ID, action}}; got {_what(item)}")
                continue
            for key in item:
                if key not in EXPECT_KEYS and key not in KINDS:
                    self.error(item.pos_of(key), f"unknown key '{key}' in an expectation{_suggest(key, EXPECT_KEYS)} "
                               "(it has: policy, job/frame/instance/worker, action, and optionally to, reason)")
            name = self._policy_name(item, "an expectation")
            ref = self._entity(item, farm, "an expectation")
            action = self._action(item, ref[0] if ref else None)
            to = item.get("to")
            reason = item.get("reason")
            for key, value in (("to", to), ("reason", reason)):
                if value is not None and not isinstance(value, str):
                    self.error(item.value_pos_of(key), f"`{key}` is text, not {_what(value)}")
            if name and ref and action:
                out.append(Expected(name, ref[0], ref[1], action, to, reason, item.start))
        return out

    def _action(self, item: PosDict, kind: Kind | None) -> Action | None:
        name = item.get("action")
        if name not in Action.__members__.values():
            pos = item.value_pos_of("action") if "action" in item else item.start
            self.error(pos, f"`action` is one of {', '.join(a.value for a in Action)}, not {_what(name)}"
                       f"{_suggest(str(name), [a.value for a in Action])}")
            return None
        action = Action(str(name))
        if kind is not None and (kind, action) not in RULES:
            self.error(item.value_pos_of("action"), f"'{action}' is not an action on a {kind}")
            return None
        return action

    def _untouched(self, raw: PosDict, farm: Farm | None) -> list[Untouched]:
        items = raw.get("untouched")
        out: list[Untouched] = []
        if items is None:
            return out
        if not isinstance(items, PosList):
            self.error(raw.value_pos_of("untouched"), "`untouched` is a list such as [job 104, worker render01]")
            return out
        for i, item in enumerate(items):
            pos = items.pos_of(i)
            ref: tuple[Kind, str] | None
            if isinstance(item, PosDict):
                ref = self._entity(item, farm, "an untouched entity")
            elif isinstance(item, str) and (parsed := parse_ref(item)) is not None:
                ref = self._ident(parsed[0], parsed[1], pos, farm)
            else:
                self.error(pos, f"name an entity as 'job 104', 'frame \"110:6\"', 'instance 101.3' or 'worker render01', "
                           f"not {_what(item)}")
                continue
            if ref:
                out.append(Untouched(ref[0], ref[1], pos))
        return out

    def _skipped(self, raw: PosDict, farm: Farm | None) -> list[ExpectedSkip]:
        items = raw.get("skipped")
        out: list[ExpectedSkip] = []
        if items is None:
            return out
        if not isinstance(items, PosList):
            self.error(raw.value_pos_of("skipped"), "`skipped` is a list of {policy, job: ID, because: cooldown}")
            return out
        for i, item in enumerate(items):
            if not isinstance(item, PosDict):
                self.error(items.pos_of(i), f"each skipped entry is {{policy, job: ID, because}}; got {_what(item)}")
                continue
            name = self._policy_name(item, "a skipped entry")
            ref = self._entity(item, farm, "a skipped entry")
            because = item.get("because")
            if because not in SKIP_CATEGORIES:
                pos = item.value_pos_of("because") if "because" in item else item.start
                self.error(pos, f"`because` is one of {', '.join(SKIP_CATEGORIES)}, not {_what(because)}"
                           f"{_suggest(str(because), SKIP_CATEGORIES)}")
                continue
            if name and ref:
                out.append(ExpectedSkip(name, ref[0], ref[1], str(because), item.start))
        return out


def read_test_file(path: Path, engine: str = "durable") -> tuple[PolicyTestFile | None, list[PolicyTestError]]:
    reader = _Reader(path, engine)
    test = reader.read()
    return test, sorted(reader.errors, key=lambda e: (e.pos.file != str(path), e.pos.line, e.pos.column))


# --- running ------------------------------------------------------------------------------


def find_test_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Expand folders to their test files (recursively), in name order."""
    out: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(TEST_SUFFIXES)))
        elif p.is_file():
            out.append(p)
        else:
            missing.append(f"{p}:1:1: no such file or folder")
    return out, missing


def run_step(farm: Farm, policies: Sequence[Policy], step: Step, history: dict[tuple[str, str, str], datetime],
             engine: str = "durable") -> tuple[StepResult, Plan]:
    plan, _ = plan_farm(farm, PolicySet(policies), now=step.at, engine=engine, last_actions=history)
    result = StepResult(step.at)
    actual = list(plan.transitions)
    if step.expect is not None:
        remaining = list(actual)
        for exp in step.expect:
            hit = next((t for t in remaining if _fits(exp, t)), None)
            if hit is None:
                result.missing.append((exp, _why_not(exp, plan, farm, policies, step.at)))
            else:
                remaining.remove(hit)
                result.matched.append(hit)
        result.unexpected = remaining
    for u in step.untouched:
        for t in actual:
            if t.kind is u.kind and t.ident == u.ident:
                result.touched.append((u, t))
    held_back = plan.skipped  # made anew on each access (Plan.held): once
    for s in step.skipped:
        found = [x for x in held_back if x.policy == s.policy and x.kind is s.kind and x.ident == s.ident]
        if not any(x.category == s.because for x in found):
            got = "; ".join(f"{x.category}: {x.why}" for x in found)
            acted = [t for t in actual if t.policy == s.policy and t.kind is s.kind and t.ident == s.ident]
            why = f"skipped for another reason ({got})" if found else \
                f"it acted: {acted[0].action} ({acted[0].from_state} → {acted[0].to_state})" if acted else \
                "it was not skipped: the policy did not match"
            result.skips_missing.append((s, why))
    return result, plan


def _fits(exp: Expected, t: Transition) -> bool:
    return (
        t.policy == exp.policy and t.kind is exp.kind and t.ident == exp.ident and t.action is exp.action
        and (exp.to is None or t.to_state == exp.to) and (exp.reason is None or exp.reason in t.reason)
    )


def _why_not(exp: Expected, plan: Plan, farm: Farm, policies: Sequence[Policy], now: datetime) -> str:
    """Why an expected transition is not in the plan: skipped, different, or not matched (and which conditions)."""
    same = [t for t in plan.transitions if t.policy == exp.policy and t.kind is exp.kind and t.ident == exp.ident]
    if same:
        t = same[0]
        return f"planned differently: {t.action} ({t.from_state} → {t.to_state}): {t.reason}"
    for s in plan.skipped:
        if s.policy == exp.policy and s.kind is exp.kind and s.ident == exp.ident:
            return f"matched but skipped ({s.category}): {s.why}"
    policy = next(p for p in policies if p.name == exp.policy)
    if policy.kind is not exp.kind:
        return f"{policy.name} matches {policy.kind}s, not {exp.kind}s"
    fact = FactBuilder(farm, now).fact(exp.kind, exp.ident)
    failing = failing_rows(trace_rows(policy.when, fact, exp.kind))
    if not failing:
        return "not planned"
    parts = [f"{r.label} (actual {r.actual}{', under not' if r.negated else ''}"
             f"{', ' + r.holds_in if r.holds_in else ''}) at {r.where}" for r in failing]
    return "did not match: " + "; ".join(parts)


def _advance(farm: Farm, plan: Plan, history: dict[tuple[str, str, str], datetime], now: datetime) -> None:
    """Apply the enforced transitions (as the next cycle will find them) and remember them."""
    for t in plan.enforced:
        try:
            apply_action(farm, t.kind, t.ident, t.action, now=now, params=dict(t.params), automatic=True, actor=t.policy)
        except (IllegalAction, KeyError):
            continue
        history[(t.policy, str(t.kind), t.ident)] = now


def run_case(test: PolicyTestFile, case: Case, engine: str = "durable") -> CaseResult:
    result = CaseResult(str(test.path), case.name, case.pos)
    history = dict(case.history)
    farm = case.farm
    try:
        for step in case.steps:
            step_result, plan = run_step(farm, test.policies, step, history, engine)
            result.steps.append(step_result)
            _advance(farm, plan, history, step.at)
    except Exception as err:  # a bug or an engine failure must show as a failed case, not abort the run
        result.error = f"{type(err).__name__}: {err}"
    return result


def run_tests(paths: Sequence[str | Path], engine: str = "durable") -> RunResult:
    files, missing = find_test_files(paths)
    run = RunResult()
    if missing:
        run.files.append(FileResult("(arguments)", missing))
    for path in files:
        test, errors = read_test_file(path, engine)
        fr = FileResult(str(path), [str(e) if e.pos.line else e.message for e in errors])
        if test is not None:
            fr.cases = [run_case(test, case, engine) for case in test.cases]
        run.files.append(fr)
    return run


# --- output ----------------------------------------------------------------------------------


def _t(t: Transition) -> str:
    return f"{t.policy}: {t.action} {t.kind} {t.ident} ({t.from_state} → {t.to_state})"


def render(run: RunResult, *, verbose: bool = False) -> list[str]:
    """Test-runner output: a line per case, a diff per failure, and `N passed, N failed` last."""
    lines: list[str] = []
    for f in run.files:
        for err in f.errors:
            lines.append(f"ERROR {err}")
        if f.errors:
            lines.append(f"ERROR {f.path}: {len(f.errors)} error(s) in the test file; none of its cases ran")
        for c in f.cases:
            mark = "PASS" if c.ok else "FAIL"
            lines.append(f"{mark}  {c.pos.file}:{c.pos.line}: {c.name}")
            if c.error:
                lines.append(f"      error while running: {c.error}")
            if c.ok and not verbose:
                continue
            for s in c.steps:
                if s.ok and not verbose:
                    continue
                lines.extend(_diff(s, len(c.steps) > 1))
    lines.append(f"{run.passed} passed, {run.failed} failed")
    return lines


def _diff(s: StepResult, several: bool) -> list[str]:
    at = s.at.isoformat().replace("+00:00", "Z")
    out = [f"      at {at}:" if several or not s.ok else f"      at {at}: ok"]
    if s.missing or s.unexpected:
        out.append("        --- expected")
        out.append("        +++ planned")
        for t in s.matched:
            out.append(f"          {_t(t)}")
        for exp, why in s.missing:
            out.append(f"        - {exp.text()}")
            out.append(f"            ({exp.pos}) {why}")
        for t in s.unexpected:
            out.append(f"        + {_t(t)}: {t.reason}")
    for u, t in s.touched:
        out.append(f"        ! {ref_text(u.kind, u.ident)} must not be touched ({u.pos}), but {_t(t)}: {t.reason}")
    for sk, why in s.skips_missing:
        out.append(f"        ? {sk.policy} should skip {ref_text(sk.kind, sk.ident)} because of {sk.because} "
                   f"({sk.pos}), but {why}")
    return out


def result_json(run: RunResult) -> dict[str, Any]:
    def step(s: StepResult) -> dict[str, Any]:
        return {
            "at": s.at.isoformat(), "ok": s.ok,
            "missing": [{"expected": e.text(), "where": str(e.pos), "why": w} for e, w in s.missing],
            "unexpected": [t.to_json() for t in s.unexpected],
            "touched": [{"entity": ref_text(u.kind, u.ident), "where": str(u.pos), "by": t.to_json()} for u, t in s.touched],
            "skips_missing": [{"policy": k.policy, "entity": ref_text(k.kind, k.ident), "because": k.because,
                               "why": w} for k, w in s.skips_missing],
        }

    return {
        "passed": run.passed, "failed": run.failed,
        "files": [{"path": f.path, "errors": f.errors,
                   "cases": [{"name": c.name, "where": f"{c.pos.file}:{c.pos.line}", "ok": c.ok, "error": c.error,
                              "steps": [step(s) for s in c.steps]} for c in f.cases]} for f in run.files],
    }


# --- corral test --init ---------------------------------------------------------------------


def init_test(
    policy: Policy,
    farm: Farm,
    *,
    now: datetime,
    history: Mapping[tuple[str, str, str], datetime] | None = None,
    rules: str | None = None,
    untouched_count: int = 3,
    engine: str = "durable",
) -> str:
    """A starter test file: the farm trimmed to what the policy touches plus a few
    untouched entities, and the current plan as the expectations."""
    history = {k: v for k, v in (history or {}).items() if k[0] == policy.name}
    full, _ = plan_farm(farm, PolicySet([policy]), now=now, engine=engine, last_actions=dict(history))
    acted = {(t.kind, t.ident) for t in full.transitions}
    candidates = [e for e in _entities(farm, policy.kind) if e not in acted]
    skipped = {(s.kind, s.ident) for s in full.skipped}
    candidates.sort(key=lambda e: (e not in skipped, _idkey(e[1])))  # held-back ones first: the interesting ones
    untouched = candidates[:untouched_count]
    keep_jobs: set[int] = set()
    keep_workers: set[str] = set()
    for kind, ident in [*acted, *untouched, *skipped]:
        _keep(farm, kind, ident, keep_jobs, keep_workers)
    trimmed = _trim(farm, keep_jobs, keep_workers)
    kept_history = {k: v for k, v in history.items() if _exists(trimmed, Kind(k[1]), k[2])}
    plan, _ = plan_farm(trimmed, PolicySet([policy]), now=now, engine=engine, last_actions=dict(kept_history))
    still_untouched = [e for e in untouched if not any(t.kind is e[0] and t.ident == e[1] for t in plan.transitions)]
    return _write_test(policy, trimmed, plan, still_untouched, kept_history, now, rules,
                       changed=_acts(plan) != _acts(full))


def _acts(plan: Plan) -> set[tuple[str, str, str, str]]:
    return {(t.policy, str(t.kind), t.ident, str(t.action)) for t in plan.transitions}


def _idkey(ident: str) -> tuple[Any, ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in ident.replace(".", ":").split(":"))


def _entities(farm: Farm, kind: Kind) -> list[tuple[Kind, str]]:
    if kind is Kind.JOB:
        return [(kind, str(j)) for j in farm.jobs]
    if kind is Kind.FRAME:
        return [(kind, f.key) for j in farm.jobs.values() for f in j.frames.values()]
    if kind is Kind.INSTANCE:
        return [(kind, i) for i in farm.instances]
    return [(kind, w) for w in farm.workers]


def _exists(farm: Farm, kind: Kind, ident: str) -> bool:
    try:
        farm.entity(kind, ident)
    except KeyError:
        return False
    return True


def _keep(farm: Farm, kind: Kind, ident: str, jobs: set[int], workers: set[str]) -> None:
    """What must stay in the trimmed farm for this entity's facts to stay the same."""
    if kind is Kind.WORKER:
        workers.add(ident)
        for job in farm.jobs.values():  # its failure counts come from every job it ran
            hosts = {i.host for i in job.instances.values()}
            hosts |= {f.host for f in job.frames.values() if f.host}
            hosts |= {r.host for f in job.frames.values() for r in f.runs if r.host}
            if ident in hosts:
                jobs.add(job.id)
        return
    owner = farm.job_of(kind, ident)
    if owner is None:
        raise KeyError(f"no {kind} '{ident}' in the farm")
    jobs.add(owner)


def _trim(farm: Farm, jobs: set[int], workers: set[str]) -> Farm:
    """The kept jobs plus what they depend on (a snapshot must name every dependency) and their hosts."""
    todo = list(jobs)
    keep: set[int] = set()
    while todo:
        job_id = todo.pop()
        if job_id in keep or job_id not in farm.jobs:
            continue
        keep.add(job_id)
        job = farm.jobs[job_id]
        todo.extend(job.depends_on)
        todo.extend(j for f in job.frames.values() for j, _ in f.depends_on)
    data = farm_to_snapshot(farm)
    data["jobs"] = [j for j in data["jobs"] if j["id"] in keep]
    hosts = set(workers)
    for job_id in keep:
        job = farm.jobs[job_id]
        hosts |= {i.host for i in job.instances.values()}
        hosts |= {f.host for f in job.frames.values() if f.host}
        hosts |= {r.host for f in job.frames.values() for r in f.runs if r.host}
    data["workers"] = [w for w in data["workers"] if w["name"] in hosts]
    return parse_snapshot(data, "<trimmed>")


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _entity_key(kind: Kind, ident: str) -> Any:
    return int(ident) if kind is Kind.JOB else ident


def _write_test(policy: Policy, farm: Farm, plan: Plan, untouched: list[tuple[Kind, str]],
                history: Mapping[tuple[str, str, str], datetime], now: datetime, rules: str | None, changed: bool) -> str:
    import yaml

    case: dict[str, Any] = {"name": f"{policy.name} on the farm as of {_stamp(now)}"}
    if history:
        case["history"] = [{"policy": p, k: _entity_key(Kind(k), i), "at": _stamp(at)} for (p, k, i), at in history.items()]
    case["at"] = _stamp(now)
    case["expect"] = [{"policy": t.policy, str(t.kind): _entity_key(t.kind, t.ident), "action": str(t.action),
                       "to": t.to_state} for t in plan.transitions]
    if untouched:
        case["untouched"] = [f"{k} {i}" for k, i in untouched]
    case["farm"] = farm_to_snapshot(farm)
    doc: dict[str, Any] = {"policies": [policy.name]}
    if rules:
        doc["rules"] = rules
    doc["cases"] = [case]
    header = [
        f"# Starter test for {policy.name}, written by `corral test --init` at {_stamp(now)}.",
        "# The expectations are what the policy plans today: read them, and keep only what you mean.",
        "# Add cases for what it must NOT do (untouched:), and more points in time (steps:).",
    ]
    if changed:
        header.append("# NOTE: trimming the farm changed the plan (limits such as max_percent count the whole farm);")
        header.append("# the expectations below are those of the trimmed farm.")
    if not plan.transitions:
        header.append("# The policy plans nothing on this farm today: expect: [] below.")
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120, default_flow_style=None)
    return "\n".join(header) + "\n" + body

