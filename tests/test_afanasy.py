"""Afanasy, read: the wire protocol, the error-hosts text, host masks, and the farm corral
maps Afanasy's recorded replies to.  No Afanasy needed: `FakeAfanasy` answers with the
bytes a live 3.4.1 server sent (tests/fixtures/afanasy/, see its README).

The fixtures' farm: renders rnd01 (id 1), rndbad (id 2, fails every task), rnd02 (id 3);
jobs good (id 2, serial 1), broken (id 3, serial 2), parent (4/3), child (5/4, deleted,
then id 5 reused by paused_reuse, serial 12), defaults (6/5), long (7/6), paused (8/7),
paused_mask (9/8), parent_x3 (10/9)...  The server's clock and zone: UTC, 2026-12-02.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.afanasy import errorhosts, masks
from corral.afanasy.mapping import Index, JobRef, frame_state, map_farm, worker_state
from corral.afanasy.source import AfanasyReader, read_farm
from corral.afanasy.wire import BadReply, Client, Refused, Unreachable, frame, parse_reply, split_server
from corral.farm import Farm, FrameRun
from corral.ports import FarmUnreachable
from corral.states import FrameState, Hold, InstanceState, JobState, WorkerState

FIXTURES = Path(__file__).parent / "fixtures" / "afanasy"
#: A moment after the recording, in the server's zone (UTC).
NOW = datetime(2026, 12, 2, 17, 0, tzinfo=UTC)
F, IS = FrameState, InstanceState


# --- fixtures and a fake server -------------------------------------------------------------


def fx(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def raw(name: str) -> bytes:
    """The reply exactly as the server sent it (header and body)."""
    return str(fx(name)["reply"]).encode("utf-8")


def reply(name: str) -> dict[str, Any]:
    return parse_reply(raw(name))


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def framed(body: Mapping[str, Any] | str) -> bytes:
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    data = text.encode()
    return b"AFANASY %d JSON" % len(data) + data


INVALID_ID = framed('{"info":{"kind":"error","text":"Invalid ID"}}')
PROCESSED = framed('{"info":{"kind":"log","text":"Action processed."}}')


def _key(request: Mapping[str, Any]) -> str:
    """A request as the fake routes it: who sends an action does not matter."""
    data = copy.deepcopy(dict(request))
    if isinstance(data.get("action"), dict):
        data["action"].pop("user_name", None)
        data["action"].pop("host_name", None)
    return json.dumps(data, sort_keys=True)


class FakeAfanasy:
    """An afserver on 127.0.0.1: reads one framed request per connection, records its raw
    bytes, answers with the reply routed for it (a recorded one), then, like afserver,
    writes a space while it waits for the client to close.  Unrouted: a ``get`` answers
    "Invalid ID" (as for a deleted job), an ``action`` "Action processed."

    `silent`: accept and never answer.  `garbage`: answer these bytes to anything."""

    def __init__(self, *names: str, silent: bool = False, garbage: bytes | None = None) -> None:
        self.routes: dict[str, bytes] = {}
        self.received: list[bytes] = []
        self.silent, self.garbage = silent, garbage
        self.release = threading.Event()
        for name in names:
            self.serve(name)
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                fake._handle(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def serve(self, name: str, request: Mapping[str, Any] | None = None) -> None:
        """Answer `request` (default: the fixture's own) with the fixture's reply."""
        self.routes[_key(request if request is not None else fx(name)["request"])] = raw(name)

    def route(self, request: Mapping[str, Any], answer: bytes | Mapping[str, Any]) -> None:
        self.routes[_key(request)] = answer if isinstance(answer, bytes) else framed(answer)

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(r[r.find(b"JSON") + 4:]) for r in self.received]

    def actions(self) -> list[bytes]:
        return [r for r in self.received if b'{"action"' in r]

    def _handle(self, sock: socket.socket) -> None:
        sock.settimeout(5)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
            tag = data.find(b"JSON")
            if tag > 0 and len(data) >= tag + 4 + int(data[8:tag]):
                break
        self.received.append(data)
        if self.silent:
            self.release.wait(30)
            return
        if self.garbage is not None:
            sock.sendall(self.garbage)
            return
        request = json.loads(data[tag + 4:])
        answer = self.routes.get(_key(request), INVALID_ID if "get" in request else PROCESSED)
        sock.sendall(answer)
        with contextlib.suppress(OSError):
            sock.sendall(b" ")  # afserver's liveness probe while it waits for the client to close

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeAfanasy]:
    server = FakeAfanasy()
    yield server
    server.close()


def client(fake: FakeAfanasy, timeout: float = 5.0) -> Client:
    return Client(fake.address, timeout=timeout, user="corral", host="corral-recorder")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- the wire ------------------------------------------------------------------------------


def test_every_recorded_reply_is_framed_as_corral_reads_it() -> None:
    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    assert len(names) > 80
    for name in names:
        data = raw(name)
        header, _, body = data.partition(b"JSON")
        assert int(header.removeprefix(b"AFANASY ")) == len(body), name
        assert isinstance(parse_reply(data), dict), name


def test_a_request_is_framed_as_afanasy_s_own_clients_frame_it() -> None:
    assert frame({"get": {"type": "renders"}}) == b'AFANASY 28 JSON{"get": {"type": "renders"}}'
    # the recorder sent json.dumps(request): corral's bytes for a recorded request are the same
    for name in ("job_progress_good_running", "action_task_restart", "jobs_get_by_serial"):
        body = json.dumps(fx(name)["request"]).encode()
        assert frame(fx(name)["request"]) == b"AFANASY %d JSON" % len(body) + body


def test_get_and_act_send_exactly_the_recorded_requests(fake: FakeAfanasy) -> None:
    fake.serve("job_progress_good_running")
    fake.serve("action_task_restart")
    c = client(fake)
    progress = c.get({"type": "jobs", "ids": [2], "mode": "progress"})
    assert progress["job_progress"]["id"] == 2
    assert c.act("jobs", [7], "restart", block_ids=[0], task_ids=[0]) == "Action processed."
    assert fake.received == [frame(fx("job_progress_good_running")["request"]), frame(fx("action_task_restart")["request"])]


def test_every_action_names_corral_s_user_and_host(fake: FakeAfanasy) -> None:
    Client(fake.address, user="wrangler-bot", host="farmctl").act("renders", [2], params={"paused": True})
    (sent,) = fake.requests()
    assert sent["action"]["user_name"] == "wrangler-bot" and sent["action"]["host_name"] == "farmctl"
    assert Client().host == socket.gethostname()


def test_an_error_reply_is_a_refusal_with_afanasy_s_words(fake: FakeAfanasy) -> None:
    fake.serve("action_job_nonexistent")
    fake.serve("jobs_get_nonexistent")
    c = client(fake)
    with pytest.raises(Refused, match=r"Action node ID not found: 999\.") as err:
        c.act("jobs", [999], "pause")
    assert err.value.text == "Action node ID not found: 999."
    with pytest.raises(Refused, match="Invalid ID"):
        c.get({"type": "jobs", "ids": [999]})


def test_a_server_that_accepts_and_never_answers_costs_the_timeout_not_a_hang() -> None:
    silent = FakeAfanasy(silent=True)
    try:
        start = time.monotonic()
        with pytest.raises(Unreachable, match=rf"{silent.address} did not answer within 0\.5 s"):
            client(silent, timeout=0.5).get({"type": "jobs"})
        assert 0.4 < time.monotonic() - start < 3
    finally:
        silent.close()


def test_nothing_listening_is_unreachable_and_names_the_server() -> None:
    port = closed_port()
    with pytest.raises(Unreachable, match=f"127.0.0.1:{port}"):
        Client(f"127.0.0.1:{port}", timeout=2).get({"type": "jobs"})


@pytest.mark.parametrize(("garbage", "expected"), [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "expected a reply starting with 'AFANASY <length> JSON'"),
    (b"AFANASY twelve JSON{}", "expected a length between 'AFANASY ' and 'JSON'"),
    (b"AFANASY 100 JSON{\"jobs\":[]}", "the reply ended after 11 of the 100 bytes"),
    (b"AFANASY 9 JSON{jobs: 1}", "not JSON"),
    (b"AFANASY 2 JSON[]", "expected a JSON object"),
    (b"AFANASY 99999999999 JSON", "more than the"),
    (b"", "closed the connection without answering"),
])
def test_garbage_is_a_bad_reply_that_says_what_was_expected(garbage: bytes, expected: str) -> None:
    server = FakeAfanasy(garbage=garbage)
    try:
        with pytest.raises(BadReply, match=expected.replace("(", r"\(").replace(")", r"\)")):
            client(server, timeout=3).get({"type": "jobs"})
    finally:
        server.close()


def test_an_action_answered_without_info_is_a_bad_reply(fake: FakeAfanasy) -> None:
    fake.route({"action": {"type": "jobs", "ids": [7], "operation": {"type": "pause"}}}, {"jobs": []})
    with pytest.raises(BadReply, match=r"expected .*info"):
        client(fake).act("jobs", [7], "pause")


def test_servers_are_named_host_colon_port() -> None:
    assert split_server("afserver") == ("afserver", 51000)
    assert split_server("10.0.0.5:51001") == ("10.0.0.5", 51001)
    assert split_server("[::1]:51000") == ("::1", 51000)
    for bad in (":51000", "host:port", "host:70000"):
        with pytest.raises(ValueError, match="'"):
            split_server(bad)


# --- the error hosts ------------------------------------------------------------------------

LOCAL = datetime(2026, 12, 2, 17, 0)  # the server's wall clock, naive


def test_the_recorded_error_hosts_parse_into_blocks_tasks_and_counts() -> None:
    lines = reply("job_error_hosts_broken")["message"]["list"]
    entries, problems = errorhosts.parse(lines, LOCAL)
    assert problems == []
    assert [(e.block, e.task, e.host, e.count, e.local, e.avoiding) for e in entries] == [
        (0, None, "rndbad", 3, datetime(2026, 12, 2, 16, 16, 49), True),
        (0, None, "rnd02", 3, datetime(2026, 12, 2, 16, 16, 54), True),
        (0, None, "rnd01", 3, datetime(2026, 12, 2, 16, 16, 54), True),
        (0, 0, "rndbad", 3, datetime(2026, 12, 2, 16, 16, 49), True),
        (0, 0, "rnd01", 1, datetime(2026, 12, 2, 16, 16, 52), False),
        (0, 1, "rnd01", 2, datetime(2026, 12, 2, 16, 16, 54), False),
        (0, 1, "rnd02", 1, datetime(2026, 12, 2, 16, 16, 52), False),
        (0, 2, "rnd02", 2, datetime(2026, 12, 2, 16, 16, 54), False),
    ]
    after_reset, problems = errorhosts.parse(reply("job_error_hosts_long_after_reset")["message"]["list"], LOCAL)
    assert after_reset == [] and problems == []
    one_task = reply("task_error_hosts_good")["task"]["data"]  # "Task[2] error hosts: \nrndbad: 3 at ..."
    (entry,), problems = errorhosts.parse([one_task], LOCAL)
    assert (entry.task, entry.host, entry.count, entry.avoiding) == (2, "rndbad", 3, True) and problems == []


def test_an_error_time_has_no_year_so_it_takes_the_latest_that_is_not_in_the_future() -> None:
    new_year = datetime(2027, 1, 1, 0, 30)
    assert errorhosts.when("Thu 31 Dec 23:50.00", new_year) == (datetime(2026, 12, 31, 23, 50), None)
    assert errorhosts.when("Wed 02 Dec 16:16.43", LOCAL) == (datetime(2026, 12, 2, 16, 16, 43), None)
    # a server clock a little ahead of corral's is still this year (a day's slack)
    assert errorhosts.when("Wed 02 Dec 17:20.00", LOCAL) == (datetime(2026, 12, 2, 17, 20), None)
    # more than a day ahead: last year's
    assert errorhosts.when("Mon 07 Dec 09:00.00", LOCAL)[0] == datetime(2025, 12, 7, 9, 0)
    # 29 February: the latest leap year
    assert errorhosts.when("Thu 29 Feb 10:00.00", LOCAL)[0] == datetime(2024, 2, 29, 10, 0)


def test_a_time_that_does_not_read_is_reported_and_its_count_kept() -> None:
    at_, problem = errorhosts.when("Mon 02 Dec 16:16.43", LOCAL)
    assert at_ == datetime(2026, 12, 2, 16, 16, 43) and problem and "not a Mon" in problem
    assert errorhosts.when("Wed 30 Feb 10:00.00", LOCAL)[0] is None
    entries, problems = errorhosts.parse(["Block['main'] error hosts:", "Task[0] error hosts: ",
                                          "rndbad: 2 at Mi 02 Dez 16:16.43"], LOCAL)
    assert [(e.host, e.count, e.local) for e in entries] == [("rndbad", 2, None)]
    assert len(problems) == 1 and "Mi 02 Dez" in problems[0]


def test_lines_of_no_known_shape_are_skipped_and_reported() -> None:
    entries, problems = errorhosts.parse(
        ["rndbad: 1 at Wed 02 Dec 16:16.43", "Block['main'] error hosts:", "what is this", 42, "",
         "The task has no error hosts.", "rnd01: 2 at Wed 02 Dec 16:16.50"], LOCAL)
    assert [(e.block, e.host) for e in entries] == [(0, "rnd01")]
    assert len(problems) == 3
    assert "before any block" in problems[0] and "what is this" in problems[1] and "int" in problems[2]


FRAGMENTS = ["Block['main'] error hosts:", "Task[0] error hosts: ", "Task[99999999999999] error hosts:",
             "rndbad: 3 at Wed 02 Dec 16:03.37 - ! AVOIDING !", "rnd01: 2 at Wed 02 Dec 16:03.35",
             "h: 99999999999 at Sun 29 Feb 25:61.99", ": 1 at", "x: 1 at Wed 02 Dec", "\n", "\x00", "é"]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.text(), st.sampled_from(FRAGMENTS), st.integers(), st.none(),
                          st.lists(st.sampled_from(FRAGMENTS)).map("".join))),
       st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 1, 1)))
def test_the_error_hosts_parser_never_raises(lines: list[Any], now_local: datetime) -> None:
    entries, problems = errorhosts.parse(lines, now_local)
    assert all(isinstance(p, str) for p in problems)
    assert all(0 <= e.count <= errorhosts.MAX_COUNT and e.block >= 0 for e in entries)


# --- host masks -----------------------------------------------------------------------------


def test_find_masks_match_name_prefixes_and_regex_masks_whole_names() -> None:
    # job paused_mask, hosts_mask_exclude 'rnd0' (find): rnd01 and rnd02 excluded, rndbad ran both tasks
    assert [masks.excludes("rnd0", "find", h) for h in ("rnd01", "rnd02", "rndbad")] == [True, True, False]
    assert {t["hst"] for t in reply("job_progress_hosts_mask_exclude_prefix")["job_progress"]["progress"][0]} == {"rndbad"}
    assert masks.excludes("a b;rnd02", "find", "rnd02") and not masks.excludes("", "find", "rnd02")
    assert masks.excludes("rnd0.", "regex", "rnd01") and not masks.excludes("rnd0", "regex", "rnd01")
    with pytest.raises(masks.MaskError, match="cannot be read"):
        masks.excludes("rnd(", "regex", "rnd01")


def test_corral_adds_a_host_to_a_mask_keeping_what_it_excluded() -> None:
    assert masks.add_host("", "find", "rndbad", ["rnd01", "rnd02", "rndbad"]) == "rndbad"  # the recorded edit
    assert masks.add_host("rnd03", "find", "rndbad") == "rnd03|rndbad"
    assert masks.add_host("rnd0", "find", "rnd01") is None  # already excluded
    assert masks.add_host("^a$", "regex", "rnd.01") == r"^a$|^rnd\.01$"
    assert masks.add_host("", "regex", "rnd-01") == "^rnd-01$"
    with pytest.raises(masks.MaskError, match=r"also exclude rnd10, rnd11; .* regex"):
        masks.add_host("", "find", "rnd1", ["rnd1", "rnd10", "rnd11", "rnd2"])


def test_corral_removes_only_what_names_the_host_alone() -> None:
    assert masks.remove_host("rnd03|rndbad", "find", "rndbad") == "rnd03"
    assert masks.remove_host("rndbad", "find", "rndbad") == ""
    assert masks.remove_host("rnd", "find", "rndbad") == "rnd"  # a person's prefix: kept, still excludes
    assert masks.remove_host(r"^a$|^rnd\.01$|(x|^rnd\.01$)", "regex", "rnd.01") == "^a$|(x|^rnd\\.01$)"
    assert masks.remove_host("[|]|rnd01", "regex", "rnd01") == "[|]"
    for host in ("rnd.01", "a+b", "x(1)"):
        mask = masks.add_host("^keep$", "regex", host)
        assert mask is not None and masks.excludes(mask, "regex", host) and not masks.excludes(mask, "regex", "other")
        assert masks.remove_host(mask, "regex", host) == "^keep$"


# --- the mapping ---------------------------------------------------------------------------


def states(farm: Farm, serial: int) -> list[FrameState]:
    return [f.state for f in farm.jobs[serial].frames.values()]


def instances(farm: Farm, serial: int) -> dict[str, InstanceState]:
    return {i.id: i.state for i in farm.jobs[serial].instances.values()}


def test_running_jobs_are_keyed_by_serial_with_frames_across_blocks() -> None:
    farm, index, problems = map_farm(reply("jobs_list_running"), {2: reply("job_progress_good_running"),
                                                                  3: reply("job_progress_broken_running")},
                                     {}, reply("renders_list_busy"), NOW)
    assert problems == []
    assert sorted(farm.jobs) == [1, 2]  # serials; the system job 'afanasy' (id 1, serial 0) is not read
    good, broken = farm.jobs[1], farm.jobs[2]
    assert (good.name, good.priority, good.hold, good.state, good.retry_limit) == ("good", 99, Hold.NONE, JobState.RUNNING, 3)
    assert good.submitted_at is not None and good.submitted_at.year == 2026
    assert states(farm, 1) == [F.COMPLETE, F.COMPLETE, F.RUNNING, F.COMPLETE, F.COMPLETE, F.RUNNING]
    assert [f.host for f in good.frames.values()] == [None, None, "rnd01", None, None, "rnd02"]
    assert [f.attempts for f in good.frames.values()] == [1, 1, 4, 1, 1, 1]
    running = good.frames[2]
    assert (running.instance, running.started_at, running.finished_at) == ("1@rnd01", at(1796228204), None)
    assert good.frames[0].runs == [FrameRun("rnd01", "1@rnd01", F.COMPLETE, started_at=at(1796228197),
                                            finished_at=at(1796228200))]
    assert good.frames[0].state_since == at(1796228200)
    assert instances(farm, 1) == {"1@rnd01": IS.RUNNING, "1@rnd02": IS.RUNNING}
    assert states(farm, 2) == [F.RUNNING, F.PENDING, F.PENDING] and broken.state is JobState.RUNNING
    assert instances(farm, 2) == {"2@rndbad": IS.RUNNING}
    assert {n: w.state for n, w in farm.workers.items()} == {"rnd01": WorkerState.UP, "rndbad": WorkerState.UP,
                                                              "rnd02": WorkerState.UP}
    assert index.jobs[1] == JobRef(1, 2, "good", "root", (6,), "", "find")
    assert index.locate(1, 5) == (2, 0, 5) and index.serial_of(3) == 2
    assert index.renders == {"rnd01": 1, "rndbad": 2, "rnd02": 3}


def test_error_hosts_become_failed_runs_per_host_and_a_done_task_one_complete_run() -> None:
    farm, _, problems = map_farm(reply("jobs_list_good_done"), {2: reply("job_progress_good_done")},
                                 {2: reply("job_error_hosts_good")}, reply("renders_list_final"), NOW)
    assert problems == []
    good = farm.jobs[1]
    assert good.state is JobState.COMPLETE
    failed = FrameRun("rndbad", "1@rndbad", F.FAILED, finished_at=datetime(2026, 12, 2, 16, 16, 43, tzinfo=UTC))
    assert good.frames[2].runs == [failed] * 3 + [
        FrameRun("rnd01", "1@rnd01", F.COMPLETE, started_at=at(1796228204), finished_at=at(1796228208))]
    assert instances(farm, 1) == {"1@rnd01": IS.COMPLETE, "1@rnd02": IS.COMPLETE, "1@rndbad": IS.FAILED}
    # a done job is read without its progress: complete frames, the failed runs, no hosts
    farm, _, problems = map_farm(reply("jobs_list_good_done"), {}, {2: reply("job_error_hosts_good")},
                                 reply("renders_list_final"), NOW)
    assert states(farm, 1) == [F.COMPLETE] * 6 and farm.jobs[1].frames[2].runs == [failed] * 3
    assert instances(farm, 1) == {"1@rndbad": IS.FAILED} and problems == []


def broken_settled(tz: Any = UTC) -> Farm:
    farm, _, problems = map_farm(reply("jobs_list_broken_settled"), {3: reply("job_progress_broken_settled")},
                                 {3: reply("job_error_hosts_broken")}, reply("renders_list_final"), NOW, tz)
    assert problems == []
    return farm


def test_a_job_failing_on_every_host_has_its_failures_per_task_and_host() -> None:
    farm = broken_settled()
    broken = farm.jobs[2]
    # task 0 ERR (out of retries); tasks 1 and 2 'RDY RER' (ready again after an error): pending
    assert states(farm, 2) == [F.FAILED, F.PENDING, F.PENDING] and broken.state is JobState.FAILING
    runs = {n: [(r.host, r.state, r.finished_at.strftime("%H:%M:%S") if r.finished_at else None) for r in f.runs]
            for n, f in broken.frames.items()}
    assert runs == {
        0: [("rndbad", F.FAILED, "16:16:49")] * 3 + [("rnd01", F.FAILED, "16:16:52")],
        1: [("rnd02", F.FAILED, "16:16:52")] + [("rnd01", F.FAILED, "16:16:54")] * 2,
        2: [("rnd02", F.FAILED, "16:16:54")] * 2,
    }
    assert [f.attempts for f in broken.frames.values()] == [len(r) for r in runs.values()]  # str = runs
    assert instances(farm, 2) == {"2@rnd01": IS.FAILED, "2@rnd02": IS.FAILED, "2@rndbad": IS.FAILED}


def test_a_job_whose_every_task_is_out_of_retries_is_failed() -> None:
    farm, _, problems = map_farm(reply("jobs_broken_all_err"), {3: reply("job_progress_broken_all_err")}, {},
                                 reply("renders_list_final"), NOW)
    assert problems == [] and states(farm, 2) == [F.FAILED] * 3 and farm.jobs[2].state is JobState.FAILED
    assert [f.attempts for f in farm.jobs[2].frames.values()] == [8, 4, 4]


def test_the_server_s_offset_is_read_off_a_task_that_last_failed() -> None:
    # told the server is at UTC+5, but task 0 last failed on rnd01 at tdn 16:16:52 UTC and its
    # error line says 16:16.52: the server's clock is UTC, and the runs are placed so
    east = timezone(timedelta(hours=5))
    assert broken_settled(east).jobs[2].frames[0].runs[-1].finished_at == datetime(2026, 12, 2, 16, 16, 52, tzinfo=UTC)
    # no task shows it (every task done): the zone given is used
    farm, _, _ = map_farm(reply("jobs_list_good_done"), {2: reply("job_progress_good_done")},
                          {2: reply("job_error_hosts_good")}, reply("renders_list_final"), NOW, east)
    assert farm.jobs[1].frames[2].runs[0].finished_at == datetime(2026, 12, 2, 11, 16, 43, tzinfo=UTC)
    # a server at UTC-3 writes 13:16.52 for the same instant: the runs are still placed at 16:16:52 UTC
    west = reply("job_error_hosts_broken")
    west["message"]["list"] = [line.replace(" 16:16.", " 13:16.") for line in west["message"]["list"]]
    farm, _, _ = map_farm(reply("jobs_list_broken_settled"), {3: reply("job_progress_broken_settled")}, {3: west},
                          reply("renders_list_final"), NOW, UTC)
    assert farm.jobs[2].frames[0].runs[-1].finished_at == datetime(2026, 12, 2, 16, 16, 52, tzinfo=UTC)


def test_a_host_in_a_job_s_exclude_mask_is_a_blocked_instance() -> None:
    # job long (serial 6): hosts_mask_exclude 'rndbad' (find mode); it failed there before
    farm, _, problems = map_farm(reply("jobs_after_hosts_mask_exclude"), {7: reply("job_progress_after_nimby")},
                                 {7: reply("job_error_hosts_long_before_reset")}, reply("renders_list_freed"), NOW)
    assert problems == []
    assert instances(farm, 6) == {"6@rndbad": IS.BLOCKED, "6@rnd01": IS.RUNNING, "6@rnd02": IS.RUNNING}
    assert len(farm.jobs[6].frames[0].runs) == 3 and farm.jobs[6].state is JobState.RUNNING
    # find masks are prefixes: paused_mask's 'rnd0' blocks rnd01 and rnd02; parent_x3's 'rnd01' only rnd01
    farm, _, _ = map_farm(reply("jobs_list_final"), {}, {}, reply("renders_list_final"), NOW)
    assert instances(farm, 8) == {"8@rnd01": IS.BLOCKED, "8@rnd02": IS.BLOCKED}
    assert instances(farm, 9) == {"9@rnd01": IS.BLOCKED}


def test_a_paused_or_stopped_job_is_held_blocked_and_who_did_it_is_left_to_the_store() -> None:
    for jobs, progress in (("jobs_after_pause", "job_progress_after_pause"), ("jobs_after_stop", "job_progress_after_stop")):
        farm, _, _ = map_farm(reply(jobs), {7: reply(progress)}, {}, reply("renders_list_freed"), NOW)
        long = farm.jobs[6]
        assert (long.hold, long.state, long.blocked_by) == (Hold.BLOCKED, JobState.BLOCKED, None), jobs
    # paused: the tasks still run; stopped: killed and ready again
    assert states(farm, 6) == [F.PENDING] * 4


def test_a_job_waits_for_the_jobs_its_depend_mask_names_among_its_user_s() -> None:
    jobs = reply("jobs_list_parent_child_waiting")  # child: depend_mask '^parent$', state ' WDP'
    bob = copy.deepcopy(jobs["jobs"][0]) | {"id": 40, "serial": 40, "user_name": "bob"}  # another user's 'parent'
    jobs["jobs"].append(bob)
    progress = {j: {"job_progress": {"id": j, "progress": [[{"state": " RUN", "hst": "rnd01"}, {"state": " RDY"}]]}}
                for j in (4, 5, 40)}
    farm, _, problems = map_farm(jobs, progress, {}, reply("renders_list_idle"), NOW)
    assert problems == []
    assert farm.jobs[4].depends_on == [3] and farm.jobs[3].depends_on == []
    jobs["jobs"][1]["depend_mask_global"] = "^par.*"
    farm, _, _ = map_farm(jobs, progress, {}, reply("renders_list_idle"), NOW)
    assert farm.jobs[4].depends_on == [3, 40]
    jobs["jobs"][1]["depend_mask"] = "(("
    farm, _, problems = map_farm(jobs, progress, {}, reply("renders_list_idle"), NOW)
    assert "cannot be read" in problems[0] and farm.jobs[4].depends_on == [3, 40]


def test_renders_in_nimby_paused_or_sick_are_locked_and_offline_ones_down() -> None:
    farm, _, _ = map_farm({"jobs": []}, {}, {}, reply("renders_list_nimby_paused"), NOW)
    assert {n: w.state for n, w in farm.workers.items()} == {
        "rnd01": WorkerState.LOCKED, "rndbad": WorkerState.LOCKED, "rnd02": WorkerState.UP}  # NBY, PAU
    farm, _, _ = map_farm({"jobs": []}, {}, {}, reply("renders_list_nimby_lower"), NOW)
    assert {w.state for w in farm.workers.values()} == {WorkerState.LOCKED}  # NbY
    assert worker_state(frozenset({"OFF"})) is WorkerState.DOWN
    assert worker_state(frozenset({"OFF", "PAU"})) is WorkerState.LOCKED
    assert worker_state(frozenset({"ONL", "SIC"})) is WorkerState.LOCKED


def test_task_flags_map_to_frame_states() -> None:
    table = {" RUN": F.RUNNING, " WRC": F.RUNNING, " ERR": F.FAILED, " DON": F.COMPLETE, " DON SKP": F.COMPLETE,
             " SUS": F.BLOCKED, " RDY": F.PENDING, " RDY RER": F.PENDING, " WDP": F.PENDING, "": F.PENDING}
    for text, state in table.items():
        assert frame_state(frozenset(text.split())) is state, text


def test_a_reused_job_id_is_another_job_by_its_serial() -> None:
    before = map_farm(reply("jobs_before_delete"), {}, {}, reply("renders_list_final"), NOW)[1]
    paused = {5: {"job_progress": {"id": 5, "progress": [[{"state": " RDY", "st": 1}] * 2]}}}
    farm, after, _ = map_farm(reply("jobs_id_reused"), paused, {}, reply("renders_list_final"), NOW)
    assert (before.jobs[4].id, before.jobs[4].name) == (5, "child")
    assert (after.jobs[12].id, after.jobs[12].name) == (5, "paused_reuse") and list(farm.jobs) == [12]
    assert farm.jobs[12].state is JobState.BLOCKED  # submitted paused
    assert Index(jobs=after.jobs).serial_of(5) == 12


def test_a_job_whose_progress_is_another_job_s_is_skipped_and_said_so() -> None:
    other = reply("job_progress_after_nimby")  # 4 tasks; paused_reuse has 2
    other["job_progress"]["id"] = 5
    farm, _, problems = map_farm(reply("jobs_id_reused"), {5: other}, {}, reply("renders_list_final"), NOW)
    assert farm.jobs == {} and "serial 12" in problems[0] and "replaced" in problems[0]
    farm, _, problems = map_farm(reply("jobs_id_reused"), {}, {}, reply("renders_list_final"), NOW)
    assert farm.jobs == {} and "no task progress" in problems[0]


def test_frame_numbers_run_across_blocks_and_back() -> None:
    ref = JobRef(7, 3, "two blocks", "root", (2, 3))
    assert [ref.locate(n) for n in range(5)] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert [ref.number(b, t) for b, t in [(0, 0), (0, 1), (1, 0), (1, 2)]] == [0, 1, 2, 4]
    for bad in (-1, 5):
        with pytest.raises(IndexError, match="has no frame"):
            ref.locate(bad)


def test_unreadable_entries_are_skipped_and_reported_never_raised() -> None:
    jobs = {"jobs": [{"id": 9, "name": "no serial", "blocks": []}, "nonsense",
                     {"id": 10, "serial": 10, "name": "x" * 300, "blocks": [{"tasks_num": 1}]}]}
    renders = {"renders": [{"name": "", "id": 1}, {"name": "ok", "id": 2, "state": " ONL"}]}
    farm, _, problems = map_farm(jobs, {}, {}, renders, NOW)
    assert farm.jobs == {} and list(farm.workers) == ["ok"] and len(problems) == 4
    farm, _, problems = map_farm({"jobs": "what"}, {}, {}, {}, NOW)
    assert farm.jobs == {} and problems == ["jobs: expected a list, got str"]


# --- one whole read --------------------------------------------------------------------------


def final_farm(fake: FakeAfanasy) -> None:
    """The end of the recording: jobs_list_final, with the replies recorded for its jobs.
    Job 8 ('paused', never started) is answered as Afanasy lists a paused job's tasks;
    job 5 ('paused_reuse') is not answered: as if deleted while the farm was read."""
    for name in ("jobs_list_final", "renders_list_final", "job_error_hosts_good", "job_error_hosts_broken",
                 "job_error_hosts_defaults", "job_progress_broken_settled"):
        fake.serve(name)
    fake.route({"get": {"type": "jobs", "ids": [8], "mode": "progress"}},
               {"job_progress": {"id": 8, "progress": [[{"state": " RDY", "st": 1}, {"state": " RDY", "st": 1}]]}})


def test_a_whole_read_asks_progress_of_unfinished_jobs_and_error_hosts_of_failing_ones(fake: FakeAfanasy) -> None:
    final_farm(fake)
    farm, index, problems = read_farm(client(fake), NOW)
    asked = [(r["get"]["type"], r["get"].get("ids"), r["get"].get("mode")) for r in fake.requests()]
    assert asked == [("jobs", None, None), ("jobs", [2], "error_hosts"), ("jobs", [3], "progress"),
                     ("jobs", [3], "error_hosts"), ("jobs", [6], "error_hosts"), ("jobs", [8], "progress"),
                     ("jobs", [5], "progress"), ("renders", None, None)]
    assert sorted(farm.jobs) == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]  # 4 was deleted; 12 vanished mid-read
    assert len(problems) == 1 and "serial 12" in problems[0] and "Invalid ID" in problems[0]
    assert farm.jobs[7].state is JobState.BLOCKED and farm.jobs[2].state is JobState.FAILING
    # who submitted it, and each task's block as its layer (Flamenco's task type, OpenCue's layer)
    assert farm.jobs[2].owner == "root" and {f.layer for f in farm.jobs[2].frames.values()} == {"main"}
    assert instances(farm, 5) == {"5@rndbad": IS.FAILED} and len(farm.jobs[5].frames[0].runs) == 3
    assert index.jobs[6].hosts_mask_exclude == "rndbad" and index.renders["rnd02"] == 3


def test_a_job_whose_summary_did_not_change_is_not_asked_for_its_tasks_again(fake: FakeAfanasy) -> None:
    """Idle, paused and stuck jobs cost one line of the job list after the first read;
    a job whose summary changed (a task started, failed, was restarted) is read again."""
    final_farm(fake)
    cache: dict[int, Any] = {}
    first, _, _ = read_farm(client(fake), NOW, cache=cache)
    asked_first = len(fake.requests())
    again, _, _ = read_farm(client(fake), NOW, cache=cache)
    asked_again = [(r["get"].get("ids"), r["get"].get("mode")) for r in fake.requests()[asked_first:]]
    # only the job that vanished mid-read last time is asked again
    assert asked_again == [(None, None), ([5], "progress"), (None, None)]
    assert again == first
    moved = json.loads(json.dumps(reply("jobs_list_final")))
    target = next(j for j in moved["jobs"] if j.get("id") == 3)
    target["tasks_error"] = int(target.get("tasks_error", 0)) + 1
    fake.route({"get": {"type": "jobs"}}, moved)
    read_farm(client(fake), NOW, cache=cache)
    asked_third = [(r["get"].get("ids"), r["get"].get("mode")) for r in fake.requests()[asked_first + 3:]]
    assert ([3], "progress") in asked_third and all(ids in (None, [3], [5]) for ids, _mode in asked_third)


def test_the_reader_is_the_farm_source_of_afanasy_urls(fake: FakeAfanasy) -> None:
    from corral.farms import open_farm

    final_farm(fake)
    reader = open_farm(f"afanasy://{fake.address}")
    assert isinstance(reader, AfanasyReader) and reader.name == f"afanasy://{fake.address}"
    farm, problems = reader.read(NOW)
    assert len(farm.jobs) == 10 and len(problems) == 1 and reader.index is not None
    reader.close()
    with pytest.raises(FarmUnreachable, match="cannot reach Afanasy"):
        AfanasyReader(f"127.0.0.1:{closed_port()}", timeout=2).read(NOW)
    garbage = FakeAfanasy(garbage=b"SSH-2.0-OpenSSH_9.2\r\n")
    try:
        with pytest.raises(FarmUnreachable, match="expected a reply starting with 'AFANASY"):
            AfanasyReader(garbage.address, timeout=2).read(NOW)
    finally:
        garbage.close()


def test_a_read_of_afanasy_syncs_into_the_store_and_the_runs_append(store: Any) -> None:
    """Reads one after another: the store keeps the farm the mapping gives, the failures
    found later are appended as runs, and reading the same farm again changes nothing."""
    actor = "afanasy://127.0.0.1:51000"
    first, _, _ = map_farm(reply("jobs_list_running"), {2: reply("job_progress_good_running"),
                                                       3: reply("job_progress_broken_running")},
                           {}, reply("renders_list_busy"), NOW)
    store.sync_farm(first, now=NOW, actor=actor)
    later = broken_settled()
    report = store.sync_farm(later, now=NOW + timedelta(minutes=1), actor=actor)
    assert report.runs == 4 + 3 + 2
    again = store.sync_farm(broken_settled(), now=NOW + timedelta(minutes=2), actor=actor)
    assert again.changed == 0
    stored = store.read_farm()
    assert stored.jobs[2].state is JobState.FAILING and len(stored.jobs[2].frames[0].runs) == 4
    assert {i.id: i.state for i in stored.jobs[2].instances.values()} == instances(later, 2)
