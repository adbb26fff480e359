"""Reading a whole farm from Afanasy: the requests, in order, and what a failure means.

One read is: ``get jobs``; per job not done, its task progress; per job with errors,
its error hosts; ``get renders``.  Afanasy has no snapshot across requests, so a job
may be deleted between them (its id then answers "Invalid ID", or another job's
progress once the id is reused): that job is left out of this read and said so; the
next read has it right.  The server unreachable, or answering nonsense to the list of
jobs or renders, fails the whole read (`AfanasyReader` raises `FarmUnreachable`): a
decision on half a farm could undo what the missing half shows.
"""

from __future__ import annotations

import json
from datetime import datetime, tzinfo
from typing import Any

from corral.afanasy.mapping import SYSTEM_JOB_ID, Index, flags, has_errors, map_farm
from corral.afanasy.wire import AfanasyError, BadReply, Client, Refused
from corral.farm import Farm
from corral.ports import FarmUnreachable


def local_zone() -> tzinfo:
    """The zone of the machine corral runs on: Afanasy's error times are its server's
    wall clock, taken to be the same zone unless the replies show otherwise."""
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone


#: A job's details as last read, by serial: (its summary as listed, its progress reply,
#: its error-hosts reply).  See `read_farm`'s `cache`.
Details = dict[int, tuple[str, dict[str, Any] | None, dict[str, Any] | None]]


def read_farm(client: Client, now: datetime, tz: tzinfo | None = None, cache: Details | None = None
              ) -> tuple[Farm, Index, list[str]]:
    """The farm as Afanasy has it now, the index to address it, and the problems met
    (jobs skipped, lines not understood).  Raises Unreachable, BadReply or Refused
    (`corral.afanasy.wire`) when the jobs or renders cannot be listed.

    With `cache` (kept by the caller between reads), a job whose summary in the job list
    is exactly as last read is not asked for its tasks again: a task that starts, ends,
    fails or is restarted changes the job's counters, progress bar or error hosts in that
    summary, so an unchanged summary means unchanged tasks.  A farm's idle, paused and
    stuck jobs then cost nothing after the first read; only the jobs that move are read."""
    jobs = _listed(client.get({"type": "jobs"}), "jobs")
    problems: list[str] = []
    progress: dict[int, dict[str, Any]] = {}
    errors: dict[int, dict[str, Any]] = {}
    kept = []
    for job in jobs["jobs"]:
        ident = job.get("id") if isinstance(job, dict) else None
        if not isinstance(ident, int) or ident == SYSTEM_JOB_ID:
            kept.append(job)  # the mapping reports what it cannot read
            continue
        serial = job.get("serial")
        summary = json.dumps(job, sort_keys=True)
        known = cache.get(serial) if cache is not None and isinstance(serial, int) else None
        if known is not None and known[0] == summary:
            if known[1] is not None:
                progress[ident] = known[1]
            if known[2] is not None:
                errors[ident] = known[2]
            kept.append(job)
            continue
        try:
            if "DON" not in flags(job.get("state")):
                progress[ident] = client.get({"type": "jobs", "ids": [ident], "mode": "progress"})
            if has_errors(job):
                errors[ident] = client.get({"type": "jobs", "ids": [ident], "mode": "error_hosts"})
        except Refused as err:
            problems.append(f"job serial {job.get('serial')} ({job.get('name')}): skipped: it was deleted while "
                            f"the farm was read (Afanasy: {err.text})")
            continue
        kept.append(job)
        if cache is not None and isinstance(serial, int):
            cache[serial] = (summary, progress.get(ident), errors.get(ident))
    if cache is not None:  # forget the jobs that are gone
        listed = {j.get("serial") for j in kept if isinstance(j, dict)}
        for gone in [k for k in cache if k not in listed]:
            del cache[gone]
    renders = _listed(client.get({"type": "renders"}), "renders")
    farm, index, more = map_farm({"jobs": kept}, progress, errors, renders, now, tz or local_zone())
    return farm, index, problems + more


def _listed(reply: dict[str, Any], key: str) -> dict[str, Any]:
    """A ``get`` list reply: ``{key: [...]}``; an empty farm may leave the key out."""
    reply.setdefault(key, [])
    if not isinstance(reply[key], list):
        raise BadReply(f'expected {{"{key}": [...]}} listing the {key}, got a {type(reply[key]).__name__}')
    return reply


class AfanasyReader:
    """Afanasy as a `corral.ports.FarmReader`: ``--farm afanasy://HOST:PORT``."""

    def __init__(self, server: str, timeout: float = 10.0, user: str = "corral", tz: tzinfo | None = None) -> None:
        self.client = Client(server, timeout=timeout, user=user)
        self.name = f"afanasy://{server}"
        self.tz = tz
        #: The last read's index (how corral's ids map to Afanasy's now).
        self.index: Index | None = None
        self.details: Details = {}  # jobs' tasks as last read (see `read_farm`)

    def read(self, now: datetime) -> tuple[Farm, list[str]]:
        try:
            farm, index, problems = read_farm(self.client, now, self.tz, self.details)
        except AfanasyError as err:
            raise FarmUnreachable(f"{self.name}: {err}") from err
        self.index = index
        return farm, problems

    def close(self) -> None:
        """Nothing held: every request has its own connection."""
