"""The outbox: what corral decided, on its way to the farm manager.

A decision only counts once the farm carries it out.  Every transition corral applies
(a policy's or a person's) is written, in the transaction that applies it, as one outbox
row per configured sink; a delivery pass (`corral.deliver`) sends the rows and records
what each sink answered.  This module is the pure part: the records, the outcomes a
sink may report, the retry schedule and the order rows go out in.  No I/O.

The guarantees, and where each is kept:

- **Nothing lost.**  The row is written with the transition, or neither is
  (`corral.store.apply`); a row leaves `pending` only when a sink answered.
- **At least once.**  A failed send is retried with exponential backoff
  (`backoff`) until `max_attempts`, then the row is `dead` and shown by
  `corral outbox --dead`.
- **Never twice what the supervisor would apply twice.**  A row is marked `sending`
  (committed) before it is sent; a row found `sending` later was interrupted mid-send
  (kill -9).  An action that is harmless twice (`IDEMPOTENT`: block, unblock, suspend,
  kill) is simply sent again; any other asks the sink whether it already took
  (`Sink.took`); when the sink cannot tell, the row is held `in doubt` for a person
  (`corral outbox retry ID` or `drop ID`), never guessed.
- **In order per entity.**  A row waits while an earlier row for the same sink and
  entity is not settled: an unblock never overtakes its block.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from corral.farm import Farm
from corral.states import Action, Kind


class Status(StrEnum):
    """Where an outbox row stands."""

    PENDING = "pending"  # to send (at `next_at`, after a failed attempt)
    SENDING = "sending"  # a send under way; found so later, the send was interrupted
    DOUBT = "doubt"  # interrupted mid-send, and the sink cannot tell whether it took: a person decides
    DELIVERED = "delivered"  # the sink took it
    REFUSED = "refused"  # the supervisor said no (`answer`)
    DEAD = "dead"  # gave up after `max_attempts` failed sends
    DROPPED = "dropped"  # a person dropped it (`corral outbox drop`)


#: Rows that still hold back later rows of their entity.
UNSETTLED = frozenset({Status.PENDING, Status.SENDING, Status.DOUBT})

#: Actions a supervisor applies twice with the effect of once: a row interrupted mid-send
#: is sent again without asking (a notification twice is a repeat its receiver can drop by
#: its key).  Retry, resubmit and interrupt are not: twice restarts work twice.
IDEMPOTENT = frozenset({Action.BLOCK, Action.UNBLOCK, Action.SUSPEND, Action.KILL, Action.NOTIFY})


@dataclass(frozen=True)
class Entry:
    """One outbox row, as a sink is handed it."""

    id: int
    key: str  # the idempotency key: the same for every attempt of this row
    sink: str
    at: datetime
    kind: Kind
    entity_id: str
    action: Action
    params: Mapping[str, Any] = field(default_factory=dict)
    #: The entity named as a sink needs it: `job`, `job_name`, `frame`, `instance`,
    #: `host`, `worker` (the ones that apply to its kind).
    target: Mapping[str, Any] = field(default_factory=dict)
    job_id: int | None = None
    actor: str = "corral"
    policy: str | None = None
    reason: str = ""
    cycle_id: str | None = None
    transition_id: int | None = None
    status: Status = Status.PENDING
    attempts: int = 0
    next_at: datetime | None = None
    last_error: str | None = None
    answer: str | None = None
    done_at: datetime | None = None

    def describe(self) -> str:
        return f"{self.action} {self.kind} {self.entity_id}"


# --- what a sink answers -----------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """The sink took the action (`answer`: what it said, for the record)."""

    answer: str = ""


@dataclass(frozen=True)
class Refused:
    """The supervisor answered and said no: sending again would not help.  corral takes
    the transition back (or, when it cannot be taken back, logs that it did not happen)."""

    answer: str


@dataclass(frozen=True)
class Failed:
    """The send did not get an answer (unreachable, timed out, a server error): try again
    later, up to the attempt limit."""

    error: str


Outcome = Delivered | Refused | Failed


# --- the schedule --------------------------------------------------------------------------


@dataclass(frozen=True)
class Retries:
    """How failed sends are retried: `first` after the first failure, doubling up to `most`,
    and `max_attempts` sends in all before the row is dead."""

    first: timedelta = timedelta(seconds=5)
    most: timedelta = timedelta(minutes=10)
    max_attempts: int = 12

    def backoff(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed send (1-based): 5 s, 10 s, 20 s... up to `most`."""
        exponent = min(max(attempts - 1, 0), 30)
        wait: timedelta = min(self.first * (2**exponent), self.most)
        return wait


def due(entries: Iterable[Entry], now: datetime) -> list[Entry]:
    """The rows to send now, in order: by id, each only if it is pending and due, and no
    earlier row of its sink and entity is unsettled (sent later, in order)."""
    held: set[tuple[str, str, str]] = set()
    out: list[Entry] = []
    for entry in sorted(entries, key=lambda e: e.id):
        subject = (entry.sink, entry.kind.value, entry.entity_id)
        if subject in held:
            continue
        if entry.status in UNSETTLED:
            held.add(subject)
        if entry.status is Status.PENDING and (entry.next_at is None or entry.next_at <= now):
            out.append(entry)
    return out


# --- what gets written ---------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A configured sink as the writer of outbox rows sees it: its name and the actions it
    carries, per kind (a sink is handed only what it can deliver)."""

    sink: str
    carries: frozenset[tuple[Kind, Action]]

    def takes(self, kind: Kind, action: Action) -> bool:
        return (kind, action) in self.carries

    def to_json(self) -> dict[str, Any]:
        return {"sink": self.sink, "carries": sorted(f"{k.value}:{a.value}" for k, a in self.carries)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Route:
        pairs = (str(item).split(":", 1) for item in data.get("carries", []))
        return cls(str(data["sink"]), frozenset((Kind(k), Action(a)) for k, a in pairs))


def routes_text(routes: Iterable[Route]) -> str:
    """The routes as the store keeps them (a setting), in a stable order."""
    return json.dumps([r.to_json() for r in sorted(routes, key=lambda r: r.sink)], sort_keys=True)


def routes_from_text(text: str | None) -> tuple[Route, ...]:
    if not text:
        return ()
    return tuple(Route.from_json(item) for item in json.loads(text))


def target_of(farm: Farm, kind: Kind, ident: str) -> dict[str, Any]:
    """How a sink names the entity: the ids a command template or a farm manager needs.

    Read from the farm as it was when the transition was applied, so a row delivered
    later still names what was decided on."""
    if kind is Kind.WORKER:
        return {"worker": ident, "host": ident}
    if kind is Kind.JOB:
        job = farm.jobs.get(int(ident))
        return {"job": int(ident), "job_name": job.name if job else None}
    if kind is Kind.FRAME:
        job_id, _, number = ident.partition(":")
        job = farm.jobs.get(int(job_id))
        return {"job": int(job_id), "frame": int(number), "job_name": job.name if job else None}
    for job in farm.jobs.values():
        instance = job.instances.get(ident)
        if instance is not None:
            return {"instance": ident, "job": job.id, "job_name": job.name, "host": instance.host}
    return {"instance": ident}
