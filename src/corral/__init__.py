"""corral: an auto-wrangling rules engine for render farms.

The public Python API (docs/api.md) is importable from here:

    from corral import Corral

    with Corral.open("sqlite:///corral.db") as corral:
        job = corral.submit_job("shot_010", frames="1-100")

The names below are imported on first use, so `import corral.states` (or the CLI)
does not pay for the store and the rule engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from corral.api import ActionRefused, Corral, PolicyLoadError
    from corral.farm import Farm, Frame, FrameRun, Instance, Job, Worker
    from corral.feed import (
        BadEvent,
        BadLine,
        Event,
        JobSpec,
        SubmitState,
        event_json_schema,
        parse_frames,
        parse_line,
        validate_event,
    )
    from corral.ingest import IngestReport
    from corral.states import Action, FrameState, InstanceState, JobState, Kind, WorkerState
    from corral.store import Store, StoreError
    from corral.store.events import EventRejected, EventResult

#: Where each public name lives (imported on first use).
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("ActionRefused", "Corral", "PolicyLoadError"), "corral.api"),
    **dict.fromkeys(("Farm", "Frame", "FrameRun", "Instance", "Job", "Worker"), "corral.farm"),
    **dict.fromkeys(
        (
            "BadEvent",
            "BadLine",
            "Event",
            "JobSpec",
            "SubmitState",
            "event_json_schema",
            "parse_frames",
            "parse_line",
            "validate_event",
        ),
        "corral.feed",
    ),
    "IngestReport": "corral.ingest",
    **dict.fromkeys(("Action", "FrameState", "InstanceState", "JobState", "Kind", "WorkerState"), "corral.states"),
    **dict.fromkeys(("Store", "StoreError"), "corral.store"),
    **dict.fromkeys(("EventRejected", "EventResult"), "corral.store.events"),
}

__all__ = [
    "Action",
    "ActionRefused",
    "BadEvent",
    "BadLine",
    "Corral",
    "Event",
    "EventRejected",
    "EventResult",
    "Farm",
    "Frame",
    "FrameRun",
    "FrameState",
    "IngestReport",
    "Instance",
    "InstanceState",
    "Job",
    "JobSpec",
    "JobState",
    "Kind",
    "PolicyLoadError",
    "Store",
    "StoreError",
    "SubmitState",
    "Worker",
    "WorkerState",
    "__version__",
    "event_json_schema",
    "parse_frames",
    "parse_line",
    "validate_event",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
