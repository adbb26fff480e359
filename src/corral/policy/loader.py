"""Reading policy files: YAML in, `Policy` objects or precise errors out.

Validation happens in layers, like Cloud Custodian's: the YAML itself, then the
structure of each policy (known keys, types), then meaning (fields that exist for
the kind, operators that apply to the field's type, states that exist, actions that
are legal for the kind, parameters that are defined).  Every error carries
`file:line:column`, every unknown name gets a "did you mean", and all errors of all
files are collected before anything is reported, so a wrangler fixes a file in one
pass.  A file with any error contributes no policy at all: half a file is never run.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from corral.actions import action_def
from corral.facts import FIELDS, FieldSpec
from corral.facts.vocabulary import deprecated
from corral.failures import DECLARABLE, DEFAULT_CLASSES, SIGNALS, FailureClass, FailureClasses
from corral.policy.model import ActionSpec, All, AnyOf, Cmp, Cond, Limits, Not, Policy, pinned_states
from corral.policy.operators import OPERATORS, BadPattern, compiled_regex, resolve
from corral.states import RULES, Action, Kind, actions_for, legal_from
from corral.yamlpos import Pos, PosDict, PosList, YamlError, load_text, read_text

POLICY_KEYS: dict[str, str] = {
    "name": "unique name of the policy (letters, digits, - and _), used in plans and the history",
    "description": "what the policy is for, in a sentence or two",
    "kind": "the entity it matches and acts on: job, frame, instance or worker",
    "when": "the conditions an entity must meet (see Conditions)",
    "actions": "what to do to each matching entity, in order",
    "reason": "the sentence logged with each change; {field} cites a fact field, {param} a parameter",
    "priority": "0-1000, default 50; when two policies act on one entity, the higher priority wins",
    "enabled": "false switches the policy off without deleting it (default true)",
    "mode": "enforce (default) applies the actions; audit only reports what it would do",
    "params": "named values ($name in conditions, {name} in the reason) a wrangler can override",
    "limits": "brakes: max_actions, max_percent and cooldown",
    "schedule": "when the daemon evaluates it: 'every 5m', or a cron expression '0 20 * * *'; default every cycle",
}
LIMIT_KEYS: dict[str, str] = {
    "max_actions": "at most this many entities per cycle; more matches and the policy acts on none that cycle",
    "max_percent": (
        "at most this percentage of all entities of its kind (one is always allowed); more and it acts on none that cycle"
    ),
    "cooldown": "after acting on an entity, leave that entity alone for this long (e.g. 30m)",
}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(w|d|h|m|s)\s*)+$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)")
EVERY_RE = re.compile(r"^every\s+(.+)$")
#: A reason's `{field}`, or `{field|noun}` / `{field|noun|nouns}`: the count and the noun
#: agreeing with it ("1 other host", "3 other hosts").
TEMPLATE_RE = re.compile(r"\{([^{}|]*)(?:\|([^{}]*))?\}")
UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
COMBINATORS = ("all", "any", "not")
TEST_SUFFIXES = (".test.yaml", ".test.yml")
#: A policy folder's sinks file (`corral.sinks.config`) is not a policy file.
SINKS_FILES = ("sinks.yaml", "sinks.yml")


@dataclass(frozen=True)
class PolicyError:
    """One problem, where it is and what to do about it."""

    pos: Pos
    message: str

    def __str__(self) -> str:
        return f"{self.pos}: {self.message}"


@dataclass
class LoadResult:
    """Good policies and every error; `bad_files` contributed no policies."""

    policies: list[Policy] = field(default_factory=list)
    errors: list[PolicyError] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)
    #: What loads but should be changed (a deprecated field): `corral check` prints them.
    warnings: list[PolicyError] = field(default_factory=list)
    #: The failure classes: the defaults, with those the good files declare in their place.
    classes: FailureClasses = DEFAULT_CLASSES

    @property
    def ok(self) -> bool:
        return not self.errors


#: The longest duration a policy may name (a cooldown, a threshold, a schedule's `every`):
#: a year.  Longer is nearly always a typo, and past about two thousand years a duration
#: cannot even be taken from today's date (an OverflowError in every cycle).
MAX_DURATION = 366 * 86400.0
#: The largest number a comparison may use, either sign: what both a 64-bit integer and
#: the rule engine's JSON numbers hold exactly.
MAX_NUMBER = 2**53


def duration_problem(seconds: float) -> str | None:
    """What is wrong with a duration of `seconds`, in words (None: nothing)."""
    if math.isnan(seconds) or seconds < 0:
        return "a duration is 0 or more"
    if seconds > MAX_DURATION:  # infinity too
        return f"a duration is at most {format_duration(MAX_DURATION)} (a year)"
    return None


def number_problem(value: float) -> str | None:
    """What is wrong with a number a condition compares with (None: nothing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "a number must be finite"
    if abs(value) > MAX_NUMBER:
        return f"a number is between -{MAX_NUMBER} and {MAX_NUMBER}"
    return None


def _as_float(value: int | float) -> float:
    """A number as seconds; an integer too large for a float is infinitely long."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def parse_duration(text: str) -> float | None:
    """'90s', '10m', '1h30m', '2d', '2w' -> seconds; None when it is not a duration (the one
    syntax of every duration: policies, the sinks file, `--since`)."""
    if not isinstance(text, str) or not DURATION_RE.match(text):
        return None
    return sum(float(n) * UNITS[u] for n, u in DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """Seconds as a wrangler writes them: 5400 -> '1h30m'."""
    seconds = round(seconds)
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            out.append(f"{count}{unit}")
    return "".join(out)


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def builtin_dir() -> Path:
    """The built-in policy pack shipped with corral (`rules/` in the source tree)."""
    return Path(str(resources.files("corral") / "rules"))


def policy_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[PolicyError]]:
    """Expand folders to their *.yaml/*.yml files (test files and the sinks file excluded), in name order."""
    out: list[Path] = []
    errors: list[PolicyError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir()
                if p.suffix in (".yaml", ".yml") and not p.name.endswith(TEST_SUFFIXES) and p.name not in SINKS_FILES
                and p.is_file()
            )
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            errors.append(PolicyError(Pos(str(path), 1, 1), "no such file or folder"))
    return out, errors


def load_paths(
    paths: Sequence[str | Path],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> LoadResult:
    """Load every policy file under `paths`; see the module docstring for the rules."""
    files, errors = policy_files(paths)
    result = LoadResult(errors=list(errors), files=[str(f) for f in files])
    texts: list[tuple[str, str]] = []
    for path in files:
        try:
            texts.append((str(path), read_text(path)))
        except YamlError as err:  # a byte that is not UTF-8, at its line and column
            result.errors.append(PolicyError(err.pos, err.message))
            result.bad_files.append(str(path))
        except OSError as err:
            result.errors.append(PolicyError(Pos(str(path), 1, 1), f"cannot read the file: {err.strerror or err}"))
            result.bad_files.append(str(path))
    return load_texts(texts, overrides, result)


def load_texts(
    texts: Sequence[tuple[str, str]],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    result: LoadResult | None = None,
) -> LoadResult:
    """Load policies from (filename, text) pairs; the core of `load_paths`."""
    result = result or LoadResult(files=[name for name, _ in texts])
    seen: dict[str, Pos] = {}
    declared: dict[str, Pos] = {}  # failure classes declared so far, by name
    owner: dict[int, tuple[str, Pos]] = {}  # and the class each exit code was put in
    good_classes: list[FailureClass] = []
    overrides = dict(overrides or {})
    used_overrides: set[str] = set()
    for filename, text in texts:
        file_errors: list[PolicyError] = []
        file_warnings: list[PolicyError] = []
        file_policies: list[Policy] = []
        try:
            data = load_text(text, filename)
        except YamlError as err:
            file_errors.append(PolicyError(err.pos, err.message))
            data = None
        file_classes = (_failure_classes(data[FAILURE_CLASSES_KEY], data.value_pos_of(FAILURE_CLASSES_KEY),
                                         file_errors, declared, owner)
                        if isinstance(data, PosDict) and FAILURE_CLASSES_KEY in data else [])
        if data is not None or not file_errors:
            for raw in _policy_items(data, filename, file_errors):
                # Duplicates are found by name whether or not the policy has other errors,
                # so fixing the errors listed never reveals a new one.
                raw_name = raw.get("name")
                name = raw_name if isinstance(raw_name, str) else None
                duplicate = name is not None and name in seen
                if name is not None and duplicate:
                    file_errors.append(PolicyError(
                        raw.pos_of("name"),
                        f"duplicate policy name '{name}': it is also defined at {seen[name]}; "
                        "names must be unique across all loaded files",
                    ))
                elif name is not None:
                    seen[name] = raw.start
                policy = _Checker(raw, file_errors, overrides, file_warnings).policy()
                if policy is None or duplicate:
                    continue
                used_overrides.add(policy.name)
                file_policies.append(policy)
        if file_errors:
            file_errors.sort(key=lambda e: (e.pos.line, e.pos.column))
            result.errors.extend(file_errors)
            result.bad_files.append(filename)
        else:
            result.policies.extend(file_policies)
            result.warnings.extend(sorted(file_warnings, key=lambda w: (w.pos.line, w.pos.column)))
            good_classes.extend(file_classes)
    if good_classes:
        result.classes = DEFAULT_CLASSES.overridden(good_classes)
    for name in sorted(set(overrides) - used_overrides - set(seen)):
        result.errors.append(PolicyError(
            Pos("--set", 1, 1), f"no loaded policy is named '{name}'{suggest(name, seen)}"
        ))
    return result


FAILURE_CLASSES_KEY = "failure_classes"
_CLASS_KEYS = {"exit_codes": "exit codes (whole numbers) in this class", "signals": "signals by name, e.g. SIGKILL"}


def _failure_classes(raw: Any, pos: Pos, errors: list[PolicyError], declared: dict[str, Pos],
                     owner: dict[int, tuple[str, Pos]]) -> list[FailureClass]:
    """A file's `failure_classes:` table, checked: known class names (each declared once
    across all files), known signals, whole exit codes, and no code in two classes."""
    if not isinstance(raw, PosDict) or not raw:
        errors.append(PolicyError(pos, "`failure_classes` is a mapping of class name to {exit_codes: [...], signals: "
                                       f"[...]}}; the classes are {', '.join(DECLARABLE)}"))
        return []
    out: list[FailureClass] = []
    for name in raw:
        npos, body = raw.pos_of(name), raw[name]
        if name not in DECLARABLE:
            why = " (`error` is every exit code no class takes)" if name == "error" else ""
            errors.append(PolicyError(npos, f"unknown failure class '{name}'{suggest(str(name), DECLARABLE)}{why}; "
                                            f"the classes are {', '.join(DECLARABLE)}"))
            continue
        if name in declared:
            errors.append(PolicyError(npos, f"failure class '{name}' is also declared at {declared[name]}; "
                                            "declare each class once across all loaded files"))
            continue
        declared[name] = npos
        if not isinstance(body, PosDict):
            errors.append(PolicyError(raw.value_pos_of(name), f"'{name}' takes a mapping such as "
                                                              "{exit_codes: [3, 4], signals: [SIGKILL]}"))
            continue
        codes: set[int] = set()
        sigs: set[str] = set()
        for key in body:
            kpos, value = body.pos_of(key), body[key]
            if key not in _CLASS_KEYS:
                errors.append(PolicyError(kpos, f"unknown key '{key}'{suggest(str(key), list(_CLASS_KEYS))} "
                                                "(a failure class has exit_codes and signals)"))
                continue
            items = value if isinstance(value, PosList) else None
            if items is None:
                errors.append(PolicyError(body.value_pos_of(key), f"`{key}` is a list of {_CLASS_KEYS[key]}"))
                continue
            for i, item in enumerate(items):
                ipos = items.pos_of(i)
                if key == "exit_codes":
                    if isinstance(item, bool) or not isinstance(item, int) or item == 0:
                        errors.append(PolicyError(ipos, f"an exit code is a whole number other than 0, not "
                                                        f"{_what(item)}"))
                        continue
                    new = {item}
                else:
                    if not isinstance(item, str) or item.upper() not in SIGNALS:
                        shown = f"'{item}'" if isinstance(item, str) else _what(item)
                        errors.append(PolicyError(ipos, f"unknown signal {shown}"
                                                        f"{suggest(str(item).upper(), list(SIGNALS))} "
                                                        "(write its name, e.g. SIGKILL)"))
                        continue
                    number = SIGNALS[item.upper()]
                    new = {-number, 128 + number}
                    sigs.add(item.upper())
                for code in sorted(new):
                    if code in owner and owner[code][0] != name:
                        other, at = owner[code]
                        errors.append(PolicyError(ipos, f"exit code {code} is already in class '{other}' ({at}); "
                                                        "a code belongs to one class"))
                    owner.setdefault(code, (name, ipos))
                if key == "exit_codes":
                    codes |= new
        out.append(FailureClass(str(name), frozenset(codes), frozenset(sigs), str(npos)))
    return out


def template_names(text: str) -> list[str]:
    """The fields and parameters a reason cites."""
    return [m.group(1) for m in TEMPLATE_RE.finditer(text)]


def noun_for(count: object, forms: str) -> str:
    """`forms` ("host", or "child|children") agreeing with `count`: English plurals of the
    nouns reasons count (host, frame, attempt, dependency), irregular ones written out."""
    singular, _, plural = forms.partition("|")
    if count == 1:
        return singular
    if plural:
        return plural
    if singular.endswith("y") and singular[-2:-1] not in tuple("aeiou"):
        return singular[:-1] + "ies"
    if singular.endswith(("s", "x", "ch", "sh")):
        return singular + "es"
    return singular + "s"


def _policy_items(data: Any, filename: str, errors: list[PolicyError]) -> list[PosDict]:
    """A file is `policies: [...]` or a single policy mapping."""
    start = Pos(filename, 1, 1)
    if data is None:
        errors.append(PolicyError(start, "the file is empty; write `policies:` followed by a list of policies"))
        return []
    if not isinstance(data, PosDict):
        errors.append(PolicyError(
            getattr(data, "start", start),
            "a policy file is a mapping: `policies:` with a list of policies, or one policy with `name:`",
        ))
        return []
    if "policies" not in data:
        if "name" in data:
            return [data]
        if FAILURE_CLASSES_KEY in data:  # a file of failure classes alone
            for key in data:
                if key != FAILURE_CLASSES_KEY:
                    errors.append(PolicyError(data.pos_of(key), f"unknown top-level key '{key}'"
                                              f"{suggest(key, ['policies', FAILURE_CLASSES_KEY])}; a policy file holds "
                                              f"`policies:` and `{FAILURE_CLASSES_KEY}:`"))
            return []
        for key in data:
            errors.append(PolicyError(
                data.pos_of(key), f"unknown top-level key '{key}'{suggest(key, ['policies'])}; "
                "a policy file holds `policies:` (a list), or a single policy starting with `name:`",
            ))
        return []
    for key in data:
        if key not in ("policies", FAILURE_CLASSES_KEY):
            errors.append(PolicyError(
                data.pos_of(key), f"unknown top-level key '{key}'{suggest(key, ['policies', FAILURE_CLASSES_KEY])}; "
                f"only `policies:` and `{FAILURE_CLASSES_KEY}:` go here"
            ))
    items = data["policies"]
    if not isinstance(items, PosList):
        errors.append(PolicyError(data.value_pos_of("policies"), "`policies` must be a list (each item starts with `- name:`)"))
        return []
    out = []
    for i, item in enumerate(items):
        if isinstance(item, PosDict):
            out.append(item)
        else:
            errors.append(PolicyError(items.pos_of(i), f"each policy is a mapping with `name:`, `kind:`...; got {_what(item)}"))
    return out


def describe_value(value: Any) -> str:
    """A value as an error message names it: 'the text \'x\'', 'a list', 'nothing'."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int) and abs(value) >= 10**30:
        digits = len(str(abs(value)))
        return f"the number {str(value)[:12]}... ({digits} digits)"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text '{value}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_what = describe_value


class _Checker:
    """Checks one policy mapping and builds the Policy; errors go to the shared list."""

    def __init__(self, raw: PosDict, errors: list[PolicyError], overrides: Mapping[str, Mapping[str, Any]],
                 warnings: list[PolicyError] | None = None) -> None:
        self.raw, self.errors, self.overrides = raw, errors, overrides
        self.warnings = warnings if warnings is not None else []
        self.failed = False
        self.kind: Kind | None = None
        self.params: dict[str, Any] = {}

    def error(self, pos: Pos, message: str) -> None:
        self.failed = True
        self.errors.append(PolicyError(pos, message))

    def _deprecation(self, pos: Pos, path: str) -> None:
        instead = deprecated(path)
        if instead is not None:
            self.warnings.append(PolicyError(pos, f"'{path}' is deprecated and will be removed in the next release; "
                                                  f"use {instead}"))

    # --- the policy mapping -----------------------------------------------------------
    def policy(self) -> Policy | None:
        raw = self.raw
        for key in raw:
            if key not in POLICY_KEYS:
                self.error(raw.pos_of(key), f"unknown key '{key}'{suggest(key, POLICY_KEYS)} "
                           f"(a policy has: {', '.join(POLICY_KEYS)})")
        for key in ("name", "kind", "when", "actions", "reason"):
            if key not in raw:
                self.error(raw.start, f"the policy has no `{key}:` ({POLICY_KEYS[key]})")
        name = self._text("name", "")
        if name and not NAME_RE.match(name):
            self.error(raw.value_pos_of("name"), f"the name '{name}' may hold only letters, digits, '-', '_' and '.'")
        if "kind" in raw:
            kind = raw["kind"]
            if kind in Kind.__members__.values():
                self.kind = Kind(kind)
            else:
                self.error(raw.value_pos_of("kind"), f"unknown kind '{kind}'{suggest(str(kind), [k.value for k in Kind])}"
                           f"; kind is one of: {', '.join(k.value for k in Kind)}")
        self._params(name)
        description = self._text("description", "")
        priority = self._int("priority", 50, 0, 1000)
        enabled = self._bool("enabled", True)
        mode = self._text("mode", "enforce")
        if mode not in ("enforce", "audit"):
            hint = suggest(mode, ["enforce", "audit"])
            self.error(raw.value_pos_of("mode"), f"mode must be enforce or audit, not '{mode}'{hint}")
        limits = self._limits()
        schedule = self._schedule()
        when: Cond | None = None
        if "when" in raw and self.kind is not None:
            when = self._cond(raw["when"], raw.value_pos_of("when"))
        actions = self._actions()
        reason = self._reason()
        if self.failed or self.kind is None or when is None:
            return None
        self._check_reachable(when, actions)
        if self.failed:
            return None
        return Policy(
            name=name, kind=self.kind, when=when, actions=actions, reason=reason, description=description,
            priority=priority, enabled=enabled, mode=mode, limits=limits, schedule=schedule,
            params=tuple(sorted(self.params.items())), source=raw.start,
        )

    def _text(self, key: str, default: str) -> str:
        if key not in self.raw:
            return default
        value = self.raw[key]
        if not isinstance(value, str) or not value.strip():
            self.error(self.raw.value_pos_of(key), f"`{key}` must be text, not {_what(value)}")
            return default
        return value

    def _int(self, key: str, default: int, low: int, high: int, where: PosDict | None = None) -> int:
        where = where if where is not None else self.raw
        if key not in where:
            return default
        value = where[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(where.value_pos_of(key), f"`{key}` must be a whole number, not {_what(value)}")
            return default
        if not low <= value <= high:
            self.error(where.value_pos_of(key), f"`{key}` must be between {low} and {high}, not {value}")
            return default
        return value

    def _bool(self, key: str, default: bool) -> bool:
        if key not in self.raw:
            return default
        value = self.raw[key]
        if not isinstance(value, bool):
            self.error(self.raw.value_pos_of(key), f"`{key}` must be true or false, not {_what(value)}")
            return default
        return value

    def _params(self, name: str) -> None:
        raw = self.raw.get("params")
        if raw is None:
            params: dict[str, Any] = {}
        elif not isinstance(raw, PosDict):
            self.error(self.raw.value_pos_of("params"), "`params` must be a mapping of names to values")
            params = {}
        else:
            params = {}
            for key, value in raw.items():
                if not NAME_RE.match(str(key)):
                    self.error(raw.pos_of(key), f"parameter name '{key}' may hold only letters, digits, '-' and '_'")
                elif isinstance(value, dict | list) or value is None:
                    self.error(raw.value_pos_of(key), f"parameter '{key}' must be a single value, not {_what(value)}")
                else:
                    params[str(key)] = value
        for key, value in (self.overrides.get(name) or {}).items():
            if key not in params:
                self.error(Pos("--set", 1, 1), f"policy '{name}' has no parameter '{key}'{suggest(key, params)}"
                           f" (it has: {', '.join(params) or 'none'})")
            else:
                params[key] = value
        self.params = params

    def _limits(self) -> Limits:
        raw = self.raw.get("limits")
        if raw is None:
            return Limits()
        if not isinstance(raw, PosDict):
            self.error(self.raw.value_pos_of("limits"), "`limits` must be a mapping: max_actions, max_percent, cooldown")
            return Limits()
        for key in raw:
            if key not in LIMIT_KEYS:
                hint = suggest(key, LIMIT_KEYS)
                self.error(raw.pos_of(key), f"unknown limit '{key}'{hint} (limits are: {', '.join(LIMIT_KEYS)})")
        max_actions = self._int("max_actions", 0, 1, 1_000_000, raw) or None
        max_percent = None
        if "max_percent" in raw:
            value = raw["max_percent"]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
                self.error(
                    raw.value_pos_of("max_percent"),
                    f"`max_percent` must be a number above 0 and at most 100, not {_what(value)}",
                )
            else:
                max_percent = float(value)
        cooldown = None
        if "cooldown" in raw:
            cooldown = self._duration(raw["cooldown"], raw.value_pos_of("cooldown"), "cooldown")
        return Limits(max_actions, max_percent, cooldown)

    def _duration(self, value: Any, pos: Pos, what: str) -> float | None:
        value = self._subst(value, pos)
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds: float | None = _as_float(value)
        else:
            seconds = parse_duration(value) if isinstance(value, str) else None
        if seconds is None:
            self.error(pos, f"`{what}` must be a duration such as 90s, 10m, 4h, 1h30m or 2d (or seconds), not {_what(value)}")
            return None
        problem = duration_problem(seconds)
        if problem:
            self.error(pos, f"`{what}`: {problem}, not {_what(value)}")
            return None
        return seconds

    def _schedule(self) -> str | None:
        if "schedule" not in self.raw:
            return None
        value = self.raw["schedule"]
        pos = self.raw.value_pos_of("schedule")
        if not isinstance(value, str):
            self.error(pos, f"`schedule` must be text such as 'every 5m' or '0 20 * * *', not {_what(value)}")
            return None
        every = EVERY_RE.match(value.strip())
        if every:
            seconds = parse_duration(every.group(1))
            if seconds in (None, 0.0):
                self.error(pos, f"'{value}': after 'every' comes a duration such as 30s, 5m or 1h")
            elif seconds is not None and (problem := duration_problem(seconds)):
                self.error(pos, f"'{value}': {problem}")
            return value.strip()
        try:
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger.from_crontab(value.strip())
        except ValueError as err:
            self.error(pos, f"'{value}' is neither 'every <duration>' nor a cron expression "
                       f"(minute hour day month weekday, e.g. '0 20 * * *'): {err}")
            return None
        return value.strip()

    # --- conditions -------------------------------------------------------------------
    def _fields(self) -> dict[str, FieldSpec]:
        assert self.kind is not None
        return FIELDS[self.kind]

    def _cond(self, raw: Any, pos: Pos) -> Cond | None:
        """A condition: a list (all of), or a mapping whose every key must hold."""
        if isinstance(raw, PosList):
            if not raw:
                self.error(pos, "an empty list of conditions; write at least one")
                return None
            items = [self._cond(item, raw.pos_of(i)) for i, item in enumerate(raw)]
            return None if any(i is None for i in items) else _all(items)  # type: ignore[arg-type]
        if not isinstance(raw, PosDict) or not raw:
            self.error(pos, f"a condition is a mapping such as `state: failed` or `all: [...]`, not {_what(raw)}")
            return None
        parts = [self._clause(key, raw[key], raw) for key in raw]
        return None if any(p is None for p in parts) else _all(parts)  # type: ignore[arg-type]

    def _clause(self, key: str, value: Any, raw: PosDict) -> Cond | None:
        kpos, vpos = raw.pos_of(key), raw.value_pos_of(key)
        if key in ("all", "any"):
            if not isinstance(value, PosList) or not value:
                self.error(vpos, f"`{key}` takes a non-empty list of conditions (each item starts with '-')")
                return None
            items = [self._cond(item, value.pos_of(i)) for i, item in enumerate(value)]
            if any(i is None for i in items):
                return None
            conds: tuple[Cond, ...] = tuple(items)  # type: ignore[arg-type]
            return All(conds) if key == "all" else AnyOf(conds)
        if key == "not":
            inner = self._cond(value, vpos)
            return None if inner is None else Not(inner)
        fields = self._fields()
        if key not in fields:
            self.error(kpos, f"unknown field '{key}' for {_a(self.kind)}{suggest(key, list(fields) + list(COMBINATORS))}"
                       f" (see `corral fields {self.kind}` or docs/policies.md)")
            return None
        spec = fields[key]
        self._deprecation(kpos, key)
        if isinstance(value, PosDict):
            if not value:
                self.error(vpos, f"'{key}' has an empty mapping; write an operator such as {{eq: ...}}")
                return None
            cmps = [self._cmp(key, spec, op, value[op], value.pos_of(op), value.value_pos_of(op)) for op in value]
            return None if any(c is None for c in cmps) else _all(cmps)  # type: ignore[arg-type]
        if isinstance(value, PosList):
            return self._cmp(key, spec, "in", value, kpos, vpos)
        return self._cmp(key, spec, "eq", value, kpos, vpos)

    def _cmp(self, path: str, spec: FieldSpec, op_name: str, value: Any, opos: Pos, vpos: Pos) -> Cmp | None:
        op = resolve(str(op_name))
        if op is None:
            self.error(opos, f"unknown operator '{op_name}'{suggest(str(op_name), _op_names())} "
                       f"(operators: {', '.join(OPERATORS)})")
            return None
        if spec.type not in op.types:
            self.error(opos, f"'{op.name}' does not apply to '{path}', which is {_type_words(spec)}; "
                       f"use one of: {', '.join(o.name for o in OPERATORS.values() if spec.type in o.types)}")
            return None
        if op.value == "bool":
            value = self._subst(value, vpos)
            if not isinstance(value, bool):
                self.error(vpos, f"'{op.name}' takes true or false, not {_what(value)}")
                return None
            return Cmp(path, op.name, value, opos)
        if op.value == "pattern":
            value = self._subst(value, vpos)
            if not isinstance(value, str):
                self.error(vpos, f"'{op.name}' takes a pattern in quotes, not {_what(value)}")
                return None
            if op.name == "regex":
                try:
                    compiled_regex(value)
                except BadPattern as err:
                    self.error(vpos, f"'{value}' is not a regular expression corral can use: {err}")
                    return None
            return Cmp(path, op.name, value, opos)
        if op.value == "list":
            if not isinstance(value, list) or not value:
                self.error(vpos, f"'{op.name}' takes a non-empty list such as [a, b], not {_what(value)}")
                return None
            items = [self._value(path, spec, v, vpos if not isinstance(value, PosList) else value.pos_of(i))
                     for i, v in enumerate(value)]
            if any(i is _BAD for i in items):
                return None
            return Cmp(path, op.name, tuple(items), opos)
        checked = self._value(path, spec, value, vpos)
        return None if checked is _BAD else Cmp(path, op.name, checked, opos)

    def _subst(self, value: Any, pos: Pos) -> Any:
        if isinstance(value, str) and value.startswith("$"):
            name = value[1:]
            if name not in self.params:
                self.error(pos, f"unknown parameter '${name}'{suggest(name, self.params)}; define it under `params:`")
                return _BAD
            return self.params[name]
        return value

    def _value(self, path: str, spec: FieldSpec, value: Any, pos: Pos) -> Any:
        """A comparison value, checked against the field's type (params substituted)."""
        value = self._subst(value, pos)
        if value is _BAD:
            return _BAD
        t = spec.type
        if t == "duration":
            if isinstance(value, bool):
                self.error(pos, f"'{path}' is a duration; write 90s, 10m, 4h or 1h30m, not {_what(value)}")
                return _BAD
            seconds = _as_float(value) if isinstance(value, int | float) else (
                parse_duration(value) if isinstance(value, str) else None)
            if seconds is None:
                self.error(pos, f"'{path}' is a duration; write 90s, 10m, 4h or 1h30m, not {_what(value)}")
                return _BAD
            problem = duration_problem(seconds)
            if problem:
                self.error(pos, f"'{path}': {problem}, not {_what(value)}")
                return _BAD
            return seconds
        if t in ("int", "float"):
            ok = isinstance(value, int) if t == "int" else isinstance(value, int | float)
            if isinstance(value, bool) or not ok:
                self.error(pos, f"'{path}' is {_type_words(spec)}; compare it with a number, not {_what(value)}")
                return _BAD
            problem = number_problem(value)
            if problem:
                self.error(pos, f"'{path}': {problem}, not {_what(value)}")
                return _BAD
            return value
        if t == "bool":
            if not isinstance(value, bool):
                self.error(pos, f"'{path}' is true or false, not {_what(value)}")
                return _BAD
            return value
        if not isinstance(value, str):
            hint = " (put it in quotes)" if isinstance(value, int | float) and not isinstance(value, bool) else ""
            self.error(pos, f"'{path}' is text; compare it with text, not {_what(value)}{hint}")
            return _BAD
        if t == "state" and value not in spec.states:
            what = "a state" if path.rpartition(".")[2] == "state" else "a value"
            self.error(pos, f"'{value}' is not {what} of '{path}'{suggest(value, spec.states)} "
                       f"({'states' if what == 'a state' else 'values'}: {', '.join(spec.states)})")
            return _BAD
        return value

    # --- actions and reason -----------------------------------------------------------
    def _actions(self) -> tuple[ActionSpec, ...]:
        if "actions" not in self.raw:
            return ()
        raw = self.raw["actions"]
        pos = self.raw.value_pos_of("actions")
        if isinstance(raw, str | PosDict):
            raw_list: list[Any] = [raw]
            positions = [pos]
        elif isinstance(raw, PosList) and raw:
            raw_list, positions = list(raw), [raw.pos_of(i) for i in range(len(raw))]
        else:
            self.error(pos, "`actions` is a list such as [block] or [{resubmit: {priority: 10}}]")
            return ()
        out = []
        for item, ipos in zip(raw_list, positions, strict=True):
            spec = self._action(item, ipos)
            if spec is not None:
                out.append(spec)
        return tuple(out)

    def _action(self, item: Any, pos: Pos) -> ActionSpec | None:
        params: Any = {}
        if isinstance(item, PosDict):
            if len(item) != 1:
                self.error(pos, "each action is `- name` or `- name: {parameters}`, one action per item")
                return None
            name = next(iter(item))
            params = item[name] if item[name] is not None else {}
            ppos = item.value_pos_of(name)
        else:
            name, ppos = item, pos
        if not isinstance(name, str) or name not in Action.__members__.values():
            self.error(pos, f"unknown action '{name}'{suggest(str(name), [a.value for a in Action])} "
                       f"(actions: {', '.join(a.value for a in Action)})")
            return None
        action = Action(name)
        if self.kind is not None and (self.kind, action) not in RULES:
            self.error(pos, f"'{action}' is not an action on {_a(self.kind)}; {_a(self.kind)} can: "
                       f"{', '.join(actions_for(self.kind))}")
            return None
        if not isinstance(params, dict):
            self.error(ppos, f"the parameters of '{action}' are a mapping such as {{priority: 10}}, not {_what(params)}")
            return None
        definition = action_def(action)
        allowed = [p.name for p in definition.params]
        checked: dict[str, Any] = {}
        for key, value in params.items():
            kpos = params.pos_of(key) if isinstance(params, PosDict) else ppos
            value = self._subst(value, kpos)
            param = definition.param(key)
            if param is None:
                self.error(kpos, f"'{action}' has no parameter '{key}'{suggest(key, allowed)}"
                           f" (it takes: {', '.join(allowed) or 'none'})")
                continue
            if value is _BAD:
                continue
            problem = param.problem(value)
            if problem:
                self.error(kpos, f"'{action}' parameter '{key}' {problem}, not {_what(value)}")
                continue
            checked[key] = value
        return ActionSpec(action, tuple(sorted(checked.items())))

    def _reason(self) -> str:
        if "reason" not in self.raw:
            return ""
        reason = self.raw["reason"]
        pos = self.raw.value_pos_of("reason")
        if not isinstance(reason, str) or not reason.strip():
            self.error(pos, f"`reason` must be a sentence, not {_what(reason)}")
            return ""
        if self.kind is None:
            return reason
        fields = self._fields()
        for m in TEMPLATE_RE.finditer(reason):
            name, noun = m.group(1), m.group(2)
            if noun is not None and (not noun.strip() or noun.count("|") > 1 or not all(noun.split("|"))):
                self.error(pos, f"'{m.group(0)}' names a noun to agree with the count: write "
                           f"{{{name}|host}} (plural: hosts) or {{{name}|child|children}}")
            if name not in fields and name not in self.params:
                self.error(pos, f"the reason cites '{{{name}}}', which is neither a field of {_a(self.kind)} nor a "
                           f"parameter{suggest(name, list(fields) + list(self.params))}")
            elif name in fields:
                self._deprecation(pos, name)
        return reason

    def _check_reachable(self, when: Cond, actions: tuple[ActionSpec, ...]) -> None:
        """A policy whose conditions pin a state its first action never applies to can
        never act: say so now rather than let it be silently useless."""
        if not actions or self.kind is None:
            return
        pinned = pinned_states(when)
        if pinned is None:
            return
        legal = legal_from(self.kind, actions[0].action)
        if not pinned & legal:
            self.error(self.raw.value_pos_of("actions"),
                       f"this policy can never act: it only matches {self.kind}s that are "
                       f"{', '.join(sorted(pinned))}, and '{actions[0].action}' applies only to "
                       f"{', '.join(sorted(legal))}")


class _Bad:
    def __repr__(self) -> str:
        return "<invalid>"


_BAD: Any = _Bad()


def _all(items: list[Cond]) -> Cond:
    return items[0] if len(items) == 1 else All(tuple(items))


def _a(kind: object) -> str:
    word = str(kind)
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _op_names() -> list[str]:
    return [alias for op in OPERATORS.values() for alias in (op.name, *op.aliases)]


def _type_words(spec: FieldSpec) -> str:
    return {
        "int": "a whole number", "float": "a number", "duration": "a duration", "str": "text",
        "state": "a state", "bool": "true or false",
    }[spec.type]
