"""Writing the supervisor's news to the store: jobs submitted, frames run, hosts up or down.

These are facts, not corral's decisions: they are written as told (never refused for a
stale version, never logged as transitions), but like every writer they bump each
row's `version` and `updated_at`, so a policy cycle that read the rows before is
refused by the compare-and-set applier instead of overwriting the news.

Events work on rows, not on the whole farm: a frame event reads and locks its job and
frame (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite's writer lock is taken by the
transaction), writes what changed and re-derives the job's state from the distinct
states of its frames and instances, so one event costs a few indexed statements
whatever the size of the farm.  `apply_events` runs many events in one transaction,
each in its own SAVEPOINT: a bad event rolls back alone.  This is the reference: the
feed applies a batch at once with the same rules (`corral.store.feedbatch`, held to
this module's results and rows by tests/test_feedbatch.py), and falls back to this
when the database refuses a batch.

Holds that corral or a wrangler put are never lifted by news: a blocked, suspended or
killed job keeps its state (`derive_job_state`), a blocked instance stays blocked and a
locked (quarantined) host stays locked whatever the supervisor says about it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import BindParameter, Exists, Select, and_, bindparam, exists, func, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DataError, IntegrityError

from corral.farm import utcnow
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
from corral.states import FrameState, Hold, InstanceState, JobState, WorkerState, derive_job_state
from corral.store.tables import table

#: Serialises id allocation of concurrent submits on one PostgreSQL database.
_PG_SUBMIT_LOCK = 0x636F7272616C + 1


class EventRejected(ValueError):
    """An event that cannot be applied (unknown job or frame, a mismatch); nothing changed."""


@dataclass(frozen=True)
class EventResult:
    """One event applied (or skipped, its id applied before) and what it did."""

    line: int
    event_id: str | None
    type: str
    skipped: bool
    job_id: int | None = None
    what: str = ""
    job_change: tuple[int, str, str] | None = None


def apply_events(
    conn: Connection,
    items: Sequence[tuple[int, Event]],
    *,
    now: Callable[[], datetime] | None = None,
    actor: str = "supervisor",
    record: bool = True,
) -> list[EventResult | BadLine]:
    """Apply `(line, event)` pairs in order on `conn` (inside the caller's transaction).

    Each event gets a SAVEPOINT; one that is rejected is rolled back and returned as a
    BadLine, and the next is applied.  With `record`, each applied event's id goes into
    `applied_events` in the same savepoint, and an id found there is skipped.
    """
    clock = now or utcnow
    seen = _applied_ids(conn, [e.id for _, e in items]) if record else {}
    out: list[EventResult | BadLine] = []
    for line, event in items:
        if record and event.id in seen:
            out.append(EventResult(line, event.id, event.type, True, seen[event.id], "already applied"))
            continue
        stamp = clock()
        savepoint = conn.begin_nested()
        try:
            result = apply_event(conn, event, now=stamp, line=line, actor=actor)
            if record:
                conn.execute(
                    insert(table("applied_events")).values(
                        id=event.id, type=event.type, job_id=result.job_id, at=event.at, applied_at=stamp
                    )
                )
        except (EventRejected, IntegrityError) as err:
            savepoint.rollback()
            # A concurrent ingest of the same stream may have applied it first (it held the
            # rows we waited for): then it is a replay, not a bad line.
            again = _applied_ids(conn, [event.id]) if record else {}
            if event.id in again:
                seen.update(again)
                out.append(EventResult(line, event.id, event.type, True, again[event.id], "already applied"))
            elif isinstance(err, EventRejected):
                out.append(BadLine(line, f"{event.type}: {err}", event.id))
            else:
                out.append(BadLine(line, f"{event.type}: refused by the database: {err.orig}", event.id))
            continue
        except DataError as err:
            savepoint.rollback()
            out.append(BadLine(line, f"{event.type}: refused by the database: {err.orig}", event.id))
            continue
        savepoint.commit()
        if record:
            seen[event.id] = result.job_id
        out.append(result)
    return out


def _applied_ids(conn: Connection, ids: list[str]) -> dict[str, int | None]:
    """Which of `ids` were applied before, each with the job it was about.

    PostgreSQL: the ids are joined from an array, one index probe each.  Given as
    `id IN (...500 values)`, its planner costs 500 random probes above one sequential
    read of the table, so a long-running feed read the whole growing table for every
    batch (measured: 66 ms against 3.8 ms at 420k recorded events, seconds a batch after
    minutes at 5,000 events a second)."""
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(
            "SELECT a.id, a.job_id FROM unnest(%(ids)s::text[]) AS k(id) JOIN applied_events a ON a.id = k.id",
            {"ids": ids})
        return {r[0]: r[1] for r in rows}
    t = table("applied_events")
    found: dict[str, int | None] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found.update({r.id: r.job_id for r in conn.execute(select(t.c.id, t.c.job_id).where(t.c.id.in_(chunk)))})
    return found


def apply_event(conn: Connection, event: Event, *, now: datetime, line: int = 0, actor: str = "supervisor") -> EventResult:
    """Write one event's facts (no savepoint, no idempotency record: see `apply_events`)."""
    at = event.at or now
    w = _Writer(conn, now)
    if isinstance(event, JobSubmitted):
        job_id = submit_job(conn, event.job, at=at, now=now, actor=actor)
        state = "blocked" if event.job.state is SubmitState.BLOCKED else "pending"
        return EventResult(line, event.id, event.type, False, job_id, f"job {job_id} submitted {state}")
    if isinstance(event, FrameStarted):
        return w.frame_started(event, at, line)
    if isinstance(event, FrameCompleted | FrameFailed):
        return w.frame_finished(event, at, line)
    if isinstance(event, InstanceStarted):
        return w.instance_started(event, at, line)
    if isinstance(event, InstanceEnded):
        return w.instance_ended(event, at, line)
    return w.worker(event, at, line)


# --- submitting ------------------------------------------------------------------------


def submit_job(conn: Connection, spec: JobSpec, *, at: datetime, now: datetime, actor: str) -> int:
    """Insert a job with its pending frames and dependencies; its id is returned.

    A job submitted `blocked` is held with no `blocked_by`: the built-in pack releases
    it once its dependencies are complete.  A "submit" row in the transition log (by
    `actor`) starts the job's history.
    """
    job_id = check_submit(conn, spec)
    rows = submit_rows(spec, job_id, at=at, now=now, actor=actor)
    conn.execute(insert(table("jobs")).values(**rows.job))
    for start in range(0, len(rows.frames), 5000):
        conn.execute(insert(table("frames")), rows.frames[start : start + 5000])
    if rows.dependencies:
        conn.execute(insert(table("job_dependencies")), rows.dependencies)
    conn.execute(insert(table("transitions")).values(**rows.log))
    return job_id


def check_submit(conn: Connection, spec: JobSpec) -> int:
    """The id a submit gets (the next free one when the spec has none), or EventRejected:
    the id is taken, a dependency is missing, listed twice, or the job itself."""
    jobs = table("jobs")
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_SUBMIT_LOCK:d})")
    job_id = spec.id
    if job_id is None:
        job_id = int(conn.execute(select(func.coalesce(func.max(jobs.c.id), 0))).scalar_one()) + 1
    elif conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is not None:
        raise EventRejected(f"job {job_id} exists already")
    deps = list(spec.depends_on)
    if job_id in deps:
        raise EventRejected(f"job {job_id} cannot depend on itself")
    dupes = sorted({d for d in deps if deps.count(d) > 1})
    if dupes:
        raise EventRejected(f"job {dupes[0]} is listed twice in depends_on")
    if deps:
        known = set(conn.execute(select(jobs.c.id).where(jobs.c.id.in_(deps))).scalars())
        missing = [d for d in deps if d not in known]
        if missing:
            raise EventRejected(f"no job {', '.join(map(str, missing))} to depend on")
    return job_id


@dataclass(frozen=True)
class SubmitRows:
    """The rows a submit writes, by column: the job, its frames, its dependencies, its log row."""

    job: dict[str, Any]
    frames: list[dict[str, Any]]
    dependencies: list[dict[str, Any]]
    log: dict[str, Any]


def submit_rows(spec: JobSpec, job_id: int, *, at: datetime, now: datetime, actor: str) -> SubmitRows:
    """What a submit writes (both ways of applying events write these: one home)."""
    blocked = spec.state is SubmitState.BLOCKED
    state = JobState.BLOCKED if blocked else JobState.PENDING
    job = {
        "id": job_id,
        "name": spec.name,
        "priority": spec.priority,
        "state": state.value,
        "hold": (Hold.BLOCKED if blocked else Hold.NONE).value,
        "blocked_by": None,
        "retry_limit": spec.retry_limit,
        "retries": 0,
        "submitted_at": at,
        "state_since": at,
        "last_retry_at": None,
        "owner": spec.owner,
        "version": 0,
        "updated_at": now,
    }
    layer_of = spec.layer_of()
    frames = [
        {
            "job_id": job_id,
            "number": n,
            "state": FrameState.PENDING.value,
            "host": None,
            "instance": None,
            "attempts": 0,
            "retries": 0,
            "exit_code": None,
            "started_at": None,
            "finished_at": None,
            "state_since": at,
            "layer": layer_of.get(n),
            "avoid_hosts": None,
            "version": 0,
            "updated_at": now,
        }
        for n in spec.frames
    ]
    deps = list(spec.depends_on)
    waits = f", waiting on job {', '.join(map(str, deps))}" if deps else ""
    log = {
        "at": at,
        "kind": "job",
        "entity_id": str(job_id),
        "job_id": job_id,
        "action": "submit",
        "from_state": "",
        "to_state": state.value,
        "actor": actor,
        "policy": None,
        "reason": f"submitted {state.value} with {len(frames)} frame(s){waits}",
        "cycle_id": None,
        "applied": True,
    }
    return SubmitRows(job, frames, [{"job_id": job_id, "depends_on": d, "position": k} for k, d in enumerate(deps)], log)


# --- frames, instances, workers ------------------------------------------------------


@cache
def _by_key(name: str) -> Select[Any]:
    """`SELECT * FROM name WHERE <primary key> = :<column> FOR UPDATE`, built once."""
    t = table(name)
    return select(t).where(and_(*(c == bindparam(c.name) for c in t.primary_key.columns))).with_for_update()


@cache
def _states_query() -> Select[Any]:
    """Which frame and instance states occur in job `:job_id`, and whether a frame was retried.

    Which states occur (not how often) is all `derive_job_state` needs: one EXISTS per
    state, each an index seek on (job_id, state), whatever the number of frames.
    """
    f, i = table("frames"), table("instances")
    job_id: BindParameter[int] = bindparam("job_id")
    probes: list[Exists] = [exists().where(and_(f.c.job_id == job_id, f.c.state == s.value)) for s in FrameState]
    probes += [exists().where(and_(i.c.job_id == job_id, i.c.state == s.value)) for s in InstanceState]
    probes.append(exists().where(and_(f.c.job_id == job_id, f.c.retries > 0)))
    return cast("Select[Any]", select(*probes))


class _Writer:
    """Row-level reads (locked) and writes (version bumped) for one event."""

    def __init__(self, conn: Connection, now: datetime) -> None:
        self.conn, self.now = conn, now

    # reading, locked for the rest of the transaction

    def _one(self, table_name: str, /, **key: Any) -> RowMapping | None:
        return self.conn.execute(_by_key(table_name), key).mappings().first()

    def job(self, job_id: int) -> RowMapping:
        row = self._one("jobs", id=job_id)
        if row is None:
            raise EventRejected(f"no job {job_id} (submit it first: job_submitted)")
        return row

    def frame(self, job_id: int, number: int) -> RowMapping:
        row = self._one("frames", job_id=job_id, number=number)
        if row is None:
            raise EventRejected(f"job {job_id} has no frame {number}")
        return row

    def instance(self, ident: str) -> RowMapping | None:
        return self._one("instances", id=ident)

    # writing

    def write(self, name: str, row: RowMapping, **values: Any) -> None:
        """Update the changed columns of `row`, bumping version and updated_at; no-op if none changed."""
        changed = {k: v for k, v in values.items() if row[k] != v}
        if not changed:
            return
        t = table(name)
        keys = [c.name for c in t.primary_key.columns]
        where = and_(*(t.c[k] == row[k] for k in keys))
        self.conn.execute(update(t).where(where).values(**changed, version=t.c.version + 1, updated_at=self.now))

    def state_values(self, row: RowMapping, state: str, at: datetime) -> dict[str, Any]:
        return {"state": state, "state_since": at if row["state"] != state else row["state_since"]}

    def ensure_worker(self, host: str, at: datetime, *, up: bool) -> None:
        """A host the supervisor mentions exists; one that runs work is up (a locked one stays locked)."""
        t = table("workers")
        row = self._one("workers", name=host)
        want = WorkerState.UP if up else WorkerState.DOWN
        if row is None:
            self.conn.execute(
                insert(t).values(name=host, state=want.value, state_since=at, version=0, updated_at=self.now)
            )
        elif row["state"] != WorkerState.LOCKED:
            self.write("workers", row, **self.state_values(row, want.value, at))

    def ensure_instance(self, job_id: int, ident: str, host: str | None, at: datetime, *, run: bool) -> str:
        """The instance exists on this job and host (created running); its host is returned."""
        row = self.instance(ident)
        if row is None:
            if host is None:
                raise EventRejected(f"instance {ident} is unknown: give its host")
            self.conn.execute(
                insert(table("instances")).values(
                    id=ident,
                    job_id=job_id,
                    host=host,
                    state=InstanceState.RUNNING.value,
                    state_since=at,
                    version=0,
                    updated_at=self.now,
                )
            )
            return host
        if row["job_id"] != job_id:
            raise EventRejected(f"instance {ident} belongs to job {row['job_id']}, not {job_id}")
        if host is not None and host != row["host"]:
            raise EventRejected(f"instance {ident} runs on {row['host']!r}, not {host!r}")
        if run and row["state"] != InstanceState.BLOCKED:
            self.write("instances", row, **self.state_values(row, InstanceState.RUNNING.value, at))
        return str(row["host"])

    def rederive(self, job: RowMapping, at: datetime) -> tuple[int, str, str] | None:
        """Set the job's state from its frames and instances (holds win); the change, if any."""
        job_id = job["id"]
        found = list(self.conn.execute(_states_query(), {"job_id": job_id}).one())
        frame_states = [s.value for s, hit in zip(FrameState, found, strict=False) if hit]
        inst_states = [s.value for s, hit in zip(InstanceState, found[len(FrameState) :], strict=False) if hit]
        retried = job["retries"] > 0 or bool(found[-1])
        new = derive_job_state(Hold(job["hold"]), frame_states, inst_states, retried).value
        if new == job["state"]:
            # The job's frames or instances moved even if its state did not: bump its
            # version, so a policy decision taken on the job as it was (kill it, retry a
            # frame of it) is refused by compare-and-set instead of overwriting this news.
            t = table("jobs")
            self.conn.execute(update(t).where(t.c.id == job_id).values(version=t.c.version + 1, updated_at=self.now))
            return None
        self.write("jobs", job, **self.state_values(job, new, at))
        return (job_id, str(job["state"]), new)

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
        self.write(
            "frames",
            frame,
            **self.state_values(frame, FrameState.RUNNING.value, at),
            host=host,
            instance=e.instance,
            attempts=frame["attempts"] + 1,
            started_at=at,
            finished_at=None,
            exit_code=None,
        )
        change = self.rederive(job, at)
        where = f"{host}/{e.instance}" if e.instance else host
        return EventResult(line, e.id, e.type, False, e.job, f"frame {e.job}:{e.frame} running on {where}", change)

    def frame_finished(self, e: FrameCompleted | FrameFailed, at: datetime, line: int) -> EventResult:
        job = self.job(e.job)
        frame = self.frame(e.job, e.frame)
        was_running = frame["state"] == FrameState.RUNNING
        host, instance = e.host, e.instance
        if host is None and instance is None:
            host, instance = frame["host"], frame["instance"]
        elif instance is None and host == frame["host"]:
            instance = frame["instance"]
        if instance is not None:
            host = self.ensure_instance(e.job, instance, host, at, run=False)
        if host is not None:
            self.ensure_worker(host, at, up=True)
        state = FrameState.COMPLETE if isinstance(e, FrameCompleted) else FrameState.FAILED
        started = frame["started_at"] if was_running else None
        self.write(
            "frames",
            frame,
            **self.state_values(frame, state.value, at),
            host=host,
            instance=instance,
            attempts=frame["attempts"] if was_running else frame["attempts"] + 1,
            started_at=started,
            finished_at=at,
            exit_code=e.exit_code,
        )
        self.conn.execute(
            insert(table("frame_runs")).values(
                job_id=e.job,
                number=e.frame,
                host=host,
                instance=instance,
                state=state.value,
                exit_code=e.exit_code,
                started_at=started,
                finished_at=at,
            )
        )
        change = self.rederive(job, at)
        code = "" if e.exit_code is None else f" (exit code {e.exit_code})"
        on = f" on {host}" if host else ""
        return EventResult(line, e.id, e.type, False, e.job, f"frame {e.job}:{e.frame} {state.value}{on}{code}", change)

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
        if row["state"] != InstanceState.BLOCKED:
            self.write("instances", row, **self.state_values(row, state.value, at))
        change = self.rederive(job, at)
        return EventResult(line, e.id, e.type, False, row["job_id"], f"instance {e.instance} {state.value}", change)

    def worker(self, e: WorkerUp | WorkerDown, at: datetime, line: int) -> EventResult:
        up = isinstance(e, WorkerUp)
        self.ensure_worker(e.host, at, up=up)
        return EventResult(line, e.id, e.type, False, None, f"worker {e.host} {'up' if up else 'down'}")
