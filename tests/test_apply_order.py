"""A cycle's writes and a feed batch lock rows in one order, so neither loses to a deadlock.

A feed batch locks the rows it will write up front, jobs first, each table in key order
(`corral.store.feedbatch`).  The compare-and-set applier wrote rows in its proposals'
order (the plan's priority order), so a cycle blocking job 2 then job 1 and a batch
holding job 1 and waiting for job 2 deadlocked, and PostgreSQL killed one of them (seen
under a feed at 5,000 events a second, issue 20).  Now the applier locks its jobs' rows
first, in key order, and the two take turns.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from conftest import snap
from corral.ports import Proposal
from corral.states import Action, Kind
from corral.store import Store

FARM = """
jobs:
  - {id: 1, name: one, frames: [{number: 1, state: running, host: h1}]}
  - {id: 2, name: two, frames: [{number: 1, state: running, host: h2}]}
workers: [{name: h1}, {name: h2}]
"""


def test_a_cycle_and_a_feed_batch_holding_the_same_jobs_take_turns(store: Store) -> None:
    if store.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time (no row locks to order)")
    store.init()
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    holding = threading.Event()
    outcome: list[BaseException | None] = []

    def feed_batch() -> None:  # locks job 1, pauses, then job 2: as a batch naming both would
        try:
            with store.engine.begin() as conn:
                conn.exec_driver_sql("SELECT id FROM jobs WHERE id = 1 FOR UPDATE").fetchall()
                holding.set()
                time.sleep(1.0)
                conn.exec_driver_sql("SELECT id FROM jobs WHERE id = 2 FOR UPDATE").fetchall()
                conn.exec_driver_sql("UPDATE jobs SET priority = priority WHERE id IN (1, 2)")
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    feed = threading.Thread(target=feed_batch)
    feed.start()
    assert holding.wait(10)
    # the plan's order: job 2 first (a higher priority), then job 1
    proposals = [Proposal(Kind.JOB, "2", Action.BLOCK, policy="p", automatic=True),
                 Proposal(Kind.JOB, "1", Action.BLOCK, policy="p", automatic=True)]
    report = store.apply_transitions(farm, proposals, now=datetime(2026, 11, 28, 2, tzinfo=UTC), actor="corral")
    feed.join(20)
    assert outcome == [None], f"the feed's batch failed: {outcome}"
    # the feed's write bumped both rows' versions before the cycle's compare-and-set: refused, not deadlocked
    assert len(report.applied) + len(report.refused) == 2
