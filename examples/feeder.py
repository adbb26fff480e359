#!/usr/bin/env python3
"""A small feeder for `corral ingest`: supervisor news as JSON lines.  Standard library only.

A supervisor plugin appends one event per line to a spool file, and one long-running
`corral ingest --follow spool.jsonl` applies them to corral's store (in order, each
once: replaying the spool is harmless).  Call it from Python:

    import feeder
    feeder.emit(feeder.frame_failed(job=12, frame=3, exit_code=139, host="node07"), "/farm/corral/spool.jsonl")

or from a shell (a Qube! callback, a Deadline event plugin running a process):

    python feeder.py --spool /farm/corral/spool.jsonl frame_failed --job 12 --frame 3 --exit-code 139 --host node07
    python feeder.py job_submitted --name shot_010_comp --frames 1-100 --state blocked --depends-on 11 | corral ingest

Without --spool the line goes to standard output.  Each event gets a fresh id unless
--id gives one (give the supervisor's own event id when it has one: a re-sent event
is then skipped by corral).  docs/ingest.md describes every field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import datetime, timezone
from typing import Any

TYPES = (
    "job_submitted",
    "frame_started",
    "frame_completed",
    "frame_failed",
    "instance_started",
    "instance_ended",
    "worker_up",
    "worker_down",
)


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")  # noqa: UP017 - runs on old Pythons too


def event(type_: str, *, id: str | None = None, at: str | None = None, **fields: Any) -> dict[str, Any]:
    """One event: `type_` and the fields it needs; None fields are left out."""
    if type_ not in TYPES:
        raise ValueError(f"unknown event type {type_!r} (one of: {', '.join(TYPES)})")
    out: dict[str, Any] = {"id": id or uuid.uuid4().hex, "type": type_, "at": at or now()}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def job_submitted(name: str, frames: str | list[int], *, job_id: int | None = None, state: str = "pending",
                  depends_on: list[int] | None = None, retry_limit: int = 0, priority: int = 50, **kw: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"name": name, "frames": frames, "state": state, "retry_limit": retry_limit, "priority": priority}
    if job_id is not None:
        job["id"] = job_id
    if depends_on:
        job["depends_on"] = list(depends_on)
    return event("job_submitted", job=job, **kw)


def frame_started(job: int, frame: int, host: str, instance: str | None = None, **kw: Any) -> dict[str, Any]:
    return event("frame_started", job=job, frame=frame, host=host, instance=instance, **kw)


def frame_completed(job: int, frame: int, host: str | None = None, instance: str | None = None, **kw: Any) -> dict[str, Any]:
    return event("frame_completed", job=job, frame=frame, host=host, instance=instance, **kw)


def frame_failed(job: int, frame: int, exit_code: int | None, host: str | None = None, instance: str | None = None,
                 **kw: Any) -> dict[str, Any]:
    out = event("frame_failed", job=job, frame=frame, host=host, instance=instance, **kw)
    out["exit_code"] = exit_code  # required, even when unknown (null)
    return out


def instance_started(instance: str, job: int, host: str, **kw: Any) -> dict[str, Any]:
    return event("instance_started", instance=instance, job=job, host=host, **kw)


def instance_ended(instance: str, exit_code: int | None = None, state: str | None = None, **kw: Any) -> dict[str, Any]:
    return event("instance_ended", instance=instance, exit_code=exit_code, state=state, **kw)


def worker_up(host: str, **kw: Any) -> dict[str, Any]:
    return event("worker_up", host=host, **kw)


def worker_down(host: str, **kw: Any) -> dict[str, Any]:
    return event("worker_down", host=host, **kw)


def line(ev: dict[str, Any]) -> str:
    return json.dumps(ev, separators=(",", ":"), sort_keys=False) + "\n"


def emit(ev: dict[str, Any], spool: str | None = None) -> None:
    """Append the event to `spool` as one line, in a single write (whole lines, even with many writers)."""
    data = line(ev).encode("utf-8")
    if spool is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    fd = os.open(spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # Windows: O_APPEND alone
            pass
        os.write(fd, data)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write one supervisor event for `corral ingest`.")
    parser.add_argument("--spool", help="append to this file (default: standard output)")
    parser.add_argument("--id", help="the event's id (default: a fresh one)")
    parser.add_argument("--at", help="when it happened, ISO 8601 (default: now)")
    sub = parser.add_subparsers(dest="type", required=True)
    p = sub.add_parser("job_submitted")
    p.add_argument("--name", required=True)
    p.add_argument("--frames", required=True, help="1-100, or 1-10,20,30-40")
    p.add_argument("--job", type=int, help="the supervisor's job id")
    p.add_argument("--state", choices=("pending", "blocked"), default="pending")
    p.add_argument("--depends-on", type=int, action="append", default=[])
    p.add_argument("--retry-limit", type=int, default=0)
    p.add_argument("--priority", type=int, default=50)
    for name in ("frame_started", "frame_completed", "frame_failed"):
        p = sub.add_parser(name)
        p.add_argument("--job", type=int, required=True)
        p.add_argument("--frame", type=int, required=True)
        p.add_argument("--host", required=name == "frame_started")
        p.add_argument("--instance")
        if name == "frame_failed":
            p.add_argument("--exit-code", type=int, help="leave out when unknown")
    p = sub.add_parser("instance_started")
    p.add_argument("--instance", required=True)
    p.add_argument("--job", type=int, required=True)
    p.add_argument("--host", required=True)
    p = sub.add_parser("instance_ended")
    p.add_argument("--instance", required=True)
    p.add_argument("--exit-code", type=int)
    p.add_argument("--state", choices=("complete", "failed", "killed"))
    for name in ("worker_up", "worker_down"):
        sub.add_parser(name).add_argument("--host", required=True)
    a = parser.parse_args(argv)
    kw = {"id": a.id, "at": a.at}
    if a.type == "job_submitted":
        ev = job_submitted(a.name, a.frames, job_id=a.job, state=a.state, depends_on=a.depends_on,
                           retry_limit=a.retry_limit, priority=a.priority, **kw)
    elif a.type == "frame_started":
        ev = frame_started(a.job, a.frame, a.host, a.instance, **kw)
    elif a.type == "frame_completed":
        ev = frame_completed(a.job, a.frame, a.host, a.instance, **kw)
    elif a.type == "frame_failed":
        ev = frame_failed(a.job, a.frame, a.exit_code, a.host, a.instance, **kw)
    elif a.type == "instance_started":
        ev = instance_started(a.instance, a.job, a.host, **kw)
    elif a.type == "instance_ended":
        ev = instance_ended(a.instance, a.exit_code, a.state, **kw)
    else:
        ev = event(a.type, host=a.host, **kw)
    emit(ev, a.spool)
    return 0


if __name__ == "__main__":
    sys.exit(main())
