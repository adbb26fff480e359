"""Benchmark: what the outbox costs a cycle that applies, and how fast delivery drains it.

    python bench/outbox_bench.py [--actions 1000] [--db URL] [--rounds 5] [--json]

- apply: one transaction applying N proposals (blocks of pending jobs, as a policy
  would), with no sink configured (the embedded default: nothing queued), then with 1
  and with 3 sinks (one outbox row per sink per action, and the transition's id
  returned for each); the median of `--rounds` fresh stores each.  `ratio_apply_1` and
  `ratio_apply_3`: against no sink.
- deliver: draining those N x 3 rows through sinks that answer at once (what the
  outbox itself costs: claim, send, settle, two short transactions a row), as rows a
  second; and the same through a command sink running `/bin/true` (a process per row:
  what a command-line farm manager costs at best).

Nothing here is a test: it prints numbers; docs/benchmarks.md records them with the
command that produced them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.deliver import deliver
from corral.farm import Farm, Job
from corral.outbox import Delivered, Entry, Outcome, Retries, Route
from corral.sinks.command import CommandSink
from corral.states import Action, Kind
from corral.store import Proposal, Store

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
EVERY = frozenset((k, a) for k in Kind for a in Action)


class Instant:
    """A sink that answers at once: what delivery costs without a supervisor."""

    def __init__(self, name: str) -> None:
        self.name = name

    def carries(self) -> frozenset[tuple[Kind, Action]]:
        return EVERY

    def deliver(self, entry: Entry) -> Outcome:
        return Delivered("ok")

    def took(self, entry: Entry) -> bool | None:
        return True

    def close(self) -> None:
        pass


def fresh(url: str | None, folder: Path, n: int, sinks: int, tag: str) -> Store:
    if url is None:
        store = Store.open(f"sqlite:///{folder / f'{tag}.db'}")
        store.init()
    else:
        store = Store.open(url)
        store.init()
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM outbox")
            conn.exec_driver_sql("DELETE FROM transitions")
    store.load_farm(Farm(jobs={i: Job(i, f"shot{i:05d}") for i in range(1, n + 1)}), replace=True)
    store.set_routes([Route(f"sink{i}", EVERY) for i in range(sinks)])
    return store


def apply_once(store: Store, n: int) -> float:
    farm = store.read_farm()
    proposals = [Proposal(Kind.JOB, str(i), Action.BLOCK, reason="held", policy="p", automatic=True)
                 for i in range(1, n + 1)]
    t0 = time.perf_counter()
    report = store.apply_transitions(farm, proposals, now=NOW, actor="corral", cycle_id="bench")
    took = time.perf_counter() - t0
    assert len(report.applied) == n, report.refused[:3]
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--actions", type=int, default=1000)
    parser.add_argument("--db", default=None, help="a PostgreSQL URL (default: a SQLite file in a temp folder)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.actions
    out: dict[str, Any] = {"actions": n, "db": "postgresql" if args.db else "sqlite"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for sinks in (0, 1, 3):
            times = []
            for r in range(args.rounds):
                store = fresh(args.db, folder, n, sinks, f"a{sinks}-{r}")
                times.append(apply_once(store, n))
                store.close()
            out[f"apply_{sinks}_sinks_s"] = round(statistics.median(times), 4)
        out["ratio_apply_1"] = round(out["apply_1_sinks_s"] / out["apply_0_sinks_s"], 2)
        out["ratio_apply_3"] = round(out["apply_3_sinks_s"] / out["apply_0_sinks_s"], 2)
        store = fresh(args.db, folder, n, 3, "d")
        apply_once(store, n)
        sinks = {f"sink{i}": Instant(f"sink{i}") for i in range(3)}
        t0 = time.perf_counter()
        report = deliver(store, sinks, clock=lambda: NOW, retries=Retries())
        took = time.perf_counter() - t0
        assert len(report.delivered) == 3 * n, (len(report.delivered), report.failed[:2])
        out["deliver_rows"] = 3 * n
        out["deliver_rows_per_s"] = round(3 * n / took)
        store.close()
        rows = min(n, 300)
        store = fresh(args.db, folder, rows, 1, "c")
        apply_once(store, rows)
        command = CommandSink("sink0", {Action.BLOCK: {Kind.JOB: ["/bin/true", "{job}"]}})
        t0 = time.perf_counter()
        report = deliver(store, {"sink0": command}, clock=lambda: NOW, retries=Retries())
        took = time.perf_counter() - t0
        assert len(report.delivered) == rows
        out["command_rows"] = rows
        out["command_rows_per_s"] = round(rows / took)
        store.close()
    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
