"""Where a steady cycle's time goes: the parts of each steady cycle, timed.

    python bench/cycle_parts.py --frames 1000000 [--db URL] [--rounds 5] [--dry] [--isolate]

The same farm and the same 1% changes as `cycle_bench.py`, in one process, and the
same steady cycles (committing, after one committing cycle acted on the cold cycle's
backlog; `--dry`: applying nothing, as tables before that did); each is timed end
to end, and the functions it spends its time in are wrapped with a timer (a few
dozen calls a cycle, so the wrappers cost nothing that shows).  Prints one line per
cycle (milliseconds) and the medians.  This is the harness that measured each step
in docs/benchmarks.md, "What moved the numbers".

`--isolate`: the rule engine in a child process, as `corral run` runs it by default.
"engine settle" is then the daemon's side of the exchange with the child: the cycle's
facts are built inside it (each kind is sent as soon as built) and the child's work is
waited for in it; "engine update", the child's own, is not timed.

It then weighs the cycle against its target (3 io floors) part by part: after the steady
rounds, `--rounds` more cycles with nothing changed since the last one (what a cycle costs
before it has a row to take in: two transactions, the checks, an empty round trip), and
the steady cycle without its update of the live farm (what the cycle would cost were
that update free).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cycle_bench as bench

import corral.cycle as cycle
import corral.daemon.isolated as isolated
import corral.live as live
import corral.session as session_mod
import corral.store.changes as changes
import corral.store.store as store_mod
from corral.engine import RuleEngine
from corral.policy.loader import builtin_dir, load_paths
from corral.policyset import PolicySet
from corral.session import Session

SPENT: dict[str, float] = defaultdict(float)

#: (module or class, function, label): the parts of a steady cycle, outermost first.
PARTS: tuple[tuple[Any, str, str], ...] = (
    (session_mod.Session, "refresh", "read+apply"),
    (store_mod.Store, "read_changes", "  read changes"),
    (changes, "advance", "    advance stamp"),
    (live.LiveFarm, "apply", "  apply to live farm"),
    (cycle, "plan_live", "evaluate+plan"),
    (RuleEngine, "update", "  engine update"),
    (isolated.IsolatedEvaluator, "settle", "  engine settle"),
    (cycle, "plan_found", "  plan"),
    (store_mod.Store, "paused", "pause check"),
    (store_mod.Store, "apply_transitions", "apply transitions"),
)


def _timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - t0

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=bench.positive, default=100_000)
    parser.add_argument("--db", help="postgresql://... (a fresh database is created and dropped); default: a temp SQLite file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=bench.positive, default=5)
    parser.add_argument("--dry", action="store_true",
                        help="steady cycles apply nothing (each plans the cold cycle's backlog again)")
    parser.add_argument("--isolate", action="store_true",
                        help="the rule engine in a child process, as `corral run` runs it by default")
    args = parser.parse_args()
    for owner, name, label in PARTS:
        setattr(owner, name, _timed(getattr(owner, name), label))
    with bench.scratch_store(args.db) as url:
        run(url, args.frames, args.seed, args.rounds, commit=not args.dry, isolate=args.isolate)


def run(url: str, frames: int, seed: int, rounds: int, *, commit: bool = True, isolate: bool = False) -> None:
    from corral.store.store import Store

    bench.generate_in_child(url, frames, seed)  # as cycle_bench does
    store = Store.open(url)
    factory = (lambda active: isolated.IsolatedEvaluator(active)) if isolate else None
    session = Session(PolicySet(load_paths([builtin_dir()]).policies), keep_live=True, evaluator_factory=factory)
    cycle.run_cycle(store, session, commit=False, now=bench.NOW)
    if commit:  # as the benchmark does: the daemon acts on the cold cycle's backlog first
        cycle.run_cycle(store, session, commit=True, now=bench.NOW)
    rows: list[dict[str, float]] = []
    for r in range(1, rounds + 1):
        later = bench.NOW + timedelta(seconds=30 * r)
        mark = session.live.mark.value if session.live else 0
        bench.change_one_percent(store, frames, seed + r, later)
        floor = bench.read_io_floor(store, mark)  # as the benchmark does: the same rows, read just before
        SPENT.clear()
        t0 = time.perf_counter()
        cycle.run_cycle(store, session, commit=commit, now=later)
        row = {"cycle": time.perf_counter() - t0, **SPENT, "io floor": floor}
        rows.append(row)
        print(f"round {r}: " + ", ".join(f"{k.strip()} {v * 1000:.1f}" for k, v in row.items()))
    # Cycles with nothing changed since the last (the first after the rounds takes in what
    # the last round applied; then nothing is read): the cost before any row.
    idle: list[float] = []
    for r in range(rounds + 1, 2 * rounds + 2):
        t0 = time.perf_counter()
        cycle.run_cycle(store, session, commit=commit, now=bench.NOW + timedelta(seconds=30 * rounds + r))
        if r > rounds + 1:
            idle.append(time.perf_counter() - t0)
    session.close()
    store.close()
    mode = "engine in a child" if isolate else "engine in process"
    print(f"medians over {rounds} {'committing' if commit else 'dry'} steady cycles, {frames} frames, "
          f"{url.split(':')[0]}, {mode} (ms):")
    for label in ("cycle", *(label for _, _, label in PARTS), "io floor"):
        values = [row.get(label, 0.0) for row in rows]
        print(f"  {label:24} {statistics.median(values) * 1000:8.1f}")
    floor = statistics.median(row["io floor"] for row in rows)
    steady = statistics.median(row["cycle"] for row in rows)
    unapplied = statistics.median(row["cycle"] - row.get("  apply to live farm", 0.0) for row in rows)
    nothing = statistics.median(idle)
    applied = [row["apply transitions"] for row in rows if "apply transitions" in row]
    if applied:
        print(f"  ({len(applied)} of {len(rows)} cycles applied transitions, "
              f"their commit {statistics.median(applied) * 1000:.1f} ms, median)")
    print(f"against the target (3 io floors = {3 * floor * 1000:.1f} ms), in io floors:")
    print(f"  steady cycle                    {steady / floor:6.2f}  ({steady * 1000:.1f} ms)")
    print(f"  without the live farm's update  {unapplied / floor:6.2f}  ({unapplied * 1000:.1f} ms)")
    print(f"  a cycle with nothing changed    {nothing / floor:6.2f}  ({nothing * 1000:.2f} ms, median of {len(idle)})")


if __name__ == "__main__":
    main()
