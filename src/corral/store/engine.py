"""Engines for any SQLAlchemy URL, with the settings corral's writers rely on.

* `postgresql://` means psycopg 3 here (the only PostgreSQL driver corral ships).
* SQLite runs in WAL mode (readers never block the writer) with a busy timeout, so a
  second writer (the daemon while a wrangler runs `corral job block`) waits its turn
  instead of failing at once.  pysqlite's own transaction handling is switched off
  and we issue BEGIN ourselves: that is what makes SAVEPOINTs work, and it lets a
  writing transaction take the write lock up front (BEGIN IMMEDIATE) so it never
  fails half-way with "database is locked" when upgrading from a read.
* A writer waiting for SQLite's write lock asks for it every millisecond
  (`begin_immediate`), not with SQLite's busy handler, whose waits grow to 100 ms a
  try: beside a feed that commits batch after batch, a few milliseconds apart, those
  tries kept missing the moments the lock was free, and the daemon's writes (its
  change stamp, its cycle, the courier's outbox rows) waited seconds for it.
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import StaticPool

#: How long PostgreSQL lets one of corral's sessions sit idle inside a transaction.
IDLE_IN_TRANSACTION_MS = 60_000
#: Execution option that marks a connection as about to write (BEGIN IMMEDIATE on SQLite).
WRITE = "corral_write"
#: Seconds between two tries of a SQLite writer waiting for the write lock (`begin_immediate`).
LOCK_POLL = 0.001

_POSTGRES_NAMES = {"postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"}


#: user:password@ in any URL (postgresql://ann:s3cret@db/...).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?=@)")
#: password=... in libpq key=value strings and URL query strings (?password=..., &sslpassword=...).
_KV_PASSWORD = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<secret>'[^']*'|\"[^\"]*\"|[^\s&;'\"]+)", re.IGNORECASE)
MASK = "***"


def first_line(err: BaseException) -> str:
    """An error's first line, or its type's name when it has no message: a driver's
    message goes on with the statement and its parameters, which a log line must not."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def mask_secrets(text: str) -> str:
    """Every password a connection string can hold, as ***: in a URL's user part, in its
    query (`?password=`), and in libpq's key=value form.  Every message and log line that
    may quote a database's address goes through it."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _KV_PASSWORD.sub(lambda m: m["head"] + MASK, text)


class BadUrl(ValueError):
    """A database address corral cannot use; the message (no password in it) says why."""


def normalise_url(url: str | URL) -> URL:
    """Parse `url` and point PostgreSQL URLs at the psycopg 3 driver; BadUrl, with the
    address masked, when it is no URL (a libpq key=value string, a port that is no number)."""
    if isinstance(url, str):
        if "://" not in url and "=" in url:
            raise BadUrl(f"'{mask_secrets(url)}' is a libpq connection string; corral takes a URL: "
                         "postgresql://USER@HOST:PORT/DATABASE (with the password in $PGPASSWORD or ~/.pgpass), "
                         "or sqlite:///PATH")
        try:
            parsed = make_url(url)
        except ValueError as err:  # SQLAlchemy's ArgumentError is one; a port like ':abc' raises int()'s
            reason = "its port is not a number" if "int()" in str(err) else "it cannot be parsed"
            raise BadUrl(f"'{mask_secrets(url)}' is not a database URL corral can use: {reason}; give "
                         "sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE with --db or $CORRAL_DB") from None
    else:
        parsed = url
    if parsed.drivername in _POSTGRES_NAMES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def describe(url: URL) -> str:
    """The URL for messages: never a password, in the user part or the query."""
    return mask_secrets(url.render_as_string(hide_password=True))


def make_engine(url: str | URL, *, busy_timeout: float = 30.0) -> Engine:
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(parsed, pool_pre_ping=True)
        _postgres_events(engine)
        return engine
    memory = parsed.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"connect_args": {"timeout": busy_timeout, "check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool  # one connection, or every checkout sees an empty database
    engine = create_engine(parsed, **kwargs)
    _sqlite_events(engine, wal=not memory, busy_ms=int(busy_timeout * 1000))
    return engine


def _postgres_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _utc_session(dbapi_connection: Any, _record: Any) -> None:
        # Timestamps come back in the session's time zone.  Set to UTC, psycopg hands
        # them over with `datetime.UTC` itself, which the readers take as they are
        # (`rows.timestamp_parser`); in a server's default zone ('Etc/UTC' is a
        # ZoneInfo) each one is converted: 0.3 us, three times a frame row, a million
        # rows in a daemon's first read.  What is stored does not change (timestamptz
        # is an instant), nor does any query corral makes.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET TIME ZONE 'UTC'")
            # corral never leaves a transaction idle (a --follow batch waits a second at
            # most): one that is, is a process frozen or cut off in the middle of it, whose
            # row locks (the daemon's lease among them) the server then frees.
            cursor.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS:d}")
        finally:
            cursor.close()
        dbapi_connection.commit()


def _sqlite_events(engine: Engine, *, wal: bool, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # autocommit at the driver: we say BEGIN ourselves
        cursor = dbapi_conn.cursor()
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
        # Every commit waits for the disk (SQLite's default, said here because one
        # transaction, the change stamp, turns it off: see Store._stamping).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms:d}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if wal:
            # Copy the write-ahead log back into the database every 4,000 pages (16 MB),
            # not SQLite's 1,000: the pages a feed rewrites batch after batch (the change
            # counter, the tails of the runs, of the event record and of the `rev`
            # indexes) are copied back a quarter as often.  5% of the feed's time with a
            # million frames stored (docs/benchmarks.md, "The feed"); readers pay for a
            # longer log with a slightly longer lookup, a checkpoint takes longer, rarer.
            cursor.execute("PRAGMA wal_autocheckpoint=4000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(WRITE, False):
            begin_immediate(conn, busy_ms / 1000)
        else:
            conn.exec_driver_sql("BEGIN")


def begin_immediate(conn: Connection, timeout: float) -> None:
    """BEGIN IMMEDIATE on SQLite: the write lock, asked for every `LOCK_POLL` seconds
    for `timeout` seconds at most, then "database is locked" (as the busy timeout says).

    SQLite has no queue for its write lock: a writer that finds it taken calls the
    busy handler, which sleeps and tries again, and the built-in one sleeps 1, 2, 5,
    10 ... then 100 ms a try.  A feed holding the lock for ~0.1 s a batch, with a few
    milliseconds between its batches, then starves a waiter for seconds: its tries,
    100 ms apart, fall in step with the batches and keep finding the lock taken
    (measured: the daemon's change stamp and cycle waited up to 2.3 s; docs/benchmarks.md,
    "Reaction time").  Python's sqlite3 cannot install a handler of its own, so this
    turns the handler off for the BEGIN (busy_timeout 0: a try fails at once) and tries
    every millisecond: a waiter takes the lock within a millisecond or two of its
    release, before the writer that released it has its next batch ready, and writers
    take turns.  A try costs microseconds; the handler is back for the statements of
    the transaction (they never wait for the write lock, which it holds)."""
    raw: Any = conn.connection.dbapi_connection
    cursor = raw.cursor()
    deadline = time.monotonic() + timeout
    try:
        cursor.execute("PRAGMA busy_timeout=0")
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as err:
                busy = (getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_BUSY  # extended codes too
                if not busy or time.monotonic() >= deadline:
                    break
            time.sleep(LOCK_POLL)
        # the last try through SQLAlchemy, so its error is the one every caller expects
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000):d}")
        cursor.close()
