"""A past for tonight's hosts: the store a farm's corral reads after weeks of work.

`Simulation` plays a night on an empty store, where no host has rendered anything before
the night starts.  A studio's store holds every host's completed frames and a few of its
failures, and the facts counted over that history read them: `frames_completed`,
`failing_hosts_healthy_elsewhere` (a failing host that completed frames of other jobs),
`failing_hosts_only_here` (a failing host that failed no other job).  `previous_day` writes
such a past, so a pack can be measured on the nights a real farm has: every host of
tonight, the bad ones too (they turned bad since: a broken driver, a full disk), rendered
frames of yesterday's jobs, and some of them failed one (a flaky frame another host then
completed).  Tonight's ground truth is untouched, so the wrong actions are judged as on
an empty store.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from corral.farm import Farm, Frame, FrameRun, Job, Worker
from corral.sim.scenario import Night
from corral.states import FrameState, JobState, WorkerState

#: Yesterday's jobs are numbered from here, clear of a night's (1 to a few hundred).
FIRST_JOB = 1_000_000


def previous_day(night: Night, start: datetime, *, jobs: int = 10, frames_per_host: int = 8,
                 failed_share: float = 0.1) -> Farm:
    """Yesterday on tonight's hosts, ending 12 hours before `start` (outside every window
    a policy counts): `jobs` complete jobs whose frames each host rendered
    `frames_per_host` of, and `failed_share` of those frames failed once on another host
    first; each host's last attempt of the day completed.  Seeded by the night, so a
    seed's past is the same in every run."""
    rng = random.Random(f"history-{night.scenario.seed}")  # noqa: S311 (a simulation, not cryptography)
    hosts = [h.name for h in night.hosts]
    end = start - timedelta(hours=12)
    farm = Farm(workers={h: Worker(h, WorkerState.UP, end - timedelta(days=30)) for h in hosts})
    old = [Job(FIRST_JOB + n, f"yesterday_{n:02d}", state=JobState.COMPLETE, submitted_at=end - timedelta(hours=14),
               state_since=end) for n in range(jobs)]
    for job in old:
        farm.jobs[job.id] = job
    numbers = dict.fromkeys((job.id for job in old), 0)
    for host in hosts * frames_per_host:
        job = old[rng.randrange(jobs)]
        numbers[job.id] += 1
        finished = end - timedelta(minutes=rng.uniform(1, 600))
        runs = []
        if rng.random() < failed_share and len(hosts) > 1:
            other = hosts[(hosts.index(host) + 1 + rng.randrange(len(hosts) - 1)) % len(hosts)]
            failed_at = finished - timedelta(minutes=10)
            runs.append(FrameRun(other, None, FrameState.FAILED, 1, failed_at - timedelta(minutes=8), failed_at))
        runs.append(FrameRun(host, None, FrameState.COMPLETE, 0, finished - timedelta(minutes=8), finished))
        job.frames[numbers[job.id]] = Frame(job.id, numbers[job.id], FrameState.COMPLETE, host=host, exit_code=0,
                                            attempts=len(runs), started_at=finished - timedelta(minutes=8),
                                            finished_at=finished, state_since=finished, runs=runs)
    # Every host's day ends with a completed frame: a host that ended it failing frame
    # after frame would have been dealt with then (by corral, or by a person), not left
    # with a streak for tonight's first cycle to find.
    for n, host in enumerate(hosts):
        job = old[n % jobs]
        numbers[job.id] += 1
        finished = end - timedelta(seconds=n)
        job.frames[numbers[job.id]] = Frame(job.id, numbers[job.id], FrameState.COMPLETE, host=host, exit_code=0,
                                            attempts=1, started_at=finished - timedelta(minutes=8),
                                            finished_at=finished, state_since=finished,
                                            runs=[FrameRun(host, None, FrameState.COMPLETE, 0,
                                                           finished - timedelta(minutes=8), finished)])
    for job in old:
        if not job.frames:
            del farm.jobs[job.id]
    return farm
