"""bench/cycle_bench.py's python floor is the built-in pack written by hand: it must match
what the pack matches, or `ratio_python` measures corral against less work than it does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from bench_scripts import load_bench
from corral.evaluate import ReferenceEvaluator
from corral.facts import FactBuilder
from corral.policy.loader import builtin_dir, load_paths
from corral.policytest.reader import read_test_file
from corral.states import Kind
from strategies import NOW, farms

CYCLE_BENCH = load_bench("cycle_bench")
PACK = load_paths([builtin_dir()]).policies


def _both(farm: Any, at: Any) -> tuple[dict[str, int], dict[str, int]]:
    """(the floor's matches per policy, the reference evaluator's) over every fact of the farm."""
    builder = FactBuilder(farm, at)
    facts = {kind: builder.facts(kind) for kind in Kind}
    reference = ReferenceEvaluator(PACK)
    expected: dict[str, int] = {}
    for kind, kind_facts in facts.items():
        expected.update({name: len(ids) for name, ids in reference.evaluate(kind, kind_facts).items()})
    floor = CYCLE_BENCH.floor_matches({str(kind): kind_facts for kind, kind_facts in facts.items()})
    return floor, expected


def test_the_floor_covers_every_policy_of_the_pack() -> None:
    assert set(CYCLE_BENCH.floor_matches({str(k): [] for k in Kind})) == {p.name for p in PACK}


@pytest.mark.parametrize("seed", [1, 7])
def test_the_floor_matches_what_the_pack_matches_on_the_benchmark_s_farm(seed: int) -> None:
    floor, expected = _both(CYCLE_BENCH.make_farm(3000, seed), CYCLE_BENCH.NOW)
    assert floor == expected
    assert sum(expected.values()) > 0  # (a farm nothing matches would hold the floor to nothing)


def _pack_cases() -> list[Any]:
    """Every farm of the pack's own test cases (rules/*.test.yaml), at each step's time:
    farms made to match each policy of the pack, and to just miss it."""
    found = []
    for path in sorted(builtin_dir().glob("*.test.yaml")):
        test, errors = read_test_file(path, engine="reference")
        assert test is not None and not errors, errors
        for case in test.cases:
            found.append(pytest.param(case.farm, case.steps[0].at, id=f"{path.name}: {case.name}"))
    return found


@pytest.mark.parametrize(("farm", "at"), _pack_cases())
def test_the_floor_matches_what_the_pack_matches_on_the_pack_s_own_test_farms(farm: Any, at: Any) -> None:
    floor, expected = _both(farm, at)
    assert floor == expected


def test_the_pack_s_test_farms_make_every_policy_of_it_match() -> None:
    """(so the test above holds every condition of the floor to the pack's)"""
    matched = {name for p in _pack_cases() for name, n in _both(*p.values)[1].items() if n}
    assert matched == {p.name for p in PACK}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(farm=farms())
def test_the_floor_matches_what_the_pack_matches_on_any_farm(farm: Any) -> None:
    floor, expected = _both(farm, NOW)
    assert floor == expected
