"""A sink's refusal, made true in the store: the row marked, the transition taken back.

Apart from `corral.store.outbox` because taking back applies a transition
(`corral.store.apply`), which itself queues into the outbox.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from corral.actions import action_def
from corral.outbox import Entry, Status
from corral.ports import Proposal
from corral.states import Kind
from corral.store import outbox
from corral.store.apply import apply_transitions
from corral.store.rows import read_part
from corral.store.tables import table


def refuse(conn: Connection, entry: Entry, answer: str, now: datetime) -> str:
    """The supervisor refused `entry`: mark it, and make the store stop believing it
    happened.  An action with an inverse (block/unblock, suspend, kill) is taken back
    with compare-and-set, as the sink (`sink:NAME`), and not queued again; one without
    (retry, resubmit, interrupt) cannot be, and the log says it did not happen.  Either
    way the transition log records the refusal.  Returns what was done, for the caller's
    log."""
    actor = f"sink:{entry.sink}"
    outbox.mark(conn, entry.id, Status.REFUSED, expect=(Status.SENDING,), answer=answer, done_at=now)
    inverse = action_def(entry.action).inverse
    said = f"{entry.sink} refused {entry.describe()}: {answer}"
    if inverse is not None:
        job = entry.job_id
        part = read_part(conn, job=job, worker=entry.entity_id if entry.kind is Kind.WORKER else None)
        back = Proposal(entry.kind, entry.entity_id, inverse, reason=f"taken back: {said}", deliver=False)
        report = apply_transitions(conn, part, [back], now=now, actor=actor)
        if report.applied:
            return f"{said}; taken back ({inverse})"
        why = report.refused[0].reason if report.refused else "nothing to take back"
        said = f"{said}; could not be taken back ({why})"
    else:
        said = f"{said}; it did not happen, and {entry.action} cannot be taken back in corral's store"
    _log_refusal(conn, entry, said, now, actor)
    return said


def _log_refusal(conn: Connection, entry: Entry, reason: str, now: datetime, actor: str) -> None:
    transitions = table("transitions")
    state = conn.execute(select(transitions.c.to_state).where(transitions.c.id == entry.transition_id)).scalar()
    conn.execute(insert(transitions).values(
        at=now, kind=entry.kind.value, entity_id=entry.entity_id, job_id=entry.job_id, action=entry.action.value,
        from_state=state or "", to_state=state or "", actor=actor, policy=entry.policy, reason=reason,
        cycle_id=entry.cycle_id, applied=False,
    ))
