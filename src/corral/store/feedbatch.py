"""Supervisor events applied a batch at a time: the feed's one set of rules.

Written one at a time, each event in a savepoint (the writer this replaced), an event
was about ten statements, each built and compiled by SQLAlchemy, and the job's state
derived again by a query after every frame event: 200 to 900 events a second, where a
farm of short frames or a host failing everything sends thousands.

This module gives the same rows for a whole batch with a handful of statements:

1. every row the batch names (jobs, frames, instances, hosts, and the instances of its
   jobs) is read up front, a query per table on the driver's cursor, and locked
   (`FOR UPDATE` on PostgreSQL, in one order for every writer of the feed: jobs,
   frames, instances, hosts; SQLite's writer lock is the transaction's);
2. the events are played in order on those rows in memory (`_Batch`: the feed's one
   set of rules): a rejected event raises before it changes anything, so it changes
   nothing; every write bumps `version` and `updated_at`, write by write, so the
   final rows are those of the events written one at a time;
3. the job's state is derived after each frame or instance event from what the
   batch holds in memory (the job's named frames and all its instances) plus which
   states its other frames are in: one query per job per batch (`_Base`), not one
   per event; those frames do not move during the batch (locked, or ours alone);
4. the rows the batch changed are written once each, one `executemany` per table and
   kind (INSERT for new instances, hosts and the named frames of jobs the batch
   submitted, UPDATE by key for the rest), then the
   frame runs and the `applied_events` records.  The database's triggers stamp `rev`
   on every row written (docs/architecture.md, invariant 1), as for any writer.

A submitted job is written at once with `events.submit_rows`' rows, except the frames
later events of the batch name: those are held like the rest and inserted at the end.

Any database error (a concurrent ingest of the same stream inserted an event id first,
say) rolls the batch back to its savepoint and it is applied again one event at a time
(`apply_one_by_one`: each a batch of one in its own savepoint), which sorts out which
events were applied by the other.  The
columns read and written are `corral.farm.SCHEMA`'s, so a new stored field flows
through; values are converted by the tables' own column types, as SQLAlchemy would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from operator import itemgetter
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DataError, IntegrityError

from corral.farm import columns, key_columns, utcnow
from corral.feed import (
    BadLine,
    Event,
    FrameCompleted,
    FrameFailed,
    FrameStarted,
    InstanceEnded,
    InstanceStarted,
    JobSpec,
    JobSubmitted,
    SubmitState,
    WorkerDown,
    WorkerUp,
)
from corral.ports import SUPERVISOR
from corral.states import FrameState, Hold, InstanceState, JobState, Kind, WorkerState, derive_job_state
from corral.store.events import EventRejected, EventResult, _applied_ids, check_submit, submit_rows
from corral.store.tables import UTCDateTime, as_utc, table

#: Enum values by member and members by value, looked up once per event (an enum's
#: `.value` and `Hold(text)` cost more than the dictionary).
_VALUE: dict[Any, str] = {m: m.value for e in (FrameState, InstanceState, JobState, WorkerState) for m in e}
_HOLD = {h.value: h for h in Hold}
#: `derive_job_state` by its arguments (which states occur): it is pure.
_DERIVED: dict[tuple[str, frozenset[str], frozenset[str], bool], str] = {}
RUNNING, COMPLETE, FAILED = FrameState.RUNNING.value, FrameState.COMPLETE.value, FrameState.FAILED.value
INSTANCE_RUNNING, INSTANCE_BLOCKED = InstanceState.RUNNING.value, InstanceState.BLOCKED.value
UP, DOWN, LOCKED = WorkerState.UP.value, WorkerState.DOWN.value, WorkerState.LOCKED.value

#: Event classes tested per event, as tuples: `isinstance` with `A | B` builds the union
#: each time and tests it slowly (a tenth of reading a batch's rows, 60,000 tests a batch).
_FRAME_EVENTS = (FrameStarted, FrameCompleted, FrameFailed)
_FINISHED = (FrameCompleted, FrameFailed)
_WORKER_EVENTS = (WorkerUp, WorkerDown)

TABLES = {Kind.JOB: "jobs", Kind.FRAME: "frames", Kind.INSTANCE: "instances", Kind.WORKER: "workers"}
#: Keys a query names at most (SQLite's and psycopg's parameter limits are far above).
CHUNK = 2000

Row = dict[str, Any]


def apply_batch(
    conn: Connection,
    items: Sequence[tuple[int, Event]],
    *,
    now: Callable[[], datetime] | None = None,
    actor: str = SUPERVISOR,
    record: bool = True,
) -> list[EventResult | BadLine]:
    """Apply `(line, event)` pairs in order on `conn` (inside the caller's transaction):
    the same rows and results as the events applied one at a time (`apply_one_by_one`),
    written a batch at a time."""
    if not items:
        return []
    refused = _refused(conn)
    savepoint = conn.begin_nested()
    try:
        out = _Batch(conn, now or utcnow, actor, record).run(items)
    except refused:
        savepoint.rollback()
        return apply_one_by_one(conn, items, now=now, actor=actor, record=record)
    except BaseException:
        savepoint.rollback()
        raise
    savepoint.commit()
    return out


def apply_one_by_one(
    conn: Connection,
    items: Sequence[tuple[int, Event]],
    *,
    now: Callable[[], datetime] | None = None,
    actor: str = SUPERVISOR,
    record: bool = True,
) -> list[EventResult | BadLine]:
    """The events of a batch the database refused, each a batch of one in a savepoint of
    its own: the one it refuses comes back as a BadLine (or as already applied, when a
    concurrent ingest of the same stream recorded its id first) and the rest are applied."""
    refused = _refused(conn)
    out: list[EventResult | BadLine] = []
    for line, event in items:
        savepoint = conn.begin_nested()
        try:
            [result] = _Batch(conn, now or utcnow, actor, record).run([(line, event)])
        except refused as err:
            savepoint.rollback()
            again = _applied_ids(conn, [event.id]) if record else {}
            if event.id in again:
                out.append(EventResult(line, event.id, event.type, True, again[event.id], "already applied"))
            else:
                out.append(BadLine(line, f"{event.type}: refused by the database: {getattr(err, 'orig', err)}",
                                   event.id))
            continue
        except BaseException:
            savepoint.rollback()
            raise
        savepoint.commit()
        out.append(result)
    return out


def _refused(conn: Connection) -> tuple[type[BaseException], ...]:
    """The errors by which the database refuses rows (SQLAlchemy's, and the driver's own,
    raised by its cursor)."""
    refused: tuple[type[BaseException], ...] = (IntegrityError, DataError)
    dbapi = conn.dialect.dbapi
    if dbapi is not None:
        refused += (dbapi.IntegrityError, dbapi.DataError)
    return refused


# --- columns and conversions, once per dialect ------------------------------------------


class _Times:
    """Timestamps to and from the driver, as `UTCDateTime` stores them, remembered: a
    batch holds a few distinct instants in thousands of cells."""

    def __init__(self, dialect: Dialect) -> None:
        self.sqlite = dialect.name == "sqlite"
        self.out: dict[datetime, Any] = {}
        self.back: dict[Any, datetime | None] = {}

    def to_db(self, value: datetime | None) -> Any:
        if value is None or not self.sqlite:
            return value  # psycopg sends an aware datetime as it is
        text = self.out.get(value)
        if text is None:
            if value.tzinfo is UTC:  # (the offset, "+00:00", cut off: no naive copy made first)
                text = self.out[value] = value.isoformat(" ", "microseconds")[:26]
            else:
                utc = as_utc(value)  # naive means UTC, as UTCDateTime reads it
                assert utc is not None
                text = self.out[value] = utc.replace(tzinfo=None).isoformat(" ", "microseconds")
        return text

    def to_python(self, raw: Any) -> datetime | None:
        if raw is None:
            return None
        value = self.back.get(raw)
        if value is None:
            value = self.back[raw] = (as_utc(datetime.fromisoformat(raw)) if self.sqlite else as_utc(raw))
        return value


class _Columns:
    """One table's columns as the batch writes them: SCHEMA's for a farm kind (every
    column for the others), which hold timestamps, and the statements."""

    def __init__(self, name: str, cols: Sequence[str], keys: Sequence[str], dialect: Dialect) -> None:
        t = table(name)
        self.name, self.cols, self.keys = name, tuple(cols), tuple(keys)
        self.stamped = dialect.name == "sqlite" and "rev" in t.c  # see migration 0009
        self.times = [i for i, c in enumerate(self.cols) if isinstance(t.c[c].type, UTCDateTime)]
        self.written = (*self.cols, "updated_at") if "updated_at" in t.c and "updated_at" not in cols else self.cols
        self.written_times = [i for i, c in enumerate(self.written) if isinstance(t.c[c].type, UTCDateTime)]
        #: Other conversions SQLAlchemy would make (a boolean, say): rare, so kept generic.
        self.binders = [(i, p) for i, c in enumerate(self.written) if i not in self.written_times
                        and (p := t.c[c].type._cached_bind_processor(dialect)) is not None]
        mark = "%s" if dialect.name == "postgresql" else "?"
        stamp = ["rev"] if self.stamped else []
        sets = [c for c in self.written if c not in self.keys]
        self._written = itemgetter(*self.written) if len(self.written) > 1 else lambda row: (row[self.written[0]],)
        self._sets = itemgetter(*sets) if len(sets) > 1 else lambda row: tuple(row[c] for c in sets)
        self.set_times = [i for i, c in enumerate(sets) if isinstance(t.c[c].type, UTCDateTime)]
        self.update_order = [*sets, *self.keys]

        self.update_sql = (f"UPDATE {name} SET {', '.join(f'{c} = {mark}' for c in [*sets, *stamp])} "  # noqa: S608
                           f"WHERE {' AND '.join(f'{k} = {mark}' for k in self.keys)}")
        inserted = [*self.written, *stamp]
        self.insert_sql = f"INSERT INTO {name} ({', '.join(inserted)}) VALUES ({', '.join(mark for _ in inserted)})"  # noqa: S608
        #: PostgreSQL: the same writes as one statement over arrays, a column each (a row
        #: a round trip, even pipelined, cost more than the rows' writing).
        self.pg = dialect.name == "postgresql"
        if self.pg:
            def arrays(names: Sequence[str]) -> str:
                return ", ".join(f"%s::{t.c[c].type.compile(dialect=dialect)}[]" for c in names)

            def alias(names: Sequence[str]) -> str:
                return ", ".join(f'"{c}"' for c in names)

            self.update_sql = (f"UPDATE {name} AS t SET {', '.join(f'{c} = v.{c}' for c in sets)} "  # noqa: S608
                               f"FROM unnest({arrays(self.update_order)}) AS v({alias(self.update_order)}) "
                               f"WHERE {' AND '.join(f't.{k} = v.{k}' for k in self.keys)}")
            self.insert_sql = (f"INSERT INTO {name} ({', '.join(self.written)}) SELECT {alias(self.written)} "  # noqa: S608
                               f"FROM unnest({arrays(self.written)}) WITH ORDINALITY AS v({alias(self.written)}, n) "
                               "ORDER BY n")
        #: What a row the batch creates holds in the columns it does not set: the table's defaults.
        self.defaults: dict[str, Any] = {
            c: (getattr(d, "arg", None) if (d := t.c[c].default) is not None and d.is_scalar else None)
            for c in self.written
        }

    def write(self, cursor: Any, sql: str, params: list[tuple[Any, ...]]) -> None:
        """`params` (rows of `insert_params` or `update_params`) written with `sql`: on
        SQLite a statement a row, on PostgreSQL one for all (a column an array)."""
        if not params:
            return
        if self.pg:
            cursor.execute(sql, [list(column) for column in zip(*params, strict=True)])
        else:
            cursor.executemany(sql, params)

    def row(self, raw: Sequence[Any], times: _Times) -> Row:
        values = list(raw)
        for i in self.times:
            values[i] = times.to_python(values[i])
        return dict(zip(self.cols, values, strict=True))

    def _values(self, row: Row, times: _Times) -> list[Any]:
        try:
            values = list(self._written(row))
        except KeyError:  # a row made with fewer columns than the table has (a new stored field)
            values = [row[c] if c in row else self.defaults.get(c) for c in self.written]
        if times.sqlite:
            memo = times.out
            for i in self.written_times:
                if (v := values[i]) is not None:
                    values[i] = memo.get(v) or times.to_db(v)
        for i, proc in self.binders:
            values[i] = proc(values[i])
        return values

    def insert_params(self, row: Row, times: _Times, rev: int | None) -> tuple[Any, ...]:
        values = self._values(row, times)
        return (*values, rev) if self.stamped else tuple(values)

    def update_params(self, row: Row, times: _Times, rev: int | None) -> tuple[Any, ...]:
        values = list(self._sets(row))
        if times.sqlite:
            memo = times.out
            for i in self.set_times:
                if (v := values[i]) is not None:
                    values[i] = memo.get(v) or times.to_db(v)
        if self.stamped:
            values.append(rev)
        values.extend(row[k] for k in self.keys)
        return tuple(values)


@cache
def _columns(kind: Kind, dialect: Dialect) -> _Columns:
    return _Columns(TABLES[kind], columns(kind), key_columns(kind), dialect)


@cache
def _table_columns(name: str, cols: tuple[str, ...], dialect: Dialect) -> _Columns:
    return _Columns(name, cols, (), dialect)


_RUN_COLS = ("job_id", "number", "host", "instance", "state", "exit_code", "started_at", "finished_at")
_EVENT_COLS = ("id", "type", "job_id", "at", "applied_at")


def _state_probe(pg: bool) -> str:
    """How many of a job's frames are in each state, counting each at most to a limit,
    and whether any was retried: one statement, an index seek per state."""
    mark = "%s" if pg else "?"
    counts = [f"(SELECT count(*) FROM (SELECT 1 FROM frames WHERE job_id = {mark} AND state = '{s.value}' "  # noqa: S608
              f"LIMIT {mark}) AS c)" for s in FrameState]
    retried = f"EXISTS (SELECT 1 FROM frames WHERE job_id = {mark} AND retries > 0)"  # noqa: S608
    return f"SELECT {', '.join(counts)}, {retried}"


# --- the batch -----------------------------------------------------------------------


class _Batch:
    """A batch's rows in memory, the events played on them, and the writes at the end."""

    def __init__(self, conn: Connection, clock: Callable[[], datetime], actor: str, record: bool) -> None:
        self.conn, self.clock, self.actor, self.record = conn, clock, actor, record
        self.dialect = conn.dialect
        self.pg = self.dialect.name == "postgresql"
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        self.cursor = dbapi.cursor()
        self.now: datetime = utcnow()
        self.rows: dict[Kind, dict[Any, Row | None]] = {kind: {} for kind in TABLES}
        #: Rows the batch makes, inserted at the end with the values its events leave them in.
        self.created: dict[Kind, dict[Any, Row]] = {Kind.INSTANCE: {}, Kind.WORKER: {}, Kind.FRAME: {}}
        self.dirty: dict[Kind, dict[Any, Row]] = {kind: {} for kind in TABLES}
        self.times = _Times(self.dialect)
        #: A frame's state as stored when the batch read it (what `_base` counts past).
        self.stored_state: dict[tuple[int, int], str] = {}
        #: The job's frames the batch holds, and how many of them are in each state now.
        self.job_frames: dict[int, list[tuple[int, int]]] = {}
        self.held: dict[int, Counter[str]] = {}
        self.job_instances: dict[int, set[str]] = {}
        self.bases: dict[int, tuple[frozenset[str], bool]] = {}
        #: A job's state as last derived, until what it is derived from moves (a state its
        #: frames are in appears or goes, an instance of it changes state): most frame
        #: events move a frame between states its job's frames are already in.
        self.derived: dict[int, str] = {}
        self.named_frames: dict[int, set[int]] = {}
        #: Rows to append, as the driver takes them (`_RUN_COLS`, `_EVENT_COLS`): thousands
        #: a batch, so no dict each.
        self.runs: list[tuple[Any, ...]] = []
        self.applied: list[tuple[Any, ...]] = []
        self.stamp: int | None = None

    # reading

    def _query(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        self.cursor.execute(sql, params)
        return list(self.cursor.fetchall())

    def _load(self, kind: Kind, keys: Iterable[Any], *, lock: bool, by: str | None = None) -> list[Row]:
        """Rows of `kind` by key (or by the column `by`), remembered; absent keys remembered as None."""
        spec = _columns(kind, self.dialect)
        keys = list(keys)
        found: list[Row] = []
        cols = ", ".join(f"t.{c}" for c in spec.cols)
        lock_sql = " FOR UPDATE OF t" if lock and self.pg else ""
        column = by or spec.keys[0]
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            if kind is Kind.FRAME and by is None:
                if self.pg:
                    sql = (f"SELECT {cols} FROM frames t JOIN unnest(%s::integer[], %s::integer[]) AS k(j, n) "  # noqa: S608
                           f"ON t.job_id = k.j AND t.number = k.n{' ORDER BY t.job_id, t.number' if lock_sql else ''}"
                           f"{lock_sql}")
                    params: Sequence[Any] = ([j for j, _ in chunk], [n for _, n in chunk])
                else:
                    values = ", ".join("(?, ?)" for _ in chunk)
                    sql = (f"WITH k(j, n) AS (VALUES {values}) SELECT {cols} FROM k CROSS JOIN frames t "  # noqa: S608
                           "ON t.job_id = k.j AND t.number = k.n")
                    params = [v for key in chunk for v in key]
            elif self.pg:
                order = f" ORDER BY t.{column}" if lock_sql else ""  # locked in key order, as every writer locks
                sql = f"SELECT {cols} FROM {spec.name} t WHERE t.{column} = ANY(%s){order}{lock_sql}"  # noqa: S608
                params = (chunk,)
            else:
                sql = f"SELECT {cols} FROM {spec.name} t WHERE t.{column} IN ({', '.join('?' for _ in chunk)})"  # noqa: S608
                params = chunk
            found += [spec.row(raw, self.times) for raw in self._query(sql, params)]
        known = self.rows[kind]
        if by is None:
            for key in keys:
                known.setdefault(key, None)
        for row in found:
            key = self._key(kind, row)
            if known.get(key) is None:
                known[key] = row
                self._remember(kind, key, row)
        return found

    @staticmethod
    def _key(kind: Kind, row: Row) -> Any:
        if kind is Kind.FRAME:
            return (row["job_id"], row["number"])
        return row["id"] if kind is not Kind.WORKER else row["name"]

    def _remember(self, kind: Kind, key: Any, row: Row) -> None:
        if kind is Kind.FRAME:
            self.stored_state[key] = row["state"]
            self.job_frames.setdefault(key[0], []).append(key)
            held = self.held.get(key[0])
            if held is None:
                held = self.held[key[0]] = Counter()
            held[row["state"]] += 1
            self.derived.pop(key[0], None)
        elif kind is Kind.INSTANCE:
            self.job_instances.setdefault(row["job_id"], set()).add(key)
            self.derived.pop(row["job_id"], None)

    def _preload(self, items: Sequence[tuple[int, Event]]) -> None:
        jobs: set[int] = set()
        frames: set[tuple[int, int]] = set()
        instances: set[str] = set()
        hosts: set[str] = set()
        for _, e in items:
            if isinstance(e, JobSubmitted):
                if e.job.id is not None:
                    jobs.add(e.job.id)
                continue
            if isinstance(e, _FRAME_EVENTS):
                jobs.add(e.job)
                frames.add((e.job, e.frame))
                self.named_frames.setdefault(e.job, set()).add(e.frame)
            elif isinstance(e, InstanceStarted):
                jobs.add(e.job)
            if not isinstance(e, _WORKER_EVENTS) and e.instance is not None:
                instances.add(e.instance)
            if e.host is not None:
                hosts.add(e.host)
        # Which jobs the named instances belong to, before locking in the order the
        # feed's writers lock: jobs, frames, instances, hosts.
        ids = sorted(instances)
        if not self.pg:  # one writer at a time: nothing to lock, so no order to keep
            jobs.update(row["job_id"] for row in self._load(Kind.INSTANCE, ids, lock=False))
        elif ids:  # the jobs of the named instances, to lock those first
            for start in range(0, len(ids), CHUNK):
                params: Sequence[Any] = (ids[start : start + CHUNK],)
                jobs.update(j for (j,) in self._query("SELECT job_id FROM instances WHERE id = ANY(%s)", params))
        self._load(Kind.JOB, sorted(jobs), lock=True)
        held = [row for row in self._load(Kind.FRAME, sorted(frames), lock=True)]
        # A finish that names no host or instance is about the frame's own: read those too.
        known = self.rows[Kind.INSTANCE]
        more = {row["instance"] for row in held if row["instance"] is not None and row["instance"] not in known}
        if self.pg:
            self._load(Kind.INSTANCE, sorted(instances | more), lock=True)
        elif more:
            self._load(Kind.INSTANCE, sorted(more), lock=False)
        hosts.update(row["host"] for row in held if row["host"] is not None)
        hosts.update(row["host"] for row in known.values() if row is not None)
        self._load(Kind.WORKER, sorted(hosts), lock=True)
        existing = sorted(j for j in jobs if self.rows[Kind.JOB].get(j) is not None)
        for job_id in existing:
            self.job_instances.setdefault(job_id, set())
        self._load(Kind.INSTANCE, existing, lock=False, by="job_id")
        if self.pg and existing:  # a round trip per job would cost more than the probes
            self._bases(existing)

    def _bases(self, job_ids: list[int]) -> None:
        """PostgreSQL: `_base` for many jobs in one statement."""
        limits = [Counter(self.stored_state[key] for key in self.job_frames.get(j, ())) for j in job_ids]
        params: list[Any] = [job_ids]
        params += [[held[s.value] + 1 for held in limits] for s in FrameState]
        names = [f"l{i}" for i, _ in enumerate(FrameState)]
        counts = [f"(SELECT count(*) FROM (SELECT 1 FROM frames f WHERE f.job_id = v.j AND f.state = '{s.value}' "  # noqa: S608 - fixed states
                  f"LIMIT v.{n}) AS c)" for s, n in zip(FrameState, names, strict=True)]
        sql = (f"SELECT v.j, {', '.join(counts)}, EXISTS (SELECT 1 FROM frames f WHERE f.job_id = v.j AND f.retries > 0) "  # noqa: S608
               f"FROM unnest(%s::integer[], {', '.join('%s::integer[]' for _ in names)}) AS v(j, {', '.join(names)})")
        by_job = dict(zip(job_ids, limits, strict=True))
        for job_id, *found in self._query(sql, params):
            held = by_job[job_id]
            states = frozenset(s.value for s, count in zip(FrameState, found, strict=False) if count > held[s.value])
            self.bases[job_id] = (states, bool(found[-1]))

    def submit(self, spec: JobSpec, at: datetime, now: datetime) -> int:
        """`events.submit_job` on the driver's cursor: the same checks and rows (`submit_rows`);
        the job and the frames the batch names are then held like the rest."""
        job_id = check_submit(self.conn, spec)
        rows = submit_rows(spec, job_id, at=at, now=now, actor=self.actor)
        rev = self._rev()
        jobs = _columns(Kind.JOB, self.dialect)
        jobs.write(self.cursor, jobs.insert_sql, [jobs.insert_params(rows.job, self.times, rev)])
        frames = _columns(Kind.FRAME, self.dialect)
        # The frames later events of the batch name are inserted at the end, once, as
        # those events leave them (not inserted now and updated then).
        named = self.named_frames.get(job_id, set())
        params = [frames.insert_params(row, self.times, rev) for row in rows.frames if row["number"] not in named]
        for start in range(0, len(params), 50_000):
            frames.write(self.cursor, frames.insert_sql, params[start : start + 50_000])
        deps = _table_columns("job_dependencies", ("job_id", "depends_on", "position"), self.dialect)
        deps.write(self.cursor, deps.insert_sql, [deps.insert_params(d, self.times, rev) for d in rows.dependencies])
        log = _table_columns("transitions", tuple(rows.log), self.dialect)
        log.write(self.cursor, log.insert_sql, [log.insert_params(rows.log, self.times, None)])
        # Held from here on as if read: SCHEMA's columns of the rows just written.
        # (a stored field `submit_rows` does not set holds the table's default, as inserted)
        self.rows[Kind.JOB][job_id] = {c: rows.job.get(c, jobs.defaults.get(c)) for c in jobs.cols}
        self.job_frames[job_id] = []  # none read from the store: `_base` counts every stored frame of it
        counts = self.held[job_id] = Counter()
        for row in rows.frames:
            if row["number"] in named:
                key = (job_id, row["number"])
                held = {c: row.get(c, frames.defaults.get(c)) for c in frames.written}
                self.rows[Kind.FRAME][key] = self.created[Kind.FRAME][key] = held
                counts[str(held["state"])] += 1
        self.job_instances.setdefault(job_id, set())
        return job_id

    def _rev(self) -> int | None:
        """SQLite: the stamp the triggers would give the rows written now (migration 0009:
        a writer that stamps its rows is not stamped again)."""
        if self.pg:
            return None
        if self.stamp is None:
            [(value,)] = self._query("SELECT value FROM revision WHERE id = 1", ())
            self.stamp = int(value)
        return self.stamp

    # the run

    def run(self, items: Sequence[tuple[int, Event]]) -> list[EventResult | BadLine]:
        try:
            return self._run(items)
        finally:
            self.cursor.close()

    def _run(self, items: Sequence[tuple[int, Event]]) -> list[EventResult | BadLine]:
        self._preload(items)
        # Read after the locks: an ingest of the same stream that held them has committed.
        seen = _applied_ids(self.conn, [e.id for _, e in items]) if self.record else {}
        out: list[EventResult | BadLine] = []
        for line, event in items:
            if self.record and event.id in seen:
                out.append(EventResult(line, event.id, event.type, True, seen[event.id], "already applied"))
                continue
            stamp = self.clock()
            self.now = stamp
            try:
                result = self.apply(event, stamp, line)
            except EventRejected as err:
                out.append(BadLine(line, f"{event.type}: {err}", event.id))
                continue
            if self.record:
                seen[event.id] = result.job_id
                to_db = self.times.to_db
                self.applied.append((event.id, event.type, result.job_id, to_db(event.at), to_db(stamp)))
            out.append(result)
        self._flush()
        return out

    def apply(self, event: Event, stamp: datetime, line: int) -> EventResult:
        at = event.at or stamp
        if isinstance(event, JobSubmitted):
            job_id = self.submit(event.job, at, stamp)
            state = "blocked" if event.job.state is SubmitState.BLOCKED else "pending"
            return EventResult(line, event.id, event.type, False, job_id, f"job {job_id} submitted {state}")
        if isinstance(event, FrameStarted):
            return self.frame_started(event, at, line)
        if isinstance(event, _FINISHED):
            return self.frame_finished(event, at, line)
        if isinstance(event, InstanceStarted):
            return self.instance_started(event, at, line)
        if isinstance(event, InstanceEnded):
            return self.instance_ended(event, at, line)
        return self.worker(event, at, line)

    # rows

    def _one(self, kind: Kind, key: Any) -> Row | None:
        known = self.rows[kind]
        if key not in known:  # not named up front (cannot happen for a well-formed batch): read it
            self._load(kind, [key], lock=True)
        return known[key]

    def job(self, job_id: int) -> Row:
        row = self._one(Kind.JOB, job_id)
        if row is None:
            raise EventRejected(f"no job {job_id} (submit it first: job_submitted)")
        return row

    def frame(self, job_id: int, number: int) -> Row:
        row = self._one(Kind.FRAME, (job_id, number))
        if row is None:
            raise EventRejected(f"job {job_id} has no frame {number}")
        return row

    def instance(self, ident: str) -> Row | None:
        return self._one(Kind.INSTANCE, ident)

    def write(self, kind: Kind, row: Row, key: Any, **values: Any) -> None:
        """Write the changed values, version + 1 and updated_at; nothing if none changed.
        (A frame's are `move_frame`'s, which keeps the job's counts.)"""
        assert kind is not Kind.FRAME, "a frame is written by move_frame"
        changed = False
        if kind is Kind.INSTANCE and row["state"] != values["state"]:
            self.derived.pop(row["job_id"], None)
        for name, value in values.items():
            if row[name] != value:
                row[name] = value
                changed = True
        if changed:
            row["version"] += 1
            row["updated_at"] = self.now
            self.dirty[kind][key] = row

    def move_frame(self, frame: Row, key: tuple[int, int], state: str, at: datetime, host: str | None,
                   instance: str | None, attempts: int, started: datetime | None, finished: datetime | None,
                   code: int | None) -> None:
        """`write` of a frame event's values (the feed's commonest write, two a frame
        rendered), field by field: the same result without a dict of them each time."""
        changed = False
        if (was := frame["state"]) != state:
            held = self.held[key[0]]
            held[was] -= 1
            held[state] += 1
            if not held[was] or held[state] == 1:  # which states the job's frames are in moved
                self.derived.pop(key[0], None)
            frame["state"], changed = state, True
            if frame["state_since"] != at:
                frame["state_since"] = at
        for name, value in (("host", host), ("instance", instance), ("attempts", attempts), ("started_at", started),
                            ("finished_at", finished), ("exit_code", code)):
            if frame[name] != value:
                frame[name], changed = value, True
        if changed:
            frame["version"] += 1
            frame["updated_at"] = self.now
            self.dirty[Kind.FRAME][key] = frame

    @staticmethod
    def state_values(row: Row, state: str, at: datetime) -> dict[str, Any]:
        return {"state": state, "state_since": at if row["state"] != state else row["state_since"]}

    def _create(self, kind: Kind, key: Any, row: Row) -> None:
        spec = _columns(kind, self.dialect)
        full = dict(spec.defaults)
        full.update(row, version=0, updated_at=self.now)
        self.rows[kind][key] = full
        self.created[kind][key] = full
        if kind is Kind.INSTANCE:
            self.job_instances.setdefault(full["job_id"], set()).add(key)
            self.derived.pop(full["job_id"], None)

    def ensure_worker(self, host: str, at: datetime, *, up: bool) -> None:
        row = self._one(Kind.WORKER, host)
        want = UP if up else DOWN
        if row is None:
            self._create(Kind.WORKER, host, {"name": host, "state": want, "state_since": at})
        elif row["state"] != LOCKED and row["state"] != want:  # (in its state already: nothing to write)
            self.write(Kind.WORKER, row, host, **self.state_values(row, want, at))

    def ensure_instance(self, job_id: int, ident: str, host: str | None, at: datetime, *, run: bool) -> str:
        row = self.instance(ident)
        if row is None:
            if host is None:
                raise EventRejected(f"instance {ident} is unknown: give its host")
            self._create(Kind.INSTANCE, ident, {"id": ident, "job_id": job_id, "host": host,
                                                "state": INSTANCE_RUNNING, "state_since": at})
            return host
        if row["job_id"] != job_id:
            raise EventRejected(f"instance {ident} belongs to job {row['job_id']}, not {job_id}")
        if host is not None and host != row["host"]:
            raise EventRejected(f"instance {ident} runs on {row['host']!r}, not {host!r}")
        if run and row["state"] != INSTANCE_BLOCKED and row["state"] != INSTANCE_RUNNING:
            self.write(Kind.INSTANCE, row, ident, **self.state_values(row, INSTANCE_RUNNING, at))
        return str(row["host"])

    def _base(self, job_id: int) -> tuple[frozenset[str], bool]:
        """Which states the job's frames the batch does not hold are in, and whether any of
        its frames was retried (events never change that): one query per job and batch."""
        base = self.bases.get(job_id)
        if base is None:
            held = Counter(self.stored_state[key] for key in self.job_frames.get(job_id, ()))
            params: list[Any] = []
            for s in FrameState:
                params += [job_id, held[s.value] + 1]
            params.append(job_id)
            [found] = self._query(_state_probe(self.pg), params)
            states = frozenset(s.value for s, count in zip(FrameState, found, strict=False) if count > held[s.value])
            base = self.bases[job_id] = (states, bool(found[-1]))
        return base

    def rederive(self, job: Row, at: datetime) -> tuple[int, str, str] | None:
        """The job's state derived again, from the rows in memory and the job's base."""
        job_id = job["id"]
        new = self.derived.get(job_id)
        if new is None:
            others, retried_frame = self._base(job_id)
            held = self.held.get(job_id)
            frame_states = others | {state for state, count in held.items() if count} if held else others
            instances = self.rows[Kind.INSTANCE]
            inst_states = {instances[i]["state"] for i in self.job_instances.get(job_id, ())}  # type: ignore[index]
            retried = job["retries"] > 0 or retried_frame  # (events never change a job's hold or retries)
            key = (job["hold"], frozenset(frame_states), frozenset(inst_states), retried)
            new = _DERIVED.get(key)
            if new is None:  # a few dozen combinations occur: derived once each
                new = _DERIVED[key] = _VALUE[derive_job_state(_HOLD[key[0]], key[1], key[2], retried)]
            self.derived[job_id] = new
        if new == job["state"]:
            job["version"] += 1
            job["updated_at"] = self.now
            self.dirty[Kind.JOB][job_id] = job
            return None
        old = str(job["state"])
        self.write(Kind.JOB, job, job_id, **self.state_values(job, new, at))
        return (job_id, old, new)

    # the events

    def frame_started(self, e: FrameStarted, at: datetime, line: int) -> EventResult:
        job = self.job(e.job)
        frame = self.frame(e.job, e.frame)
        host = e.host
        if e.instance is not None:
            host = self.ensure_instance(e.job, e.instance, host, at, run=True)
        elif host is None:
            raise EventRejected("give the host (or a known instance) the frame started on")
        self.ensure_worker(host, at, up=True)
        self.move_frame(frame, (e.job, e.frame), RUNNING, at, host, e.instance, frame["attempts"] + 1, at, None, None)
        change = self.rederive(job, at)
        where = f"{host}/{e.instance}" if e.instance else host
        return EventResult(line, e.id, e.type, False, e.job, f"frame {e.job}:{e.frame} running on {where}", change)

    def frame_finished(self, e: FrameCompleted | FrameFailed, at: datetime, line: int) -> EventResult:
        job = self.job(e.job)
        frame = self.frame(e.job, e.frame)
        was_running = frame["state"] == RUNNING
        host, instance = e.host, e.instance
        if host is None and instance is None:
            host, instance = frame["host"], frame["instance"]
        elif instance is None and host == frame["host"]:
            instance = frame["instance"]
        if instance is not None:
            host = self.ensure_instance(e.job, instance, host, at, run=False)
        if host is not None:
            self.ensure_worker(host, at, up=True)
        state = COMPLETE if isinstance(e, FrameCompleted) else FAILED
        started = frame["started_at"] if was_running else None
        attempts = frame["attempts"] if was_running else frame["attempts"] + 1
        self.move_frame(frame, (e.job, e.frame), state, at, host, instance, attempts, started, at, e.exit_code)
        to_db = self.times.to_db
        self.runs.append((e.job, e.frame, host, instance, state, e.exit_code, to_db(started), to_db(at)))
        change = self.rederive(job, at)
        code = "" if e.exit_code is None else f" (exit code {e.exit_code})"
        on = f" on {host}" if host else ""
        return EventResult(line, e.id, e.type, False, e.job, f"frame {e.job}:{e.frame} {state}{on}{code}", change)

    def instance_started(self, e: InstanceStarted, at: datetime, line: int) -> EventResult:
        job = self.job(e.job)
        self.ensure_instance(e.job, e.instance, e.host, at, run=True)
        self.ensure_worker(e.host, at, up=True)
        change = self.rederive(job, at)
        return EventResult(line, e.id, e.type, False, e.job, f"instance {e.instance} running on {e.host}", change)

    def instance_ended(self, e: InstanceEnded, at: datetime, line: int) -> EventResult:
        row = self.instance(e.instance)
        if row is None:
            raise EventRejected(f"no instance {e.instance} (instance_started, or a frame event naming it, creates one)")
        if e.job is not None and e.job != row["job_id"]:
            raise EventRejected(f"instance {e.instance} belongs to job {row['job_id']}, not {e.job}")
        if e.host is not None and e.host != row["host"]:
            raise EventRejected(f"instance {e.instance} runs on {row['host']!r}, not {e.host!r}")
        job = self.job(row["job_id"])
        if e.state is not None:
            state = InstanceState(e.state.value)
        else:
            state = InstanceState.COMPLETE if e.exit_code in (None, 0) else InstanceState.FAILED
        if row["state"] != INSTANCE_BLOCKED:
            self.write(Kind.INSTANCE, row, e.instance, **self.state_values(row, state.value, at))
        change = self.rederive(job, at)
        return EventResult(line, e.id, e.type, False, row["job_id"], f"instance {e.instance} {state.value}", change)

    def worker(self, e: WorkerUp | WorkerDown, at: datetime, line: int) -> EventResult:
        up = isinstance(e, WorkerUp)
        self.ensure_worker(e.host, at, up=up)
        return EventResult(line, e.id, e.type, False, None, f"worker {e.host} {'up' if up else 'down'}")

    # writing

    def _flush(self) -> None:
        """Each changed row once (new rows first: frames name instances, runs name frames), then
        the runs and the applied events' records."""
        rev = self._rev() if any(self.dirty.values()) or any(self.created.values()) or self.runs else None
        for kind in (Kind.WORKER, Kind.INSTANCE, Kind.FRAME):
            spec = _columns(kind, self.dialect)
            new = self.created[kind]
            spec.write(self.cursor, spec.insert_sql, [spec.insert_params(row, self.times, rev) for row in new.values()])
        for kind in (Kind.JOB, Kind.WORKER, Kind.INSTANCE, Kind.FRAME):
            spec = _columns(kind, self.dialect)
            created = self.created.get(kind, {})
            rows = [row for key, row in self.dirty[kind].items() if key not in created]
            spec.write(self.cursor, spec.update_sql, [spec.update_params(row, self.times, rev) for row in rows])
        runs = _table_columns("frame_runs", _RUN_COLS, self.dialect)
        applied = _table_columns("applied_events", _EVENT_COLS, self.dialect)
        # (appended as built: columns with no conversion but the timestamps' `to_db`)
        assert not runs.binders and not applied.binders and runs.written == _RUN_COLS and applied.written == _EVENT_COLS
        runs.write(self.cursor, runs.insert_sql, [(*r, rev) for r in self.runs] if runs.stamped else self.runs)
        applied.write(self.cursor, applied.insert_sql, self.applied)
