"""The outbox's rows in SQL: queued with the transition, then claimed, settled, listed.

`enqueue` runs inside the applier's transaction (`corral.store.apply`), so a transition
and its deliveries are committed together or not at all.  The rest are short
transactions of their own, each fenced like every other write of the leader's store
(a deposed daemon cannot mark a row it no longer owns).  What the rows mean and the
order they go out in is `corral.outbox`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from corral.farm import Farm
from corral.outbox import UNSETTLED, Entry, Route, Status, routes_from_text, target_of
from corral.ports import Done, Proposal
from corral.states import Action, Kind
from corral.store.tables import table

#: The setting that holds the configured sinks' routes (JSON, `corral.outbox.routes_text`):
#: written by the daemon and `corral deliver` when they load the sinks file, read by every
#: writer of transitions (the daemon, `corral job ...`, the API), so a person's action is
#: queued for the farm manager like a policy's.
ROUTES_SETTING = "outbox.routes"


def routes(conn: Connection) -> tuple[Route, ...]:
    settings = table("settings")
    text = conn.execute(select(settings.c.value).where(settings.c.key == ROUTES_SETTING)).scalar()
    return routes_from_text(text)


def enqueue(conn: Connection, routes: Sequence[Route], farm: Farm, proposal: Proposal, done: Done,
            transition_id: int | None, *, now: datetime, actor: str, cycle_id: str | None) -> int:
    """Queue `done` for every route that carries its action; the number of rows written."""
    kind, action = proposal.kind, proposal.action
    rows: list[dict[str, Any]] = []
    target: dict[str, Any] | None = None
    for route in routes:
        if not route.takes(kind, action):
            continue
        if target is None:
            target = target_of(farm, kind, done.entity_id)
        rows.append({
            "key": "corral-" + uuid.uuid4().hex,
            "sink": route.sink,
            "at": now,
            "transition_id": transition_id,
            "kind": kind.value,
            "entity_id": done.entity_id,
            "job_id": farm.job_of(kind, proposal.ident),
            "action": action.value,
            "params": json.dumps(dict(proposal.params), sort_keys=True, default=str),
            "target": json.dumps(target, sort_keys=True),
            "actor": proposal.author(actor),
            "policy": proposal.policy,
            "reason": proposal.reason,
            "cycle_id": cycle_id,
            "status": Status.PENDING.value,
            "attempts": 0,
            "next_at": None,
        })
    if rows:
        conn.execute(insert(table("outbox")), rows)
    return len(rows)


def entry(row: Any) -> Entry:
    return Entry(
        id=row.id, key=row.key, sink=row.sink, at=row.at, kind=Kind(row.kind), entity_id=row.entity_id,
        action=Action(row.action), params=json.loads(row.params or "{}"), target=json.loads(row.target or "{}"),
        job_id=row.job_id, actor=row.actor, policy=row.policy, reason=row.reason, cycle_id=row.cycle_id,
        transition_id=row.transition_id, status=Status(row.status), attempts=row.attempts, next_at=row.next_at,
        last_error=row.last_error, answer=row.answer, done_at=row.done_at,
    )


def unsettled(conn: Connection, sinks: Iterable[str] | None = None) -> list[Entry]:
    """Every row not yet settled (pending, sending, in doubt), oldest first."""
    t = table("outbox")
    stmt = select(t).where(t.c.status.in_([s.value for s in UNSETTLED])).order_by(t.c.id)
    if sinks is not None:
        stmt = stmt.where(t.c.sink.in_(list(sinks)))
    return [entry(r) for r in conn.execute(stmt)]


def listing(conn: Connection, statuses: Iterable[Status] | None = None, limit: int | None = None) -> list[Entry]:
    """Rows for `corral outbox`, newest first."""
    t = table("outbox")
    stmt = select(t).order_by(t.c.id.desc())
    if statuses is not None:
        stmt = stmt.where(t.c.status.in_([s.value for s in statuses]))
    if limit is not None:
        stmt = stmt.limit(limit)
    return [entry(r) for r in conn.execute(stmt)]


def get(conn: Connection, entry_id: int) -> Entry | None:
    t = table("outbox")
    row = conn.execute(select(t).where(t.c.id == entry_id)).first()
    return None if row is None else entry(row)


def mark(conn: Connection, entry_id: int, status: Status, *, expect: Iterable[Status] | None = None,
         **values: Any) -> bool:
    """Move a row to `status` (and set `values`), only from one of `expect` when given:
    False when the row was not in one of them (someone else settled it)."""
    t = table("outbox")
    stmt = update(t).where(t.c.id == entry_id)
    if expect is not None:
        stmt = stmt.where(t.c.status.in_([s.value for s in expect]))
    return bool(conn.execute(stmt.values(status=status.value, **values)).rowcount)


@dataclass(frozen=True)
class Backlog:
    """What `corral outbox` summarises and the metrics export: rows per status and sink,
    and when the oldest unsettled row was queued."""

    counts: dict[tuple[str, str], int]
    oldest_pending: datetime | None


def backlog(conn: Connection, *, unsettled_only: bool = False) -> Backlog:
    """`unsettled_only`: count only the rows not yet delivered (what the daemon's gauges need
    after every pass: settled rows pile up for good, and the status index finds the others)."""
    t = table("outbox")
    query = select(t.c.sink, t.c.status, func.count()).group_by(t.c.sink, t.c.status)
    if unsettled_only:
        query = query.where(t.c.status.in_([s.value for s in UNSETTLED]))
    counts = {(sink, status): n for sink, status, n in conn.execute(query)}
    oldest = conn.execute(select(func.min(t.c.at)).where(t.c.status.in_([s.value for s in UNSETTLED]))).scalar()
    return Backlog(counts, oldest)

