"""One active daemon per store: a lock the daemon holds for its life, and a dead one cannot keep.

* PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) taken on a
  dedicated connection that stays open as long as the daemon runs.  The server
  releases it when that session ends, whether the daemon exited, crashed, was
  killed or lost its network (TCP keepalives bound how long a silent peer counts as
  alive).  Advisory locks are per database, so each store has its own.
* SQLite: an OS lock (`fcntl.lockf`, exclusive, non-blocking) on `<db file>.lock`.
  The kernel drops it the moment the holding process dies, even on SIGKILL, so a
  standby can take over on its next tick; there is no lease to renew, no expiry to
  tune, no clock to trust, and no extra write every cycle competing with the
  supervisor for SQLite's single write lock.  (A lease row in `settings` would need
  all three.)  The one condition, a local filesystem, is one SQLite imposes anyway.
* In-memory SQLite: nothing to share, so no lock.

A daemon that cannot take the lock is a hot standby: it tries again every tick and
acts on the first tick after the holder is gone, i.e. within one interval.
`check()` is called before every cycle; a leader whose lock connection broke stops
acting until it wins the lock again.  Even in the unlikely race where two daemons
act at once, compare-and-set keeps the second from writing over the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import URL

from corral.store.engine import describe, normalise_url
from corral.store.store import SchemaMissing

log = logging.getLogger(__name__)
#: The advisory lock key: the first 8 bytes of sha256("corral-daemon"), as a signed bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"corral-daemon").digest()[:8], "big", signed=True)


class LeaderError(Exception):
    """The lock could not even be tried (the database is unreachable)."""


class Leadership(Protocol):
    held: bool

    def acquire(self) -> bool:
        """Take the lock if free (True when held afterwards); raises LeaderError when unreachable."""
        ...

    def check(self) -> bool:
        """Still holding it?  False (and released) when the lock was lost."""
        ...

    def release(self) -> None: ...


class NoLock:
    """For an in-memory store: the process is the only one that can see it."""

    held = False

    def acquire(self) -> bool:
        self.held = True
        return True

    def check(self) -> bool:
        return self.held

    def release(self) -> None:
        self.held = False


class FileLock:
    """An fcntl lock on `<db>.lock`; the kernel releases it when the process dies.

    The lock file is the daemon's user's alone (mode 0600), and a lock file someone else
    owns is refused: `flock` works on a descriptor opened only for reading, so any user
    who could open it could take the lock and keep every daemon waiting as a standby.
    No lock file is made beside a store that does not exist."""

    def __init__(self, path: Path, store: Path | None = None) -> None:
        self.path, self.store = path, store
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self.held:
            return True
        if self.store is not None and not self.store.exists():
            if not self.store.parent.is_dir():  # a share not mounted yet, say: retried with back-off
                raise LeaderError(f"the store's folder {self.store.parent} does not exist")
            raise SchemaMissing(f"there is no store at {self.store}: run `corral db init` there, or point --db / "
                                "$CORRAL_DB at one")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise LeaderError(f"cannot open the lock file {self.path}: {err}") from err
        try:
            self._own(fd)
        except LeaderError:
            os.close(fd)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self.held = fd, True
        return True

    def _own(self, fd: int) -> None:
        """Refuse a lock file another user owns; make ours owner-only (an older corral
        made it 0644)."""
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise LeaderError(f"the lock file {self.path} belongs to another user (uid {info.st_uid}): anyone who "
                              "can open it can keep this daemon waiting; remove it, and run corral as one user")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, 0o600)

    def check(self) -> bool:
        return self.held

    def release(self) -> None:
        fd, self._fd, self.held = self._fd, None, False
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class AdvisoryLock:
    """`pg_try_advisory_lock` on a connection of its own, held for the daemon's life."""

    def __init__(self, url: URL, key: int = LOCK_KEY, connect_timeout: int = 5) -> None:
        self.url, self.key, self.connect_timeout = url, key, connect_timeout
        self.held = False
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            return psycopg.connect(
                conninfo, autocommit=True, connect_timeout=self.connect_timeout, application_name="corral-daemon",
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            )
        except psycopg.Error as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LeaderError(f"cannot connect to {describe(self.url)} for the daemon lock: {first}") from err

    def acquire(self) -> bool:
        import psycopg

        if self.held and self.check():
            return True
        if self._conn is None:
            self._conn = self._connect()
        try:
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except psycopg.Error as err:
            self._drop()
            raise LeaderError(f"cannot take the daemon lock on {describe(self.url)}: {err}") from err
        self.held = bool(row and row[0])
        return self.held

    def check(self) -> bool:
        """A round trip on the lock's own session: if it broke, the server has released the lock."""
        import psycopg

        if not self.held or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1").fetchone()
        except psycopg.Error as err:
            log.error("lost the daemon lock: its connection to %s broke (%s)", describe(self.url), err)
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        conn, self._conn, self.held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def release(self) -> None:
        if self._conn is not None and self.held:
            with contextlib.suppress(Exception):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        self._drop()


def leadership_for(url: str | URL) -> Leadership:
    """The right lock for the store at `url`."""
    parsed = normalise_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return AdvisoryLock(parsed)
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or str(parsed.database).startswith("file::memory:"):
            return NoLock()
        store = Path(str(parsed.database)).resolve()
        return FileLock(store.with_name(store.name + ".lock"), store)
    raise LeaderError(f"no daemon lock for {backend} stores; use SQLite or PostgreSQL")
