"""The durable_rules adapter: the engine's hazards, handled where a user would notice them."""

from __future__ import annotations

import json
from typing import Any

import pytest

import corral.engine as engine_module
from corral.engine import RuleEngine
from corral.policy.compiler import MAX_GROUPS, compile_kind
from corral.policy.model import ActionSpec, All, AnyOf, Cmp, Cond, Not, Policy
from corral.policy.reference import holds
from corral.states import Action, Kind


def job_policy(name: str, when: Cond, kind: Kind = Kind.JOB) -> Policy:
    return Policy(name, kind, when, (ActionSpec(Action.KILL if kind is not Kind.WORKER else Action.BLOCK),), "r")


FAILED = job_policy("failed", Cmp("state", "eq", "failed"))
OLD = job_policy("old", Cmp("age", "gt", 3600.0))


def job(ident: int, **fields: Any) -> dict[str, Any]:
    return {"id": ident, "state": "running", **fields}


def test_a_fact_that_matches_no_rule_does_not_raise() -> None:
    engine = RuleEngine([FAILED])
    assert engine.evaluate(Kind.JOB, [job(1), job(2, state="complete")]) == {"failed": []}


def test_a_kind_without_policies_is_answered_with_nothing() -> None:
    engine = RuleEngine([FAILED])
    assert engine.evaluate(Kind.WORKER, [{"id": "r01", "state": "up"}]) == {}


def test_a_fact_that_changes_between_evaluations_updates_its_matches() -> None:
    engine = RuleEngine([FAILED, OLD])
    assert engine.evaluate(Kind.JOB, [job(1), job(2, age=10.0)]) == {"failed": [], "old": []}
    assert engine.evaluate(Kind.JOB, [job(1, state="failed"), job(2, age=7200.0)]) == {"failed": [1], "old": [2]}
    # unchanged facts keep their matches (the engine fires on change only)
    assert engine.evaluate(Kind.JOB, [job(1, state="failed"), job(2, age=7200.0)]) == {"failed": [1], "old": [2]}
    assert engine.stats.unchanged == 2
    # and a match goes away when the fact stops meeting the condition
    assert engine.evaluate(Kind.JOB, [job(1, state="complete"), job(2, age=7200.0)]) == {"failed": [], "old": [2]}


def test_a_fact_no_longer_passed_is_retracted_and_drops_out() -> None:
    engine = RuleEngine([FAILED])
    assert engine.evaluate(Kind.JOB, [job(1, state="failed"), job(2, state="complete")]) == {"failed": [1]}
    assert engine.evaluate(Kind.JOB, [job(2, state="failed")]) == {"failed": [2]}
    assert engine.evaluate(Kind.JOB, []) == {"failed": []}
    assert engine.stats.retracted == 1  # job 2 took over job 1's engine fact; it went when job 2 went
    # and it can come back
    assert sorted(engine.evaluate(Kind.JOB, [job(1, state="failed"), job(2, state="failed")])["failed"]) == [1, 2]


def test_entities_with_the_same_content_share_one_engine_fact() -> None:
    """The engine is asked once per distinct content: its cost and memory follow the
    variety of the farm, not its size."""
    engine = RuleEngine([FAILED, job_policy("high", Cmp("priority", "gt", 50))])
    facts = [job(i, state="failed" if i % 2 else "running", priority=90 if i % 3 else 10) for i in range(1, 1001)]
    found = engine.evaluate(Kind.JOB, facts)
    assert sorted(found["failed"]) == [f["id"] for f in facts if f["state"] == "failed"]
    assert sorted(found["high"]) == [f["id"] for f in facts if f["priority"] > 50]
    candidates = [f for f in facts if f["state"] == "failed" or f["priority"] > 50]  # the rest fail both gates
    assert engine.stats.asserted == 3 and engine.stats.shared == len(candidates) - 3
    # one member changing moves it to another shared fact; the others keep theirs
    facts[0] = job(1, state="complete", priority=90)
    found = engine.evaluate(Kind.JOB, facts)
    assert 1 not in found["failed"] and 1 in found["high"]
    assert engine.stats.retracted == 0


def test_a_bool_and_an_int_never_share_a_fact() -> None:
    engine = RuleEngine([job_policy("one", Cmp("retries", "eq", 1))])
    assert engine.evaluate(Kind.JOB, [job(1, retries=True), job(2, retries=1)]) == {"one": [2]}


def test_an_id_collision_is_decided_by_the_reference_evaluator_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = RuleEngine([FAILED, OLD])
    real = engine_module._assert_native
    collide = {"on": True}

    def colliding(handle: int, payload: str) -> tuple[int, int]:
        if collide["on"] and json.loads(payload).get("state") == "failed":
            return 2, 0  # what the engine answers when the fact's 32-bit identity is taken
        return real(handle, payload)

    monkeypatch.setattr(engine_module, "_assert_native", colliding)
    old = {"age": 7200.0}
    assert engine.evaluate(Kind.JOB, [job(1, state="failed", **old), job(2, state="failed"), job(3)]) == {
        "failed": [1, 2], "old": [1]}
    assert engine.stats.collisions == 2  # two contents (old and young) collided
    # the colliding facts follow the farm like any other
    assert engine.evaluate(Kind.JOB, [job(1, state="failed"), job(2, state="complete")]) == {"failed": [1], "old": []}
    collide["on"] = False
    assert engine.evaluate(Kind.JOB, [job(1, state="failed"), job(2, state="failed")]) == {"failed": [1, 2], "old": []}
    assert engine.evaluate(Kind.JOB, [job(1, state="failed")]) == {"failed": [1], "old": []}
    assert engine.stats.collisions == 2


def test_two_engines_with_the_same_policies_do_not_share_a_ruleset_name() -> None:
    first, second = RuleEngine([FAILED]), RuleEngine([FAILED])
    assert first.generation != second.generation
    assert first.evaluate(Kind.JOB, [job(1, state="failed")]) == {"failed": [1]}
    assert second.evaluate(Kind.JOB, [job(1, state="failed")]) == {"failed": [1]}


def test_policies_of_every_kind_live_side_by_side() -> None:
    engine = RuleEngine([FAILED, job_policy("locked", Cmp("state", "eq", "locked"), Kind.WORKER)])
    assert engine.kinds() == [Kind.JOB, Kind.WORKER]
    assert engine.evaluate(Kind.WORKER, [{"id": "r01", "state": "locked"}]) == {"locked": ["r01"]}
    assert engine.evaluate(Kind.JOB, [job(1, state="failed")]) == {"failed": [1]}


def test_the_engine_is_sent_only_the_fields_its_policies_read() -> None:
    engine = RuleEngine([FAILED, OLD])
    assert engine.paths(Kind.JOB) == {"state"}  # age is a duration: a probe stands for it
    assert engine.paths(Kind.FRAME) == set()


def _wide(n: int) -> Cond:
    """n conditions that each cost the engine an $or group."""
    return All(tuple(Cmp("state", "in", ("running", "failed")) if i % 2 else Not(Cmp("retries", "eq", i))
                     for i in range(n)))


@pytest.mark.parametrize("n", [MAX_GROUPS - 1, MAX_GROUPS, MAX_GROUPS + 1, 40])
def test_a_policy_with_many_conditions_still_works(n: int) -> None:
    policy = job_policy("wide", _wide(n))
    facts = [job(1, retries=99), job(2, state="complete", retries=99), job(3, retries=0)]
    engine = RuleEngine([policy])
    assert engine.evaluate(Kind.JOB, facts) == {"wide": [f["id"] for f in facts if holds(policy.when, f)]} == {"wide": [1]}


def test_nested_groups_of_the_same_kind_are_flattened() -> None:
    nested = All((All((Cmp("retries", "eq", 1), AnyOf((Cmp("state", "eq", "failed"), AnyOf((Cmp("priority", "gt", 1),)))))),))
    compiled = compile_kind(Kind.JOB, [job_policy("n", nested)])
    assert compiled.probes == []
    pattern = compiled.rules["n"]["$and"][1]
    assert pattern == {"$and": [{"retries": 1}, {"$or": [{"state": "failed"}, {"$gt": {"priority": 1}}]}]}


def test_regex_conditions_are_probes_computed_before_the_fact_is_asserted() -> None:
    policy = job_policy("shots", Not(Cmp("name", "regex", r"^shot\d+")))
    engine = RuleEngine([policy])
    found = engine.evaluate(Kind.JOB, [job(1, name="shot010"), job(2, name="asset"), job(3)])
    assert sorted(found["shots"]) == [2, 3]
