"""Fault injection for the engine child, kept out of the shipped code: an
`IsolatedEvaluator` whose child segfaults (or hangs) on its next call once a file appears."""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

from corral.daemon import isolated


class _TrippedPipe:
    """The child's end of the pipe, which kills the child with SIGSEGV (or, with `hang`,
    stops it answering for a minute) when it receives a call while `fault_file` exists
    (deleting the file first: a one-shot fault)."""

    def __init__(self, conn: Any, fault_file: str, hang: bool = False) -> None:
        self._conn, self._fault, self._hang = conn, fault_file, hang

    def recv(self) -> Any:
        message = self._conn.recv()
        if os.path.exists(self._fault):
            os.unlink(self._fault)
            if self._hang:
                time.sleep(60)
            else:
                os.kill(os.getpid(), signal.SIGSEGV)
        return message

    def send(self, message: Any) -> None:
        self._conn.send(message)


def tripped_child(fault_file: str, hang: bool, conn: Any, policies: Any, engine: str, parent: int) -> None:
    isolated._child_main(_TrippedPipe(conn, fault_file, hang), policies, engine, parent)  # type: ignore[arg-type]


class SegfaultOnce(isolated.IsolatedEvaluator):
    """The engine child segfaults on its first call after `fault_file` appears."""

    def __init__(self, policies: Any, fault_file: str | Path, *, hang: bool = False, **kwargs: Any) -> None:
        super().__init__(policies, **kwargs)
        self.child_main = functools.partial(tripped_child, str(fault_file), hang)
