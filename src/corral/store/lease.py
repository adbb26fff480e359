"""The daemon's lease in the store: take it, renew it, give it up, read it.

One row (`daemon_lease`, migration 0006).  Every time is the database's own clock
(`_NOW`), so daemons on several hosts compare one clock, not theirs.  Each statement
decides in one UPDATE whether it may act, so two daemons racing for the lease cannot
both win: the database serialises the updates of one row.  The policy (who renews when,
what a leader does when it cannot) is corral.daemon.leader's.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

#: The database's clock, in seconds since the epoch.
_NOW = {
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())::float8",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


#: How long a lease statement waits for the row: a standby must not hang behind a leader
#: frozen inside its commit (PostgreSQL ends that session; see corral.store.engine).
LOCK_TIMEOUT_MS = 2000


class LeaseBusy(Exception):
    """The lease row stayed locked for LOCK_TIMEOUT_MS by another transaction (a daemon
    frozen inside its commit, say): nothing is known of the lease, and the transaction
    that asked is over (PostgreSQL aborted it)."""


#: PostgreSQL's lock_not_available: the wait for a lock ran past lock_timeout.
_LOCK_NOT_AVAILABLE = "55P03"


def _update(conn: Connection, text: str, params: tuple[object, ...]) -> int:
    """Run one UPDATE of the lease row, waiting at most LOCK_TIMEOUT_MS for it on
    PostgreSQL (and only for it: the rest of the transaction waits as it always does);
    the number of rows it changed.  Raises LeaseBusy when the wait runs out (the
    transaction is aborted then: nothing more can run in it, not even the reset)."""
    bounded = conn.dialect.name == "postgresql"
    if bounded:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS:d}")
    try:
        changed = int(conn.exec_driver_sql(_sql(conn, text), params).rowcount)
    except OperationalError as err:
        if getattr(err.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise LeaseBusy(f"the lease row stayed locked for {LOCK_TIMEOUT_MS / 1000:g}s by another "
                            "transaction") from None
        raise
    if bounded:
        conn.exec_driver_sql("SET LOCAL lock_timeout TO DEFAULT")
    return changed


def _sql(conn: Connection, text: str) -> str:
    """`text` with NOW replaced by the dialect's clock and :params by its placeholders."""
    dialect = conn.dialect.name
    return text.replace("NOW", _NOW[dialect]).replace(":p", "?" if dialect == "sqlite" else "%s")


def take(conn: Connection, holder: str, ttl: float) -> int | None:
    """Take the lease for `ttl` seconds if nobody holds it, it expired, or `holder` has it:
    its new token, or None when another daemon holds it."""
    took = _update(conn, ("UPDATE daemon_lease SET holder = :p, token = token + 1, expires = NOW + :p, since = NOW "
                          "WHERE id = 1 AND (holder IS NULL OR expires IS NULL OR expires < NOW OR holder = :p)"),
                   (holder, ttl, holder))
    if took != 1:
        return None
    return int(conn.exec_driver_sql("SELECT token FROM daemon_lease WHERE id = 1").scalar_one())


def renew(conn: Connection, holder: str, token: int, ttl: float) -> bool:
    """Extend the lease by `ttl` from now if `holder` still holds it under `token` and it has
    not expired: False means the lease is lost (another daemon took it, or it ran out)."""
    return _update(conn, "UPDATE daemon_lease SET expires = NOW + :p WHERE id = 1 AND holder = :p AND token = :p "
                         "AND expires >= NOW", (ttl, holder, token)) == 1


def give_up(conn: Connection, holder: str, token: int) -> None:
    """End the lease now (a standby may take it on its next tick).  It ends a millisecond
    ago, not a second (as it did): `corral daemon-status` shows the end as when the
    daemon let it go, and both clocks are finer than that (SQLite's `now` to the
    millisecond, so a take in the same millisecond still finds it over)."""
    _update(conn, "UPDATE daemon_lease SET expires = NOW - 0.001 WHERE id = 1 AND holder = :p AND token = :p",
            (holder, token))


@dataclass(frozen=True)
class LeaseState:
    """The lease as read: who holds it (or held it last), since when and until when, and
    the database's clock at the reading (all seconds since the epoch)."""

    holder: str | None
    token: int
    since: float | None
    expires: float | None
    now: float

    @property
    def alive(self) -> bool:
        """Whether a daemon holds it now."""
        return self.holder is not None and self.expires is not None and self.expires > self.now


def lost_why(state: LeaseState, holder: str, token: int) -> str:
    """Why `holder`'s lease `token` could not be renewed, from the lease as read right
    after, in words for the log: a wrangler who reads "another daemon took it" goes
    looking for a second daemon, which is not there when the lease only ran out (the
    process or its machine was paused past the lease's time)."""
    if state.holder == holder and state.token == token:
        return ("it ran out before this daemon renewed it (the process or its machine stood still, or the "
                "database did not answer, for longer than the lease); no other daemon holds it")
    if state.alive:
        if state.holder == holder:
            return "it ran out and this daemon took it again under a new token"
        return f"another daemon took it: {state.holder}"
    return f"it ran out, and {state.holder or 'another daemon'} held it since"


def read(conn: Connection) -> LeaseState:
    row = conn.exec_driver_sql(_sql(conn, "SELECT holder, token, since, expires, NOW FROM daemon_lease WHERE id = 1")).one()
    return LeaseState(row[0], int(row[1]), row[2], row[3], float(row[4]))
