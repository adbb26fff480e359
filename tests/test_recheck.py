"""Same-cycle semantics: matches are planned in priority order, and each one is checked
again against the farm as the transitions planned before it leave it (docs/policies.md,
"One cycle, in order").  The planner re-checks only the matches an earlier transition
reached; the oracle here re-checks every match on a fresh count of the played farm."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.evaluate import Match, ReferenceEvaluator, find_matches
from corral.facts import FactBuilder
from corral.farm import Farm, Frame, FrameRun, Instance, Job, Worker
from corral.plan import Plan, _ordered, _play, _resolve_conflicts, make_plan, render_reason
from corral.policy.loader import load_texts
from corral.policy.model import Limits, Policy, paths
from corral.policy.reference import holds
from corral.states import FrameState, InstanceState, JobState, Kind
from strategies import NOW, farms, policy_sets


def sequential_oracle(farm: Farm, matches: list[Match], now: datetime) -> tuple[list[tuple[Any, ...]], set[Any]]:
    """The rule, naively: conflicts settled on the farm as it was, then each winner in
    order checked on facts counted afresh from the farm as played so far."""
    winners = _ordered(_resolve_conflicts([m for m in matches if not m.policy.audit], Plan()))
    done: list[tuple[Any, ...]] = []
    superseded: set[Any] = set()
    with farm.scratch():
        for m in winners:
            fact = FactBuilder(farm, now).fact(m.kind, m.ident)
            if not holds(m.policy.when, fact):
                superseded.add((m.policy.name, m.kind, m.ident))
                continue
            reason = render_reason(m.policy.reason, fact, dict(m.policy.params))
            transitions, _refused = _play(farm, m, now, reason)
            done.extend((t.policy, t.kind, t.ident, t.action, t.from_state, t.to_state, t.reason) for t in transitions)
    return done, superseded


def _with_priorities(policies: list[Policy], data: st.DataObject) -> list[Policy]:
    out = []
    for p in policies:
        cited = " ".join(f"{{{path}}}" for path in sorted(paths(p.when))[:3])
        out.append(replace(p, priority=data.draw(st.sampled_from([40, 50, 60, 70])), reason=f"matched {{id}} {cited}"))
    return out


#: Policies that reach each other through the entities they share: a worker locked under
#: an instance or a frame that shows it, a job blocked or killed under its frames and its
#: dependents, frames requeued under their job's counts and their host's running count.
INTERACTING = """
policies:
  - {name: lock-any-up-host, kind: worker, when: {state: up}, actions: [block], reason: "{name}"}
  - {name: lock-busy-host, kind: worker, when: {frames_running: {gt: 0}}, actions: [block], reason: "{frames_running}"}
  - {name: block-on-up-host, kind: instance, when: {worker.state: up, state: [pending, running, failed]},
     actions: [block], reason: "{worker.state}"}
  - {name: lockout-requeue, kind: instance, when: {state: [pending, running, failed], host_failed_frames_on_job: {gt: 0}},
     actions: [{block: {requeue_failed: true}}], reason: "{host_failed_frames_on_job|frame}"}
  - {name: interrupt-on-up-host, kind: frame, when: {state: running, worker.state: up}, actions: [interrupt],
     reason: "{worker.frames_running}"}
  - {name: retry-while-running, kind: frame, when: {state: failed, job.state: [running, failing, retrying]},
     actions: [retry], reason: "{job.frames_failed}"}
  - {name: retry-dep-frames, kind: frame, when: {state: failed, dependencies.incomplete: 0}, actions: [retry],
     reason: "{dependencies.total}"}
  - {name: block-running-job, kind: job, when: {state: [running, failing, retrying]}, actions: [block],
     reason: "{frames_failed}"}
  - {name: kill-failing-job, kind: job, when: {state: [failing, failed], frames_failed: {gt: 0}}, actions: [kill],
     reason: "{frames_failed_percent}"}
  - {name: hold-on-killed-dep, kind: job, when: {dependencies.killed: 0, dependencies.total: {gt: 0}},
     actions: [block], reason: "{dependencies.killed}"}
  - {name: block-when-workers-left, kind: job, when: {workers_available: {gt: 0}, state: [pending, running, failing]},
     actions: [block], reason: "{workers_available}"}
  - {name: block-all-failing, kind: job, when: {failing_hosts: {gt: 0}, state: [running, failing]}, actions: [block],
     reason: "{failing_hosts|host}"}
"""
POOL = load_texts([("interacting.yaml", INTERACTING)])
assert POOL.ok, POOL.errors


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(farm=farms(), data=st.data())
def test_policies_that_reach_each_other_are_rechecked_as_a_fresh_count_would(farm: Farm, data: st.DataObject) -> None:
    if data.draw(st.booleans()):  # every host that runs something is a worker, up: reach is likelier
        for host in {e.host for j in farm.jobs.values() for e in [*j.frames.values(), *j.instances.values()] if e.host}:
            farm.workers.setdefault(host, Worker(host))
    chosen = data.draw(st.lists(st.sampled_from(POOL.policies), min_size=2, max_size=5, unique_by=lambda p: p.name))
    policies = [replace(p, priority=data.draw(st.sampled_from([40, 50, 60, 70]))) for p in chosen]
    _check_against_the_oracle(farm, policies)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(farm=farms(), policies=policy_sets(), data=st.data())
def test_the_planner_rechecks_exactly_as_checking_every_match_on_a_fresh_count(
        farm: Farm, policies: list[Policy], data: st.DataObject) -> None:
    _check_against_the_oracle(farm, _with_priorities(policies, data))


def _check_against_the_oracle(farm: Farm, policies: list[Policy]) -> None:
    # The farm as the store holds it: a finished frame given with no run has its result
    # stored as its one run (store.rows), which stays when an action requeues the frame;
    # counted afresh from an in-memory frame, that run would vanish with the frame's state.
    from corral.facts.aggregates import frame_runs

    for job in farm.jobs.values():
        for frame in job.frames.values():
            if not frame.runs:
                frame.runs = frame_runs(frame)
    builder = FactBuilder(farm, NOW)
    matches = find_matches(policies, builder, ReferenceEvaluator(policies))
    before = copy.deepcopy(farm)
    plan = make_plan(farm, matches, now=NOW, aggregates=builder.agg)
    expected, superseded = sequential_oracle(farm, matches, NOW)
    got = [(t.policy, t.kind, t.ident, t.action, t.from_state, t.to_state, t.reason) for t in plan.transitions]
    assert got == expected
    assert {(s.policy, s.kind, s.ident) for s in plan.refused if s.category == "superseded"} == superseded
    assert farm == before  # the scratch farm was put back
    assert builder.agg.job_frames == FactBuilder(farm, NOW).agg.job_frames  # and the counts with it


def _plan_with(farm: Farm, names_priorities: dict[str, int]) -> Plan:
    by_name = {p.name: p for p in POOL.policies}
    policies = [replace(by_name[n], priority=prio) for n, prio in names_priorities.items()]
    builder = FactBuilder(farm, NOW)
    return make_plan(farm, find_matches(policies, builder, ReferenceEvaluator(policies)), now=NOW,
                     aggregates=builder.agg)


def test_a_job_killed_this_cycle_reaches_the_jobs_that_depend_on_it() -> None:
    """kill-failing-job (70) kills job 1; hold-on-killed-dep (60) matched job 2 because
    none of its dependencies was killed, which is no longer true."""
    farm = Farm()
    upstream = Job(1, "up", state=JobState.FAILING)
    upstream.frames = {1: Frame(1, 1, FrameState.FAILED, host="h", exit_code=1)}
    down = Job(2, "down", depends_on=[1])
    down.frames = {1: Frame(2, 1)}
    farm.jobs = {1: upstream, 2: down}
    plan = _plan_with(farm, {"kill-failing-job": 70, "hold-on-killed-dep": 60})
    assert [(t.policy, t.ident) for t in plan.transitions] == [("kill-failing-job", "1")]
    (s,) = plan.refused
    assert (s.policy, s.ident, s.category) == ("hold-on-killed-dep", "2", "superseded")
    assert s.why.endswith("and now dependencies.killed is 1")
    # in the other order each acts: the hold first, then the kill
    plan = _plan_with(farm, {"kill-failing-job": 60, "hold-on-killed-dep": 70})
    assert [(t.policy, t.ident) for t in plan.transitions] == [("hold-on-killed-dep", "2"), ("kill-failing-job", "1")]


def test_a_job_failure_policy_sees_the_failures_a_lockout_requeued_in_the_same_cycle() -> None:
    """lockout-requeue (70) blocks the host's instance and requeues its failed frame; the
    job then has no failed frame, and kill-failing-job (60), which counted one, stands down."""
    farm = Farm()
    job = Job(1, "shot", state=JobState.FAILING)
    job.frames = {1: Frame(1, 1, FrameState.FAILED, host="bad", instance="1.b", exit_code=1,
                           runs=[FrameRun("bad", "1.b", FrameState.FAILED, 1, NOW, NOW)]),
                  2: Frame(1, 2, FrameState.RUNNING, host="good", instance="1.g")}
    job.instances = {"1.b": Instance("1.b", 1, "bad", InstanceState.RUNNING),
                     "1.g": Instance("1.g", 1, "good", InstanceState.RUNNING)}
    farm.jobs = {1: job}
    farm.workers = {"bad": Worker("bad"), "good": Worker("good")}
    plan = _plan_with(farm, {"lockout-requeue": 70, "kill-failing-job": 60})
    assert [(t.policy, t.kind, t.ident) for t in plan.transitions] == [("lockout-requeue", "instance", "1.b")]
    (s,) = [s for s in plan.refused if s.policy == "kill-failing-job"]
    assert s.category == "superseded" and s.why.endswith("and now state is running")  # its failure requeued


def test_a_plan_memo_never_reuses_a_part_another_part_reached() -> None:
    """A dry-running daemon plans the same matches cycle after cycle and reuses the parts
    that did not change; a part that another part's transition reached (a host locked
    under an instance that reads the host's state) is played again, with the same plan
    as a fresh one, every cycle."""
    from corral.plan import Found, PlanMemo, plan_found

    farm = Farm()
    for j, host in ((1, "h"), (2, "g")):
        job = Job(j, f"shot{j}", state=JobState.RUNNING)
        job.frames = {1: Frame(j, 1, FrameState.RUNNING, host=host, instance=f"{j}.a")}
        job.instances = {f"{j}.a": Instance(f"{j}.a", j, host, InstanceState.RUNNING)}
        farm.jobs[j] = job
    farm.workers = {"h": Worker("h"), "g": Worker("g")}
    by_name = {p.name: p for p in POOL.policies}
    policies = [replace(by_name["lock-any-up-host"], priority=70), replace(by_name["block-on-up-host"], priority=60)]
    builder = FactBuilder(farm, NOW)
    matches = find_matches(policies, builder, ReferenceEvaluator(policies))
    fresh = make_plan(farm, matches, now=NOW, aggregates=builder.agg)
    memo = PlanMemo()
    for _cycle in range(3):
        found = [Found(p, p.kind, [m.ident for m in matches if m.policy is p], lambda k, i: builder.fact(k, i))
                 for p in policies]
        plan = plan_found(farm, found, now=NOW, memo=memo, changed=set(), aggregates=builder.agg)
        assert [(t.policy, t.ident) for t in plan.transitions] == [(t.policy, t.ident) for t in fresh.transitions]
        assert [(s.policy, s.ident, s.category) for s in plan.refused] == [
            (s.policy, s.ident, s.category) for s in fresh.refused]
    assert {s.ident for s in fresh.refused if s.category == "superseded"} == {"1.a", "2.a"}
    # the lock is now in its cooldown: the instances' part did not change, but what reached
    # it did, so it is played again, and the instances are blocked after all
    locker = replace(policies[0], limits=Limits(cooldown=3600))
    found = [Found(locker, Kind.WORKER, ["g", "h"], lambda k, i: builder.fact(k, i)),
             Found(policies[1], Kind.INSTANCE, ["1.a", "2.a"], lambda k, i: builder.fact(k, i))]
    acted = {("lock-any-up-host", "worker", "h"): NOW, ("lock-any-up-host", "worker", "g"): NOW}
    plan = plan_found(farm, found, now=NOW, memo=memo, changed=set(), aggregates=builder.agg, last_actions=acted)
    assert [(t.policy, t.ident) for t in plan.transitions] == [("block-on-up-host", "1.a"), ("block-on-up-host", "2.a")]
