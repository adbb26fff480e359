"""The simulator's books: the hosts, the jobs and the attempts running, as the simulated
supervisor keeps them (the store, when corral reads one, is told through supervisor news).

Shared by the simulator, the farm managers' handling and the oracle, which all read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.sim.scenario import NightHost, NightJob
from corral.states import FrameState


@dataclass(eq=False)
class Work:
    host: Host
    job: Job
    frame: int
    start: float
    end: float
    ok: bool
    exit_code: int
    #: Why it fails (None: it renders): bad_host, broken_job, futile_retry (a retry of a
    #: frame of a broken job), flaky_frame or host_dropped.
    cause: str | None = None


@dataclass(eq=False)
class Host:
    spec: NightHost
    up: bool = True
    locked: bool = False
    work: Work | None = None


@dataclass(eq=False)
class Job:
    spec: NightJob
    submitted: bool = False
    #: No hold and not blocked: the supervisor may dispatch its pending frames.
    open: bool = False
    states: dict[int, FrameState] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    complete: int = 0
    flaked: set[int] = field(default_factory=set)
    lockouts: set[str] = field(default_factory=set)
    #: Hosts kept away from each frame by corral (`retry: {avoid_failed_hosts: true}`).
    avoid: dict[int, frozenset[str]] = field(default_factory=dict)
    instances: set[str] = field(default_factory=set)
    #: Blocked by someone's decision (not just waiting on its dependencies).
    held: bool = False
    done_at: float | None = None
    #: Failed frames the manager put back to pending (the store sees them start again).
    requeued: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)
