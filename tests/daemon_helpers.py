"""Helpers for the daemon tests: farms of pending jobs, policy files, daemon subprocesses, waiting."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from corral.farm import Farm, Job
from corral.store import Store

ROOT = Path(__file__).resolve().parent.parent

BLOCK_PENDING = """\
policies:
  - name: block-pending
    kind: job
    when: {state: pending}
    actions: [block]
    reason: "held: {name} is pending"
"""


def pending_farm(n: int, start: int = 1) -> Farm:
    """`n` pending jobs without frames: a policy that blocks pending jobs plans `n` transitions."""
    return Farm(jobs={i: Job(id=i, name=f"shot{i:05d}") for i in range(start, start + n)})


def load(url: str, farm: Farm) -> None:
    with Store.open(url) as store:
        store.load_farm(farm, replace=True)


def write_rules(folder: Path, text: str = BLOCK_PENDING, name: str = "rules.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def corral(*args: str, log: Path, env: dict[str, str] | None = None, faulty: bool = False) -> subprocess.Popen[bytes]:
    """`python -m corral ARGS` with stdout+stderr to `log` (the way systemd would run it);
    `faulty`: through tests/faulty_corral.py, whose engine child segfaults once when the
    file named by $CORRAL_FAULT_FILE appears."""
    out = log.open("ab")
    entry = [str(Path(__file__).parent / "faulty_corral.py")] if faulty else ["-m", "corral"]
    return subprocess.Popen(
        [sys.executable, *entry, *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def log_has(log: Path, text: str) -> Callable[[], bool]:
    return lambda: log.exists() and text in log.read_text(errors="replace")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a daemon and its engine child (both in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
