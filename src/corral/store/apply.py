"""The compare-and-set applier: proposals in, rows written only where nothing moved.

A policy cycle decides on facts read a moment ago; meanwhile the supervisor keeps
writing (a frame finishes, a host dies).  So every row corral writes is written with
`UPDATE ... WHERE <key> AND version = <version as read>`; if any row of a proposal
moved, the whole proposal is refused, its SAVEPOINT rolled back, the in-memory farm
left as it was, and the next proposal tried.  Anything else that goes wrong raises and
the caller's transaction rolls the whole batch back: a failed cycle never half-applies.

With sinks configured, each applied proposal is also queued in the outbox, in the same
savepoint (`corral.store.outbox.enqueue`): what the store holds as done and what will be
delivered to the farm manager never disagree.

The farm is changed in memory only after its rows were written, so a refused or
failed proposal never has to be undone there; a batch that raises undoes the ones
already applied (`_Undo`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Dialect

from corral.effects import Outcome, apply_action
from corral.farm import Entity, Farm, key_columns, restore_fields, saved_fields
from corral.outbox import Route, routes_from_text
from corral.ports import ApplyReport, Done, Proposal, Refusal
from corral.states import IllegalAction, Kind
from corral.store import outbox
from corral.store.rows import TABLES, WRITABLE, key_of, plain
from corral.store.tables import table


class _Stale(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} changed since it was read")


def _label(kind: Kind, entity: Entity) -> str:
    key = key_of(kind, entity)
    return f"{kind} {':'.join(str(v) for v in key.values())}"


def _simulate(
    farm: Farm, p: Proposal, now: datetime, actor: str
) -> tuple[Outcome, list[tuple[Kind, Entity, int, dict[str, Any]]]]:
    """Run the action on the farm and undo it at once, keeping the rows as they would be."""
    with farm.scratch():
        out = apply_action(farm, p.kind, p.ident, p.action, now=now, params=p.params, automatic=p.automatic,
                           actor=p.author(actor))
        after = [(kind, entity, version, saved_fields(entity)) for kind, entity, version in out.touched]
    return out, after


def apply_transitions(
    conn: Connection,
    farm: Farm,
    proposals: Iterable[Proposal],
    *,
    now: datetime,
    actor: str,
    cycle_id: str | None = None,
) -> ApplyReport:
    """Apply `proposals` in order on `conn` (already in a transaction) and on `farm`.

    The statements go to the driver's cursor, made once per dialect (`_statements`), and
    stay compiled in the driver's cache: built and compiled by SQLAlchemy each time, the
    one or two transitions a steady cycle applies cost 5-8 ms on a 10k-frame farm (where
    a cycle with nothing due takes 3), on the cursor 2-2.5 ms, most of it SQLite's
    commit (docs/benchmarks.md, "Fixed costs out of the steady cycle").  The outbox's rows
    (with sinks configured) are still written through SQLAlchemy."""
    report = ApplyReport()
    undo: list[tuple[Entity, dict[str, Any]]] = []
    sql = _statements(conn.dialect)
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        routes = _routes(cursor, sql)  # the configured sinks: each applied action is queued for them
        proposals = list(proposals)
        _lock_in_order(conn, farm, proposals)
        for p in proposals:
            try:
                out, after = _simulate(farm, p, now, actor)
            except (IllegalAction, KeyError) as err:
                report.refused.append(Refusal(p, str(err.args[0]) if isinstance(err, KeyError) else str(err)))
                continue
            done = Done(p, out.ident, out.from_state, out.to_state, tuple(_label(k, e) for k, e, _, _ in after), out.job_change)
            log = _log_rows(p, done, farm.job_of(p.kind, p.ident), now, actor, cycle_id)
            if not p.applied:
                sql.log(cursor, log)
                report.audited.append(done)
                continue
            cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
            try:
                for kind, ent, version, values in after:
                    sql.compare_and_set(cursor, kind, ent, version, values, now)
                if routes and p.deliver:
                    logged = sql.log(cursor, log)
                    outbox.enqueue(conn, routes, farm, p, done, logged, now=now, actor=actor, cycle_id=cycle_id)
                else:
                    sql.log(cursor, log)
            except _Stale as err:
                cursor.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                cursor.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
                report.refused.append(Refusal(p, f"refused: {err}; the farm moved on, nothing was changed", True))
                continue
            cursor.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            for _kind, ent, version, values in after:
                undo.append((ent, saved_fields(ent)))
                restore_fields(ent, values)
                ent.version = version + 1
            report.applied.append(done)
    except BaseException:
        for ent, saved in reversed(undo):
            restore_fields(ent, saved)
        raise
    finally:
        cursor.close()
    return report


#: Each proposal's writes are one savepoint: a stale row undoes them all, and only them.
_SAVEPOINT = "corral_proposal"

#: The log's columns, in the order `_Statements.log` binds them.
_LOG_COLUMNS = ("at", "kind", "entity_id", "job_id", "action", "from_state", "to_state", "actor", "policy",
                "reason", "cycle_id", "applied")


def _routes(cursor: Any, sql: _Statements) -> tuple[Route, ...]:
    cursor.execute(sql.routes, (outbox.ROUTES_SETTING,))
    row = cursor.fetchone()
    return routes_from_text(row[0] if row else None)


class _Statements:
    """The applier's statements for one dialect, on the driver's own placeholders, and the
    conversions SQLAlchemy's column types would make (a timestamp to SQLite's naive
    UTC text, as `UTCDateTime` stores it)."""

    def __init__(self, dialect: Dialect) -> None:
        self.pg = dialect.name == "postgresql"
        mark = "%s" if self.pg else "?"
        self.cas: dict[Kind, str] = {}
        self.keys = {kind: key_columns(kind) for kind in Kind}
        self.converters: dict[Kind, list[tuple[int, Callable[[Any], Any]]]] = {}
        for kind in Kind:
            t = table(TABLES[kind])
            sets = ", ".join(f"{c} = {mark}" for c in WRITABLE[kind])
            keys = " AND ".join(f"{k} = {mark}" for k in self.keys[kind])
            self.cas[kind] = (f"UPDATE {TABLES[kind]} SET {sets}, updated_at = {mark}, "  # noqa: S608 - fixed names
                              f"version = version + 1 WHERE {keys} AND version = {mark}")
            self.converters[kind] = self._converters(t, (*WRITABLE[kind], "updated_at"), dialect)
        t = table("transitions")
        self.log_converters = self._converters(t, _LOG_COLUMNS, dialect)
        self.log_sql = (f"INSERT INTO transitions ({', '.join(_LOG_COLUMNS)}) "  # noqa: S608 - fixed names
                        f"VALUES ({', '.join(mark for _ in _LOG_COLUMNS)})")
        self.routes = f"SELECT value FROM settings WHERE key = {mark}"  # noqa: S608 - fixed names

    @staticmethod
    def _converters(t: Any, names: Iterable[str], dialect: Dialect) -> list[tuple[int, Callable[[Any], Any]]]:
        """Per column (by position in `names`), what SQLAlchemy does to a value bound to it,
        where it does something: for `UTCDateTime`, its own conversion and then the
        dialect's (SQLite's text)."""
        return [(i, convert) for i, c in enumerate(names) if (convert := t.c[c].type._cached_bind_processor(dialect))]

    def compare_and_set(self, cursor: Any, kind: Kind, entity: Entity, version: int, values: dict[str, Any],
                        now: datetime) -> None:
        """Write the row with `values` only if its version is still `version`, or raise `_Stale`."""
        params = [plain(values[name]) for name in WRITABLE[kind]]
        params.append(now)  # updated_at
        for i, convert in self.converters[kind]:
            params[i] = convert(params[i])
        params.extend(getattr(entity, name) for name in self.keys[kind])
        params.append(version)
        cursor.execute(self.cas[kind], params)
        if cursor.rowcount != 1:
            raise _Stale(_label(kind, entity))

    def log(self, cursor: Any, rows: list[dict[str, Any]]) -> int | None:
        """Append the log rows; the id of the first (which the outbox refers to)."""
        first: int | None = None
        for row in rows:
            params = [row[c] for c in _LOG_COLUMNS]
            for i, convert in self.log_converters:
                params[i] = convert(params[i])
            if first is None and self.pg:
                cursor.execute(self.log_sql + " RETURNING id", params)
                first = int(cursor.fetchone()[0])
                continue
            cursor.execute(self.log_sql, params)
            if first is None:
                first = int(cursor.lastrowid)
        return first


_MADE: dict[tuple[str, str], _Statements] = {}


def _statements(dialect: Dialect) -> _Statements:
    """Made once per dialect and driver (an engine each, in tests: not kept per engine)."""
    key = (dialect.name, dialect.driver)
    made = _MADE.get(key)
    if made is None:
        made = _MADE[key] = _Statements(dialect)
    return made


def _lock_in_order(conn: Connection, farm: Farm, proposals: list[Proposal]) -> None:
    """PostgreSQL: lock the rows the proposals will write before writing any, jobs then
    workers, each in key order, the order the feed's batches lock them
    (`corral.store.feedbatch`).  Written in the proposals' order instead, a cycle and a
    feed batch could each hold a row the other waits for: a deadlock that loses one of
    them.  Every frame or instance action writes its job's row, and no action writes a
    frame or an instance of another job, so holding the jobs' rows first orders the rest."""
    if conn.dialect.name != "postgresql" or not proposals:
        return
    jobs: set[int] = set()
    workers: set[str] = set()
    for p in proposals:
        if not p.applied:  # an audit row writes only the log
            continue
        if p.kind is Kind.WORKER:
            workers.add(p.ident)
            continue
        job = farm.job_of(p.kind, p.ident)
        if job is not None:
            jobs.add(job)
    if jobs:
        conn.exec_driver_sql("SELECT id FROM jobs WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE",
                             {"ids": sorted(jobs)}).fetchall()
    if workers:
        conn.exec_driver_sql("SELECT name FROM workers WHERE name = ANY(%(ids)s) ORDER BY name FOR UPDATE",
                             {"ids": sorted(workers)}).fetchall()


def _log_rows(
    p: Proposal, done: Done, job_id: int | None, now: datetime, actor: str, cycle_id: str | None
) -> list[dict[str, Any]]:
    """The transition row of the proposal, and one for the knock-on change of its job."""
    base = {
        "at": now,
        "action": p.action.value,
        "actor": actor,
        "policy": p.policy,
        "cycle_id": cycle_id,
        "applied": p.applied,
    }
    rows = [
        {
            **base,
            "kind": p.kind.value,
            "entity_id": done.entity_id,
            "job_id": job_id,
            "from_state": done.from_state,
            "to_state": done.to_state,
            "reason": p.reason,
        }
    ]
    if done.job_change is not None:
        job, old, new = done.job_change
        rows.append(
            {
                **base,
                "kind": Kind.JOB.value,
                "entity_id": str(job),
                "job_id": job,
                "from_state": old,
                "to_state": new,
                "reason": f"follows {p.kind} {done.entity_id} ({p.action})",
            }
        )
    return rows
