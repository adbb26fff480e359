"""The built-in pack through the daemon's own path (`Daemon.run_once`: a cycle that applies
with the store's compare-and-set applier), where one policy reads what another wrote.

`corral plan` and `corral test` plan on a farm in memory; only the applier writes the
rows.  A name written one way there and read another way here once left jobs held by
keep-dependents-blocked blocked for good after their dependency completed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from corral.api import Corral
from corral.daemon.service import Daemon, DaemonConfig
from corral.policy.loader import builtin_dir
from corral.snapshot import load_snapshot_file
from corral.states import JobState, Kind
from corral.store import Store

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "farm-snapshot.yaml"
NIGHT = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def _daemon(url: str, at: list[datetime]) -> Daemon:
    return Daemon(DaemonConfig(db_url=url, paths=[builtin_dir()], isolate=False), clock=lambda: at[0])


def test_a_dependent_held_because_its_dependency_failed_is_released_once_it_completes(
        store: Store, tmp_path: Path) -> None:
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    url = store.url.render_as_string(hide_password=False)
    at = [NIGHT]
    daemon = _daemon(url, at)
    try:
        daemon.run_once()
        farm = store.read_farm()
        assert farm.jobs[108].state == JobState.BLOCKED
        assert farm.jobs[108].blocked_by == "keep-dependents-blocked"  # the policy, as the planner records it
        assert farm.jobs[109].state == JobState.BLOCKED and farm.jobs[109].blocked_by is None  # submitted blocked

        corral = Corral(store, actor="user:ann", clock=lambda: at[0])
        corral.act(Kind.JOB, 107, "resubmit", reason="fixed the cloth cache")
        at[0] += timedelta(minutes=5)
        corral.frame_started(107, 1, host="render03", instance="107.a")
        corral.frame_completed(107, 1)
        assert store.read_farm().jobs[107].state == JobState.COMPLETE

        at[0] += timedelta(minutes=1)
        result = daemon.run_once()
        released = {(d.proposal.policy, d.entity_id) for d in result.report.applied if d.proposal.action == "unblock"}
        assert released == {("unblock-when-dependencies-complete", "108"), ("unblock-when-dependencies-complete", "109")}
        farm = store.read_farm()
        assert farm.jobs[108].state != JobState.BLOCKED and farm.jobs[109].state != JobState.BLOCKED
    finally:
        daemon.close()


def test_a_job_a_person_blocked_stays_blocked_when_its_dependencies_complete(store: Store) -> None:
    """The other side of the same name: a wrangler's block is never lifted by automation."""
    store.init()
    store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
    at = [NIGHT]
    daemon = _daemon(store.url.render_as_string(hide_password=False), at)
    corral = Corral(store, actor="user:ann", clock=lambda: at[0])
    try:
        daemon.run_once()
        corral.act(Kind.JOB, 108, "unblock", reason="let me look at it")
        corral.act(Kind.JOB, 108, "block", reason="hold it until I say so")
        assert store.read_farm().jobs[108].blocked_by == "user:ann"
        corral.act(Kind.JOB, 107, "resubmit")
        corral.frame_started(107, 1, host="render03", instance="107.a")
        corral.frame_completed(107, 1)
        at[0] += timedelta(minutes=6)
        daemon.run_once()
        farm = store.read_farm()
        assert farm.jobs[108].state == JobState.BLOCKED and farm.jobs[108].blocked_by == "user:ann"
        assert farm.jobs[109].state != JobState.BLOCKED
    finally:
        daemon.close()


#: Job 1 fails on all four of its hosts and completes none; it still has frames to render
#: and retries left.  Job 2 renders well and has one failed frame.
_HOSTS = ("h1", "h2", "h4", "h5")
BROKEN = """
jobs:
  - id: 1
    name: broken
    retry_limit: 2
    instances: [""" + ", ".join(f'{{id: "1.{h}", host: {h}, state: running}}' for h in _HOSTS) + """]
    frames:
""" + "".join(
    f"      - {{number: {n}, state: failed, host: {_HOSTS[n % 4]}, instance: '1.{_HOSTS[n % 4]}', exit_code: 1, "
    f"started_at: '2026-11-28T01:40:00Z', finished_at: '2026-11-28T01:45:00Z', state_since: '2026-11-28T01:45:00Z'}}\n"
    for n in range(1, 15)) + """      - {range: 15-30, state: pending}
  - id: 2
    name: healthy
    retry_limit: 2
    instances: [{id: "2.a", host: h3, state: running}]
    frames:
      - {number: 1, state: failed, host: h3, instance: "2.a", exit_code: 1, started_at: '2026-11-28T01:40:00Z',
         finished_at: '2026-11-28T01:45:00Z', state_since: '2026-11-28T01:45:00Z'}
      - {number: 2, state: running, host: h3, instance: "2.a", started_at: '2026-11-28T01:50:00Z'}
      - {range: 3-10, state: complete, host: h3, instance: "2.a"}
  - id: 3
    name: earlier                 # job 1's hosts rendered this fine: healthy hosts, so job 1 is what is broken
    frames:
""" + "".join(f"      - {{number: {n}, state: complete, host: {h}, exit_code: 0, finished_at: '2026-11-28T01:00:00Z'}}\n"
              for n, h in enumerate(_HOSTS, 1)) + """workers: [{name: h1}, {name: h2}, {name: h3}, {name: h4}, {name: h5}]
"""


def test_a_job_blocked_for_failing_everywhere_is_left_alone_by_the_policies_that_read_its_state(store: Store) -> None:
    """block-job-when-all-hosts-fail writes the job's state; retry-failed-frames, lock-host-
    out-of-job and block-failing-instance read it, in that cycle (played after it: priority)
    and in the next ones (from the store), and leave a blocked job's frames and instances be."""
    from conftest import snap

    store.init()
    store.load_farm(snap(BROKEN), replace=True)
    at = [NIGHT]
    daemon = _daemon(store.url.render_as_string(hide_password=False), at)
    try:
        first = daemon.run_once()
        acted = {(d.proposal.policy, d.proposal.kind.value, d.entity_id) for d in first.report.applied}
        assert ("block-job-when-all-hosts-fail", "job", "1") in acted
        assert not {a for a in acted if a[1] in ("frame", "instance") and a[2].startswith("1")}, acted
        assert ("retry-failed-frames", "frame", "2:1") in acted  # the healthy job's frame is retried
        for minutes in (5, 30):
            at[0] = NIGHT + timedelta(minutes=minutes)
            later = daemon.run_once()
            touched = {d.entity_id for d in later.report.applied} if later.report else set()
            assert not {t for t in touched if t == "1" or t.startswith(("1:", "1."))}, touched
        farm = store.read_farm()
        assert farm.jobs[1].state == JobState.BLOCKED and farm.jobs[1].blocked_by == "block-job-when-all-hosts-fail"
        assert all(f.retries == 0 for f in farm.jobs[1].frames.values())
    finally:
        daemon.close()


def test_a_frame_is_retried_until_its_retries_are_spent_and_then_left(store: Store) -> None:
    """retry-failed-frames reads `retries_left`, which its own applied retries write."""
    from conftest import snap

    store.init()
    store.load_farm(snap(BROKEN), replace=True)
    at = [NIGHT]
    daemon = _daemon(store.url.render_as_string(hide_password=False), at)
    supervisor = Corral(store, clock=lambda: at[0])
    retried = []
    try:
        for step in range(4):
            at[0] = NIGHT + timedelta(minutes=10 * step)
            result = daemon.run_once()
            retried.append(any(d.entity_id == "2:1" for d in result.report.applied) if result.report else False)
            if retried[-1]:  # the supervisor runs it again, and it fails again
                supervisor.frame_started(2, 1, host="h3", instance="2.a", at=at[0] + timedelta(minutes=1))
                supervisor.frame_failed(2, 1, exit_code=1, at=at[0] + timedelta(minutes=2))
        assert retried == [True, True, False, False]
        assert store.read_farm().jobs[2].frames[1].retries == 2
    finally:
        daemon.close()
