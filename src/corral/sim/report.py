"""What a simulated night produced: one run's figures, and the comparison of two runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """The farm at one tick of the simulated clock (cumulative figures)."""

    hours: float
    frames_rendered: int
    failed_attempts: int
    wasted_core_hours: float
    actions: int
    busy_hosts: int
    jobs_completed: int


@dataclass
class RunReport:
    """One night, with corral or without.  Times are simulated hours from the start."""

    label: str
    jobs_total: int
    jobs_completed: int
    jobs_by_state: dict[str, int]
    frames_total: int
    frames_rendered: int
    #: Frame attempts that ended failed (on a bad host, a broken job, a flaky frame, a dropped host).
    failed_attempts: int
    #: Running frames corral took off their host (a job or instance block put them back to pending).
    frames_taken_off_hosts: int
    #: Core-hours spent on attempts that failed or were taken off their host.
    wasted_core_hours: float
    #: The same, by cause: bad_host, broken_job (first attempts of its frames), futile_retry
    #: (retries of frames of a broken job: they cannot succeed), flaky_frame, host_dropped,
    #: taken_off_host.
    wasted_by_cause: dict[str, float]
    #: Core-hours spent on frames that rendered.
    useful_core_hours: float
    chains_total: int
    chains_finished: int
    #: When the last dependency chain finished; None when some did not finish in the night.
    chains_finished_at: float | None
    chain_finish_hours: list[float | None]
    mean_chain_hours: float | None
    hosts_locked: list[str]
    actions_by_policy: dict[str, int]
    actions_by_kind: dict[str, int]
    action_times: list[tuple[float, str]]
    cycles: int
    cycle_ms_mean: float | None
    cycle_ms_max: float | None
    wall_seconds: float
    #: The farm manager whose own failure handling played the night (corral.sim.managers).
    manager: str = "none"
    manager_settings: dict[str, Any] = field(default_factory=dict)
    #: Jobs the manager released itself when their dependencies completed.
    manager_releases: int = 0
    #: Chains with no broken job (a perfect night finishes them all), and those finished, by index.
    healthy_chains_total: int = 0
    healthy_chains_finished: list[int] = field(default_factory=list)
    #: Decisions the ground truth says were wrong, by kind (corral.sim.audit.WRONG), and one line each.
    wrong_actions: dict[str, int] = field(default_factory=dict)
    wrong_action_lines: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def to_dict(self, *, samples: bool = False) -> dict[str, Any]:
        """JSON-ready; the timeline (`samples`, `action_times`) only when asked."""
        out = asdict(self)
        if not samples:
            out.pop("samples")
            out.pop("action_times")
        else:
            out["action_times"] = [list(a) for a in self.action_times]
        return out

    def deterministic(self) -> dict[str, Any]:
        """Everything that depends only on the scenario (not on the machine's speed)."""
        out = self.to_dict(samples=True)
        for key in ("cycle_ms_mean", "cycle_ms_max", "wall_seconds"):
            out.pop(key)
        return out


@dataclass
class Comparison:
    """The same night with the farm manager alone, with corral on top, and (optionally)
    with the ground-truth oracle on top: what `corral demo` reports."""

    scenario: dict[str, Any]
    faults: dict[str, Any]
    with_corral: RunReport
    baseline: RunReport
    db: str | None = None
    oracle: RunReport | None = None

    def savings(self) -> dict[str, Any]:
        w, b = self.with_corral, self.baseline
        return {
            "wasted_core_hours_saved": round(b.wasted_core_hours - w.wasted_core_hours, 2),
            "extra_frames_rendered": w.frames_rendered - b.frames_rendered,
            "extra_jobs_completed": w.jobs_completed - b.jobs_completed,
            "extra_chains_finished": w.chains_finished - b.chains_finished,
        }

    def ratios(self) -> dict[str, float | None]:
        """corral's waste over the baseline's and over the oracle's (None: nothing to divide by)."""
        w = self.with_corral.wasted_core_hours
        b = self.baseline.wasted_core_hours
        o = self.oracle.wasted_core_hours if self.oracle is not None else None
        return {
            "ratio_baseline": ratio(w, b),
            "ratio_oracle": ratio(w, o) if o is not None else None,
        }

    def to_dict(self, *, samples: bool = False) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "faults": self.faults,
            "db": self.db,
            "manager": self.baseline.manager,
            "with_corral": self.with_corral.to_dict(samples=samples),
            "baseline": self.baseline.to_dict(samples=samples),
            "oracle": self.oracle.to_dict(samples=samples) if self.oracle is not None else None,
            "difference": self.savings(),
            **self.ratios(),
        }


def ratio(a: float, b: float) -> float | None:
    """a / b rounded, None when b is 0 (and a is not: 0 / 0 is 1, both wasted nothing)."""
    if b <= 0:
        return 1.0 if a <= 0 else None
    return round(a / b, 3)
