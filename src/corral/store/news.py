"""News: a writer of supervisor facts tells a waiting daemon that the farm moved.

The daemon cycles every `--interval` (30 s by default); a host failing past a policy's
threshold, or the last dependency of a held job completing, would wait up to that long
for corral to act.  With news the daemon runs a cycle soon after a feed's commit
(`corral.daemon.wake`), and the interval is only the upper bound when nothing happens.

Two halves, one per database, behind one small port (`NewsListener`):

* the announcing side, in the writers' transactions (`Store.apply_events`: `corral
  ingest` and the API's news; `Store.load_farm`; `corral sync`), `announce_in` /
  `announce_after`;
* the listening side, in the daemon: `Store.news_listener().wait(timeout)`, True
  when news came.

PostgreSQL: `NOTIFY corral_news` inside the writer's transaction, delivered on commit
(never for a transaction that rolls back; several in one transaction are one); the
daemon LISTENs on a connection of its own.  The channel belongs to the database, so
two stores on one server do not wake each other's daemon.

SQLite: a file beside the database, `<db>-news`, which a writer appends one byte to
after its commit (cut back to nothing past 4 KiB); the daemon stats it every
`FileNews.period` (0.1 s) and takes any change of its size, mtime or inode as news.
A stat poll, rather than a file-event library such as `watchfiles` (inotify) or a
hand-made inotify: one `stat` ten times a second is a cost nobody can measure, it needs
no dependency with a compiled part, it works wherever SQLite works (inotify says
nothing of writes made through a network mount by another machine), and 0.1 s is
small beside the 1 s the daemon is asked to react in.  The size moves on every append,
so a file system with coarse timestamps loses no news.  The file is made with the
database's permission bits, so whoever may read the store may watch it; writing it is
best effort (a read-only folder costs the wake-up, never the write of the facts).

News is only a hint: a daemon that misses some (a dropped connection, a file it may
not read) still cycles at its interval, and the change stamps, not the news, say what
a cycle reads (docs/architecture.md, invariant 1).  The daemon's own writes (its
cycle, its sync, its settings) announce nothing, so it never wakes itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

CHANNEL = "corral_news"
#: The SQLite news file is cut back to nothing once it grows past this many bytes.
FILE_CAP = 4096


class NewsListener(Protocol):
    """The daemon's side: wait for news (the port; one adapter per database)."""

    def wait(self, timeout: float) -> bool:
        """True as soon as news came (since the previous call), False after `timeout`
        seconds without.  Raises OSError or a driver error when it cannot listen (the
        caller tries again later)."""
        ...

    def close(self) -> None: ...


def news_path(db: Path) -> Path:
    """The SQLite store's news file: beside it, named as SQLite names its -wal and -shm."""
    return db.with_name(db.name + "-news")


def announce_in(conn: Connection) -> None:
    """PostgreSQL: news, delivered to the listeners when `conn`'s transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"NOTIFY {CHANNEL}")


def announce_after(db: Path | None) -> None:
    """SQLite: news, after the writer's commit (append a byte to the news file).  Never
    raises: a fact written stays written whether or not a daemon hears of it at once."""
    if db is None:
        return
    path = news_path(db)
    try:
        try:
            mode = os.stat(db).st_mode & 0o666
        except OSError:
            mode = 0o600
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
        try:
            if os.fstat(fd).st_size >= FILE_CAP:
                os.ftruncate(fd, 0)
            os.write(fd, b".")
        finally:
            os.close(fd)
    except OSError as err:
        log.debug("could not announce news in %s: %s", path, err)


class FileNews:
    """SQLite's listener: a stat of the news file every `period` seconds (see the module)."""

    period = 0.1

    def __init__(self, db: Path) -> None:
        self.path = news_path(db)
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            stamp = self._stamp()
            if stamp != self._seen:
                self._seen = stamp
                return stamp is not None  # the file going away is no news
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.period, left))

    def close(self) -> None:
        pass


class PgNews:
    """PostgreSQL's listener: LISTEN on a connection of its own, taken out of the store's pool.

    The connection is made on first use and made again after it broke; `wait` then
    reports news, since some may have been missed meanwhile (not the first time: the
    daemon's first cycle runs at its start anyway)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Any = None
        self._lock = threading.Lock()
        self._listened = False

    def _connect(self) -> Any:
        fairy = self.engine.raw_connection()
        fairy.detach()  # ours for good: the pool neither hands it out nor resets it
        raw: Any = fairy.dbapi_connection
        raw.autocommit = True
        raw.execute(f"LISTEN {CHANNEL}")
        return raw

    def wait(self, timeout: float) -> bool:
        with self._lock:
            again = self._conn is None or self._conn.closed
            if again:
                self._conn = None
                self._conn = self._connect()
                again, self._listened = self._listened, True
            conn = self._conn
        if again:
            return True
        try:
            # Wait on the socket, then collect what arrived: notifies(timeout=) alone
            # stops at the first one, and a feed sends ten a second.
            ready, _, _ = select.select([conn.fileno()], [], [], timeout)
            if not ready:
                return False
            got = False
            for _ in conn.notifies(timeout=0, stop_after=1000):
                got = True
            return got
        except Exception:
            with self._lock, contextlib.suppress(Exception):
                conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
