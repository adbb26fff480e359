"""`corral replay`: what a set of policies would have done over the recorded history.

The store keeps the current farm and the transition log (each change's from/to
state, time, policy and cycle id), not past snapshots.  So the farm as it stood
before each recorded cycle is *reconstructed*: start from the current farm and walk
the log backwards, undoing each applied transition's state change on its entity.
Then the policy set is evaluated at each cycle's time on that reconstruction (with
cooldowns from the log rows before it), and the resulting (policy, kind, id, action)
set is compared with what the cycle actually did (its logged rows, audit rows
included).

Honest limits of the reconstruction (also in docs/testing-policies.md):
* the supervisor's writes between cycles are not in the log; what it recorded says
  when they happened, and `_as_of` puts the farm back as it stood at each cycle by
  that record (jobs submitted later left out, later runs dropped, frames that ended
  later put back: running, requeued by corral, or as their last attempt ended);
* the knock-on changes of an action on its children (frames requeued by a job retry
  or an instance block) are not logged, so they are not undone;
* when a state was entered is taken from the log (the earlier transition into it),
  else from the frame runs (when a frame or job last failed or completed), else it
  is unknown and facts such as `time_in_state` are missing for that entity;
* a cycle that changed nothing logged nothing and cannot be replayed;
* each cycle is evaluated on what really happened before it, not on a what-if
  world in which the replayed policies had acted differently earlier.

Nothing is written: the store is only read (`read_farm`, `transitions`).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from corral.actions import action_def
from corral.cycle import plan_farm
from corral.evaluate import make_evaluator
from corral.farm import Farm, Frame, Instance, Job, Worker
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.states import FrameState, Hold, InstanceState, JobState, Kind, WorkerState, hold_for_state

if TYPE_CHECKING:
    from corral.ports import LogEntry
    from corral.store.store import Store

Key = tuple[str, str, str, str]  # policy, kind, id, action
EXAMPLES = 5


@dataclass
class PolicyDiff:
    policy: str
    added: list[tuple[str, Key]] = field(default_factory=list)  # (cycle, key)
    removed: list[tuple[str, Key]] = field(default_factory=list)
    unchanged: int = 0
    in_set: bool = True

    def to_json(self, examples: int = EXAMPLES) -> dict[str, Any]:
        def ex(items: list[tuple[str, Key]]) -> list[dict[str, str]]:
            return [{"cycle": c, "kind": k[1], "id": k[2], "action": k[3]} for c, k in items[:examples]]

        return {"policy": self.policy, "in_replayed_set": self.in_set, "added": len(self.added),
                "removed": len(self.removed), "unchanged": self.unchanged,
                "examples": {"added": ex(self.added), "removed": ex(self.removed)}}


@dataclass
class CycleReplay:
    cycle_id: str
    at: datetime
    actual: set[Key]
    replayed: set[Key]


@dataclass
class ReplayReport:
    cycles: list[CycleReplay]
    policies: dict[str, PolicyDiff]
    unknown_since: int = 0
    manual_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self, examples: int = EXAMPLES) -> dict[str, Any]:
        return {
            "cycles": len(self.cycles),
            "first": self.cycles[0].at.isoformat() if self.cycles else None,
            "last": self.cycles[-1].at.isoformat() if self.cycles else None,
            "policies": [d.to_json(examples) for d in sorted(self.policies.values(), key=lambda d: d.policy)],
            "unknown_state_times": self.unknown_since,
            "manual_rows": self.manual_rows,
            "notes": self.notes,
        }


def _is_knock_on(row: LogEntry) -> bool:
    """The job row written because a frame or instance action changed its job's derived state."""
    return row.kind is Kind.JOB and row.reason.startswith("follows ")


def _entity(farm: Farm, kind: Kind, ident: str) -> Job | Frame | Instance | Worker | None:
    try:
        return farm.entity(kind, ident)
    except KeyError:
        return None


def _since_from_runs(farm: Farm, kind: Kind, ident: str, state: str, before: datetime) -> datetime | None:
    """When a frame or job entered a finished state, from the frame runs (the supervisor's record)."""
    if state not in (FrameState.FAILED, FrameState.COMPLETE, JobState.FAILED, JobState.COMPLETE, JobState.FAILING):
        return None
    if kind is Kind.FRAME:
        frames = [farm.entity(kind, ident)]
    elif kind is Kind.JOB:
        frames = list(farm.jobs[int(ident)].frames.values())
    else:
        return None
    want = FrameState.COMPLETE if state == "complete" else FrameState.FAILED
    times = [r.finished_at for f in frames if isinstance(f, Frame) for r in f.runs
             if r.state == want and r.finished_at is not None and r.finished_at <= before]
    return max(times, default=None)


def _undo(farm: Farm, row: LogEntry, older_into: datetime | None) -> bool:
    """Put the entity back in `row.from_state`; False when the time it entered it is unknown."""
    entity = _entity(farm, row.kind, row.entity_id)
    if entity is None or not row.from_state:
        return True  # a row with no former state (a job's submission) has nothing to undo
    since = older_into or _since_from_runs(farm, row.kind, row.entity_id, row.from_state, row.at)
    entity.state = _STATE_TYPES[row.kind](row.from_state)  # type: ignore[assignment]
    entity.state_since = since
    if _is_knock_on(row):
        return since is not None  # only the job's derived state moved: nothing of its own to take back
    if isinstance(entity, Job):
        entity.hold = hold_for_state(row.from_state)
        if entity.hold is not Hold.BLOCKED:
            entity.blocked_by = None
    action_def(row.action).unplay(row.kind, entity, automatic=row.policy is not None)
    if isinstance(entity, Job | Instance):
        _undo_children(farm, entity, row.at)
    return since is not None


_STATE_TYPES: dict[Kind, type[StrEnum]] = {Kind.JOB: JobState, Kind.FRAME: FrameState, Kind.INSTANCE: InstanceState,
                                           Kind.WORKER: WorkerState}


def _undo_children(farm: Farm, entity: Job | Instance, at: datetime) -> None:
    """Frames an action moved as a side effect (requeued by a retry or a lock-out) are not
    logged, but they carry the action's time as `state_since`: put back those whose last
    finished attempt (a frame run) says what they were."""
    job = entity if isinstance(entity, Job) else farm.jobs[entity.job_id]
    for frame in job.frames.values():
        if frame.state_since != at:
            continue
        runs = [r for r in frame.runs if r.finished_at is not None and r.finished_at <= at]
        if isinstance(entity, Instance):
            runs = [r for r in runs if r.instance == entity.id]
        if not runs:
            continue
        last = runs[-1]
        frame.state, frame.host, frame.instance = last.state, last.host, last.instance
        frame.exit_code, frame.finished_at, frame.state_since = last.exit_code, last.finished_at, last.finished_at


#: When corral put frames back on the queue (a frame's or its job's retry or resubmit),
#: by (job, frame number) and by (job, None): what `_as_of` needs to tell a frame that had
#: failed and was waiting for its retry from one corral had already requeued.
Requeued = dict[tuple[int, int | None], list[datetime]]


def _requeued(oldest_first: Sequence[LogEntry]) -> Requeued:
    out: Requeued = defaultdict(list)
    for r in oldest_first:
        if not r.applied or r.action not in ("retry", "resubmit") or r.job_id is None:
            continue
        if r.kind is Kind.FRAME:
            out[(r.job_id, int(r.entity_id.partition(":")[2]))].append(r.at)
        elif r.kind is Kind.JOB and not _is_knock_on(r):
            out[(r.job_id, None)].append(r.at)
    return out


def _as_of(farm: Farm, at: datetime, requeued: Requeued | None = None) -> Farm:
    """A copy of the reconstruction as the supervisor's own record says it stood at `at`:
    without the jobs submitted after it, the frame runs that finished after it, and each
    frame that ended after it put back to what it was then (running, if it had started;
    else its last attempt's end, or pending), its job's state derived again from them.
    (corral's own changes were undone from its log; these are the supervisor's.)"""
    out = copy.deepcopy(farm)
    for job_id in [j.id for j in out.jobs.values() if j.submitted_at is not None and j.submitted_at > at]:
        del out.jobs[job_id]
    for job in out.jobs.values():
        job.depends_on = [d for d in job.depends_on if d in out.jobs]
        moved = False
        for frame in job.frames.values():
            frame.runs = [r for r in frame.runs if r.finished_at is None or r.finished_at <= at]
            if frame.finished_at is not None and frame.finished_at > at:
                times = (requeued or {}).get((job.id, frame.number), []) + (requeued or {}).get((job.id, None), [])
                _frame_as_of(frame, at, times)
                moved = True
        if moved and job.hold is Hold.NONE:
            state = job.derived_state()
            if state != job.state:
                job.state = state
                job.state_since = None  # (when it entered it is not recorded)
    out.reindex()
    return out


def _frame_as_of(frame: Frame, at: datetime, requeued: Sequence[datetime]) -> None:
    """A frame that ended after `at`, as it stood at `at`: running if it had started, else
    pending if corral had put it back on the queue since its last attempt, else as that
    attempt ended (or pending, never tried)."""
    if frame.started_at is not None and frame.started_at < at:  # (one that started at `at` started after the cycle)
        frame.state, frame.state_since, frame.finished_at = FrameState.RUNNING, frame.started_at, None
        frame.exit_code = None
        return
    last = frame.runs[-1] if frame.runs else None
    if last is not None and any(last.finished_at is not None and last.finished_at <= t < at for t in requeued):
        frame.state, frame.host, frame.instance, frame.exit_code = FrameState.PENDING, None, None, None
        frame.started_at = frame.finished_at = None
        frame.state_since = max(t for t in requeued if t < at)
    elif last is not None:
        frame.state, frame.host, frame.instance = last.state, last.host, last.instance
        frame.exit_code, frame.started_at = last.exit_code, last.started_at
        frame.finished_at = frame.state_since = last.finished_at
    else:
        frame.state, frame.host, frame.instance, frame.exit_code = FrameState.PENDING, None, None, None
        frame.started_at = frame.finished_at = frame.state_since = None


def replay(
    store: Store,
    policies: Sequence[Policy],
    *,
    since: datetime | None = None,
    engine: str = "durable",
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Replay `policies` over the store's recorded cycles (since `since`); reads only.
    `progress(done, total)` is called after each cycle replayed (a long log takes minutes)."""
    farm = store.read_farm()
    rows = store.transitions()  # newest first
    return replay_rows(farm, rows, policies, since=since, engine=engine, progress=progress)


def replay_rows(
    farm: Farm,
    rows: Sequence[LogEntry],
    policies: Sequence[Policy],
    *,
    since: datetime | None = None,
    engine: str = "durable",
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """The pure part of `replay`: the current farm and the log (newest first) in, the report out."""
    farm = copy.deepcopy(farm)
    newest_first = sorted(rows, key=lambda r: r.id, reverse=True)
    oldest_first = list(reversed(newest_first))
    # when each entity entered the state a row moved it from: the older row that moved it there
    entered: dict[int, datetime | None] = {}
    last_into: dict[tuple[str, str], tuple[str, datetime]] = {}
    for r in oldest_first:
        if not r.applied:
            continue
        prior = last_into.get((str(r.kind), r.entity_id))
        entered[r.id] = prior[1] if prior and prior[0] == r.from_state else None
        last_into[(str(r.kind), r.entity_id)] = (r.to_state, r.at)
    first_row: dict[str, int] = {}
    for r in oldest_first:
        if r.cycle_id is not None:
            first_row.setdefault(r.cycle_id, r.id)
    requeued = _requeued(oldest_first)
    report = ReplayReport([], {})
    report.manual_rows = sum(1 for r in rows if r.cycle_id is None and r.applied)
    before: dict[str, Farm] = {}
    for r in newest_first:
        if r.applied and not _undo(farm, r, entered.get(r.id)):
            report.unknown_since += 1
        if r.cycle_id is not None and first_row.get(r.cycle_id) == r.id:
            at = r.at
            if since is None or at >= since:
                before[r.cycle_id] = _as_of(farm, at, requeued)
    by_cycle: dict[str, list[LogEntry]] = defaultdict(list)
    for r in oldest_first:
        if r.cycle_id is not None:
            by_cycle[r.cycle_id].append(r)
    policy_set = PolicySet(policies)
    evaluator = make_evaluator(policy_set.active, engine)  # one for every cycle: each is asked the whole picture
    names = {p.name for p in policies}
    order = sorted(before, key=lambda c: first_row[c])
    for done, cycle_id in enumerate(order, 1):
        if progress is not None:
            progress(done - 1, len(order))
        cycle_rows = by_cycle[cycle_id]
        at = cycle_rows[0].at
        last = _cooldowns(oldest_first, first_row[cycle_id])
        plan, _ = plan_farm(before[cycle_id], policy_set, now=at, evaluator=evaluator, last_actions=last)
        replayed = {(t.policy, str(t.kind), t.ident, str(t.action)) for t in plan.transitions}
        actual = {(r.policy, str(r.kind), r.entity_id, r.action) for r in cycle_rows
                  if r.policy is not None and not _is_knock_on(r)}
        report.cycles.append(CycleReplay(cycle_id, at, actual, replayed))
        for key in replayed | actual:
            diff = report.policies.setdefault(key[0], PolicyDiff(key[0], in_set=key[0] in names))
            if key in replayed and key in actual:
                diff.unchanged += 1
            elif key in replayed:
                diff.added.append((cycle_id, key))
            else:
                diff.removed.append((cycle_id, key))
    if progress is not None:
        progress(len(order), len(order))
    for name in names:
        report.policies.setdefault(name, PolicyDiff(name))
    if report.unknown_since:
        report.notes.append(f"{report.unknown_since} reconstructed state(s) have no known start time: "
                            "time_in_state is missing for those entities at those cycles")
    return report


def _cooldowns(oldest_first: Sequence[LogEntry], before_id: int) -> dict[tuple[str, str, str], datetime]:
    """When each (policy, kind, entity) last acted before a cycle, from applied log rows."""
    out: dict[tuple[str, str, str], datetime] = {}
    for r in oldest_first:
        if r.id >= before_id:
            break
        if r.applied and r.policy is not None and not _is_knock_on(r):
            out[(r.policy, str(r.kind), r.entity_id)] = r.at
    return out


def render(report: ReplayReport, examples: int = EXAMPLES) -> list[str]:
    if not report.cycles:
        return ["no recorded policy cycles to replay (a cycle that changed nothing logs nothing)"]
    first, last = report.cycles[0].at, report.cycles[-1].at
    lines = [f"replayed {len(report.cycles)} cycle(s) from {first.isoformat()} to {last.isoformat()} "
             "(nothing was written)"]
    for d in sorted(report.policies.values(), key=lambda d: d.policy):
        note = "" if d.in_set else " (not in the replayed set: everything it did is 'removed')"
        lines.append(f"{d.policy}: +{len(d.added)} added, -{len(d.removed)} removed, {d.unchanged} unchanged{note}")
        for sign, items in (("+", d.added), ("-", d.removed)):
            for cycle, key in items[:examples]:
                lines.append(f"  {sign} {key[3]} {key[1]} {key[2]}  [cycle {cycle}]")
            if len(items) > examples:
                lines.append(f"  {sign} ... and {len(items) - examples} more")
    lines.extend(f"note: {n}" for n in report.notes)
    if report.manual_rows:
        lines.append(f"note: {report.manual_rows} manual action(s) in the log were undone in the reconstruction "
                     "but are not replayed")
    return lines
