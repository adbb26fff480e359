"""Delivering the outbox: each pending row sent to its sink, and what the sink said recorded.

The imperative shell around `corral.outbox`: the daemon runs `deliver` after every
cycle and every few seconds (`delivery.every`), and `corral deliver` runs it once for a
setup without a daemon.  Only one deliverer runs at a time (the daemon that leads; the
command refuses while a daemon leads), so a row found `sending` was left so by a
deliverer that died mid-send.

Each send is bracketed by two short transactions: the row is claimed (`sending`, one
more attempt) before the sink is called, and settled after.  A kill -9 between the two
leaves it `sending`; the next pass resolves it (`corral.outbox`, "Never twice").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from corral.outbox import IDEMPOTENT, Delivered, Entry, Failed, Outcome, Refused, Retries, Status, due
from corral.ports import DigestSink, Sink
from corral.states import Action

log = logging.getLogger("corral.deliver")

#: Notify rows for one digest sink due at once from which they go as one message: a bad
#: host failing forty jobs' frames is one message to the wranglers' room, not forty.
DIGEST_AT = 3


class OutboxStore(Protocol):
    """What delivery asks of the store (`corral.store.Store` implements it)."""

    def outbox_unsettled(self) -> list[Entry]: ...

    def outbox_mark(self, entry_id: int, status: Status, *, expect: tuple[Status, ...] | None = None,
                    **values: object) -> bool: ...

    def outbox_refused(self, entry: Entry, answer: str, now: datetime) -> str: ...


@dataclass
class DeliveryReport:
    """What one pass did, row by row (for the log, the metrics and `corral deliver`)."""

    delivered: list[Entry] = field(default_factory=list)
    refused: list[tuple[Entry, str]] = field(default_factory=list)
    failed: list[tuple[Entry, str]] = field(default_factory=list)
    dead: list[tuple[Entry, str]] = field(default_factory=list)
    doubt: list[Entry] = field(default_factory=list)
    waiting: int = 0  # rows still unsettled after the pass

    @property
    def sent(self) -> int:
        return len(self.delivered) + len(self.refused) + len(self.failed) + len(self.dead)


def _send(sink: Sink, entry: Entry) -> Outcome:
    """A sink must answer, never raise; one that raises is a failed send all the same."""
    try:
        return sink.deliver(entry)
    except Exception as err:  # a studio's sink: whatever it raises is a failed send, not a dead daemon
        log.exception("sink %s raised delivering %s", sink.name, entry.describe())
        return Failed(f"the sink raised {type(err).__name__}: {err}")


def _resolve_interrupted(store: OutboxStore, sinks: Mapping[str, Sink], entry: Entry, now: datetime,
                         report: DeliveryReport) -> None:
    """A row left `sending` by a deliverer that died mid-send: send again only what the
    supervisor applies twice as once, or what the sink says did not take."""
    sink = sinks.get(entry.sink)
    if entry.action in IDEMPOTENT:
        store.outbox_mark(entry.id, Status.PENDING, expect=(Status.SENDING,), next_at=None,
                          last_error="a send was interrupted; sent again (the action is harmless twice)")
        return
    took = None
    if sink is not None:
        try:
            took = sink.took(entry)
        except Exception as err:  # asking failed: cannot tell
            log.warning("sink %s could not say whether %s took: %s", entry.sink, entry.describe(), err)
    if took is True:
        store.outbox_mark(entry.id, Status.DELIVERED, expect=(Status.SENDING,), done_at=now,
                          answer="a send was interrupted; the supervisor already carries it out")
        report.delivered.append(entry)
    elif took is False:
        store.outbox_mark(entry.id, Status.PENDING, expect=(Status.SENDING,), next_at=None,
                          last_error="a send was interrupted; the supervisor does not have it: sent again")
    else:
        store.outbox_mark(entry.id, Status.DOUBT, expect=(Status.SENDING,),
                          last_error=f"a send was interrupted and {entry.sink} cannot say whether it took; "
                          f"{entry.action} twice would repeat it: check the farm, then `corral outbox retry {entry.id}` "
                          f"or `corral outbox drop {entry.id}`")
        report.doubt.append(entry)
        log.error("outbox %d (%s to %s) is in doubt: a send was interrupted; a person decides", entry.id,
                  entry.describe(), entry.sink)


def deliver(store: OutboxStore, sinks: Mapping[str, Sink], *, clock: Callable[[], datetime], retries: Retries,
            limit: int | None = None, stop: Callable[[], bool] = lambda: False, resolve: bool = True) -> DeliveryReport:
    """One delivery pass: resolve rows left mid-send (`resolve`: only the first pass of a
    deliverer's life, when no send of its own can be under way), then send what is due,
    in order, until nothing more is due now, `limit` sends were made or `stop()`."""
    report = DeliveryReport()
    entries = store.outbox_unsettled()
    if resolve:
        for entry in entries:
            if entry.status is Status.SENDING:
                _resolve_interrupted(store, sinks, entry, clock(), report)
        entries = store.outbox_unsettled()
    tried: set[int] = set()
    while not stop():
        batch = [e for e in due(entries, clock()) if e.id not in tried and e.sink in sinks]
        if not batch:
            break
        batch, digests = _digests(batch, sinks)
        for sink, entries in digests:
            tried.update(e.id for e in entries)
            _deliver_digest(store, sink, entries, clock, retries, report)
        for entry in batch:
            if stop() or (limit is not None and report.sent >= limit):
                break
            tried.add(entry.id)
            _deliver_one(store, sinks[entry.sink], entry, clock, retries, report)
        if limit is not None and report.sent >= limit:
            break
        entries = store.outbox_unsettled()
    report.waiting = len(store.outbox_unsettled())
    return report


def _digests(batch: list[Entry], sinks: Mapping[str, Sink]) -> tuple[list[Entry], list[tuple[DigestSink, list[Entry]]]]:
    """Split off the notify rows a digest sink gets together (DIGEST_AT or more due at once)."""
    by_sink: dict[str, list[Entry]] = {}
    for entry in batch:
        if entry.action is Action.NOTIFY and isinstance(sinks[entry.sink], DigestSink):
            by_sink.setdefault(entry.sink, []).append(entry)
    together = {name: rows for name, rows in by_sink.items() if len(rows) >= DIGEST_AT}
    rest = [e for e in batch if e.sink not in together or e.action is not Action.NOTIFY]
    digests = []
    for name, rows in together.items():
        sink = sinks[name]
        assert isinstance(sink, DigestSink)
        digests.append((sink, rows))
    return rest, digests


def _deliver_digest(store: OutboxStore, sink: DigestSink, entries: list[Entry], clock: Callable[[], datetime],
                    retries: Retries, report: DeliveryReport) -> None:
    claimed = [e for e in entries if store.outbox_mark(e.id, Status.SENDING, expect=(Status.PENDING,),
                                                        attempts=e.attempts + 1)]
    if not claimed:
        return
    try:
        outcome = sink.digest(claimed)
    except Exception as err:  # as for one row: a raise is a failed send
        log.exception("sink %s raised sending a digest of %d", sink.name, len(claimed))
        outcome = Failed(f"the sink raised {type(err).__name__}: {err}")
    for entry in claimed:
        _settle(store, entry, entry.attempts + 1, outcome, clock(), retries, report)


def _deliver_one(store: OutboxStore, sink: Sink, entry: Entry, clock: Callable[[], datetime], retries: Retries,
                 report: DeliveryReport) -> None:
    attempt = entry.attempts + 1
    if not store.outbox_mark(entry.id, Status.SENDING, expect=(Status.PENDING,), attempts=attempt):
        return  # settled meanwhile (a person dropped it)
    outcome = _send(sink, entry)
    _settle(store, entry, attempt, outcome, clock(), retries, report)


def _settle(store: OutboxStore, entry: Entry, attempt: int, outcome: Outcome, now: datetime, retries: Retries,
            report: DeliveryReport) -> None:
    if isinstance(outcome, Delivered):
        store.outbox_mark(entry.id, Status.DELIVERED, expect=(Status.SENDING,), answer=outcome.answer, done_at=now,
                          last_error=None)
        report.delivered.append(entry)
        log.info("delivered %s to %s (outbox %d)", entry.describe(), entry.sink, entry.id)
    elif isinstance(outcome, Refused):
        said = store.outbox_refused(entry, outcome.answer, now)
        report.refused.append((entry, outcome.answer))
        log.warning("outbox %d: %s", entry.id, said)
    elif attempt >= retries.max_attempts:
        store.outbox_mark(entry.id, Status.DEAD, expect=(Status.SENDING,), last_error=outcome.error, done_at=now)
        report.dead.append((entry, outcome.error))
        log.error("outbox %d (%s to %s) is dead after %d attempts: %s; `corral outbox retry %d` sends it again",
                  entry.id, entry.describe(), entry.sink, attempt, outcome.error, entry.id)
    else:
        wait = retries.backoff(attempt)
        store.outbox_mark(entry.id, Status.PENDING, expect=(Status.SENDING,), last_error=outcome.error,
                          next_at=now + wait)
        report.failed.append((entry, outcome.error))
        log.warning("outbox %d (%s to %s): attempt %d failed: %s; next in %ds", entry.id, entry.describe(),
                    entry.sink, attempt, outcome.error, wait.total_seconds())
