"""The compare-and-set applier: proposals in, rows written only where nothing moved.

A policy cycle decides on facts read a moment ago; meanwhile the supervisor keeps
writing (a frame finishes, a host dies).  So every row corral writes is written with
`UPDATE ... WHERE <key> AND version = <version as read>`; if any row of a proposal
moved, the whole proposal is refused, its SAVEPOINT rolled back, the in-memory farm
left as it was, and the next proposal tried.  Anything else that goes wrong raises and
the caller's transaction rolls the whole batch back: a failed cycle never half-applies.

With sinks configured, each applied proposal is also queued in the outbox, in the same
savepoint (`corral.store.outbox.enqueue`): what the store holds as done and what will be
delivered to the farm manager never disagree.

The farm is changed in memory only after its rows were written, so a refused or
failed proposal never has to be undone there; a batch that raises undoes the ones
already applied (`_Undo`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, update
from sqlalchemy.engine import Connection

from corral.effects import Outcome, apply_action
from corral.farm import Entity, Farm, restore_fields, saved_fields
from corral.ports import ApplyReport, Done, Proposal, Refusal
from corral.states import IllegalAction, Kind
from corral.store import outbox
from corral.store.rows import TABLES, key_of, values_of
from corral.store.tables import table


class _Stale(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} changed since it was read")


def _label(kind: Kind, entity: Entity) -> str:
    key = key_of(kind, entity)
    return f"{kind} {':'.join(str(v) for v in key.values())}"


def _simulate(
    farm: Farm, p: Proposal, now: datetime, actor: str
) -> tuple[Outcome, list[tuple[Kind, Entity, int, dict[str, Any]]]]:
    """Run the action on the farm and undo it at once, keeping the rows as they would be."""
    with farm.scratch():
        out = apply_action(farm, p.kind, p.ident, p.action, now=now, params=p.params, automatic=p.automatic,
                           actor=p.author(actor))
        after = [(kind, entity, version, saved_fields(entity)) for kind, entity, version in out.touched]
    return out, after


def apply_transitions(
    conn: Connection,
    farm: Farm,
    proposals: Iterable[Proposal],
    *,
    now: datetime,
    actor: str,
    cycle_id: str | None = None,
) -> ApplyReport:
    """Apply `proposals` in order on `conn` (already in a transaction) and on `farm`."""
    report = ApplyReport()
    undo: list[tuple[Entity, dict[str, Any]]] = []
    routes = outbox.routes(conn)  # the configured sinks: each applied action is queued for them
    proposals = list(proposals)
    _lock_in_order(conn, farm, proposals)
    try:
        for p in proposals:
            try:
                out, after = _simulate(farm, p, now, actor)
            except (IllegalAction, KeyError) as err:
                report.refused.append(Refusal(p, str(err.args[0]) if isinstance(err, KeyError) else str(err)))
                continue
            done = Done(p, out.ident, out.from_state, out.to_state, tuple(_label(k, e) for k, e, _, _ in after), out.job_change)
            log = _log_rows(p, done, farm.job_of(p.kind, p.ident), now, actor, cycle_id)
            if not p.applied:
                conn.execute(insert(table("transitions")), log)
                report.audited.append(done)
                continue
            savepoint = conn.begin_nested()
            try:
                for kind, ent, version, values in after:
                    _compare_and_set(conn, kind, ent, version, values, now)
                if routes and p.deliver:
                    transitions = table("transitions")
                    logged = conn.execute(insert(transitions).returning(transitions.c.id), log[:1]).scalar()
                    if log[1:]:
                        conn.execute(insert(transitions), log[1:])
                    outbox.enqueue(conn, routes, farm, p, done, logged, now=now, actor=actor, cycle_id=cycle_id)
                else:
                    conn.execute(insert(table("transitions")), log)
            except _Stale as err:
                savepoint.rollback()
                report.refused.append(Refusal(p, f"refused: {err}; the farm moved on, nothing was changed", True))
                continue
            savepoint.commit()
            for _kind, ent, version, values in after:
                undo.append((ent, saved_fields(ent)))
                restore_fields(ent, values)
                ent.version = version + 1
            report.applied.append(done)
    except BaseException:
        for ent, saved in reversed(undo):
            restore_fields(ent, saved)
        raise
    return report


def _lock_in_order(conn: Connection, farm: Farm, proposals: list[Proposal]) -> None:
    """PostgreSQL: lock the rows the proposals will write before writing any, jobs then
    workers, each in key order, the order the feed's batches lock them
    (`corral.store.feedbatch`).  Written in the proposals' order instead, a cycle and a
    feed batch could each hold a row the other waits for: a deadlock that loses one of
    them.  Every frame or instance action writes its job's row, and no action writes a
    frame or an instance of another job, so holding the jobs' rows first orders the rest."""
    if conn.dialect.name != "postgresql" or not proposals:
        return
    jobs: set[int] = set()
    workers: set[str] = set()
    for p in proposals:
        if not p.applied:  # an audit row writes only the log
            continue
        if p.kind is Kind.WORKER:
            workers.add(p.ident)
            continue
        job = farm.job_of(p.kind, p.ident)
        if job is not None:
            jobs.add(job)
    if jobs:
        conn.exec_driver_sql("SELECT id FROM jobs WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE",
                             {"ids": sorted(jobs)}).fetchall()
    if workers:
        conn.exec_driver_sql("SELECT name FROM workers WHERE name = ANY(%(ids)s) ORDER BY name FOR UPDATE",
                             {"ids": sorted(workers)}).fetchall()


def _compare_and_set(conn: Connection, kind: Kind, entity: Entity, version: int, values: dict[str, Any], now: datetime) -> None:
    t = table(TABLES[kind])
    where = and_(*(t.c[name] == value for name, value in key_of(kind, entity).items()), t.c.version == version)
    stmt = update(t).where(where).values(**values_of(kind, values), version=t.c.version + 1, updated_at=now)
    if conn.execute(stmt).rowcount != 1:
        raise _Stale(_label(kind, entity))


def _log_rows(
    p: Proposal, done: Done, job_id: int | None, now: datetime, actor: str, cycle_id: str | None
) -> list[dict[str, Any]]:
    """The transition row of the proposal, and one for the knock-on change of its job."""
    base = {
        "at": now,
        "action": p.action.value,
        "actor": actor,
        "policy": p.policy,
        "cycle_id": cycle_id,
        "applied": p.applied,
    }
    rows = [
        {
            **base,
            "kind": p.kind.value,
            "entity_id": done.entity_id,
            "job_id": job_id,
            "from_state": done.from_state,
            "to_state": done.to_state,
            "reason": p.reason,
        }
    ]
    if done.job_change is not None:
        job, old, new = done.job_change
        rows.append(
            {
                **base,
                "kind": Kind.JOB.value,
                "entity_id": str(job),
                "job_id": job,
                "from_state": old,
                "to_state": new,
                "reason": f"follows {p.kind} {done.entity_id} ({p.action})",
            }
        )
    return rows
