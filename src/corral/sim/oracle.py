"""The oracle: a wrangler who knows the simulator's ground truth, the floor corral chases.

At every cycle it acts on what failed since the last one, with the same delay as
corral (the failure reaches the store at that tick): it quarantines a host the truth
says is bad, blocks a job the truth says is broken, retries a failed frame of a
healthy job (within its retry limit) that the farm manager left failed, and releases
the jobs whose dependencies completed when the manager does not.  What it cannot
avoid (a flaky frame's first attempt, the first failure of each bad host and broken
job, a host dropping) is the waste no policy can avoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from corral.ports import Proposal
from corral.sim.books import Work
from corral.sim.scenario import Scenario
from corral.states import Action, FrameState, Kind

ORACLE_ACTOR = "user:oracle"


class OracleFarm(Protocol):
    """What the oracle reads and does on the simulated farm (`Simulation` is one)."""

    scenario: Scenario
    fresh_failures: list[Work]

    def apply(self, proposals: Sequence[Proposal], *, label: str) -> None: ...


class Oracle:
    def __init__(self, sim: OracleFarm) -> None:
        self.sim = sim
        self.locked: set[str] = set()
        self.blocked: set[int] = set()
        self.retries: dict[tuple[int, int], int] = {}

    def act(self) -> None:
        sim = self.sim
        limit = sim.scenario.retry_limit
        hosts: list[Proposal] = []
        jobs: list[Proposal] = []
        frames: list[Proposal] = []
        seen: set[tuple[int, int]] = set()
        for work in sim.fresh_failures:
            host, job, frame = work.host.spec, work.job, work.frame
            if host.bad and host.name not in self.locked:
                self.locked.add(host.name)
                hosts.append(Proposal(Kind.WORKER, host.name, Action.BLOCK, reason="ground truth: a bad host"))
            if job.spec.broken:
                if job.spec.id not in self.blocked:
                    self.blocked.add(job.spec.id)
                    jobs.append(Proposal(Kind.JOB, str(job.spec.id), Action.BLOCK, reason="ground truth: a broken job"))
                continue
            key = (job.spec.id, frame)
            if key in seen or job.states.get(frame) is not FrameState.FAILED or self.retries.get(key, 0) >= limit:
                continue
            seen.add(key)
            self.retries[key] = self.retries.get(key, 0) + 1
            frames.append(Proposal(Kind.FRAME, f"{job.spec.id}:{frame}", Action.RETRY, reason="ground truth: a healthy frame"))
        sim.apply([*hosts, *jobs, *frames], label="oracle")
