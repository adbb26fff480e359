"""The farm as plain data: jobs, their frames and instances, workers.

This is the functional core's picture of the world.  The store reads it from SQL,
a snapshot file parses into it, the fact builder reads it and the planner simulates
actions on it.  Nothing here does I/O.

Every entity carries the `version` it was read at: the store refuses to write a row
whose version moved since (compare-and-set), so a supervisor's write is never
overwritten by a decision taken on stale facts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from corral.states import (
    FrameState,
    Hold,
    InstanceState,
    JobState,
    Kind,
    WorkerState,
    derive_job_state,
)

#: The largest id, frame number or count a farm may hold: the store's integer columns.
MAX_INT = 2**31 - 1
#: A job may not have more frames than this: a typo like 1-99999999 would otherwise fill
#: the memory and then the disk.
MAX_FRAMES = 1_000_000
#: The longest name (a job's, a host's, an instance id): the store's text columns.
MAX_NAME = 255


def utcnow() -> datetime:
    """The one clock the shell reads; the core is always handed `now`."""
    return datetime.now(UTC)


@dataclass(slots=True)  # slots: a million frames and their runs are most of a farm's memory
class FrameRun:
    """One finished attempt at a frame: where it ran and how it ended.

    Workers' and instances' failure counts come from these, not from the frame's
    current state, because a retry puts a failed frame back to pending but the host
    that failed it still failed it.
    """

    host: str | None
    instance: str | None
    state: FrameState
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: The order it was recorded in (the store's row id), which breaks ties between runs
    #: that finished at the same instant; None for runs written in a snapshot.
    id: int | None = field(default=None, compare=False)


@dataclass(slots=True)
class Frame:
    """A unit of work of a job.  Its row fields come first, in `SCHEMA` order."""

    job_id: int
    number: int
    state: FrameState = FrameState.PENDING
    host: str | None = None
    instance: str | None = None
    attempts: int = 0
    retries: int = 0
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    state_since: datetime | None = None
    #: Its task type: the job's layer (OpenCue), block (Afanasy) or task type (Flamenco).
    layer: str | None = None
    #: Hosts kept away from this frame (a retry that avoids the hosts that failed it), as
    #: sorted names separated by spaces (`avoided`); None: none.
    avoid_hosts: str | None = None
    version: int = 0
    depends_on: list[tuple[int, int]] = field(default_factory=list)
    runs: list[FrameRun] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.job_id}:{self.number}"


@dataclass(slots=True)
class Instance:
    """A job's worker process on one host.  Its fields are its row's, in `SCHEMA` order."""

    id: str
    job_id: int
    host: str
    state: InstanceState = InstanceState.PENDING
    state_since: datetime | None = None
    version: int = 0


@dataclass
class Job:
    """A job, with its frames and instances.  Its row fields come first, in `SCHEMA` order."""

    id: int
    name: str
    priority: int = 50
    state: JobState = JobState.PENDING
    hold: Hold = Hold.NONE
    blocked_by: str | None = None
    retry_limit: int = 0
    retries: int = 0
    submitted_at: datetime | None = None
    state_since: datetime | None = None
    last_retry_at: datetime | None = None
    #: Who submitted it (Afanasy's sick-host rule counts users; a notice goes to them).
    owner: str | None = None
    version: int = 0
    depends_on: list[int] = field(default_factory=list)
    frames: dict[int, Frame] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)

    @property
    def retried(self) -> bool:
        """Retried automatically at least once (the seed's condition for `retrying`).
        (`any` over the counts, not a generator: the planner asks after every action.)"""
        return self.retries > 0 or any(map(_RETRIES, self.frames.values()))

    def derived_state(self) -> JobState:
        return derive_job_state(
            self.hold,
            map(_STATE, self.frames.values()),
            map(_STATE, self.instances.values()),
            self.retried,
        )


_STATE = attrgetter("state")
_RETRIES = attrgetter("retries")


@dataclass(slots=True)
class Worker:
    """A host.  Its fields are its row's, in `SCHEMA` order."""

    name: str
    state: WorkerState = WorkerState.UP
    state_since: datetime | None = None
    version: int = 0


@dataclass(frozen=True)
class Column:
    """One stored field of an entity: the dataclass attribute and the table column of
    that name, and the kind of value it holds.

    `type`: int, str, time (an aware UTC datetime) or the enum it holds (state, hold).
    `key`: part of the row's primary key.  `writable`: corral may change it (keys and
    `version` it never writes itself: the version moves with every write).  `shown`: a
    job field its frames' and instances' facts show (`job.*`), so a change of it must
    reach their facts too."""

    name: str
    type: str
    key: bool = False
    writable: bool = True
    shown: bool = False

    def __post_init__(self) -> None:
        if self.key or self.name == "version":
            object.__setattr__(self, "writable", False)


_VERSION = Column("version", "int")

#: Every stored field of each kind, in the order of the entity's dataclass fields and of
#: the store's reads (`corral.store.rows`): the one list the columns read and written, the
#: rows' unpacking, the key, the live farm's copies and the snapshot format are made
#: from or checked against (tests/test_schema.py).
SCHEMA: dict[Kind, tuple[Column, ...]] = {
    Kind.JOB: (
        Column("id", "int", key=True),
        Column("name", "str", shown=True),
        Column("priority", "int", shown=True),
        Column("state", "state", shown=True),
        Column("hold", "hold", shown=True),
        Column("blocked_by", "str", shown=True),
        Column("retry_limit", "int", shown=True),
        Column("retries", "int", shown=True),
        Column("submitted_at", "time"),
        Column("state_since", "time"),
        Column("last_retry_at", "time"),
        Column("owner", "str", shown=True),
        _VERSION,
    ),
    Kind.FRAME: (
        Column("job_id", "int", key=True),
        Column("number", "int", key=True),
        Column("state", "state"),
        Column("host", "str"),
        Column("instance", "str"),
        Column("attempts", "int"),
        Column("retries", "int"),
        Column("exit_code", "int"),
        Column("started_at", "time"),
        Column("finished_at", "time"),
        Column("state_since", "time"),
        Column("layer", "str"),
        Column("avoid_hosts", "str"),
        _VERSION,
    ),
    Kind.INSTANCE: (
        Column("id", "str", key=True),
        Column("job_id", "int"),
        Column("host", "str"),
        Column("state", "state"),
        Column("state_since", "time"),
        _VERSION,
    ),
    Kind.WORKER: (
        Column("name", "str", key=True),
        Column("state", "state"),
        Column("state_since", "time"),
        _VERSION,
    ),
}


def avoided(frame: Frame) -> frozenset[str]:
    """The hosts kept away from a frame."""
    return frozenset(frame.avoid_hosts.split()) if frame.avoid_hosts else frozenset()


def avoid_text(hosts: Iterable[str]) -> str | None:
    """Host names as `Frame.avoid_hosts` stores them (None for none)."""
    names = sorted({h for h in hosts if h})
    return " ".join(names) if names else None


def columns(kind: Kind) -> tuple[str, ...]:
    """Every stored field of `kind`, in order."""
    return tuple(c.name for c in SCHEMA[kind])


def key_columns(kind: Kind) -> tuple[str, ...]:
    return tuple(c.name for c in SCHEMA[kind] if c.key)


def writable_columns(kind: Kind) -> tuple[str, ...]:
    """The columns corral may change (all but the key and the version)."""
    return tuple(c.name for c in SCHEMA[kind] if c.writable)


Entity = Job | Frame | Instance | Worker


@dataclass
class Farm:
    """A whole farm.  Instances are owned by their job and indexed here by id."""

    jobs: dict[int, Job] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    _instances: dict[str, Instance] | None = field(default=None, repr=False, compare=False)
    _journal: list[tuple[Any, tuple[Any, ...]]] | None = field(default=None, repr=False, compare=False)

    @property
    def instances(self) -> dict[str, Instance]:
        if self._instances is None:
            self._instances = {i.id: i for j in self.jobs.values() for i in j.instances.values()}
        return self._instances

    def reindex(self) -> None:
        self._instances = None

    def entity(self, kind: Kind, ident: str) -> Entity:
        """Look an entity up by the id a plan or a wrangler uses; KeyError names it."""
        try:
            if kind is Kind.JOB:
                return self.jobs[int(ident)]
            if kind is Kind.FRAME:
                job, _, number = str(ident).partition(":")
                return self.jobs[int(job)].frames[int(number)]
            if kind is Kind.INSTANCE:
                return self.instances[str(ident)]
            return self.workers[str(ident)]
        except (KeyError, ValueError):
            hint = " (a frame is named JOB:FRAME, e.g. 12:1001)" if kind is Kind.FRAME else ""
            raise KeyError(f"no {kind} '{ident}' in the farm{hint}") from None

    def job_of(self, kind: Kind, ident: Any) -> int | None:
        """The job an entity belongs to (a job is its own), by the id plans and the CLI
        use: the job whose entities an action on it changes.  None for a worker, and for
        an instance no longer in the farm."""
        if kind is Kind.JOB:
            return int(ident)
        if kind is Kind.FRAME:
            return int(str(ident).partition(":")[0])
        if kind is Kind.INSTANCE:
            inst = self.instances.get(str(ident))
            return None if inst is None else inst.job_id
        return None

    def lookup(self, kind: Kind) -> Callable[[Any], Entity | None]:
        """A lookup by the ids the live farm marks dirty (an int job id, a JOB:FRAME key,
        an instance id, a worker name), None for one that is gone: the cycle looks up
        every entity it re-evaluates, thousands a cycle, without `entity`'s conversions."""
        if kind is Kind.JOB:
            return self.jobs.get
        if kind is Kind.INSTANCE:
            return self.instances.get
        if kind is Kind.WORKER:
            return self.workers.get
        jobs = self.jobs

        def frame(key: Any) -> Frame | None:
            job_id, _, number = str(key).partition(":")
            job = jobs.get(int(job_id))
            return None if job is None else job.frames.get(int(number))

        return frame

    def touch(self, obj: Any) -> None:
        """Remember `obj` as it is now, so `scratch()` can put it back."""
        if self._journal is not None:
            self._journal.append((obj, _own_fields(type(obj))[1](obj)))

    def scratch_mark(self) -> int:
        """Where the scratch journal stands now (see `scratch_since`)."""
        return len(self._journal) if self._journal is not None else 0

    def scratch_since(self, mark: int) -> list[tuple[Any, dict[str, Any]]]:
        """Every entity touched in the scratch since `mark`, with its row fields as they
        were when touched: what the planner's re-checks count again (`corral.recheck`)."""
        if self._journal is None:
            return []
        return [(obj, dict(zip(_own_fields(type(obj))[0], saved, strict=True))) for obj, saved in self._journal[mark:]]

    @contextmanager
    def scratch(self) -> Iterator[Farm]:
        """Simulate changes and undo them on exit.

        The planner plays a whole plan forward on the real farm (so a later proposal
        sees the effect of an earlier one) without copying a million frames.
        """
        outer, self._journal = self._journal, []
        try:
            yield self
        finally:
            journal, self._journal = self._journal, outer
            for obj, saved in reversed(journal):
                for name, value in zip(_own_fields(type(obj))[0], saved, strict=True):
                    setattr(obj, name, value)


def saved_fields(obj: Any) -> dict[str, Any]:
    """An entity's row fields, to put back with `restore_fields`.

    Not its children (frames, instances) nor its lists (a frame's runs, the jobs or
    frames it depends on): those are history and structure, which no action changes.
    The planner saves every entity a played action touches (an instance block that
    requeues its failed frames touches hundreds), so this is on the hot path: the field
    names are worked out once per class (and the planner's journal keeps a tuple of them).
    """
    names, get = _own_fields(type(obj))
    return dict(zip(names, get(obj), strict=True))


def _own_fields(cls: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """A class's row fields (see `saved_fields`) and a getter of their values, as a tuple."""
    return _OWN_FIELDS[cls]


_OWN_FIELDS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {
    cls: (columns(kind), attrgetter(*columns(kind)))
    for cls, kind in ((Job, Kind.JOB), (Frame, Kind.FRAME), (Instance, Kind.INSTANCE), (Worker, Kind.WORKER))
}


def restore_fields(obj: Any, saved: dict[str, Any]) -> None:
    for name, value in saved.items():
        setattr(obj, name, value)


def entity_id(kind: Kind, entity: Entity) -> str:
    """The id used in plans, the CLI and the transition log."""
    if isinstance(entity, Frame):
        return entity.key
    if isinstance(entity, Worker):
        return entity.name
    return str(entity.id)
