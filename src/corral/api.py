"""corral's Python API: what a supervisor plugin calls, and what the CLI uses too.

    from corral import Corral

    with Corral.open("postgresql://corral@db/farm") as corral:
        job = corral.submit_job("shot_010_comp", frames="1-100", depends_on=[11], state="blocked")
        corral.frame_started(job.id, 1, host="node01", instance="node01.1")
        corral.frame_failed(job.id, 1, exit_code=139)
        corral.run_cycle()                  # the built-in policy pack, applied

Supervisor news (`submit_job`, `frame_started`, ..., `worker_down`) are facts: they go
through the same writer as `corral ingest` (`corral.store.events`), one transaction
each, and are never refused; pass `event_id` to make a call idempotent (a second call
with the same id is skipped).  Actions (`act`) and cycles (`plan`, `run_cycle`) are
corral's decisions: they go through the compare-and-set applier and the transition log.
docs/api.md documents every call.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from corral.cycle import CycleResult
from corral.cycle import run_cycle as _run_cycle
from corral.farm import Farm, Job, utcnow
from corral.feed import (
    BadEvent,
    BadLine,
    EndState,
    Event,
    FrameCompleted,
    FrameFailed,
    FrameStarted,
    InstanceEnded,
    InstanceStarted,
    JobSpec,
    JobSubmitted,
    SubmitState,
    WorkerDown,
    WorkerUp,
    validate_event,
)
from corral.ingest import DEFAULT_BATCH, DEFAULT_MAX_WAIT, IngestReport, ingest_lines
from corral.plan import Plan
from corral.policy.loader import builtin_dir, load_paths
from corral.policy.model import Policy
from corral.policyset import PolicySet, as_policy_set
from corral.ports import SUPERVISOR
from corral.session import Session
from corral.states import Action, Kind
from corral.store import Done, LogEntry, Proposal, Store, StoreError
from corral.store.events import EventRejected, EventResult

DEFAULT_DB = "sqlite:///corral.db"

__all__ = ["ActionRefused", "Corral", "EventRejected", "EventResult", "PolicyLoadError", "StoreError"]


class ActionRefused(Exception):
    """An action the state model forbids, or one refused because its rows moved; nothing changed."""

    def __init__(self, reason: str, *, stale: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.stale = reason, stale


class PolicyLoadError(Exception):
    """Policy files with errors; `errors` lists each with its file:line:column."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class Corral:
    """One corral store, as a supervisor plugin or a script sees it.

    Cheap to keep open for the life of a process (it holds a connection pool and, once
    used, a `Session`: the compiled policies, and the farm in memory once it has run a
    cycle, so later cycles read only what changed).  `actor` is who supervisor news and actions are logged
    as (`supervisor` by default); `clock` gives the time of events that carry none.
    """

    def __init__(
        self,
        store: Store,
        *,
        actor: str = SUPERVISOR,
        clock: Callable[[], datetime] = utcnow,
        policies: PolicySet | Sequence[Policy] | None = None,
    ) -> None:
        self.store = store
        self.actor = actor
        self.clock = clock
        self._session = None if policies is None else Session(as_policy_set(policies))

    @classmethod
    def open(cls, url: str | None = None, *, init: bool = False, actor: str = SUPERVISOR) -> Corral:
        """Open the store at `url` (default `$CORRAL_DB`, else `sqlite:///corral.db`).

        With `init`, create or upgrade its schema first (what `corral db init` does).
        """
        corral = cls(Store.open(url or os.environ.get("CORRAL_DB") or DEFAULT_DB), actor=actor)
        if init:
            corral.init()
        return corral

    def init(self) -> str:
        """Create or upgrade the schema; the revision it is at."""
        return self.store.init()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self.store.close()

    def __enter__(self) -> Corral:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- supervisor news -------------------------------------------------------------

    def submit_job(
        self,
        name: str,
        *,
        frames: str | Iterable[int],
        priority: int = 50,
        state: SubmitState | str = SubmitState.PENDING,
        depends_on: Iterable[int] = (),
        retry_limit: int = 0,
        job_id: int | None = None,
        at: datetime | None = None,
        event_id: str | None = None,
        owner: str | None = None,
        layers: Mapping[str, str | Iterable[int]] | None = None,
    ) -> Job:
        """Submit a job with pending frames; the stored job is returned (its `id` is assigned if not given).

        `frames` is "1-100", "1-10,20,30-40" or a list of numbers.  `state` is pending
        (may start at once) or blocked (held until unblocked: the built-in pack unblocks
        it once every job in `depends_on` is complete).  `owner`: who submitted it;
        `layers`: the task type of its frames, {"render": "1-100", "comp": [101]}.  Raises EventRejected when a
        dependency does not exist or `job_id` is taken, ValueError on invalid fields.
        """
        spec = JobSpec.model_validate(
            {
                "id": job_id,
                "name": name,
                "priority": priority,
                "state": state,
                "frames": frames if isinstance(frames, str) else list(frames),
                "depends_on": list(depends_on),
                "retry_limit": retry_limit,
                "owner": owner,
                "layers": {k: v if isinstance(v, str) else list(v) for k, v in (layers or {}).items()},
            }
        )
        result = self.record(JobSubmitted(type="job_submitted", id=self._id(event_id), at=at, job=spec), event_id is not None)
        assert result.job_id is not None
        return self.job(result.job_id)

    def frame_started(
        self,
        job: int,
        frame: int,
        *,
        host: str | None = None,
        instance: str | None = None,
        at: datetime | None = None,
        event_id: str | None = None,
    ) -> EventResult:
        """A frame started running on `host` (and `instance`, created if unknown): one more attempt."""
        event = FrameStarted(
            type="frame_started", id=self._id(event_id), at=at, job=job, frame=frame, host=host, instance=instance
        )
        return self.record(event, event_id is not None)

    def frame_completed(
        self,
        job: int,
        frame: int,
        *,
        host: str | None = None,
        instance: str | None = None,
        exit_code: int | None = 0,
        at: datetime | None = None,
        event_id: str | None = None,
    ) -> EventResult:
        """A frame finished well (host and instance default to where it started)."""
        event = FrameCompleted(
            type="frame_completed", id=self._id(event_id), at=at, job=job, frame=frame, host=host, instance=instance,
            exit_code=exit_code,
        )
        return self.record(event, event_id is not None)

    def frame_failed(
        self,
        job: int,
        frame: int,
        *,
        exit_code: int | None,
        host: str | None = None,
        instance: str | None = None,
        at: datetime | None = None,
        event_id: str | None = None,
    ) -> EventResult:
        """A frame failed with `exit_code` (None when unknown); the failure joins the frame's history."""
        event = FrameFailed(
            type="frame_failed", id=self._id(event_id), at=at, job=job, frame=frame, host=host, instance=instance,
            exit_code=exit_code,
        )
        return self.record(event, event_id is not None)

    def instance_started(
        self, instance: str, *, job: int, host: str, at: datetime | None = None, event_id: str | None = None
    ) -> EventResult:
        """A worker process of `job` started on `host`."""
        event = InstanceStarted(type="instance_started", id=self._id(event_id), at=at, instance=instance, job=job, host=host)
        return self.record(event, event_id is not None)

    def instance_ended(
        self,
        instance: str,
        *,
        exit_code: int | None = None,
        state: EndState | str | None = None,
        at: datetime | None = None,
        event_id: str | None = None,
    ) -> EventResult:
        """A worker process ended: complete (exit code 0 or None), failed (other codes), or as `state` says."""
        event = InstanceEnded.model_validate(
            {"type": "instance_ended", "id": self._id(event_id), "at": at, "instance": instance, "exit_code": exit_code,
             "state": state}
        )
        return self.record(event, event_id is not None)

    def worker_up(self, host: str, *, at: datetime | None = None, event_id: str | None = None) -> EventResult:
        """A host is up (a quarantined host stays locked)."""
        return self.record(WorkerUp(type="worker_up", id=self._id(event_id), at=at, host=host), event_id is not None)

    def worker_down(self, host: str, *, at: datetime | None = None, event_id: str | None = None) -> EventResult:
        """A host went down (a quarantined host stays locked)."""
        return self.record(WorkerDown(type="worker_down", id=self._id(event_id), at=at, host=host), event_id is not None)

    def record(self, event: Event | Mapping[str, Any], idempotent: bool = True) -> EventResult:
        """Apply one event (a model or a dict in the `corral ingest` format) in its own transaction.

        With `idempotent` its id is remembered and an id applied before is skipped
        (the result says `skipped`).  Raises EventRejected when it cannot be applied.
        """
        if isinstance(event, Mapping):
            event = validate_event(dict(event))
        [result] = self.store.apply_events([(1, event)], now=self.clock, actor=self.actor, record=idempotent)
        if isinstance(result, BadLine):
            raise EventRejected(result.reason)
        return result

    def record_many(
        self, events: Iterable[Event | Mapping[str, Any]], *, idempotent: bool = True
    ) -> list[EventResult | BadLine]:
        """Apply events in order in one transaction, as `corral ingest` applies a batch.

        One result per event, in order: an `EventResult`, or a `BadLine` (its `line` the
        event's position, from 1) for an event that is invalid or cannot be applied, which
        changes nothing while the others apply.  Tens of thousands of events a second,
        where `record` and the calls above (one transaction each) manage a few hundred:
        a plugin that hears of many events at once should hand them over together.
        """
        items: list[tuple[int, Event]] = []
        invalid: dict[int, BadLine] = {}
        for n, event in enumerate(events, 1):
            if isinstance(event, Mapping):
                try:
                    items.append((n, validate_event(dict(event))))
                except BadEvent as err:
                    ident = event.get("id")
                    invalid[n] = BadLine(n, str(err), ident if isinstance(ident, str) else None)
            else:
                items.append((n, event))
        applied = iter(self.store.apply_events(items, now=self.clock, actor=self.actor, record=idempotent) if items else [])
        return [invalid[n] if n in invalid else next(applied) for n in range(1, len(items) + len(invalid) + 1)]

    def ingest(
        self,
        lines: Iterable[str | None],
        *,
        batch: int = DEFAULT_BATCH,
        on_batch: Callable[[IngestReport], None] | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> IngestReport:
        """Apply JSON lines in the `corral ingest` format (docs/ingest.md), in order, `batch` per transaction.

        Bad lines are reported in the result (with their numbers), not raised, and the
        good lines around them apply; event ids applied before are skipped.  A `None`
        among the lines commits what is pending (a follower's "nothing new yet").
        """
        return ingest_lines(self.store, lines, batch=batch, now=self.clock, actor=self.actor, on_batch=on_batch,
                            max_wait=max_wait)

    @staticmethod
    def _id(event_id: str | None) -> str:
        return event_id if event_id is not None else f"api-{uuid.uuid4().hex}"

    # --- reading -----------------------------------------------------------------------

    def farm(self) -> Farm:
        """The whole farm as stored (jobs with frames, runs and instances; workers)."""
        return self.store.read_farm()

    def job(self, job_id: int) -> Job:
        """One job as stored; KeyError when there is none."""
        job = self.farm().jobs.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        return job

    def history(self, job: int | None = None, *, limit: int | None = None) -> list[LogEntry]:
        """The transition log, newest first (`job` includes its frames and instances)."""
        return self.store.transitions(job=job, limit=limit)

    # --- corral's decisions ------------------------------------------------------------

    def act(
        self,
        kind: Kind | str,
        ident: str | int,
        action: Action | str,
        *,
        reason: str = "",
        params: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> Done:
        """Apply one action (block, unblock, retry...) as a person would, logged with `actor`.

        Raises ActionRefused (nothing changed) when the state model forbids it, the
        entity does not exist, or the supervisor changed its rows since they were read.
        """
        farm = self.store.read_farm()
        proposal = Proposal(Kind(kind), str(ident), Action(action), dict(params or {}), reason=reason)
        report = self.store.apply_transitions(farm, [proposal], now=self.clock(), actor=actor or self.actor, announce=True)
        if report.refused:
            refusal = report.refused[0]
            raise ActionRefused(refusal.reason, stale=refusal.stale)
        return report.applied[0]

    def policies(self) -> PolicySet:
        """The policies in force: those given to the constructor or `use_policies`, else the built-in pack."""
        return self.session().policy_set

    def session(self) -> Session:
        """The session cycles run in (the built-in pack's, unless policies were given)."""
        if self._session is None:
            self.use_policies()
        assert self._session is not None
        return self._session

    def use_policies(
        self,
        paths: Sequence[str | Path] = (),
        *,
        builtin: bool = True,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        engine: str = "durable",
    ) -> PolicySet:
        """Load policy files (and, with `builtin`, the built-in pack); PolicyLoadError on any
        error.  They replace the policies in force; the farm the session holds is kept."""
        loaded = load_paths([*([builtin_dir()] if builtin else []), *paths], overrides)
        if loaded.errors:
            raise PolicyLoadError([str(e) for e in loaded.errors])
        policy_set = PolicySet(loaded.policies, loaded.classes)
        if self._session is None or self._session.engine_name != engine:
            if self._session is not None:
                self._session.close()
            self._session = Session(policy_set, engine=engine)
        else:
            self._session.swap(policy_set)
        return policy_set

    def plan(self, *, now: datetime | None = None) -> Plan:
        """The dry run: what the policies would do now, with reasons; nothing is written."""
        return _run_cycle(self.store, self.session(), commit=False, now=now, clock=self.clock).plan

    def run_cycle(self, *, now: datetime | None = None) -> CycleResult:
        """One cycle: evaluate, plan and apply with compare-and-set, logged with the cycle id."""
        return _run_cycle(self.store, self.session(), commit=True, now=now, clock=self.clock)
