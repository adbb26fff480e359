"""The store's tables, declared once with SQLModel.

The Alembic migrations create exactly these tables (a test compares the two), and the
store reads and writes them through SQLAlchemy Core (`table(...)`), not through ORM
objects: a policy cycle reads every frame of the farm, and building ORM instances for
a million rows would cost more than the cycle itself.

Every row the supervisor and corral both write carries a `version`: writers bump it
and compare-and-set on it, so neither silently overwrites the other.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back as an aware UTC datetime.

    SQLite drops tzinfo; PostgreSQL returns the session's zone.  Normalising on both
    sides means the core never compares naive with aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return as_utc(value)


def as_utc(value: datetime | None) -> datetime | None:
    """Naive means UTC (that is how the store writes it); aware is converted."""
    if value is None or value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


STATE = 16  # longest state name is 9 characters; room to grow


class JobRow(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    name: str = Field(sa_type=String(255))
    priority: int = 50
    state: str = Field(sa_type=String(STATE), index=True)
    hold: str = Field(default="none", sa_type=String(STATE))
    blocked_by: str | None = Field(default=None, sa_type=String(255))
    retry_limit: int = 0
    retries: int = 0
    submitted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    state_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_retry_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    owner: str | None = Field(default=None, sa_type=String(255))
    version: int = 0
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rev: int | None = Field(default=None, sa_type=BigInteger, index=True)  # stamped by triggers (migration 0003)


class FrameRow(SQLModel, table=True):
    __tablename__ = "frames"
    __table_args__ = (
        ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        Index("ix_frames_job_state", "job_id", "state"),
    )

    job_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    state: str = Field(sa_type=String(STATE))
    host: str | None = Field(default=None, sa_type=String(255))
    instance: str | None = Field(default=None, sa_type=String(255))
    attempts: int = 0
    retries: int = 0
    exit_code: int | None = None
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    state_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    layer: str | None = Field(default=None, sa_type=String(255))
    avoid_hosts: str | None = Field(default=None, sa_type=Text)
    version: int = 0
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rev: int | None = Field(default=None, sa_type=BigInteger, index=True)  # stamped by triggers (migration 0003)


class FrameRunRow(SQLModel, table=True):
    """A finished attempt; `id` keeps the order in which attempts ended."""

    __tablename__ = "frame_runs"
    __table_args__ = (
        ForeignKeyConstraint(["job_id", "number"], ["frames.job_id", "frames.number"], ondelete="CASCADE"),
        Index("ix_frame_runs_job", "job_id", "number"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger().with_variant(Integer(), "sqlite"))
    job_id: int
    number: int
    host: str | None = Field(default=None, sa_type=String(255))
    instance: str | None = Field(default=None, sa_type=String(255))
    state: str = Field(sa_type=String(STATE))
    exit_code: int | None = None
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rev: int | None = Field(default=None, sa_type=BigInteger, index=True)  # stamped by triggers (migration 0003)


class InstanceRow(SQLModel, table=True):
    __tablename__ = "instances"
    __table_args__ = (
        ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        Index("ix_instances_job", "job_id"),
    )

    id: str = Field(primary_key=True, sa_type=String(255))
    job_id: int
    host: str = Field(sa_type=String(255))
    state: str = Field(sa_type=String(STATE))
    state_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    version: int = 0
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rev: int | None = Field(default=None, sa_type=BigInteger, index=True)  # stamped by triggers (migration 0003)


class WorkerRow(SQLModel, table=True):
    __tablename__ = "workers"

    name: str = Field(primary_key=True, sa_type=String(255))
    state: str = Field(sa_type=String(STATE))
    state_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    version: int = 0
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rev: int | None = Field(default=None, sa_type=BigInteger, index=True)  # stamped by triggers (migration 0003)


class JobDependencyRow(SQLModel, table=True):
    """`job_id` waits on `depends_on`; `position` keeps the order the user wrote."""

    __tablename__ = "job_dependencies"
    __table_args__ = (
        ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        ForeignKeyConstraint(["depends_on"], ["jobs.id"], ondelete="CASCADE"),
    )

    job_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    depends_on: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    position: int = 0
    rev: int | None = Field(default=None, sa_type=BigInteger, index=True)  # stamped by triggers (migration 0003)


class FrameDependencyRow(SQLModel, table=True):
    """Frame `job_id:number` waits on frame `depends_job:depends_number`."""

    __tablename__ = "frame_dependencies"
    __table_args__ = (
        ForeignKeyConstraint(["job_id", "number"], ["frames.job_id", "frames.number"], ondelete="CASCADE"),
        ForeignKeyConstraint(["depends_job", "depends_number"], ["frames.job_id", "frames.number"], ondelete="CASCADE"),
    )

    job_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    depends_job: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    depends_number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    position: int = 0


class TransitionRow(SQLModel, table=True):
    """The append-only log: every applied change and every audit ("would have") row.

    `job_id` is the job the entity belongs to, so `corral history JOB` finds the
    changes of its frames and instances too.
    """

    __tablename__ = "transitions"
    __table_args__ = (
        Index("ix_transitions_entity", "kind", "entity_id"),
        Index("ix_transitions_policy", "policy"),
        Index("ix_transitions_at", "at"),
        Index("ix_transitions_cycle", "cycle_id"),
        Index("ix_transitions_job", "job_id"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger().with_variant(Integer(), "sqlite"))
    at: datetime = Field(sa_type=UTCDateTime)
    kind: str = Field(sa_type=String(STATE))
    entity_id: str = Field(sa_type=String(255))
    job_id: int | None = None
    action: str = Field(sa_type=String(STATE))
    from_state: str = Field(sa_type=String(STATE))
    to_state: str = Field(sa_type=String(STATE))
    actor: str = Field(sa_type=String(255))
    policy: str | None = Field(default=None, sa_type=String(255))
    reason: str = Field(default="", sa_type=Text)
    cycle_id: str | None = Field(default=None, sa_type=String(64))
    applied: bool = True


class SettingRow(SQLModel, table=True):
    """Small key/value settings (pause/resume of the daemon, and the like)."""

    __tablename__ = "settings"

    key: str = Field(primary_key=True, sa_type=String(255))
    value: str = Field(sa_type=Text)
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AppliedEventRow(SQLModel, table=True):
    """A supervisor event already applied (`corral ingest`), so a replayed stream is skipped.

    Keyed by the event's own id (unique per event, chosen by the feeder).  Emptied with
    the farm (`corral load --replace`): the events it records no longer describe it.
    """

    __tablename__ = "applied_events"
    __table_args__ = (Index("ix_applied_events_applied_at", "applied_at"),)

    id: str = Field(primary_key=True, sa_type=String(255))
    type: str = Field(sa_type=String(32))
    job_id: int | None = None
    at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    applied_at: datetime = Field(sa_type=UTCDateTime)


class RevisionRow(SQLModel, table=True):
    """One row: the SQLite change counter, and the generation bumped when farm rows are deleted."""

    __tablename__ = "revision"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    value: int = Field(sa_type=BigInteger)
    generation: int = Field(sa_type=BigInteger)


class DaemonLeaseRow(SQLModel, table=True):
    """One row: which daemon leads (`holder`), its lease's number (`token`, one more at each
    taking) and until when it holds it (`expires`, seconds since the epoch by the
    database's clock, so daemons on several hosts agree).  See corral.daemon.leader."""

    __tablename__ = "daemon_lease"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    holder: str | None = Field(default=None, sa_type=String(255))
    token: int = Field(default=0, sa_type=BigInteger)
    expires: float | None = None
    since: float | None = None


class OutboxRow(SQLModel, table=True):
    """One action to deliver to one sink (a farm manager, a command, a webhook): written in
    the transaction that applied the transition, so nothing corral decides is lost or
    delivered without having been decided (see corral.outbox).

    `key` is the idempotency key the sink is handed (unique: a row is one delivery);
    `target` (JSON) names the entity as the sink needs it (job, frame, host...).
    `status`: pending, sending (a delivery under way: found so after a crash, it is in
    doubt), delivered, refused (the supervisor said no: `answer`), dead (gave up after
    the attempt limit), dropped (by a person: `answer` says who).
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status", "status", "next_at"),
        Index("ix_outbox_entity", "sink", "kind", "entity_id"),
        Index("ix_outbox_key", "key", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger().with_variant(Integer(), "sqlite"))
    key: str = Field(sa_type=String(64))
    sink: str = Field(sa_type=String(255))
    at: datetime = Field(sa_type=UTCDateTime)
    transition_id: int | None = Field(default=None, sa_type=BigInteger)
    kind: str = Field(sa_type=String(STATE))
    entity_id: str = Field(sa_type=String(255))
    job_id: int | None = None
    action: str = Field(sa_type=String(STATE))
    params: str = Field(default="{}", sa_type=Text)
    target: str = Field(default="{}", sa_type=Text)
    actor: str = Field(sa_type=String(255))
    policy: str | None = Field(default=None, sa_type=String(255))
    reason: str = Field(default="", sa_type=Text)
    cycle_id: str | None = Field(default=None, sa_type=String(64))
    status: str = Field(default="pending", sa_type=String(STATE))
    attempts: int = 0
    next_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, sa_type=Text)
    answer: str | None = Field(default=None, sa_type=Text)
    done_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


metadata: MetaData = SQLModel.metadata

#: Tables in the order rows must be inserted (parents first); delete in reverse.
TABLE_ORDER = (
    "jobs",
    "workers",
    "instances",
    "frames",
    "frame_runs",
    "job_dependencies",
    "frame_dependencies",
    "applied_events",
    "transitions",
    "settings",
    "outbox",
)


def table(name: str) -> Table:
    """The Core table by name (typed, unlike SQLModel's `__table__`)."""
    return metadata.tables[name]
