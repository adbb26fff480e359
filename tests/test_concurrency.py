"""Two real writers with separate engines (threads), on SQLite files and on PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import update

from conftest import NOW, snap
from corral.states import Action, FrameState, JobState, Kind
from corral.store import ApplyReport, Proposal, Store
from corral.store.tables import table

FARM = """
jobs:
  - id: 7
    name: fx_sim
    instances: [{id: i1, host: n1, state: running}]
    frames:
      - {number: 1, state: running, host: n1, instance: i1}
      - {number: 2, state: pending}
"""


def test_the_supervisors_write_between_read_and_apply_survives_and_corral_is_refused(store_url: str) -> None:
    with Store.open(store_url) as corral, Store.open(store_url) as supervisor:
        corral.load_farm(snap(FARM), replace=True)
        farm = corral.read_farm()  # corral reads, decides to interrupt the job ...
        read_and_decided, supervisor_wrote = threading.Event(), threading.Event()

        def supervisor_finishes_frame() -> None:
            read_and_decided.wait(10)
            frames = table("frames")
            with supervisor.engine.begin() as conn:
                conn.execute(
                    update(frames)
                    .where(frames.c.job_id == 7, frames.c.number == 1)
                    .values(state="complete", version=frames.c.version + 1)
                )
            supervisor_wrote.set()

        thread = threading.Thread(target=supervisor_finishes_frame)
        thread.start()
        read_and_decided.set()
        supervisor_wrote.wait(10)
        report = corral.apply_transitions(farm, [Proposal(Kind.JOB, "7", Action.INTERRUPT)], now=NOW, actor="corral")
        thread.join()
    assert report.refused and report.refused[0].stale and not report.applied
    with Store.open(store_url) as reader:
        stored = reader.read_farm()
        assert stored.jobs[7].frames[1].state == FrameState.COMPLETE
        assert stored.jobs[7].state == JobState.RUNNING  # nothing of the interrupt was written
        assert reader.transitions() == []


def test_of_many_parallel_appliers_on_one_job_exactly_one_wins(store_url: str) -> None:
    appliers = 6
    with Store.open(store_url) as setup:
        setup.load_farm(snap(FARM), replace=True)
    stores = [Store.open(store_url) for _ in range(appliers)]
    farms = [s.read_farm() for s in stores]  # everyone read version 0 of job 7
    barrier = threading.Barrier(appliers)

    def apply(n: int) -> ApplyReport:
        barrier.wait(10)
        action = Action.KILL if n % 2 else Action.BLOCK
        return stores[n].apply_transitions(farms[n], [Proposal(Kind.JOB, "7", action)], now=NOW, actor=f"w{n}")

    try:
        with ThreadPoolExecutor(appliers) as pool:
            reports = list(pool.map(apply, range(appliers)))
    finally:
        for s in stores:
            s.close()
    winners = [r for r in reports if r.applied]
    assert len(winners) == 1
    assert all(r.refused[0].stale for r in reports if not r.applied)
    with Store.open(store_url) as reader:
        (t,) = reader.transitions()
        job = reader.read_farm().jobs[7]
    assert job.version == 1 and str(job.state) == winners[0].applied[0].to_state
    assert t.to_state == winners[0].applied[0].to_state
