"""Run the cycle benchmark at every size on both databases and print the table for docs/benchmarks.md.

    python bench/table.py [--sizes 10000,100000,1000000] [--postgres URL]

Each run is `python bench/cycle_bench.py --frames N [--db URL] --json` in its own
process; the table is printed as Markdown, the raw JSON lines to stderr.  The steady
cycle and `ratio_io` run the rule engine in a child process, as `corral run` does by
default, each next to the same cycles with the engine in the daemon's process
(`corral run --no-isolate`, which the cold and dry cycles use too); then two columns
of dry steady cycles (nothing applied, the backlog planned again each cycle), which
tables before the committing steady cycle reported as the steady cycle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COLUMNS = (
    ("frames", "frames"),
    ("db", "db"),
    ("cold_cycle_s", "cold cycle (s)"),
    ("steady_cycle_s", "steady cycle (s)"),
    ("steady_no_isolate_cycle_s", "steady cycle, --no-isolate (s)"),
    ("peak_rss_mb", "peak RSS (MB)"),
    ("cold_floor_s", "cold floor (s)"),
    ("io_floor_s", "io floor (s)"),
    ("io_floor_no_isolate_s", "io floor, --no-isolate (s)"),
    ("python_floor_s", "python floor (s)"),
    ("rule_eval_s", "rule eval (s)"),
    ("ratio_cold", "ratio_cold"),
    ("ratio_io", "ratio_io"),
    ("ratio_io_no_isolate", "ratio_io, --no-isolate"),
    ("ratio_python", "ratio_python"),
    ("steady_dry_cycle_s", "dry steady cycle (s)"),
    ("ratio_io_dry", "ratio_io, dry"),
)


def run(frames: int, db: str | None) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "cycle_bench.py"), "--frames", str(frames), "--json"]
    if db:
        cmd += ["--db", db]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for db in (None, args.postgres):
            rows.append(run(size, db))
    print("| " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(key, "")) for key, _ in COLUMNS) + " |")


if __name__ == "__main__":
    main()
