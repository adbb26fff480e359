"""The rule engine in a child process, so that a crash of durable_rules costs a cycle, not the daemon.

durable_rules is a C extension that has segfaulted and aborted the process it runs
in (see shared/reference/durable-rules-notes.md).  `IsolatedEvaluator` speaks the
`IncrementalEvaluator` port in the daemon and forwards every call to a `RuleEngine`
(or, with engine="reference", a `ReferenceEvaluator`) living in a child started with the *spawn* method (a fresh interpreter:
no inherited threads, locks or database connections).  If the child dies or stops
answering, the call raises `EngineCrashed`: the cycle that asked is lost (nothing of
it was applied, since evaluation comes before apply), and the next `evaluate` starts
a fresh child.  The engine's working memory is rebuilt from the full picture the
caller passes, so a new child gives the same answers.

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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from corral.policy.model import Policy
from corral.ports import EntityId, Fact
from corral.states import Kind

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
    # The calls the daemon makes (`corral.ports.IncrementalEvaluator`), by name over the pipe.
    calls: dict[str, Callable[..., Any]] = {
        "evaluate": evaluator.evaluate, "settle": evaluator.settle, "due_all": evaluator.due_all,
        "known": evaluator.known, "state_filter": evaluator.state_filter,
    }
    if not _send(conn, ("ready", os.getpid())):
        return
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return  # the daemon went away
        call = calls.get(method)
        try:
            if call is None:
                raise ValueError(f"unknown engine call {method!r}")
            answer: tuple[str, Any] = ("ok", call(*args))
        except Exception as err:
            answer = ("error", f"{type(err).__name__}: {err}")
        if not _send(conn, answer):
            return


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
        self.starts = 0
        self.crashes = 0
        self._filters: dict[Kind, frozenset[str] | None] = {}

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
        self.starts += 1
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

    def _call(self, method: str, *args: Any) -> Any:
        conn = self._conn if self._conn is not None and self._proc is not None and self._proc.is_alive() else None
        if conn is None:
            self._discard()
            conn = self._start()
        doing = f"{method} {args[0]}" if args else method
        try:
            conn.send((method, args))
        except (OSError, BrokenPipeError) as err:
            raise EngineCrashed(self._death(doing)) from err
        status, payload = self._receive(self.timeout, doing)
        if status != "ok":
            self._discard()  # its working memory may be half-updated: the next cycle starts afresh
            raise EngineCrashed(f"the rule engine failed ({doing}): {payload}")
        return payload

    def evaluate(self, kind: Kind, facts: Iterable[Fact], now: float | None = None) -> dict[str, list[EntityId]]:
        result: dict[str, list[EntityId]] = self._call("evaluate", kind, list(facts), now)
        return result

    # The incremental calls a cycle makes (two round trips: `due_all`, then `settle`).
    # A new child starts with an empty memory: `starts` tells the session
    # (corral.session.Session.refresh) to send it every fact again.
    def settle(self, changes: Mapping[Kind, Mapping[EntityId, Fact | None]], now: float | None = None
               ) -> dict[Kind, dict[str, list[EntityId]]]:
        result: dict[Kind, dict[str, list[EntityId]]] = self._call("settle", dict(changes), now)
        return result

    def due_all(self, kinds: Iterable[Kind], now: float) -> dict[Kind, set[EntityId]]:
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
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            conn.close()
        if proc is not None:
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
