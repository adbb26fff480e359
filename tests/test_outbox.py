"""The outbox: applied actions queued with their transition, delivered at least once, in
order, never twice what the supervisor would apply twice, refusals taken back.  Every
store test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from conftest import NOW, snap
from corral.deliver import deliver
from corral.outbox import Delivered, Entry, Failed, Outcome, Refused, Retries, Route, Status, due
from corral.states import Action, JobState, Kind
from corral.store import Proposal, Store
from corral.store.tables import table

FARM = """
jobs:
  - id: 12
    name: shot_010
    instances:
      - {id: i1, host: n1, state: running}
    frames:
      - {number: 1, state: running, host: n1, instance: i1}
      - {number: 2, state: failed, host: n1, instance: i1, exit_code: 3}
  - id: 13
    name: comp
    frames: [{range: "1-2", state: pending}]
workers:
  - {name: n1, state: up}
"""

EVERYTHING = frozenset((k, a) for k in Kind for a in Action)


@dataclass
class FakeSink:
    """A supervisor that answers as told, and remembers what it was sent."""

    name: str = "farm"
    answers: list[Outcome] = field(default_factory=list)
    sent: list[Entry] = field(default_factory=list)
    took_answer: bool | None = None
    raises: bool = False

    def carries(self) -> frozenset[tuple[Kind, Action]]:
        return EVERYTHING

    def deliver(self, entry: Entry) -> Outcome:
        self.sent.append(entry)
        if self.raises:
            raise RuntimeError("the studio's sink is broken")
        return self.answers.pop(0) if self.answers else Delivered("ok")

    def took(self, entry: Entry) -> bool | None:
        return self.took_answer

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now


def _store(store: Store, *sinks: str) -> Store:
    store.load_farm(snap(FARM), replace=True)
    store.set_routes([Route(name, EVERYTHING) for name in sinks])
    return store


def _act(store: Store, kind: Kind, ident: str, action: Action, policy: str | None = "p", **params: object):  # type: ignore[no-untyped-def]
    farm = store.read_farm()
    return store.apply_transitions(farm, [Proposal(kind, ident, action, params, reason="because", policy=policy,
                                                   automatic=policy is not None)],
                                   now=NOW, actor="corral", cycle_id="c1")


def test_an_applied_action_is_queued_once_per_sink_with_its_transition(store: Store) -> None:
    _store(store, "farm", "chat")
    report = _act(store, Kind.JOB, "12", Action.BLOCK)
    assert report.applied
    rows = sorted(store.outbox_rows(), key=lambda e: e.sink)
    assert [(e.sink, e.kind, e.entity_id, e.action, e.status) for e in rows] == [
        ("chat", Kind.JOB, "12", Action.BLOCK, Status.PENDING), ("farm", Kind.JOB, "12", Action.BLOCK, Status.PENDING)]
    logged = store.transitions(job=12)
    assert rows[0].transition_id == rows[1].transition_id == next(t.id for t in logged if t.action == "block")
    assert rows[0].key != rows[1].key and rows[0].key.startswith("corral-")
    assert rows[0].target == {"job": 12, "job_name": "shot_010"}
    assert (rows[0].policy, rows[0].reason, rows[0].cycle_id, rows[0].actor) == ("p", "because", "c1", "p")


def test_a_frame_and_an_instance_are_named_as_a_supervisor_needs(store: Store) -> None:
    _store(store, "farm")
    _act(store, Kind.FRAME, "12:2", Action.RETRY, policy=None)
    _act(store, Kind.INSTANCE, "i1", Action.BLOCK, policy=None)
    targets = {e.kind: e.target for e in store.outbox_rows()}
    assert targets[Kind.FRAME] == {"job": 12, "frame": 2, "job_name": "shot_010"}
    assert targets[Kind.INSTANCE] == {"instance": "i1", "job": 12, "job_name": "shot_010", "host": "n1"}


def test_nothing_is_queued_without_sinks_nor_for_a_refused_or_audit_action_nor_for_what_a_sink_does_not_carry(
    store: Store,
) -> None:
    store.load_farm(snap(FARM), replace=True)
    _act(store, Kind.JOB, "12", Action.BLOCK)
    assert store.outbox_rows() == []  # the embedded default: no sink, nothing to deliver
    store.set_routes([Route("farm", frozenset({(Kind.JOB, Action.KILL)}))])
    _act(store, Kind.JOB, "13", Action.BLOCK)  # the sink cannot carry a block
    farm = store.read_farm()
    store.apply_transitions(farm, [Proposal(Kind.JOB, "13", Action.KILL, applied=False, policy="p")], now=NOW, actor="c")
    stale = store.read_farm()
    with store.engine.begin() as conn:
        conn.execute(update(table("jobs")).where(table("jobs").c.id == 13).values(version=99))
    report = store.apply_transitions(stale, [Proposal(Kind.JOB, "13", Action.KILL, policy="p")], now=NOW, actor="c")
    assert report.refused and store.outbox_rows() == []


def test_a_cycle_that_fails_after_queueing_leaves_neither_the_transitions_nor_their_rows(store: Store) -> None:
    """The second action's queueing fails (the disk filled, the connection dropped): the
    first action, already applied and queued in the same transaction, is gone too."""
    from corral.store import outbox

    _store(store, "farm")
    real, calls = outbox.enqueue, []

    def failing(*args: object, **kw: object) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kw)  # type: ignore[arg-type]

    farm = store.read_farm()
    with patch.object(outbox, "enqueue", failing), pytest.raises(OSError):
        store.apply_transitions(farm, [Proposal(Kind.JOB, "13", Action.BLOCK, policy="p"),
                                       Proposal(Kind.JOB, "12", Action.BLOCK, policy="p")], now=NOW, actor="c")
    assert store.outbox_rows() == [] and store.transitions() == []
    assert store.read_farm() == snap(FARM) or store.read_farm().jobs[13].state is JobState.PENDING


def test_delivery_sends_each_row_once_and_marks_it_delivered(store: Store) -> None:
    _store(store, "farm")
    _act(store, Kind.JOB, "12", Action.BLOCK)
    _act(store, Kind.JOB, "13", Action.KILL)
    sink = FakeSink()
    report = deliver(store, {"farm": sink}, clock=Clock(), retries=Retries())
    assert [e.entity_id for e in sink.sent] == ["12", "13"] and len(report.delivered) == 2
    assert {e.status for e in store.outbox_rows()} == {Status.DELIVERED}
    again = deliver(store, {"farm": sink}, clock=Clock(), retries=Retries())
    assert again.sent == 0 and len(sink.sent) == 2


def test_a_failed_send_is_retried_with_backoff_then_dead_after_the_limit(store: Store) -> None:
    _store(store, "farm")
    _act(store, Kind.JOB, "12", Action.BLOCK)
    sink, clock = FakeSink(answers=[Failed("unreachable")] * 5), Clock()
    retries = Retries(first=timedelta(seconds=5), most=timedelta(seconds=15), max_attempts=4)
    waits = []
    for _ in range(6):
        deliver(store, {"farm": sink}, clock=clock, retries=retries)
        (row,) = store.outbox_rows()
        if row.status is Status.DEAD:
            break
        waits.append((row.next_at - clock.now).total_seconds())
        deliver(store, {"farm": sink}, clock=clock, retries=retries)  # not due yet: nothing sent
        clock.now = row.next_at
    assert waits == [5, 10, 15]
    assert row.status is Status.DEAD and row.attempts == 4 and row.last_error == "unreachable" and len(sink.sent) == 4


def test_a_sink_that_raises_is_a_failed_send_not_a_dead_deliverer(store: Store) -> None:
    _store(store, "farm")
    _act(store, Kind.JOB, "12", Action.BLOCK)
    report = deliver(store, {"farm": FakeSink(raises=True)}, clock=Clock(), retries=Retries())
    (row,) = store.outbox_rows()
    assert report.failed and row.status is Status.PENDING and "RuntimeError" in (row.last_error or "")


def test_rows_of_one_entity_go_in_order_a_later_one_waits_for_an_earlier_retry(store: Store) -> None:
    _store(store, "farm")
    _act(store, Kind.JOB, "12", Action.BLOCK)
    _act(store, Kind.JOB, "12", Action.UNBLOCK, policy=None)
    _act(store, Kind.JOB, "13", Action.BLOCK)
    sink, clock = FakeSink(answers=[Failed("timeout")]), Clock()
    deliver(store, {"farm": sink}, clock=clock, retries=Retries())
    assert [(e.entity_id, e.action) for e in sink.sent] == [("12", Action.BLOCK), ("13", Action.BLOCK)]
    clock.now += timedelta(minutes=1)
    deliver(store, {"farm": sink}, clock=clock, retries=Retries())
    assert [(e.entity_id, e.action) for e in sink.sent][2:] == [("12", Action.BLOCK), ("12", Action.UNBLOCK)]


def test_a_refusal_is_taken_back_in_the_store_and_logged(store: Store) -> None:
    _store(store, "farm")
    _act(store, Kind.JOB, "12", Action.BLOCK)
    assert store.read_farm().jobs[12].state is JobState.BLOCKED
    deliver(store, {"farm": FakeSink(answers=[Refused("job 12 is locked by its owner")])}, clock=Clock(),
            retries=Retries())
    (row,) = store.outbox_rows()
    assert row.status is Status.REFUSED and row.answer == "job 12 is locked by its owner"
    job = store.read_farm().jobs[12]
    assert job.state is not JobState.BLOCKED  # corral no longer believes it blocked the job
    log = store.transitions(job=12)
    assert log[0].action == "unblock" and log[0].actor == "sink:farm" and "refused" in log[0].reason
    assert store.outbox_rows() == [row]  # the take-back is not delivered: the supervisor has it so already


def test_a_refused_retry_cannot_be_taken_back_and_the_log_says_it_did_not_happen(store: Store) -> None:
    _store(store, "farm")
    _act(store, Kind.FRAME, "12:2", Action.RETRY, policy=None)
    deliver(store, {"farm": FakeSink(answers=[Refused("no such frame")])}, clock=Clock(), retries=Retries())
    refusal = store.transitions(job=12)[0]
    assert not refusal.applied and "did not happen" in refusal.reason and refusal.actor == "sink:farm"


@pytest.mark.parametrize(("action", "took", "status", "sent"), [
    (Action.BLOCK, None, Status.DELIVERED, 1),  # harmless twice: sent again
    (Action.RETRY, True, Status.DELIVERED, 0),  # the supervisor has it: not sent again
    (Action.RETRY, False, Status.DELIVERED, 1),  # it does not: sent again
    (Action.RETRY, None, Status.DOUBT, 0),  # nobody can tell: a person decides
])
def test_a_send_interrupted_by_a_crash_is_never_repeated_blindly(
    store: Store, action: Action, took: bool | None, status: Status, sent: int
) -> None:
    _store(store, "farm")
    ident = "12" if action is Action.BLOCK else "12:2"
    _act(store, Kind.JOB if action is Action.BLOCK else Kind.FRAME, ident, action, policy=None)
    (row,) = store.outbox_rows()
    store.outbox_mark(row.id, Status.SENDING, attempts=1)  # what a kill -9 mid-send leaves
    sink = FakeSink(took_answer=took)
    deliver(store, {"farm": sink}, clock=Clock(), retries=Retries())
    (row,) = store.outbox_rows()
    assert row.status is status and len(sink.sent) == sent


def test_a_row_for_a_sink_no_longer_configured_waits_and_is_not_lost(store: Store) -> None:
    _store(store, "old")
    _act(store, Kind.JOB, "12", Action.BLOCK)
    report = deliver(store, {"farm": FakeSink()}, clock=Clock(), retries=Retries())
    (row,) = store.outbox_rows()
    assert report.sent == 0 and row.status is Status.PENDING and report.waiting == 1


# --- the pure order ---------------------------------------------------------------------------


def _entry(i: int, entity: str, status: Status = Status.PENDING, sink: str = "farm") -> Entry:
    return Entry(id=i, key=f"k{i}", sink=sink, at=NOW, kind=Kind.JOB, entity_id=entity, action=Action.BLOCK,
                 status=status)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["1", "2", "3"]), st.sampled_from(list(Status)),
                          st.sampled_from(["a", "b"])), max_size=12))
def test_due_rows_are_pending_and_never_overtake_an_unsettled_row_of_their_entity(
    rows: list[tuple[str, Status, str]],
) -> None:
    entries = [_entry(i, e, s, sink) for i, (e, s, sink) in enumerate(rows)]
    chosen = due(entries, NOW)
    for entry in chosen:
        assert entry.status is Status.PENDING
        earlier = [e for e in entries if e.id < entry.id and (e.sink, e.entity_id) == (entry.sink, entry.entity_id)]
        assert all(e.status not in (Status.PENDING, Status.SENDING, Status.DOUBT) for e in earlier)
    # every entity's first unsettled row is sent if it is pending: nothing is starved
    for e in entries:
        head = next((x for x in entries if (x.sink, x.entity_id) == (e.sink, e.entity_id)
                     and x.status in (Status.PENDING, Status.SENDING, Status.DOUBT)), None)
        if head is not None and head.status is Status.PENDING:
            assert head in chosen


def test_backoff_doubles_up_to_its_cap() -> None:
    r = Retries(first=timedelta(seconds=5), most=timedelta(minutes=10), max_attempts=12)
    assert [r.backoff(n).total_seconds() for n in (1, 2, 3, 8, 50)] == [5, 10, 20, 600, 600]
