"""Benchmark: the whole read, the cold cycle, and how much of a dry-running daemon's plan
is played again each cycle (the plan memo's reuse), on a generated farm.

    .venv/bin/python bench/plan_plays_bench.py --frames 100000 [--rounds 3] [--json]

Prints the best of three whole reads, one cold dry cycle of the built-in pack, and for each
dry steady cycle (1% of the frames changed before it) the matches played on the scratch farm
against the transitions the plan holds: a memo that reuses the unchanged parts plays fewer
than the plan holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cycle_bench as cb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=cb.positive, default=100_000)
    parser.add_argument("--rounds", type=cb.positive, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import corral.plan as plan_module
    from corral.cycle import run_cycle
    from corral.policy.loader import builtin_dir, load_paths
    from corral.policyset import PolicySet
    from corral.session import Session
    from corral.store.store import Store

    url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    cb.generate(url, args.frames, args.seed)
    store = Store.open(url)
    reads = []
    for _ in range(3):
        t0 = time.perf_counter()
        store.read_farm_marked()
        reads.append(time.perf_counter() - t0)
    session = Session(PolicySet(load_paths([builtin_dir()]).policies), keep_live=True)
    played = [0]
    real_play = plan_module._play

    def counting_play(*a: Any, **k: Any) -> Any:
        played[0] += 1
        return real_play(*a, **k)

    plan_module._play = counting_play  # type: ignore[assignment]
    t0 = time.perf_counter()
    cold = run_cycle(store, session, commit=False, now=cb.NOW)
    out: dict[str, Any] = {
        "frames": args.frames, "read_best_s": round(min(reads), 4), "cold_cycle_s": round(time.perf_counter() - t0, 4),
        "cold_transitions": len(cold.plan.transitions), "cold_plays": played[0], "dry": []}
    for r in range(1, args.rounds + 1):
        played[0] = 0
        later = cb.NOW + timedelta(seconds=30 * r)
        cb.change_one_percent(store, args.frames, args.seed + r, later)
        t0 = time.perf_counter()
        result = run_cycle(store, session, commit=False, now=later)
        out["dry"].append({"cycle_s": round(time.perf_counter() - t0, 4), "plays": played[0],
                           "transitions": len(result.plan.transitions)})
    store.close()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.frames} frames: whole read {out['read_best_s']} s (best of 3), cold dry cycle {out['cold_cycle_s']} s, "
          f"{out['cold_transitions']} transitions ({out['cold_plays']} played)")
    for r, d in enumerate(out["dry"], 1):
        print(f"dry cycle {r}: {d['cycle_s']} s, {d['plays']} matches played for {d['transitions']} transitions")


if __name__ == "__main__":
    main()
