"""Farm <-> rows: the mapping between the dataclasses of `corral.farm` and the tables.

Reading uses Core selects and builds the dataclasses directly (one pass per table, no
ORM identity map): this is the hot path of every policy cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from corral.facts import frame_runs
from corral.farm import Entity, Farm, Frame, FrameRun, Instance, Job, Worker, saved_fields
from corral.states import FrameState, Hold, InstanceState, JobState, Kind, WorkerState
from corral.store.tables import table


def plain(value: Any) -> Any:
    """Enums go to the database as their value (psycopg would dump an Enum's *name*)."""
    return value.value if isinstance(value, Enum) else value


#: Columns corral may change on each kind of row (everything but the key and version).
FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.JOB: (
        "name",
        "priority",
        "state",
        "hold",
        "blocked_by",
        "retry_limit",
        "retries",
        "submitted_at",
        "state_since",
        "last_retry_at",
    ),
    Kind.FRAME: (
        "state",
        "host",
        "instance",
        "attempts",
        "retries",
        "exit_code",
        "started_at",
        "finished_at",
        "state_since",
    ),
    Kind.INSTANCE: ("job_id", "host", "state", "state_since"),
    Kind.WORKER: ("state", "state_since"),
}

TABLES = {Kind.JOB: "jobs", Kind.FRAME: "frames", Kind.INSTANCE: "instances", Kind.WORKER: "workers"}


def key_of(kind: Kind, entity: Entity) -> dict[str, Any]:
    """The primary key of an entity's row."""
    if isinstance(entity, Frame):
        return {"job_id": entity.job_id, "number": entity.number}
    if isinstance(entity, Worker):
        return {"name": entity.name}
    return {"id": entity.id}


def values_of(kind: Kind, source: Entity | dict[str, Any]) -> dict[str, Any]:
    """The writable columns of an entity (or of its `saved_fields`)."""
    data = source if isinstance(source, dict) else saved_fields(source)
    return {name: plain(data[name]) for name in FIELDS[kind]}


def timestamp_parser(dialect: str) -> Callable[[Any], datetime]:
    """Raw driver timestamps (never None: test first) to aware UTC datetimes.

    SQLite stores them as naive UTC text; the driver-level reads select them with the
    offset appended in SQL (`frame_columns`), so the parser is `fromisoformat` itself,
    called straight from C with no Python function in between.  PostgreSQL gives datetimes.
    """
    if dialect == "sqlite":
        return datetime.fromisoformat

    def parse(stamp: Any) -> datetime:
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)  # type: ignore[no-any-return]

    return parse


def _stamps(columns: str, dialect: str) -> str:
    if dialect != "sqlite":
        return columns
    return ", ".join(f"({c} || '+00:00')" if c.endswith(("_at", "_since")) else c for c in columns.split(", "))


def job_columns(dialect: str) -> str:
    """The columns the driver-level job reads unpack, in order."""
    return _stamps("id, name, priority, state, hold, blocked_by, retry_limit, retries, submitted_at, state_since, "
                   "last_retry_at, version", dialect)


def instance_columns(dialect: str) -> str:
    return _stamps("id, job_id, host, state, state_since, version", dialect)


def worker_columns(dialect: str) -> str:
    return _stamps("name, state, state_since, version", dialect)


def frame_columns(dialect: str) -> str:
    """The columns the driver-level frame reads unpack, in order (timestamps ready for `timestamp_parser`)."""
    return _stamps("job_id, number, state, host, instance, attempts, retries, exit_code, started_at, finished_at, "
                   "state_since, version", dialect)


def run_columns(dialect: str) -> str:
    """The columns the driver-level run reads unpack, in order."""
    return _stamps("id, job_id, number, host, instance, state, exit_code, started_at, finished_at", dialect)


def job_from_row(r: Any) -> Job:
    """A job row as a Job (without frames, instances or dependencies)."""
    return Job(
        id=r.id, name=r.name, priority=r.priority, state=JobState(r.state), hold=Hold(r.hold), blocked_by=r.blocked_by,
        retry_limit=r.retry_limit, retries=r.retries, submitted_at=r.submitted_at, state_since=r.state_since,
        last_retry_at=r.last_retry_at, version=r.version,
    )


def instance_from_row(r: Any) -> Instance:
    return Instance(id=r.id, job_id=r.job_id, host=r.host, state=InstanceState(r.state), state_since=r.state_since,
                    version=r.version)


def worker_from_row(r: Any) -> Worker:
    return Worker(name=r.name, state=WorkerState(r.state), state_since=r.state_since, version=r.version)


def raw_rows(conn: Connection, sql: str, *, stream: bool = False) -> Iterator[tuple[Any, ...]]:
    """Rows straight from the driver's cursor, in batches (no per-row result wrapper).

    `stream`: for a read of a whole table.  PostgreSQL's ordinary cursor holds the
    entire result in the client before the first row is handed over (a million frame
    rows: a few hundred MB on top of the farm being built from them); a server-side
    cursor sends it batch by batch.  SQLite's cursor steps through the rows anyway.
    """
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor(name="corral_read") if stream and conn.dialect.name == "postgresql" else dbapi.cursor()
    try:
        cursor.execute(sql)
        while batch := cursor.fetchmany(20_000):
            yield from batch
    finally:
        cursor.close()


def read_farm(conn: Connection) -> Farm:
    """The whole farm as stored, each entity with the version it was read at."""
    jobs: dict[int, Job] = {r.id: job_from_row(r) for r in conn.execute(select(table("jobs")))}
    dep = table("job_dependencies")
    for r in conn.execute(select(dep.c.job_id, dep.c.depends_on).order_by(dep.c.job_id, dep.c.position)):
        jobs[r.job_id].depends_on.append(r.depends_on)
    inst = table("instances")
    for r in conn.execute(select(inst).order_by(inst.c.job_id, inst.c.id)):
        jobs[r.job_id].instances[r.id] = instance_from_row(r)
    # Frames and runs are most of the farm: read them at the driver level, with the
    # timestamps parsed by one fast function instead of a result processor per value.
    ts = timestamp_parser(conn.dialect.name)
    states = {s.value: s for s in FrameState}
    dialect = conn.dialect.name
    frames_sql = f"SELECT {frame_columns(dialect)} FROM frames ORDER BY job_id, number"  # noqa: S608 - constant
    job, job_frames = None, None
    rows = raw_rows(conn, frames_sql, stream=True)
    for j, n, st, host, inst_id, attempts, retries, code, started, finished, since, version in rows:
        if j != job:
            job, job_frames = j, jobs[j].frames
        job_frames[n] = Frame(  # type: ignore[index]
            j, n, states[st], host, inst_id, attempts, retries, code,
            None if started is None else ts(started), None if finished is None else ts(finished),
            None if since is None else ts(since),
            version=version,
        )
    runs_sql = f"SELECT {run_columns(dialect)} FROM frame_runs ORDER BY id"  # noqa: S608 - constant
    for run_id, j, n, host, inst_id, st, code, started, finished in raw_rows(conn, runs_sql, stream=True):
        jobs[j].frames[n].runs.append(FrameRun(
            host, inst_id, states[st], code, None if started is None else ts(started),
            None if finished is None else ts(finished), run_id))
    fdep = table("frame_dependencies")
    for r in conn.execute(select(fdep).order_by(fdep.c.job_id, fdep.c.number, fdep.c.position)):
        jobs[r.job_id].frames[r.number].depends_on.append((r.depends_job, r.depends_number))
    workers = {r.name: worker_from_row(r) for r in conn.execute(select(table("workers")).order_by(table("workers").c.name))}
    return Farm(jobs=jobs, workers=workers)


def farm_rows(farm: Farm, now: datetime) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Every row of `farm`, table by table, parents first (the order inserts need)."""
    jobs = list(farm.jobs.values())
    yield "jobs", [_row(Kind.JOB, j, now) for j in jobs]
    yield "workers", [_row(Kind.WORKER, w, now) for w in farm.workers.values()]
    yield "instances", [_row(Kind.INSTANCE, i, now) for j in jobs for i in j.instances.values()]
    frames = [f for j in jobs for f in j.frames.values()]
    yield "frames", [_row(Kind.FRAME, f, now) for f in frames]
    yield (
        "frame_runs",
        [
            {
                "job_id": f.job_id,
                "number": f.number,
                "host": r.host,
                "instance": r.instance,
                "state": plain(r.state),
                "exit_code": r.exit_code,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
            }
            for f in frames
            for r in frame_runs(f)  # a frame with no history counts its result as its one run: store it
        ],
    )
    yield "job_dependencies", [{"job_id": j.id, "depends_on": d, "position": n} for j in jobs for n, d in enumerate(j.depends_on)]
    yield (
        "frame_dependencies",
        [
            {"job_id": f.job_id, "number": f.number, "depends_job": dj, "depends_number": dn, "position": n}
            for f in frames
            for n, (dj, dn) in enumerate(f.depends_on)
        ],
    )


def _row(kind: Kind, entity: Entity, now: datetime) -> dict[str, Any]:
    return {**key_of(kind, entity), **values_of(kind, entity), "version": entity.version, "updated_at": now}
