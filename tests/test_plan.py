"""The planner: brakes, conflicts, audit mode, legality, reasons; and it never touches the farm."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import pytest

from corral.engine import RuleEngine
from corral.evaluate import ReferenceEvaluator, find_matches
from corral.facts import FactBuilder
from corral.farm import Farm, Frame, Instance, Job, Worker
from corral.plan import Moved, Plan, make_plan, render_reason
from corral.policy.loader import load_texts
from corral.policy.model import Policy
from corral.states import FrameState, Hold, InstanceState, JobState, Kind
from strategies import NOW


def farm() -> Farm:
    f = Farm()
    for jid, state in ((1, JobState.FAILED), (2, JobState.FAILED), (3, JobState.RUNNING), (4, JobState.BLOCKED)):
        job = Job(id=jid, name=f"shot0{jid}0_comp", state=state, retry_limit=2, state_since=NOW - timedelta(minutes=20),
                  hold=Hold.BLOCKED if state is JobState.BLOCKED else Hold.NONE, version=7)
        fstate = FrameState.FAILED if state is JobState.FAILED else FrameState.RUNNING
        job.frames = {n: Frame(jid, n, fstate, host="r01", instance=f"{jid}.a", version=3) for n in (1, 2)}
        job.instances = {f"{jid}.a": Instance(f"{jid}.a", jid, "r01", InstanceState.RUNNING, version=2)}
        f.jobs[jid] = job
    f.workers = {"r01": Worker("r01", version=1)}
    return f


def policies(text: str) -> list[Policy]:
    result = load_texts([("p.yaml", "policies:\n" + text)])
    assert result.ok, [str(e) for e in result.errors]
    return result.policies


def plan_for(text: str, f: Farm | None = None, **kw: Any) -> Plan:
    f = f or farm()
    pols = policies(text)
    return make_plan(f, find_matches(pols, FactBuilder(f, NOW), ReferenceEvaluator(pols)), now=NOW, **kw)


RETRY = """\
  - name: retry-failed
    kind: job
    when: {state: failed}
    actions: [retry]
    reason: "failed for {time_in_state}, {retries_left} retries left"
"""


def test_matching_jobs_are_planned_with_their_reason_rendered() -> None:
    plan = plan_for(RETRY)
    assert [(t.ident, t.action, t.from_state, t.mode) for t in plan.transitions] == [
        ("1", "retry", "failed", "enforce"), ("2", "retry", "failed", "enforce")]
    assert plan.transitions[0].reason == "failed for 20m, 2 retries left"


def test_the_engine_and_the_reference_produce_the_same_plan() -> None:
    pols = policies(RETRY)
    f = farm()
    builder = FactBuilder(f, NOW)
    by_ref = make_plan(f, find_matches(pols, builder, ReferenceEvaluator(pols)), now=NOW)
    by_engine = make_plan(f, find_matches(pols, builder, RuleEngine(pols)), now=NOW)
    assert by_ref.to_json() == by_engine.to_json()


def test_cooldown_skips_an_entity_acted_on_recently_and_says_how_long_ago() -> None:
    text = RETRY + "    limits: {cooldown: 1h}\n"
    plan = plan_for(text, last_actions={("retry-failed", "job", "1"): NOW - timedelta(minutes=10),
                                        ("retry-failed", "job", "2"): NOW - timedelta(hours=2)})
    assert [t.ident for t in plan.transitions] == ["2"]
    [skip] = plan.skipped
    assert (skip.ident, skip.category) == ("1", "cooldown")
    assert skip.why == "acted on it 10m ago; cooldown is 1h"


@pytest.mark.parametrize(("limit", "phrase"), [
    ("max_actions: 1", "matched 2 jobs, more than its max_actions of 1: acting on none this cycle"),
    ("max_percent: 25", "matched 2 of 4 jobs (50%), more than its max_percent of 25%: acting on none this cycle"),
])
def test_a_policy_over_its_limit_acts_on_nothing_and_says_why(limit: str, phrase: str) -> None:
    plan = plan_for(RETRY + f"    limits: {{{limit}}}\n")
    assert plan.transitions == []
    assert list(plan.notes) == ["retry-failed"]
    assert plan.notes["retry-failed"].startswith(phrase.split(":")[0])
    assert plan.notes["retry-failed"].endswith("acting on none this cycle")
    assert [(s.ident, s.category) for s in plan.skipped] == [("1", "limit"), ("2", "limit")]


def test_a_policy_at_its_limit_still_acts() -> None:
    plan = plan_for(RETRY + "    limits: {max_actions: 2, max_percent: 50}\n")
    assert len(plan.transitions) == 2


CONFLICT = """\
  - name: block-blocked-ones
    kind: job
    priority: 10
    when: {name: {glob: 'shot040*'}}
    actions: [kill]
    reason: kill
  - name: unblock-ready
    kind: job
    priority: 90
    when: {state: blocked}
    actions: [unblock]
    reason: unblock
"""


def test_conflicts_go_to_the_higher_priority_and_the_loser_is_reported() -> None:
    plan = plan_for(CONFLICT)
    assert [(t.policy, t.ident, t.action) for t in plan.transitions] == [("unblock-ready", "4", "unblock")]
    [skip] = plan.skipped
    assert (skip.policy, skip.ident, skip.category) == ("block-blocked-ones", "4", "conflict")
    assert "policy 'unblock-ready' (priority 90)" in skip.why


def test_audit_proposals_are_reported_and_do_not_block_enforcing_ones() -> None:
    text = CONFLICT.replace("    priority: 90\n", "    priority: 90\n    mode: audit\n")
    plan = plan_for(text)
    got = sorted((t.policy, t.ident, t.action, t.mode) for t in plan.transitions)
    assert got == [("block-blocked-ones", "4", "kill", "enforce"), ("unblock-ready", "4", "unblock", "audit")]
    assert [t.policy for t in plan.enforced] == ["block-blocked-ones"]
    assert plan.skipped == []


def test_an_illegal_proposal_is_dropped_with_the_state_models_reason() -> None:
    text = """\
  - name: retry-anything
    kind: job
    when: {name: {glob: 'shot*'}}
    actions: [retry]
    reason: r
"""
    plan = plan_for(text)
    assert sorted(t.ident for t in plan.transitions) == ["1", "2"]
    illegal = {s.ident: s.why for s in plan.skipped if s.category == "illegal"}
    assert illegal["3"] == "cannot retry job 3: it is running; 'retry' applies only to a job that is failed, failing or killed"
    assert set(illegal) == {"3", "4"}


def test_an_automatic_retry_beyond_the_limit_is_illegal() -> None:
    f = farm()
    f.jobs[1].retries = 2
    plan = plan_for(RETRY, f)
    assert [t.ident for t in plan.transitions] == ["2"]
    assert [s.why for s in plan.skipped] == ["cannot retry job 1: it is failed; it has used all 2 of its retries"]


def _dump(obj: Any) -> Any:
    if obj is None or isinstance(obj, str | int | float | datetime):
        return obj
    if isinstance(obj, dict):
        return {k: _dump(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_dump(v) for v in obj]
    if hasattr(obj, "__dict__"):
        return {k: _dump(v) for k, v in vars(obj).items() if k not in ("_journal", "_instances")}
    return obj


def test_planning_never_changes_the_farm() -> None:
    f = farm()
    before = _dump(copy.deepcopy(f))
    plan = plan_for(RETRY + CONFLICT.replace("    priority: 90\n", "    priority: 90\n    mode: audit\n") + """\
  - name: lock-host
    kind: instance
    when: {state: running}
    actions: [{block: {requeue_failed: true}}]
    reason: r
""", f)
    assert len(plan.transitions) >= 4
    assert _dump(f) == before


def test_reason_templates_render_durations_fields_and_params() -> None:
    fact = {"id": "7:1", "run_time": 5400.0, "exit_code": 3, "job": {"name": "shot"}, "worker": {"time_in_state": 90.0},
            "frames_done_percent": 12.5}
    text = ("{job.name} ran {run_time} (exit {exit_code}), host idle {worker.time_in_state}, "
            "{frames_done_percent}% done, max {limit}")
    assert render_reason(text, fact, {"limit": 3}) == "shot ran 1h30m (exit 3), host idle 1m30s, 12.5% done, max 3"


def test_every_kind_gets_planned_in_one_plan() -> None:
    text = RETRY + """\
  - name: quarantine
    kind: worker
    when: {state: up}
    actions: [block]
    reason: "quarantine {id}"
"""
    plan = plan_for(text)
    assert {t.kind for t in plan.transitions} == {Kind.JOB, Kind.WORKER}
    assert plan.matched == {"retry-failed": 2, "quarantine": 1}


def test_the_parts_that_moved_are_the_dirty_jobs_and_workers_and_nothing_else() -> None:
    """A plan part is played again when its job or worker changed; an instance's own part
    (an instance whose job is gone) never counts as changed, as before `Moved`."""
    moved = Moved(jobs={7, 9}, workers={"r0001"})
    assert ("job", 7) in moved and ("worker", "r0001") in moved
    assert ("job", 8) not in moved and ("worker", "r0002") not in moved
    assert ("job", "r0001") not in moved and ("worker", 7) not in moved
    assert ("instance", "r0001") not in moved and ("instance", 7) not in moved
    assert "job" not in moved and ("job", 7, 1) not in moved


@pytest.mark.parametrize(("count", "template", "said"), [
    (1, "{n|other host}", "1 other host"), (3, "{n|other host}", "3 other hosts"),
    (0, "{n|frame}", "0 frames"), (2, "{n|dependency}", "2 dependencies"), (2, "{n|day}", "2 days"),
    (2, "{n|pass}", "2 passes"), (1, "{n|child|children}", "1 child"), (4, "{n|child|children}", "4 children"),
])
def test_a_reason_s_count_agrees_with_its_noun(count: int, template: str, said: str) -> None:
    assert render_reason(template, {"n": count}, {}) == said
