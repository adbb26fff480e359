"""Farm <-> rows: the mapping between the dataclasses of `corral.farm` and the tables.

Reading uses Core selects and builds the dataclasses directly (one pass per table, no
ORM identity map): this is the hot path of every policy cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from enum import Enum
from operator import itemgetter
from sys import intern
from typing import Any

from sqlalchemy.engine import Connection

from corral.facts import frame_runs
from corral.farm import Entity, Farm, Frame, FrameRun, Instance, Job, Worker, columns, key_columns, saved_fields, writable_columns
from corral.ports import FrameChange
from corral.states import FrameState, Hold, InstanceState, JobState, Kind, WorkerState


def plain(value: Any) -> Any:
    """Enums go to the database as their value (psycopg would dump an Enum's *name*)."""
    return value.value if isinstance(value, Enum) else value


#: Columns corral may change on each kind of row (everything but the key and version).
WRITABLE: dict[Kind, tuple[str, ...]] = {kind: writable_columns(kind) for kind in Kind}

TABLES = {Kind.JOB: "jobs", Kind.FRAME: "frames", Kind.INSTANCE: "instances", Kind.WORKER: "workers"}

_KEYS = {kind: key_columns(kind) for kind in Kind}


def key_of(kind: Kind, entity: Entity) -> dict[str, Any]:
    """The primary key of an entity's row."""
    return {name: getattr(entity, name) for name in _KEYS[kind]}


def values_of(kind: Kind, source: Entity | dict[str, Any]) -> dict[str, Any]:
    """The writable columns of an entity (or of its `saved_fields`)."""
    data = source if isinstance(source, dict) else saved_fields(source)
    return {name: plain(data[name]) for name in WRITABLE[kind]}


def timestamp_parser(dialect: str, *, naive_sqlite: bool = False) -> Callable[[Any], datetime]:
    """Raw driver timestamps (never None: test first) to aware UTC datetimes.

    SQLite stores them as naive UTC text; the driver-level reads select them with the
    offset appended in SQL (`frame_columns`), so the parser is `fromisoformat` itself,
    called straight from C with no Python function in between.  `naive_sqlite`: the
    text as stored, with no offset appended (an aggregate's result, say).  PostgreSQL
    gives datetimes.
    """
    if dialect == "sqlite":
        if naive_sqlite:
            return lambda stamp: datetime.fromisoformat(stamp).replace(tzinfo=UTC)
        return datetime.fromisoformat

    def parse(stamp: Any) -> datetime:
        zone = stamp.tzinfo
        if zone is UTC:  # what a session set to UTC gives (store.engine): taken as it is
            return stamp  # type: ignore[no-any-return]
        return stamp.replace(tzinfo=UTC) if zone is None else stamp.astimezone(UTC)  # type: ignore[no-any-return]

    return parse


def timestamp_param(dialect: str, value: datetime) -> Any:
    """A timestamp as a driver-level query binds it, to compare with stored ones: on
    SQLite the naive UTC text `UTCDateTime` stores (so text order is time order)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if dialect == "sqlite":
        return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _stamps(columns: str, dialect: str) -> str:
    if dialect != "sqlite":
        return columns
    return ", ".join(f"({c} || '+00:00')" if c.endswith(("_at", "_since")) else c for c in columns.split(", "))


def job_columns(dialect: str) -> str:
    """The columns the driver-level job reads unpack, in order (`corral.farm.SCHEMA`)."""
    return _stamps(", ".join(columns(Kind.JOB)), dialect)


def instance_columns(dialect: str) -> str:
    return _stamps(", ".join(columns(Kind.INSTANCE)), dialect)


def worker_columns(dialect: str) -> str:
    return _stamps(", ".join(columns(Kind.WORKER)), dialect)


def frame_columns(dialect: str) -> str:
    """The columns the driver-level frame reads unpack, in order (timestamps ready for `timestamp_parser`)."""
    return _stamps(", ".join(columns(Kind.FRAME)), dialect)


def run_columns(dialect: str) -> str:
    """The columns the driver-level run reads unpack, in order."""
    return _stamps("id, job_id, number, host, instance, state, exit_code, started_at, finished_at", dialect)


def raw_rows(conn: Connection, sql: str, params: Sequence[Any] = (), *, stream: bool = False
             ) -> Iterator[tuple[Any, ...]]:
    """Rows straight from the driver's cursor, in batches (no per-row result wrapper);
    `params` are bound to the driver's own placeholders (`?` or `%s`).

    `stream`: for a read of a whole table.  PostgreSQL's ordinary cursor holds the
    entire result in the client before the first row is handed over (a million frame
    rows: a few hundred MB on top of the farm being built from them); a server-side
    cursor sends it batch by batch.  SQLite's cursor steps through the rows anyway.
    """
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor(name="corral_read") if stream and conn.dialect.name == "postgresql" else dbapi.cursor()
    try:
        if params:
            cursor.execute(sql, params)
        else:
            cursor.execute(sql)
        while batch := cursor.fetchmany(20_000):
            yield from batch
    finally:
        cursor.close()


def _clauses(where: str, order: str) -> str:
    return (f" WHERE {where}" if where else "") + (f" ORDER BY {order}" if order else "")


#: Stored values to members, looked up in a dict: calling an Enum class with a value
#: runs Python code (0.36 against 0.04 us), once per job, instance and worker of a read.
_JOB_STATES: dict[str, JobState] = {s.value: s for s in JobState}
_HOLDS: dict[str, Hold] = {h.value: h for h in Hold}
_INSTANCE_STATES: dict[str, InstanceState] = {s.value: s for s in InstanceState}
_WORKER_STATES: dict[str, WorkerState] = {s.value: s for s in WorkerState}


def read_jobs(conn: Connection, where: str = "") -> list[Job]:
    """Job rows (without frames, instances or dependencies).  `where` and `order` in
    these readers are corral's own SQL, never user text."""
    dialect = conn.dialect.name
    ts = _optional(timestamp_parser(dialect))
    sql = f"SELECT {job_columns(dialect)} FROM jobs{_clauses(where, '')}"  # noqa: S608
    return [Job(i, name, prio, _JOB_STATES[st], _HOLDS[hold], by, limit, retries, ts(submitted), ts(since), ts(retried),
                owner, version)
            for i, name, prio, st, hold, by, limit, retries, submitted, since, retried, owner, version
            in raw_rows(conn, sql)]


def read_instances(conn: Connection, where: str = "", order: str = "") -> list[Instance]:
    dialect = conn.dialect.name
    ts = _optional(timestamp_parser(dialect))
    sql = f"SELECT {instance_columns(dialect)} FROM instances{_clauses(where, order)}"  # noqa: S608
    return [Instance(intern(i), j, intern(host), _INSTANCE_STATES[st], ts(since), version)
            for i, j, host, st, since, version in raw_rows(conn, sql)]


def read_workers(conn: Connection, where: str = "", order: str = "") -> list[Worker]:
    dialect = conn.dialect.name
    ts = _optional(timestamp_parser(dialect))
    sql = f"SELECT {worker_columns(dialect)} FROM workers{_clauses(where, order)}"  # noqa: S608
    return [Worker(intern(name), _WORKER_STATES[st], ts(since), version) for name, st, since, version in raw_rows(conn, sql)]


#: A frame row as `frame_rows` yields it: a `Frame`'s own fields, in its order, parsed.
FrameRow = tuple[int, int, FrameState, str | None, str | None, int, int, int | None, datetime | None, datetime | None,
                 datetime | None, str | None, str | None, int]
#: Frame states by their stored value.
FRAME_STATES: dict[str, FrameState] = {s.value: s for s in FrameState}


def frame_rows(conn: Connection, where: str = "", order: str = "", *, stream: bool = False) -> Iterator[FrameRow]:
    """Frame rows without runs or dependencies, as tuples: the hot loop of a whole read,
    so the timestamp parser is called inline (SQLite: `fromisoformat` itself).  Host and
    instance names are interned: a million frames and their runs name a few thousand
    hosts and instances, and one string each instead of one per row saves about a fifth
    of a big farm's memory."""
    dialect = conn.dialect.name
    ts = timestamp_parser(dialect)
    states = FRAME_STATES
    sql = f"SELECT {frame_columns(dialect)} FROM frames{_clauses(where, order)}"  # noqa: S608
    for j, n, st, host, inst_id, attempts, retries, code, started, finished, since, layer, avoid, version in raw_rows(
        conn, sql, stream=stream
    ):
        yield (j, n, states[st], host and intern(host), inst_id and intern(inst_id), attempts, retries, code,
               None if started is None else ts(started), None if finished is None else ts(finished),
               None if since is None else ts(since), layer and intern(layer), avoid, version)


def changed_frames(conn: Connection, where: str) -> list[FrameChange]:
    """The frame rows a steady cycle reads, decoded (the state a member, timestamps
    parsed) but with the driver's strings for the names: the live farm keeps the one it
    holds where a row did not change a name (`LiveFarm.apply`) and interns only a new
    one, so no name is interned twice (1M frames: ten thousand rows a cycle)."""
    dialect = conn.dialect.name
    ts, states = timestamp_parser(dialect), FRAME_STATES
    sql = f"SELECT {frame_columns(dialect)} FROM frames{_clauses(where, '')}"  # noqa: S608
    return [(j, n, states[st], host, inst, attempts, retries, code,
             None if started is None else ts(started), None if finished is None else ts(finished),
             None if since is None else ts(since), layer, avoid, version)
            for j, n, st, host, inst, attempts, retries, code, started, finished, since, layer, avoid, version
            in raw_rows(conn, sql)]


def read_frames(conn: Connection, where: str = "", order: str = "", *, stream: bool = False) -> Iterator[Frame]:
    """`frame_rows` as `Frame`s."""
    for row in frame_rows(conn, where, order, stream=stream):
        yield Frame(*row)


def read_runs(conn: Connection, where: str = "", *, stream: bool = False) -> Iterator[tuple[int, int, FrameRun]]:
    """Run rows in the order they were recorded, as (job id, frame number, run).

    With `where`, the rows are sorted here, not by the database: SQLite answers
    `WHERE rev >= ? ... ORDER BY id` by walking the whole table in id order instead of
    using the `rev` index (a million-frame farm's steady read of a thousand runs took
    34 ms instead of 1.5 ms).
    """
    dialect = conn.dialect.name
    ts = timestamp_parser(dialect)
    states = {s.value: s for s in FrameState}
    sql = f"SELECT {run_columns(dialect)} FROM frame_runs{_clauses(where, '' if where else 'id')}"  # noqa: S608
    rows: Iterable[tuple[Any, ...]] = raw_rows(conn, sql, stream=stream)
    if where:
        rows = sorted(rows, key=itemgetter(0))
    for run_id, j, n, host, inst_id, st, code, started, finished in rows:
        yield j, n, FrameRun(host and intern(host), inst_id and intern(inst_id), states[st], code,
                             None if started is None else ts(started), None if finished is None else ts(finished),
                             run_id)


def _optional(parse: Callable[[Any], datetime]) -> Callable[[Any], datetime | None]:
    return lambda value: None if value is None else parse(value)


def read_farm(conn: Connection) -> Farm:
    """The whole farm as stored, each entity with the version it was read at.

    Read at the driver level (no SQLAlchemy result processor per value): a million
    frames and their runs are most of a daemon's start-up.
    """
    names = interned_names(conn)  # (held until every row that names them holds them)
    jobs: dict[int, Job] = {j.id: j for j in read_jobs(conn)}
    for job_id, dep in raw_rows(conn, "SELECT job_id, depends_on FROM job_dependencies ORDER BY job_id, position"):
        jobs[job_id].depends_on.append(dep)
    for inst in read_instances(conn, order="job_id, id"):
        jobs[inst.job_id].instances[inst.id] = inst
    job, job_frames = None, None
    for frame in read_frames(conn, order="job_id, number", stream=True):
        if frame.job_id != job:
            job, job_frames = frame.job_id, jobs[frame.job_id].frames
        job_frames[frame.number] = frame  # type: ignore[index]
    for j, n, run in read_runs(conn, stream=True):
        jobs[j].frames[n].runs.append(run)
    fdep = "SELECT job_id, number, depends_job, depends_number FROM frame_dependencies ORDER BY job_id, number, position"
    for j, n, dj, dn in raw_rows(conn, fdep):
        jobs[j].frames[n].depends_on.append((dj, dn))
    workers = {w.name: w for w in read_workers(conn, order="name")}
    del names
    return Farm(jobs=jobs, workers=workers)


def read_part(conn: Connection, *, job: int | None = None, worker: str | None = None) -> Farm:
    """One job (its frames, runs, instances, and the jobs it waits on) or one worker, with
    versions: what one action reads and writes (`corral.effects` touches nothing else),
    for applying it without reading the whole farm (the outbox's take-back)."""
    farm = Farm()
    if worker is not None:
        farm.workers = {w.name: w for w in read_workers(conn) if w.name == worker}  # (no user text in SQL)
    if job is None:
        return farm
    job_id = int(job)
    farm.jobs = {j.id: j for j in read_jobs(conn, f"id = {job_id}")}
    if job_id not in farm.jobs:
        return farm
    deps = [d for (d,) in raw_rows(conn, f"SELECT depends_on FROM job_dependencies WHERE job_id = {job_id} ORDER BY position")]  # noqa: S608
    farm.jobs[job_id].depends_on = deps
    for dep in read_jobs(conn, f"id IN ({', '.join(str(int(d)) for d in deps)})") if deps else []:
        farm.jobs.setdefault(dep.id, dep)
    target = farm.jobs[job_id]
    for inst in read_instances(conn, f"job_id = {job_id}", "id"):
        target.instances[inst.id] = inst
    for frame in read_frames(conn, f"job_id = {job_id}", "number"):
        target.frames[frame.number] = frame
    for _j, n, run in read_runs(conn, f"job_id = {job_id}"):
        target.frames[n].runs.append(run)
    return farm


def interned_names(conn: Connection) -> list[str]:
    """The farm's instance ids and their hosts' names, interned before a whole read, as copies
    made one after another, so that the one string of each name lies in a few
    megabytes of memory instead of wherever the frame row that first named it did.

    Every changed frame row a steady cycle reads is interned (`frame_rows`), and
    finding the interned string means reading it: scattered over a million frames'
    memory, that was a cache miss or two a row (1M frames: interning 10k rows' names
    16.7 -> 13.2 ms with them packed).  The caller holds the list until the rows that
    name them hold them (an interned string nothing refers to is dropped).
    """
    return [intern("".join((name, ""))) for row in raw_rows(conn, "SELECT id, host FROM instances") for name in row]


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
