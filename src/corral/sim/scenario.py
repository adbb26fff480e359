"""A simulated farm and its night: hosts, jobs with dependency chains, and the faults.

Everything random is drawn here, once, from `random.Random(seed)`: the simulator that
plays the night draws nothing, so the same scenario always plays the same night, with
corral or without it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

#: Cores of the simulated hosts (the unit of core-hours); speeds scale frame times.
HOST_CORES = (16, 32, 32, 64)


@dataclass(frozen=True)
class Scenario:
    """The knobs of a simulated night.  Defaults are the `corral demo` defaults."""

    seed: int = 1
    jobs: int = 40
    hosts: int = 30
    hours: float = 10.0
    #: Simulated seconds between two corral cycles (the daemon's interval).
    cycle_seconds: int = 60
    #: Frames per job, inclusive range.
    frames: tuple[int, int] = (40, 200)
    #: Minutes a frame takes on a host of speed 1.0, drawn per job, inclusive range.
    frame_minutes: tuple[float, float] = (3.0, 12.0)
    #: Jobs that depend on each other form chains of 1 to this many jobs.
    max_chain: int = 4
    #: Hours over which the chains are submitted (artists leaving for the night).
    submit_over_hours: float = 1.5
    retry_limit: int = 2
    #: Faults: share of hosts that fail every frame they touch (at least one when > 0),
    bad_host_share: float = 0.07
    #: share of jobs that fail on every host (at least one when > 0),
    broken_job_share: float = 0.05
    #: share of frames that fail their first attempt and render on a retry,
    flaky_frame_share: float = 0.03
    #: share of hosts that drop offline once during the night for 20 to 90 minutes.
    drop_host_share: float = 0.1
    #: Without corral, a wrangler checks in this often (hours) to release the jobs
    #: whose dependencies completed; 0 means never.
    wrangler_every_hours: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NightHost:
    name: str
    cores: int
    speed: float
    bad: bool = False
    #: (down_at, up_at) in simulated seconds from the start, if the host drops.
    drop: tuple[float, float] | None = None


@dataclass(frozen=True)
class NightJob:
    id: int
    name: str
    priority: int
    frames: int
    #: Seconds per frame on a host of speed 1.0, one per frame (frame n is durations[n-1]).
    durations: tuple[float, ...]
    submit_at: float
    chain: int
    depends_on: tuple[int, ...] = ()
    broken: bool = False
    flaky: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Night:
    """A scenario drawn: the hosts, the jobs and their chains."""

    scenario: Scenario
    hosts: tuple[NightHost, ...]
    jobs: tuple[NightJob, ...]
    chains: tuple[tuple[int, ...], ...]

    def faults(self) -> dict[str, Any]:
        """The injected faults, by name (what the report lists)."""
        return {
            "bad_hosts": [h.name for h in self.hosts if h.bad],
            "broken_jobs": [j.id for j in self.jobs if j.broken],
            "flaky_frames": sum(len(j.flaky) for j in self.jobs),
            "hosts_dropping": [h.name for h in self.hosts if h.drop is not None],
        }


def _pick(rng: random.Random, items: list[Any], share: float) -> set[Any]:
    if share <= 0 or not items:
        return set()
    count = max(1, round(len(items) * share))
    return set(rng.sample(items, min(count, len(items))))


def draw_night(scenario: Scenario) -> Night:
    """Draw the hosts, jobs, chains and faults of `scenario` (deterministic in its seed)."""
    if scenario.jobs < 1 or scenario.hosts < 1 or scenario.hours <= 0 or scenario.cycle_seconds <= 0:
        raise ValueError("a scenario needs at least one job, one host, some hours and a positive cycle interval")
    rng = random.Random(scenario.seed)  # noqa: S311 (a simulation, not cryptography)
    horizon = scenario.hours * 3600.0
    width = max(2, len(str(scenario.hosts)))
    names = [f"render{n:0{width}d}" for n in range(1, scenario.hosts + 1)]
    bad = _pick(rng, names, scenario.bad_host_share)
    # A bad host that also drops would hide the effect of either fault: keep them apart.
    dropping = _pick(rng, [n for n in names if n not in bad], scenario.drop_host_share)
    hosts = []
    for name in names:
        drop = None
        if name in dropping:
            down = rng.uniform(0.1, 0.8) * horizon
            drop = (down, down + rng.uniform(20, 90) * 60)
        hosts.append(NightHost(name, rng.choice(HOST_CORES), round(rng.uniform(0.6, 1.6), 2), name in bad, drop))

    # Chains: consecutive job ids, each job waiting on the one before it.
    sizes: list[int] = []
    left = scenario.jobs
    while left:
        size = min(left, rng.randint(1, max(1, scenario.max_chain)))
        sizes.append(size)
        left -= size
    ids = list(range(1, scenario.jobs + 1))
    broken = _pick(rng, ids, scenario.broken_job_share)
    steps = ("sim", "fx", "lighting", "comp")
    jobs: list[NightJob] = []
    chains: list[tuple[int, ...]] = []
    next_id = 1
    for chain, size in enumerate(sizes):
        submit_at = round(rng.uniform(0, scenario.submit_over_hours * 3600.0))
        members = tuple(range(next_id, next_id + size))
        chains.append(members)
        shot = f"shot{(chain + 1) * 10:03d}"
        for k, job_id in enumerate(members):
            count = rng.randint(*scenario.frames)
            base = rng.uniform(*scenario.frame_minutes) * 60.0
            durations = tuple(round(base * rng.uniform(0.8, 1.2), 1) for _ in range(count))
            flaky = frozenset(n for n in range(1, count + 1) if rng.random() < scenario.flaky_frame_share)
            jobs.append(
                NightJob(
                    id=job_id,
                    name=f"{shot}_{steps[k % len(steps)]}" + (f"{k // len(steps) + 1}" if k >= len(steps) else ""),
                    priority=rng.randint(3, 9) * 10,
                    frames=count,
                    durations=durations,
                    submit_at=submit_at,
                    chain=chain,
                    depends_on=(job_id - 1,) if k else (),
                    broken=job_id in broken,
                    flaky=flaky,
                )
            )
        next_id += size
    return Night(scenario, tuple(hosts), tuple(jobs), tuple(chains))
