"""Farm snapshots: a whole farm as a YAML or JSON file, for tests, demos and dry runs.

Wranglers write these by hand ("what would my policies do to this farm?") and corral
writes them (`corral dump`), so the format is small and forgiving where it can be (a
job's state may be left out and is then derived; hosts need not be listed as workers)
and strict where a mistake would mislead (unknown fields, dangling references).  Every
error names the field path and its file:line:column, and all errors are reported at
once.  The format is documented in docs/snapshot.md; `snapshot_json_schema()` is its
JSON Schema, generated from the same models that validate it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from corral.farm import MAX_FRAMES, MAX_INT, MAX_NAME, Farm, Frame, FrameRun, Instance, Job, Worker, avoid_text, avoided
from corral.states import FrameState, Hold, InstanceState, JobState, WorkerState, hold_for_state
from corral.untrusted import no_controls
from corral.yamlpos import Pos, PosDict, PosList, YamlError, load_text, read_text


class SnapshotError(Exception):
    """A snapshot that cannot be loaded; `errors` lists every problem, each with its place."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def _utc(value: datetime | None) -> datetime | None:
    """Timestamps without a zone are UTC (what `corral dump` writes is always explicit)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Stamp = Annotated[datetime | None, AfterValidator(_utc), Field(description="ISO 8601; no zone means UTC")]
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_INT)]
Int = Annotated[int, Field(strict=True, ge=-MAX_INT - 1, le=MAX_INT)]
FrameRef = Annotated[str, Field(pattern=r"^\d{1,10}:\d{1,10}$", description="JOB:FRAME, e.g. 12:1001")]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(no_controls)]
Text = Annotated[str, Field(max_length=MAX_NAME), AfterValidator(no_controls)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class RunModel(_Model):
    """A finished attempt at a frame (history: failure counts per host come from these)."""

    host: Text | None = None
    instance: Text | None = None
    state: FrameState
    exit_code: Int | None = None
    started_at: Stamp = None
    finished_at: Stamp = None


class FrameModel(_Model):
    """One frame, or with `range` ("1-100") many frames that share every other field."""

    number: Count | None = None
    range: Annotated[str, Field(pattern=r"^\d{1,10}-\d{1,10}([x:]\d{1,10})?$",
                                description="FIRST-LAST, inclusive, or FIRST-LASTxSTEP (1-100x10)")] | None = None
    state: FrameState = FrameState.PENDING
    host: Text | None = None
    instance: Text | None = None
    attempts: Count = 0
    retries: Count = 0
    exit_code: Int | None = None
    started_at: Stamp = None
    finished_at: Stamp = None
    state_since: Stamp = None
    layer: Text | None = Field(default=None, description="its task type: the job's layer, block or task type")
    avoid_hosts: list[Text] = Field(default_factory=list, description="hosts kept away from this frame")
    depends_on: list[FrameRef] = Field(default_factory=list)
    runs: list[RunModel] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_of_number_or_range(self) -> FrameModel:
        if (self.number is None) == (self.range is None):
            raise ValueError("give either 'number' or 'range' (e.g. range: 1-100)")
        if self.range is not None:
            first, last, step = self._bounds()
            if first > last:
                raise ValueError(f"range {self.range} runs backwards")
            if step < 1:
                raise ValueError(f"range {self.range}: the step is 1 or more")
            if last > MAX_INT:
                raise ValueError(f"range {self.range} goes past the largest frame number, {MAX_INT}")
            if self.count() > MAX_FRAMES:
                raise ValueError(f"range {self.range} is {self.count():,} frames; a job has at most {MAX_FRAMES:,}")
        return self

    def _bounds(self) -> tuple[int, int, int]:
        """FIRST-LAST, or FIRST-LASTxSTEP (also FIRST-LAST:STEP): 1-100x10 is 1, 11, ... 91."""
        assert self.range is not None
        span, _, step = self.range.replace(":", "x").partition("x")
        first, last = (int(x) for x in span.split("-"))
        return first, last, int(step) if step else 1

    def count(self) -> int:
        if self.range is None:
            return 1
        first, last, step = self._bounds()
        return (last - first) // step + 1 if last >= first and step >= 1 else 0

    def numbers(self) -> list[int]:
        if self.number is not None:
            return [self.number]
        first, last, step = self._bounds()
        return list(range(first, last + 1, step))


class InstanceModel(_Model):
    id: Name
    host: Name
    state: InstanceState = InstanceState.PENDING
    state_since: Stamp = None


class JobModel(_Model):
    """A job.  Leave `state` out to derive it from the frames (recommended)."""

    id: Count
    name: Name
    priority: Int = 50
    state: JobState | None = Field(
        default=None, description="omit to derive; blocked and killed are holds a person or policy put on the job"
    )
    suspended: bool = Field(default=False, description="suspended jobs show as pending until unblocked")
    blocked_by: Text | None = Field(default=None, description="who blocked the job (user:NAME, or a policy)")
    retry_limit: Count = 0
    retries: Count = 0
    submitted_at: Stamp = None
    state_since: Stamp = None
    last_retry_at: Stamp = None
    owner: Text | None = Field(default=None, description="who submitted the job")
    depends_on: list[Count] = Field(default_factory=list)
    frames: list[FrameModel] = Field(default_factory=list)
    instances: list[InstanceModel] = Field(default_factory=list)


class WorkerModel(_Model):
    name: Name
    state: WorkerState = WorkerState.UP
    state_since: Stamp = None


class SnapshotModel(_Model):
    """A whole farm: its jobs (with frames and instances) and its workers."""

    jobs: list[JobModel] = Field(default_factory=list)
    workers: list[WorkerModel] = Field(default_factory=list)


def snapshot_json_schema() -> dict[str, Any]:
    """The JSON Schema of the format (editors can validate snapshots with it)."""
    schema = SnapshotModel.model_json_schema()
    schema["title"] = "corral farm snapshot"
    return schema


# --- errors with places ----------------------------------------------------------------

Path_ = tuple[str | int, ...]


def _path_text(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top)"


def _place(root: Any, path: Path_, *, key: bool = False) -> Pos | None:
    """The position of `root` at `path`; the nearest enclosing one if that is missing."""
    node, best = root, getattr(root, "start", None)
    for n, part in enumerate(path):
        last = n == len(path) - 1
        if isinstance(node, PosDict) and isinstance(part, str) and part in node:
            best = node.pos_of(part) if (last and key) else node.value_pos_of(part)
            node = node[part]
        elif isinstance(node, PosList) and isinstance(part, int) and 0 <= part < len(node):
            best = node.pos_of(part)
            node = node[part]
        else:
            break
    return best


class _Errors:
    def __init__(self, root: Any, source: str) -> None:
        self.root, self.source = root, source
        self.items: list[tuple[int, int, str]] = []

    def add(self, path: Path_, message: str, *, key: bool = False) -> None:
        pos = _place(self.root, path, key=key)
        if pos is None and not path:  # the document itself (a number, a list): it starts at the start
            pos = Pos(self.source, 1, 1)
        where = str(pos) if pos else self.source
        line, col = (pos.line, pos.column) if pos else (0, 0)
        self.items.append((line, col, f"{where}: {_path_text(path)}: {message}"))

    def raise_if_any(self) -> None:
        if self.items:
            raise SnapshotError([text for _, _, text in sorted(self.items, key=lambda i: (i[0], i[1]))])


_FIELDS: dict[str, type[BaseModel]] = {
    "job": JobModel,
    "frame": FrameModel,
    "run": RunModel,
    "instance": InstanceModel,
    "worker": WorkerModel,
}


def _what(path: Path_) -> str:
    names = [p for p in path if isinstance(p, str)]
    for name, what in (("runs", "run"), ("frames", "frame"), ("instances", "instance"), ("workers", "worker")):
        if name in names[-2:]:
            return what
    return "job"


def _pydantic(errors: _Errors, prefix: Path_, err: ValidationError) -> None:
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            known = ", ".join(_FIELDS[_what(loc[:-1])].model_fields)
            errors.add(loc, f"unknown field (a {_what(loc[:-1])} has: {known})", key=True)
        elif e["type"] == "missing":
            errors.add(loc, "required field is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            errors.add(loc, f"{msg}{shown}")


# --- parsing ---------------------------------------------------------------------------


def parse_snapshot(data: Any, source: str = "<snapshot>") -> Farm:
    """Validate a parsed document (positions kept if it came through yamlpos) into a Farm.

    Jobs, frames, instances and workers are validated one by one, so a typo in one
    frame does not hide the dangling reference in the next: every error is reported.
    """
    errors = _Errors(data, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.add((), "a snapshot is a mapping with 'jobs' and 'workers'")
        errors.raise_if_any()
    for key in data:
        if key not in SnapshotModel.model_fields:
            errors.add((key,), "unknown field (a snapshot has: jobs, workers)", key=True)
    jobs = [
        parsed
        for n, raw in enumerate(_items(errors, data, ("jobs",)))
        if (parsed := _parse_job(errors, ("jobs", n), raw)) is not None
    ]
    workers = _valid(errors, ("workers",), _items(errors, data, ("workers",)), WorkerModel)
    farm = _build(errors, jobs, workers, _raw_frames(data))
    errors.raise_if_any()
    return farm


def _items(errors: _Errors, container: Any, path: Path_) -> list[Any]:
    items = container.get(path[-1]) if isinstance(container, dict) else None
    if items is None:
        return []
    if not isinstance(items, list):
        errors.add(path, f"'{path[-1]}' must be a list")
        return []
    return items


def _valid(errors: _Errors, at: Path_, items: list[Any], model: type[_Model]) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for n, raw in enumerate(items):
        try:
            out.append((n, model.model_validate(raw)))
        except ValidationError as err:
            _pydantic(errors, (*at, n), err)
    return out


ParsedJob = tuple[int, JobModel, list[tuple[int, FrameModel]], list[tuple[int, InstanceModel]]]


def _parse_job(errors: _Errors, at: Path_, raw: Any) -> ParsedJob | None:
    frames = _valid(errors, (*at, "frames"), _items(errors, raw, (*at, "frames")), FrameModel)
    total = sum(fm.count() for _, fm in frames)
    if total > MAX_FRAMES:
        errors.add((*at, "frames"), f"the job has {total:,} frames; a job has at most {MAX_FRAMES:,}")
        frames = []  # (not expanded: a million and more frame objects for an error)
    instances = _valid(errors, (*at, "instances"), _items(errors, raw, (*at, "instances")), InstanceModel)
    header = {k: v for k, v in raw.items() if k not in ("frames", "instances")} if isinstance(raw, dict) else raw
    try:
        job = JobModel.model_validate(header)
    except ValidationError as err:
        _pydantic(errors, at, err)
        if not (isinstance(raw, dict) and type(raw.get("id")) is int):
            return None
        job = JobModel.model_construct(id=raw["id"], name="")  # go on checking its frames and instances
    return int(at[-1]), job, frames, instances


def _raw_frames(data: Any) -> dict[Any, set[Any]]:
    """Every job id and frame number written, valid or not (to avoid knock-on errors)."""
    out: dict[Any, set[Any]] = {}
    for raw in data.get("jobs") or [] if isinstance(data.get("jobs"), list) else []:
        if not isinstance(raw, dict):
            continue
        numbers = out.setdefault(raw.get("id"), set())
        for frame in raw.get("frames") or [] if isinstance(raw.get("frames"), list) else []:
            if isinstance(frame, dict):
                numbers.add(frame.get("number"))
                text = frame.get("range")
                if isinstance(text, str) and re.fullmatch(r"\d{1,10}-\d{1,10}", text):
                    first, last = (int(x) for x in text.split("-"))
                    if 0 <= last - first < MAX_FRAMES:  # a longer range is an error of its own
                        numbers.update(range(first, last + 1))
    return out


def _unique(errors: _Errors, seen: dict[Any, Path_], value: Any, path: Path_, what: str) -> None:
    if value in seen:
        errors.add(path, f"duplicate {what} {value!r} (first at {_path_text(seen[value])})")
    else:
        seen[value] = path


def _build(
    errors: _Errors,
    jobs: list[ParsedJob],
    workers: list[tuple[int, WorkerModel]],
    frame_numbers: dict[Any, set[Any]],
) -> Farm:
    farm = Farm()
    seen_jobs: dict[Any, Path_] = {}
    seen_instances: dict[Any, Path_] = {}
    for n, jm, _frames, _instances in jobs:
        _unique(errors, seen_jobs, jm.id, ("jobs", n, "id"), "job id")
    for n, jm, frames, instances in jobs:
        at: Path_ = ("jobs", n)
        job = Job(
            id=jm.id,
            name=jm.name,
            priority=jm.priority,
            retry_limit=jm.retry_limit,
            retries=jm.retries,
            depends_on=list(jm.depends_on),
            submitted_at=jm.submitted_at,
            state_since=jm.state_since,
            last_retry_at=jm.last_retry_at,
            blocked_by=jm.blocked_by,
            owner=jm.owner,
        )
        for k, dep in enumerate(jm.depends_on):
            if dep == jm.id:
                errors.add((*at, "depends_on", k), "a job cannot wait on itself")
            elif dep not in frame_numbers:
                errors.add((*at, "depends_on", k), f"no job {dep} in this snapshot")
        for k, im in instances:
            _unique(errors, seen_instances, im.id, (*at, "instances", k, "id"), "instance id")
            job.instances[im.id] = Instance(im.id, jm.id, im.host, im.state, im.state_since)
        seen_frames: dict[Any, Path_] = {}
        for k, fm in frames:
            fat: Path_ = (*at, "frames", k)
            _check_frame(errors, fat, fm, job, frame_numbers)
            for number in fm.numbers():
                _unique(errors, seen_frames, number, (*fat, "number" if fm.range is None else "range"), "frame")
                job.frames[number] = _frame(jm.id, number, fm)
        _job_state(errors, at, jm, job)
        if "state_since" not in jm.model_fields_set:  # left out, not written as null (a dump's unknown)
            job.state_since = _last_frame_change(job)
        farm.jobs.setdefault(job.id, job)
    seen_workers: dict[Any, Path_] = {}
    for n, wm in workers:
        _unique(errors, seen_workers, wm.name, ("workers", n, "name"), "worker")
        farm.workers[wm.name] = Worker(wm.name, wm.state, wm.state_since)
    for host in _hosts(farm):
        farm.workers.setdefault(host, Worker(host))
    return farm


def _last_frame_change(job: Job) -> datetime | None:
    """When a job that gives no `state_since` last changed, as its frames tell it (the
    latest time any of them started, finished or changed state): a supervisor's dump
    often leaves it out, and a job with no time in state is never retried after a delay."""
    times = [t for f in job.frames.values() for t in (f.state_since, f.finished_at, f.started_at) if t is not None]
    times += [r.finished_at for f in job.frames.values() for r in f.runs if r.finished_at is not None]
    return max(times, default=None)


def _frame_since(fm: FrameModel) -> datetime | None:
    """A frame's `state_since`, or where left out (not written as null), when its state began by its own times:
    a finished frame when it finished, a running one when it started."""
    if fm.state_since is not None or "state_since" in fm.model_fields_set:
        return fm.state_since
    if fm.state in (FrameState.COMPLETE, FrameState.FAILED, FrameState.KILLED):
        return fm.finished_at
    if fm.state == FrameState.RUNNING:
        return fm.started_at
    return None


def _frame(job_id: int, number: int, fm: FrameModel) -> Frame:
    return Frame(
        job_id=job_id,
        number=number,
        state=fm.state,
        host=fm.host,
        instance=fm.instance,
        attempts=fm.attempts,
        retries=fm.retries,
        exit_code=fm.exit_code,
        started_at=fm.started_at,
        finished_at=fm.finished_at,
        state_since=_frame_since(fm),
        layer=fm.layer,
        avoid_hosts=avoid_text(fm.avoid_hosts),
        depends_on=[_ref(r) for r in fm.depends_on],
        runs=[FrameRun(r.host, r.instance, r.state, r.exit_code, r.started_at, r.finished_at) for r in fm.runs]
        or ([] if "runs" in fm.model_fields_set else _last_run(fm)),
    )


def _last_run(fm: FrameModel) -> list[FrameRun]:
    """A finished frame given without `runs:` (left out, not `runs: []`) ran once, where
    it says: kept as its run, as the store keeps it, so its failure still counts once a
    policy requeues it (history is never lost)."""
    if fm.state in (FrameState.COMPLETE, FrameState.FAILED) and fm.host:
        return [FrameRun(fm.host, fm.instance, fm.state, fm.exit_code, fm.started_at, fm.finished_at)]
    return []


def _ref(text: str) -> tuple[int, int]:
    job, _, frame = text.partition(":")
    return int(job), int(frame)


def _check_frame(errors: _Errors, at: Path_, fm: FrameModel, job: Job, frames: dict[Any, set[Any]]) -> None:
    if fm.instance is not None:
        inst = job.instances.get(fm.instance)
        if inst is None:
            errors.add((*at, "instance"), f"job {job.id} has no instance {fm.instance!r}{_known(job.instances)}")
        elif fm.host is not None and fm.host != inst.host:
            errors.add((*at, "host"), f"instance {inst.id} runs on {inst.host!r}, not {fm.host!r}")
    for k, ref in enumerate(fm.depends_on):
        dj, dn = _ref(ref)
        if dj not in frames:
            errors.add((*at, "depends_on", k), f"no job {dj} in this snapshot")
        elif dn not in frames[dj]:
            errors.add((*at, "depends_on", k), f"job {dj} has no frame {dn}")
        elif dj == job.id and fm.number == dn:
            errors.add((*at, "depends_on", k), "a frame cannot wait on itself")
    for k, run in enumerate(fm.runs):
        if run.instance is not None and run.instance not in job.instances:
            errors.add((*at, "runs", k, "instance"), f"job {job.id} has no instance {run.instance!r}")


def _known(instances: dict[str, Instance]) -> str:
    return f" (it has: {', '.join(instances)})" if instances else " (it has none)"


def _job_state(errors: _Errors, at: Path_, jm: JobModel, job: Job) -> None:
    """Explicit blocked/killed become holds; `suspended` is a hold that shows as pending."""
    if jm.suspended:
        if jm.state not in (None, JobState.PENDING):
            errors.add((*at, "state"), f"a suspended job shows as pending, not {jm.state}")
        job.hold = Hold.SUSPENDED
    elif jm.state is not None:
        job.hold = hold_for_state(jm.state)
    job.state = jm.state if jm.state is not None and not jm.suspended else job.derived_state()


def _hosts(farm: Farm) -> Iterator[str]:
    for job in farm.jobs.values():
        yield from (i.host for i in job.instances.values())
        for frame in job.frames.values():
            if frame.host:
                yield frame.host
            yield from (r.host for r in frame.runs if r.host)


# --- files -----------------------------------------------------------------------------


def load_snapshot_file(path: str | Path) -> Farm:
    """YAML or JSON (by suffix, else by the first character), errors with positions."""
    path = Path(path)
    try:
        text = read_text(path)
    except OSError as err:
        raise SnapshotError([f"{path}: cannot read: {err.strerror}"]) from None
    except YamlError as err:
        raise SnapshotError([str(err)]) from None
    return parse_snapshot(read_document(text, str(path), json_=_is_json(path, text)), str(path))


def _is_json(path: Path, text: str) -> bool:
    if path.suffix.lower() == ".json":
        return True
    if path.suffix.lower() in (".yaml", ".yml"):
        return False
    return text.lstrip().startswith(("{", "["))


def read_document(text: str, source: str, *, json_: bool = False) -> Any:
    """Parse YAML, or JSON, keeping positions (JSON is read again as YAML to get them)."""
    if not json_:
        try:
            return load_text(text, source)
        except YamlError as err:
            raise SnapshotError([str(err)]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SnapshotError([f"{Pos(source, err.lineno, err.colno)}: JSON syntax error: {err.msg}"]) from None
    except RecursionError:
        raise SnapshotError([f"{Pos(source, 1, 1)}: nested too deep"]) from None
    try:
        with_pos = load_text(text, source)
    except YamlError:
        return data
    return with_pos if with_pos == data else data


# --- dumping ---------------------------------------------------------------------------


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _clean(data: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Leave out what is None or at its default: dumps stay readable."""
    return {k: v for k, v in data.items() if v is not None and not (k in defaults and defaults[k] == v)}


_FRAME_DEFAULTS: dict[str, Any] = {"attempts": 0, "retries": 0, "depends_on": [], "runs": [], "avoid_hosts": []}
_JOB_DEFAULTS: dict[str, Any] = {
    "priority": 50,
    "retry_limit": 0,
    "retries": 0,
    "depends_on": [],
    "frames": [],
    "instances": [],
    "suspended": False,
}


def farm_to_snapshot(farm: Farm) -> dict[str, Any]:
    """The farm as plain data (JSON- and YAML-safe) that `parse_snapshot` reads back equal."""
    return {
        "jobs": [_job_data(farm.jobs[i]) for i in sorted(farm.jobs)],
        "workers": [
            _clean({"name": w.name, "state": w.state.value, "state_since": _stamp(w.state_since)}, {})
            for w in sorted(farm.workers.values(), key=lambda w: w.name)
        ],
    }


def _job_state_field(job: Job) -> str | None:
    """The state to write: a hold must be written; killed without a hold must be derived."""
    if job.hold is Hold.SUSPENDED:
        return None
    if job.hold is Hold.NONE and job.state in (JobState.KILLED, JobState.BLOCKED):
        return None  # derived (writing it would turn it into a hold)
    return job.state.value


def _job_data(job: Job) -> dict[str, Any]:
    data = {
        "id": job.id,
        "name": job.name,
        "priority": job.priority,
        "state": _job_state_field(job),
        "suspended": job.hold is Hold.SUSPENDED,
        "blocked_by": job.blocked_by,
        "retry_limit": job.retry_limit,
        "retries": job.retries,
        "submitted_at": _stamp(job.submitted_at),
        "state_since": _stamp(job.state_since),
        "last_retry_at": _stamp(job.last_retry_at),
        "owner": job.owner,
        "depends_on": list(job.depends_on),
        "instances": [
            _clean({"id": i.id, "host": i.host, "state": i.state.value, "state_since": _stamp(i.state_since)}, {})
            for i in job.instances.values()
        ],
        "frames": [_frame_data(job.frames[n]) for n in sorted(job.frames)],
    }
    return _unknown_since(job.state_since, _clean(data, _JOB_DEFAULTS), _last_frame_change(job) is not None)


def _frame_data(frame: Frame) -> dict[str, Any]:
    data = {
        "number": frame.number,
        "state": frame.state.value,
        "host": frame.host,
        "instance": frame.instance,
        "attempts": frame.attempts,
        "retries": frame.retries,
        "exit_code": frame.exit_code,
        "started_at": _stamp(frame.started_at),
        "finished_at": _stamp(frame.finished_at),
        "state_since": _stamp(frame.state_since),
        "layer": frame.layer,
        "avoid_hosts": sorted(avoided(frame)),
        "depends_on": [f"{j}:{n}" for j, n in frame.depends_on],
        "runs": [
            _clean(
                {
                    "host": r.host,
                    "instance": r.instance,
                    "state": r.state.value,
                    "exit_code": r.exit_code,
                    "started_at": _stamp(r.started_at),
                    "finished_at": _stamp(r.finished_at),
                },
                {},
            )
            for r in frame.runs
        ],
    }
    derivable = (frame.finished_at if frame.state in (FrameState.COMPLETE, FrameState.FAILED, FrameState.KILLED)
                 else frame.started_at if frame.state == FrameState.RUNNING else None) is not None
    out = _unknown_since(frame.state_since, _clean(data, _FRAME_DEFAULTS), derivable)
    if not frame.runs and frame.host and frame.state in (FrameState.COMPLETE, FrameState.FAILED):
        out["runs"] = []  # said, or a load would take its result for its one run
    return out


def _unknown_since(since: datetime | None, data: dict[str, Any], derivable: bool) -> dict[str, Any]:
    """`state_since: null` where it is unknown and a load would otherwise work it out
    from other times: dump then load stays lossless."""
    if since is None and derivable:
        data["state_since"] = None
    return data
