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
  or an instance block, instances a job's block sent back to pending) are not logged;
  they are put back from the frame runs, the start a frame keeps, and the action's table;
* an attempt an action cut short leaves no frame run, so a frame cut short more than
  once is a guess: every difference on such a frame, its job or its instances is marked
  approximate, with why;
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
from corral.farm import Farm, Frame, FrameRun, Instance, Job, Worker
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.ports import SUPERVISOR
from corral.states import RULES, Action, FrameState, Hold, InstanceState, JobState, Kind, WorkerState, hold_for_state

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

    #: The differences the reconstruction may explain, by (cycle, key): why.
    approximate: dict[tuple[str, Key], str] = field(default_factory=dict)

    def to_json(self, examples: int = EXAMPLES) -> dict[str, Any]:
        def ex(items: list[tuple[str, Key]]) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for c, k in items[:examples]:
                row: dict[str, Any] = {"cycle": c, "kind": k[1], "id": k[2], "action": k[3]}
                if (c, k) in self.approximate:
                    row["approximate"] = self.approximate[(c, k)]
                out.append(row)
            return out

        return {"policy": self.policy, "in_replayed_set": self.in_set, "added": len(self.added),
                "removed": len(self.removed), "unchanged": self.unchanged,
                "approximate": len(self.approximate),
                "examples": {"added": ex(self.added), "removed": ex(self.removed)}}


@dataclass
class CycleReplay:
    cycle_id: str
    at: datetime
    actual: set[Key]
    replayed: set[Key]
    #: Frames whose state at this cycle is a guess: an attempt an action cut short left no
    #: record of where it ran or when, and it may have been running then ("job:frame").
    approximate: set[str] = field(default_factory=set)

    def approximates(self, key: Key) -> str | None:
        """Why a difference on this key may be the reconstruction's, not the policy's."""
        kind, ident = key[1], key[2]
        if kind == "frame":
            job, mine = ident.partition(":")[0], [ident] if ident in self.approximate else []
        elif kind in ("job", "instance"):  # a job's or instance's facts count its frames
            job = ident.partition(".")[0]
            mine = sorted(f for f in self.approximate if f.partition(":")[0] == job)
        else:
            return None
        if not mine:
            return None
        what = f"frame {mine[0]}" if len(mine) == 1 else f"{len(mine)} frames of job {job}"
        return (f"approximate: {what} had an attempt cut short by an action, which the store does not record, "
                "so whether it was running at this cycle is unknown")


@dataclass
class ReplayReport:
    cycles: list[CycleReplay]
    policies: dict[str, PolicyDiff]
    unknown_since: int = 0
    manual_rows: int = 0
    supervisor_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self, examples: int = EXAMPLES) -> dict[str, Any]:
        return {
            "cycles": len(self.cycles),
            "first": self.cycles[0].at.isoformat() if self.cycles else None,
            "last": self.cycles[-1].at.isoformat() if self.cycles else None,
            "policies": [d.to_json(examples) for d in sorted(self.policies.values(), key=lambda d: d.policy)],
            "unknown_state_times": self.unknown_since,
            "manual_rows": self.manual_rows,
            "supervisor_rows": self.supervisor_rows,
            "approximate": sum(len(d.approximate) for d in self.policies.values()),
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
    # a job ends (complete or failed) when its last frame ends, whichever way that one ended
    ends_job = kind is Kind.JOB and state in (JobState.COMPLETE, JobState.FAILED)
    times = [r.finished_at for f in frames if isinstance(f, Frame) for r in f.runs
             if (ends_job or r.state == want) and r.finished_at is not None and r.finished_at <= before]
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
    if isinstance(entity, Frame) and entity.state in (FrameState.FAILED, FrameState.COMPLETE):
        _ended_as(entity, row.at)
    if isinstance(entity, Job | Instance):
        _undo_children(farm, entity, row.at, row.action)
    return since is not None


def _ended_as(frame: Frame, before: datetime) -> None:
    """A frame put back in a finished state: where and how it ended, from its last run
    (the action that moved it, a retry, had cleared its host)."""
    runs = [r for r in frame.runs if r.finished_at is not None and r.finished_at <= before and r.state == frame.state]
    if runs:
        last = runs[-1]
        frame.host, frame.instance, frame.exit_code = last.host, last.instance, last.exit_code
        frame.started_at, frame.finished_at = last.started_at, last.finished_at


_STATE_TYPES: dict[Kind, type[StrEnum]] = {Kind.JOB: JobState, Kind.FRAME: FrameState, Kind.INSTANCE: InstanceState,
                                           Kind.WORKER: WorkerState}


def _undo_children(farm: Farm, entity: Job | Instance, at: datetime, action: str) -> None:
    """Frames and instances an action moved as a side effect (requeued by a retry or a
    lock-out, an instance sent back to pending by a job's block) are not logged, but they
    carry the action's time as `state_since`: put back the frames whose last finished
    attempt (a frame run) says what they were, and the instances whose state the action's
    table reaches from one state only."""
    job = entity if isinstance(entity, Job) else farm.jobs[entity.job_id]
    rule = RULES.get((Kind.INSTANCE if isinstance(entity, Instance) else Kind.JOB, Action(action)))
    if rule is not None and isinstance(entity, Job):
        for inst in job.instances.values():
            if inst.state_since != at:
                continue
            sources = [s for s, to in rule.instances.items() if to == inst.state]
            if len(sources) == 1:
                inst.state, inst.state_since = InstanceState(sources[0]), None
    cuts = rule is not None and rule.frames.get(FrameState.RUNNING) is not None
    for frame in job.frames.values():
        if frame.state_since != at:
            continue
        if cuts and frame.state in (FrameState.PENDING, FrameState.KILLED) and _cut_short(frame, at):
            # the attempt the action cut short: the frame keeps its start, not its host
            frame.state, frame.state_since, frame.finished_at, frame.exit_code = (
                FrameState.RUNNING, frame.started_at, None, None)
            frame.host, frame.instance = (entity.host, entity.id) if isinstance(entity, Instance) else (None, None)
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
        active: dict[str, datetime] = {}  # each instance's first known start of work
        for frame in job.frames.values():
            for inst, started in _starts(frame):
                active[inst] = min(started, active.get(inst, started))
            spanning = _running_at(frame, at)
            later = sum(1 for r in frame.runs if r.started_at is not None and r.started_at >= at)
            if frame.state == FrameState.RUNNING and frame.started_at is not None and frame.started_at >= at:
                later += 1  # its current attempt, not yet a run
            frame.runs = [r for r in frame.runs if r.finished_at is None or r.finished_at <= at]
            if spanning is not None:  # it was running then: the attempt that ended after `at` says where
                frame.state, frame.host, frame.instance = FrameState.RUNNING, spanning.host, spanning.instance
                frame.started_at = frame.state_since = spanning.started_at
                frame.finished_at = frame.exit_code = None
                moved = True
            elif _moved_after(frame, at):
                times = (requeued or {}).get((job.id, frame.number), []) + (requeued or {}).get((job.id, None), [])
                _frame_as_of(frame, at, times)
                moved = True
            frame.attempts = max(0, frame.attempts - later)
        for ident in [i for i, start in active.items() if start >= at and i in job.instances]:
            del job.instances[ident]  # the supervisor started it to run a frame after `at`
            moved = True
        if moved and job.hold is Hold.NONE:
            state = job.derived_state()
            if state != job.state:
                job.state = state
                job.state_since = None  # (when it entered it is not recorded)
    out.reindex()
    return out


def _cut_short(frame: Frame, at: datetime) -> bool:
    """Whether the frame was on an attempt at `at` that left no run: it started after its
    last run ended (an attempt that ends is recorded; one an action cuts short is not)."""
    if frame.started_at is None or frame.started_at > at:
        return False
    ended = [r.finished_at for r in frame.runs if r.finished_at is not None]
    return not ended or frame.started_at >= max(ended)


def _unrecorded(frame: Frame) -> int:
    """Attempts that left no run (the store records an attempt when it ends; one an
    action cut short, taking the frame off its host, ends without a record)."""
    running = 1 if frame.state == FrameState.RUNNING else 0
    return max(0, frame.attempts - len(frame.runs) - running)


def _moved_after(frame: Frame, at: datetime) -> bool:
    """Whether the supervisor moved the frame after `at`: it ended, started, or was put
    back on the queue (its own retry) since."""
    return ((frame.finished_at is not None and frame.finished_at > at)
            or (frame.state == FrameState.RUNNING and frame.started_at is not None and frame.started_at >= at)
            or (frame.state_since is not None and frame.state_since > at))


def _starts(frame: Frame) -> list[tuple[str, datetime]]:
    """When work started on each instance, by this frame's attempts (its runs and the
    attempt it is on)."""
    out = [(r.instance, r.started_at) for r in frame.runs if r.instance is not None and r.started_at is not None]
    if frame.state == FrameState.RUNNING and frame.instance is not None and frame.started_at is not None:
        out.append((frame.instance, frame.started_at))
    return out


def _running_at(frame: Frame, at: datetime) -> FrameRun | None:
    """The attempt the frame was on at `at`, from a run that started before it and ended
    after it (what the supervisor recorded when that attempt ended)."""
    for run in frame.runs:
        if (run.started_at is not None and run.started_at < at and run.finished_at is not None
                and run.finished_at > at):
            return run
    return None


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
    # frames an action ever took off their host: where and when those attempts ran is not recorded
    cut_short = {f"{f.job_id}:{f.number}" for j in farm.jobs.values() for f in j.frames.values() if _unrecorded(f)}
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
    report.manual_rows = sum(1 for r in rows if r.cycle_id is None and r.applied and r.actor != SUPERVISOR)
    report.supervisor_rows = sum(1 for r in rows if r.cycle_id is None and r.applied and r.actor == SUPERVISOR)
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
        cycle = CycleReplay(cycle_id, at, actual, replayed, cut_short)
        report.cycles.append(cycle)
        for key in replayed | actual:
            diff = report.policies.setdefault(key[0], PolicyDiff(key[0], in_set=key[0] in names))
            if key in replayed and key in actual:
                diff.unchanged += 1
                continue
            (diff.added if key in replayed else diff.removed).append((cycle_id, key))
            why = cycle.approximates(key)
            if why is not None:
                diff.approximate[(cycle_id, key)] = why
    if progress is not None:
        progress(len(order), len(order))
    for name in names:
        report.policies.setdefault(name, PolicyDiff(name))
    guesses = sum(len(d.approximate) for d in report.policies.values())
    if guesses:
        report.notes.append(f"{guesses} difference(s) marked 'approximate' may be the reconstruction's: an action "
                            "took a running frame off its host, and the store keeps no record of that cut-short "
                            "attempt, so whether the frame was running at that cycle is not known")
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
                mark = "  (approximate)" if (cycle, key) in d.approximate else ""
                lines.append(f"  {sign} {key[3]} {key[1]} {key[2]}  [cycle {cycle}]{mark}")
            if len(items) > examples:
                lines.append(f"  {sign} ... and {len(items) - examples} more")
    lines.extend(f"note: {n}" for n in report.notes)
    if report.manual_rows:
        lines.append(f"note: {report.manual_rows} manual action(s) in the log were undone in the reconstruction "
                     "but are not replayed")
    if report.supervisor_rows:
        lines.append(f"note: {report.supervisor_rows} of the supervisor's own changes in the log (submissions, "
                     "releases, its retries) were undone in the reconstruction; they are not policies' to replay")
    return lines
