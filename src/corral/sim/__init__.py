"""A farm simulator: a seeded, deterministic, discrete-event supervisor and its hosts,
writing to a corral store on a simulated clock, with corral's cycle or without it.

    from corral.sim import Scenario, compare
    result = compare(Scenario(seed=7, jobs=20, hosts=12, hours=4))
    print(result.with_corral.wasted_core_hours, result.baseline.wasted_core_hours)

docs/demo.md describes what it models and what it leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.policy.model import Policy
from corral.sim.report import Comparison, RunReport, Sample
from corral.sim.scenario import Night, NightHost, NightJob, Scenario, draw_night
from corral.sim.simulator import Progress, Simulation, builtin_policies, load_policies, open_farm, play

__all__ = [
    "Comparison",
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
    "open_farm",
    "play",
]


def compare(
    scenario: Scenario,
    *,
    url: str | None = None,
    policies: Sequence[Policy] | None = None,
    progress: Progress | None = None,
    baseline_progress: Progress | None = None,
) -> Comparison:
    """Play the scenario's night twice: with corral (on `url`, else a temporary store;
    `policies` default to the built-in pack) and without it (always a temporary store)."""
    night = draw_night(scenario)
    with_corral = play(night, url=url, policies=policies if policies is not None else builtin_policies(), progress=progress)
    baseline = play(night, policies=None, progress=baseline_progress)
    return Comparison(scenario.to_dict(), night.faults(), with_corral, baseline, db=url)
