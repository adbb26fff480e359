"""The rule engine in a child process, so that a crash of durable_rules costs a cycle, not the daemon.

durable_rules is a C extension that has segfaulted and aborted the process it runs
in (see shared/reference/durable-rules-notes.md).  `IsolatedEvaluator` speaks the
`IncrementalEvaluator` port in the daemon and forwards every call to a `RuleEngine`
(or, with engine="reference", a `ReferenceEvaluator`) living in a child started with the *spawn* method (a fresh interpreter:
no inherited threads, locks or database connections).  If the child dies or stops
answering (or taking in what a cycle sends: a watchdog stops it after `timeout`), the
call raises `EngineCrashed`: the cycle that asked is lost (nothing of
it was applied, since evaluation comes before apply), and the next cycle starts a
fresh child (`ready`).  The engine's working memory is rebuilt from the full picture
the caller then passes (`starts` tells it to), so a new child gives the same answers.

What a cycle costs across the pipe is kept small, since the daemon waits for it: one
round trip (`settle`), carrying only the facts that changed (the caller's doing) and
answered with only the matches that changed ("settled": the child remembers what it last
answered, the daemon's side keeps the whole answer; a policy held back over its limit
matches the same thousands of frames cycle after cycle).  Each kind's changes go as
soon as the caller has built them ("part", not answered), so the child takes in the
jobs' facts while the daemon builds the frames', and the daemon waits only for the
last kind and the answer.  Which entities fall due as
time passes (`due_all`) is answered on the daemon's side, from the facts it sent
(`corral.wakeups`, the durable engine's own schedule), without asking the child.
A call carrying only changes refuses a new child (it knows nothing): if the child is
found gone then, one is started and the cycle is lost, and the next sends everything.

The child ignores SIGINT and SIGTERM (a Ctrl-C or systemd's stop signal goes to the
whole process group; the daemon finishes its cycle and then closes the child), dies
with the daemon (Linux's parent-death signal: a daemon killed with SIGKILL leaves no
engine behind), and otherwise exits quietly when the daemon's end of the pipe closes.

Every death of the child is reported: during a call as `EngineCrashed` (the cycle is
lost), between cycles as a warning with its cause when `ready` finds it dead, and in
`crashes` either way.  (Fault injection lives in the tests, which wrap `child_main`:
nothing in the shipped code looks for a test's trigger.)
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from corral.policy.model import Policy
from corral.ports import Changes, EntityId, Fact, change_parts
from corral.states import Kind
from corral.wakeups import Wakeups

log = logging.getLogger(__name__)
_CTX = multiprocessing.get_context("spawn")
#: prctl(2)'s option that sends a signal to this process when its parent dies.
_PR_SET_PDEATHSIG = 1


class EngineCrashed(Exception):
    """The engine child died or hung; the cycle that needed it is lost."""


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the daemon dies (Linux); elsewhere it exits
    when the pipe closes, which is the next call."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the pipe still ends it
            return
    if os.getppid() != parent:  # the daemon died before the signal was armed
        os._exit(0)


def _child_main(conn: Connection, policies: list[Policy], engine: str, parent: int) -> None:
    """The child: build the evaluator, then answer calls until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent)
    from corral.evaluate import make_evaluator

    try:
        evaluator = make_evaluator(policies, engine)
    except Exception as err:
        _send(conn, ("error", f"{type(err).__name__}: {err}"))
        return
    # The calls the daemon makes (`corral.ports.IncrementalEvaluator`), by name over the pipe;
    # a cycle's are "part", one per kind and not answered, then "settled": `settle`,
    # answered with only what changed since the last answer.
    differ = _Differ(evaluator)
    calls: dict[str, Callable[..., Any]] = {
        "evaluate": differ.evaluate, "settled": differ.settled, "due_all": evaluator.due_all,
        "known": evaluator.known, "state_filter": evaluator.state_filter,
    }
    if not _send(conn, ("ready", os.getpid())):
        return
    failed: str | None = None  # a part that failed, told in the next answer
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return  # the daemon went away
        if method == "part":
            if failed is None:
                try:
                    differ.part(*args)
                except Exception as err:
                    failed = f"{type(err).__name__}: {err}"
            continue
        call = calls.get(method)
        try:
            if failed is not None:
                raise RuntimeError(failed)
            if call is None:
                raise ValueError(f"unknown engine call {method!r}")
            answer: tuple[str, Any] = ("ok", call(*args))
        except Exception as err:
            answer = ("error", f"{type(err).__name__}: {err}")
        failed = None
        if not _send(conn, answer):
            return


#: A cycle's answer from the child: per kind, per policy, the ids that joined its matches
#: and those that left them since the previous answer (kinds and policies that did not
#: change left out; every policy of a kind named the first time the kind is answered).
Differences = dict[Kind, dict[str, tuple[list[EntityId], list[EntityId]]]]


class _Differ:
    """The child's side of `settle` ("part" per kind, then "settled"), answered with differences.

    Most of a steady cycle's matches are the previous cycle's (a policy held back over
    its limit matches the same thousands of frames cycle after cycle), so only what
    changed crosses the pipe; the daemon's side (`IsolatedEvaluator`) keeps the whole
    answer.  Both start empty with the child.  The durable engine tells what moved
    itself, at the cost of the changes (`RuleEngine.settle_moved`); another evaluator's
    whole answer is compared with the last one sent.  The first answer of a kind names
    every policy of it, matching or not (the daemon's side then answers as `settle`
    does)."""

    def __init__(self, evaluator: Any) -> None:
        self._evaluator = evaluator
        self._moved: Callable[..., Differences] | None = getattr(evaluator, "settle_moved", None)
        self._sent: dict[Kind, dict[str, set[EntityId]]] = {}
        self._named: set[Kind] = set()
        #: This cycle's parts so far: the kinds, in order, with their changes (kept only
        #: for an evaluator that answers whole) and, per kind and policy, the ids that
        #: joined and left its matches.  (A cycle that fails between two parts never asks
        #: for its answer: the daemon then stops this child, see `IsolatedEvaluator.settle`.)
        self._parts: dict[Kind, dict[EntityId, Fact | None]] = {}
        self._moves: dict[Kind, dict[str, tuple[set[EntityId], set[EntityId]]]] = {}
        self._now: float | None = None

    def part(self, kind: Kind, changed: dict[EntityId, Fact | None], now: float | None) -> None:
        """Take in one kind's changes (answered with the others at `settled`)."""
        self._now = now
        if self._moved is None:
            self._parts.setdefault(kind, {}).update(changed)
            return
        self._parts.setdefault(kind, {})
        for name, (joined, left) in self._moved({kind: changed}, now).get(kind, {}).items():
            into, out = self._moves.setdefault(kind, {}).setdefault(name, (set(), set()))
            for ident in joined:  # a kind sent twice in one cycle: moves that undo each other cancel
                if ident in out:
                    out.discard(ident)
                else:
                    into.add(ident)
            for ident in left:
                if ident in into:
                    into.discard(ident)
                else:
                    out.add(ident)

    def settled(self) -> Differences:
        """What moved in this cycle's parts; every policy of a kind answered the first time."""
        parts, moves = self._parts, self._moves
        self._parts, self._moves = {}, {}
        if self._moved is None:
            return self._compared(self._evaluator.settle(parts, self._now))
        out: Differences = {kind: {name: (list(joined), list(left)) for name, (joined, left) in names.items()
                                   if joined or left}
                            for kind, names in moves.items()}
        for kind in parts:
            if kind not in self._named:
                self._named.add(kind)
                out[kind] = {name: (list(ids), []) for name, ids in self._evaluator.current(kind).items()}
        return {kind: names for kind, names in out.items() if names}

    def evaluate(self, kind: Kind, facts: Iterable[Fact], now: float | None = None) -> dict[str, list[EntityId]]:
        """A whole picture of the kind (`evaluate`) replaces the engine's memory of it
        outside any cycle's `settle`: the next one answers the kind whole again (the daemon's side
        forgets what it held of it, `IsolatedEvaluator.evaluate`)."""
        self._sent.pop(kind, None)
        self._named.discard(kind)
        answer: dict[str, list[EntityId]] = self._evaluator.evaluate(kind, facts, now)
        return answer

    def _compared(self, answer: dict[Kind, dict[str, list[EntityId]]]) -> Differences:
        out: Differences = {}
        for kind, current in answer.items():
            sent = self._sent.setdefault(kind, {})
            moved: dict[str, tuple[list[EntityId], list[EntityId]]] = {}
            for name, ids in current.items():
                new, old = set(ids), sent.get(name)
                if old is None:
                    moved[name] = (list(new), [])
                elif new != old:
                    moved[name] = (list(new - old), list(old - new))
                else:
                    continue
                sent[name] = new
            if moved:
                out[kind] = moved
        return out


class _Watchdog:
    """Calls `on_expiry` when armed for longer than the time it was armed for.

    A thread armed and disarmed around each cycle's sends, living until `close` (the
    evaluator's, which a later cycle may follow: arming starts a thread again): a
    `threading.Timer` a cycle starts a thread each time (150 µs here, on a 3 ms cycle).
    The thread sleeps until the deadline it last saw; a later deadline is only later, so
    arming wakes it only when it sleeps with none."""

    def __init__(self, on_expiry: Callable[[], None]) -> None:
        self._on_expiry = on_expiry
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._idle = False  # the thread waits with no deadline: arming must wake it
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="corral-engine-watchdog", daemon=True)
                self._idle = False
                self._thread.start()
            elif self._idle:
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def close(self) -> None:
        """End the thread (it finds itself no longer the watchdog's and returns)."""
        with self._cond:
            self._thread, self._deadline = None, None
            self._cond.notify_all()

    def _run(self) -> None:
        me = threading.current_thread()
        with self._cond:
            while self._thread is me:
                deadline = self._deadline
                if deadline is None:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._deadline = None
                self._cond.release()
                try:
                    self._on_expiry()
                finally:
                    self._cond.acquire()


def _send(conn: Connection, message: tuple[str, Any]) -> bool:
    """Send to the daemon; False (and nothing written anywhere) when it has gone."""
    try:
        conn.send(message)
    except (BrokenPipeError, EOFError, OSError):
        return False
    return True


class IsolatedEvaluator:
    """An `IncrementalEvaluator` (`corral.ports`) whose engine runs in a child process
    (started on first use)."""

    def __init__(
        self,
        policies: Sequence[Policy],
        *,
        engine: str = "durable",
        timeout: float = 120.0,
        start_timeout: float = 60.0,
        on_death: Callable[[str], None] | None = None,
    ) -> None:
        """`on_death(why)` is told of every death of the child (the daemon counts them)."""
        self.policies = list(policies)
        self.on_death = on_death
        self.engine = engine
        self.timeout = timeout
        self.start_timeout = start_timeout
        #: What the child runs: (pipe, policies, engine, the daemon's pid).  Tests wrap it
        #: to inject faults; it must be a module-level function (the child imports it).
        self.child_main: Callable[[Connection, list[Policy], str, int], None] = _child_main
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._hung = False  # the watchdog stopped the child (`settle`)
        self._sending = False  # between a cycle's first part and its answer (`settle`)
        self._watchdog = _Watchdog(self._stop_hung)
        self.starts = 0
        self.crashes = 0
        self._filters: dict[Kind, frozenset[str] | None] = {}
        #: The matches as the child last answered them (it sends only what changed), in
        #: the order they first matched.
        self._held: dict[Kind, dict[str, dict[EntityId, None]]] = {}
        #: When each candidate is next due, kept here from the facts sent (the durable
        #: engine's schedule, `corral.wakeups`): `due_all` is no round trip.  The
        #: reference evaluator says every held entity is due each cycle: it is asked.
        self._wakeups = Wakeups(self.policies) if engine == "durable" else None
        self._at_exit = weakref.finalize(self, lambda: None)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> Connection:
        parent, child = _CTX.Pipe()
        proc = _CTX.Process(
            target=self.child_main, args=(child, self.policies, self.engine, os.getpid()), name="corral-engine",
            daemon=True
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        # At interpreter exit multiprocessing joins its children, and this one ignores
        # SIGTERM: an evaluator nobody closed closes its pipe first, so the child exits.
        self._at_exit.detach()
        self._at_exit = weakref.finalize(self, parent.close)
        self.starts += 1
        self._held.clear()  # a new child knows nothing: its first answer is every match
        if self._wakeups is not None:
            self._wakeups.clear()
        status, payload = self._receive(self.start_timeout, "starting")
        if status != "ready":
            self.close()
            raise EngineCrashed(self._lost(f"the rule engine could not start: {payload}"))
        log.debug("engine child %s started", payload)
        return parent

    def _receive(self, timeout: float, doing: str) -> tuple[str, Any]:
        conn, proc = self._conn, self._proc
        assert conn is not None and proc is not None
        deadline = time.monotonic() + timeout
        try:
            while not conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
                if not proc.is_alive() and not conn.poll(0):
                    raise EngineCrashed(self._death(doing))
                if time.monotonic() >= deadline:
                    self.close()
                    raise EngineCrashed(self._lost(f"the rule engine did not answer within {timeout:g}s while {doing}; "
                                                   "it was stopped"))
            message: tuple[str, Any] = conn.recv()
            return message
        except (EOFError, OSError, BrokenPipeError) as err:
            raise EngineCrashed(self._death(doing)) from err

    def _death(self, doing: str) -> str:
        proc = self._proc
        code = None
        if proc is not None:
            proc.join(1.0)
            code = proc.exitcode
        self._discard()
        if self._hung:
            self._hung = False
            return self._lost(f"the rule engine did not take in a cycle's facts within {self.timeout:g}s while "
                              f"{doing}; it was stopped")
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = f"the rule engine process died of {name} while {doing}"
        else:
            why = f"the rule engine process exited (code {code}) while {doing}"
        return self._lost(why)

    def _lost(self, why: str) -> str:
        """Count an engine lost (died, hung, or could not start) and tell `on_death`; `why`."""
        self.crashes += 1
        if self.on_death is not None:
            self.on_death(why)
        return why

    def _post(self, method: str, *args: Any, whole: bool = True) -> str:
        """Send a call to the child (what it is doing, for a report); `whole=False`: the
        call carries only changes, which a new child (knowing nothing) cannot take: if
        the child is gone, one is started and the call fails (`EngineCrashed`), so the
        caller sends everything next time."""
        doing = "settle" if method in ("part", "settled") else f"{method} {args[0]}" if args else method
        conn = self._conn if self._conn is not None and self._proc is not None and self._proc.is_alive() else None
        if conn is None:
            # (found dead between two kinds of a cycle: it died taking the first in)
            why = self._death(doing if self._sending else f"idle before {doing}") if self._proc is not None else None
            self._discard()
            fresh = self.starts == 0
            conn = self._start()
            if not whole and not fresh:
                raise EngineCrashed(why or "the rule engine process had stopped; a new one was started")
        try:
            conn.send((method, args))
        except (OSError, BrokenPipeError) as err:
            raise EngineCrashed(self._death(doing)) from err
        return doing

    def _call(self, method: str, *args: Any, whole: bool = True) -> Any:
        """Ask the child and wait for its answer (see `_post`)."""
        doing = self._post(method, *args, whole=whole)
        status, payload = self._receive(self.timeout, doing)
        if status != "ok":
            self._discard()  # its working memory may be half-updated: the next cycle starts afresh
            raise EngineCrashed(f"the rule engine failed ({doing}): {payload}")
        return payload

    def evaluate(self, kind: Kind, facts: Iterable[Fact], now: float | None = None) -> dict[str, list[EntityId]]:
        facts = list(facts)
        wakeups = self._wakeups
        result: dict[str, list[EntityId]] = self._call("evaluate", kind, facts, None if wakeups else now)
        self._held.pop(kind, None)  # the child answers the kind whole at its next settle
        if wakeups is not None:  # the kind's whole picture: its schedule starts again from it
            wakeups.replace(kind, ((fact["id"], fact) for fact in facts), now)
        return result

    # The incremental calls a cycle makes: `due_all`, answered here (`corral.wakeups`),
    # then `settle`, one round trip carrying the changed facts, a kind at a time as the
    # caller yields them, and answered with the changed matches.  A new child starts
    # with an empty memory: `starts` tells the session (corral.session.Session.refresh)
    # to send it every fact again.
    def settle(self, changes: Changes, now: float | None = None) -> dict[Kind, dict[str, list[EntityId]]]:
        wakeups = self._wakeups
        # With the schedule kept here, the child is given no time: it schedules nothing.
        told = None if wakeups else now
        kinds: list[Kind] = []
        # A part goes to a child that may still be busy with the last one: a child that
        # hangs stops reading, and a send bigger than the pipe holds would wait for ever
        # (the answer's own wait is bounded, the sends are not), so a watchdog stops it.
        self._watchdog.arm(self.timeout)
        try:
            for kind, changed in change_parts(changes):
                self._post("part", kind, changed if type(changed) is dict else dict(changed), told, whole=False)
                self._sending = True
                kinds.append(kind)
                if wakeups is not None:  # (while the child takes the part in)
                    wakeups.note(kind, changed.items(), now)
            moved: Differences = self._call("settled", whole=False)
        except EngineCrashed:
            raise
        except BaseException:
            # The caller failed between two kinds: the child took in part of a cycle
            # whose answer nobody will ask for.  Stop it: the next cycle starts a new one
            # and sends it everything, as after any lost cycle.
            if kinds:
                self._discard()
            raise
        finally:
            self._sending = False
            self._watchdog.disarm()
        held = self._held
        for kind, policies in moved.items():
            mine = held.setdefault(kind, {})
            for name, (joined, left) in policies.items():
                ids = mine.setdefault(name, {})
                for ident in left:
                    del ids[ident]
                ids.update(dict.fromkeys(joined))
        return {kind: {name: list(ids) for name, ids in held.get(kind, {}).items()} for kind in kinds}

    def _stop_hung(self) -> None:
        """The watchdog's: kill a child that has not taken in a cycle within `timeout` (the
        send blocked on it then fails, and the cycle is lost with this said)."""
        proc = self._proc
        if proc is not None and proc.is_alive():
            self._hung = True
            proc.kill()

    def due_all(self, kinds: Iterable[Kind], now: float) -> dict[Kind, set[EntityId]]:
        if self._wakeups is not None:
            return {kind: self._wakeups.due(kind, now) for kind in kinds}
        result: dict[Kind, set[EntityId]] = self._call("due_all", list(kinds), now)
        return result

    def ready(self) -> None:
        """Start the child if it is not running (a new one knows nothing: `starts` tells
        the cycle to send it everything), without a round trip to a live one."""
        if self._proc is not None and not self._proc.is_alive():
            # It died since the last call (killed, out of memory...): say so, as a death
            # during a call is (`EngineCrashed`), before starting another.
            log.warning("%s; a new one starts and is sent every candidate again", self._death("idle between cycles"),
                        extra={"event": "engine_crash"})
        if self._conn is None or self._proc is None:
            self._discard()
            self._start()

    def known(self, kind: Kind) -> set[EntityId]:
        result: set[EntityId] = self._call("known", kind)
        return result

    def state_filter(self, kind: Kind) -> frozenset[str] | None:
        """Asked of the child once per kind: it depends on the policies alone, which a
        restarted child is given again (a cycle asks for every kind)."""
        if kind not in self._filters:
            self._filters[kind] = self._call("state_filter", kind)
        return self._filters[kind]

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(2.0)

    def close(self) -> None:
        """Stop the child (closing the pipe makes it exit; killed if it lingers)."""
        self._watchdog.close()
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            conn.close()
        if proc is not None:
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
