"""The durable_rules engine must find exactly the matches the reference evaluator finds.

The reference evaluator (`corral.policy.reference.holds`) is the meaning of the policy
language; the engine is a compiled, incremental, C-backed re-implementation of it.
These property tests generate farms and policies and compare the two, once on fresh
engines, once through YAML and the loader, and once incrementally over several
cycles of one long-lived engine.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.engine import RuleEngine
from corral.evaluate import ReferenceEvaluator
from corral.facts import MISSING, FactBuilder, get_path
from corral.policy.compiler import gate_of
from corral.policy.loader import load_texts
from corral.policy.model import Cmp, Policy
from corral.policy.reference import holds, predicate, value_test
from corral.states import Kind
from strategies import NOW, farms, mutate, policy_sets, policy_yaml

SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def _as_sets(result: dict[str, list[Any]]) -> dict[str, set[Any]]:
    return {name: set(ids) for name, ids in result.items()}


def assert_same_matches(engine: RuleEngine, policies: list[Policy], facts_by_kind: dict[Kind, list[dict[str, Any]]]) -> None:
    reference = ReferenceEvaluator(policies)
    for kind, facts in facts_by_kind.items():
        got = _as_sets(engine.evaluate(kind, facts))
        want = _as_sets(reference.evaluate(kind, facts))
        if got != want:
            by_id = {f["id"]: f for f in facts}
            diffs = []
            for name in sorted(set(got) | set(want)):
                policy = next(p for p in policies if p.name == name)
                for ident in sorted(got.get(name, set()) ^ want.get(name, set()), key=str):
                    diffs.append(f"{name}: {policy.when!r}\n  fact {by_id.get(ident)!r}\n"
                                 f"  engine={ident in got.get(name, set())} reference={ident in want.get(name, set())}")
            raise AssertionError("engine and reference disagree:\n" + "\n".join(diffs))


def _facts(farm: Any) -> dict[Kind, list[dict[str, Any]]]:
    builder = FactBuilder(farm, NOW)
    return {kind: builder.facts(kind) for kind in Kind}


@SETTINGS
@given(farm=farms(), policies=policy_sets())
def test_the_engine_matches_what_the_reference_evaluator_matches(farm: Any, policies: list[Policy]) -> None:
    engine = RuleEngine(policies)
    assert_same_matches(engine, policies, _facts(farm))
    assert engine.stats.collisions == 0


@SETTINGS
@given(farm=farms(), data=st.data())
def test_policies_written_in_yaml_load_as_generated_and_match_like_the_reference(farm: Any, data: Any) -> None:
    kind = data.draw(st.sampled_from(list(Kind)))
    texts, expected = [], []
    for i in range(data.draw(st.integers(1, 3))):
        text, policy = data.draw(policy_yaml(kind, f"y{i}"))
        texts.append((f"p{i}.yaml", text))
        expected.append(policy)
    result = load_texts(texts)
    assert result.errors == [], "\n".join(str(e) for e in result.errors) + "\n" + texts[0][1]
    assert [(p.name, p.when, p.params) for p in result.policies] == [(p.name, p.when, p.params) for p in expected]
    assert_same_matches(RuleEngine(result.policies), result.policies, {kind: FactBuilder(farm, NOW).facts(kind)})


@settings(SETTINGS, max_examples=60)
@given(farm=farms(), policies=policy_sets(), data=st.data())
def test_one_engine_stays_in_step_with_the_reference_as_the_farm_changes(farm: Any, policies: list[Policy], data: Any) -> None:
    engine = RuleEngine(policies)
    assert_same_matches(engine, policies, _facts(farm))
    for _ in range(data.draw(st.integers(1, 4))):
        farm = mutate(data.draw, farm)
        assert_same_matches(engine, policies, _facts(farm))
    assert engine.stats.collisions == 0


@settings(SETTINGS, max_examples=40)
@given(farm=farms(), policies=policy_sets(), data=st.data())
def test_an_engine_fed_unrelated_farms_in_turn_forgets_what_is_gone(farm: Any, policies: list[Policy], data: Any) -> None:
    engine = RuleEngine(policies)
    assert_same_matches(engine, policies, _facts(farm))
    for _ in range(2):
        farm = data.draw(farms())
        assert_same_matches(engine, policies, _facts(farm))


@SETTINGS
@given(farm=farms(), policies=policy_sets())
def test_compiled_conditions_decide_exactly_like_the_reference(farm: Any, policies: list[Policy]) -> None:
    """The adapter gates candidates with `predicate`; it must never disagree with `holds`."""
    facts = _facts(farm)
    for policy in policies:
        test = predicate(policy.when)
        for fact in facts[policy.kind]:
            assert test(fact) == holds(policy.when, fact), (policy.when, fact)


@SETTINGS
@given(farm=farms(), policies=policy_sets())
def test_a_screen_s_one_field_tests_decide_exactly_like_the_reference(farm: Any, policies: list[Policy]) -> None:
    """A screen probes an entity one field at a time (`Screen.admits`), each comparison
    of a gate compiled by `value_test` on the value found (MISSING where the fact has
    none): it must never disagree with `holds` on the fact."""
    facts = _facts(farm)
    for policy in policies:
        for cond in gate_of(policy.kind, policy.when):
            test = value_test(cond)
            for fact in facts[policy.kind]:
                assert test(get_path(fact, cond.path)) == holds(cond, fact), (cond, fact)
            assert test(MISSING) == holds(cond, {}), cond


@pytest.mark.parametrize("value", [0, 1, 2.5, True, False, "0"])
@pytest.mark.parametrize("actual", [0, 1, 1.0, 2.5, True, False, "0", None])
def test_compiled_equality_keeps_the_reference_rules_across_types(value: Any, actual: Any) -> None:
    """`eq` is compiled per type of value; a bool never equals a number, a missing field nothing."""
    cond = Cmp(path="x", op="eq", value=value)
    fact: dict[str, Any] = {} if actual is None else {"x": actual}
    assert predicate(cond)(fact) == holds(cond, fact)
    assert value_test(cond)(fact.get("x", MISSING)) == holds(cond, fact)
