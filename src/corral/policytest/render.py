"""Showing what a policy test run found: a line per case, a diff per failure, and JSON.
"""

from __future__ import annotations

from typing import Any

from corral.plan import Transition
from corral.policytest.model import RunResult, StepResult, ref_text
from corral.yamlpos import shown_path


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
            lines.append(f"{mark}  {shown_path(c.pos.file)}:{c.pos.line}: {c.name}")
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
                   "cases": [{"name": c.name, "where": f"{shown_path(c.pos.file)}:{c.pos.line}", "ok": c.ok, "error": c.error,
                              "steps": [step(s) for s in c.steps]} for c in f.cases]} for f in run.files],
    }
