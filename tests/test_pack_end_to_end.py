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
