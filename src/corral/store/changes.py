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
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.engine import Connection

from corral.farm import Frame, FrameRun, Instance, Job, Worker
from corral.states import FrameState
from corral.store.rows import (
    frame_columns,
    instance_from_row,
    job_from_row,
    raw_rows,
    run_columns,
    timestamp_parser,
    worker_from_row,
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


def _changed(t: Any, since: Mark) -> Any:
    # Rows inserted after `advance` have no stamp yet on SQLite: they are changes too.
    return or_(t.c.rev >= since.value, t.c.rev.is_(None))


def read_changes(conn: Connection, since: Mark) -> FarmChanges:
    """Every farm row stamped at or after `since`, or not stamped yet (Core selects on the `rev` indexes)."""
    out = FarmChanges()
    jobs, inst, wk, deps = (table(n) for n in ("jobs", "instances", "workers", "job_dependencies"))
    out.jobs = [job_from_row(r) for r in conn.execute(select(jobs).where(_changed(jobs, since)))]
    out.instances = [instance_from_row(r) for r in conn.execute(select(inst).where(_changed(inst, since)))]
    out.workers = [worker_from_row(r) for r in conn.execute(select(wk).where(_changed(wk, since)))]
    # Frames and runs are most of what changes: read at the driver level (as the whole
    # read does), with one timestamp parser instead of a result processor per value.
    ts = timestamp_parser(conn.dialect.name)
    states = {s.value: s for s in FrameState}
    where = f"rev >= {int(since.value)} OR rev IS NULL"  # an int, formatted: no parameter style to juggle
    dialect = conn.dialect.name
    out.frames = [
        Frame(j, n, states[st], host, inst_id, attempts, retries, code, None if started is None else ts(started),
              None if finished is None else ts(finished), None if state_since is None else ts(state_since),
              version=version)
        for j, n, st, host, inst_id, attempts, retries, code, started, finished, state_since, version
        in raw_rows(conn, f"SELECT {frame_columns(dialect)} FROM frames WHERE {where}")  # noqa: S608 - no user text
    ]
    out.runs = [
        (run_id, j, n, FrameRun(host, inst_id, states[st], code, None if started is None else ts(started),
                                None if finished is None else ts(finished), run_id))
        for run_id, j, n, host, inst_id, st, code, started, finished
        in raw_rows(conn, f"SELECT {run_columns(dialect)} FROM frame_runs WHERE {where} ORDER BY id")  # noqa: S608
    ]
    changed = sorted({r.job_id for r in conn.execute(select(deps.c.job_id).where(_changed(deps, since)))})
    if changed:
        for job_id in changed:
            out.depends_on[job_id] = []
        query = select(deps.c.job_id, deps.c.depends_on).where(deps.c.job_id.in_(changed)).order_by(
            deps.c.job_id, deps.c.position)
        for r in conn.execute(query):
            out.depends_on[r.job_id].append(r.depends_on)
    return out
