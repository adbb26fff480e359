"""The condition operators: one table that the loader, the reference evaluator,
the durable_rules compiler, the JSON Schema and the docs all read.

Each operator has a canonical name, aliases a wrangler might type, the kind of value
it takes, the field types it applies to, and a plain function that decides it.  The
function is the *reference meaning*; `corral.policy.compiler` must agree with it, and
the parity property tests check that it does.

Semantics shared by every operator: a missing field (unknown value) never matches,
so `exit_code: {ne: 0}` is false for a frame that has no exit code yet; only
`exists: false` is true for it.  Put a condition under `not:` to invert it including
the missing case.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2  # google-re2: linear-time matching (see compiled_regex)


@dataclass(frozen=True)
class Operator:
    name: str
    aliases: tuple[str, ...]
    value: str  # "scalar" | "list" | "pattern" | "bool"
    types: frozenset[str]  # field types it applies to
    test: Callable[[Any, Any], bool]
    doc: str
    example: str


ORDERED = frozenset({"int", "float", "duration"})
ALL_TYPES = frozenset({"int", "float", "duration", "str", "state", "bool"})
TEXT = frozenset({"str", "state"})


class BadPattern(ValueError):
    """A `regex` pattern corral cannot run; the message says why in a wrangler's words."""


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print its own line on stderr for each bad pattern


@lru_cache(maxsize=1024)
def compiled_regex(pattern: str) -> Any:
    """`pattern` compiled by RE2, which matches in time linear in the text whatever the
    pattern: a job named "aaaa...a!" against `(a+)+$` takes microseconds, where Python's
    `re` backtracks for minutes, holding the interpreter (and the daemon's cycles, its
    signal handlers and its metrics endpoint) all that time.  The syntax is Python's but
    for what needs backtracking: lookarounds and backreferences are refused (BadPattern)."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as err:
        reason = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        hint = ("; lookarounds ((?=...), (?<=...)) and backreferences (\\1) are not supported: corral matches "
                "patterns with RE2, in linear time") if "perl operator" in reason or "escape" in reason else ""
        raise BadPattern(f"{reason}{hint}") from None


def _regex(value: Any, pattern: Any) -> bool:
    return isinstance(value, str) and compiled_regex(pattern).search(value) is not None


def _glob(value: Any, pattern: Any) -> bool:
    return isinstance(value, str) and fnmatch.fnmatchcase(value, pattern)


def _eq(a: Any, b: Any) -> bool:
    # bool is an int in Python; a field of one type never equals a value of the other.
    return isinstance(a, bool) == isinstance(b, bool) and a == b


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("eq", ("equal", "equals", "is", "=="), "scalar", ALL_TYPES, _eq,
                 "the field equals the value", "state: {eq: failed}   # or simply  state: failed"),
        Operator("ne", ("not_equal", "is_not", "!="), "scalar", ALL_TYPES, lambda a, b: not _eq(a, b),
                 "the field exists and differs from the value", "exit_code: {ne: 0}"),
        Operator("lt", ("less_than", "<"), "scalar", ORDERED, lambda a, b: a < b,
                 "the field is less than the value", "retries_left: {lt: 1}"),
        Operator("lte", ("le", "at_most", "<="), "scalar", ORDERED, lambda a, b: a <= b,
                 "the field is at most the value", "priority: {lte: 10}"),
        Operator("gt", ("greater_than", "more_than", ">"), "scalar", ORDERED, lambda a, b: a > b,
                 "the field is greater than the value", "run_time: {gt: 4h}"),
        Operator("gte", ("ge", "at_least", ">="), "scalar", ORDERED, lambda a, b: a >= b,
                 "the field is at least the value", "time_in_state: {gte: 10m}"),
        Operator("in", ("one_of",), "list", ALL_TYPES, lambda a, b: any(_eq(a, x) for x in b),
                 "the field equals one of the values", "state: {in: [failed, killed]}"),
        Operator("not_in", ("none_of",), "list", ALL_TYPES, lambda a, b: not any(_eq(a, x) for x in b),
                 "the field exists and equals none of the values", "host: {not_in: [render01, render02]}"),
        Operator("regex", ("matches",), "pattern", TEXT, _regex,
                 "a regular expression is found in the field (anchor with ^ and $); Python's syntax without "
                 "lookarounds or backreferences, matched by RE2 in time linear in the text",
                 "name: {regex: '^shot0[0-9]{2}_'}"),
        Operator("glob", ("like",), "pattern", TEXT, _glob,
                 "the whole field matches a shell pattern (* any text, ? one character, [abc] one of)",
                 "job.name: {glob: 'shot010_*'}"),
        Operator("exists", (), "bool", ALL_TYPES, lambda a, b: True,
                 "exists: true holds when the field has a value; exists: false when it has none",
                 "exit_code: {exists: true}"),
    )
}

ALIASES: dict[str, str] = {alias: op.name for op in OPERATORS.values() for alias in (op.name, *op.aliases)}


def resolve(name: str) -> Operator | None:
    canonical = ALIASES.get(name)
    return OPERATORS[canonical] if canonical else None
