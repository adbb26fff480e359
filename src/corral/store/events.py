"""Writing the supervisor's news to the store: what the feed's writers share.

These are facts, not corral's decisions: they are written as told (never refused for a
stale version, never logged as transitions), but like every writer they bump each
row's `version` and `updated_at`, so a policy cycle that read the rows before is
refused by the compare-and-set applier instead of overwriting the news.

The events are played by one set of rules, in `corral.store.feedbatch` (a batch at a
time; a batch the database refuses is played again one event at a time, each a batch
of one in a savepoint of its own).  This module holds what that shares with the API
and the CLI: the results (`EventResult`, `EventRejected`), the check and the rows of a
job submission (`check_submit`, `submit_rows`, `submit_job`), and which events were
applied before (`_applied_ids`).

Holds that corral or a wrangler put are never lifted by news: a blocked, suspended or
killed job keeps its state (`derive_job_state`), a blocked instance stays blocked and a
locked (quarantined) host stays locked whatever the supervisor says about it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from corral.feed import (
    JobSpec,
    SubmitState,
)
from corral.states import FrameState, Hold, JobState
from corral.store.rows import raw_rows
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
    # SQLite: on the driver's cursor (SQLAlchemy built and compiled each 500-value IN
    # list anew: a tenth of a batch's reads).
    found: dict[str, int | None] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found.update(raw_rows(conn, f"SELECT id, job_id FROM applied_events WHERE id IN ({marks})", chunk))  # noqa: S608
    return found


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
