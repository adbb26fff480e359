"""One active daemon per store, held by a lease: exclusive, renewed, fenced, and given up
or lost however the leader stops (killed, frozen with SIGSTOP, or cut off by a network
gone silent), with a standby taking over within two intervals (corral.daemon.leader)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.leader import LeaderError, Lease, LeaseLost
from corral.daemon.service import Daemon, DaemonConfig
from corral.store import Store
from corral.store import lease as lease_mod
from daemon_helpers import corral, kill_group, load, log_has, pending_farm, stop, wait_for, write_rules


def test_a_lease_excludes_a_second_holder_until_it_runs_out_or_is_given_up(store: Store) -> None:
    store.init()
    token = store.take_lease("a", 0.5)
    assert token is not None and store.lease_state().alive and store.lease_state().holder == "a"
    assert store.take_lease("b", 0.5) is None
    assert store.renew_lease("a", token, 0.5) and not store.renew_lease("b", token, 0.5)
    time.sleep(0.7)
    assert not store.lease_state().alive
    assert not store.renew_lease("a", token, 0.5)  # run out: renewing is no longer proof
    token_b = store.take_lease("b", 5)
    assert token_b is not None and token_b > token
    store.give_up_lease("b", token_b)
    given_up = store.lease_state()
    assert not given_up.alive and 0 <= given_up.now - (given_up.expires or 0) < 0.5  # shown as let go when it was
    assert store.take_lease("c", 5) is not None  # at once


def test_a_daemon_that_lost_its_lease_writes_nothing(store: Store) -> None:
    """The fence: every writing transaction of the leader's store proves the lease first."""
    store.init()
    lease = Lease(store, "a", ttl=2)
    try:
        assert lease.acquire()
        store.set_setting("k", "one")  # held: the write goes through
        store.give_up_lease("a", lease.token or 0)  # as if it ran out, and...
        with Store.open(store.url.render_as_string(hide_password=False)) as other:
            assert other.take_lease("b", 30) is not None  # ...another daemon took it
        with pytest.raises(LeaseLost, match="another daemon took it: b"):
            store.set_setting("k", "two")
        assert not lease.check()
        assert store.get_setting("k") == "one"
    finally:
        lease.release()


@pytest.mark.parametrize(("holder", "token", "expires", "says"), [
    ("a", 7, 99.0, "ran out before this daemon renewed it"),  # still ours, run out: nobody took it
    ("b", 8, 200.0, "another daemon took it: b"),
    ("a", 8, 200.0, "ran out and this daemon took it again under a new token"),
    ("b", 8, 99.0, "it ran out, and b held it since"),
    (None, 7, None, "it ran out, and another daemon held it since"),
])
def test_why_a_lease_was_lost_is_read_from_the_lease_as_it_stands(
        holder: str | None, token: int, expires: float | None, says: str) -> None:
    """Daemon "a" held token 7 and could not renew it; the lease read right after (the
    database's clock at 100) says why."""
    state = lease_mod.LeaseState(holder=holder, token=token, since=0.0, expires=expires, now=100.0)
    assert says in lease_mod.lost_why(state, "a", 7)


def test_a_lease_that_ran_out_is_not_reported_as_taken_by_another_daemon(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """A leader whose lease ran out (its machine stood still past the lease's time: seen
    live, a VM paused for 9 s) says so, and does not send the wrangler looking for a
    second daemon; one whose lease another daemon took names it.  Both the write's fence
    and the heartbeat tell it."""
    store.init()
    lease = Lease(store, "a", ttl=2)
    try:
        assert lease.acquire()
        store.give_up_lease("a", lease.token or 0)  # its time over, and nobody took it
        with pytest.raises(LeaseLost, match=r"ran out before this daemon renewed it.*no other daemon holds it"):
            store.set_setting("k", "one")
        with caplog.at_level(logging.ERROR, logger="corral.daemon.leader"):
            assert not lease.check()
        assert "ran out before this daemon renewed it" in caplog.text and "another daemon took" not in caplog.text

        caplog.clear()
        assert lease.acquire()
        store.give_up_lease("a", lease.token or 0)  # the heartbeat finds it ran out
        with caplog.at_level(logging.ERROR, logger="corral.daemon.leader"):
            wait_for(lambda: not lease.check(), 5, what="the heartbeat to find the lease run out")
        assert "ran out before this daemon renewed it" in caplog.text

        caplog.clear()
        assert lease.acquire()
        store.give_up_lease("a", lease.token or 0)
        with Store.open(store.url.render_as_string(hide_password=False)) as other:
            assert other.take_lease("b", 30) is not None
        with caplog.at_level(logging.ERROR, logger="corral.daemon.leader"):
            wait_for(lambda: not lease.check(), 5, what="the heartbeat to find the lease taken")
        assert "another daemon took it: b" in caplog.text
    finally:
        lease.release()


def test_a_leader_that_cannot_renew_stops_acting_within_its_lease(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal that hangs (a network gone silent) is no proof: `check` fails once the
    lease's time has passed on the leader's own clock, even with the call still hanging."""
    store.init()
    lease = Lease(store, "a", ttl=2)
    hang = threading.Event()

    def renew_hangs(*args: object) -> bool:
        hang.wait(30)
        return False

    try:
        assert lease.acquire() and lease.check()
        monkeypatch.setattr(store, "renew_lease", renew_hangs)
        time.sleep(1.0)
        assert lease.check()  # within its lease: still the leader
        wait_for(lambda: not lease.check(), 5, what="the leader to give up a lease it cannot renew")
    finally:
        hang.set()
        lease.release()


def test_a_renewal_of_an_earlier_lease_that_comes_back_late_leaves_the_new_lease_alone(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The renewal of lease 1 hangs; the leader gives it up (check), takes the lease again
    (lease 2), and only then does the hung renewal come back, refused.  Lease 2 holds, and
    its own heartbeat keeps it."""
    store.init()
    lease = Lease(store, "a", ttl=2)
    hang, renewed = threading.Event(), []
    real_renew = store.renew_lease

    def renew(holder: str, token: int, ttl: float) -> bool:
        renewed.append(token)
        if token == first:
            hang.wait(30)
            return False  # refused: by now the lease has another token
        return real_renew(holder, token, ttl)

    monkeypatch.setattr(store, "renew_lease", renew)
    try:
        assert lease.acquire()
        first = lease.token
        wait_for(lambda: not lease.check(), 5, what="the leader to give up a lease it cannot renew")
        assert lease.acquire() and lease.token != first
        hang.set()  # the renewal of lease 1 returns now, refused
        wait_for(lambda: lease.token in renewed, 5, what="lease 2's own heartbeat")
        time.sleep(1.0)
        assert lease.check(), "a late answer about lease 1 cost lease 2"
    finally:
        hang.set()
        lease.release()


def test_a_lease_error_without_a_message_still_says_what_failed(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.init()
    lease = Lease(store, "a", ttl=2)

    def times_out(*args: object) -> int:
        raise TimeoutError()

    monkeypatch.setattr(store, "take_lease", times_out)
    with pytest.raises(LeaderError, match="cannot take the daemon lease: TimeoutError"):
        lease.acquire()


def test_a_daemon_on_a_store_without_the_schema_says_so_rather_than_unreachable(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules")
    db = tmp_path / "farm.db"
    db.touch()
    d = Daemon(DaemonConfig(db_url=f"sqlite:///{db}", paths=[rules], engine="reference", isolate=False))
    try:
        tick = d.tick()
    finally:
        d.close()
    assert tick.outcome == "error" and "corral db init" in (tick.error or ""), tick


@pytest.mark.postgres
def test_a_lease_row_locked_by_a_transaction_that_does_not_end_is_waited_for_two_seconds(store: Store) -> None:
    """A daemon frozen inside its commit holds the lease row's lock.  A standby's take
    waits 2 s for it, then says 'not taken' (no outage, no back-off); a leader's write
    says it could not prove its lease and writes nothing; and once the lock is gone,
    the lease is taken at once."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no row locks (its write lock is its busy timeout)")
    store.init()
    other = Store.open(store.url.render_as_string(hide_password=False))
    frozen = store.engine.connect()

    def lock_the_row() -> Any:
        tx = frozen.begin()
        frozen.exec_driver_sql("UPDATE daemon_lease SET holder = holder WHERE id = 1")  # the frozen commit's lock
        return tx

    try:
        token = store.take_lease("leader", 30)
        assert token is not None
        tx = lock_the_row()
        leader = Lease(other, "leader", ttl=2)
        leader.token, leader.held = token, True  # a leader whose write meets the locked row
        started = time.monotonic()
        with pytest.raises(LeaseLost, match="could not prove it holds the store's lease"):
            other.set_setting("k", "v")
        assert 1.8 < time.monotonic() - started < 5
        tx.rollback()
        assert other.get_setting("k") is None

        store.give_up_lease("leader", token)
        tx = lock_the_row()
        standby = Lease(other, "standby", ttl=2)
        started = time.monotonic()
        assert standby.acquire() is False  # not taken, no error: tried again next tick
        assert 1.8 < time.monotonic() - started < 5
        tx.rollback()
        assert standby.acquire() is True
        standby.release()
    finally:
        frozen.close()
        other.close()


def test_a_store_corral_makes_is_its_user_s_alone(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'farm.db'}") as store:
        store.init()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["farm.db"] == 0o600 and all(mode == 0o600 for mode in modes.values()), modes


def test_run_once_on_a_missing_store_says_so_and_leaves_nothing_behind(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "corral", "run", "--once"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "run `corral db init`" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- takeover, however the leader stops --------------------------------------------------

ARGS = ("--only-rules", "--interval", "1", "--engine", "reference", "--no-isolate")


def _two_daemons(url: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], Path, Path]:
    load(url, pending_farm(3))
    rules = write_rules(tmp_path / "rules")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = corral("run", "--db", url, "--rules", str(rules), *ARGS, log=log_a)
    wait_for(log_has(log_a, "3 applied"), 30, what="the first daemon to lead and apply")
    b = corral("run", "--db", url, "--rules", str(rules), *ARGS, log=log_b)
    wait_for(log_has(log_b, "standby:"), 30, what="the second daemon to stand by")
    assert "leader:" not in log_b.read_text()
    return a, b, log_a, log_b


def _each_job_blocked_once(url: str) -> None:
    with Store.open(url) as store:
        log = store.transitions()
    assert sorted(int(t.entity_id) for t in log) == [1, 2, 3, 100, 101], "each job blocked once, by exactly one daemon"


@pytest.mark.parametrize("how", ["SIGKILL", pytest.param("SIGSTOP", marks=pytest.mark.slow)])
def test_a_standby_takes_over_within_two_intervals_however_the_leader_stops(
        store_url: str, tmp_path: Path, how: str) -> None:
    """Killed, or frozen and later thawed: the standby acts within two intervals (a lease
    of 2 s, the shortest, and an interval of 1 s here: 3 s), and a thawed leader, whose
    lease another daemon now holds, stands by instead of acting."""
    a, b, log_a, log_b = _two_daemons(store_url, tmp_path)
    try:
        _add_jobs(store_url)
        if how == "SIGKILL":
            a.send_signal(signal.SIGKILL)
        else:
            _freeze_outside_a_write(a, store_url)
        stopped = time.monotonic()
        try:
            wait_for(log_has(log_b, "2 applied"), 15, what="the standby to take over")
        except AssertionError as err:  # say what stood in the way (a lock the frozen leader holds?)
            lock = _sqlite_write_lock_is_free(store_url) if store_url.startswith("sqlite") else "n/a"
            raise AssertionError(f"{err}; SQLite's write lock free now: {lock}; the leader's threads stopped: "
                                 f"{_all_threads_stopped(a.pid)}; the standby's log ends: {log_b.read_text()[-600:]}"
                                 ) from None
        took = time.monotonic() - stopped
        print(f"takeover after {how}: {took:.2f} s")
        assert took < 3 + 3, f"took {took:.1f} s: the bound is a lease (2 s) and an interval (1 s), and a tick"
        assert "leader:" in log_b.read_text()
        if how == "SIGSTOP":
            a.send_signal(signal.SIGCONT)
            wait_for(log_has(log_a, "lost the daemon lease"), 15, what="the thawed leader to find its lease gone")
            time.sleep(2)
            assert a.poll() is None and "2 applied" not in log_a.read_text()
        assert stop(b, signal.SIGTERM) == 0
    finally:
        kill_group(a)
        kill_group(b)
    _each_job_blocked_once(store_url)


def _sqlite_write_lock_is_free(url: str) -> bool:
    """Whether a writer could take SQLite's write lock now (tried for 0.5 s, so a standby's
    own short write does not count as held)."""
    import sqlite3

    conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0.5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def _all_threads_stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped (state T in /proc)."""
    for status in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            state = status.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        if state not in ("T", "t"):
            return False
    return True


def _freeze_outside_a_write(proc: subprocess.Popen[bytes], url: str) -> None:
    """SIGSTOP the leader, on SQLite at a moment it holds no write transaction.

    A process frozen inside a write holds SQLite's file lock, as any writer would, and no
    other process can write until it is thawed or killed (docs/production.md says so): no
    lease can fix that on a local file.  The chance is the share of a tick spent writing
    (a few per cent here), so this thaws and freezes again until the lock is free.  The
    lock is looked at only once every thread of the leader has stopped: a thread still in
    the kernel when the signal is sent (waiting for the disk, or preempted in the middle
    of taking the lock, on a busy machine) finishes its system call first, and can take
    the lock after a look that found it free (CI saw this twice: the standby then waited
    for the lock until the test killed the leader)."""
    for _ in range(50):
        proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: _all_threads_stopped(proc.pid), 5, step=0.005, what="the leader's threads to stop")
        if not url.startswith("sqlite") or _sqlite_write_lock_is_free(url):
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.03)
    raise AssertionError("the leader held SQLite's write lock at 50 tries out of 50")


def _add_jobs(url: str) -> None:
    """Work only the survivor will do (added, not replacing the farm)."""
    with Store.open(url) as store:
        store.load_farm(pending_farm(2, start=100), replace=False)


class _Proxy:
    """A TCP relay to PostgreSQL that can go silent: it stops passing bytes either way
    without closing anything, as a network that black-holes packets does."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.silent = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.silent.is_set():
                time.sleep(0.05)  # held, never delivered
            try:
                dst.sendall(data)
            except OSError:
                return


@pytest.mark.postgres
def test_a_leader_cut_off_by_a_silent_network_is_replaced_within_two_intervals(
        store_url: str, tmp_path: Path) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite is a local file")
    from sqlalchemy.engine import make_url

    load(store_url, pending_farm(3))
    proxy = _Proxy(make_url(store_url).port or 5432)
    via_proxy = make_url(store_url).set(port=proxy.port).render_as_string(hide_password=False)
    rules = write_rules(tmp_path / "rules")
    config = {"paths": [rules], "interval": 1.0, "engine": "reference", "isolate": False}
    leader, standby = Daemon(DaemonConfig(db_url=via_proxy, **config)), Daemon(DaemonConfig(db_url=store_url, **config))
    stuck: threading.Thread | None = None
    try:
        assert leader.tick().outcome == "ok" and standby.tick().outcome == "standby"
        _add_jobs(store_url)
        proxy.silent.set()
        started = time.monotonic()
        stuck = threading.Thread(target=leader.tick, daemon=True)  # its cycle hangs on the silent network
        stuck.start()
        while standby.tick().outcome != "ok":
            assert time.monotonic() - started < 8, "no takeover"
            time.sleep(0.25)
        took = time.monotonic() - started
        print(f"takeover from a leader cut off: {took:.2f} s")
        assert took < 3 + 1.5, f"took {took:.1f} s: the bound is a lease (2 s) and an interval (1 s)"
        assert not leader.leader.check()  # it cannot prove its lease: it does not act
    finally:
        proxy.silent.clear()
        if stuck is not None:
            stuck.join(30)
        leader.close()
        standby.close()
        proxy.server.close()
    _each_job_blocked_once(store_url)


def test_a_daemon_status_says_whether_a_daemon_leads_now(tmp_path: Path, sqlite_template: Path) -> None:
    shutil.copy(sqlite_template, tmp_path / "farm.db")
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    d = Daemon(DaemonConfig(db_url=url, paths=[write_rules(tmp_path / "rules")], engine="reference", isolate=False))
    status = [sys.executable, "-m", "corral", "daemon-status", "--db", url]
    try:
        assert d.tick().outcome == "ok"
        alive = subprocess.run(status, capture_output=True, text=True, timeout=60).stdout
        assert f"leader: {d.holder} since" in alive and "alive" in alive
    finally:
        d.close()
    gone = subprocess.run(status, capture_output=True, text=True, timeout=60).stdout
    assert "leader: none" in gone and d.holder in gone, gone
    assert os.path.exists(tmp_path / "farm.db")
