"""Benchmark: what a policy edit costs the daemon (hot reload), at farm scale.

    python bench/reload_bench.py --frames 100000 [--db URL] [--rounds 3] [--no-isolate] [--json]

A wrangler edits a policy file while `corral run` is running; the daemon notices, loads
the new version and carries on.  This measures that moment through the daemon itself
(`corral.daemon.service.Daemon`, the code `corral run` runs), on the benchmark's farm
(`cycle_bench.make_farm`), in a fresh process:

1. the daemon loads a copy of the built-in pack and runs its first (cold) cycle, then
   a committing cycle that acts on the backlog;
2. `--rounds` steady cycles, each after 1% of the frame rows changed (`steady_cycle_s`,
   the median);
3. `--rounds` times: a parameter of one policy file is edited, the daemon's `reload()`
   is timed (`reload_s`: loading the files, building the new policy set and engine),
   then its next cycle after another 1% change (`cycle_after_reload_s`, the median).

`ratio_reload` = cycle_after_reload / steady cycle: what one edit costs in steady
cycles.  Prints one JSON object with --json, else a table; docs/benchmarks.md records
the figures with this command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from cycle_bench import NOW, change_one_percent, generate_in_child, in_own_process, positive, scratch_store  # noqa: E402

#: The file and the parameter the "wrangler" edits, flipping between two values.
EDITED = "retry-failed.yaml"
EDITS = (("delay: 2m", "delay: 3m"), ("delay: 3m", "delay: 2m"))


def measure(url: str, frames: int, seed: int, rounds: int, isolate: bool) -> dict[str, Any]:
    from corral.daemon.service import Daemon, DaemonConfig
    from corral.policy.loader import builtin_dir

    rules = Path(tempfile.mkdtemp(prefix="corral-reload-rules-"))
    for path in builtin_dir().glob("*.yaml"):
        if not path.name.endswith(".test.yaml"):
            shutil.copy(path, rules / path.name)
    edited = rules / EDITED
    if EDITS[0][0] not in edited.read_text():
        raise SystemExit(f"{EDITED} no longer holds {EDITS[0][0]!r}: update EDITS in {__file__}")
    step = [0]

    def clock() -> Any:
        return NOW + timedelta(seconds=30 * step[0])

    daemon = Daemon(DaemonConfig(db_url=url, paths=[rules], isolate=isolate), clock=clock)
    try:
        daemon.reload()
        t0 = time.perf_counter()
        daemon.cycle()
        cold = time.perf_counter() - t0
        step[0] += 1
        daemon.cycle()  # acts on the backlog the cold cycle found

        def steady() -> float:
            step[0] += 1
            change_one_percent(daemon.store, frames, seed + step[0], clock())
            t = time.perf_counter()
            daemon.cycle()
            return time.perf_counter() - t

        steadies = [steady() for _ in range(rounds)]
        reloads, after = [], []
        for r in range(rounds):
            old, new = EDITS[r % 2]
            edited.write_text(edited.read_text().replace(old, new))
            daemon.watcher._stamps.clear()
            t = time.perf_counter()
            changed = daemon.reload()
            reloads.append(time.perf_counter() - t)
            if not changed:
                raise SystemExit("the daemon did not see the edit")
            after.append(steady())
    finally:
        daemon.close()
        shutil.rmtree(rules)
    steady_s, after_s = statistics.median(steadies), statistics.median(after)
    return {
        "frames": frames,
        "db": "postgresql" if url.startswith("postgresql") else "sqlite",
        "isolated": isolate,
        "cold_cycle_s": round(cold, 4),
        "steady_cycle_s": round(steady_s, 4),
        "steady_cycles_s": [round(x, 4) for x in steadies],
        "reload_s": round(statistics.median(reloads), 4),
        "reloads_s": [round(x, 4) for x in reloads],
        "cycle_after_reload_s": round(after_s, 4),
        "cycles_after_reload_s": [round(x, 4) for x in after],
        "ratio_reload": round(after_s / steady_s, 2) if steady_s else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=positive, default=100_000)
    parser.add_argument("--db", help="postgresql://... (a fresh database is created and dropped); default: a temp SQLite file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=positive, default=3)
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="the rule engine in the daemon's process (corral run --no-isolate)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with scratch_store(args.db) as url:
        generate_in_child(url, args.frames, args.seed)
        result = in_own_process(measure, url, args.frames, args.seed, args.rounds, args.isolate)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22} {value}")


if __name__ == "__main__":
    main()
