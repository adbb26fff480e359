"""The Afanasy sink: corral's decisions as Afanasy actions (`corral.ports.Sink`).

What each corral action becomes (docs/afanasy.md has the table, and why):

- job block, suspend: operation ``pause`` (the job goes OFF; running tasks finish);
  unblock: ``start``; kill: ``stop`` (running tasks killed, the job OFF);
  interrupt: ``restart_running``;
- job retry: ``start`` if the job is OFF, ``reset_error_hosts``, then ``restart_errors``;
  resubmit: the new ``priority`` if given, ``start`` if OFF, then ``restart``;
- frame block: task ``suspend``; unblock: ``continue``; kill: ``skip`` (Afanasy's way to
  give a task up: it counts as done); retry, resubmit: ``restart``; interrupt:
  ``restart_running``;
- instance block: the render added to the job's ``hosts_mask_exclude`` (`masks`), then
  the job's tasks running there restarted (``restart_running``), and with
  ``requeue_failed`` its tasks in error there (``restart_errors``); unblock: the render
  taken out of the mask again; interrupt: the job's tasks running there restarted;
- worker block: render ``paused`` (or ``NIMBY``: the sink's ``quarantine``); unblock:
  render ``nimby: false, paused: false``.

Each delivery looks the job up by its serial first (Afanasy reuses ids): a job deleted
meanwhile is a refusal, not a failure.  An action of several requests sends the ones
that are harmless twice first, so a send retried after a failure half way repeats
nothing that matters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from corral import outbox
from corral.afanasy import masks
from corral.afanasy.mapping import JobRef, flags, job_ref
from corral.afanasy.wire import AfanasyError, BadReply, Client, Refused
from corral.outbox import Delivered, Entry, Failed, Outcome
from corral.states import Action, Kind

J, F, INST, W = Kind.JOB, Kind.FRAME, Kind.INSTANCE, Kind.WORKER
A = Action

#: What the sink can deliver.  Not carried: an instance's kill and retry (Afanasy has no
#: process per job and host to end or start again; the nearest, skipping or resetting
#: every task the host touched, would do far more than corral decided).
CARRIES: frozenset[tuple[Kind, Action]] = frozenset({
    (J, A.BLOCK), (J, A.UNBLOCK), (J, A.KILL), (J, A.RETRY), (J, A.RESUBMIT), (J, A.SUSPEND), (J, A.INTERRUPT),
    (F, A.BLOCK), (F, A.UNBLOCK), (F, A.INTERRUPT), (F, A.KILL), (F, A.RETRY), (F, A.RESUBMIT),
    (INST, A.BLOCK), (INST, A.UNBLOCK), (INST, A.INTERRUPT),
    (W, A.BLOCK), (W, A.UNBLOCK),
})

#: Task operations per frame action.
TASK_OPERATIONS: dict[Action, str] = {
    A.BLOCK: "suspend", A.UNBLOCK: "continue", A.INTERRUPT: "restart_running", A.KILL: "skip",
    A.RETRY: "restart", A.RESUBMIT: "restart",
}
#: Job operations per job action, the last request of the action.
JOB_OPERATIONS: dict[Action, str] = {
    A.BLOCK: "pause", A.SUSPEND: "pause", A.UNBLOCK: "start", A.KILL: "stop", A.RETRY: "restart_errors",
    A.RESUBMIT: "restart", A.INTERRUPT: "restart_running",
}


#: How long after a decision a task may still run the run it was to stop: Afanasy stops
#: a task through its render, which takes a heartbeat or two.
SETTLE = 30.0


class AfanasyConfig(Protocol):
    """What `from_config` reads of a sinks file's ``type: afanasy`` entry
    (`corral.sinks.config.AfanasySinkConfig`, which imports this module: hence a protocol)."""

    @property
    def name(self) -> str: ...
    @property
    def server(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def quarantine(self) -> str: ...


class Impossible(Exception):
    """The row cannot be carried out as it stands: what it names no longer exists in
    Afanasy, or Afanasy's own settings stand in the way.  A refusal, not a failure:
    sending it again would not help."""


class AfanasySink:
    """Delivers outbox rows to one afserver."""

    def __init__(self, name: str, client: Client, quarantine: str = "paused",
                 clock: Callable[[], float] = time.time) -> None:
        if quarantine not in ("paused", "nimby"):
            raise ValueError(f"quarantine is paused or nimby, not {quarantine!r}")
        self.name = name
        self.client = client
        self.quarantine = quarantine
        self.clock = clock  # epoch seconds, for `took` (tests set it)

    @classmethod
    def from_config(cls, cfg: AfanasyConfig) -> AfanasySink:
        """The sink a sinks file's ``type: afanasy`` entry describes."""
        return cls(cfg.name, Client(cfg.server, timeout=cfg.timeout, user=cfg.user), cfg.quarantine)

    def carries(self) -> frozenset[tuple[Kind, Action]]:
        return CARRIES

    def close(self) -> None:
        """Nothing held: every request has its own connection."""

    # --- delivering ---------------------------------------------------------------------

    def deliver(self, entry: Entry) -> Outcome:
        if (entry.kind, entry.action) not in CARRIES:
            return outbox.Refused(f"the afanasy sink cannot {entry.action} {entry.kind}s")
        handlers: dict[Kind, Callable[[Entry], str]] = {
            J: self._job, F: self._frame, INST: self._instance, W: self._worker}
        try:
            return Delivered(handlers[entry.kind](entry))
        except (Impossible, masks.MaskError) as err:
            return outbox.Refused(str(err))
        except Refused as err:
            return outbox.Refused(f"Afanasy refused it: {err.text}")
        except AfanasyError as err:  # unreachable, timed out, or an answer that is not Afanasy's
            return Failed(str(err))
        except ValueError as err:  # a job listed without what addressing it needs
            return Failed(f"Afanasy's answer for {entry.describe()} is not usable: {err}")

    def _job(self, entry: Entry) -> str:
        job = self.lookup(serial_of(entry))
        ref = job_ref(job)
        said = []
        if entry.action is A.RESUBMIT and isinstance(entry.params.get("priority"), int):
            said.append(self.client.act("jobs", [ref.id], params={"priority": entry.params["priority"]}))
        if entry.action in (A.RETRY, A.RESUBMIT) and "OFF" in flags(job.get("state")):
            said.append(self.client.act("jobs", [ref.id], "start"))  # corral's retry lifts the hold
        if entry.action is A.RETRY:  # else a block that avoids every host never runs the tasks again
            said.append(self.client.act("jobs", [ref.id], "reset_error_hosts"))
        said.append(self.client.act("jobs", [ref.id], JOB_OPERATIONS[entry.action]))
        return _answer(said)

    def _frame(self, entry: Entry) -> str:
        ref = job_ref(self.lookup(serial_of(entry)))
        block, task = locate(ref, entry)
        return self.client.act("jobs", [ref.id], TASK_OPERATIONS[entry.action], block_ids=[block], task_ids=[task])

    def _instance(self, entry: Entry) -> str:
        serial, host = instance_of(entry)
        ref = job_ref(self.lookup(serial))
        said = []
        if entry.action is A.BLOCK:
            mask = masks.add_host(ref.hosts_mask_exclude, ref.hosts_mask_type, host,
                                  self.render_names() if ref.hosts_mask_type == masks.FIND else None)
            if mask is not None:
                said.append(self.client.act("jobs", [ref.id], params={"hosts_mask_exclude": mask}))
        if entry.action is A.UNBLOCK:
            mask = masks.remove_host(ref.hosts_mask_exclude, ref.hosts_mask_type, host)
            if masks.excludes(mask, ref.hosts_mask_type, host):
                raise Impossible(f"job serial {serial}'s hosts_mask_exclude '{ref.hosts_mask_exclude}' excludes {host} by a "
                           "pattern corral did not write: change it in Afanasy")
            if mask != ref.hosts_mask_exclude:
                said.append(self.client.act("jobs", [ref.id], params={"hosts_mask_exclude": mask}))
            return _answer(said) or f"{host} was not excluded from job serial {serial}"
        requeue = entry.action is A.BLOCK and bool(entry.params.get("requeue_failed"))
        for block, (running, failed) in self.tasks_of(ref, host).items():
            if running:
                said.append(self.client.act("jobs", [ref.id], "restart_running", block_ids=[block], task_ids=running))
            if failed and requeue:
                said.append(self.client.act("jobs", [ref.id], "restart_errors", block_ids=[block], task_ids=failed))
        return _answer(said) or f"nothing to do: {host} is excluded from job serial {serial} and runs none of its tasks"

    def _worker(self, entry: Entry) -> str:
        name = str(entry.target.get("worker") or entry.entity_id)
        ident = self.render_id(name)
        if entry.action is A.BLOCK:
            params = {"NIMBY": True} if self.quarantine == "nimby" else {"paused": True}
        else:
            params = {"nimby": False, "paused": False}
        return self.client.act("renders", [ident], params=params)

    # --- looking things up ----------------------------------------------------------------

    def lookup(self, serial: int) -> dict[str, Any]:
        """The job with this serial as Afanasy lists it now (Impossible when it was deleted)."""
        reply = self.client.get({"type": "jobs", "serials": [serial]})
        jobs = reply.get("jobs", [])
        if not isinstance(jobs, list):
            raise BadReply(f'expected {{"jobs": [...]}} for job serial {serial}, got a {type(jobs).__name__}')
        for job in jobs:
            if isinstance(job, dict) and job.get("serial") == serial:
                return job
        raise Impossible(f"job serial {serial} no longer exists")

    def renders(self) -> list[dict[str, Any]]:
        reply = self.client.get({"type": "renders"})
        items = reply.get("renders", [])
        if not isinstance(items, list):
            raise BadReply(f'expected {{"renders": [...]}}, got a {type(items).__name__}')
        return [r for r in items if isinstance(r, dict)]

    def render_names(self) -> list[str]:
        return [str(r.get("name")) for r in self.renders()]

    def render(self, name: str) -> dict[str, Any]:
        for r in self.renders():
            if r.get("name") == name and isinstance(r.get("id"), int):
                return r
        raise Impossible(f"render {name} no longer exists")

    def render_id(self, name: str) -> int:
        ident: int = self.render(name)["id"]
        return ident

    def progress(self, ref: JobRef) -> list[list[dict[str, Any]]]:
        """The job's tasks, per block (BadReply when the reply is not of its shape)."""
        reply = self.client.get({"type": "jobs", "ids": [ref.id], "mode": "progress"})
        body = reply.get("job_progress")
        blocks = body.get("progress") if isinstance(body, dict) else None
        if not isinstance(blocks, list) or [len(b) if isinstance(b, list) else -1 for b in blocks] != list(ref.tasks):
            raise BadReply(f"expected the task progress of job id {ref.id} ({list(ref.tasks)} tasks per block)")
        return [[t if isinstance(t, dict) else {} for t in b] for b in blocks]

    def tasks_of(self, ref: JobRef, host: str) -> dict[int, tuple[list[int], list[int]]]:
        """Per block, the job's tasks running on `host` now, and those in error whose last
        run was there (the frames an instance failed)."""
        out: dict[int, tuple[list[int], list[int]]] = {}
        for b, tasks in enumerate(self.progress(ref)):
            for t, task in enumerate(tasks):
                if task.get("hst") != host:
                    continue
                state = flags(task.get("state"))
                if "RUN" in state:
                    out.setdefault(b, ([], []))[0].append(t)
                elif "ERR" in state:
                    out.setdefault(b, ([], []))[1].append(t)
        return out

    # --- did it take? ------------------------------------------------------------------------

    def took(self, entry: Entry) -> bool | None:
        """Whether Afanasy shows the action carried out, read from its state now; None when
        that cannot be told (a resubmit leaves no mark) or Afanasy cannot be asked."""
        try:
            return self._took(entry)
        except (AfanasyError, Impossible, IndexError, ValueError, masks.MaskError):
            return None

    def _took(self, entry: Entry) -> bool | None:
        at = entry.at.timestamp()
        if entry.kind is W:
            state = flags(self.render(str(entry.target.get("worker") or entry.entity_id)).get("state"))
            locked = "PAU" in state if self.quarantine == "paused" else bool(state & {"NBY", "NbY"})
            return locked if entry.action is A.BLOCK else not state & {"PAU", "NBY", "NbY"}
        if entry.kind is INST:
            serial, host = instance_of(entry)
            ref = job_ref(self.lookup(serial))
            excluded = masks.excludes(ref.hosts_mask_exclude, ref.hosts_mask_type, host)
            if entry.action is A.UNBLOCK:
                return not excluded
            if entry.action is A.BLOCK and not excluded:
                return False
            return _restarted(self._tasks_on(ref, host), at, self.clock())
        job = self.lookup(serial_of(entry))
        ref = job_ref(job)
        off = "OFF" in flags(job.get("state"))
        if entry.kind is J:
            if entry.action in (A.BLOCK, A.SUSPEND, A.KILL):
                return off
            if entry.action is A.UNBLOCK:
                return not off
            if entry.action is A.RESUBMIT:
                return None
            tasks = [t for b in self.progress(ref) for t in b]
            if entry.action is A.RETRY:
                return not off and not any("ERR" in flags(t.get("state")) for t in tasks)
            return _restarted(tasks, at, self.clock())
        block, number = locate(ref, entry)
        task = self.progress(ref)[block][number]
        state = flags(task.get("state"))
        if entry.action is A.BLOCK:
            return "SUS" in state
        if entry.action is A.UNBLOCK:
            return "SUS" not in state
        if entry.action is A.KILL:
            return "SKP" in state
        if entry.action is A.INTERRUPT:
            return _restarted([task], at, self.clock())
        # retry and resubmit: back in the queue, or finished again since the decision
        if state & {"ERR", "SKP", "DON"}:
            done = task.get("tdn")
            return isinstance(done, int) and done >= at and not state & {"SKP"}
        return True

    def _tasks_on(self, ref: JobRef, host: str) -> list[dict[str, Any]]:
        return [t for b in self.progress(ref) for t in b if t.get("hst") == host]


def _restarted(tasks: list[dict[str, Any]], at: float, now: float) -> bool | None:
    """A restart of running tasks took when none of them still runs the run that started
    before the decision (Afanasy's ``tst``, the server's clock).  One still running is
    not yet proof it did not: Afanasy kills a task through its render's next heartbeat,
    seconds later; within `SETTLE` of the decision that cannot be told (None), after it
    the restart did not take (False)."""
    for task in tasks:
        started = task.get("tst")
        if "RUN" in flags(task.get("state")) and isinstance(started, int) and started < at:
            return False if now - at > SETTLE else None
    return True


def serial_of(entry: Entry) -> int:
    """The job serial a row names (its target, else its entity id)."""
    value = entry.target.get("job")
    if isinstance(value, int):
        return value
    if entry.job_id is not None:
        return entry.job_id
    try:
        return int(entry.entity_id.split(":", 1)[0].split("@", 1)[0])
    except ValueError:
        raise Impossible(f"{entry.describe()} names no job") from None


def instance_of(entry: Entry) -> tuple[int, str]:
    """(job serial, render name) of an instance row: ``"{serial}@{render}"``."""
    host = entry.target.get("host")
    if not isinstance(host, str) or not host:
        _, at, host = str(entry.target.get("instance") or entry.entity_id).partition("@")
        if not at or not host:
            raise Impossible(f"{entry.describe()}: an Afanasy instance is named SERIAL@RENDER")
    return serial_of(entry), host


def locate(ref: JobRef, entry: Entry) -> tuple[int, int]:
    number = entry.target.get("frame")
    if not isinstance(number, int):
        try:
            number = int(entry.entity_id.rpartition(":")[2])
        except ValueError:
            raise Impossible(f"{entry.describe()} names no frame") from None
    try:
        return ref.locate(number)
    except IndexError as err:
        raise Impossible(str(err)) from None


def _answer(said: list[str]) -> str:
    return "; ".join(dict.fromkeys(said))

