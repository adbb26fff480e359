"""Supervisor events: the models, parsing and validation of `corral ingest`'s JSON lines.

corral runs beside a supervisor (Qube!, Deadline, Tractor...), and the supervisor's
news reaches corral's store as events: a job submitted, a frame started, completed or
failed, an instance started or ended, a worker up or down.  Each event is one JSON
object on one line, with a unique `id` (so a replayed stream is skipped, never counted
twice) and a `type`; docs/ingest.md documents the format and `event_json_schema()` is
its JSON Schema, generated from the models below that validate every line.

This module is pure apart from reading lines: applying events to the store is
`corral.store.events`, and the batching loop that ties the two is `ingest_lines`.
"""

from __future__ import annotations

import json
import os
import re
import select
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

if TYPE_CHECKING:
    from corral.store.events import EventResult
    from corral.store.store import Store

#: The largest id or frame number the store's integer columns hold.
MAX_INT = 2**31 - 1
#: A job may not have more frames than this (a typo like 1-10000000 would otherwise fill the disk).
MAX_FRAMES = 1_000_000


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_FRAME_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_frames(spec: str | Iterable[int]) -> list[int]:
    """Frame numbers from `1-100`, `1-10,20,30-40` or a list of integers, in the order given.

    Raises ValueError saying what is wrong: an empty list, a range that runs backwards,
    a frame listed twice, a negative or too large number, too many frames.
    """
    numbers: list[int] = []
    if isinstance(spec, str):
        if not spec.strip():
            raise ValueError("no frames given (write e.g. 1-100 or 1-10,20,30-40)")
        for part in spec.split(","):
            m = _FRAME_PART.match(part)
            if m is None:
                raise ValueError(f"{part.strip()!r} is not a frame number or a range FIRST-LAST (e.g. 1-10,20,30-40)")
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) is not None else first
            if last < first:
                raise ValueError(f"range {first}-{last} runs backwards")
            if last > MAX_INT:
                raise ValueError(f"frame {last} is too large (at most {MAX_INT})")
            if len(numbers) + last - first + 1 > MAX_FRAMES:
                raise ValueError(f"more than {MAX_FRAMES} frames")
            numbers.extend(range(first, last + 1))
    else:
        for n in spec:
            if isinstance(n, bool) or not isinstance(n, int):
                raise ValueError(f"frame numbers are integers, not {n!r}")
            if not 0 <= n <= MAX_INT:
                raise ValueError(f"frame {n} is out of range (0 to {MAX_INT})")
            numbers.append(n)
        if not numbers:
            raise ValueError("no frames given")
        if len(numbers) > MAX_FRAMES:
            raise ValueError(f"more than {MAX_FRAMES} frames")
    seen: set[int] = set()
    for n in numbers:
        if n in seen:
            raise ValueError(f"frame {n} is listed twice")
        seen.add(n)
    return numbers


def _frames(value: Any) -> Any:
    return parse_frames(value) if isinstance(value, str | list | tuple) else value


Stamp = Annotated[
    datetime | None,
    AfterValidator(_utc),
    Field(description="ISO 8601 (e.g. 2024-06-01T12:00:00Z); no zone means UTC; absent: the time of ingest"),
]
JobId = Annotated[int, Field(ge=0, le=MAX_INT, description="the supervisor's job id")]
FrameNo = Annotated[int, Field(ge=0, le=MAX_INT, description="frame number")]
Name = Annotated[str, Field(min_length=1, max_length=255)]
ExitCode = Annotated[int, Field(ge=-(2**31), le=MAX_INT)]
FrameList = Annotated[
    list[FrameNo],
    BeforeValidator(_frames),
    Field(min_length=1),
    WithJsonSchema(
        {
            "description": "frame numbers: ranges and numbers in a string ('1-100', '1-10,20,30-40') or a list of integers",
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+\s*(-\s*\d+\s*)?(,\s*\d+\s*(-\s*\d+\s*)?)*$"},
                {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": MAX_INT}, "minItems": 1},
            ],
        }
    ),
]


class SubmitState(StrEnum):
    """The states a job may be submitted in (the seed: pending by default, or blocked)."""

    PENDING = "pending"
    BLOCKED = "blocked"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobSpec(_Model):
    """A job to submit: the fields of `corral job submit` (and of a snapshot's job)."""

    id: JobId | None = Field(
        default=None,
        description="the supervisor's id for the job; later events name the job by it. "
        "Absent: corral picks the next free id (the smallest above every stored job)",
    )
    name: Name
    priority: Annotated[int, Field(ge=-(2**31), le=MAX_INT)] = 50
    state: SubmitState = Field(
        default=SubmitState.PENDING,
        description="pending (may start at once) or blocked (held until unblocked, usually once its dependencies complete)",
    )
    frames: FrameList
    depends_on: list[JobId] = Field(default_factory=list, description="ids of the jobs this job waits on")
    retry_limit: Annotated[int, Field(ge=0, le=MAX_INT)] = Field(
        default=0, description="how many times automation may retry the job (and each frame)"
    )


class _Event(_Model):
    id: Name = Field(description="unique per event: an event whose id was applied already is skipped")
    at: Stamp = None


class JobSubmitted(_Event):
    """A job was submitted to the supervisor."""

    type: Literal["job_submitted"]
    job: JobSpec


class FrameStarted(_Event):
    """A frame started on a host (and an instance): it is running, one more attempt."""

    type: Literal["frame_started"]
    job: JobId
    frame: FrameNo
    host: Name | None = Field(default=None, description="required unless `instance` is known already")
    instance: Name | None = Field(default=None, description="the job's worker process; created running if unknown")


class FrameCompleted(_Event):
    """A frame finished successfully."""

    type: Literal["frame_completed"]
    job: JobId
    frame: FrameNo
    host: Name | None = Field(default=None, description="absent: where the frame was started")
    instance: Name | None = Field(default=None, description="absent: where the frame was started")
    exit_code: ExitCode | None = 0


class FrameFailed(_Event):
    """A frame failed; `exit_code` must be given (null when the supervisor does not know it)."""

    type: Literal["frame_failed"]
    job: JobId
    frame: FrameNo
    exit_code: ExitCode | None
    host: Name | None = Field(default=None, description="absent: where the frame was started")
    instance: Name | None = Field(default=None, description="absent: where the frame was started")


class InstanceStarted(_Event):
    """A worker process of a job started on a host."""

    type: Literal["instance_started"]
    instance: Name
    job: JobId
    host: Name


class EndState(StrEnum):
    COMPLETE = "complete"
    FAILED = "failed"
    KILLED = "killed"


class InstanceEnded(_Event):
    """A worker process ended: complete when `exit_code` is 0 or absent, failed otherwise, unless `state` says."""

    type: Literal["instance_ended"]
    instance: Name
    job: JobId | None = Field(default=None, description="if given, must be the instance's job")
    host: Name | None = Field(default=None, description="if given, must be the instance's host")
    exit_code: ExitCode | None = None
    state: EndState | None = Field(default=None, description="how it ended; absent: from exit_code")


class WorkerUp(_Event):
    """A host is up (created if unknown)."""

    type: Literal["worker_up"]
    host: Name


class WorkerDown(_Event):
    """A host went down (created if unknown)."""

    type: Literal["worker_down"]
    host: Name


Event = Annotated[
    JobSubmitted | FrameStarted | FrameCompleted | FrameFailed | InstanceStarted | InstanceEnded | WorkerUp | WorkerDown,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
_MODELS: dict[str, type[_Event]] = {
    "job_submitted": JobSubmitted,
    "frame_started": FrameStarted,
    "frame_completed": FrameCompleted,
    "frame_failed": FrameFailed,
    "instance_started": InstanceStarted,
    "instance_ended": InstanceEnded,
    "worker_up": WorkerUp,
    "worker_down": WorkerDown,
}
EVENT_TYPES: tuple[str, ...] = tuple(_MODELS)


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of one line of an event stream (what `corral ingest --schema` prints)."""
    schema = _ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "corral supervisor event"
    schema["description"] = "One line of a `corral ingest` stream: a JSON object with a unique `id` and a `type`."
    return schema


class BadEvent(ValueError):
    """A line or an event that cannot be applied; the message says why."""


def validate_event(data: Any) -> Event:
    """A parsed JSON value as an event, or BadEvent naming every problem."""
    if not isinstance(data, dict):
        raise BadEvent(f"an event is a JSON object, not {_json_kind(data)}")
    kind = data.get("type")
    if kind is None:
        raise BadEvent(f"'type' is missing (one of: {', '.join(EVENT_TYPES)})")
    if kind not in _MODELS:
        raise BadEvent(f"unknown type {kind!r} (one of: {', '.join(EVENT_TYPES)})")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise BadEvent(_describe(err, _MODELS[kind], str(kind))) from None


def parse_line(text: str) -> Event:
    """One line of the stream as an event, or BadEvent (JSON errors name the column)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadEvent(f"not JSON: {err.msg} at column {err.colno}") from None
    return validate_event(data)


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null"
    )


def _describe(err: ValidationError, model: type[_Event], kind: str) -> str:
    problems = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if str(p) != kind]
        where = ".".join(loc) or "(event)"
        if e["type"] == "extra_forbidden":
            owner = JobSpec if loc[:1] == ["job"] and len(loc) > 1 else model
            known = ", ".join(n for n in owner.model_fields)
            problems.append(f"{where}: unknown field (a {'job' if owner is JobSpec else kind} has: {known})")
        elif e["type"] == "missing":
            problems.append(f"{where}: required field is missing")
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            problems.append(f"{where}: {msg}{shown}")
    return f"{kind}: " + "; ".join(problems)


# --- reading lines ---------------------------------------------------------------------

#: What a line source yields when no line is ready yet (follow mode): time to commit.
IDLE = None


def read_lines(
    stream: IO[str],
    *,
    follow: bool = False,
    path: str | Path | None = None,
    poll: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[str | None]:
    """The lines of `stream`, each without its newline; `None` whenever none is ready.

    Without `follow` a file is read to its end.  With `follow` it waits for more, like
    `tail -f`: a partial last line is kept until its newline arrives, and a file at
    `path` that is truncated or replaced (log rotation) is read again from the start.
    Pipes and terminals are read until they close, polled with select(), so the caller
    hears `None` while the feeder is quiet (and commits what it has).  The lines end
    early when `stop()` says so (checked at least every `poll` seconds).
    """
    fd = _pipe_fd(stream)
    if fd is not None:
        yield from _pipe_lines(fd, poll, stop)
        return
    partial = ""
    while not stop():
        line = stream.readline()
        if line.endswith("\n"):
            yield partial + line.rstrip("\r\n")
            partial = ""
            continue
        partial += line
        if not follow:
            break
        yield IDLE
        if stop():
            break
        time.sleep(poll)
        if path is not None:
            stream = _reopened(stream, Path(path))
    if partial and not stop():
        yield partial.rstrip("\r")


def _pipe_fd(stream: IO[str]) -> int | None:
    """The descriptor of a pipe, socket or terminal (select() works on it); None for files."""
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return None  # an in-memory stream: read it like a file
    if stat.S_ISREG(mode) or os.name == "nt":
        return None
    return fd


def _pipe_lines(fd: int, poll: float, stop: Callable[[], bool]) -> Iterator[str | None]:
    buffer = b""
    while not stop():
        try:
            ready, _, _ = select.select([fd], [], [], poll)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, but be safe
            continue
        if not ready:
            yield IDLE
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", errors="replace").rstrip("\r")
    if buffer.strip() and not stop():
        yield buffer.decode("utf-8", errors="replace").rstrip("\r")


def _reopened(stream: IO[str], path: Path) -> IO[str]:
    """Start again when the file was truncated, or replaced by a new one (rotation)."""
    try:
        now = os.stat(path)
    except OSError:
        return stream  # moved away and not recreated yet: keep reading the old one
    old = os.fstat(stream.fileno())
    if (now.st_ino, now.st_dev) != (old.st_ino, old.st_dev):
        stream.close()
        return path.open(encoding="utf-8")
    if now.st_size < stream.tell():
        stream.seek(0)
    return stream


# --- ingesting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BadLine:
    """A line that changed nothing, with its number and why."""

    line: int
    reason: str
    event_id: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class IngestReport:
    """What an ingest did, line by line: applied, skipped as already applied, bad."""

    applied: list[EventResult] = field(default_factory=list)
    skipped: list[EventResult] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    lines: int = 0

    def add(self, other: IngestReport) -> None:
        self.applied += other.applied
        self.skipped += other.skipped
        self.bad += other.bad
        self.lines = max(self.lines, other.lines)

    def summary(self) -> str:
        return (
            f"{self.lines} line(s): {len(self.applied)} event(s) applied, "
            f"{len(self.skipped)} skipped (already applied), {len(self.bad)} bad line(s)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "applied": len(self.applied),
            "skipped": len(self.skipped),
            "bad": [{"line": b.line, "id": b.event_id, "reason": b.reason} for b in self.bad],
        }


def ingest_lines(
    store: Store,
    lines: Iterable[str | None],
    *,
    batch: int = 500,
    now: Callable[[], datetime] | None = None,
    on_batch: Callable[[IngestReport], None] | None = None,
    actor: str = "supervisor",
) -> IngestReport:
    """Validate and apply a stream of event lines in order, `batch` lines per transaction.

    Each event runs in its own savepoint: a bad line (invalid, or naming an unknown
    job or frame) is reported with its number and rolls back alone; the good lines
    around it apply.  Events whose id was applied before are skipped.  A `None` in
    `lines` (the source is idle) commits what is pending.  `on_batch` hears each
    committed batch's report (the CLI prints bad lines as they come).
    """
    total = IngestReport()
    pending: list[tuple[int, Event]] = []
    bad: list[BadLine] = []
    number = 0

    def flush() -> None:
        nonlocal pending, bad
        if not pending and not bad:
            return
        part = IngestReport(bad=bad, lines=number)
        if pending:
            results = store.apply_events(pending, now=now, actor=actor)
            for result in results:
                if isinstance(result, BadLine):
                    part.bad.append(result)
                elif result.skipped:
                    part.skipped.append(result)
                else:
                    part.applied.append(result)
            part.bad.sort(key=lambda b: b.line)
        pending, bad = [], []
        total.add(part)
        if on_batch is not None:
            on_batch(part)

    for text in lines:
        if text is None:
            flush()
            continue
        number += 1
        if not text.strip():
            continue
        try:
            pending.append((number, parse_line(text)))
        except BadEvent as err:
            bad.append(BadLine(number, str(err), _peek_id(text)))
        if len(pending) >= batch:
            flush()
    flush()
    total.lines = number
    return total


def _peek_id(text: str) -> str | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def events_of(items: Sequence[Event]) -> list[tuple[int, Event]]:
    """Number already-validated events like lines (1, 2, ...) for `apply_events`."""
    return list(enumerate(items, start=1))
