"""The ports: everything the policy cycle asks of the world, declared once.

The cycle (`corral.cycle`) is pure planning between a read and a write.  What it reads
and where it writes are these protocols, and the records that cross them are defined
here too, so the core never imports the store, the rule engine or a farm manager:

- `FarmSource`: the farm, whole or as the rows changed since a `Mark`, decoded into
  `corral.farm` entities, each read with the transition log as of the same moment;
- `ActionSink`: applies a plan's `Proposal`s with compare-and-set and reports each as
  applied, audited or refused (`ApplyReport`); says whether corral is paused;
- `TransitionLog`: the audit trail, read back (`LogEntry`, `LastActions`);
- `Sink`: a farm manager (or a command, a webhook) that carries out what the
  `ActionSink` applied: handed outbox rows (`corral.outbox.Entry`) one at a time, it
  answers delivered, refused or failed (`corral.outbox.Outcome`);
- `FarmReader`: a farm manager whose own picture of the farm a sync writes into the
  store before each cycle (Afanasy);
- `Evaluator` and `IncrementalEvaluator`: which entities each policy matches, for a
  whole picture or kept between cycles (`corral.engine.RuleEngine`, the reference
  evaluator in `corral.evaluate`, and `corral.daemon.isolated.IsolatedEvaluator`, the
  engine in a child process, implement both).

`corral.store.Store` implements the first three (`CycleStore`).  A new farm manager,
or a test's fake, is an adapter behind these, not a change to the cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from corral.farm import Farm, FrameRun, Instance, Job, Worker
from corral.outbox import Entry, Outcome
from corral.states import Action, FrameState, Kind

#: An entity's id as the cycle passes it around: a job's number, a frame's "JOB:FRAME", an
#: instance's id, a worker's name.
EntityId = int | str
#: A fact: the fields a policy can test (`corral.facts.vocabulary`), nested for the
#: related entities it shows (`job.*`, `worker.*`, `dependencies.*`).
Fact = dict[str, Any]
#: What a cycle hands an incremental evaluator: per kind, the facts that may have changed
#: (None: no longer a candidate), as a mapping or as (kind, changes) pairs.  Pairs may
#: come from a generator: an engine in another process starts on one kind while the
#: caller builds the next (`corral.daemon.isolated`).
Changes = Mapping[Kind, Mapping[EntityId, Fact | None]] | Iterable[tuple[Kind, Mapping[EntityId, Fact | None]]]


def change_parts(changes: Changes) -> Iterable[tuple[Kind, Mapping[EntityId, Fact | None]]]:
    """`changes` as (kind, changes) pairs, in the order given."""
    return changes.items() if isinstance(changes, Mapping) else changes

# --- what a farm source hands over ----------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """Where a read stood: the deletion generation and the change stamp.  The next
    `FarmSource.read_changes` asks for what was written since."""

    generation: int
    value: int


#: A changed frame row, decoded: a `Frame`'s row fields in the `Frame`'s order (see
#: `corral.farm.SCHEMA`), the state a member and the timestamps aware UTC datetimes.
#: Names (host, instance) are the driver's strings, not interned: the live farm keeps
#: the one it already holds when a row did not change them (`LiveFarm.apply`).  A plain
#: tuple, not a NamedTuple: a million-frame farm's steady cycle reads ten thousand.
FrameChange = tuple[int, int, FrameState, str | None, str | None, int, int, int | None,
                    datetime | None, datetime | None, datetime | None, str | None, str | None, int]


@dataclass
class FarmChanges:
    """Rows changed since a mark, as entities: jobs without children, frames as
    `FrameChange`s without runs, each newly recorded run with its frame's key."""

    jobs: list[Job] = field(default_factory=list)
    frames: list[FrameChange] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    runs: list[tuple[int, int, FrameRun]] = field(default_factory=list)  # (job, frame, run), in recorded order
    depends_on: dict[int, list[int]] = field(default_factory=dict)  # job -> its whole new list


@dataclass
class ActionLog:
    """Applied actions from the transition log, for cooldowns: (policy, kind, entity id,
    when; a wrangler's have no policy), and `after`, the highest row id read, to read on
    from."""

    actions: list[tuple[str | None, str, str, datetime]]
    after: int


#: When each (policy, kind, entity) last acted (see `TransitionLog.last_actions`).
LastActions = dict[tuple[str | None, str, str], datetime]


#: The actor the supervisor's news is logged under (the feed's, the API's and ingest's default).
SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class LogEntry:
    """One row of the transition log: an applied change, or an audit ("would have") row."""

    id: int
    at: datetime
    kind: Kind
    entity_id: str
    job_id: int | None
    action: str
    from_state: str
    to_state: str
    actor: str
    policy: str | None
    reason: str
    cycle_id: str | None
    applied: bool


# --- what an action sink takes and answers -----------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """One action someone wants applied: a policy (`policy` set) or a person (None).

    `automatic` marks a policy's action (it spends the retry limit); `applied=False`
    makes it an audit row: logged as "would have", nothing changes.
    """

    kind: Kind
    ident: str
    action: Action
    params: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    policy: str | None = None
    automatic: bool = False
    applied: bool = True
    #: Queue it for the configured sinks (`corral.outbox`).  False for what a sink itself
    #: reported (a take-back after a refusal): the supervisor already has it so.
    deliver: bool = True

    def __str__(self) -> str:
        return f"{self.action} {self.kind} {self.ident}"

    def author(self, actor: str) -> str:
        """Who did it, as the entity remembers it (a job's `blocked_by`): the policy, for
        a policy's action, else `actor`, who applied it.  The planner plays a policy's
        match under the policy's name too, so what a cycle plans and what it applies
        agree, and a policy can tell what another one did (unblock-when-dependencies-
        complete releases what keep-dependents-blocked held)."""
        return self.policy or actor


@dataclass(frozen=True)
class Done:
    """A proposal that was applied (or, for an audit proposal, would have been)."""

    proposal: Proposal
    entity_id: str
    from_state: str
    to_state: str
    touched: tuple[str, ...]
    job_change: tuple[int, str, str] | None = None


@dataclass(frozen=True)
class Refusal:
    """A proposal that changed nothing, and why.  `stale`: a row moved since it was read."""

    proposal: Proposal
    reason: str
    stale: bool = False


@dataclass
class ApplyReport:
    applied: list[Done] = field(default_factory=list)
    audited: list[Done] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


# --- the protocols -------------------------------------------------------------------------


class FarmSource(Protocol):
    """Where the farm is read from.  Every read is one consistent snapshot."""

    def read_farm(self) -> Farm:
        """The whole farm, each entity with the version it was read at (for compare-and-set)."""
        ...

    def read_farm_marked(self, *, log_since: datetime | None = None) -> tuple[Farm, Mark, ActionLog | None]:
        """The whole farm, the mark to read changes since, and (with `log_since`) the
        actions logged since then, all as of one moment: cooldowns as of the facts."""
        ...

    def read_changes(self, since: Mark, *, log_since: datetime | None = None, log_after: int | None = None
                     ) -> tuple[FarmChanges | None, Mark, ActionLog | None]:
        """The rows written since `since` and the next mark; None for the changes when
        rows were deleted since (read the whole farm again).  With `log_since`, the
        actions logged since then, or only those after log row `log_after` when given."""
        ...


class ActionSink(Protocol):
    """Where decisions go: applied with compare-and-set, each one logged."""

    def paused(self) -> bool:
        """Whether a wrangler paused corral (`corral pause`): cycles run and report, nothing is applied."""
        ...

    def apply_transitions(self, farm: Farm, proposals: Iterable[Proposal], *, now: datetime, actor: str,
                          cycle_id: str | None = None) -> ApplyReport:
        """Apply `proposals` in order, all or nothing: a proposal whose rows moved since
        `farm` was read is refused (and only it), every other one is applied and logged
        with `actor`, its policy, reason and `cycle_id`; audit proposals are logged as
        "would have".  `farm` is updated in place for what was applied."""
        ...


class TransitionLog(Protocol):
    """The audit trail, read back."""

    def last_actions(self, since: datetime, *, include_audit: bool = False) -> LastActions:
        """When each (policy, kind, entity) last acted since `since`: what cooldowns check."""
        ...

    def transitions(self, job: int | None = None, policy: str | None = None, actor: str | None = None,
                    since: datetime | None = None, limit: int | None = None, *,
                    entity: tuple[Kind, str] | None = None) -> list[LogEntry]:
        """The log, newest first; `job` includes the job's frames and instances; `entity`
        (kind, id) is one entity's own rows."""
        ...


class CycleStore(FarmSource, ActionSink, TransitionLog, Protocol):
    """The three ports a cycle talks to, which corral's store implements together."""


class Sink(Protocol):
    """A destination for decisions: a farm manager, a command per action, a webhook.

    Not to be confused with the `ActionSink`, which applies a plan to corral's store:
    a `Sink` carries an applied action on to the supervisor, from the outbox
    (`corral.deliver`).  A sink never raises for a failed send: it answers `Failed`.
    """

    name: str

    def carries(self) -> frozenset[tuple[Kind, Action]]:
        """The (kind, action) pairs it can deliver; other rows are never queued for it."""
        ...

    def deliver(self, entry: Entry) -> Outcome:
        """Send one row; `entry.key` is the same on every attempt (for the receiver to
        recognise a repeat)."""
        ...

    def took(self, entry: Entry) -> bool | None:
        """Whether the supervisor already carries out `entry` (asked after a send was
        interrupted, for an action that is not harmless twice); None: cannot tell."""
        ...

    def close(self) -> None:
        """Release what it holds (connections)."""
        ...


@runtime_checkable
class DigestSink(Sink, Protocol):
    """A sink that can send many notifications as one message (a chat room, mail): when
    several `notify` rows for it are due at once, delivery hands them over together."""

    def digest(self, entries: Sequence[Entry]) -> Outcome:
        """Send `entries` (notify rows, oldest first) as one message; the outcome is each one's."""
        ...


class FarmReader(Protocol):
    """A farm manager corral can read (Afanasy): its own picture of the farm, which a sync
    writes into the store (`corral.store.sync`) before each cycle.  The manager is the
    truth for what it owns; the store stays the `FarmSource` the cycle reads."""

    name: str

    def read(self, now: datetime) -> tuple[Farm, list[str]]:
        """The whole farm as the manager has it, and the problems met reading it (an
        unparseable line skipped...), in words.  Raises `FarmUnreachable` when the
        manager cannot be read at all."""
        ...

    def close(self) -> None: ...


class FarmUnreachable(Exception):
    """The farm manager did not answer, or answered nonsense: nothing was read."""


class Evaluator(Protocol):
    """Which entities each policy matches, for a whole picture of one kind."""

    def evaluate(self, kind: Kind, facts: Iterable[Fact]) -> dict[str, list[EntityId]]:
        """Matching fact ids per policy name, for `facts`: every `kind` fact there is."""
        ...


class IncrementalEvaluator(Evaluator, Protocol):
    """An evaluator that keeps its working memory between cycles: the daemon sends only
    the facts that may have changed, and asks which matches stand.

    A cycle makes two calls: `due_all`, then `settle` (one round trip when the engine
    runs in a child process: the isolated evaluator answers `due_all` itself, and sends
    each kind's changes as the caller's generator yields them).
    `starts` counts the times its memory started empty (a restarted engine child):
    the caller then sends every candidate again."""

    @property
    def starts(self) -> int:
        """How many times the memory started empty (0 before the first start)."""
        ...

    def ready(self) -> None:
        """Start (or restart) if not running, without a round trip to a live one."""
        ...

    def state_filter(self, kind: Kind) -> frozenset[str] | None:
        """The states an entity must be in for some policy to match it (None: any):
        the caller need not build the facts of, say, every complete frame."""
        ...

    def known(self, kind: Kind) -> set[EntityId]:
        """The ids held for `kind` (to drop those that vanished on a whole re-read)."""
        ...

    def due_all(self, kinds: Iterable[Kind], now: float) -> dict[Kind, set[EntityId]]:
        """Per kind, the entities whose time-based conditions may have changed by `now`:
        their facts must be built and sent again."""
        ...

    def settle(self, changes: Changes, now: float | None = None) -> dict[Kind, dict[str, list[EntityId]]]:
        """Take in each kind's changed facts (None: no longer a candidate) and answer
        with the matches that stand, per kind given and policy name."""
        ...

    def close(self) -> None:
        """Release what it holds (a child process)."""
        ...
