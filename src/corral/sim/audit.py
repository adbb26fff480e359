"""Decisions checked against the night's ground truth: which were wrong, and which chains
could have finished.

The simulator knows what no wrangler does: which hosts are bad, which jobs are broken.
A decision is wrong when the truth says so, whatever the evidence looked like at the
time: a good host quarantined, a healthy job blocked or killed, a frame or job retried
past its retry limit, a healthy job left blocked for a person although everything it
waits on completed.  Checked for whoever decides (corral, the oracle, the wrangler);
the farm manager's own handling is the baseline and is not audited.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from corral.sim.scenario import Night
from corral.states import Action, Kind

#: The kinds of wrong action, in the order reports list them.
WRONG = ("good_host_locked", "healthy_job_blocked", "retry_past_limit", "healthy_chain_waiting")


@dataclass(frozen=True)
class Decision:
    """One applied decision: when (simulated seconds), who, and what."""

    at: float
    who: str
    kind: Kind
    ident: str
    action: Action


def healthy_chains(night: Night) -> list[int]:
    """The chains (by index) with no broken job: those a perfect night finishes."""
    broken = {j.id for j in night.jobs if j.broken}
    return [n for n, members in enumerate(night.chains) if not broken.intersection(members)]


def audit(
    night: Night,
    decisions: Iterable[Decision],
    *,
    done_at: Mapping[int, float | None],
    blocked_at_end: Iterable[int],
    grace_seconds: float,
) -> tuple[dict[str, int], list[str]]:
    """The wrong decisions by kind (every kind in `WRONG`, zeros included) and one line each.

    `done_at` is when each job completed (None: it did not); `blocked_at_end` the jobs the
    store holds blocked when the night ends.  A healthy job still blocked although its
    dependencies completed more than `grace_seconds` before the end waits for a person.
    """
    bad_hosts = {h.name for h in night.hosts if h.bad}
    jobs = {j.id: j for j in night.jobs}
    horizon = night.scenario.hours * 3600.0
    counts: Counter[str] = Counter(dict.fromkeys(WRONG, 0))
    lines: list[str] = []
    retries: Counter[str] = Counter()
    blocked_by_decision: set[int] = set()

    def wrong(kind: str, line: str) -> None:
        counts[kind] += 1
        lines.append(line)

    for d in decisions:
        when = f"{d.at / 3600.0:.2f} h"
        if d.kind is Kind.WORKER and d.action is Action.BLOCK and d.ident not in bad_hosts:
            wrong("good_host_locked", f"{when} {d.who} quarantined {d.ident}, a good host")
        if d.kind is Kind.JOB and d.action in (Action.BLOCK, Action.KILL):
            job = jobs.get(int(d.ident))
            blocked_by_decision.add(int(d.ident))
            if job is not None and not job.broken:
                wrong("healthy_job_blocked", f"{when} {d.who} {d.action}ed job {d.ident} ({job.name}), a healthy job")
        if d.action is Action.RETRY and d.kind in (Kind.FRAME, Kind.JOB):
            key = f"{d.kind} {d.ident}"
            retries[key] += 1
            limit = night.scenario.retry_limit
            if retries[key] > limit:
                wrong("retry_past_limit", f"{when} {d.who} retried {key} {retries[key]} times (limit {limit})")
    for job_id in sorted(blocked_at_end):
        job = jobs.get(job_id)
        if job is None or job.broken or job_id in blocked_by_decision or not job.depends_on:
            continue
        ends = [done_at.get(d) for d in job.depends_on]
        if all(e is not None for e in ends) and max(e for e in ends if e is not None) <= horizon - grace_seconds:
            wrong("healthy_chain_waiting", f"job {job_id} ({job.name}) still waits for a person at the end of the night")
    return {k: counts[k] for k in WRONG}, lines
