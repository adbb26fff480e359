"""Afanasy's "error hosts" text: which hosts failed which task, how often, and when.

Afanasy keeps no list of failed runs; it keeps, per block and per task, a count of
errors per host and the time of the latest.  ``get jobs ids:[J] mode:error_hosts``
returns them as text lines (server/block.cpp, server/task.cpp)::

    Block['main'] error hosts:
    rndbad: 3 at Wed 02 Dec 16:03.37 - ! AVOIDING !
    Task[0] error hosts:
    rndbad: 2 at Wed 02 Dec 16:03.35

Every block writes its header line, in block order, then its own (aggregate) host lines,
then each task that has errors.  The time is the server's ``strftime("%a %d %b %H:%M.%S")``
in the server's local time, without a year (`when`).

Text meant for people, so it is parsed defensively: a line that fits no shape is
skipped and reported, never raised on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

_BLOCK = re.compile(r"^Block\['(?P<name>.*)'\] error hosts:\s*$")
_TASK = re.compile(r"^Task\[(?P<task>\d+)\] error hosts:\s*$")
_HOST = re.compile(r"^(?P<host>[^\s:][^:]*): (?P<count>\d{1,9}) at (?P<when>.*?)(?P<avoid>\s*- ! AVOIDING !)?\s*$")
_WHEN = re.compile(r"^(?P<wd>[A-Za-z]{3}) (?P<day>\d{1,2}) (?P<mon>[A-Za-z]{3}) (?P<h>\d{1,2}):(?P<m>\d{2})\.(?P<s>\d{2})$")
#: Lines that carry nothing: the task variant's "none", the binary variant's title.
_QUIET = re.compile(r'^(The task has no error hosts\.|Job ".*" error hosts:)?\s*$')
_MONTHS = {m: n for n, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DAYS = {d: n for n, d in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))}
#: How far after `now` a time may lie and still be this year's: the server's clock and
#: zone may differ from corral's by hours; a year is the only other candidate.
SLACK = timedelta(days=1)
#: The most error counts one line may stand for: a count is turned into that many runs.
MAX_COUNT = 10_000


@dataclass(frozen=True)
class ErrorHost:
    """One host line: `count` errors of `host`, the latest at `local` (the server's wall
    clock, naive; None when the time could not be read).  `task` None: the block's own
    line (the block's total for that host, which the task lines break down)."""

    block: int
    task: int | None
    host: str
    count: int
    local: datetime | None
    avoiding: bool


def when(text: str, now_local: datetime) -> tuple[datetime | None, str | None]:
    """A time such as ``Wed 02 Dec 16:03.37`` as a naive datetime, and a problem (or None).

    The line has no year: it is the latest year that puts the time no later than
    `now_local` (the server's wall clock now) plus `SLACK`, so an entry from late December
    read in early January lands in the old year.  The weekday is checked, not trusted:
    a mismatch is reported, the date kept."""
    found = _WHEN.match(text.strip())
    if not found:
        return None, f"'{text}' is not a time of the form 'Wed 02 Dec 16:03.37'"
    month = _MONTHS.get(found["mon"].lower())
    weekday = _DAYS.get(found["wd"].lower())
    if month is None:
        return None, f"'{found['mon']}' in '{text}' is not an English month"
    h, m, s, day = int(found["h"]), int(found["m"]), int(found["s"]), int(found["day"])
    limit = now_local + SLACK
    for year in range(limit.year, limit.year - 9, -1):  # 9: a 29 February is met within 8 years
        try:
            at = datetime(year, month, day, h, m, s)
        except ValueError:
            continue
        if at <= limit:
            if weekday is not None and at.weekday() != weekday:
                return at, f"'{text}': {at:%d %b %Y} is not a {found['wd']} (kept {at.year})"
            return at, None
    return None, f"'{text}' is no date"


def parse(lines: Iterable[object], now_local: datetime) -> tuple[list[ErrorHost], list[str]]:
    """Every host line of a job's error hosts, with the block and task it belongs to;
    and the lines skipped, each with why."""
    out: list[ErrorHost] = []
    problems: list[str] = []
    block, task = -1, None
    for raw in lines:
        if not isinstance(raw, str):
            problems.append(f"error hosts: skipped a {type(raw).__name__} where a line of text was expected")
            continue
        for line in raw.splitlines() or [""]:
            if _BLOCK.match(line):
                block, task = block + 1, None
                continue
            task_line = _TASK.match(line)
            if task_line:
                task = int(task_line["task"])
                if block < 0:
                    block = 0  # the task variant (one task's text) has no block line
                continue
            host = _HOST.match(line)
            if host:
                if block < 0:
                    problems.append(f"error hosts: skipped '{line}': it comes before any block")
                    continue
                local, problem = when(host["when"], now_local)
                if problem:
                    problems.append(f"error hosts: {problem}")
                count = min(int(host["count"]), MAX_COUNT)
                out.append(ErrorHost(block, task, host["host"], count, local, bool(host["avoid"])))
                continue
            if not _QUIET.match(line):
                problems.append(f"error hosts: skipped '{_clip(line)}': not a block, task or host line")
    return out, problems


def _clip(text: str, limit: int = 120) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
