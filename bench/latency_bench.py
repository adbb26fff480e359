"""Benchmark: reaction time, from a supervisor event that makes a policy due to corral's transition.

    python bench/latency_bench.py [--frames 100000] [--db URL] [--events-per-s 5000] [--duration 60]
                                  [--wake/--no-wake] [--min-gap 0.5] [--interval 30] [--sink/--no-sink] [--json]
                                  [--both] [--base FILE-OR-DATABASE]

A store of `--frames` frames (the farm of `cycle_bench.py`) gets, before the daemon
starts, what the injected events need: three jobs some good host completed a frame of,
and pairs of jobs (A, B) where B, submitted blocked, waits on A's one frame.  Then a
real daemon starts, `corral run --db URL --log-format json` in a subprocess, with the
built-in pack, its default interval (`--interval`, 30 s), the engine in a child process
as by default, `--wake` or `--no-wake`, and with `--sink` a command sink (`/bin/true`
for a worker's block and a job's unblock, so delivery costs one process start).

Once its first cycle is done, the feed runs for `--duration` seconds at
`--events-per-s`: the seeded stream of `ingest_bench.py` (jobs submitted, frames
started, completed and failed, hosts down and up, replays), 500 events a batch through
the API's batch call (`Corral.record_many`, the writer `corral ingest` uses), batches
paced to the rate.  At random moments (about every `--duration / --injections`
seconds, alternating) a batch carries, after its stream events, the events of one of:

- **a bad host**: a new host fails a frame of each of the three jobs: with its third
  failure on a third job, `quarantine-worker` is due (the worker is blocked);
- **the last dependency**: A's one frame starts and completes: `unblock-when-
  dependencies-complete` is due for B.

With `--base FILE` (SQLite) or `--base NAME` (a database on `--db`'s server) the
preloaded store is kept there, or taken from there when it is there already: every run
works on a fresh copy of it, so one 1M-frame load (minutes) serves many runs.

Each injection's time is taken when its batch's commit returned.  After the feed, the
daemon gets one interval more (so late transitions count as late, not as missed), then
stops (SIGTERM).  Reaction, per injection:

- `committed`: until the daemon logged the transition, which it does right after the
  cycle's transaction committed (its JSON log's `ts`, milliseconds);
- `delivered` (with `--sink`): until the outbox row was settled delivered (`done_at`).

Reported: the median and the 99th percentile of each (nearest rank: with fewer than
100 injections, the 99th percentile is the slowest), counts, misses (no transition by
the end), the ratios to the targets (issue 20: median under 1 s, 99th percentile under
3 s at 1M frames), the feed's achieved rate, the daemon's cycles (how many, their median
length, how many news started) and the load averages before and after.  Nothing here
is a test: it prints numbers; docs/benchmarks.md ("Reaction time") records them with
the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from cycle_bench import positive  # noqa: E402
from ingest_bench import make_stream, stores  # noqa: E402

TARGET_MEDIAN, TARGET_P99 = 1.0, 3.0
BATCH = 500
#: Ids of the jobs the injections use, far above the stored farm's and the stream's.
BASE_JOB = 50_000_000
TRIO = (BASE_JOB + 1, BASE_JOB + 2, BASE_JOB + 3)
SINKS = """\
sinks:
  - name: timed
    type: command
    commands:
      block: {worker: [/bin/true, "{worker}"]}
      unblock: {job: [/bin/true, "{job}"]}
delivery:
  every: 5s
"""
LOGGED = re.compile(r"^(block|unblock) (worker|job) (\S+) \(")
CYCLE_DONE = re.compile(r"^cycle done.* in ([0-9.]+)s$")


def setup_events(injections: int) -> list[dict[str, Any]]:
    """The jobs the injections need, submitted through the feed before the daemon starts."""
    out: list[dict[str, Any]] = []
    for job in TRIO:
        out.append({"type": "job_submitted", "job": {"id": job, "name": f"lat_trio_{job}", "frames": f"1-{injections + 2}"}})
        out.append({"type": "instance_started", "instance": f"{job}.good", "job": job, "host": "latgood"})
        out.append({"type": "frame_started", "job": job, "frame": 1, "host": "latgood", "instance": f"{job}.good"})
        out.append({"type": "frame_completed", "job": job, "frame": 1, "host": "latgood", "instance": f"{job}.good"})
    for k in range(injections):
        a, b = pair(k)
        out.append({"type": "job_submitted", "job": {"id": a, "name": f"lat_dep_{a}", "frames": "1"}})
        out.append({"type": "job_submitted", "job": {"id": b, "name": f"lat_held_{b}", "frames": "1-2",
                                                    "state": "blocked", "depends_on": [a]}})
    return [{"id": f"lat-setup-{n}", **event} for n, event in enumerate(out)]


def pair(k: int) -> tuple[int, int]:
    return BASE_JOB + 100 + 2 * k, BASE_JOB + 101 + 2 * k


def injection(k: int) -> tuple[str, list[dict[str, Any]]]:
    """The events of injection `k` and the entity whose transition they make due ("worker:x", "job:n")."""
    if k % 2 == 0:
        host = f"lat{k:04d}"
        events: list[dict[str, Any]] = []
        for job in TRIO:
            inst = f"{job}.{host}"
            events.append({"type": "instance_started", "instance": inst, "job": job, "host": host})
            events.append({"type": "frame_started", "job": job, "frame": k + 2, "host": host, "instance": inst})
            events.append({"type": "frame_failed", "job": job, "frame": k + 2, "exit_code": 1})
        return f"worker:{host}", ided(k, events)
    a, b = pair(k)
    inst = f"{a}.r0000"
    return f"job:{b}", ided(k, [
        {"type": "instance_started", "instance": inst, "job": a, "host": "r0000"},
        {"type": "frame_started", "job": a, "frame": 1, "host": "r0000", "instance": inst},
        {"type": "frame_completed", "job": a, "frame": 1, "host": "r0000", "instance": inst},
        {"type": "instance_ended", "instance": inst, "exit_code": 0},
    ])


def ided(k: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": f"lat-{k}-{n}", **event} for n, event in enumerate(events)]


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(delays: list[float], injected: int) -> dict[str, Any]:
    if not delays:
        return {"count": 0, "misses": injected}
    median, p99 = statistics.median(delays), nearest_rank(delays, 0.99)
    return {"count": len(delays), "misses": injected - len(delays), "median_s": round(median, 3),
            "p99_s": round(p99, 3), "min_s": round(min(delays), 3), "max_s": round(max(delays), 3),
            "ratio_median": round(median / TARGET_MEDIAN, 2), "ratio_p99": round(p99 / TARGET_P99, 2)}


def read_log(path: Path) -> tuple[dict[str, float], list[float]]:
    """The daemon's JSON log: when each (kind:entity) was first logged as applied, and the cycles' lengths."""
    logged: dict[str, float] = {}
    cycles: list[float] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = rec.get("msg", "")
        hit = LOGGED.match(msg)
        if hit:
            key = f"{hit.group(2)}:{hit.group(3)}"
            logged.setdefault(key, datetime.fromisoformat(rec["ts"]).timestamp())
            continue
        done = CYCLE_DONE.match(msg)
        if done:
            cycles.append(float(done.group(1)))
    return logged, cycles


def delivered_at(url: str) -> dict[str, float]:
    from sqlalchemy import select

    from corral.store.store import Store
    from corral.store.tables import table

    out = table("outbox")
    with Store.open(url) as store, store.engine.connect() as conn:
        rows = conn.execute(select(out.c.kind, out.c.entity_id, out.c.done_at).where(out.c.status == "delivered"))
        return {f"{kind}:{entity}": done.timestamp() for kind, entity, done in rows if done is not None}


def wait_log(path: Path, text: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.returncode}):\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise SystemExit(f"no '{text}' in the daemon's log after {timeout:.0f}s")


def run(args: argparse.Namespace, wake: bool, url: str, tmp: Path) -> dict[str, Any]:
    from corral import Corral

    rnd = random.Random(args.seed)
    from corral.feed import BadLine

    with Corral.open(url) as corral:
        bad = [r for r in corral.record_many(setup_events(args.injections)) if isinstance(r, BadLine)]
        if bad:
            raise SystemExit(f"setup events refused: {bad[:3]}")
    lines = make_stream(int(args.events_per_s * args.duration), args.frames, args.seed)
    stream = [json.loads(line) for line in lines]
    batches = [stream[i:i + BATCH] for i in range(0, len(stream), BATCH)]
    period = BATCH / args.events_per_s
    # the injections: evenly spread over the feed, each at a random batch in its slot
    slots = len(batches) / args.injections
    at_batch = {min(len(batches) - 1, int(k * slots + rnd.uniform(0, slots))): k for k in range(args.injections)}

    cmd = [sys.executable, "-m", "corral", "run", "--db", url, "--log-format", "json", "--interval", str(args.interval),
           "--min-gap", str(args.min_gap), "--wake" if wake else "--no-wake"]
    if args.sink:
        sinks = tmp / "sinks.yaml"
        sinks.write_text(SINKS)
        cmd += ["--sinks", str(sinks)]
    log = tmp / "daemon.log"
    load_before = os.getloadavg()
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        wait_log(log, "cycle done", args.start_timeout, proc)
        injected: dict[str, float] = {}
        with Corral.open(url) as corral:
            t0 = time.monotonic()
            for i, batch in enumerate(batches):
                wait = t0 + i * period - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                k = at_batch.get(i)
                if k is None:
                    corral.record_many(batch)
                    continue
                key, events = injection(k)
                corral.record_many(batch + events)
                injected[key] = time.time()
            fed = time.monotonic() - t0
        # one interval more (plus a cycle), so a late transition counts as late, not as missed
        deadline = time.monotonic() + args.interval + args.grace
        while time.monotonic() < deadline:
            logged, _cycles = read_log(log)
            if all(key in logged for key in injected):
                break
            time.sleep(0.5)
        if args.sink:  # and its delivery
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(k in delivered_at(url) for k in injected):
                time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    logged, cycles = read_log(log)
    text = log.read_text(errors="replace")
    committed = [logged[k] - t for k, t in injected.items() if k in logged]
    result: dict[str, Any] = {
        "frames": args.frames, "db": "postgresql" if url.startswith("postgresql") else "sqlite",
        "wake": wake, "min_gap_s": args.min_gap, "interval_s": args.interval, "sink": args.sink,
        "events_per_s_target": args.events_per_s, "events_per_s": round(len(stream) / fed, 1),
        "duration_s": round(fed, 1), "injected": len(injected),
        "committed": summary(committed, len(injected)),
        "by_kind": {kind: summary([logged[k] - t for k, t in injected.items() if k in logged and k.startswith(kind)],
                                  sum(k.startswith(kind) for k in injected)) for kind in ("worker", "job")},
        "cycles": len(cycles), "cycle_median_s": round(statistics.median(cycles), 3) if cycles else None,
        "cycle_max_s": round(max(cycles), 3) if cycles else None,
        "refused": sum('"msg": "refused ' in line for line in text.splitlines()),
        "errors": sum('"level": "error"' in line for line in text.splitlines()),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "targets": {"median_s": TARGET_MEDIAN, "p99_s": TARGET_P99},
    }
    if args.sink:
        done = delivered_at(url)
        result["delivered"] = summary([done[k] - t for k, t in injected.items() if k in done], len(injected))
    if args.keep_log:
        kept = Path(f"{args.keep_log}.{'wake' if wake else 'no-wake'}")
        kept.write_text(text)
        result["log"] = str(kept)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=positive, default=100_000)
    ap.add_argument("--db", help="a PostgreSQL URL (a scratch database is made on its server); default: SQLite")
    ap.add_argument("--events-per-s", type=float, default=5000.0)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of feed")
    ap.add_argument("--injections", type=positive, default=40)
    ap.add_argument("--wake", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--both", action="store_true", help="without wake, then with it, each on a fresh copy of the "
                    "same preloaded store (one preload: 1M frames take minutes)")
    ap.add_argument("--min-gap", type=float, default=0.5)
    ap.add_argument("--interval", type=float, default=30.0, help="the daemon's (default: corral run's default)")
    ap.add_argument("--sink", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--grace", type=float, default=10.0, help="seconds past one interval to wait for late transitions")
    ap.add_argument("--start-timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--base", help="keep the preloaded store for later runs, or reuse it: a SQLite file's path, or "
                    "with --db, a database name on that server (a 1M-frame load takes minutes)")
    ap.add_argument("--keep-log", help="write the daemon's log here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    with stores(args.db, args.frames, args.seed, base=args.base) as fresh:
        for wake in ((False, True) if args.both else (args.wake,)):
            with tempfile.TemporaryDirectory(prefix="corral-latency-") as tmp:
                results.append(run(args, wake, fresh(), Path(tmp)))
    if args.json:
        print(json.dumps(results if args.both else results[0], indent=2))
        return
    for result in results:
        print(f"wake: {result['wake']}")
        for name in ("committed", "delivered"):
            part = result.get(name)
            if part:
                print(f"{name:>10}: median {part.get('median_s')} s (target {TARGET_MEDIAN}), p99 {part.get('p99_s')} s "
                      f"(target {TARGET_P99}), {part['count']} of {result['injected']}, {part['misses']} missed")
        print(json.dumps({k: v for k, v in result.items() if k not in ("committed", "delivered", "by_kind")}))


if __name__ == "__main__":
    main()
