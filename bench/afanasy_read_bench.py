"""Benchmark: what reading a live Afanasy farm costs corral each cycle (`--farm afanasy://`).

    python bench/afanasy_read_bench.py --server 127.0.0.1:51000 [--reads 5] [--json]

Needs a running Afanasy server (none in CI: build one as docs/afanasy.md says).  Times a
whole read (`corral.afanasy.source.read_farm`) with no cache (every job's tasks asked:
what the first read of a daemon's life costs), then `--reads` reads with the cache a
daemon keeps (a job whose summary did not change is not asked for its tasks again), and
counts the requests each makes.  Prints the medians; docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from corral.afanasy.source import Details, read_farm
from corral.afanasy.wire import Client


class Counting(Client):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.count = 0

    def get(self, request: Any) -> dict[str, Any]:
        self.count += 1
        return super().get(request)


def timed(client: Counting, cache: Details | None) -> tuple[float, int, int]:
    client.count = 0
    t0 = time.perf_counter()
    farm, _index, _problems = read_farm(client, datetime.now(UTC), cache=cache)
    return time.perf_counter() - t0, client.count, sum(len(j.frames) for j in farm.jobs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="127.0.0.1:51000")
    parser.add_argument("--reads", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    client = Counting(args.server, timeout=30)
    whole = [timed(client, None) for _ in range(args.reads)]
    cache: Details = {}
    first = timed(client, cache)
    steady = [timed(client, cache) for _ in range(args.reads)]
    out = {
        "jobs": len(cache), "frames": first[2],
        "whole_read_s": round(statistics.median(t for t, _, _ in whole), 4), "whole_requests": whole[0][1],
        "cached_read_s": round(statistics.median(t for t, _, _ in steady), 4),
        "cached_requests": round(statistics.median(n for _, n, _ in steady)),
    }
    out["ratio_cached"] = round(out["cached_read_s"] / out["whole_read_s"], 3)
    print(json.dumps(out) if args.json else "\n".join(f"{k:16} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
