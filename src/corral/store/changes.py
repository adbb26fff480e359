"""Reading only what changed: the daemon's steady-state read.

Migration 0003 has the database stamp a `rev` on every farm row it inserts or
updates (see its docstring for why the stamps are safe on both databases).  A reader
takes a `Mark` with each read; the next read asks for `rev >= mark`.  Rows written by
transactions that were still open at the last read are read again, which is harmless:
applying a row twice gives the same farm.  A change of `generation` (farm rows were
deleted) means the caller must read the whole farm again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.engine import Connection

from corral.farm import Frame, FrameRun, Instance, Job, Worker
from corral.states import FrameState, Hold, InstanceState, JobState, WorkerState
from corral.store.rows import (
    frame_columns,
    instance_columns,
    job_columns,
    raw_rows,
    run_columns,
    timestamp_parser,
    worker_columns,
)
from corral.store.tables import table


@dataclass(frozen=True)
class Mark:
    """Where the previous read stood: the deletion generation and the change stamp."""

    generation: int
    value: int


@dataclass
class FarmChanges:
    """Rows changed since a mark, as entities (frames without runs, jobs without children)."""

    jobs: list[Job] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    runs: list[tuple[int, int, int, FrameRun]] = field(default_factory=list)  # (run id, job, frame, run)
    depends_on: dict[int, list[int]] = field(default_factory=dict)  # job -> its whole new list


def take_mark(conn: Connection, sqlite_value: int | None = None) -> Mark:
    """The mark for a read made in `conn`'s snapshot (call it before reading rows).

    PostgreSQL: the oldest transaction still running when the snapshot was taken;
    everything older is in it, everything newer is stamped with a higher id.  SQLite:
    the counter value `advance` moved to just before the snapshot was taken.
    """
    generation_ = generation(conn)
    if conn.dialect.name == "postgresql":
        xmin = conn.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")).scalar_one()
        return Mark(generation_, int(xmin))
    assert sqlite_value is not None, "SQLite reads advance the counter first"
    return Mark(generation_, sqlite_value)


TRACKED = ("jobs", "frames", "instances", "workers", "frame_runs", "job_dependencies")


def advance(conn: Connection) -> int:
    """SQLite, in a short write transaction before a read: stamp the rows inserted since
    the last read (inserts start with no stamp) with the current counter value, then move
    the counter on.  Every row written before now carries a stamp at most the old value;
    every row written after, at least the new one, which the next read starts from."""
    value = current_stamp(conn)
    for name in TRACKED:
        t = table(name)
        conn.execute(update(t).where(t.c.rev.is_(None)).values(rev=value))
    rev = table("revision")
    conn.execute(update(rev).where(rev.c.id == 1).values(value=value + 1))
    return value + 1


def current_stamp(conn: Connection) -> int:
    """The stamp a row written now would get (for bulk inserts that stamp themselves)."""
    return int(conn.execute(text("SELECT value FROM revision WHERE id = 1")).scalar_one())


def generation(conn: Connection) -> int:
    return int(conn.execute(text("SELECT generation FROM revision WHERE id = 1")).scalar_one())


def read_changes(conn: Connection, since: Mark) -> FarmChanges:
    """Every farm row stamped at or after `since`, or not stamped yet (on the `rev` indexes).

    Read at the driver level, as the whole read is: a steady cycle's read is a handful
    of small queries, and SQLAlchemy's statement handling and result processors would
    cost more than the rows.  Every value formatted into the SQL is an int.
    """
    out = FarmChanges()
    dialect = conn.dialect.name
    parse = timestamp_parser(dialect)

    def ts(value: Any) -> datetime | None:
        return None if value is None else parse(value)

    frame_states = {s.value: s for s in FrameState}
    where = f"rev >= {int(since.value)} OR rev IS NULL"  # rows inserted after `advance` have no stamp yet
    out.jobs = [
        Job(id=i, name=name, priority=prio, state=JobState(st), hold=Hold(hold), blocked_by=by, retry_limit=limit,
            retries=retries, submitted_at=ts(submitted), state_since=ts(since_), last_retry_at=ts(retried),
            version=version)
        for i, name, prio, st, hold, by, limit, retries, submitted, since_, retried, version
        in raw_rows(conn, f"SELECT {job_columns(dialect)} FROM jobs WHERE {where}")  # noqa: S608 - no user text
    ]
    out.instances = [
        Instance(id=i, job_id=j, host=host, state=InstanceState(st), state_since=ts(since_), version=version)
        for i, j, host, st, since_, version
        in raw_rows(conn, f"SELECT {instance_columns(dialect)} FROM instances WHERE {where}")  # noqa: S608
    ]
    out.workers = [
        Worker(name=name, state=WorkerState(st), state_since=ts(since_), version=version)
        for name, st, since_, version
        in raw_rows(conn, f"SELECT {worker_columns(dialect)} FROM workers WHERE {where}")  # noqa: S608
    ]
    out.frames = [
        Frame(j, n, frame_states[st], host, inst_id, attempts, retries, code,
              None if started is None else parse(started), None if finished is None else parse(finished),
              None if state_since is None else parse(state_since), version=version)
        for j, n, st, host, inst_id, attempts, retries, code, started, finished, state_since, version
        in raw_rows(conn, f"SELECT {frame_columns(dialect)} FROM frames WHERE {where}")  # noqa: S608
    ]
    out.runs = [
        (run_id, j, n, FrameRun(host, inst_id, frame_states[st], code, None if started is None else parse(started),
                                None if finished is None else parse(finished), run_id))
        for run_id, j, n, host, inst_id, st, code, started, finished
        in raw_rows(conn, f"SELECT {run_columns(dialect)} FROM frame_runs WHERE {where} ORDER BY id")  # noqa: S608
    ]
    changed = sorted({int(j) for (j,) in raw_rows(conn, f"SELECT job_id FROM job_dependencies WHERE {where}")})  # noqa: S608
    if changed:
        for job_id in changed:
            out.depends_on[job_id] = []
        ids = ", ".join(str(j) for j in changed)
        query = f"SELECT job_id, depends_on FROM job_dependencies WHERE job_id IN ({ids}) ORDER BY job_id, position"  # noqa: S608
        for job_id, dep in raw_rows(conn, query):
            out.depends_on[job_id].append(dep)
    return out
