"""The engine child's pipelining, paired in one process: steady cycles alternate between a
cycle's kinds sent to the child as they are built (`corral run`'s default since the
fifth session of 2026-12-03) and sent only once every kind is built (before it).

    python bench/pipe_ab.py --frames 100000 [--rounds 120] [--seed 7]

Why paired: on this machine the same floor moves by a third from one run to the next, so
two runs, one per version, compare the machine more than the code.  Here both ways run
in one process on one farm, round after round (new, old, old, new, new...: the io floor
is read lean first every other round, and warmer pages the other, so each way gets as
many of both), the 1% change and the io floor before each cycle as `cycle_bench.py`
makes them.  The old way is the new code with the cycle's kinds all built before the
first is sent (the caller's generator drained first): what the child was sent before,
though as a message per kind and not one, so the pair measures the overlap, not the
number of messages.  Prints, per way, the median cycle, the median io floor and the
median of each cycle over its own floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cycle_bench as bench

import corral.cycle as cycle
import corral.daemon.isolated as isolated
from corral.policy.loader import builtin_dir, load_paths
from corral.policyset import PolicySet
from corral.ports import Changes, change_parts
from corral.session import Session
from corral.store.store import Store

WAYS = ("kinds as built", "all kinds at once")


class _Switchable(isolated.IsolatedEvaluator):
    """The isolated evaluator, sending a cycle's kinds as they come or all at once."""

    at_once = False

    def settle(self, changes: Changes, now: float | None = None) -> dict[Any, dict[str, list[Any]]]:
        if self.at_once:
            changes = list(change_parts(changes))  # every kind built before the first is sent
        return super().settle(changes, now)


def run(url: str, frames: int, seed: int, rounds: int) -> dict[str, dict[str, float]]:
    bench.generate_in_child(url, frames, seed)
    store = Store.open(url)
    engines: list[_Switchable] = []

    def factory(active: Any) -> _Switchable:
        engines.append(_Switchable(active))
        return engines[-1]

    session = Session(PolicySet(load_paths([builtin_dir()]).policies), keep_live=True, evaluator_factory=factory)
    seen: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    try:
        cycle.run_cycle(store, session, commit=True, now=bench.NOW)  # the whole read, and the backlog acted on
        for r in range(1, rounds + 1):
            way = WAYS[(r // 2) % 2]  # ABBA...: each way gets as many odd rounds as even ones
            for engine in engines:
                engine.at_once = way == WAYS[1]
            later = bench.NOW + timedelta(seconds=30 * r)
            assert session.live is not None
            mark = session.live.mark.value
            bench.change_one_percent(store, frames, seed + r, later)
            floor = bench.read_io_floor(store, mark)
            t0 = time.perf_counter()
            cycle.run_cycle(store, session, commit=True, now=later)
            seen[way].append((time.perf_counter() - t0, floor))
    finally:
        session.close()
        store.close()
    return {way: {"cycle_ms": round(statistics.median(c for c, _ in rows) * 1000, 2),
                  "io_floor_ms": round(statistics.median(f for _, f in rows) * 1000, 2),
                  "ratio_io": round(statistics.median(c / f for c, f in rows), 2),
                  "rounds": len(rows)}
            for way, rows in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=bench.positive, default=100_000)
    parser.add_argument("--rounds", type=bench.positive, default=120, help="a multiple of 4 (the turns are ABBA)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.rounds % 4:
        parser.error(f"--rounds {args.rounds}: give a multiple of 4, so that each way has as many turns of each kind")
    with bench.scratch_store(None) as url:
        result = run(url, args.frames, args.seed, args.rounds)
    new, old = result[WAYS[0]], result[WAYS[1]]
    for way, figures in result.items():
        print(f"{args.frames} frames, {way:17}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    print(f"cycle: {new['cycle_ms'] / old['cycle_ms']:.2f} of the old way's; ratio_io {old['ratio_io']} -> {new['ratio_io']}")


if __name__ == "__main__":
    main()
