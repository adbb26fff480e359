"""Every operator and alias, on present and missing fields and under `not:`.

Each case is decided twice, by the reference evaluator and by the durable_rules
engine, and both must give the expected answer: the table in
`corral.policy.operators` is the meaning, the engine must follow it.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from corral.engine import RuleEngine
from corral.policy.loader import load_texts
from corral.policy.model import ActionSpec, AnyOf, Cmp, Cond, Not, Policy
from corral.policy.operators import ALIASES, OPERATORS, resolve
from corral.policy.reference import holds
from corral.states import Action, Kind

ACTION = {Kind.JOB: Action.BLOCK, Kind.FRAME: Action.KILL, Kind.INSTANCE: Action.BLOCK, Kind.WORKER: Action.BLOCK}


def decide(cond: Cond, fact: dict[str, Any], kind: Kind = Kind.FRAME) -> bool:
    """The answer of the reference evaluator, after checking the engine gives the same one."""
    policy = Policy("p", kind, cond, (ActionSpec(ACTION[kind]),), "r")
    reference = holds(cond, fact)
    engine = RuleEngine([policy])
    got = engine.evaluate(kind, [fact])["p"]
    assert (fact["id"] in got) == reference, f"engine {got} vs reference {reference} for {cond} on {fact}"
    return reference


FRAME = {
    "id": "7:3",
    "job_id": 7,
    "number": 3,
    "state": "failed",
    "host": "render-01",
    "exit_code": 0,
    "run_time": 1800.0,
    "job": {"name": "shot010_comp", "priority": 50, "suspended": False, "frames_done_percent": 33.333333333333336},
    "worker": {"state": "up", "consecutive_failures": 4},
    "dependencies": {"total": 2, "complete": 1, "incomplete": 1},
}
NEVER_RAN = {"id": "7:4", "job_id": 7, "number": 4, "state": "pending", "job": {"name": "shot010_comp"}}


CASES = [
    # (path, op, value, on FRAME, on NEVER_RAN)
    ("state", "eq", "failed", True, False),
    ("state", "eq", "complete", False, False),
    ("exit_code", "eq", 0, True, False),
    ("exit_code", "ne", 0, False, False),  # missing: ne is false too
    ("exit_code", "ne", 1, True, False),
    ("exit_code", "lt", 1, True, False),
    ("exit_code", "lt", 0, False, False),
    ("exit_code", "lte", 0, True, False),
    ("exit_code", "gt", -1, True, False),
    ("exit_code", "gt", 0, False, False),
    ("exit_code", "gte", 0, True, False),
    ("exit_code", "in", (1, 0), True, False),
    ("exit_code", "in", (1, 2), False, False),
    ("exit_code", "not_in", (1, 2), True, False),  # missing: not_in is false too
    ("exit_code", "not_in", (0,), False, False),
    ("host", "regex", "^render-0[0-9]$", True, False),
    ("host", "regex", "01", True, False),  # re.search: anywhere in the text
    ("host", "regex", "^01", False, False),
    ("host", "glob", "render-*", True, False),
    ("host", "glob", "render", False, False),  # glob: the whole text
    ("host", "glob", "render-0?", True, False),
    ("host", "glob", "render-0[!2]", True, False),
    ("host", "glob", "*-[0-9][0-9]", True, False),
    ("exit_code", "exists", True, True, False),
    ("exit_code", "exists", False, False, True),
    ("state", "in", ("pending", "blocked"), False, True),
    ("run_time", "gte", 1800.0, True, False),
    ("run_time", "gt", 1800.0, False, False),
    ("job.name", "glob", "shot010_*", True, True),
    ("job.name", "regex", "_comp$", True, True),
    ("job.priority", "gte", 50, True, False),
    ("job.suspended", "eq", False, True, False),
    ("job.frames_done_percent", "eq", 100 / 3, True, False),
    ("job.frames_done_percent", "lt", 33.4, True, False),
    ("worker.consecutive_failures", "gte", 3, True, False),
    ("worker.state", "ne", "locked", True, False),
    ("worker.state", "exists", False, False, True),
    ("dependencies.incomplete", "gt", 0, True, False),
    ("dependencies.total", "eq", 2, True, False),
]


@pytest.mark.parametrize(("path", "op", "value", "present", "missing"), CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_each_operator_decides_present_and_missing_fields_as_documented(
    path: str, op: str, value: Any, present: bool, missing: bool
) -> None:
    cmp = Cmp(path, op, value)
    assert decide(cmp, FRAME) is present
    assert decide(cmp, NEVER_RAN) is missing


@pytest.mark.parametrize(("path", "op", "value", "present", "missing"), CASES, ids=[f"not-{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_not_inverts_every_operator_including_the_missing_case(
    path: str, op: str, value: Any, present: bool, missing: bool
) -> None:
    cmp = Not(Cmp(path, op, value))
    assert decide(cmp, FRAME) is not present
    assert decide(cmp, NEVER_RAN) is not missing
    assert decide(Not(cmp), FRAME) is present


def test_every_operator_of_the_table_is_covered_by_the_cases() -> None:
    assert {c[1] for c in CASES} == set(OPERATORS)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_alias_loads_as_its_operator(alias: str) -> None:
    op = resolve(alias)
    assert op is not None
    path, value = {
        "scalar": ("retries", 2),
        "list": ("retries", [2, 3]),
        "pattern": ("name", "shot*"),
        "bool": ("since_retry", True),
    }[op.value]
    if op.name in ("regex", "glob"):
        value = "^shot" if op.name == "regex" else "shot*"
    text = f"""
policies:
  - name: alias-{len(alias)}
    kind: job
    when:
      {path}: {{"{alias}": {value if not isinstance(value, str) else repr(value)}}}
    actions: [kill]
    reason: r
"""
    result = load_texts([("a.yaml", text)])
    assert result.errors == []
    cond = result.policies[0].when
    assert isinstance(cond, Cmp)
    assert cond.op == op.name
    job = {"id": 1, "name": "shot010", "retries": 2, "since_retry": 60.0}
    expected = {"eq": True, "ne": False, "lt": False, "lte": True, "gt": False, "gte": True, "in": True,
                "not_in": False, "regex": True, "glob": True, "exists": True}[op.name]
    assert decide(cond, job, Kind.JOB) is expected


def test_a_missing_field_fails_every_comparison_but_exists_false() -> None:
    fact = {"id": "7:4", "state": "pending"}
    for name, op in OPERATORS.items():
        value = {"list": (0,), "pattern": ".*" if name == "regex" else "*", "bool": True}.get(op.value, 0)
        assert decide(Cmp("exit_code", name, value), fact) is False, name
    assert decide(Cmp("exit_code", "exists", False), fact) is True


def test_a_bool_field_never_equals_a_number_and_the_loader_refuses_to_compare_them() -> None:
    fact = {"id": 1, "suspended": True, "priority": 1}
    assert decide(Cmp("suspended", "eq", True), fact, Kind.JOB)
    # The engine cannot tell true from 1; the loader never lets such a comparison through.
    assert holds(Cmp("suspended", "eq", 1), fact) is False
    assert holds(Cmp("priority", "eq", True), fact) is False
    bad = load_texts([("b.yaml", "policies:\n  - {name: b, kind: job, when: {suspended: 1, priority: true}, "
                                  "actions: [kill], reason: r}\n")])
    assert [e.message.split(";")[0] for e in bad.errors] == [
        "'suspended' is true or false, not the number 1",
        "'priority' is a whole number",
    ]


def test_any_of_with_a_missing_field_still_matches_on_the_other_branch() -> None:
    cond = AnyOf((Cmp("exit_code", "ne", 0), Cmp("state", "eq", "pending")))
    assert decide(cond, NEVER_RAN) is True
    assert decide(Not(cond), NEVER_RAN) is False


# --- durations, params, nested fields through the loader ---------------------------------------

def _load_one(when: str, kind: str = "job", params: str = "") -> Policy:
    text = f"policies:\n  - name: p\n    kind: {kind}\n{params}    when: {when}\n    actions: [kill]\n    reason: r\n"
    result = load_texts([("p.yaml", text)])
    assert result.errors == [], [str(e) for e in result.errors]
    return result.policies[0]


@pytest.mark.parametrize(("written", "seconds"), [
    ("10m", 600.0), ("1h30m", 5400.0), ("90s", 90.0), ("2d", 172800.0), ("1.5h", 5400.0), ("600", 600.0), ("0s", 0.0),
])
def test_durations_are_written_the_way_wranglers_say_them(written: str, seconds: float) -> None:
    policy = _load_one(f"{{time_in_state: {{gte: {written}}}}}")
    assert policy.when == Cmp("time_in_state", "gte", seconds)
    assert decide(policy.when, {"id": 1, "time_in_state": seconds}, Kind.JOB) is True
    assert decide(policy.when, {"id": 1, "time_in_state": seconds - 0.5}, Kind.JOB) is False


def test_a_param_is_substituted_in_conditions_and_can_be_a_duration() -> None:
    policy = _load_one("{time_in_state: {gt: $wait}, retries_left: {gte: $min}, name: {glob: $shots}}",
                       params="    params: {wait: 20m, min: 1, shots: 'shot0*'}\n")
    fact = {"id": 3, "time_in_state": 1500.0, "retries_left": 1, "name": "shot010"}
    assert decide(policy.when, fact, Kind.JOB) is True
    assert decide(policy.when, {**fact, "time_in_state": 1200.0}, Kind.JOB) is False
    assert dict(policy.params) == {"wait": "20m", "min": 1, "shots": "shot0*"}


def test_an_overridden_param_changes_what_the_policy_matches() -> None:
    text = ("policies:\n  - name: p\n    kind: job\n    params: {min: 1}\n    when: {retries: {gte: $min}}\n"
            "    actions: [kill]\n    reason: r\n")
    result = load_texts([("p.yaml", text)], overrides={"p": {"min": 5}})
    assert result.errors == []
    assert result.policies[0].when == Cmp("retries", "gte", 5)


def test_nested_related_fields_of_frames_instances_and_jobs_are_reachable() -> None:
    frame = _load_one("{job.name: {glob: 'shot*'}, worker.state: up, dependencies.incomplete: 0}", kind="frame")
    fact = {"id": "1:1", "job": {"name": "shot1"}, "worker": {"state": "up"}, "dependencies": {"incomplete": 0}}
    assert decide(frame.when, fact) is True
    assert decide(frame.when, {**fact, "worker": {"state": "locked"}}) is False
    assert decide(frame.when, {k: v for k, v in fact.items() if k != "worker"}) is False

    inst = _load_one("{job.state: failing, worker.recent_failures: {gte: 2}}", kind="instance")
    ifact = {"id": "1.a", "job": {"state": "failing"}, "worker": {"recent_failures": 2}}
    assert decide(inst.when, ifact, Kind.INSTANCE) is True

    job = _load_one("{dependencies.all_complete: true, state: blocked}")
    assert decide(job.when, {"id": 2, "state": "blocked", "dependencies": {"all_complete": True}}, Kind.JOB) is True
    assert decide(job.when, {"id": 2, "state": "blocked", "dependencies": {"all_complete": False}}, Kind.JOB) is False


# --- properties over awkward values ----------------------------------------------------------------

TEXT = st.text(st.characters(min_codepoint=1, max_codepoint=0x24F, blacklist_categories=("Cs",)), max_size=8)
GLOB = st.lists(st.one_of(st.sampled_from(["*", "?", "-", ":", "%", ".", "é", '"', "\\", "(", "+", "|", "{", "^", "$"]), TEXT),
                max_size=5).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=TEXT, pattern=GLOB, negated=st.booleans())
def test_glob_matches_like_fnmatch_whatever_the_characters(value: str, pattern: str, negated: bool) -> None:
    cond: Cond = Cmp("name", "glob", pattern)
    if negated:
        cond = Not(cond)
    expected = fnmatch.fnmatchcase(value, pattern) != negated
    assert decide(cond, {"id": "w", "name": value}, Kind.WORKER) is expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=TEXT, other=TEXT, op=st.sampled_from(["eq", "ne", "in", "not_in"]), same=st.booleans())
def test_text_equality_holds_for_any_characters(value: str, other: str, op: str, same: bool) -> None:
    target = value if same else other
    cmp = Cmp("name", op, (target, "zz") if op in ("in", "not_in") else target)
    decide(cmp, {"id": "w", "name": value}, Kind.WORKER)
    decide(Not(cmp), {"id": "w", "name": value}, Kind.WORKER)


NUMBERS = st.one_of(st.floats(0, 1e7, allow_nan=False), st.sampled_from([1e-05, 5e-324, 0.0001, 1 / 3, 1e16, 2.5e-07]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actual=NUMBERS, threshold=NUMBERS, op=st.sampled_from(["eq", "ne", "lt", "lte", "gt", "gte"]))
def test_durations_compare_exactly_even_when_tiny(actual: float, threshold: float, op: str) -> None:
    fact = {"id": 1, "time_in_state": actual}
    decide(Cmp("time_in_state", op, threshold), fact, Kind.JOB)
    decide(Cmp("time_in_state", op, actual), fact, Kind.JOB)
    decide(Not(Cmp("time_in_state", op, threshold)), fact, Kind.JOB)


def test_a_fact_the_engine_cannot_read_is_decided_in_python_and_counted() -> None:
    policy = Policy("p", Kind.JOB, Cmp("frames_done_percent", "lt", 1.0), (ActionSpec(Action.KILL),), "r")
    engine = RuleEngine([policy])
    found = engine.evaluate(Kind.JOB, [{"id": 1, "frames_done_percent": 1e-05}, {"id": 2, "frames_done_percent": 5.0}])
    assert found == {"p": [1]}
    assert engine.stats.unreadable == 1


def test_an_infinite_threshold_does_not_stop_the_engine() -> None:
    cond = Cmp("time_in_state", "lt", math.inf)
    assert decide(cond, {"id": 1, "time_in_state": 10.0}, Kind.JOB) is True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.text("ab_", max_size=6), pattern=st.text("ab_*", min_size=1, max_size=6))
@example(value="aaaa", pattern="*aa")
@example(value="baa", pattern="*aaab")
@example(value="abaa", pattern="*ab*a")
@example(value="aabb", pattern="a*a*b")
@example(value="bbba", pattern="**bb*")
@example(value="x__comp", pattern="*_comp")
def test_glob_stars_anywhere_match_like_fnmatch_on_repetitive_names(value: str, pattern: str) -> None:
    # The engine's own pattern matcher says '*aa' does not match 'aaaa' and refuses '*aaab'.
    expected = fnmatch.fnmatchcase(value, pattern)
    assert decide(Cmp("name", "glob", pattern), {"id": "w", "name": value}, Kind.WORKER) is expected


def test_a_pattern_that_backtracks_catastrophically_in_python_is_matched_at_once() -> None:
    """`(a+)+$` against 34 a's and a '!' takes Python's `re` minutes of backtracking (with
    the interpreter held: no signal handler, no other thread runs); RE2 answers at once.
    Run in a thread so a hang fails the test instead of stalling the run."""
    import threading

    from corral.policy.loader import load_texts
    from corral.policy.reference import holds

    policy = load_texts([("p.yaml", "policies:\n  - name: p\n    kind: job\n    when: {name: {regex: '(a+)+$'}}\n"
                                    "    actions: [block]\n    reason: r\n")]).policies[0]
    answers: list[bool] = []
    worker = threading.Thread(target=lambda: answers.append(holds(policy.when, {"name": "a" * 34 + "!"})), daemon=True)
    worker.start()
    worker.join(20)
    assert answers == [False], "the match did not finish in 20 s"
    assert holds(policy.when, {"name": "aaa"})
