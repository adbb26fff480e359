"""One active daemon per store: the lock, and a standby taking over from a daemon killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from corral.daemon.leader import AdvisoryLock, FileLock, LeaderError, NoLock, leadership_for
from corral.store import SchemaMissing, Store
from corral.store.engine import normalise_url
from daemon_helpers import corral, kill_group, load, log_has, pending_farm, stop, wait_for, write_rules


def test_the_lock_fits_the_store(tmp_path: Path) -> None:
    assert isinstance(leadership_for(f"sqlite:///{tmp_path / 'a.db'}"), FileLock)
    assert isinstance(leadership_for("sqlite://"), NoLock)
    assert isinstance(leadership_for("postgresql://u:p@localhost/db"), AdvisoryLock)


def test_a_file_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "a.db.lock"), FileLock(tmp_path / "a.db.lock")
    assert first.acquire() and first.check()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_the_lock_file_is_the_daemon_user_s_alone(tmp_path: Path) -> None:
    """flock works on a descriptor opened only for reading: a lock file others can read
    would let any local user keep every daemon waiting as a standby."""
    lock = FileLock(tmp_path / "a.db.lock")
    assert lock.acquire()
    assert stat.S_IMODE((tmp_path / "a.db.lock").stat().st_mode) == 0o600
    lock.release()
    old = tmp_path / "old.db.lock"  # what an older corral made
    old.touch(mode=0o644)
    old.chmod(0o644)
    lock = FileLock(old)
    assert lock.acquire() and stat.S_IMODE(old.stat().st_mode) == 0o600
    lock.release()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_a_lock_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "a.db.lock"
    planted.touch(mode=0o666)
    os.chown(planted, 12345, 12345)
    with pytest.raises(LeaderError, match="belongs to another user"):
        FileLock(planted).acquire()


def test_no_lock_file_is_left_beside_a_store_that_does_not_exist(tmp_path: Path) -> None:
    lock = leadership_for(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(SchemaMissing, match="run `corral db init`"):
        lock.acquire()
    assert list(tmp_path.iterdir()) == []


def test_a_store_corral_makes_is_its_user_s_alone(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'farm.db'}") as store:
        store.init()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["farm.db"] == 0o600 and all(mode == 0o600 for mode in modes.values()), modes


@pytest.mark.postgres
def test_an_advisory_lock_excludes_a_second_session_and_dies_with_its_connection(postgres_url: str) -> None:
    first, second = AdvisoryLock(normalise_url(postgres_url)), AdvisoryLock(normalise_url(postgres_url))
    try:
        assert first.acquire() and first.check()
        assert not second.acquire()
        first._conn.close()  # the session ends as if the daemon died: the server releases the lock
        assert not first.check()
        wait_for(second.acquire, 10, what="the server to end the session (asynchronous) and free the lock")
    finally:
        first.release()
        second.release()


def _takeover(url: str, tmp_path: Path) -> None:
    load(url, pending_farm(3))
    rules = write_rules(tmp_path / "rules")
    args = ("run", "--db", url, "--rules", str(rules), "--only-rules", "--interval", "0.3", "--engine", "reference",
            "--no-isolate")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = corral(*args, log=log_a)
    b = None
    try:
        wait_for(log_has(log_a, "3 applied"), 30, what="the first daemon to lead and apply")
        b = corral(*args, log=log_b)
        wait_for(log_has(log_b, "standby:"), 30, what="the second daemon to stand by")
        assert "leader:" not in log_b.read_text()
        load(url, pending_farm(2, start=100))  # work only the survivor will do
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        wait_for(log_has(log_b, "2 applied"), 10, what="the standby to take over within an interval or so")
        assert "leader:" in log_b.read_text()
        assert stop(b, signal.SIGTERM) == 0
    finally:
        kill_group(a)
        if b is not None:
            kill_group(b)
    with Store.open(url) as store:
        log = store.transitions()
    assert sorted(int(t.entity_id) for t in log) == [1, 2, 3, 100, 101], "each job blocked once, by exactly one daemon"


def test_a_standby_takes_over_from_a_killed_daemon_sqlite(tmp_path: Path, sqlite_template: Path) -> None:
    import shutil

    shutil.copy(sqlite_template, tmp_path / "farm.db")
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    _takeover(url, tmp_path)


@pytest.mark.postgres
def test_a_standby_takes_over_from_a_killed_daemon_postgres(tmp_path: Path, store_url: str) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("the SQLite case has its own test")
    _takeover(store_url, tmp_path)
