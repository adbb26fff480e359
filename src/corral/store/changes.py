"""Reading only what changed: the daemon's steady-state read.

Migration 0003 has the database stamp a `rev` on every farm row it inserts or
updates (see its docstring for why the stamps are safe on both databases).  A reader
takes a `Mark` with each read; the next read asks for `rev >= mark`.  Rows written by
transactions that were still open at the last read are read again, which is harmless:
applying a row twice gives the same farm.  A change of `generation` (farm rows were
deleted) means the caller must read the whole farm again.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from corral.ports import FarmChanges, Mark
from corral.store.rows import changed_frames, raw_rows, read_instances, read_jobs, read_runs, read_workers
from corral.untrusted import visible


def take_mark(conn: Connection, sqlite_value: int | None = None) -> Mark:
    """The mark for a read made in `conn`'s snapshot (call it before reading rows).

    PostgreSQL: the oldest transaction still running when the snapshot was taken;
    everything older is in it, everything newer is stamped with a higher id.  SQLite:
    the counter value `advance` moved to just before the snapshot was taken.
    """
    if conn.dialect.name == "postgresql":  # one round trip for both
        row = conn.exec_driver_sql(
            "SELECT generation, pg_snapshot_xmin(pg_current_snapshot())::text::bigint FROM revision WHERE id = 1"
        ).one()
        return Mark(int(row[0]), int(row[1]))
    assert sqlite_value is not None, "SQLite reads advance the counter first"
    return Mark(generation(conn), sqlite_value)


def mark_holder(conn: Connection) -> str | None:
    """PostgreSQL: who holds the change mark back, in words; None if no transaction
    this role may see has written anything (or on SQLite, whose mark nothing holds).

    The mark is the oldest transaction with an id still open on the whole server
    (`take_mark`): while it stays open, every read takes in again every row written
    since it began.  No query text: it could hold anything."""
    if conn.dialect.name != "postgresql":
        return None
    row = conn.exec_driver_sql(
        "SELECT pid, datname, usename, application_name, state, xact_start FROM pg_stat_activity "
        "WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY age(backend_xid) DESC LIMIT 1"
    ).first()
    if row is None:
        return None
    pid, database, user, app, state, since = row
    parts = [f"{visible(user)} on database {visible(database)}", visible(app) if app else "", visible(state),
             f"open since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip() if since is not None else ""]
    return f"pid {pid} ({', '.join(p for p in parts if p)})"


TRACKED = ("jobs", "frames", "instances", "workers", "frame_runs", "job_dependencies")


def advance(conn: Connection) -> int:
    """SQLite, in a short write transaction before a read: stamp the rows that have no
    stamp yet with the current counter value, then move the counter on.  Every row
    written before now carries a stamp at most the old value; every row written after,
    at least the new one, which the next read starts from.  Since migration 0004 the
    writer's own insert stamps a row, as an update does, so there is seldom anything
    left to stamp here (a row written with the triggers off): the daemon's cycle no
    longer rewrites every new run (1M frames: 8.6 -> 0.6 ms a cycle)."""
    # On the driver's own cursor: it runs every cycle, and even `exec_driver_sql` cost
    # seven times the statements (0.47 -> 0.07 ms a cycle).  The counter is a bound value,
    # so each statement is the same text every cycle and the driver's statement cache
    # keeps it compiled: with the value written into the text, each cycle compiled all of
    # them again, each UPDATE with the programs of its table's triggers (10k frames: the
    # transaction 0.33 -> 0.14 ms; a cycle with nothing to do, 1.1 -> 0.65 ms).
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        cursor.execute("SELECT value FROM revision WHERE id = 1")
        (value,) = cursor.fetchone() or (None,)
        assert value is not None, "migration 0003 inserts the counter's one row"
        for statement in _STAMP_UNSTAMPED:
            cursor.execute(statement, (value,))
        cursor.execute("UPDATE revision SET value = ? WHERE id = 1", (value + 1,))
    finally:
        cursor.close()
    return int(value) + 1


#: `advance`'s stamping of rows written with the triggers off (fixed table names).
_STAMP_UNSTAMPED = tuple(f"UPDATE {name} SET rev = ? WHERE rev IS NULL" for name in TRACKED)  # noqa: S608


def current_stamp(conn: Connection) -> int:
    """The stamp a row written now would get (for bulk inserts that stamp themselves)."""
    return int(conn.execute(text("SELECT value FROM revision WHERE id = 1")).scalar_one())


def generation(conn: Connection) -> int:
    """The deletion generation, read in `conn`'s snapshot (on the driver's cursor: every cycle)."""
    (value,) = raw_rows(conn, "SELECT generation FROM revision WHERE id = 1")
    return int(value[0])


def read_changes(conn: Connection, since: Mark) -> FarmChanges:
    """Every farm row stamped at or after `since`, or not stamped yet (on the `rev` indexes).

    Read at the driver level, as the whole read is: a steady cycle's read is a handful
    of small queries, and SQLAlchemy's statement handling and result processors would
    cost more than the rows.  Every value formatted into the SQL is an int.
    """
    out = FarmChanges()
    where = f"rev >= {int(since.value)} OR rev IS NULL"  # a row written with the triggers off has no stamp yet
    out.jobs = read_jobs(conn, where)
    out.instances = read_instances(conn, where)
    out.workers = read_workers(conn, where)
    out.frames = changed_frames(conn, where)
    out.runs = list(read_runs(conn, where))
    changed = sorted({int(j) for (j,) in raw_rows(conn, f"SELECT job_id FROM job_dependencies WHERE {where}")})  # noqa: S608
    if changed:
        for job_id in changed:
            out.depends_on[job_id] = []
        ids = ", ".join(str(j) for j in changed)
        query = f"SELECT job_id, depends_on FROM job_dependencies WHERE job_id IN ({ids}) ORDER BY job_id, position"  # noqa: S608
        for job_id, dep in raw_rows(conn, query):
            out.depends_on[job_id].append(dep)
    return out
