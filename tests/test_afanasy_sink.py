"""Afanasy, written: corral's actions as the exact requests Afanasy's recorded actions were,
the outcomes a sink reports (delivered, refused, failed), and `took` read off Afanasy's
recorded states.  The fake server and the fixtures are test_afanasy.py's.

Job `long` is id 7, serial 6 (4 tasks); `broken` id 3, serial 2 (3 tasks); renders rnd01
id 1, rndbad id 2, rnd02 id 3.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from corral import outbox
from corral.afanasy.sink import CARRIES, SETTLE, AfanasySink
from corral.afanasy.wire import Client, frame
from corral.outbox import Delivered, Entry, Failed
from corral.sinks.config import build_sinks, load_sinks_text, routes_of
from corral.states import Action, Kind
from test_afanasy import FakeAfanasy, closed_port, framed, fx, raw, reply

A, K = Action, Kind
#: When the decisions below were taken: after the recording's actions on job long.
DECIDED = datetime.fromtimestamp(1796228276, UTC)


def entry(kind: Kind, ident: str, action: Action, params: Mapping[str, Any] | None = None,
          decided: datetime = DECIDED) -> Entry:
    """An outbox row as corral writes it (`corral.outbox.target_of` names the entity)."""
    if kind is K.JOB:
        target: dict[str, Any] = {"job": int(ident), "job_name": "long"}
    elif kind is K.FRAME:
        job, _, number = ident.partition(":")
        target = {"job": int(job), "frame": int(number), "job_name": "long"}
    elif kind is K.INSTANCE:
        job, _, host = ident.partition("@")
        target = {"instance": ident, "job": int(job), "job_name": "long", "host": host}
    else:
        target = {"worker": ident, "host": ident}
    return Entry(1, "corral-key-1", "afanasy", decided, kind, ident, action, dict(params or {}), target)


def by_serial(fake: FakeAfanasy, serial: int, listed: str) -> None:
    """Afanasy's answer to ``get jobs serials:[serial]``: the job as `listed` recorded it
    (a jobs list reply is the same whether asked by id or by serial)."""
    fake.route({"get": {"type": "jobs", "serials": [serial]}}, raw(listed))


@pytest.fixture
def fake() -> Iterator[FakeAfanasy]:
    server = FakeAfanasy()
    by_serial(server, 6, "jobs_after_start")  # long: running, not paused, no exclude mask
    by_serial(server, 2, "jobs_list_broken_settled")
    server.serve("renders_list_freed", {"get": {"type": "renders"}})
    server.serve("job_progress_after_nimby", {"get": {"type": "jobs", "ids": [7], "mode": "progress"}})
    server.serve("job_progress_broken_settled")
    yield server
    server.close()


def sink(fake: FakeAfanasy, quarantine: str = "paused", timeout: float = 5.0, now: float | None = None) -> AfanasySink:
    client = Client(fake.address, timeout=timeout, user="corral", host="corral-recorder")
    clock = (lambda: now) if now is not None else (lambda: DECIDED.timestamp() + 2 * SETTLE)
    return AfanasySink("afanasy", client, quarantine, clock=clock)


def recorded(name: str, **changes: Any) -> bytes:
    """The bytes the recorder sent for fixture `name` (its action changed as given)."""
    request = json.loads(json.dumps(fx(name)["request"]))
    request["action"].update(changes)
    return frame(request)


# --- the exact requests ----------------------------------------------------------------------

SAME_AS_RECORDED = [
    (K.JOB, "6", A.BLOCK, "paused", ["action_job_pause"]),
    (K.JOB, "6", A.SUSPEND, "paused", ["action_job_pause"]),
    (K.JOB, "6", A.UNBLOCK, "paused", ["action_job_start"]),
    (K.JOB, "6", A.KILL, "paused", ["action_job_stop"]),
    (K.JOB, "2", A.RETRY, "paused", ["action_job_reset_error_hosts_broken", "action_job_restart_errors"]),
    (K.FRAME, "6:0", A.RETRY, "paused", ["action_task_restart"]),
    (K.FRAME, "6:3", A.KILL, "paused", ["action_task_skip"]),
    (K.INSTANCE, "6@rndbad", A.BLOCK, "paused", ["action_job_hosts_mask_exclude"]),
    (K.WORKER, "rndbad", A.BLOCK, "paused", ["action_render_paused"]),
    (K.WORKER, "rnd01", A.BLOCK, "nimby", ["action_render_NIMBY"]),
]


@pytest.mark.parametrize(("kind", "ident", "action", "quarantine", "names"), SAME_AS_RECORDED)
def test_corral_sends_byte_for_byte_what_afanasy_took_when_recorded(
        fake: FakeAfanasy, kind: Kind, ident: str, action: Action, quarantine: str, names: list[str]) -> None:
    outcome = sink(fake, quarantine).deliver(entry(kind, ident, action))
    assert outcome == Delivered("Action processed.")
    assert fake.actions() == [recorded(name) for name in names]


def test_a_worker_is_freed_of_nimby_and_pause_at_once(fake: FakeAfanasy) -> None:
    assert sink(fake).deliver(entry(K.WORKER, "rndbad", A.UNBLOCK)) == Delivered("Action processed.")
    assert fake.actions() == [recorded("action_render_free", ids=[2])]  # recorded for two renders at once


def test_every_delivery_looks_the_job_up_by_serial_first(fake: FakeAfanasy) -> None:
    sink(fake).deliver(entry(K.JOB, "6", A.BLOCK))
    assert fake.received[0] == frame({"get": {"type": "jobs", "serials": [6]}})
    assert fx("jobs_get_by_serial")["request"] == {"get": {"type": "jobs", "serials": [4]}}  # as recorded


@pytest.mark.parametrize(("kind", "ident", "action", "operation"), [
    (K.JOB, "6", A.INTERRUPT, {"type": "restart_running"}),
    (K.JOB, "6", A.RESUBMIT, {"type": "restart"}),
    (K.FRAME, "6:3", A.BLOCK, {"type": "suspend", "task_ids": [3]}),
    (K.FRAME, "6:3", A.UNBLOCK, {"type": "continue", "task_ids": [3]}),
    (K.FRAME, "6:2", A.INTERRUPT, {"type": "restart_running", "task_ids": [2]}),
    (K.FRAME, "6:0", A.RESUBMIT, {"type": "restart", "task_ids": [0]}),
])
def test_the_other_actions_are_afanasy_s_operations(fake: FakeAfanasy, kind: Kind, ident: str, action: Action,
                                                    operation: dict[str, Any]) -> None:
    assert isinstance(sink(fake).deliver(entry(kind, ident, action)), Delivered)
    (sent,) = [r["action"] for r in fake.requests() if "action" in r]
    assert sent["ids"] == [7] and sent["operation"] == operation
    assert sent.get("block_ids") == ([0] if kind is K.FRAME else None)


def test_retrying_a_paused_job_starts_it_first_and_resubmit_sets_its_priority(fake: FakeAfanasy) -> None:
    by_serial(fake, 6, "jobs_after_stop")  # ' RDY OFF'
    assert isinstance(sink(fake).deliver(entry(K.JOB, "6", A.RETRY)), Delivered)
    assert [r["action"]["operation"]["type"] for r in fake.requests() if "action" in r] == [
        "start", "reset_error_hosts", "restart_errors"]
    fake.received.clear()
    assert isinstance(sink(fake).deliver(entry(K.JOB, "6", A.RESUBMIT, {"priority": 120})), Delivered)
    sent = [r["action"] for r in fake.requests() if "action" in r]
    assert [s.get("params") or s["operation"] for s in sent] == [{"priority": 120}, {"type": "start"}, {"type": "restart"}]


def test_locking_a_host_out_restarts_the_job_s_tasks_running_there(fake: FakeAfanasy) -> None:
    # job long: task 1 runs on rnd02 (job_progress_after_nimby); the mask alone would leave it running
    assert isinstance(sink(fake).deliver(entry(K.INSTANCE, "6@rnd02", A.BLOCK)), Delivered)
    assert [r["action"] for r in fake.requests() if "action" in r] == [
        {"type": "jobs", "user_name": "corral", "host_name": "corral-recorder", "ids": [7],
         "params": {"hosts_mask_exclude": "rnd02"}},
        {"type": "jobs", "user_name": "corral", "host_name": "corral-recorder", "ids": [7],
         "operation": {"type": "restart_running", "task_ids": [1]}, "block_ids": [0]}]


def test_requeue_failed_also_restarts_the_tasks_the_host_failed(fake: FakeAfanasy) -> None:
    # broken: task 0 is ERR, its last run on rnd01; task 1 is ready again (not ERR) after rnd01
    assert isinstance(sink(fake).deliver(entry(K.INSTANCE, "2@rnd01", A.BLOCK, {"requeue_failed": True})), Delivered)
    sent = [r["action"] for r in fake.requests() if "action" in r]
    assert [s.get("params") or (s["operation"], s["block_ids"]) for s in sent] == [
        {"hosts_mask_exclude": "rnd01"}, ({"type": "restart_errors", "task_ids": [0]}, [0])]


def test_a_regex_mask_gets_an_anchored_alternative_and_keeps_the_rest(fake: FakeAfanasy) -> None:
    listed = reply("jobs_after_start")
    listed["jobs"][0] |= {"hosts_mask_type": "regex", "hosts_mask_exclude": "render9.*"}
    fake.route({"get": {"type": "jobs", "serials": [6]}}, listed)
    assert isinstance(sink(fake).deliver(entry(K.INSTANCE, "6@rndbad", A.BLOCK)), Delivered)
    assert fake.requests()[1]["action"]["params"] == {"hosts_mask_exclude": "render9.*|^rndbad$"}


def test_a_find_mask_that_would_lock_out_other_hosts_too_is_refused(fake: FakeAfanasy) -> None:
    fake.route({"get": {"type": "renders"}}, {"renders": [{"name": "rnd0", "id": 4}, {"name": "rnd01", "id": 1}]})
    outcome = sink(fake).deliver(entry(K.INSTANCE, "6@rnd0", A.BLOCK))
    assert isinstance(outcome, outbox.Refused) and "also exclude rnd01" in outcome.answer
    assert fake.actions() == []


def test_unblocking_an_instance_takes_the_host_out_of_the_mask(fake: FakeAfanasy) -> None:
    by_serial(fake, 6, "jobs_after_hosts_mask_exclude")  # hosts_mask_exclude 'rndbad'
    assert isinstance(sink(fake).deliver(entry(K.INSTANCE, "6@rndbad", A.UNBLOCK)), Delivered)
    assert fake.requests()[-1]["action"]["params"] == {"hosts_mask_exclude": ""}
    fake.received.clear()
    assert sink(fake).deliver(entry(K.INSTANCE, "6@rnd01", A.UNBLOCK)) == Delivered(
        "rnd01 was not excluded from job serial 6")
    assert fake.actions() == []
    listed = reply("jobs_after_hosts_mask_exclude")
    listed["jobs"][0]["hosts_mask_exclude"] = "rnd"  # a person's prefix
    fake.route({"get": {"type": "jobs", "serials": [6]}}, listed)
    outcome = sink(fake).deliver(entry(K.INSTANCE, "6@rndbad", A.UNBLOCK))
    assert isinstance(outcome, outbox.Refused) and "corral did not write" in outcome.answer


# --- outcomes ----------------------------------------------------------------------------------


def test_a_job_deleted_meanwhile_is_a_refusal_not_a_failure(fake: FakeAfanasy) -> None:
    fake.serve("jobs_get_by_serial_deleted")  # serial 4: the deleted child
    for kind, ident in ((K.JOB, "4"), (K.FRAME, "4:0"), (K.INSTANCE, "4@rnd01")):
        assert sink(fake).deliver(entry(kind, ident, A.BLOCK)) == outbox.Refused("job serial 4 no longer exists")
    assert fake.actions() == []


def test_afanasy_s_error_answer_is_a_refusal_in_its_words(fake: FakeAfanasy) -> None:
    fake.route({"action": {"type": "jobs", "ids": [7], "operation": {"type": "pause"}}}, raw("action_job_nonexistent"))
    assert sink(fake).deliver(entry(K.JOB, "6", A.BLOCK)) == outbox.Refused(
        "Afanasy refused it: Action node ID not found: 999.")


def test_what_does_not_exist_or_cannot_be_carried_is_refused(fake: FakeAfanasy) -> None:
    refused = sink(fake).deliver(entry(K.FRAME, "6:4", A.RETRY))
    assert isinstance(refused, outbox.Refused) and "has no frame 4 (it has 4)" in refused.answer
    refused = sink(fake).deliver(entry(K.WORKER, "rnd99", A.BLOCK))
    assert refused == outbox.Refused("render rnd99 no longer exists")
    assert sink(fake).deliver(entry(K.INSTANCE, "6@rnd01", A.KILL)) == outbox.Refused(
        "the afanasy sink cannot kill instances")


def test_a_silent_server_is_a_failed_send_within_the_timeout() -> None:
    silent = FakeAfanasy(silent=True)
    try:
        start = time.monotonic()
        outcome = sink(silent, timeout=0.5).deliver(entry(K.JOB, "6", A.BLOCK))
        assert isinstance(outcome, Failed) and "did not answer within 0.5 s" in outcome.error
        assert time.monotonic() - start < 3
        assert sink(silent, timeout=0.5).took(entry(K.JOB, "6", A.RETRY)) is None
    finally:
        silent.close()


def test_an_unreachable_or_garbled_server_is_a_failed_send() -> None:
    port = closed_port()
    nowhere = AfanasySink("afanasy", Client(f"127.0.0.1:{port}", timeout=2))
    outcome = nowhere.deliver(entry(K.WORKER, "rndbad", A.BLOCK))
    assert isinstance(outcome, Failed) and f"127.0.0.1:{port}" in outcome.error
    garbled = FakeAfanasy(garbage=framed("not json at all"))
    try:
        outcome = sink(garbled).deliver(entry(K.JOB, "6", A.BLOCK))
        assert isinstance(outcome, Failed) and "not JSON" in outcome.error
    finally:
        garbled.close()


# --- took ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "ident", "action", "serve", "expected"), [
    (K.JOB, "6", A.BLOCK, {6: "jobs_after_pause"}, True),  # ' RDY RUN OFF'
    (K.JOB, "6", A.BLOCK, {6: "jobs_after_start"}, False),
    (K.JOB, "6", A.KILL, {6: "jobs_after_stop"}, True),
    (K.JOB, "6", A.UNBLOCK, {6: "jobs_after_start"}, True),
    (K.JOB, "6", A.UNBLOCK, {6: "jobs_after_pause"}, False),
    (K.JOB, "2", A.RETRY, {2: "jobs_after_restart_errors", 3: "job_progress_after_restart_errors"}, True),
    (K.JOB, "2", A.RETRY, {2: "jobs_list_broken_settled", 3: "job_progress_broken_settled"}, False),  # ERR
    (K.JOB, "6", A.RESUBMIT, {6: "jobs_after_start"}, None),  # a restart leaves no mark
    (K.FRAME, "6:3", A.KILL, {6: "jobs_after_task_restart_skip", 7: "job_progress_after_task_restart_skip"}, True),
    (K.FRAME, "6:3", A.KILL, {7: "job_progress_after_nimby"}, False),
    (K.FRAME, "2:0", A.RETRY, {3: "job_progress_broken_settled"}, False),  # still ERR, finished before
    (K.FRAME, "2:0", A.RETRY, {3: "job_progress_after_restart_errors"}, True),  # ' RDY'
    (K.INSTANCE, "6@rndbad", A.BLOCK, {6: "jobs_after_hosts_mask_exclude"}, True),  # excluded, runs nothing there
    (K.INSTANCE, "6@rndbad", A.BLOCK, {6: "jobs_after_start"}, False),
    (K.INSTANCE, "6@rndbad", A.UNBLOCK, {6: "jobs_after_start"}, True),
    (K.WORKER, "rndbad", A.BLOCK, {0: "renders_list_nimby_paused"}, True),  # ' ONL PAU'
    (K.WORKER, "rndbad", A.BLOCK, {0: "renders_list_idle"}, False),
    (K.WORKER, "rndbad", A.UNBLOCK, {0: "renders_list_freed"}, True),
])
def test_took_reads_whether_afanasy_carries_the_action_out(
        fake: FakeAfanasy, kind: Kind, ident: str, action: Action, serve: dict[int, str], expected: bool | None) -> None:
    for key, name in serve.items():
        if name.startswith("renders"):
            fake.serve(name, {"get": {"type": "renders"}})
        elif name.startswith("job_progress"):
            fake.serve(name, {"get": {"type": "jobs", "ids": [key], "mode": "progress"}})
        else:
            by_serial(fake, key, name)
    assert sink(fake).took(entry(kind, ident, action)) is expected


def test_a_restart_took_once_no_task_runs_the_run_it_was_to_stop(fake: FakeAfanasy) -> None:
    # job long after a task restart: task 0 runs since 1796228280, task 1 since 1796228272
    by_serial(fake, 6, "jobs_after_task_restart_skip")
    fake.serve("job_progress_after_task_restart_skip", {"get": {"type": "jobs", "ids": [7], "mode": "progress"}})
    before = datetime.fromtimestamp(1796228275, UTC)
    assert sink(fake).took(entry(K.FRAME, "6:0", A.INTERRUPT, decided=before)) is True  # a new run since
    assert sink(fake).took(entry(K.FRAME, "6:1", A.INTERRUPT, decided=before)) is False  # the old run, long after
    soon = before.timestamp() + 5  # Afanasy stops a task through its render's heartbeat: cannot tell yet
    assert sink(fake, now=soon).took(entry(K.FRAME, "6:1", A.INTERRUPT, decided=before)) is None
    assert sink(fake).took(entry(K.JOB, "6", A.INTERRUPT, decided=before)) is False
    assert sink(fake).took(entry(K.JOB, "6", A.INTERRUPT, decided=datetime.fromtimestamp(1796228270, UTC))) is True


# --- the sinks file ------------------------------------------------------------------------------


def test_a_sinks_file_builds_the_afanasy_sink_with_what_it_carries() -> None:
    result = load_sinks_text("sinks:\n  - name: farm\n    type: afanasy\n    server: afserver:51001\n"
                             "    user: corral-night\n    timeout: 3s\n    quarantine: nimby\n")
    assert result.errors == [] and result.config is not None
    sinks = build_sinks(result.config)
    farm = sinks["farm"]
    assert isinstance(farm, AfanasySink)
    assert (farm.name, farm.quarantine, farm.client.address, farm.client.user, farm.client.timeout) == (
        "farm", "nimby", ("afserver", 51001), "corral-night", 3.0)
    (route,) = routes_of(result.config, sinks)
    assert route.carries == CARRIES and farm.carries() == CARRIES
    assert not route.takes(K.INSTANCE, A.KILL) and route.takes(K.INSTANCE, A.BLOCK)
    warned = load_sinks_text("sinks:\n  - name: farm\n    type: afanasy\n    actions: [block, kill]\n")
    assert warned.errors == [] and warned.warnings == []
