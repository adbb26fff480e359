"""Benchmark: the cost of a policy cycle at farm scale, against floors measured in the same run.

    python bench/cycle_bench.py --frames 100000 [--db URL] [--rounds 5] [--json]

Builds a farm of N frames (about 100 frames per job, 2,000 workers, a realistic mix
of states with a few percent failing), then, in a fresh process (so peak RSS is the
daemon's, not the generator's):

- cold cycle: the first evaluation of the built-in pack in a fresh Session (what a
  daemon does when it starts), timed end to end (read, facts, evaluate, plan);
- steady cycle: after 1% of the frame rows changed (as a supervisor would change
  them: pending->running, running->complete/failed with a run recorded), the next
  cycle of the daemon, committing as `corral run` does, after one committing cycle
  (untimed) has acted on the backlog the cold cycle found; `--rounds` times (default
  5), and the median is reported.  Before that, as many dry steady cycles (nothing
  applied, so each plans the whole backlog again) are reported as `steady_dry_*`:
  what earlier tables called the steady cycle (see `measure`).  The headline steady
  figures (`steady_cycle_s`, `ratio_io`) run the rule engine in a child process, as
  `corral run` does by default, in a process of their own after the others; the same
  committing cycles with the engine in the daemon's process (`corral run
  --no-isolate`) are measured first and named so (`steady_no_isolate_*`,
  `ratio_io_no_isolate`), as are the cold and dry cycles (the engine in process);
- floors, measured on the same database in the same run:
  * io floor: plain SQL queries returning just the rows changed since the previous
    cycle (every farm table, on the indexed change stamp `rev`), before each steady
    cycle; the median;
  * cold floor: plain SQL queries reading every row the cold cycle reads (the median
    of three reads, made just before the cold cycle, in a process of their own);
  * python floor: a hand-written plain-Python evaluation of the built-in pack's
    conditions over the same facts (every fact of the farm);
- ratios: ratio_io = steady / io floor, ratio_cold = cold / cold floor,
  ratio_python = rule-evaluation time of a cold cycle (picking the entities in a gate's
  states, gating and the engine; not building facts, which both sides need) / python
  floor, both measured in one process, interleaved, the median of 3 rounds each (the
  daemon process's own cold evaluation is reported too, as rule_eval_cold_s).

Prints one JSON object with --json, else a table.  Nothing here is a test: it prints
numbers; docs/benchmarks.md records them with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from corral.farm import Farm, Frame, FrameRun, Instance, Job, Worker  # noqa: E402
from corral.states import FrameState, Hold, InstanceState, WorkerState  # noqa: E402

NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
FRAMES_PER_JOB = 100
WORKERS = 2000


def make_farm(frames: int, seed: int) -> Farm:
    """A seeded farm: most jobs healthy, a few failing, some chains of dependencies."""
    rnd = random.Random(seed)
    hosts = [f"r{n:04d}" for n in range(WORKERS)]
    bad_hosts = set(rnd.sample(hosts, WORKERS // 100))
    farm = Farm(workers={h: Worker(h, WorkerState.UP, NOW - timedelta(days=1)) for h in hosts})
    jobs = max(1, frames // FRAMES_PER_JOB)
    for j in range(1, jobs + 1):
        job = Job(id=j, name=f"show_sh{j:05d}", priority=rnd.randint(10, 90), retry_limit=rnd.choice([0, 1, 2, 3]),
                  submitted_at=NOW - timedelta(hours=rnd.uniform(1, 24)))
        if j > 1 and rnd.random() < 0.2:
            job.depends_on = [rnd.randint(max(1, j - 50), j - 1)]
        profile = rnd.random()
        job_hosts = rnd.sample(hosts, 4)
        for i, h in enumerate(job_hosts):
            inst = Instance(f"{j}.{i}", j, h, InstanceState.RUNNING, NOW - timedelta(hours=1))
            job.instances[inst.id] = inst
        for n in range(1, FRAMES_PER_JOB + 1):
            r = rnd.random()
            if profile < 0.15:
                state = FrameState.PENDING
            elif profile < 0.35:
                state = FrameState.COMPLETE
            else:
                state = (FrameState.COMPLETE if r < 0.45 else FrameState.RUNNING if r < 0.60
                         else FrameState.FAILED if r < 0.63 else FrameState.PENDING)
            inst = job.instances[f"{j}.{n % 4}"]
            if inst.host in bad_hosts and state in (FrameState.COMPLETE, FrameState.RUNNING):
                state = FrameState.FAILED
            frame = Frame(j, n, state, state_since=NOW - timedelta(minutes=rnd.uniform(0, 120)))
            if state != FrameState.PENDING:
                frame.host, frame.instance, frame.attempts = inst.host, inst.id, 1
                frame.started_at = NOW - timedelta(minutes=rnd.uniform(30, 240))
            if state in (FrameState.COMPLETE, FrameState.FAILED):
                frame.finished_at = frame.started_at + timedelta(minutes=rnd.uniform(1, 30))  # type: ignore[operator]
                frame.exit_code = 0 if state == FrameState.COMPLETE else rnd.choice([1, 2, 137])
                frame.runs.append(FrameRun(inst.host, inst.id, state, frame.exit_code, frame.started_at, frame.finished_at))
            job.frames[n] = frame
        if profile < 0.15 and job.depends_on:
            job.hold = Hold.BLOCKED
        job.state = job.derived_state()
        job.state_since = NOW - timedelta(minutes=rnd.uniform(1, 90))
        farm.jobs[j] = job
    return farm


def generate(url: str, frames: int, seed: int) -> None:
    from corral.store.store import Store

    farm = make_farm(frames, seed)
    with Store.open(url) as store:
        store.init()
        store.load_farm(farm, replace=True)


def change_one_percent(store: Any, frames: int, seed: int, at: datetime) -> None:
    """What a supervisor does between two cycles, on 1% of the frame rows.

    A frame is started by one of its job's instances (`make_farm`'s: frame n by instance
    n % 4) and runs on that instance's host, as a real supervisor's frames do.  Until
    this was fixed, a started frame got a random host of the farm's 2,000, a host its
    instance was not on, so each cycle made a few thousand (job, host) pairs a real farm
    never has (see docs/benchmarks.md for what that moved)."""
    from sqlalchemy import bindparam, insert, update

    from corral.store.tables import table

    rnd = random.Random(seed + 1)
    jobs = max(1, frames // FRAMES_PER_JOB)
    picks = {(rnd.randint(1, jobs), rnd.randint(1, FRAMES_PER_JOB)) for _ in range(frames // 100)}
    fr, runs = table("frames"), table("frame_runs")
    with store.engine.begin() as conn:
        instance_hosts = dict(conn.execute(text("SELECT id, host FROM instances")).tuples().all())
        rows = {(r.job_id, r.number): r for r in conn.execute(
            text("SELECT job_id, number, state, host, instance, started_at FROM frames WHERE job_id <= :j"), {"j": jobs})
            if (r.job_id, r.number) in picks}
        updates, new_runs = [], []
        for (j, n), r in rows.items():
            inst = f"{j}.{n % 4}"
            host = instance_hosts[inst]
            if r.state == "running":
                state = "complete" if rnd.random() < 0.95 else "failed"
                code = 0 if state == "complete" else 1
                new_runs.append({"job_id": j, "number": n, "host": r.host or host, "instance": r.instance or inst,
                                 "state": state, "exit_code": code, "started_at": at - timedelta(minutes=5),
                                 "finished_at": at})
                updates.append({"j": j, "n": n, "state": state, "host": r.host or host, "inst": r.instance or inst,
                                "code": code})
            else:
                updates.append({"j": j, "n": n, "state": "running", "host": host, "inst": inst, "code": None})
        stmt = (update(fr).where(fr.c.job_id == bindparam("j"), fr.c.number == bindparam("n"))
                .values(state=bindparam("state"), host=bindparam("host"), instance=bindparam("inst"),
                        exit_code=bindparam("code"), state_since=at, version=fr.c.version + 1, updated_at=at))
        conn.execute(stmt, updates)
        if new_runs:
            conn.execute(insert(runs), new_runs)


def python_floor(facts: dict[str, list[dict[str, Any]]]) -> float:
    """The built-in pack's conditions written by hand (`floor_matches`), over the same
    facts: its time."""
    t0 = time.perf_counter()
    floor_matches(facts)
    return time.perf_counter() - t0


#: The instance, job and frame states the pack's conditions admit (corral's screens rule
#: every other entity out on its state alone).
_INSTANCE_STATES = frozenset({"pending", "running", "failed"})
_JOB_STATES = frozenset({"running", "failing", "retrying", "failed", "blocked", "pending"})
_ACTIVE = ("running", "failing", "retrying")


def floor_matches(facts: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """The built-in pack's conditions (rules/*.yaml, their default parameters) written by
    hand, screened as corral screens them: each entity ruled out by its state first (one
    lookup: the states some condition of its kind admits), then its conditions, cheapest
    field first, the first that fails ending them.  Returns the matches per policy, which
    tests/test_cycle_bench.py holds to the reference evaluator's on a generated farm: a
    pack change that this floor does not follow fails there (the floor had fallen behind
    issue 22's conditions, and `ratio_python` measured corral against less work)."""
    failing_instances = locked_out = blocked_jobs = retried_jobs = unblocked = kept_blocked = 0
    retried_frames = quarantined = 0
    for f in facts["instance"]:
        if f["state"] not in _INSTANCE_STATES or f["job"]["state"] in ("blocked", "killed"):
            continue
        if f["consecutive_failures"] >= 5:
            failing_instances += 1
        if f["host_failed_frames_on_job"] > 5 and f["host_successes_on_job"] == 0 and f["other_hosts_succeeding"] > 0:
            locked_out += 1
    for f in facts["job"]:
        s = f["state"]
        if s not in _JOB_STATES:
            continue
        if s in _ACTIVE:
            if (f["frames_complete"] == 0 and f["succeeding_hosts"] == 0 and f["worst_host_failed_frames"] > 0
                    and f["failing_hosts_percent"] >= 50
                    and (f["failing_hosts_healthy_elsewhere"] >= 4 or f["failing_hosts_only_here"] >= 4
                         or (f["failing_hosts_healthy_elsewhere"] >= 2 and f["hosts_not_failing"] == 0
                             and f["worst_host_failed_attempts"] > 2))):
                blocked_jobs += 1
        elif s == "failed":
            if f["retries_left"] > 0 and f.get("time_in_state", -1) >= 300:
                retried_jobs += 1
        elif s == "blocked":
            if f["dependencies"]["all_complete"] and f.get("blocked_by") in (None, "keep-dependents-blocked"):
                unblocked += 1
        elif not f["suspended"] and f["frames_running"] == 0 and f["frames_complete"] == 0:  # pending
            d = f["dependencies"]
            if d["failed"] > 0 or d["killed"] > 0:
                kept_blocked += 1
    for f in facts["frame"]:
        if f["state"] != "failed":
            continue
        if (f["retries_left"] > 0 and f.get("time_in_state", -1) >= 120 and f["job"]["state"] in _ACTIVE
                and f.get("failure_class") != "user_kill"):
            retried_frames += 1
    for f in facts["worker"]:
        if f.get("state") != "up" or f["consecutive_failures"] < 3:
            continue
        quiet = f.get("failing_for")
        if f["distinct_jobs_failed_others_complete"] >= 3 or (
                (quiet is None or quiet >= 3600) and f["distinct_jobs_failed"] >= 3):
            quarantined += 1
    return {"block-failing-instance": failing_instances, "lock-host-out-of-job": locked_out,
            "block-job-when-all-hosts-fail": blocked_jobs, "retry-failed-jobs": retried_jobs,
            "unblock-when-dependencies-complete": unblocked, "keep-dependents-blocked": kept_blocked,
            "retry-failed-frames": retried_frames, "quarantine-worker": quarantined}


def python_floor_before(facts: dict[str, list[dict[str, Any]]]) -> float:
    """The python floor of tables before issue 20 (every fact, no screen by state first), kept
    to report both in one run."""
    t0 = time.perf_counter()
    hits = 0
    for f in facts["instance"]:
        if f["state"] in ("pending", "running", "failed"):
            if f["consecutive_failures"] >= 5:
                hits += 1
            if f["host_failures_on_job"] > 5 and f["host_successes_on_job"] == 0 and f["other_hosts_succeeding"] > 0:
                hits += 1
    for f in facts["job"]:
        s = f["state"]
        if (s in ("running", "failing", "retrying") and f["failing_hosts"] >= 2 and f["hosts_not_failing"] == 0
                and f["succeeding_hosts"] == 0 and f["frames_complete"] == 0 and f["frames_failed"] >= 5):
            hits += 1
        if s == "failed" and f["retries_left"] > 0 and f.get("time_in_state", -1) >= 300:
            hits += 1
        d = f["dependencies"]
        if s == "blocked" and d["all_complete"] and f.get("blocked_by") in (None, "keep-dependents-blocked"):
            hits += 1
        if (s == "pending" and not f["suspended"] and f["frames_running"] == 0 and f["frames_complete"] == 0
                and (d["failed"] > 0 or d["killed"] > 0)):
            hits += 1
    for f in facts["frame"]:
        if (f["state"] == "failed" and f["retries_left"] > 0 and f.get("time_in_state", -1) >= 120
                and f["job"]["state"] in ("running", "failing", "retrying")):
            hits += 1
    for f in facts["worker"]:
        if f.get("state") == "up" and f["distinct_jobs_failed"] >= 3 and f["consecutive_failures"] >= 3:
            hits += 1
    return time.perf_counter() - t0



#: Rule-evaluation time of the policy set made last by `timed_session` (one runs at a time).
_EVAL = [0.0]
#: The part of it spent screening (`_time_screens`), which tables before issue 20 left out.
_SCREEN = [0.0]


def timed_session(policies: Any) -> tuple[Any, list[float]]:
    """A fresh session whose rule evaluation is timed into the returned cell: the engine
    updates, the first cycle's pass that picks the entities in some gate's states
    before any fact is built (LiveFarm.everything), and, where `_time_screens` ran (the
    python floor's process), the screening of each entity by its gates: all rule
    evaluation."""
    from corral.live import LiveFarm
    from corral.policyset import PolicySet
    from corral.session import Session

    _EVAL[0] = 0.0
    session = Session(PolicySet(policies), keep_live=True)
    evaluator: Any = session.evaluator
    raw_update = evaluator.update

    def timed_update(kind: Any, changed: Any, now: Any = None) -> Any:
        t = time.perf_counter()
        out = raw_update(kind, changed, now)
        _EVAL[0] += time.perf_counter() - t
        return out

    evaluator.update = timed_update
    if not getattr(LiveFarm.everything, "timed", False):
        raw_everything = LiveFarm.everything

        def timed_everything(self: Any, states: Any = None) -> Any:
            t = time.perf_counter()
            out = raw_everything(self, states)
            _EVAL[0] += time.perf_counter() - t
            return out

        timed_everything.timed = True  # type: ignore[attr-defined]
        LiveFarm.everything = timed_everything  # type: ignore[method-assign]
    return session, _EVAL


def timer_cost(samples: int = 200_000) -> float:
    """What one reading of the wrapper's clock adds to what it times: the median, over
    batches, of the time `perf_counter() - perf_counter()` itself counts.  A screen is a
    fraction of a microsecond and a cold cycle screens thousands (2,500 at 10k frames), so
    uncorrected the timer counted about a tenth of the screening as corral's."""
    counter = time.perf_counter
    batches = []
    for _ in range(20):
        spent = 0.0
        for _ in range(samples // 20):
            t = counter()
            spent += counter() - t
        batches.append(spent / (samples // 20))
    return statistics.median(batches)


def _time_screens() -> None:
    """Screening an entity by its gates (`Screen.admits`, `Screen.passes`: the fields its
    state's gates read, probed before its fact is built) is rule evaluation too: timed
    into the same cell (since issue 20; before, `ratio_python` left it out), less the
    clock's own cost per call (`timer_cost`)."""
    from corral.facts.screens import Screen

    cost = timer_cost()
    for name in ("admits", "passes"):
        raw = getattr(Screen, name)
        if getattr(raw, "timed", False):
            continue

        def timed(*args: Any, _raw: Any = raw) -> Any:
            t = time.perf_counter()
            out = _raw(*args)
            took = time.perf_counter() - t - cost
            _EVAL[0] += took
            _SCREEN[0] += took
            return out

        timed.timed = True  # type: ignore[attr-defined]
        setattr(Screen, name, timed)


def measure_python_floor(url: str, rounds: int) -> dict[str, float]:
    """The python floor and, in the same process and interleaved with it, the rule
    evaluation of a cold cycle on a fresh policy set: (median floor, median evaluation)
    over `rounds`.  Measured side by side, so a machine that runs faster or slower for a
    while moves both (on this shared machine the floor alone moved by half between runs).
    In its own process, so building every fact of the farm does not count in the daemon's RSS."""
    import gc

    from corral.cycle import run_cycle
    from corral.facts import FactBuilder
    from corral.policy.loader import builtin_dir, load_paths
    from corral.states import Kind
    from corral.store.store import Store

    policies = load_paths([builtin_dir()]).policies
    _time_screens()  # here only: the daemon's cycles in `measure` run unwrapped
    store = Store.open(url)
    farm = store.read_farm()
    builder = FactBuilder(farm, NOW)
    facts = {str(k): builder.facts(k) for k in Kind}
    floors, evals, befores, unscreened = [], [], [], []
    for r in range(rounds):
        if r % 2:  # turn about: neither floor always runs on the other's warm caches
            befores.append(python_floor_before(facts))
            floors.append(python_floor(facts))
        else:
            floors.append(python_floor(facts))
            befores.append(python_floor_before(facts))
        session, eval_time = timed_session(policies)
        _SCREEN[0] = 0.0
        run_cycle(store, session, commit=False, now=NOW)
        evals.append(eval_time[0])
        unscreened.append(eval_time[0] - _SCREEN[0])
        del session
        gc.collect()
    store.close()
    return {"floor": statistics.median(floors), "eval": statistics.median(evals),
            "floor_before": statistics.median(befores), "eval_unscreened": statistics.median(unscreened)}


#: The columns corral's reads take from each table (`corral.store.rows`: `read_farm`, and
#: `corral.store.changes.read_changes` for the tracked ones), which the floors read too.
def floor_columns() -> dict[str, str]:
    from corral.farm import columns
    from corral.states import Kind

    return {
        "jobs": ", ".join(columns(Kind.JOB)),
        "job_dependencies": "job_id, depends_on",
        "instances": ", ".join(columns(Kind.INSTANCE)),
        "frames": ", ".join(columns(Kind.FRAME)),
        "frame_runs": "id, job_id, number, host, instance, state, exit_code, started_at, finished_at",
        "frame_dependencies": "job_id, number, depends_job, depends_number",
        "workers": ", ".join(columns(Kind.WORKER)),
    }


#: The tables a steady cycle reads changes from (`corral.store.changes.TRACKED`).
TRACKED = ("jobs", "frames", "instances", "workers", "frame_runs", "job_dependencies")


def lean_read(store: Any, where: str = "", tables: tuple[str, ...] | None = None) -> float:
    """The leanest read of what corral reads: exactly its columns, on the driver's own
    cursor (no SQLAlchemy statement or result handling), `fetchall` in one call, no
    ORDER BY (corral sorts some reads to assemble the farm; the floor needs no order)
    and none of corral's conversions (SQLite's timestamps are read as stored)."""
    cols = floor_columns()
    with store.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        t0 = time.perf_counter()
        cursor = raw.cursor()
        for name in tables or tuple(cols):
            cursor.execute(f"SELECT {cols[name]} FROM {name}{f' WHERE {where}' if where else ''}")  # noqa: S608
            cursor.fetchall()
        cursor.close()
        took = time.perf_counter() - t0
        conn.rollback()
    return took


def star_read(store: Any, where: str = "", tables: tuple[str, ...] | None = None) -> float:
    """The floors before issue 20: `SELECT *` through SQLAlchemy (`exec_driver_sql`), kept
    to report both in one run (docs/benchmarks.md, "Honest floors")."""
    t0 = time.perf_counter()
    with store.engine.connect() as conn:
        for name in tables or ("jobs", "job_dependencies", "instances", "frames", "frame_runs", "frame_dependencies",
                               "workers"):
            conn.exec_driver_sql(f"SELECT * FROM {name}{f' WHERE {where}' if where else ''}").fetchall()  # noqa: S608
    return time.perf_counter() - t0


def measure_cold_floor(url: str) -> tuple[float, float]:
    """Plain SQL reading every row the cold cycle reads: the median of three reads (the
    first also warms the OS cache, which the cold cycle then finds warm too), the lean
    read and the `SELECT *` of earlier tables interleaved.  In its own process: a
    million rows fetched at once would otherwise set the daemon's peak RSS."""
    from corral.store.store import Store

    store = Store.open(url)
    lean, star = [], []
    for r in range(3):
        if r % 2:
            lean.append(lean_read(store))
            star.append(star_read(store))
        else:
            star.append(star_read(store))
            lean.append(lean_read(store))
    store.close()
    return statistics.median(lean), statistics.median(star)


#: The `SELECT *` io floors of the steady rounds (see `star_read`), in the order read.
STAR_IO_FLOORS: list[float] = []


def read_io_floor(store: Any, mark: int) -> float:
    """Plain SQL returning just the rows changed since `mark`: the columns corral reads
    from every tracked table, on the indexed change stamp (see `lean_read`); the
    `SELECT *` read of earlier tables is taken alongside into STAR_IO_FLOORS (one
    before, one after, turn about, so neither always finds the pages warm)."""
    where = f"rev >= {int(mark)} OR rev IS NULL"
    if len(STAR_IO_FLOORS) % 2:
        lean = lean_read(store, where, TRACKED)
        STAR_IO_FLOORS.append(star_read(store, where, TRACKED))
    else:
        STAR_IO_FLOORS.append(star_read(store, where, TRACKED))
        lean = lean_read(store, where, TRACKED)
    return lean


def steady_rounds(store: Any, session: Any, frames: int, seed: int, rounds: range, *, commit: bool
                  ) -> tuple[list[float], list[float], list[float], list[Any]]:
    """`rounds` steady cycles, each after another 1% of the frame rows changed, with the
    io floor read just before it: (cycles, floors, rule evaluations, results)."""
    from corral.cycle import run_cycle

    cycles, floors, evals, results = [], [], [], []
    for r in rounds:
        mark = session.live.mark.value if session.live else 0
        later = NOW + timedelta(seconds=30 * r)
        change_one_percent(store, frames, seed + r, later)
        floors.append(read_io_floor(store, mark))
        _EVAL[0] = 0.0
        t0 = time.perf_counter()
        results.append(run_cycle(store, session, commit=commit, now=later))
        cycles.append(time.perf_counter() - t0)
        evals.append(_EVAL[0])
    return cycles, floors, evals, results


def measure(url: str, frames: int, seed: int, rounds: int, cold_floors: tuple[float, float]) -> dict[str, Any]:
    """The daemon's cycles, in the order a daemon runs them.

    1. The cold cycle: the first evaluation on a fresh policy set (dry, so every run
       plans the same).
    2. Dry steady cycles, `rounds` of them: the same evaluation after each 1% change,
       nothing applied, so each plans again the backlog the cold cycle found (the
       figure earlier tables reported as the steady cycle; `steady_dry_*`).
    3. One committing cycle, untimed: the daemon acts on that backlog (`first_commit_*`).
    4. The steady cycles, `rounds` of them: committing, as `corral run` does every
       cycle, applying whatever the 1% change makes due (`steady_no_isolate_cycle_s`,
       `ratio_io_no_isolate`; the headline figures are `measure_isolated`'s).
    """
    from corral.cycle import run_cycle
    from corral.policy.loader import builtin_dir, load_paths
    from corral.store.store import Store

    policies = load_paths([builtin_dir()]).policies
    store = Store.open(url)
    cold_floor, cold_floor_star = cold_floors

    session, eval_time = timed_session(policies)
    t0 = time.perf_counter()
    cold = run_cycle(store, session, commit=False, now=NOW)
    cold_s = time.perf_counter() - t0
    cold_eval = eval_time[0]

    dry, dry_floors, _, _ = steady_rounds(store, session, frames, seed, range(1, rounds + 1), commit=False)
    STAR_IO_FLOORS.clear()
    t0 = time.perf_counter()
    first = run_cycle(store, session, commit=True, now=NOW + timedelta(seconds=30 * rounds))
    first_s = time.perf_counter() - t0
    steadies, io_floors, steady_evals, results = steady_rounds(
        store, session, frames, seed, range(rounds + 1, 2 * rounds + 1), commit=True)
    store.close()
    steady_s, io_floor = statistics.median(steadies), statistics.median(io_floors)
    io_floor_star = statistics.median(STAR_IO_FLOORS)
    dry_s, dry_floor = statistics.median(dry), statistics.median(dry_floors)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    last = results[-1]
    return {
        "frames": frames,
        "jobs": max(1, frames // FRAMES_PER_JOB),
        "workers": WORKERS,
        "db": "postgresql" if url.startswith("postgresql") else "sqlite",
        "cold_cycle_s": round(cold_s, 4),
        "steady_no_isolate_cycle_s": round(steady_s, 4),
        "peak_rss_mb": round(rss_mb, 1),
        "cold_floor_s": round(cold_floor, 4),
        "io_floor_no_isolate_s": round(io_floor, 4),
        "rounds": rounds,
        "steady_no_isolate_cycles_s": [round(x, 4) for x in steadies],
        "io_floors_no_isolate_s": [round(x, 4) for x in io_floors],
        "steady_applied_no_isolate": [len(r.report.applied) if r.report else 0 for r in results],
        "steady_dry_cycle_s": round(dry_s, 4),
        "io_floor_dry_s": round(dry_floor, 4),
        "steady_dry_cycles_s": [round(x, 4) for x in dry],
        "ratio_io_dry": round(dry_s / dry_floor, 2) if dry_floor else None,
        "first_commit_s": round(first_s, 4),
        "first_commit_applied": len(first.report.applied) if first.report else 0,
        "rule_eval_cold_s": round(cold_eval, 4),
        "rule_eval_steady_s": round(statistics.median(steady_evals), 4),
        "cold_timings": {k: round(v, 4) for k, v in cold.timings.items()},
        "steady_timings": {k: round(v, 4) for k, v in last.timings.items()},
        "cold_transitions": len(cold.plan.transitions),
        "steady_transitions": len(last.plan.transitions),
        "engine_facts": vars(session.evaluator.stats) if hasattr(session.evaluator, "stats") else None,
        "ratio_io_no_isolate": round(steady_s / io_floor, 2) if io_floor else None,
        "ratio_cold": round(cold_s / cold_floor, 2) if cold_floor else None,
        "io_floor_star_no_isolate_s": round(io_floor_star, 4),
        "cold_floor_star_s": round(cold_floor_star, 4),
        "ratio_io_star_no_isolate": round(steady_s / io_floor_star, 2) if io_floor_star else None,
        "ratio_cold_star": round(cold_s / cold_floor_star, 2) if cold_floor_star else None,
    }


def measure_isolated(url: str, frames: int, seed: int, rounds: int, first_round: int) -> dict[str, Any]:
    """The headline steady cycles: committing, with the rule engine in a child process
    as `corral run` runs it by default (`--isolate`: a crash of the engine costs a
    cycle, not the daemon), so the price of that isolation (a round trip a cycle, the
    changed facts and matches pickled across a pipe) is in the figure.  `measure`'s
    are the engine in the daemon's process (`corral run --no-isolate`, named so).  In
    a process of its own (its peak RSS is not the daemon's figure), after a first
    committing cycle that reads the farm whole; rounds numbered on from `first_round`."""
    from corral.cycle import run_cycle
    from corral.daemon.isolated import IsolatedEvaluator
    from corral.policy.loader import builtin_dir, load_paths
    from corral.policyset import PolicySet
    from corral.session import Session
    from corral.store.store import Store

    policies = load_paths([builtin_dir()]).policies
    store = Store.open(url)
    session = Session(PolicySet(policies), keep_live=True, evaluator_factory=lambda active: IsolatedEvaluator(active))
    try:
        run_cycle(store, session, commit=True, now=NOW + timedelta(seconds=30 * (first_round - 1)))
        STAR_IO_FLOORS.clear()
        steadies, floors, _, results = steady_rounds(store, session, frames, seed,
                                                     range(first_round, first_round + rounds), commit=True)
    finally:
        session.close()
        store.close()
    steady_s, floor = statistics.median(steadies), statistics.median(floors)
    star = statistics.median(STAR_IO_FLOORS)
    return {
        "steady_cycle_s": round(steady_s, 4),
        "io_floor_s": round(floor, 4),
        "steady_cycles_s": [round(x, 4) for x in steadies],
        "io_floors_s": [round(x, 4) for x in floors],
        "steady_applied": [len(r.report.applied) if r.report else 0 for r in results],
        "ratio_io": round(steady_s / floor, 2) if floor else None,
        "io_floor_star_s": round(star, 4),
        "ratio_io_star": round(steady_s / star, 2) if star else None,
    }


def _send_result(conn: Any, fn: Any, args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as err:  # reported to the parent, which stops the run
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def in_own_process(fn: Any, *args: Any) -> Any:
    """`fn(*args)` in a fresh process that may start processes of its own (a `Pool`'s
    workers may not: the isolated engine is one)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_send_result, args=(child, fn, args))
    proc.start()
    child.close()
    try:
        status, payload = parent.recv()
    except EOFError:
        status, payload = "error", f"the process died (exit code {proc.exitcode})"
    proc.join()
    if status != "ok":
        raise SystemExit(f"{getattr(fn, '__name__', fn)} failed: {payload}")
    return payload


def _postgres_fresh(url: str) -> tuple[str, str]:
    """A fresh database for this run, so runs never see each other's rows."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    from corral.store.engine import describe

    if not url.startswith(("postgresql:", "postgresql+", "postgres:")):
        raise SystemExit(f"--db takes a PostgreSQL URL (postgresql://user@host:port/db), not {url.split(':')[0]!r}; "
                         "leave it out to measure SQLite (a scratch file)")
    try:
        base = make_url(url).set(drivername="postgresql")
    except Exception as err:  # sqlalchemy.exc.ArgumentError and the like: a malformed URL
        raise SystemExit(f"--db: {err}; give a URL like postgresql://postgres@127.0.0.1:5432/test") from None
    name = f"corral_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(base.render_as_string(hide_password=False), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SystemExit(f"--db: cannot create a scratch database on {describe(base)}: {reason}. Check that the "
                         "server runs and the user may create databases, or leave out --db to measure SQLite") from None
    return base.set(database=name).render_as_string(hide_password=False), name


def _postgres_drop(url: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(url).set(drivername="postgresql")
    with psycopg.connect(base.render_as_string(hide_password=False), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_store(db: str | None) -> Iterator[str]:
    """The URL of a store for one run: a fresh database on `db`'s PostgreSQL server
    (dropped afterwards), or, without `db`, a SQLite file in a temporary folder."""
    if db:
        url, name = _postgres_fresh(db)
        try:
            yield url
        finally:
            _postgres_drop(db, name)
    else:
        with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
            yield f"sqlite:///{tmp}/farm.db"


def generate_in_child(url: str, frames: int, seed: int) -> None:
    """`generate` in a process of its own (its memory is not the measured process's)."""
    gen = mp.get_context("spawn").Process(target=generate, args=(url, frames, seed))
    gen.start()
    gen.join()
    if gen.exitcode != 0:
        raise SystemExit("farm generation failed")


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (frames, rounds)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=positive, default=10_000)
    parser.add_argument("--db", help="postgresql://... (a fresh database is created and dropped); default: a temp SQLite file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=positive, default=5, help="steady cycles to take the median of (default 5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with scratch_store(args.db) as url:
        t0 = time.perf_counter()
        generate_in_child(url, args.frames, args.seed)
        gen_s = time.perf_counter() - t0
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            cold_floors = pool.apply(measure_cold_floor, (url,))
        with ctx.Pool(1) as pool:
            result = pool.apply(measure, (url, args.frames, args.seed, args.rounds, cold_floors))
        result.update(in_own_process(measure_isolated, url, args.frames, args.seed, args.rounds, 2 * args.rounds + 1))
        with ctx.Pool(1) as pool:
            py = pool.apply(measure_python_floor, (url, min(args.rounds, 3)))
        result["python_floor_s"] = round(py["floor"], 4)
        result["rule_eval_s"] = round(py["eval"], 4)
        result["ratio_python"] = round(py["eval"] / py["floor"], 2) if py["floor"] else None
        # as tables before issue 20 measured it: no screening in the numerator, the old floor
        result["python_floor_before_s"] = round(py["floor_before"], 4)
        result["rule_eval_unscreened_s"] = round(py["eval_unscreened"], 4)
        result["ratio_python_before"] = (round(py["eval_unscreened"] / py["floor_before"], 2)
                                         if py["floor_before"] else None)
        result["generate_s"] = round(gen_s, 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22} {value}")


if __name__ == "__main__":
    main()
