"""The supervisor's event feed: the models, parsing and validation of its JSON lines.

corral runs beside a supervisor (Qube!, Deadline, Tractor...), and the supervisor's
news reaches corral's store as events: a job submitted, a frame started, completed or
failed, an instance started or ended, a worker up or down.  Each event is one JSON
object on one line, with a unique `id` (so a replayed stream is skipped, never counted
twice) and a `type`; docs/ingest.md documents the format and `event_json_schema()` is
its JSON Schema, generated from the models below that validate every line.

This module is the format alone, pure: reading lines from a file or a pipe and the
batching loop is `corral.ingest` (`corral ingest`), and applying events to the store is
`corral.store.events`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from corral.farm import MAX_FRAMES, MAX_INT, MAX_NAME
from corral.untrusted import no_controls

#: How deep a line's JSON may nest (an event is two levels deep): a deeper one is a bad
#: line, not a RecursionError that ends the whole file.
MAX_JSON_DEPTH = 32


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_FRAME_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*(?:[x:]\s*(\d+)\s*)?)?$")


def parse_frames(spec: str | Iterable[int]) -> list[int]:
    """Frame numbers from `1-100`, `1-10,20,30-40`, `1-100x10` (every tenth: 1, 11, ... 91;
    `1-100:10` too, as wranglers write steps in every farm manager) or a list of integers,
    in the order given.

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
                raise ValueError(f"{part.strip()!r} is not a frame number or a range FIRST-LAST[xSTEP] "
                                 "(e.g. 1-10,20,30-40 or 1-100x10)")
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) is not None else first
            step = int(m.group(3)) if m.group(3) is not None else 1
            if last < first:
                raise ValueError(f"range {first}-{last} runs backwards")
            if step < 1:
                raise ValueError(f"range {part.strip()}: the step is 1 or more")
            if last > MAX_INT:
                raise ValueError(f"frame {last} is too large (at most {MAX_INT})")
            if len(numbers) + (last - first) // step + 1 > MAX_FRAMES:
                raise ValueError(f"more than {MAX_FRAMES} frames")
            numbers.extend(range(first, last + 1, step))
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
# Numbers are strict: `"job": true` or `"exit_code": "0"` is a supervisor's bug to report,
# not a value to guess at.
JobId = Annotated[int, Field(strict=True, ge=0, le=MAX_INT, description="the supervisor's job id")]
FrameNo = Annotated[int, Field(strict=True, ge=0, le=MAX_INT, description="frame number")]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(no_controls)]
ExitCode = Annotated[int, Field(strict=True, ge=-(2**31), le=MAX_INT)]
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
    priority: Annotated[int, Field(strict=True, ge=-(2**31), le=MAX_INT)] = 50
    state: SubmitState = Field(
        default=SubmitState.PENDING,
        description="pending (may start at once) or blocked (held until unblocked, usually once its dependencies complete)",
    )
    frames: FrameList
    depends_on: list[JobId] = Field(default_factory=list, description="ids of the jobs this job waits on")
    retry_limit: Annotated[int, Field(strict=True, ge=0, le=MAX_INT)] = Field(
        default=0, description="how many times automation may retry the job (and each frame)"
    )
    owner: Name | None = Field(default=None, description="who submitted the job (policies read it as `owner`)")
    layers: dict[Name, FrameList] = Field(
        default_factory=dict,
        description="the task type (layer, block) of its frames: layer name to frame numbers, each among `frames`; "
        "a frame in none has no layer",
    )

    @model_validator(mode="after")
    def _layers_within_frames(self) -> JobSpec:
        frames, seen = set(self.frames), set[int]()
        for name, numbers in self.layers.items():
            outside = sorted(set(numbers) - frames)
            if outside:
                raise ValueError(f"layer {name!r} names frame(s) {outside[:5]} that are not among the job's frames")
            twice = sorted(seen & set(numbers))
            if twice:
                raise ValueError(f"frame(s) {twice[:5]} are in two layers; a frame has one")
            seen |= set(numbers)
        return self

    def layer_of(self) -> dict[int, str]:
        """Each frame's layer."""
        return {n: name for name, numbers in self.layers.items() for n in numbers}


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
    if not isinstance(kind, str) or kind not in _MODELS:  # a list or an object would not even hash
        raise BadEvent(f"unknown type {kind!r} (one of: {', '.join(EVENT_TYPES)})")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise BadEvent(_describe(err, _MODELS[kind], str(kind))) from None


def parse_line(text: str) -> Event:
    """One line of the stream as an event, or BadEvent (JSON errors name the column).

    A good line is parsed and validated in one pass by pydantic's own JSON parser (half
    the cost of `json.loads` then validation: a tenth of the feed's time).  A line it
    refuses takes the path below, which accepts exactly what it always did and says
    what is wrong in corral's words (the column of a JSON error, every field at fault)."""
    try:
        return _ADAPTER.validate_json(text)
    except ValidationError:
        pass
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadEvent(f"not JSON: {err.msg} at column {err.colno}") from None
    except RecursionError:
        raise BadEvent(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    # Only a line with that many brackets can nest that deep: most lines skip the walk.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(data, MAX_JSON_DEPTH):
        raise BadEvent(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return validate_event(data)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels in a parsed JSON value
    (walked without recursion: the value may be as deep as the parser allowed)."""
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth + 1 > limit:
            return True
        todo.extend((child, depth + 1) for child in children)
    return False


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


@dataclass(frozen=True)
class BadLine:
    """A line that changed nothing, with its number and why."""

    line: int
    reason: str
    event_id: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"
