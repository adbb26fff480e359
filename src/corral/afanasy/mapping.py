"""Afanasy's replies as corral's farm, and the index back to Afanasy's addresses.  Pure.

Afanasy → corral:

- a job is a job; its corral id is Afanasy's ``serial`` (unique for the server's life;
  Afanasy reuses a deleted job's ``id``), and the `Index` keeps the current id;
- a task is a frame; frames are numbered across blocks (block 0's tasks first, then
  block 1's...), and the `Index` maps a number back to (block, task);
- a render is a worker; a (job, render) pair is an instance ``"{serial}@{render}"``;
- the failed runs come from the job's error hosts (`corral.afanasy.errorhosts`), the
  successful one from a done task's last host and times.

The state tables are below (`frame_state`, `worker_state`, `instance_state`); what is
approximated is said in docs/afanasy.md.  Nothing here does I/O: `corral.afanasy.source`
fetches the replies and hands them over.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

from corral.afanasy import errorhosts, masks
from corral.afanasy.errorhosts import ErrorHost
from corral.farm import MAX_INT, MAX_NAME, Farm, Frame, FrameRun, Instance, Job, Worker
from corral.states import FrameState, Hold, InstanceState, WorkerState

#: Afanasy's own job (post commands, wake-on-lan, events): not a job anyone submitted.
SYSTEM_JOB_ID = 1
#: Afanasy's default for ``errors_retries`` when a block says -1 (inherit) and the user
#: sets nothing either.
DEFAULT_ERRORS_RETRIES = 3
#: Render state flags that keep a render from every job: NIMBY, nimby, paused, sick.
LOCKED_FLAGS = frozenset({"NBY", "NbY", "PAU", "SIC"})


def flags(state: object) -> frozenset[str]:
    """A state string such as ``" RDY RUN"`` as its set of flags."""
    return frozenset(state.split()) if isinstance(state, str) else frozenset()


def frame_state(task: frozenset[str]) -> FrameState:
    """A task's flags as a frame state.

    RUN (or WRC: the render lost its connection mid-task, the task still counts as
    running) → running; ERR (out of retries) → failed; DON (SKP comes with DON) →
    complete; SUS (a task suspended by hand) → blocked, a frame held; anything else
    (RDY, RER = ready again after an error, WDP, WTM, TRY, no flag) → pending."""
    if "RUN" in task or "WRC" in task:
        return FrameState.RUNNING
    if "ERR" in task:
        return FrameState.FAILED
    if "DON" in task or "SKP" in task:
        return FrameState.COMPLETE
    if "SUS" in task:
        return FrameState.BLOCKED
    return FrameState.PENDING


def worker_state(render: frozenset[str]) -> WorkerState:
    """NIMBY, nimby, paused or sick → locked (kept from jobs, which is what corral's
    quarantine does); else OFF → down; else up."""
    if render & LOCKED_FLAGS:
        return WorkerState.LOCKED
    if "OFF" in render:
        return WorkerState.DOWN
    return WorkerState.UP


@dataclass(frozen=True)
class JobRef:
    """How to address one job in Afanasy: its current id, and its blocks' task counts."""

    serial: int
    id: int
    name: str
    user: str
    tasks: tuple[int, ...]
    hosts_mask_exclude: str = ""
    hosts_mask_type: str = masks.FIND

    @property
    def frames(self) -> int:
        return sum(self.tasks)

    def number(self, block: int, task: int) -> int:
        """The frame number of a task."""
        if not 0 <= block < len(self.tasks) or not 0 <= task < self.tasks[block]:
            raise IndexError(f"job serial {self.serial} has no task {task} in block {block}")
        return sum(self.tasks[:block]) + task

    def locate(self, number: int) -> tuple[int, int]:
        """The (block, task) of a frame number; IndexError when the job has no such frame."""
        left = number
        if left >= 0:
            for block, count in enumerate(self.tasks):
                if left < count:
                    return block, left
                left -= count
        raise IndexError(f"job serial {self.serial} has no frame {number} (it has {self.frames})")


@dataclass
class Index:
    """The way back from corral's ids to Afanasy's: jobs by serial, renders by name."""

    jobs: dict[int, JobRef] = field(default_factory=dict)
    renders: dict[str, int] = field(default_factory=dict)

    def locate(self, serial: int, number: int) -> tuple[int, int, int]:
        """(Afanasy job id, block, task) of corral's frame ``serial:number``; KeyError for
        a job not in the index, IndexError for a frame the job does not have."""
        ref = self.jobs[serial]
        block, task = ref.locate(number)
        return ref.id, block, task

    def serial_of(self, job_id: int) -> int | None:
        """The serial of the job that has Afanasy id `job_id` now."""
        for ref in self.jobs.values():
            if ref.id == job_id:
                return ref.serial
        return None


def job_ref(job: Mapping[str, Any]) -> JobRef:
    """A job entry of a ``get jobs`` reply as a `JobRef`; ValueError when it lacks what
    addressing it needs (an integer id and serial, and its blocks' task counts)."""
    serial, ident = job.get("serial"), job.get("id")
    if not isinstance(serial, int) or not isinstance(ident, int) or isinstance(serial, bool):
        raise ValueError("a job without an integer 'id' and 'serial'")
    blocks = job.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(f"job serial {serial} has no 'blocks' list")
    counts = []
    for block in blocks:
        count = block.get("tasks_num") if isinstance(block, dict) else None
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"job serial {serial} has a block without a 'tasks_num'")
        counts.append(count)
    return JobRef(serial, ident, str(job.get("name", "")), str(job.get("user_name", "")), tuple(counts),
                  str(job.get("hosts_mask_exclude", "") or ""), masks.mask_type(job.get("hosts_mask_type")))


def epoch(value: object) -> datetime | None:
    """Afanasy's epoch seconds as an aware UTC datetime; 0 or absent is "never"."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 2**40:
        return datetime.fromtimestamp(value, UTC)
    return None


def has_errors(job: Mapping[str, Any]) -> bool:
    """Whether a job has error hosts worth reading (a task in error, or a block that
    counts hosts with errors)."""
    if _int(job.get("tasks_error")) > 0:
        return True
    blocks = job.get("blocks")
    return isinstance(blocks, list) and any(
        isinstance(b, dict) and (_int(b.get("p_error_hosts")) > 0 or _int(b.get("p_tasks_error")) > 0) for b in blocks)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- the whole farm ------------------------------------------------------------------------


@dataclass
class _Task:
    state: FrameState
    flags: frozenset[str]
    starts: int
    errors: int
    host: str | None
    started: datetime | None
    done: datetime | None


def map_farm(jobs: Mapping[str, Any], progress: Mapping[int, Mapping[str, Any]],
             error_hosts: Mapping[int, Mapping[str, Any]], renders: Mapping[str, Any], now: datetime,
             tz: tzinfo = UTC) -> tuple[Farm, Index, list[str]]:
    """The farm from Afanasy's replies: ``get jobs`` (`jobs`), ``get renders`` (`renders`),
    and per Afanasy job id a ``mode:progress`` reply (`progress`; not needed for a done
    job) and a ``mode:error_hosts`` reply (`error_hosts`; for jobs with errors).

    `tz` is the server's time zone, for the error hosts' wall-clock times; when the
    replies show it (a task that last failed: its error time and its epoch finish time
    are the same instant) the offset read from them wins (`server_offset`).

    A job whose replies do not fit together (its progress missing or of another shape:
    deleted, or deleted and its id reused, between the requests) is left out, and said
    so in the problems; so is anything unreadable."""
    problems: list[str] = []
    farm, index = Farm(), Index()
    for render in _entries(renders, "renders", problems):
        name, ident = render.get("name"), render.get("id")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or not isinstance(ident, int):
            problems.append(f"renders: skipped an entry without a usable name and id: {_clip(render)}")
            continue
        farm.workers[name] = Worker(name, worker_state(flags(render.get("state"))))
        index.renders[name] = ident
    running_on = _running_on(renders)

    refs: dict[int, tuple[JobRef, Mapping[str, Any]]] = {}
    for job in _entries(jobs, "jobs", problems):
        if job.get("id") == SYSTEM_JOB_ID:
            continue
        try:
            ref = job_ref(job)
        except ValueError as err:
            problems.append(f"jobs: skipped {err}: {_clip(job)}")
            continue
        if not 0 <= ref.serial <= MAX_INT or len(ref.name) > MAX_NAME or ref.serial in refs:
            problems.append(f"jobs: skipped job serial {ref.serial} ({ref.name[:40]!r}): a serial or name corral "
                            "cannot store, or a serial seen twice")
            continue
        refs[ref.serial] = (ref, job)

    now_local = now.astimezone(tz).replace(tzinfo=None)
    errors: dict[int, list[ErrorHost]] = {}
    for ref, _data in refs.values():
        reply = error_hosts.get(ref.id)
        if reply is not None:
            entries, more = _error_hosts(ref, reply, now_local)
            errors[ref.serial] = entries
            problems.extend(more)
    tasks: dict[int, list[list[_Task]] | None] = {}
    for ref, job in refs.values():
        reply = progress.get(ref.id)
        done = "DON" in flags(job.get("state"))
        if reply is None and done:
            tasks[ref.serial] = None
            continue
        try:
            tasks[ref.serial] = _progress(ref, reply)
        except ValueError as err:
            problems.append(f"job serial {ref.serial} ({ref.name}): skipped: {err}")
    offset = server_offset(tasks, errors)
    zone: tzinfo = timezone(offset) if offset is not None else tz

    for serial, per_block in tasks.items():
        ref, job = refs[serial]
        index.jobs[serial] = ref
        farm.jobs[serial] = _job(ref, job, per_block, errors.get(serial, []), running_on.get(ref.id, set()),
                                 farm.workers, zone, problems)
    _depends(farm, {serial: refs[serial][1] for serial in farm.jobs}, problems)
    for made in farm.jobs.values():
        made.state = made.derived_state()
    return farm, index, problems


def _entries(reply: Mapping[str, Any], key: str, problems: list[str]) -> Iterable[Mapping[str, Any]]:
    items = reply.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        problems.append(f"{key}: expected a list, got {type(items).__name__}")
        return []
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(item)
        else:
            problems.append(f"{key}: skipped a {type(item).__name__} where an object was expected")
    return out


def _running_on(renders: Mapping[str, Any]) -> dict[int, set[str]]:
    """Afanasy job id → the renders running one of its tasks now (the renders' task lists)."""
    out: dict[int, set[str]] = {}
    items = renders.get("renders")
    for render in items if isinstance(items, list) else []:
        if not isinstance(render, dict) or not isinstance(render.get("name"), str):
            continue
        running = render.get("tasks")
        for task in running if isinstance(running, list) else []:
            if isinstance(task, dict) and isinstance(task.get("job_id"), int):
                out.setdefault(task["job_id"], set()).add(render["name"])
    return out


def _progress(ref: JobRef, reply: Mapping[str, Any] | None) -> list[list[_Task]]:
    """A ``mode:progress`` reply, checked against the job's blocks (ValueError if it is
    missing or is another job's: an id reused between the two requests)."""
    if reply is None:
        raise ValueError("no task progress (the job was deleted while it was read?)")
    body = reply.get("job_progress")
    if not isinstance(body, dict) or body.get("id") != ref.id or not isinstance(body.get("progress"), list):
        raise ValueError(f"expected the task progress of job id {ref.id}, got {_clip(reply)}")
    blocks = body["progress"]
    shape = [len(b) if isinstance(b, list) else -1 for b in blocks]
    if shape != list(ref.tasks):
        raise ValueError(f"its task progress has blocks of {shape} tasks, the job {list(ref.tasks)}: "
                         "replaced while it was read?")
    out = []
    for block in blocks:
        row = []
        for task in block:
            task = task if isinstance(task, dict) else {}
            fl = flags(task.get("state"))
            host = task.get("hst")
            row.append(_Task(frame_state(fl), fl, _int(task.get("str")), _int(task.get("err")),
                             host if isinstance(host, str) and host and len(host) <= MAX_NAME else None,
                             epoch(task.get("tst")), epoch(task.get("tdn"))))
        out.append(row)
    return out


def _error_hosts(ref: JobRef, reply: Mapping[str, Any], now_local: datetime) -> tuple[list[ErrorHost], list[str]]:
    body = reply.get("message")
    if not isinstance(body, dict) or not isinstance(body.get("list"), list):
        return [], [f"job serial {ref.serial} ({ref.name}): error hosts: expected a message with a list, "
                    f"got {_clip(reply)}"]
    if body.get("name") not in (None, ref.name):
        return [], [f"job serial {ref.serial} ({ref.name}): error hosts are of job {body.get('name')!r}: ignored"]
    entries, problems = errorhosts.parse(body["list"], now_local)
    fine = []
    for e in entries:
        if e.block >= len(ref.tasks) or (e.task is not None and e.task >= ref.tasks[e.block]) or len(e.host) > MAX_NAME:
            problems.append(f"error hosts: skipped {e.host}: block {e.block} task {e.task} is not in the job")
        else:
            fine.append(e)
    return fine, [f"job serial {ref.serial} ({ref.name}): {p}" for p in problems]


def server_offset(tasks: Mapping[int, list[list[_Task]] | None],
                  errors: Mapping[int, Sequence[ErrorHost]]) -> timedelta | None:
    """The server's UTC offset, read off the replies, or None when they do not show it.

    A task whose last run failed (ERR, or RER: ready again after an error) finished at
    ``tdn`` (epoch) on ``hst``, and that host's error time for the task is the same
    instant in the server's wall clock.  The difference, rounded to a quarter hour,
    is the offset; the most common one wins."""
    seen: Counter[timedelta] = Counter()
    for serial, per_block in tasks.items():
        if per_block is None:
            continue
        for e in errors.get(serial, ()):
            if e.task is None or e.local is None:
                continue
            task = per_block[e.block][e.task]
            if task.host != e.host or task.done is None or not task.flags & {"ERR", "RER"}:
                continue
            diff = e.local - task.done.replace(tzinfo=None)
            quarters = round(diff / timedelta(minutes=15))
            if abs(diff - quarters * timedelta(minutes=15)) <= timedelta(minutes=2) and abs(quarters) <= 14 * 4:
                seen[quarters * timedelta(minutes=15)] += 1
    return seen.most_common(1)[0][0] if seen else None


def _job(ref: JobRef, job: Mapping[str, Any], per_block: list[list[_Task]] | None, errors: list[ErrorHost],
         running_on: set[str], workers: Mapping[str, Worker], zone: tzinfo, problems: list[str]) -> Job:
    serial = ref.serial
    out = Job(
        id=serial, name=ref.name, priority=_int(job.get("priority")),
        hold=Hold.BLOCKED if "OFF" in flags(job.get("state")) else Hold.NONE,
        retry_limit=_retry_limit(job), submitted_at=epoch(job.get("time_creation")), owner=ref.user or None,
    )
    blocks = job.get("blocks")
    layers = [str(b.get("name")) if isinstance(b, dict) and b.get("name") else None
              for b in (blocks if isinstance(blocks, list) else [])]
    failed: dict[tuple[int, int], list[ErrorHost]] = {}
    for e in errors:
        if e.task is not None:
            failed.setdefault((e.block, e.task), []).append(e)
    running, completed = set(running_on), set()
    number = 0
    for block, count in enumerate(ref.tasks):
        for t in range(count):
            task = per_block[block][t] if per_block is not None else None
            frame = _frame(serial, number, task, failed.get((block, t), []), zone)
            frame.layer = layers[block] if block < len(layers) else None
            out.frames[number] = frame
            if frame.state is FrameState.RUNNING and frame.host:
                running.add(frame.host)
            if task is not None and task.host and "DON" in task.flags and "SKP" not in task.flags:
                completed.add(task.host)
            number += 1
    try:
        excluded = {name for name in workers if masks.excludes(ref.hosts_mask_exclude, ref.hosts_mask_type, name)}
    except masks.MaskError as err:
        problems.append(f"job serial {serial} ({ref.name}): hosts_mask_exclude: {err}; no host counted as blocked")
        excluded = set()
    errored = {e.host for e in errors}
    for host in sorted(running | completed | errored | excluded):
        state = instance_state(host in excluded, host in running, host in errored)
        ident = f"{serial}@{host}"
        out.instances[ident] = Instance(ident, serial, host, state)
    return out


def instance_state(excluded: bool, running: bool, errored: bool) -> InstanceState:
    """A (job, render) pair's state: blocked when the job's exclude mask keeps the render
    off it (a person's or corral's lock, whatever still runs there); running when one of
    its tasks runs there; failed when the render has errors on the job (Afanasy keeps
    them until forgiven or reset); else complete (it finished a task of the job)."""
    if excluded:
        return InstanceState.BLOCKED
    if running:
        return InstanceState.RUNNING
    if errored:
        return InstanceState.FAILED
    return InstanceState.COMPLETE


def _frame(serial: int, number: int, task: _Task | None, failed: list[ErrorHost], zone: tzinfo) -> Frame:
    if task is None:  # a done job, read without its progress: every task is done
        return Frame(serial, number, FrameState.COMPLETE, runs=_failed_runs(serial, failed, zone))
    running = task.state is FrameState.RUNNING
    host = task.host if running else None
    frame = Frame(
        serial, number, task.state, host=host, instance=f"{serial}@{host}" if host else None, attempts=task.starts,
        started_at=task.started, finished_at=None if running else task.done,
        state_since=task.started if running else task.done if task.state in (FrameState.COMPLETE, FrameState.FAILED)
        else None,
    )
    frame.runs = _failed_runs(serial, failed, zone)
    if "DON" in task.flags and "SKP" not in task.flags and task.host:
        frame.runs.append(FrameRun(task.host, f"{serial}@{task.host}", FrameState.COMPLETE,
                                   started_at=task.started, finished_at=task.done))
    return frame


def _failed_runs(serial: int, failed: list[ErrorHost], zone: tzinfo) -> list[FrameRun]:
    """`count` failed runs per host line, all at its time (Afanasy keeps only the latest),
    oldest first, so a later read that finds more errors appends to the list."""
    runs: list[FrameRun] = []
    for e in sorted(failed, key=lambda e: (e.local or datetime.min, e.host)):
        at = e.local.replace(tzinfo=zone).astimezone(UTC) if e.local is not None else None
        runs.extend(FrameRun(e.host, f"{serial}@{e.host}", FrameState.FAILED, finished_at=at) for _ in range(e.count))
    return runs


def _retry_limit(job: Mapping[str, Any]) -> int:
    """Afanasy's automatic retries per task (the blocks' largest ``errors_retries``, -1
    meaning its default): what corral takes as the job's limit on automatic retries."""
    blocks = job.get("blocks")
    values = [b.get("errors_retries") for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []
    known = [v for v in values if isinstance(v, int) and v >= 0]
    return max(known) if known else DEFAULT_ERRORS_RETRIES


def _depends(farm: Farm, jobs: Mapping[int, Mapping[str, Any]], problems: list[str]) -> None:
    """A job waits for every other job whose name its ``depend_mask`` matches whole
    (a regular expression; among its own user's jobs), or its ``depend_mask_global``
    (among everyone's)."""
    for serial, job in jobs.items():
        own = [(job.get("depend_mask"), True), (job.get("depend_mask_global"), False)]
        found: set[int] = set()
        for mask, same_user in own:
            if not isinstance(mask, str) or not mask:
                continue
            try:
                pattern = re.compile(mask)
            except re.error as err:
                problems.append(f"job serial {serial}: depend mask '{mask}' cannot be read: {err}; no dependency taken")
                continue
            for other, data in jobs.items():
                if other == serial or (same_user and data.get("user_name") != job.get("user_name")):
                    continue
                if pattern.fullmatch(str(data.get("name", ""))):
                    found.add(other)
        farm.jobs[serial].depends_on = sorted(found)


def _clip(value: object, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
