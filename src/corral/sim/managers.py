"""The farm managers' own failure handling, as the simulated supervisor plays it.

A studio runs corral on top of a farm manager that already retries frames, avoids hosts
and gives up on jobs by itself; a fair baseline is that manager at its documented
defaults, and corral's run is the same manager with corral's pack on top.  Each manager
is a `Handling`: the simulator tells it what ended (`failed`, `rendered`) and asks it
which host may take which job (`admits`, `frame_for`); it answers by requeueing frames
(`FarmView.requeue`) and keeping its own lists.  Its decisions stay inside the manager,
as they do on a real farm: corral sees their effect (a failed frame starting again, a
host that stops taking a job), not a transition in its log.

`HANDLINGS` is the registry `corral demo --baseline` and bench/outcome_bench.py choose
from; docs/demo.md cites the source of every default.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from corral.sim.books import Job as _Job
from corral.sim.books import Work as _Work


class Admit(IntEnum):
    """May this host take frames of this job?  LAST: only when no other job has work for it."""

    YES = 0
    LAST = 1
    NO = 2


class FarmView(Protocol):
    """What a manager's handling may see and do on the simulated farm."""

    @property
    def now(self) -> float: ...

    def requeue(self, job: _Job, frame: int, delay: float = 0.0) -> None:
        """Put a failed frame back to pending (after `delay` simulated seconds)."""

    def running(self, job: _Job) -> list[str]:
        """The hosts running a frame of `job` now."""


def first_pending(job: _Job, host: str | None = None) -> int | None:
    """The lowest pending frame of `job` that `host` is not kept away from (by corral)."""
    if not job.avoid or host is None:
        return min(job.pending) if job.pending else None
    return min((f for f in job.pending if host not in job.avoid.get(f, ())), default=None)


class Handling:
    """No failure handling at all: failed frames stay failed, dependents wait for a person.

    The base of the others: each hook does nothing."""

    name = "none"
    title = "no handling (a supervisor that only dispatches)"
    #: The manager releases a job when the jobs it depends on complete (all three real ones do).
    releases_dependents = False

    def __init__(self) -> None:
        self.farm: FarmView | None = None

    def attach(self, farm: FarmView) -> None:
        self.farm = farm

    @property
    def now(self) -> float:
        assert self.farm is not None, "attach the handling to a simulation first"
        return self.farm.now

    def failed(self, work: _Work) -> None:
        """A frame attempt ended failed (any cause, a host dropping included)."""

    def rendered(self, work: _Work) -> None:
        """A frame attempt rendered."""

    def admits(self, host: str, job: _Job) -> Admit:
        return Admit.YES

    def frame_for(self, host: str, job: _Job) -> int | None:
        """The frame of `job` this host takes next (None: none it may take)."""
        return first_pending(job, host)

    def stopped(self, job: _Job) -> bool:
        """The manager gave up on the job (failed it, blocked it): it dispatches none of it."""
        return False

    def describe(self) -> dict[str, object]:
        """The settings in force (for the report)."""
        return {}


class Afanasy(Handling):
    """CGRU Afanasy's block settings at their defaults (afanasy-notes.md, observed on 3.4.1).

    A failed task goes back to ready until its errors pass `errors_retries`; after
    `errors_task_same_host` errors of one task on one host, that task avoids the host;
    after `errors_avoid_host` errors of the job on one host, the job avoids the host;
    error entries older than `errors_forgive_time` are forgiven.  With `sick_errors_count`
    (off by default: a pool setting) a host that fails tasks of that many different users
    in a row is sick and gets no work (a chain is one artist here).
    """

    name = "afanasy"
    title = "Afanasy (CGRU) at its defaults"
    releases_dependents = True

    def __init__(
        self,
        *,
        errors_retries: int = 3,
        errors_avoid_host: int = 3,
        errors_task_same_host: int = 3,
        errors_forgive_time: float = 5 * 3600.0,
        sick_errors_count: int = 0,
    ) -> None:
        super().__init__()
        self.errors_retries = errors_retries
        self.errors_avoid_host = errors_avoid_host
        self.errors_task_same_host = errors_task_same_host
        self.errors_forgive_time = errors_forgive_time
        self.sick_errors_count = sick_errors_count
        #: job id -> host -> times of its errors there (the job's "error hosts").
        self.error_hosts: dict[int, dict[str, list[float]]] = defaultdict(dict)
        self.task_errors: dict[tuple[int, int], int] = defaultdict(int)
        self.task_host_errors: dict[tuple[int, int, str], int] = defaultdict(int)
        #: (job id, host) -> frames that host may no longer take.
        self.task_avoid: dict[tuple[int, str], set[int]] = {}
        #: host -> the distinct users whose tasks it failed in a row.
        self.error_users: dict[str, list[int]] = defaultdict(list)
        self.sick: set[str] = set()

    def failed(self, work: _Work) -> None:
        job, frame, host = work.job, work.frame, work.host.spec.name
        self.error_hosts[job.spec.id].setdefault(host, []).append(self.now)
        key = (job.spec.id, frame)
        self.task_errors[key] += 1
        self.task_host_errors[(*key, host)] += 1
        if self.task_host_errors[(*key, host)] >= self.errors_task_same_host:
            self.task_avoid.setdefault((job.spec.id, host), set()).add(frame)
        if self.sick_errors_count > 0:
            users = self.error_users[host]
            if job.spec.chain not in users:
                users.append(job.spec.chain)
            if len(users) >= self.sick_errors_count:
                self.sick.add(host)
        if self.task_errors[key] <= self.errors_retries and self.farm is not None:
            self.farm.requeue(job, frame)

    def rendered(self, work: _Work) -> None:
        self.error_users.pop(work.host.spec.name, None)

    def errors_of(self, host: str, job_id: int) -> int:
        """The host's unforgiven errors on the job (forgiving the old ones as it counts)."""
        times = self.error_hosts.get(job_id, {}).get(host)
        if not times:
            return 0
        horizon = self.now - self.errors_forgive_time
        if times[0] <= horizon:
            times[:] = [t for t in times if t > horizon]
        return len(times)

    def admits(self, host: str, job: _Job) -> Admit:
        if host in self.sick:
            return Admit.NO
        if self.errors_of(host, job.spec.id) >= self.errors_avoid_host:
            return Admit.NO
        return Admit.YES

    def frame_for(self, host: str, job: _Job) -> int | None:
        avoided = self.task_avoid.get((job.spec.id, host))
        if not avoided:
            return first_pending(job, host)
        return min((f for f in job.pending if f not in avoided and host not in job.avoid.get(f, ())), default=None)

    def describe(self) -> dict[str, object]:
        return {
            "errors_retries": self.errors_retries,
            "errors_avoid_host": self.errors_avoid_host,
            "errors_task_same_host": self.errors_task_same_host,
            "errors_forgive_time_hours": self.errors_forgive_time / 3600.0,
            "sick_errors_count": self.sick_errors_count,
        }


class Deadline(Handling):
    """Thinkbox Deadline 10's failure detection at its defaults.

    An errored task is requeued; a job fails after `job_error_limit` errors (100) and gets
    no more work; a worker that reports `bad_worker_errors` errors in a row on a job goes
    on the job's bad list and takes that job only when it has no other job available.
    """

    name = "deadline"
    title = "Deadline 10 at its defaults"
    releases_dependents = True

    def __init__(self, *, job_error_limit: int = 100, bad_worker_errors: int = 5) -> None:
        super().__init__()
        self.job_error_limit = job_error_limit
        self.bad_worker_errors = bad_worker_errors
        self.errors: dict[int, int] = defaultdict(int)
        self.in_a_row: dict[tuple[int, str], int] = defaultdict(int)
        self.bad: dict[int, set[str]] = defaultdict(set)
        self.failed_jobs: set[int] = set()

    def failed(self, work: _Work) -> None:
        job_id, host = work.job.spec.id, work.host.spec.name
        self.errors[job_id] += 1
        if self.job_error_limit > 0 and self.errors[job_id] >= self.job_error_limit:
            self.failed_jobs.add(job_id)
        self.in_a_row[(job_id, host)] += 1
        if self.in_a_row[(job_id, host)] >= self.bad_worker_errors:
            self.bad[job_id].add(host)
        if job_id not in self.failed_jobs and self.farm is not None:
            self.farm.requeue(work.job, work.frame)

    def rendered(self, work: _Work) -> None:
        self.in_a_row.pop((work.job.spec.id, work.host.spec.name), None)

    def admits(self, host: str, job: _Job) -> Admit:
        if job.spec.id in self.failed_jobs:
            return Admit.NO
        return Admit.LAST if host in self.bad.get(job.spec.id, ()) else Admit.YES

    def stopped(self, job: _Job) -> bool:
        return job.spec.id in self.failed_jobs

    def describe(self) -> dict[str, object]:
        return {"job_error_limit": self.job_error_limit, "bad_worker_errors": self.bad_worker_errors}


class Qube(Handling):
    """PipelineFX Qube!: frame retries (`retrywork`, `retryworkdelay`) and its auto-wrangling.

    Auto-wrangling looks at a host once it has failed more than `aw_activation_work_count`
    frames of a job and completed none: when others complete frames of the job, the host is
    locked out of the job and its failed frames go back to pending; when nothing completed
    and every other host running the job has failed it too, the job is blocked; when others
    run it without failing, the host is locked out; when no other host runs it, the job
    migrates (the host is locked out) up to `aw_job_migrate_max` times, then it is blocked.
    """

    name = "qube"
    title = "Qube! with retrywork and auto-wrangling"
    releases_dependents = True

    def __init__(
        self,
        *,
        retrywork: int = 3,
        retryworkdelay: float = 60.0,
        aw_activation_work_count: int = 5,
        aw_job_migrate_max: int = 3,
    ) -> None:
        super().__init__()
        self.retrywork = retrywork
        self.retryworkdelay = retryworkdelay
        self.aw_activation_work_count = aw_activation_work_count
        self.aw_job_migrate_max = aw_job_migrate_max
        self.retried: dict[tuple[int, int], int] = defaultdict(int)
        self.failures: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.completed: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.locked_out: dict[int, set[str]] = defaultdict(set)
        self.migrations: dict[int, int] = defaultdict(int)
        self.blocked: set[int] = set()

    def failed(self, work: _Work) -> None:
        job, frame, host = work.job, work.frame, work.host.spec.name
        job_id = job.spec.id
        self.failures[job_id][host].append(frame)
        if job_id in self.blocked or self.farm is None:
            return
        key = (job_id, frame)
        if self.retried[key] < self.retrywork:
            self.retried[key] += 1
            self.farm.requeue(job, frame, self.retryworkdelay)
        self._wrangle(job, host)

    def rendered(self, work: _Work) -> None:
        self.completed[work.job.spec.id][work.host.spec.name] += 1

    def _wrangle(self, job: _Job, host: str) -> None:
        job_id = job.spec.id
        failed_here = self.failures[job_id][host]
        completed = self.completed[job_id]
        if len(failed_here) <= self.aw_activation_work_count or completed.get(host, 0) or host in self.locked_out[job_id]:
            return
        if any(n for h, n in completed.items() if h != host):
            self._lock_out(job, host)  # others complete its frames: the host is at fault
            return
        assert self.farm is not None
        running = [h for h in self.farm.running(job) if h != host]
        if running:
            if all(self.failures[job_id].get(h) for h in running):
                self.blocked.add(job_id)  # every host running it fails it: the job is at fault
            else:
                self._lock_out(job, host)
        elif self.migrations[job_id] < self.aw_job_migrate_max:
            self.migrations[job_id] += 1  # the only host that ran it: try the job elsewhere
            self._lock_out(job, host)
        else:
            self.blocked.add(job_id)

    def _lock_out(self, job: _Job, host: str) -> None:
        """Lock the host out of the job and put the frames it failed back to pending."""
        self.locked_out[job.spec.id].add(host)
        if self.farm is not None:
            for frame in sorted(set(self.failures[job.spec.id][host])):
                self.farm.requeue(job, frame)

    def admits(self, host: str, job: _Job) -> Admit:
        if job.spec.id in self.blocked or host in self.locked_out.get(job.spec.id, ()):
            return Admit.NO
        return Admit.YES

    def stopped(self, job: _Job) -> bool:
        return job.spec.id in self.blocked

    def describe(self) -> dict[str, object]:
        return {
            "retrywork": self.retrywork,
            "retryworkdelay_seconds": self.retryworkdelay,
            "aw_activation_work_count": self.aw_activation_work_count,
            "aw_job_migrate_max": self.aw_job_migrate_max,
        }


@dataclass(frozen=True)
class HandlingSpec:
    name: str
    title: str
    make: Callable[[], Handling]


#: The managers a night can be played with, by name.  A new one is a `Handling` subclass
#: and a line here.
HANDLINGS: dict[str, HandlingSpec] = {
    h.name: HandlingSpec(h.name, h.title, h) for h in (Qube, Afanasy, Deadline, Handling)
}
#: The sim's states and actions are Qube!'s (job-states.md): the closest manager to its farm.
DEFAULT_BASELINE = "qube"
REAL_BASELINES = ("qube", "afanasy", "deadline")


def make_handling(name: str) -> Handling:
    spec = HANDLINGS.get(name)
    if spec is None:
        raise ValueError(f"no farm manager called {name!r}: choose one of {', '.join(HANDLINGS)}")
    return spec.make()
