"""The store: the farm, the transition log and settings in any SQLAlchemy database.

The imperative shell around the pure core.  It reads the farm as plain dataclasses,
writes snapshots whole, applies proposals with compare-and-set (`corral.store.apply`)
and answers the questions the daemon and the CLI ask of the log.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, insert, inspect, select, update
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from corral.farm import Farm, utcnow
from corral.outbox import Entry, Route, Status, routes_text
from corral.ports import SUPERVISOR, ActionLog, ApplyReport, FarmChanges, LastActions, LogEntry, Mark, Proposal
from corral.states import Kind
from corral.store import changes, lease, migrate, news, outbox, refusal
from corral.store.apply import apply_transitions
from corral.store.engine import MASK, WRITE, BadUrl, describe, first_line, make_engine, mask_secrets, normalise_url
from corral.store.rows import farm_rows, raw_rows, read_farm, timestamp_param, timestamp_parser
from corral.store.sync import SyncReport, sync_farm
from corral.store.tables import TABLE_ORDER, as_utc, table

if TYPE_CHECKING:
    from corral.feed import BadLine, Event
    from corral.store.events import EventResult


class StoreError(Exception):
    """Something a user can fix (the message says what); never a bare SQL traceback."""


class SchemaMissing(StoreError):
    """The database has no corral schema, or an older one."""


class NoStoreFile(SchemaMissing):
    """The SQLite file is not there (yet: a daemon waits for a mount as for a server)."""


#: The setting `corral pause` sets to "1" and `corral resume` to "0".
PAUSE_SETTING = "paused"

#: Farm tables a snapshot load with `replace` empties (the log, settings and outbox are kept).
FARM_TABLES = tuple(t for t in TABLE_ORDER if t not in ("transitions", "settings", "outbox"))


class Store:
    """One database.  Open with `Store.open(url)`; cheap to keep open for a process."""

    def __init__(self, engine: Engine, url: URL) -> None:
        self.engine, self.url = engine, url
        self._checked = False
        #: Run first in every writing transaction (the daemon's lease check: a leader that
        #: lost its lease writes nothing, corral.daemon.leader.Lease.fence); None: no check.
        self.fence: Callable[[Connection], None] | None = None

    @classmethod
    def open(cls, url: str, *, busy_timeout: float = 30.0) -> Store:
        """Connects lazily: opening never fails on a missing or empty database."""
        try:
            parsed = normalise_url(url)
            return cls(make_engine(parsed, busy_timeout=busy_timeout), parsed)
        except BadUrl as err:
            raise StoreError(str(err)) from None
        except (ArgumentError, NoSuchModuleError) as err:
            raise StoreError(
                f"'{mask_secrets(url)}' is not a database URL corral can use ({mask_secrets(str(err))}); "
                "give sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE with --db or $CORRAL_DB"
            ) from None

    def explain(self, err: BaseException) -> str:
        """One line for a database error, with what to do, and no password in it."""
        if isinstance(err, OperationalError):
            orig = err.orig if err.orig is not None else err
            return (f"cannot open {describe(self.url)}: {self.masked(first_line(orig))}. Check that the server is "
                    "running and the host, port and database name are right (create the database with createdb), "
                    "or that the SQLite file's folder exists")
        return f"database error on {describe(self.url)}: {type(err).__name__}: {self.masked(first_line(err))}"

    def masked(self, text: str) -> str:
        """`text` (a driver's message, say) with this store's password, and any other a
        connection string in it holds, as ***."""
        password = self.url.password
        if password:
            text = text.replace(str(password), MASK)
        return mask_secrets(text)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema -----------------------------------------------------------------

    def init(self) -> str:
        """Bring the database to the newest schema; harmless when it is there already.

        A SQLite store this makes is its user's alone (mode 0600, and so are its
        write-ahead log and shared-memory files, which SQLite creates alike): it holds
        the farm and the audit trail.  Give a group read access by hand if wranglers
        other than the daemon's user run `corral status` on it."""
        path = self._sqlite_path()
        created = path is not None and not path.exists()
        with self._write() as conn:
            migrate.upgrade(conn)
            self._checked = True
            revision = migrate.current_revision(conn) or ""
        if created and path is not None:
            for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                if file.exists():
                    file.chmod(0o600)
        return revision

    def _sqlite_path(self) -> Path | None:
        """The SQLite file of this store (None: PostgreSQL, or SQLite in memory)."""
        name = self.url.database if self.url.get_backend_name() == "sqlite" else None
        return Path(name) if name and name != ":memory:" and not name.startswith("file:") else None

    def news_listener(self) -> news.NewsListener | None:
        """How a daemon hears this store's news (`corral.store.news`): LISTEN on
        PostgreSQL, the news file beside a SQLite file; None for SQLite in memory, which
        no other process can write."""
        if self.url.get_backend_name() == "postgresql":
            return news.PgNews(self.engine)
        path = self._sqlite_path()
        return news.FileNews(path) if path is not None else None

    def check(self) -> None:
        """Refuse to work on a database `corral db init` has not prepared (once per Store)."""
        if self._checked:
            return
        path = self.url.database if self.url.get_backend_name() == "sqlite" else None
        if path and path != ":memory:" and not Path(path).exists():
            # Connecting would create an empty file: say what to do instead.
            raise NoStoreFile(f"there is no store at {path}: run `corral db init` there, or point --db / $CORRAL_DB at one")
        try:
            with self.engine.connect() as conn:
                current = migrate.current_revision(conn)
        except OperationalError as err:
            raise StoreError(self.explain(err)) from None
        head = migrate.head_revision()
        if current is None:
            raise SchemaMissing(f"{describe(self.url)} has no corral tables yet: run `corral db init` first")
        if current != head:
            raise SchemaMissing(
                f"{describe(self.url)} is at schema revision {current}, this corral needs {head}: "
                "run `corral db init` to upgrade it"
            )
        self._checked = True

    # --- connections --------------------------------------------------------------

    @contextmanager
    def _write(self, *, fenced: bool = True) -> Iterator[Connection]:
        """A transaction that will write: it takes SQLite's write lock up front, and first
        runs the `fence` (unless `fenced` is False: the lease's own statements)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{WRITE: True})
            with conn.begin():
                if fenced and self.fence is not None:
                    self.fence(conn)
                yield conn

    @contextmanager
    def _stamping(self) -> Iterator[Connection]:
        """SQLite: `_write` for the change stamp (`changes.advance`), committed without
        waiting for the disk (synchronous=NORMAL for this one transaction).

        The stamp needs no durability: it only marks where the daemon's in-memory farm
        stands, and the only failures that can lose a commit not yet on disk (the
        machine or its OS going down) take the daemon down too, which reads the whole
        farm again when it starts.  Any later commit that waits for the disk (every
        other write does) makes the stamp durable with it: the write-ahead log is synced
        in order.  Saves an fsync every cycle: 0.3 of a 10k-frame steady cycle's 8 ms."""
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            _pragma(raw, "synchronous=NORMAL")
            try:
                conn = conn.execution_options(**{WRITE: True})
                with conn.begin():
                    yield conn
            finally:
                try:
                    _pragma(raw, "synchronous=FULL")
                except Exception:  # never leave a pooled connection that skips the fsync
                    conn.invalidate()
                    raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A consistent snapshot: one transaction, repeatable read on PostgreSQL."""
        self.check()
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    # --- the farm -----------------------------------------------------------------

    def read_farm(self) -> Farm:
        """The whole farm with frame runs and dependencies, versions as read."""
        with self._read() as conn:
            return read_farm(conn)

    def read_farm_marked(self, *, log_since: datetime | None = None) -> tuple[Farm, Mark, ActionLog | None]:
        """The whole farm and the mark to read changes since (see `corral.store.changes`);
        with `log_since`, the log of actions since then (`read_log`), in the same snapshot."""
        with self._marked() as (conn, mark):
            log = None if log_since is None else read_log(conn, log_since)
            return read_farm(conn), mark, log

    def read_changes(
        self, since: Mark, *, log_since: datetime | None = None, log_after: int | None = None
    ) -> tuple[FarmChanges | None, Mark, ActionLog | None]:
        """Rows changed since `since`, and the next mark; None when farm rows were deleted
        since (the caller must read the whole farm again).  With `log_since`, also the log
        of actions (`read_log`: only the rows appended after `log_after`, when given), in
        the same snapshot: a steady cycle's reads in one transaction, cooldowns as of the
        facts."""
        with self._marked() as (conn, mark):
            if mark.generation != since.generation:
                return None, mark, None
            log = None if log_since is None else read_log(conn, log_since, after=log_after)
            return changes.read_changes(conn, since), mark, log

    def mark_holder(self) -> str | None:
        """Who holds PostgreSQL's change mark back (`corral.store.changes.mark_holder`)."""
        if self.engine.dialect.name != "postgresql":
            return None
        with self.engine.connect() as conn:
            return changes.mark_holder(conn)

    @contextmanager
    def _marked(self) -> Iterator[tuple[Connection, Mark]]:
        """A read snapshot and its mark.  Never holds SQLite's write lock while reading
        (a million-frame read must not stall the supervisor's writes): the counter is
        moved on in a short write transaction first."""
        value = None
        if self.engine.dialect.name != "postgresql":
            self.check()
            with self._stamping() as conn:
                value = changes.advance(conn)
        with self._read() as conn:
            yield conn, changes.take_mark(conn, value)

    def load_farm(self, farm: Farm, *, replace: bool) -> None:
        """Write a whole farm (a snapshot) in one transaction.

        `replace` empties the farm tables first (the log and settings stay).  Without
        it the jobs are added, and a job or instance id already stored is an error
        (nothing is written); workers already stored keep their state.
        """
        self.check()
        now = utcnow()
        with self._write() as conn:
            if replace:
                for name in reversed(FARM_TABLES):
                    conn.execute(delete(table(name)))
            else:
                self._refuse_clashes(conn, farm)
                known = set(conn.execute(select(table("workers").c.name)).scalars())
                farm = Farm(jobs=farm.jobs, workers={n: w for n, w in farm.workers.items() if n not in known})
            stamp = changes.current_stamp(conn)
            for name, rows in farm_rows(farm, now):
                if rows:
                    if name in changes.TRACKED:
                        for row in rows:
                            row["rev"] = stamp  # stamped here, not later by a reader (see corral.store.changes)
                    conn.execute(insert(table(name)), rows)
            news.announce_in(conn)
        news.announce_after(self._sqlite_path())

    @staticmethod
    def _refuse_clashes(conn: Connection, farm: Farm) -> None:
        jobs, inst = table("jobs"), table("instances")
        clashes = [f"job {i}" for i in conn.execute(select(jobs.c.id).where(jobs.c.id.in_(list(farm.jobs)))).scalars()]
        ids = [i.id for j in farm.jobs.values() for i in j.instances.values()]
        clashes += [f"instance {i}" for i in conn.execute(select(inst.c.id).where(inst.c.id.in_(ids))).scalars()]
        if clashes:
            raise StoreError(f"already in the store: {', '.join(sorted(clashes))}; load with --replace to start over")

    def apply_transitions(
        self,
        farm: Farm,
        proposals: Iterable[Proposal],
        *,
        now: datetime,
        actor: str,
        cycle_id: str | None = None,
        announce: bool = False,
    ) -> ApplyReport:
        """Apply proposals with compare-and-set, in one transaction (see `corral.store.apply`).

        `farm` must be the one read from this store: its versions are what the rows
        are compared with, and it is updated in place for what was applied.
        `announce`: tell a waiting daemon (`corral.store.news`) when something was
        applied: a person's action does (`corral block`, `apply`, `undo`, the API's
        `act`), the daemon's own cycle does not.
        """
        self.check()
        with self._write() as conn:
            report = apply_transitions(conn, farm, proposals, now=now, actor=actor, cycle_id=cycle_id)
            if announce and report.applied:
                news.announce_in(conn)
        if announce and report.applied:
            news.announce_after(self._sqlite_path())
        return report

    def apply_events(
        self,
        events: Sequence[tuple[int, Event]],
        *,
        now: Callable[[], datetime] | None = None,
        actor: str = SUPERVISOR,
        record: bool = True,
    ) -> list[EventResult | BadLine]:
        """Write supervisor events in order, in one transaction, a batch at a time.

        See `corral.store.feedbatch.apply_batch` (the same rows as the events written
        one at a time, `feedbatch.apply_one_by_one`): a rejected event comes
        back as a BadLine and changes nothing; with `record`, an event id applied before
        is skipped.
        """
        from corral.store.feedbatch import apply_batch

        self.check()
        with self._write() as conn:
            results = apply_batch(conn, events, now=now, actor=actor, record=record)
            news.announce_in(conn)
        news.announce_after(self._sqlite_path())
        return results

    # --- the log ------------------------------------------------------------------

    def transitions(
        self,
        job: int | None = None,
        policy: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        *,
        entity: tuple[Kind, str] | None = None,
    ) -> list[LogEntry]:
        """The log, newest first; `job` includes the job's frames and instances; `entity`
        (kind, id) is one entity's own rows."""
        t = table("transitions")
        query = select(t).order_by(t.c.id.desc())
        if entity is not None:
            query = query.where(t.c.kind == str(entity[0]), t.c.entity_id == entity[1])
        if job is not None:
            query = query.where(t.c.job_id == job)
        if policy is not None:
            query = query.where(t.c.policy == policy)
        if actor is not None:
            query = query.where(t.c.actor == actor)
        if since is not None:
            query = query.where(t.c.at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [_log_entry(r._mapping) for r in conn.execute(query)]

    def last_actions(self, since: datetime, *, include_audit: bool = False) -> LastActions:
        """When each (policy, kind, entity) last acted since `since`: for per-entity cooldowns.

        Audit rows count only with `include_audit`, so a policy switched from audit to
        enforce is not held back by what it merely would have done.
        """
        with self._read() as conn:
            return _last_actions(conn, since, include_audit=include_audit)

    # --- the daemon's lease (corral.store.lease; the policy is corral.daemon.leader) ---

    def take_lease(self, holder: str, ttl: float) -> int | None:
        """The lease for `ttl` seconds, if free, expired or ours: its token (else None,
        also when its row is locked by a transaction that does not end: another daemon's
        commit, to be tried again next tick)."""
        self.check()
        try:
            with self._write(fenced=False) as conn:
                return lease.take(conn, holder, ttl)
        except lease.LeaseBusy:
            return None

    def renew_lease(self, holder: str, token: int, ttl: float) -> bool:
        """Whether the lease was renewed (False: it is lost).  Raises LeaseBusy when its row
        stayed locked: nothing is known, try again (corral.daemon.leader)."""
        with self._write(fenced=False) as conn:
            return lease.renew(conn, holder, token, ttl)

    def give_up_lease(self, holder: str, token: int) -> None:
        with self._write(fenced=False) as conn:
            lease.give_up(conn, holder, token)

    def lease_state(self) -> lease.LeaseState:
        with self._read() as conn:
            return lease.read(conn)

    # --- settings -----------------------------------------------------------------

    def paused(self) -> bool:
        """Whether `corral pause` is in force (the `ActionSink` port's question)."""
        return self.get_setting(PAUSE_SETTING) == "1"

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        """On the driver's cursor: a committing cycle asks whether corral is paused every
        time, and a SQLAlchemy statement with its transaction cost more than the rest of
        a quiet cycle's apply step (10k frames: 0.6 ms)."""
        self.check()
        with self.engine.connect() as conn:
            sql = f"SELECT value FROM settings WHERE key = {_bind(conn.dialect.name)}"  # noqa: S608 - a bound value
            rows = list(raw_rows(conn, sql, (key,)))
        return default if not rows or rows[0][0] is None else str(rows[0][0])

    def set_setting(self, key: str, value: str) -> None:
        """Upsert written portably (update, then insert if nothing was there)."""
        s = table("settings")
        self.check()
        with self._write() as conn:
            now = utcnow()
            if conn.execute(update(s).where(s.c.key == key).values(value=value, updated_at=now)).rowcount == 0:
                conn.execute(insert(s).values(key=key, value=value, updated_at=now))

    def sync_farm(self, truth: Farm, *, now: datetime, actor: str, unchanged: Collection[int] = (),
                  since: datetime | None = None, announce: bool = False) -> SyncReport:
        """Make the store hold a farm manager's picture, in one transaction
        (`corral.store.sync`: changed rows only; decisions on their way and corral's own
        columns kept; a person's undo of corral's block recorded; the jobs `unchanged`
        since the sync at `since` skipped).  `announce`: tell a waiting daemon
        (`corral.store.news`) when the sync changed something; `corral sync` does, the
        daemon's own sync before its cycle does not."""
        self.check()
        with self._write() as conn:
            report = sync_farm(conn, truth, now=now, actor=actor, unchanged=unchanged, since=since)
            if announce and report.changed:
                news.announce_in(conn)
        if announce and report.changed:
            news.announce_after(self._sqlite_path())
        return report

    # --- the outbox (corral.outbox, corral.store.outbox) -------------------------------

    def set_routes(self, routes: Sequence[Route]) -> None:
        """Record the configured sinks: from now on every applied transition is queued for
        those that carry it, whoever applies it."""
        self.set_setting(outbox.ROUTES_SETTING, routes_text(routes))

    def routes(self) -> tuple[Route, ...]:
        self.check()
        with self._read() as conn:
            return outbox.routes(conn)

    def outbox_rows(self, statuses: Iterable[Status] | None = None, limit: int | None = None) -> list[Entry]:
        """Outbox rows, newest first (`statuses`: only those)."""
        self.check()
        with self._read() as conn:
            return outbox.listing(conn, statuses, limit)

    def outbox_entry(self, entry_id: int) -> Entry | None:
        self.check()
        with self._read() as conn:
            return outbox.get(conn, entry_id)

    def outbox_unsettled(self) -> list[Entry]:
        """The rows not yet settled, oldest first: what a delivery pass works on."""
        self.check()
        with self._read() as conn:
            return outbox.unsettled(conn)

    def outbox_mark(self, entry_id: int, status: Status, *, expect: Iterable[Status] | None = None,
                    **values: Any) -> bool:
        """Move a row to `status`, only from `expect` (False: it was not there any more)."""
        self.check()
        with self._write() as conn:
            return outbox.mark(conn, entry_id, status, expect=expect, **values)

    def outbox_refused(self, entry: Entry, answer: str, now: datetime) -> str:
        """A refusal, recorded and taken back in one transaction (`corral.store.refusal.refuse`)."""
        self.check()
        with self._write() as conn:
            return refusal.refuse(conn, entry, answer, now)

    def outbox_backlog(self, *, unsettled_only: bool = False) -> outbox.Backlog:
        self.check()
        with self._read() as conn:
            return outbox.backlog(conn, unsettled_only=unsettled_only)

    # --- tests and tools ----------------------------------------------------------

    def has_table(self, name: str) -> bool:
        with self.engine.connect() as conn:
            return inspect(conn).has_table(name)


def _log_entry(r: Any) -> LogEntry:
    at = as_utc(r["at"])
    assert at is not None
    return LogEntry(
        id=r["id"],
        at=at,
        kind=Kind(r["kind"]),
        entity_id=r["entity_id"],
        job_id=r["job_id"],
        action=r["action"],
        from_state=r["from_state"],
        to_state=r["to_state"],
        actor=r["actor"],
        policy=r["policy"],
        reason=r["reason"],
        cycle_id=r["cycle_id"],
        applied=bool(r["applied"]),
    )


def _pragma(dbapi_conn: Any, setting: str) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA {setting}")
    finally:
        cursor.close()


def _last_actions(conn: Connection, since: datetime, *, include_audit: bool = False) -> LastActions:
    """Read at the driver level, as the steady cycle's other reads are: it runs every
    cycle, and SQLAlchemy's statement handling cost twenty times the query (0.16 ms
    against 8 us on an empty log)."""
    dialect = conn.dialect.name
    applied = "" if include_audit else " AND applied = TRUE"
    sql = (  # corral's own SQL; the value is bound
        f"SELECT policy, kind, entity_id, max(at) FROM transitions WHERE at >= {_bind(dialect)}{applied} "  # noqa: S608
        "GROUP BY policy, kind, entity_id"
    )
    parse = timestamp_parser(dialect, naive_sqlite=True)
    out: LastActions = {}
    for policy, kind, entity_id, last in conn.exec_driver_sql(sql, (timestamp_param(dialect, since),)):
        if last is not None:
            out[(policy, kind, entity_id)] = parse(last)
    return out


def read_log(conn: Connection, since: datetime, *, after: int | None = None) -> ActionLog:
    """Every policy's latest applied action on each entity since `since`; with `after`,
    the actions logged after that row id instead.

    The daemon reads the window once and then only what was appended each cycle: read
    whole every cycle, the window cost what reading the farm's changes did (after the
    built-in pack's first cycle on a 10k-frame farm, 120 rows: about a millisecond a
    cycle, against 1.3 to 1.7 ms for the changes), and it grows with whatever corral did
    in the last hour.  The leader daemon writes policies' actions one transaction after
    another, so their row ids grow in the order the rows become visible.  A program
    applying plans beside it (`Corral.run_cycle` of the Python API) can commit a lower id
    after a higher one (PostgreSQL hands ids out before commit): such a row is missed
    until the next whole read of the farm, which reads the window again (at most
    `corral.session.FULL_READ_EVERY` cycles later; in the daemon, as many intervals)."""
    if after is None:
        # The highest id first: a row appended meanwhile is then read (again) next time.
        top = conn.exec_driver_sql("SELECT max(id) FROM transitions").scalar()
        whole = _last_actions(conn, since)
        return ActionLog([(p, k, i, at) for (p, k, i), at in whole.items()], int(top or 0))
    # On the id alone (the primary key): what was appended is recent by nature.
    dialect = conn.dialect.name
    sql = ("SELECT policy, kind, entity_id, at, id FROM transitions "  # noqa: S608 - a bound value only
           f"WHERE id > {_bind(dialect)} AND applied = TRUE AND policy IS NOT NULL")
    parse = timestamp_parser(dialect, naive_sqlite=True)
    actions, highest = [], after
    for policy, kind, entity_id, at, row_id in conn.exec_driver_sql(sql, (after,)):
        actions.append((policy, kind, entity_id, parse(at)))
        highest = max(highest, int(row_id))
    return ActionLog(actions, highest)


def _bind(dialect: str) -> str:
    return "?" if dialect == "sqlite" else "%s"
