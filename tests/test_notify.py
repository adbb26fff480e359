"""The notify action: it tells people through a sink, changes nothing on the farm, never
conflicts with a policy that acts, says one thing once per window, and goes as a digest
when many fire at once (Qube!'s users complain of a mail on every auto-wrangling action)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from conftest import snap
from corral.deliver import DIGEST_AT, deliver
from corral.outbox import Delivered, Entry, Outcome, Retries, Route, Status
from corral.policy.loader import load_texts
from corral.states import Action, Kind
from corral.store import Proposal, Store
from strategies import NOW
from test_plan import plan_for

NOTIFY = """\
  - name: tell-wranglers
    kind: job
    when: {state: failed}
    actions: [{notify: {to: room}}]
    reason: "{name} failed"
"""
BLOCK_FAILED = """\
  - name: hold-failed
    kind: job
    priority: 90
    when: {state: failed}
    actions: [retry]
    reason: "{name} failed"
"""


def test_a_notifying_policy_never_conflicts_with_one_that_acts() -> None:
    plan = plan_for(NOTIFY.replace("kind: job", "kind: job\n    priority: 95") + BLOCK_FAILED)
    assert sorted((t.policy, t.ident, str(t.action)) for t in plan.transitions) == [
        ("hold-failed", "1", "retry"), ("hold-failed", "2", "retry"),
        ("tell-wranglers", "1", "notify"), ("tell-wranglers", "2", "notify")]
    assert not [s for s in plan.skipped if s.category == "conflict"]
    told = next(t for t in plan.transitions if t.action is Action.NOTIFY)
    assert told.from_state == told.to_state == "failed"


def test_a_notification_below_an_action_reports_the_farm_as_the_action_leaves_it() -> None:
    """Played after the retry (lower priority), the notifier's `state: failed` is checked
    again: the job is retrying now, so there is nothing to tell (superseded, saying why)."""
    plan = plan_for(NOTIFY + BLOCK_FAILED)
    assert sorted((t.policy, t.ident) for t in plan.transitions) == [("hold-failed", "1"), ("hold-failed", "2")]
    superseded = [s for s in plan.skipped if s.policy == "tell-wranglers"]
    assert [s.category for s in superseded] == ["superseded", "superseded"]
    assert all(s.why.endswith("and now state is retrying") for s in superseded)


def test_one_message_per_entity_and_policy_within_the_window() -> None:
    plan = plan_for(NOTIFY, last_actions={("tell-wranglers", "job", "1"): NOW - timedelta(minutes=20),
                                          ("tell-wranglers", "job", "2"): NOW - timedelta(hours=2)})
    assert [t.ident for t in plan.transitions] == ["2"]
    (quiet,) = [s for s in plan.skipped if s.category == "cooldown"]
    assert quiet.ident == "1" and "cooldown is 1h" in quiet.why


def test_a_recipient_that_is_not_one_of_the_choices_is_refused_at_its_line() -> None:
    text = "policies:\n" + NOTIFY.replace("to: room", "to: everyone")
    result = load_texts([("p.yaml", text)])
    (error,) = result.errors
    assert error.pos.line == 5 and "must be one of submitter, room, admin" in error.message


FARM = """
jobs:
  - id: 12
    name: shot_010
    frames: [{number: 1, state: failed, exit_code: 3}]
"""


def test_a_notification_writes_no_farm_row_and_is_logged_and_queued(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    store.set_routes([Route("room", frozenset({(Kind.JOB, Action.NOTIFY)}))])
    before = store.read_farm()
    report = store.apply_transitions(store.read_farm(), [Proposal(Kind.JOB, "12", Action.NOTIFY, {"to": "submitter"},
                                                                  reason="shot_010 failed", policy="tell")],
                                     now=NOW, actor="corral")
    assert report.applied and store.read_farm() == before
    assert store.read_farm().jobs[12].version == before.jobs[12].version
    (logged,) = store.transitions(job=12)
    assert (logged.action, logged.from_state, logged.to_state) == ("notify", "failed", "failed")
    (row,) = store.outbox_rows()
    assert row.action is Action.NOTIFY and row.params == {"to": "submitter"} and row.reason == "shot_010 failed"


@dataclass
class Room:
    """A chat room that takes digests."""

    name: str = "room"
    single: list[Entry] = field(default_factory=list)
    digests: list[list[Entry]] = field(default_factory=list)

    def carries(self) -> frozenset[tuple[Kind, Action]]:
        return frozenset({(Kind.JOB, Action.NOTIFY), (Kind.JOB, Action.RETRY)})

    def deliver(self, entry: Entry) -> Outcome:
        self.single.append(entry)
        return Delivered()

    def digest(self, entries: Sequence[Entry]) -> Outcome:
        self.digests.append(list(entries))
        return Delivered("one message")

    def took(self, entry: Entry) -> bool | None:
        return None

    def close(self) -> None:
        pass


def _storm(store: Store, n: int) -> None:
    jobs = "\n".join(f"  - id: {i}\n    name: shot_{i}\n    frames: [{{number: 1, state: failed}}]" for i in range(1, n + 1))
    store.load_farm(snap("jobs:\n" + jobs), replace=True)
    store.set_routes([Route("room", Room().carries())])
    proposals = [Proposal(Kind.JOB, str(i), Action.NOTIFY, reason=f"shot_{i} failed", policy="tell")
                 for i in range(1, n + 1)]
    proposals.append(Proposal(Kind.JOB, "1", Action.RETRY))
    store.apply_transitions(store.read_farm(), proposals, now=NOW, actor="corral")


def test_many_notifications_at_once_go_as_one_digest(store: Store) -> None:
    _storm(store, 12)
    room = Room()
    report = deliver(store, {"room": room}, clock=lambda: NOW, retries=Retries())
    assert len(room.digests) == 1 and len(room.digests[0]) == 12
    assert [e.action for e in room.single] == [Action.RETRY]  # an action is never folded into a digest
    assert len(report.delivered) == 13 and {e.status for e in store.outbox_rows()} == {Status.DELIVERED}


def test_a_few_notifications_go_one_by_one(store: Store) -> None:
    _storm(store, DIGEST_AT - 1)
    room = Room()
    deliver(store, {"room": room}, clock=lambda: NOW, retries=Retries())
    assert room.digests == [] and len(room.single) == DIGEST_AT  # two notifications and the retry


def test_a_webhook_digest_is_one_signed_post(monkeypatch: object) -> None:
    import hashlib
    import hmac
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    from corral.sinks.webhook import WebhookSink

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["ROOM_SECRET"] = "k"
    try:
        entries = [Entry(id=i, key=f"corral-{i}", sink="room", at=NOW, kind=Kind.JOB, entity_id=str(i),
                         action=Action.NOTIFY, params={"to": "room"}, reason=f"shot_{i} failed") for i in range(4)]
        outcome = WebhookSink("room", f"http://127.0.0.1:{server.server_port}/", secret_env="ROOM_SECRET").digest(entries)
    finally:
        del os.environ["ROOM_SECRET"]
        server.shutdown()
        server.server_close()
    assert isinstance(outcome, Delivered)
    ((headers, body),) = got
    sent = json.loads(body)
    assert sent["digest"] is True and sent["count"] == 4 and sent["items"][0]["reason"] == "shot_0 failed"
    assert headers["Idempotency-Key"] == sent["key"]
    assert headers["X-Corral-Signature"] == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
