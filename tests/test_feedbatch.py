"""The feed's batched path writes exactly what the events written one at a time write.

`corral.store.feedbatch.apply_batch` (what `corral ingest` and the API use) against
`apply_one_by_one` (every event a batch of one in its own savepoint, the job's state
derived again from the store before each, what a refused batch falls back to): random
farms (holds, locked hosts, blocked instances, retried frames), random streams over the same few jobs, frames, instances and hosts
(unknown ones, mismatched ones, submits that clash, replayed ids), cut into random
batches.  The results line by line and every stored row (versions, timestamps, the
log, the runs in their order, the applied events) must be equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from corral.farm import Farm
from corral.feed import BadLine, Event, validate_event
from corral.store import Store
from corral.store.events import EventResult
from corral.store.feedbatch import apply_batch, apply_one_by_one
from corral.store.store import FARM_TABLES
from corral.store.tables import table
from strategies import HOSTS, LETTERS, farms

#: Stored times from the test's clock are after this; earlier ones are the loaded farm's.
CLOCK_START = datetime(2031, 1, 1, tzinfo=UTC)
JOB_IDS = [1, 2, 3, 4, 7]
INSTANCES = [f"{j}.{x}" for j in (1, 2, 7) for x in LETTERS[:2]] + ["stray"]

maybe_host = st.one_of(st.none(), st.sampled_from(HOSTS))
maybe_instance = st.one_of(st.none(), st.sampled_from(INSTANCES))
stamps = st.one_of(st.none(), st.integers(0, 300).map(lambda m: (CLOCK_START - timedelta(minutes=m)).isoformat()))


@st.composite
def events(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["job_submitted", "frame_started", "frame_started", "frame_completed", "frame_failed",
                                 "frame_failed", "instance_started", "instance_ended", "worker_up", "worker_down"]))
    event: dict[str, Any] = {"id": f"e{draw(st.integers(0, 25))}", "type": kind}  # a small pool: replays
    if (at := draw(stamps)) is not None:
        event["at"] = at
    if kind == "job_submitted":
        job: dict[str, Any] = {"name": "shot", "frames": draw(st.lists(st.integers(1, 5), min_size=1, max_size=4,
                                                                      unique=True))}
        if (jid := draw(st.one_of(st.none(), st.sampled_from(JOB_IDS)))) is not None:
            job["id"] = jid
        job["depends_on"] = draw(st.lists(st.sampled_from(JOB_IDS), max_size=2))
        job["state"] = draw(st.sampled_from(["pending", "blocked"]))
        job["retry_limit"] = draw(st.integers(0, 2))
        event["job"] = job
    elif kind.startswith("frame_"):
        event["job"] = draw(st.sampled_from(JOB_IDS))
        event["frame"] = draw(st.integers(1, 5))
        event["host"] = draw(maybe_host)
        event["instance"] = draw(maybe_instance)
        if kind == "frame_failed" or (kind == "frame_completed" and draw(st.booleans())):
            event["exit_code"] = draw(st.one_of(st.none(), st.integers(-1, 3)))
    elif kind == "instance_started":
        event.update(instance=draw(st.sampled_from(INSTANCES)), job=draw(st.sampled_from(JOB_IDS)),
                     host=draw(st.sampled_from(HOSTS)))
    elif kind == "instance_ended":
        event.update(instance=draw(st.sampled_from(INSTANCES)), job=draw(st.one_of(st.none(), st.sampled_from(JOB_IDS))),
                     host=draw(maybe_host), exit_code=draw(st.one_of(st.none(), st.integers(0, 2))),
                     state=draw(st.one_of(st.none(), st.sampled_from(["complete", "failed", "killed"]))))
    else:
        event["host"] = draw(st.sampled_from(HOSTS))
    return event


@st.composite
def streams(draw: Any) -> tuple[Farm, list[list[tuple[int, Event]]]]:
    farm = draw(farms(max_jobs=3))
    for job in farm.jobs.values():  # as a store holds them: known dependencies, the state following the rows
        job.depends_on = [d for d in job.depends_on if d in farm.jobs]
        for frame in job.frames.values():
            frame.depends_on = list(dict.fromkeys((j, n) for j, n in frame.depends_on
                                                  if j in farm.jobs and n in farm.jobs[j].frames))
        job.state = job.derived_state()
    items = [(n + 1, validate_event(e)) for n, e in enumerate(draw(st.lists(events(), min_size=1, max_size=40)))]
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(items) - 1)), max_size=4)))
    bounds = [0, *cuts, len(items)]
    return farm, [items[a:b] for a, b in pairwise(bounds) if a < b]


Apply = Callable[..., list[EventResult | BadLine]]


def play(store: Store, farm: Farm, batches: Sequence[Sequence[tuple[int, Event]]], apply: Apply
         ) -> tuple[list[EventResult | BadLine], dict[str, list[dict[str, Any]]]]:
    """`farm` loaded into an emptied store, then the batches, each in one transaction."""
    with store.engine.begin() as conn:
        for name in ("transitions", *reversed(FARM_TABLES)):
            conn.execute(delete(table(name)))
    store.load_farm(farm, replace=True)
    ticks = iter(range(10**6))

    def clock() -> datetime:
        return CLOCK_START + timedelta(seconds=next(ticks))

    results: list[EventResult | BadLine] = []
    for batch in batches:
        with store._write() as conn:
            results += apply(conn, batch, now=clock, actor="supervisor")
    return results, dump(store)


def dump(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every row as stored, in key order; ids of appended rows by their order instead (so two
    runs on one PostgreSQL database compare), `rev` left out (stamps differ by run), and
    `updated_at` of rows the stream did not write replaced (the load's wall clock)."""
    out = {}
    with store.engine.connect() as conn:
        for name in ("jobs", "frames", "frame_runs", "instances", "workers", "job_dependencies", "transitions",
                     "applied_events"):
            t = table(name)
            rows = []
            for r in conn.execute(select(t).order_by(*t.primary_key.columns)).mappings():
                row = {k: v for k, v in r.items() if k not in ("rev", "id") or name not in ("frame_runs", "transitions")}
                row.pop("rev", None)
                if isinstance(row.get("updated_at"), datetime) and row["updated_at"] < CLOCK_START:
                    row["updated_at"] = "loaded"
                rows.append(row)
            out[name] = rows
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(case=streams())
def test_a_batch_writes_what_one_event_at_a_time_writes(store: Store, case: tuple[Farm, list[Any]]) -> None:
    store.init()
    farm, batches = case
    one_by_one = play(store, farm, batches, apply_one_by_one)
    batched = play(store, farm, batches, apply_batch)
    assert batched[0] == one_by_one[0]
    assert batched[1] == one_by_one[1]


def test_a_job_submitted_and_rendered_in_one_batch_is_stored_as_one_event_at_a_time_stores_it(store: Store) -> None:
    """The frames a batch submits and then names are inserted once, at the end, as its
    events leave them: the same rows, versions, runs and job state as events one by one,
    and the frames it does not name are stored pending."""
    store.init()
    stream = [
        {"id": "s7", "type": "job_submitted", "job": {"id": 7, "name": "shot", "frames": "1-4", "retry_limit": 1}},
        {"id": "a", "type": "frame_started", "job": 7, "frame": 1, "host": "n1", "instance": "7.a"},
        {"id": "b", "type": "frame_failed", "job": 7, "frame": 1, "exit_code": 3},
        {"id": "c", "type": "frame_started", "job": 7, "frame": 2, "host": "n2", "instance": "7.b"},
        {"id": "d", "type": "frame_completed", "job": 7, "frame": 2},
        {"id": "e", "type": "frame_started", "job": 7, "frame": 1, "host": "n2", "instance": "7.b"},
        {"id": "f", "type": "frame_started", "job": 7, "frame": 9, "host": "n2"},  # no such frame: bad, changes nothing
    ]
    items = [(n + 1, validate_event(e)) for n, e in enumerate(stream)]
    one_by_one = play(store, Farm(), [items], apply_one_by_one)
    batched = play(store, Farm(), [items], apply_batch)
    assert batched[0] == one_by_one[0]
    assert batched[1] == one_by_one[1]
    frames = {(r["number"]): (r["state"], r["version"]) for r in batched[1]["frames"]}
    assert frames == {1: ("running", 3), 2: ("complete", 2), 3: ("pending", 0), 4: ("pending", 0)}
    assert [(r["number"], r["state"]) for r in batched[1]["frame_runs"]] == [(1, "failed"), (2, "complete")]
    assert [r["state"] for r in batched[1]["jobs"]] == ["running"]

def test_a_job_state_follows_its_instances_within_one_batch(store: Store) -> None:
    """A job's derived state is remembered between the events of a batch until what it
    is derived from moves: an instance ending failed moves it (running -> failing),
    and so does a new instance on a job with nothing running (pending -> running)."""
    store.init()
    stream = [
        {"id": "s", "type": "job_submitted", "job": {"id": 7, "name": "shot", "frames": "1-4"}},
        {"id": "w", "type": "worker_up", "host": "n1"},
    ]
    play(store, Farm(), [[(n + 1, validate_event(e)) for n, e in enumerate(stream)]], apply_batch)
    batch = [
        {"id": "a", "type": "worker_up", "host": "n2"},
        {"id": "b", "type": "instance_started", "instance": "7.a", "job": 7, "host": "n1"},
        {"id": "c", "type": "worker_up", "host": "n3"},
        {"id": "d", "type": "instance_ended", "instance": "7.a", "state": "failed"},
        {"id": "e", "type": "worker_up", "host": "n4"},
    ]
    items = [(n + 1, validate_event(e)) for n, e in enumerate(stream + batch)]
    cut = [items[:2], items[2:]]
    one_by_one = play(store, Farm(), cut, apply_one_by_one)
    batched = play(store, Farm(), cut, apply_batch)
    assert batched == one_by_one
    changes = [r.job_change for r in batched[0] if isinstance(r, EventResult) and r.job_change]
    assert changes == [(7, "pending", "running"), (7, "running", "failing")]

def test_a_batch_the_database_refuses_is_applied_again_one_event_at_a_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event id another ingest recorded after this batch read the record (a race): the
    batch's final insert fails, and the batch is played again one event at a time, which
    finds that event applied and skips it; the others apply once."""
    from corral.store import events, feedbatch

    store.init()
    items = [(1, validate_event({"id": "w1", "type": "worker_up", "host": "n1"})),
             (2, validate_event({"id": "w2", "type": "worker_down", "host": "n2"}))]

    reads = []

    def blind(conn: Any, ids: list[str]) -> dict[str, int | None]:  # the batch's read, before the other committed
        reads.append(ids)
        found = events._applied_ids(conn, ids)
        return {k: v for k, v in found.items() if k != "w2"} if len(reads) == 1 else found

    monkeypatch.setattr(feedbatch, "_applied_ids", blind)
    with store._write() as conn:
        conn.execute(table("applied_events").insert().values(id="w2", type="worker_down", job_id=None,
                                                             applied_at=CLOCK_START))
        results = apply_batch(conn, items)
    assert [(type(r).__name__, getattr(r, "skipped", None)) for r in results] == [("EventResult", False),
                                                                                  ("EventResult", True)]
    farm = store.read_farm()
    assert set(farm.workers) == {"n1"}


@pytest.mark.parametrize("n", [1, 3])
def test_an_empty_or_all_replayed_batch_writes_nothing_new(store: Store, n: int) -> None:
    store.init()
    items = [(k + 1, validate_event({"id": f"w{k}", "type": "worker_up", "host": f"n{k}"})) for k in range(n)]
    with store._write() as conn:
        assert apply_batch(conn, []) == []
        apply_batch(conn, items)
    before = dump(store)
    with store._write() as conn:
        again = apply_batch(conn, items)
    assert all(isinstance(r, EventResult) and r.skipped for r in again)
    assert dump(store) == before


def test_every_row_a_batch_writes_is_read_by_the_daemons_next_incremental_read(store: Store) -> None:
    """Invariant 1 of docs/architecture.md for the batched writer: the rows it writes (it
    stamps them itself on SQLite) are what the next read of changes brings, no more."""
    import json

    from corral import Corral

    store.init()
    corral = Corral(store, clock=lambda: CLOCK_START)

    def lines(*events: dict[str, Any]) -> list[str]:
        return [json.dumps(e) for e in events]

    corral.ingest(lines({"id": "s1", "type": "job_submitted", "job": {"id": 1, "name": "a", "frames": "1-3"}},
                        {"id": "s2", "type": "job_submitted", "job": {"id": 2, "name": "b", "frames": "1-2"}},
                        {"id": "w1", "type": "worker_up", "host": "n1"}))
    # On PostgreSQL the mark is the oldest transaction open on the whole server: one open
    # elsewhere (another test run) holds it back, and the next read takes in again every
    # row written since (harmless, by design: corral.store.changes).  Exact only without.
    from corral.store.changes import mark_holder

    with store.engine.connect() as conn:
        held = mark_holder(conn)
    _, mark, _ = store.read_farm_marked()
    with store.engine.connect() as conn:
        held = held or mark_holder(conn)
    report = corral.ingest(lines(
        {"id": "f1", "type": "frame_started", "job": 1, "frame": 2, "host": "n2", "instance": "1.a"},
        {"id": "f2", "type": "frame_failed", "job": 1, "frame": 2, "exit_code": 3},
        {"id": "i1", "type": "instance_started", "instance": "1.b", "job": 1, "host": "n3"},
        {"id": "w2", "type": "worker_down", "host": "n1"},
        {"id": "s3", "type": "job_submitted", "job": {"id": 3, "name": "c", "frames": "7", "depends_on": [2]}},
    ))
    assert len(report.applied) == 5
    changes, _, _ = store.read_changes(mark)
    assert changes is not None
    read = (sorted(j.id for j in changes.jobs), sorted((f[0], f[1]) for f in changes.frames),
            sorted(i.id for i in changes.instances), sorted(w.name for w in changes.workers),
            [(j, n, run.state, run.exit_code) for j, n, run in changes.runs], changes.depends_on)
    written = ([1, 3], [(1, 2), (3, 7)], ["1.a", "1.b"], ["n1", "n2", "n3"], [(1, 2, "failed", 3)], {3: [2]})
    if held is None:
        assert read == written
    else:  # every row written is read; rows from before may come again
        assert set(read[0]) >= {1, 3} and set(read[1]) >= {(1, 2), (3, 7)} and set(read[2]) >= {"1.a", "1.b"}
        assert set(read[3]) >= {"n1", "n2", "n3"} and (1, 2, "failed", 3) in read[4] and read[5][3] == [2]


def test_record_many_applies_in_order_and_reports_each_bad_event_by_its_position(store: Store) -> None:
    """The API's batch form: one result per event, in order; an invalid or rejected event is
    a BadLine at its position and changes nothing; the rest apply once, as `record` would."""
    from corral import Corral

    store.init()
    corral = Corral(store, clock=lambda: CLOCK_START)
    events: list[Any] = [
        {"id": "s1", "type": "job_submitted", "job": {"id": 5, "name": "comp", "frames": "1-2"}},
        {"id": "f1", "type": "frame_started", "job": 5, "frame": 1, "host": "n1"},
        {"id": "bad", "type": "frame_started", "job": 5, "frame": 1, "hots": "n1"},  # a typo: invalid
        {"id": "f2", "type": "frame_failed", "job": 9, "frame": 1, "exit_code": 2},  # no job 9: rejected
        {"id": "f1", "type": "frame_started", "job": 5, "frame": 1, "host": "n1"},  # sent again: skipped
        validate_event({"id": "f3", "type": "frame_completed", "job": 5, "frame": 1}),
    ]
    results = corral.record_many(events)
    assert [(type(r).__name__, r.line) for r in results] == [
        ("EventResult", 1), ("EventResult", 2), ("BadLine", 3), ("BadLine", 4), ("EventResult", 5), ("EventResult", 6)]
    assert "hots: unknown field" in results[2].reason and "no job 9" in results[3].reason  # type: ignore[union-attr]
    assert [getattr(r, "skipped", None) for r in results] == [False, False, None, None, True, False]
    frame = corral.job(5).frames[1]
    assert (frame.state, frame.attempts, frame.host) == ("complete", 1, "n1")
