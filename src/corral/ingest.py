"""`corral ingest`: the supervisor's event lines read from a file or a pipe and applied
to the store in batches, in order, once each.

The format of a line is `corral.feed`; writing an event into the store is
`corral.store.events`.  This module is the shell between them: it reads lines (to the
end, or following a growing file like tail -f), and hands them to the store in batches,
reporting each line as applied, skipped (already applied) or bad.
"""

from __future__ import annotations

import json
import os
import select
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from corral.feed import BadEvent, BadLine, Event, parse_line
from corral.ports import SUPERVISOR

if TYPE_CHECKING:
    from corral.store.events import EventResult
    from corral.store.store import Store

#: What a line source yields when no line is ready yet (follow mode): time to commit.
IDLE = None

#: Lines a transaction.  Each commit waits for the disk, so a backlog is applied fastest
#: in large batches: 2,000 lines commit a quarter as often as 500 (SQLite, 1M frames
#: stored: 16,400 events a second against 13,900, docs/benchmarks.md "The feed") and hold
#: the writer's lock for about a tenth of a second at that rate.  A quiet source commits
#: what it has after `--poll` seconds, so a small stream never waits for a batch to fill.
DEFAULT_BATCH = 2000
#: Seconds a line waits at most for its batch to fill: a source that never pauses (a pipe
#: fed a few hundred events a second, never quiet for `--poll`) still commits four times
#: a second, so a policy's reaction is not held back by the batch's size.
DEFAULT_MAX_WAIT = 0.25


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
    batch: int = DEFAULT_BATCH,
    now: Callable[[], datetime] | None = None,
    on_batch: Callable[[IngestReport], None] | None = None,
    actor: str = SUPERVISOR,
    max_wait: float = DEFAULT_MAX_WAIT,
    clock: Callable[[], float] = time.monotonic,
) -> IngestReport:
    """Validate and apply a stream of event lines in order, `batch` lines per transaction
    (or fewer: what came in the `max_wait` seconds since the batch's first line).

    A batch is applied at once (`corral.store.feedbatch`): a bad line (invalid, or
    naming an unknown job or frame) is reported with its number and changes nothing;
    the good lines around it apply.  Events whose id was applied before are skipped.  A `None` in
    `lines` (the source is idle) commits what is pending.  `on_batch` hears each
    committed batch's report (the CLI prints bad lines as they come).
    """
    total = IngestReport()
    pending: list[tuple[int, Event]] = []
    bad: list[BadLine] = []
    number = 0
    due = 0.0  # when the batch's first line has waited long enough

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
        if not pending:
            due = clock() + max_wait
        try:
            pending.append((number, parse_line(text)))
        except BadEvent as err:
            bad.append(BadLine(number, str(err), _peek_id(text)))
        if len(pending) >= batch or (pending and clock() >= due):
            flush()
    flush()
    total.lines = number
    return total


def _peek_id(text: str) -> str | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
