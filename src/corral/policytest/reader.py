"""Reading a `*.test.yaml` file: every mistake reported with file:line:column, and a
file with any mistake runs no case.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from corral.farm import Farm
from corral.policy.loader import TEST_SUFFIXES, builtin_dir, describe_value, load_paths, parse_duration
from corral.policy.model import Policy
from corral.policytest.model import (
    BUILTIN,
    CASE_KEYS,
    EXPECT_KEYS,
    FILE_KEYS,
    KINDS,
    SKIP_CATEGORIES,
    STEP_KEYS,
    Case,
    Expected,
    ExpectedSkip,
    PolicyTestError,
    PolicyTestFile,
    Step,
    Untouched,
    parse_ref,
)
from corral.snapshot import SnapshotError, load_snapshot_file, parse_snapshot
from corral.states import RULES, Action, Kind
from corral.yamlpos import Pos, PosDict, PosList, YamlError, load_text, read_text

_what = describe_value


def rules_path(ref: str, base: Path) -> Path:
    """Where a test file's `rules:` entry points: `builtin` is the built-in pack (wherever corral
    is installed), `builtin:NAME.yaml` one file of it, anything else a path relative to `base` (the
    test file's folder; write `./builtin` for a folder of that name)."""
    if ref == BUILTIN:
        return builtin_dir()
    if ref.startswith(f"{BUILTIN}:"):
        return builtin_dir() / ref.partition(":")[2]
    return base / ref


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
            data = load_text(read_text(self.path), str(self.path))
        except YamlError as err:
            self.error(err.pos, err.message)
            return None
        except OSError as err:
            self.error(start, f"cannot read the file: {err.strerror or err}")
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
                    self.error(pos, f"each of `rules` is a path or `{BUILTIN}`, not {_what(item)}")
                    continue
                p = rules_path(item, base)
                if not p.exists():
                    if item.startswith(f"{BUILTIN}:"):
                        files = [f.name for f in builtin_dir().glob("*.yaml") if not f.name.endswith(TEST_SUFFIXES)]
                        self.error(pos, f"no policy file '{item.partition(':')[2]}' in the built-in pack"
                                   f"{_suggest(item.partition(':')[2], files)}")
                    else:
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
        if not all(p.exists() for p in rules):  # said above, once: not again as a load error
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
