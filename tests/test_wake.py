"""The daemon wakes on news: a fact the feed commits is acted on in seconds, not at the next interval.

Every daemon here has a 60 s interval, so a cycle that runs within the test's few
seconds after its first one was brought forward by news.  The assertions are on
order and counts, not on speed: the timeouts are generous for a loaded machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import Corral
from corral.daemon.service import Daemon, DaemonConfig, Tick
from corral.daemon.wake import Pace
from corral.states import Kind
from corral.store import Store
from corral.store.news import FILE_CAP, FileNews, announce_after, news_path
from daemon_helpers import load, pending_farm, wait_for, write_rules


def make(url: str, rules: Path, **kw: Any) -> Daemon:
    return Daemon(DaemonConfig(db_url=url, paths=[rules], engine="reference", isolate=False, interval=60.0, **kw))


class Running:
    """A daemon's `run_forever` on a thread, each tick's (start, end) recorded."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.ticks: list[tuple[float, float, str]] = []
        plain = daemon.tick

        def recorded() -> Tick:
            start = time.monotonic()
            out = plain()
            self.ticks.append((start, time.monotonic(), out.outcome))
            return out

        daemon.tick = recorded  # type: ignore[method-assign]
        self.thread = threading.Thread(target=daemon.run_forever, kwargs={"install_signals": False})

    def __enter__(self) -> Running:
        self.thread.start()
        wait_for(lambda: len(self.ticks) >= 1, what="the first cycle")
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.thread.join(20)


def blocked(url: str) -> set[int]:
    with Store.open(url) as store:
        return {j.id for j in store.read_farm().jobs.values() if j.state.value == "blocked"}


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    return write_rules(tmp_path / "rules")


def test_a_job_the_feed_submits_is_acted_on_long_before_the_interval(store_url: str, rules: Path) -> None:
    load(store_url, pending_farm(2))
    with Running(make(store_url, rules)) as run, Corral.open(store_url) as feed:
        assert blocked(store_url) == {1, 2}  # the first cycle, at the start
        job = feed.submit_job("shot_new", frames="1-3")
        wait_for(lambda: job.id in blocked(store_url), timeout=30, what="the new job blocked")
    assert run.daemon.starts["news"] >= 1 and run.daemon.starts["interval"] == 1
    with Store.open(store_url) as store:
        [entry] = store.transitions(job=job.id, policy="block-pending")
    assert entry.applied and entry.actor == "corral"


def test_with_no_news_the_daemon_waits_its_interval_and_its_own_writes_wake_nothing(
        store_url: str, rules: Path) -> None:
    load(store_url, pending_farm(3))
    with Running(make(store_url, rules)) as run:
        time.sleep(2.0)  # the first cycle applied three blocks: its own writes
    assert [outcome for _s, _e, outcome in run.ticks] == ["ok"]
    assert run.daemon.starts == {"interval": 1, "news": 0}
    assert blocked(store_url) == {1, 2, 3}


def test_without_wake_news_waits_for_the_interval(store_url: str, rules: Path) -> None:
    load(store_url, pending_farm(1))
    with Running(make(store_url, rules, wake=False)) as run, Corral.open(store_url) as feed:
        job = feed.submit_job("shot_new", frames="1-3")
        time.sleep(1.5)
        assert job.id not in blocked(store_url)
    assert run.daemon.starts == {"interval": 1, "news": 0}


class _Slow(Daemon):
    """Cycles that take 0.15 s, and say if two ever ran at once."""

    running = 0
    overlap = False
    lock = threading.Lock()

    def cycle(self) -> Any:
        with _Slow.lock:
            _Slow.running += 1
            _Slow.overlap |= _Slow.running > 1
        try:
            time.sleep(0.15)
            return super().cycle()
        finally:
            with _Slow.lock:
                _Slow.running -= 1


def test_a_stream_of_news_never_overlaps_cycles_and_keeps_the_gap_between_them(
        tmp_path: Path, sqlite_template: Path, rules: Path) -> None:
    import shutil

    shutil.copy(sqlite_template, tmp_path / "farm.db")
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    load(url, pending_farm(1))
    gap = 0.3
    daemon = _Slow(DaemonConfig(db_url=url, paths=[rules], engine="reference", isolate=False, interval=60.0,
                                min_gap=gap))
    stop = threading.Event()

    def feed() -> None:  # news far faster than the daemon cycles: a batch every 20 ms
        with Corral.open(url) as corral:
            n = 0
            while not stop.is_set():
                n += 1
                corral.submit_job(f"shot{n}", frames="1")
                time.sleep(0.02)

    writer = threading.Thread(target=feed)
    with Running(daemon) as run:
        writer.start()
        try:
            wait_for(lambda: len(run.ticks) >= 5, timeout=60, what="five cycles")
        finally:
            stop.set()
            writer.join(20)
    assert not _Slow.overlap
    for (_s0, end, _o0), (start, _e1, _o1) in zip(run.ticks, run.ticks[1:], strict=False):
        assert start >= end + gap
    assert run.daemon.starts["interval"] == 1 and run.daemon.starts["news"] >= 4
    assert all(outcome == "ok" for _s, _e, outcome in run.ticks)


def test_the_pace_keeps_the_interval_skips_overrun_ticks_and_brings_news_forward_no_sooner_than_the_gap() -> None:
    pace = Pace(interval=30.0, min_gap=0.5)
    assert pace.after(100.0, 101.0) == (130.0, 0)
    assert pace.after(100.0, 175.0) == (190.0, 2)  # ticks at 130 and 160 fell in the cycle
    assert pace.soonest(130.0, 101.0) == 101.5
    assert pace.soonest(130.0, 129.8) == 130.0  # never later than the tick


def test_the_news_file_changes_at_every_announcement_and_stays_small(tmp_path: Path) -> None:
    db = tmp_path / "farm.db"
    db.write_bytes(b"")
    db.chmod(0o640)
    listener = FileNews(db)
    assert not listener.wait(0.05)
    for _ in range(FILE_CAP + 10):
        announce_after(db)
    assert listener.wait(0.05) and not listener.wait(0.05)
    announce_after(db)
    assert listener.wait(1.0)
    assert news_path(db).stat().st_size <= FILE_CAP
    assert news_path(db).stat().st_mode & 0o777 == 0o640  # readable by whoever may read the store


def test_an_announcement_that_cannot_be_written_costs_the_wake_up_not_the_write(tmp_path: Path) -> None:
    announce_after(tmp_path / "gone" / "farm.db")  # no folder for the news file: no error either
    assert not (tmp_path / "gone").exists()


@pytest.fixture
def person_url(store_url: str) -> Iterator[str]:
    load(store_url, pending_farm(1))
    yield store_url


def test_a_persons_action_is_news_too(person_url: str, rules: Path) -> None:
    """A person unblocking a job the policy blocks: the daemon blocks it again at once."""
    with Running(make(person_url, rules)), Corral.open(person_url) as corral:
        assert blocked(person_url) == {1}
        corral.act(Kind.JOB, 1, "unblock", actor="user:wrangler")
        wait_for(lambda: blocked(person_url) == {1}, timeout=30, what="the job blocked again")
    with Store.open(person_url) as store:
        actors = [t.actor for t in store.transitions(job=1)]
    assert actors == ["corral", "user:wrangler", "corral"]


#: A feed at full speed, in a process of its own as `corral ingest` is: batches of job
#: submissions committed back to back, as many as argv[2]; it says "go" once it runs.
FEED_AT_FULL_SPEED = """
import sys
from corral import Corral
url, batches = sys.argv[1], int(sys.argv[2])
with Corral.open(url) as corral:
    for b in range(batches):
        corral.record_many([{"id": f"f{b}-{n}", "type": "job_submitted",
                             "job": {"id": 1000 + 100 * b + n, "name": f"fed{b}_{n}", "frames": "1-2"}}
                            for n in range(100)])
        if b == 0:
            print("go", flush=True)
"""


def test_a_feed_writing_batch_after_batch_does_not_starve_the_daemons_writes(
        tmp_path: Path, sqlite_template: Path, rules: Path) -> None:
    """SQLite has one write lock and no queue for it.  A feed committing its next batch a
    moment after the last, and a daemon whose every cycle writes (its change stamp, the
    transitions, its heartbeat), must take turns: the daemon's cycles go on while the feed
    runs, instead of its writes waiting whole seconds of batches for a free moment (they
    did, when SQLite's busy handler, trying every 100 ms, asked for the lock:
    corral.store.engine.begin_immediate).  Counted in the feed's batches, not in seconds:
    five cycles, each write of them waiting a batch or two of the feed, end long before
    the feed's 150 batches do (measured: within the first sixth of them); starved, the
    daemon ran two or three cycles in all 150."""
    import shutil
    import subprocess
    import sys

    shutil.copy(sqlite_template, tmp_path / "farm.db")
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    load(url, pending_farm(1))
    daemon = make(url, rules, min_gap=0.05)
    with Running(daemon) as run:
        feed = subprocess.Popen([sys.executable, "-c", FEED_AT_FULL_SPEED, url, "150"], stdout=subprocess.PIPE)
        try:
            assert feed.stdout is not None and feed.stdout.readline().strip() == b"go"
            first = len(run.ticks)
            wait_for(lambda: len(run.ticks) >= first + 5 or feed.poll() is not None, timeout=300,
                     what="five cycles or the end of the feed")
            still_feeding = feed.poll() is None
        finally:
            feed.kill()
            feed.wait(20)
    assert still_feeding, f"the feed ended before the daemon's five cycles: {len(run.ticks) - first} ran beside it"
    assert all(outcome == "ok" for _s, _e, outcome in run.ticks)
    assert run.daemon.starts["news"] >= 5
