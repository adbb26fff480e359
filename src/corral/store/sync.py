"""Reconciling the store with a farm manager's own picture of the farm (`corral sync`).

When corral wrangles a farm manager it can read (Afanasy), the manager is the truth for
what it owns: which jobs, frames, processes and hosts exist and in what state.  A sync
writes the difference between its picture and the store, row by row, in one transaction:
an unchanged row is not touched (the daemon's steady read stays small), a changed one is
updated with its version moved on (so a decision taken on the old row is refused by
compare-and-set), a new one inserted, a vanished job or worker deleted (a vanished
process is marked ended, not deleted: a deletion makes every reader take in the whole
farm again).  What only corral knows
stays as the store has it: retry counts, who blocked a job.

Two rules keep a sync from undoing corral's own decisions or fighting a person:

- **A decision still on its way is not overwritten.**  An entity with an outbox row not
  yet delivered (pending, sending, in doubt) keeps the store's row: the farm manager
  does not have the action yet, and syncing would take it back before it is sent.
- **A person's override is recorded, not fought.**  When the store says corral blocked
  a job, a host or a job's process and the farm manager says it is free again (a
  wrangler undid it in the manager's own UI), the sync writes the manager's state and
  logs the undo as the manager (`actor`), under the policy that had acted: that
  policy's cooldown starts again from the override, `corral explain` and `corral
  history` show who undid what, and the report lists it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Connection

from corral.farm import Farm, Frame, Job, Worker
from corral.outbox import UNSETTLED
from corral.states import Hold, InstanceState, Kind, WorkerState
from corral.store.rows import farm_rows, raw_rows, read_farm, read_part, read_workers
from corral.store.tables import table

#: What the farm manager owns, per kind; every other column is corral's (retry counts,
#: who blocked a job) and a sync leaves it as stored.
OWNED: dict[Kind, tuple[str, ...]] = {
    Kind.JOB: ("name", "priority", "state", "hold", "submitted_at"),
    Kind.FRAME: ("state", "host", "instance", "attempts", "exit_code", "started_at", "finished_at"),
    Kind.INSTANCE: ("host", "state"),
    Kind.WORKER: ("state",),
}


@dataclass
class SyncReport:
    """What a sync changed, and the overrides it found (in words, for the log)."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    runs: int = 0
    held: list[str] = field(default_factory=list)  # entities kept as stored: a decision on its way
    overridden: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return self.inserted + self.updated + self.deleted + self.runs


def _on_their_way(conn: Connection) -> tuple[set[int], set[str]]:
    """Jobs and workers with an outbox row not yet delivered."""
    t = table("outbox")
    jobs: set[int] = set()
    workers: set[str] = set()
    rows = conn.execute(select(t.c.kind, t.c.entity_id, t.c.job_id).where(t.c.status.in_([s.value for s in UNSETTLED])))
    for kind, entity, job in rows:
        if kind == Kind.WORKER.value:
            workers.add(entity)
        elif job is not None:
            jobs.add(int(job))
    return jobs, workers


def _last_block(conn: Connection, kind: Kind, entity: str) -> tuple[str | None, str] | None:
    """Who last blocked `entity` through corral (policy, actor), if its latest applied
    transition is a block: then the store's `blocked`/`locked` is corral's doing."""
    t = table("transitions")
    row = conn.execute(select(t.c.action, t.c.policy, t.c.actor).where(
        and_(t.c.kind == kind.value, t.c.entity_id == entity, t.c.applied.is_(True))).order_by(t.c.id.desc()).limit(1)).first()
    if row is None or row.action not in ("block", "suspend"):
        return None
    return row.policy, row.actor


def sync_farm(conn: Connection, truth: Farm, *, now: datetime, actor: str,
              unchanged: Collection[int] = (), since: datetime | None = None) -> SyncReport:
    """Make the store hold `truth` for what the farm manager owns (see the module docstring).

    `unchanged`: jobs the manager shows exactly as at the last sync (`since`), which that
    sync already wrote; they are not read or compared again unless corral itself logged a
    change to them since (a decision that may not have taken).  Reading and comparing the
    whole stored farm every cycle cost 0.75 s at 100k frames: a steady farm's sync now
    reads only the jobs that moved."""
    report = SyncReport()
    stored_ids = {int(i) for (i,) in raw_rows(conn, "SELECT id FROM jobs")}
    check = set(truth.jobs)
    if unchanged and since is not None:
        check = (check - set(unchanged)) | (_logged_since(conn, since) & check)
    stored = read_farm(conn) if len(check) * 4 > len(truth.jobs) else _read_jobs(conn, check & stored_ids)
    stored.workers = {w.name: w for w in read_workers(conn)}
    held_jobs, held_workers = _on_their_way(conn)
    for name, worker in truth.workers.items():
        if name in held_workers:
            report.held.append(f"worker {name}")
            continue
        _sync_worker(conn, stored.workers.get(name), worker, now, actor, report)
    gone_workers = [n for n in stored.workers if n not in truth.workers and n not in held_workers]
    for job_id, job in truth.jobs.items():
        if job_id not in check:
            continue
        if job_id in held_jobs:
            report.held.append(f"job {job_id}")
            continue
        old = stored.jobs.get(job_id)
        if old is None:
            _insert(conn, Farm(jobs={job_id: job}), now, report)
        else:
            _sync_job(conn, old, job, now, actor, report)
    for job_id in stored_ids:
        if job_id not in truth.jobs and job_id not in held_jobs:
            conn.execute(delete(table("jobs")).where(table("jobs").c.id == job_id))
            report.deleted += 1
    for name in gone_workers:
        conn.execute(delete(table("workers")).where(table("workers").c.name == name))
        report.deleted += 1
    return report


def _logged_since(conn: Connection, since: datetime) -> set[int]:
    """Jobs with a transition logged since `since` (corral's own changes to them)."""
    t = table("transitions")
    rows = conn.execute(select(t.c.job_id).where(and_(t.c.at >= since, t.c.job_id.is_not(None))).distinct())
    return {int(j) for (j,) in rows}


def _read_jobs(conn: Connection, jobs: Collection[int]) -> Farm:
    """The stored rows of `jobs` only (each with the jobs it waits on)."""
    farm = Farm()
    for job_id in jobs:
        farm.jobs.update(read_part(conn, job=job_id).jobs)
    return farm


def _insert(conn: Connection, farm: Farm, now: datetime, report: SyncReport) -> None:
    """New rows; an entity the manager gives no `state_since` is in its state since now
    (first seen), so time-based conditions count from then, never from an invented past."""
    for name, rows in farm_rows(farm, now):
        for row in rows:
            if "state_since" in row and row["state_since"] is None:
                row["state_since"] = now
        if rows:
            conn.execute(insert(table(name)), rows)
            report.inserted += len(rows)


def _changed(kind: Kind, old: Any, new: Any) -> dict[str, Any]:
    return {c: getattr(new, c) for c in OWNED[kind] if getattr(old, c) != getattr(new, c)}


def _write(conn: Connection, name: str, key: Mapping[str, Any], values: dict[str, Any], now: datetime,
           report: SyncReport) -> None:
    t = table(name)
    plain = {k: (v.value if hasattr(v, "value") else v) for k, v in values.items()}
    conn.execute(update(t).where(and_(*(t.c[k] == v for k, v in key.items())))
                 .values(**plain, version=t.c.version + 1, updated_at=now))
    report.updated += 1


def _override(conn: Connection, kind: Kind, entity: str, job_id: int | None, from_state: str, to_state: str,
              now: datetime, actor: str, report: SyncReport) -> None:
    """The store said corral blocked it; the farm manager says it is free: a person undid it."""
    last = _last_block(conn, kind, entity)
    if last is None:
        return
    policy, by = last
    who = f"policy {policy}" if policy else by
    reason = (f"undone in {actor}: {who} had blocked it; corral leaves it so (the policy's cooldown starts again "
              "from now)")
    conn.execute(insert(table("transitions")).values(
        at=now, kind=kind.value, entity_id=entity, job_id=job_id, action="unblock", from_state=from_state,
        to_state=to_state, actor=actor, policy=policy, reason=reason, cycle_id=None, applied=True))
    report.overridden.append(f"{kind} {entity}: {reason}")


def _sync_worker(conn: Connection, old: Worker | None, new: Worker, now: datetime, actor: str,
                 report: SyncReport) -> None:
    if old is None:
        _insert(conn, Farm(workers={new.name: new}), now, report)
        return
    values = _changed(Kind.WORKER, old, new)
    if not values:
        return
    if old.state is WorkerState.LOCKED and new.state is not WorkerState.LOCKED:
        _override(conn, Kind.WORKER, old.name, None, old.state.value, new.state.value, now, actor, report)
    values["state_since"] = new.state_since or now
    _write(conn, "workers", {"name": old.name}, values, now, report)


def _sync_job(conn: Connection, old: Job, new: Job, now: datetime, actor: str, report: SyncReport) -> None:
    values = _changed(Kind.JOB, old, new)
    if values:
        if values.get("hold") is Hold.BLOCKED and old.hold in (Hold.KILLED, Hold.SUSPENDED):
            # The manager shows any stopped job alike (Afanasy: OFF for pause and stop);
            # corral knows which it was, and it is still held.
            del values["hold"]
            values.pop("state", None)
        if "hold" in values:
            if new.hold is Hold.NONE and old.hold is Hold.BLOCKED:
                _override(conn, Kind.JOB, str(old.id), old.id, old.state.value, new.state.value, now, actor, report)
            values["blocked_by"] = None if new.hold is not Hold.BLOCKED else (old.blocked_by or actor)
        if "state" in values:
            values["state_since"] = new.state_since or now
        _write(conn, "jobs", {"id": old.id}, values, now, report)
    _sync_children(conn, old, new, now, actor, report)


def _sync_children(conn: Connection, old: Job, new: Job, now: datetime, actor: str, report: SyncReport) -> None:
    for number, frame in new.frames.items():
        was = old.frames.get(number)
        if was is None:
            _insert_frame(conn, frame, now, report)
            continue
        values = _changed(Kind.FRAME, was, frame)
        if values:
            if "state" in values:
                values["state_since"] = frame.state_since or now
            _write(conn, "frames", {"job_id": old.id, "number": number}, values, now, report)
        _append_runs(conn, was, frame, report)
    for number in old.frames:
        if number not in new.frames:
            t = table("frames")
            conn.execute(delete(t).where(and_(t.c.job_id == old.id, t.c.number == number)))
            report.deleted += 1
    for ident, inst in new.instances.items():
        had = old.instances.get(ident)
        if had is None:
            conn.execute(insert(table("instances")).values(
                id=inst.id, job_id=old.id, host=inst.host, state=inst.state.value, state_since=inst.state_since or now,
                version=0, updated_at=now))
            report.inserted += 1
            continue
        values = _changed(Kind.INSTANCE, had, inst)
        if values:
            if had.state is InstanceState.BLOCKED and inst.state is not InstanceState.BLOCKED:
                _override(conn, Kind.INSTANCE, ident, old.id, had.state.value, inst.state.value, now, actor, report)
            values["state_since"] = inst.state_since or now
            _write(conn, "instances", {"id": ident}, values, now, report)
    for ident, had in old.instances.items():
        if ident in new.instances:
            continue
        # A process the manager no longer shows (Afanasy shows a host against a job only
        # while it runs, failed or is excluded there): it ended.  Kept, not deleted: a
        # deleted row makes every reader take in the whole farm again, and the host's
        # history on the job still counts.
        if had.state in (InstanceState.RUNNING, InstanceState.PENDING):
            _write(conn, "instances", {"id": ident}, {"state": InstanceState.COMPLETE, "state_since": now}, now, report)
    if list(old.depends_on) != list(new.depends_on):
        t = table("job_dependencies")
        conn.execute(delete(t).where(t.c.job_id == old.id))
        rows = [{"job_id": old.id, "depends_on": d, "position": n} for n, d in enumerate(new.depends_on)]
        if rows:
            conn.execute(insert(t), rows)
        report.updated += 1


def _insert_frame(conn: Connection, frame: Frame, now: datetime, report: SyncReport) -> None:
    job = Job(frame.job_id, "", frames={frame.number: frame})
    for name, rows in farm_rows(Farm(jobs={job.id: job}), now):
        if name in ("frames", "frame_runs", "frame_dependencies") and rows:
            conn.execute(insert(table(name)), rows)
            report.inserted += len(rows)


def _append_runs(conn: Connection, old: Frame, new: Frame, report: SyncReport) -> None:
    """Runs are history: the farm manager's list only grows; the new ones are appended."""
    extra = new.runs[len(old.runs):]
    if not extra:
        return
    conn.execute(insert(table("frame_runs")), [
        {"job_id": new.job_id, "number": new.number, "host": r.host, "instance": r.instance, "state": r.state.value,
         "exit_code": r.exit_code, "started_at": r.started_at, "finished_at": r.finished_at} for r in extra])
    report.runs += len(extra)

