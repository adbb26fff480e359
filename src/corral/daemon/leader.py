"""One active daemon per store: a lease the leader renews, which ends with whatever stops it.

The leader holds the store's lease (one row, `daemon_lease`: corral.store.lease) for
`ttl` seconds at a time, by the database's clock, and a thread renews it every third of
that.  A standby tries to take it on each of its ticks and wins once it has expired.
Three guarantees follow, however the leader stops (exits, crashes, is killed, is frozen
with SIGSTOP, or loses its network without a word):

* **Takeover within `ttl` plus a standby's interval.**  The daemon's `ttl` is its interval
  (at least 2 s), so a standby acts within two intervals of the leader's last renewal.
  A leader that stops cleanly gives the lease up at once.
* **A leader that cannot prove its lease stops acting.**  `check()` is false once the
  lease has not been renewed for `ttl` by the leader's own clock, whether the renewal
  failed or hangs: the daemon stands by from its next tick.
* **Fencing.**  Every writing transaction of the leader's store renews the lease first,
  in the same transaction (`fence`), and refuses to go on (LeaseLost) if another daemon
  holds it or it ran out.  A leader frozen in the middle of a cycle and thawed after a
  standby took over commits nothing of it.  (On PostgreSQL the thawed session cannot
  hold the lease row either: the server ends a session left idle in a transaction, see
  corral.store.engine.)

The lock this replaces (an advisory lock, a file lock) was released by the system when
the process died, but a frozen process never dies: that is what the lease is for.  The
price is a small write every `ttl / 3` seconds, and a takeover that waits for the lease
to run out after a crash (an interval or two) instead of being immediate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.engine import Connection

from corral.store import lease
from corral.store.engine import first_line
from corral.store.store import NoStoreFile, SchemaMissing, Store

log = logging.getLogger(__name__)

#: The shortest lease: renewing more often than every ~0.7 s would be all the daemon does.
MIN_TTL = 2.0


class LeaderError(Exception):
    """The lease could not even be tried (the database is unreachable)."""


class LeaseLost(Exception):
    """This daemon no longer holds the lease: the transaction that found out writes nothing."""


class Leadership(Protocol):
    held: bool

    def acquire(self) -> bool:
        """Take the lease if free (True when held afterwards); raises LeaderError when unreachable."""
        ...

    def check(self) -> bool:
        """Still holding it?  False (and let go) when it is lost or cannot be proved."""
        ...

    def release(self) -> None: ...


class Lease:
    """The store's lease, held by `holder` (host:pid) for `ttl` seconds at a time."""

    def __init__(self, store: Store, holder: str, ttl: float) -> None:
        self.store, self.holder, self.ttl = store, holder, max(float(ttl), MIN_TTL)
        self.held = False
        self.token: int | None = None
        self._renewed = 0.0  # time.monotonic() of the last renewal that succeeded
        self._lost = threading.Event()
        self._lost_why = ""  # why, set with `_lost` (from the lease as read then)
        self._stop = threading.Event()  # the current lease's heartbeat stops when it is set
        self._lock = threading.Lock()
        # Every write of this store needs the lease from now on: a daemon that does not
        # hold it (a standby, a leader that lost it) writes nothing.
        store.fence = self.fence

    # --- leadership --------------------------------------------------------------------

    def acquire(self) -> bool:
        if self.held and self.check():
            return True
        try:
            token = self.store.take_lease(self.holder, self.ttl)
        except SchemaMissing as err:
            if not isinstance(err, NoStoreFile):
                raise  # the database answered: it needs `corral db init`, which waiting will not bring
            raise LeaderError(str(err)) from err
        except LeaderError:
            raise
        except Exception as err:
            raise LeaderError(f"cannot take the daemon lease: {self.store.masked(first_line(err))}") from err
        if token is None:
            return False
        with self._lock:
            self.held, self.token, self._renewed = True, token, time.monotonic()
            self._lost.clear()
        self._start_heartbeat(token)
        return True

    def check(self) -> bool:
        """Held, not lost, and renewed within `ttl` by this process's clock (a renewal that
        hangs, on a network gone silent, counts as failed once `ttl` has passed)."""
        if not self.held:
            return False
        if self._lost.is_set() or time.monotonic() - self._renewed > self.ttl:
            why = self._lost_why if self._lost.is_set() else f"not renewed for {self.ttl:g}s"
            log.error("lost the daemon lease (%s): standing by; this daemon acts again once it holds the lease", why)
            self._let_go()
            return False
        return True

    def release(self) -> None:
        """Give the lease up (a standby takes it on its next tick) and stop renewing."""
        token = self.token
        held = self.held
        self._let_go()
        if held and token is not None:
            try:
                self.store.give_up_lease(self.holder, token)
            except Exception as err:  # the database is away: the lease runs out by itself
                log.debug("could not give the lease up: %s", err)

    # --- fencing ---------------------------------------------------------------------------

    def fence(self, conn: Connection) -> None:
        """In a writing transaction of the store, first: renew the lease in it, or raise
        LeaseLost (the transaction then writes nothing)."""
        token = self.token
        try:
            renewed = token is not None and lease.renew(conn, self.holder, token, self.ttl)
        except lease.LeaseBusy as err:  # nothing is known: this transaction writes nothing, the lease may stand
            raise LeaseLost(f"this daemon could not prove it holds the store's lease ({err}); nothing was "
                            "written") from None
        if not renewed:
            if token is None:
                raise LeaseLost("this daemon does not hold the store's lease (it stands by); nothing was written")
            why = self._why_lost(token, lambda: lease.read(conn))
            with self._lock:  # (a writer on another thread: only the lease it checked is lost)
                if self.token == token:
                    self._lost_why = why
                    self._lost.set()
            raise LeaseLost(f"this daemon no longer holds the store's lease: {why}; nothing was written")
        self._renewed = time.monotonic()

    # --- the heartbeat ------------------------------------------------------------------

    def _start_heartbeat(self, token: int) -> None:
        """A thread that renews this lease (`token`) until it is let go.  Each lease has its
        own thread and stop: one still hanging in a renewal of an earlier lease (on a
        network gone silent) ends on its own and cannot touch this one."""
        self._stop.set()
        self._stop = stop = threading.Event()
        threading.Thread(target=self._beat, args=(token, stop), name="corral-lease", daemon=True).start()

    def _beat(self, token: int, stop: threading.Event) -> None:
        while not stop.wait(self.ttl / 3):
            try:
                renewed = self.store.renew_lease(self.holder, token, self.ttl)
            except Exception as err:  # the database is away, or the row busy: `check` gives up once ttl has passed
                log.warning("could not renew the daemon lease: %s", self.store.masked(first_line(err)))
                continue
            if stop.is_set():
                return
            why = "" if renewed else self._why_lost(token, self.store.lease_state)  # (read outside the lock)
            with self._lock:
                if stop.is_set() or self.token != token:
                    return  # let go meanwhile: a later lease is not this thread's to judge
                if not renewed:
                    self._lost_why = why
                    self._lost.set()
                    return
                self._renewed = time.monotonic()

    def _why_lost(self, token: int, read: Callable[[], lease.LeaseState]) -> str:
        """`lease.lost_why` from the lease as `read` finds it now (only when a renewal failed)."""
        try:
            return lease.lost_why(read(), self.holder, token)
        except Exception as err:  # the database went away meanwhile: say what is known
            return f"it could not be renewed, and could not be read ({self.store.masked(first_line(err))})"

    def _let_go(self) -> None:
        self._stop.set()
        with self._lock:
            self.held, self.token = False, None
