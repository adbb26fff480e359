"""A farm simulator: a seeded, deterministic, discrete-event supervisor and its hosts,
writing to a corral store on a simulated clock, with corral's cycle or without it.

    from corral.sim import Scenario, compare
    result = compare(Scenario(seed=7, jobs=20, hosts=12, hours=4))
    print(result.with_corral.wasted_core_hours, result.baseline.wasted_core_hours, result.oracle.wasted_core_hours)

The baseline is a farm manager's own failure handling (`corral.sim.managers`, Qube!'s by
default); corral and the oracle (`corral.sim.oracle`) play on top of the same manager.

docs/demo.md describes what it models and what it leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.policy.model import Policy
from corral.sim.managers import DEFAULT_BASELINE, HANDLINGS, REAL_BASELINES, Handling, make_handling
from corral.sim.report import Comparison, RunReport, Sample
from corral.sim.scenario import Night, NightHost, NightJob, Scenario, draw_night
from corral.sim.simulator import Progress, Simulation, builtin_policies, load_policies, open_farm, play

__all__ = [
    "DEFAULT_BASELINE",
    "HANDLINGS",
    "REAL_BASELINES",
    "Comparison",
    "Handling",
    "Night",
    "NightHost",
    "NightJob",
    "Progress",
    "RunReport",
    "Sample",
    "Scenario",
    "Simulation",
    "builtin_policies",
    "compare",
    "draw_night",
    "load_policies",
    "make_handling",
    "open_farm",
    "play",
]


def compare(
    scenario: Scenario,
    *,
    url: str | None = None,
    policies: Sequence[Policy] | None = None,
    baseline: str = DEFAULT_BASELINE,
    oracle: bool = True,
    progress: Progress | None = None,
    baseline_progress: Progress | None = None,
    oracle_progress: Progress | None = None,
) -> Comparison:
    """Play the scenario's night with the `baseline` farm manager alone, with corral on top
    (on `url`, else a temporary store; `policies` default to the built-in pack) and, with
    `oracle`, with the ground-truth oracle on top (always temporary stores)."""
    night = draw_night(scenario)
    pack = policies if policies is not None else builtin_policies()
    with_corral = play(night, url=url, policies=pack, handling=baseline, progress=progress)
    base = play(night, policies=None, handling=baseline, progress=baseline_progress)
    best = play(night, policies=None, handling=baseline, oracle=True, progress=oracle_progress) if oracle else None
    return Comparison(scenario.to_dict(), night.faults(), with_corral, base, db=url, oracle=best)
