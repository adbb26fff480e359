"""Running policy tests: each case's points in time as consecutive cycles of the
policies under test, compared with what the case expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from corral.cycle import plan_farm
from corral.effects import apply_action
from corral.explain import failing_rows, trace_rows
from corral.facts import FactBuilder
from corral.farm import Farm
from corral.plan import Plan, Transition
from corral.policy.loader import TEST_SUFFIXES
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.policytest.model import Case, CaseResult, Expected, FileResult, PolicyTestFile, RunResult, Step, StepResult
from corral.policytest.reader import read_test_file
from corral.states import IllegalAction


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
