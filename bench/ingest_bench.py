"""Benchmark: the supervisor's event feed at farm speed, against a plain-SQL floor.

    python bench/ingest_bench.py --events 50000 [--db URL] [--frames-stored 1000000] [--batch 2000] [--json]

A seeded, realistic stream of `--events` JSON lines: jobs submitted (20 to 200 frames,
a fifth of them depending on earlier jobs, some submitted blocked; about one job every
250 events, so that frames are submitted about as fast as they are rendered, as over
a farm's night), frames started on
the job's instances (an `instance_started` the first time a host runs the job), frames
completed or failed with exit codes (a failed frame is mostly started again, as a
supervisor retries it), instances ended when their job is done, hosts going down and
up, a third of the frame activity on jobs already stored, and about 5% replays: lines
sent again, which must be skipped.  `--frames-stored` frames (the farm of
`cycle_bench.py`: 100 frames a job, 2,000 hosts) are in the store before the stream
starts.

Each path runs in a fresh process on a fresh copy of the same preloaded store (SQLite:
a copied file; PostgreSQL: a database made from the preloaded one as its template):

- `ingest`: `corral ingest`'s code path in process: `Corral.ingest(read_lines(file))`,
  the calls `corral.cli.feed_cmds.ingest` makes, `--batch` lines a transaction;
- `cli`: one real `corral ingest FILE --db URL --json` in a subprocess (sanity: the
  same figures, with the interpreter's start and imports on top);
- `api_batch`: the Python API's batch form, `Corral.record_many(events)` with the
  events as dicts (`--batch` per call), if this corral has it;
- `api_single`: `Corral.record(event)`, one call (one transaction) per event, on the
  first `--single` events (default 2,000: it is the slow form, measured for its cost);
- `floor`: the leanest writes of the same rows: for each batch, the lines decoded
  (`json.loads`), then the rows that batch left changed (captured from a run of the
  `ingest` path, read by their change stamp after each batch, as the daemon reads
  them) written on the driver's own cursor, one statement per table and kind (UPDATE
  by primary key for a row that existed, INSERT for a new one, frame runs, the log's
  submit rows and the `applied_events` records: on SQLite an `executemany`, on
  PostgreSQL one statement over arrays, `unnest`), and one commit per batch.  No
  validation, no lookups, no decisions: what any feed must at least write.  Rows are
  stamped as every writer must stamp them (docs/architecture.md, invariant 1): on
  SQLite with the change counter's value, written with the row, as corral does
  (migration 0009), on PostgreSQL by its trigger.

`events_per_s` = lines / wall time of the path; `ratio_floor` = the ingest path's time /
the floor's; `peak_rss_mb` is each path's process.  Targets (issue 20): 20,000 events/s
through `corral ingest` on SQLite, 10,000 on PostgreSQL with 1M frames stored,
ratio_floor at most 3.  Nothing here is a test: it prints numbers; docs/benchmarks.md
("The feed") records them with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from cycle_bench import FRAMES_PER_JOB, NOW, WORKERS, _postgres_drop, generate, positive  # noqa: E402

# --- the stream ---------------------------------------------------------------------


def make_stream(events: int, stored_frames: int, seed: int) -> list[str]:
    """`events` JSON lines (see the module's docstring), seeded."""
    rnd = random.Random(seed)
    stored_jobs = stored_frames // FRAMES_PER_JOB if stored_frames else 0
    hosts = [f"r{n:04d}" for n in range(WORKERS)]
    lines: list[str] = []
    t = NOW + timedelta(minutes=1)
    next_job = stored_jobs + 1
    active: list[dict[str, Any]] = []
    done: list[int] = []
    counter = 0

    def emit(kind: str, **fields: Any) -> None:
        nonlocal counter
        counter += 1
        at = t.isoformat().replace("+00:00", "Z")
        lines.append(json.dumps({"id": f"q-{seed}-{counter}", "type": kind, "at": at, **fields}, separators=(",", ":")))

    def submit() -> None:
        nonlocal next_job
        jid, next_job = next_job, next_job + 1
        frames = rnd.choice([20, 50, 100, 100, 200])
        deps: list[int] = []
        pool = done[-50:] + [j["id"] for j in active] + ([rnd.randint(1, stored_jobs)] if stored_jobs else [])
        if pool and rnd.random() < 0.2:
            deps = sorted(set(rnd.sample(pool, min(len(pool), rnd.randint(1, 2)))))
        blocked = bool(deps) and rnd.random() < 0.5
        spec: dict[str, Any] = {"id": jid, "name": f"show_sh{jid:06d}_comp", "frames": f"1-{frames}",
                                "priority": rnd.randint(10, 90), "retry_limit": rnd.choice([0, 1, 2, 3])}
        if deps:
            spec["depends_on"] = deps
        if blocked:
            spec["state"] = "blocked"
        emit("job_submitted", job=spec)
        active.append({"id": jid, "pending": list(range(1, frames + 1)), "running": {},
                       "hosts": rnd.sample(hosts, rnd.randint(2, 8)), "instances": set(), "stored": False})

    def stored_job() -> dict[str, Any]:
        jid = rnd.randint(1, stored_jobs)
        return {"id": jid, "pending": rnd.sample(range(1, FRAMES_PER_JOB + 1), 10), "running": {},
                "hosts": rnd.sample(hosts, 4), "instances": set(), "stored": True}

    for _ in range(8):
        submit()
    while len(lines) < events:
        t += timedelta(milliseconds=rnd.randint(1, 40))
        r = rnd.random()
        if r < 0.05 and len(lines) > 100:
            lines.append(lines[rnd.randrange(len(lines) - 50)])  # sent again: skipped
            continue
        if r < 0.054 or len(active) < 6:  # about as many frames submitted as rendered (see the docstring)
            submit()
            continue
        if r < 0.064:
            host = rnd.choice(hosts)
            emit("worker_down", host=host)
            emit("worker_up", host=host)
            continue
        if stored_jobs and r < 0.074 and sum(j["stored"] for j in active) < 4:
            active.append(stored_job())
            continue
        job = rnd.choice(active)
        if job["running"] and (not job["pending"] or rnd.random() < 0.5):
            number = rnd.choice(list(job["running"]))
            host, inst = job["running"].pop(number)
            if rnd.random() < 0.9:
                emit("frame_completed", job=job["id"], frame=number, host=host, instance=inst)
            else:
                emit("frame_failed", job=job["id"], frame=number, exit_code=rnd.choice([1, 2, 137, 139, None]))
                if rnd.random() < 0.7:
                    job["pending"].append(number)
        elif job["pending"]:
            number = job["pending"].pop(0)
            host = rnd.choice(job["hosts"])
            inst = f"{job['id']}.{host}"
            if inst not in job["instances"]:
                job["instances"].add(inst)
                emit("instance_started", instance=inst, job=job["id"], host=host)
            job["running"][number] = (host, inst)
            emit("frame_started", job=job["id"], frame=number, host=host, instance=inst)
        else:
            for inst in sorted(job["instances"]):
                emit("instance_ended", instance=inst, exit_code=0)
            active.remove(job)
            if not job["stored"]:
                done.append(job["id"])
    return lines[:events]


# --- stores -----------------------------------------------------------------------


@contextmanager
def stores(db: str | None, frames: int, seed: int, base: str | None = None) -> Iterator[Any]:
    """A function making a fresh copy of one preloaded store (`frames` frames) per call.

    `base`: keep the preloaded store for later runs, or reuse it if it is there (a 1M-frame
    load takes minutes): a SQLite file's path, or without it, the name of a database on
    `db`'s PostgreSQL server (a template: never written to, never dropped).  Reused, its
    count of frames must be `frames` (the seed is the caller's to keep the same)."""
    made: list[str] = []
    with tempfile.TemporaryDirectory(prefix="corral-ingest-bench-") as tmp:
        if db is None:
            path = base or f"{tmp}/base.db"
            if base is None or not Path(base).exists():
                _generate(f"sqlite:///{path}", frames, seed)
            _check_frames(f"sqlite:///{path}", frames)

            def copy() -> str:
                copied = f"{tmp}/copy{len(made)}.db"
                shutil.copy(path, copied)
                made.append(copied)
                return f"sqlite:///{copied}"

            yield copy
            return
        import uuid

        import psycopg
        from cycle_bench import _postgres_fresh
        from sqlalchemy.engine import make_url

        admin_url = make_url(db).set(drivername="postgresql").render_as_string(hide_password=False)
        if base is None:
            base_url, base_name = _postgres_fresh(db)
            _generate(base_url, frames, seed)
        else:
            base_name = base
            base_url = make_url(db).set(database=base).render_as_string(hide_password=False)
            with psycopg.connect(admin_url, autocommit=True) as admin:
                there = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (base,)).fetchone()
                if not there:
                    admin.execute(f'CREATE DATABASE "{base}"')
            if not there:
                _generate(base_url, frames, seed)
        _check_frames(base_url, frames)
        try:

            def copy_pg() -> str:
                name = f"corral_bench_{uuid.uuid4().hex[:8]}"
                with psycopg.connect(admin_url, autocommit=True) as admin:
                    admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{base_name}"')
                made.append(name)
                return make_url(db).set(database=name).render_as_string(hide_password=False)

            yield copy_pg
        finally:
            for name in [*made, *([base_name] if base is None else [])]:
                _postgres_drop(db, name)


def _check_frames(url: str, frames: int) -> None:
    from corral.store.store import Store

    with Store.open(url) as store, store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT count(*) FROM frames").scalar_one()
    if frames and stored != frames:
        raise SystemExit(f"the preloaded store {url.split('@')[-1]} holds {stored} frames, not {frames}: "
                         "give its --frames, or another --base")


def _generate(url: str, frames: int, seed: int) -> None:
    if frames:
        proc = mp.get_context("spawn").Process(target=generate, args=(url, frames, seed))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit("farm generation failed")
    else:
        from corral.store.store import Store

        with Store.open(url) as store:
            store.init()


# --- the paths, each in a process of its own ------------------------------------------


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def path_ingest(url: str, file: str, batch: int) -> dict[str, Any]:
    from corral.api import Corral
    from corral.ingest import read_lines
    from corral.store.store import Store

    with Store.open(url) as store, open(file, encoding="utf-8") as stream:
        corral = Corral(store)
        store.check()
        t0 = time.perf_counter()
        report = corral.ingest(read_lines(stream, path=file), batch=batch)
        took = time.perf_counter() - t0
    return {"s": took, "lines": report.lines, "applied": len(report.applied), "skipped": len(report.skipped),
            "bad": len(report.bad), "bad_first": [str(b) for b in report.bad[:3]], "rss": _rss_mb()}


def path_api_batch(url: str, file: str, batch: int) -> dict[str, Any] | None:
    from corral.api import Corral
    from corral.store.store import Store

    if not hasattr(Corral, "record_many"):
        return None
    events = [json.loads(line) for line in Path(file).read_text(encoding="utf-8").splitlines()]
    with Store.open(url) as store:
        corral = Corral(store)
        store.check()
        t0 = time.perf_counter()
        applied = skipped = bad = 0
        for start in range(0, len(events), batch):
            for result in corral.record_many(events[start : start + batch]):
                if not hasattr(result, "skipped"):
                    bad += 1
                elif result.skipped:
                    skipped += 1
                else:
                    applied += 1
        took = time.perf_counter() - t0
    return {"s": took, "lines": len(events), "applied": applied, "skipped": skipped, "bad": bad, "rss": _rss_mb()}


def path_api_single(url: str, file: str, count: int) -> dict[str, Any]:
    from corral.api import Corral, EventRejected
    from corral.store.store import Store

    events = [json.loads(line) for line in Path(file).read_text(encoding="utf-8").splitlines()[:count]]
    with Store.open(url) as store:
        corral = Corral(store)
        store.check()
        bad = 0
        t0 = time.perf_counter()
        for event in events:
            try:
                corral.record(event)
            except EventRejected:
                bad += 1
        took = time.perf_counter() - t0
    return {"s": took, "lines": len(events), "bad": bad, "rss": _rss_mb()}


def path_cli(url: str, file: str, batch: int) -> dict[str, Any]:
    corral = Path(sys.executable).with_name("corral")
    t0 = time.perf_counter()
    done = subprocess.run([str(corral), "ingest", file, "--db", url, "--batch", str(batch), "--json"],
                          capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise RuntimeError(f"corral ingest failed: {done.stderr.strip()[-500:]}")
    out = json.loads(done.stdout)
    return {"s": took, "lines": out["lines"], "applied": out["applied"], "skipped": out["skipped"], "bad": len(out["bad"])}


# --- the floor ------------------------------------------------------------------------

#: Where the floor puts the change stamp: every writer of farm rows must stamp them (see
#: docs/architecture.md, invariant 1).  SQLite: the counter's value, as corral's batched
#: writer does (migration 0009: a row stamped by its writer is not stamped again by the
#: trigger); PostgreSQL: its trigger stamps the transaction id whatever is written.
STAMP = "__stamp__"

#: Tables whose changed rows the floor writes, read by their change stamp.
STAMPED = ("jobs", "frames", "instances", "workers", "frame_runs", "job_dependencies")


def _columns(name: str) -> list[str]:
    from corral.store.tables import table

    return [c.name for c in table(name).columns if c.name != "rev" and not (name == "frame_runs" and c.name == "id")]


def _keys(name: str) -> list[str]:
    from corral.store.tables import table

    return [c.name for c in table(name).primary_key.columns]


def capture(url: str, file: str, batch: int) -> list[dict[str, Any]]:
    """Run the ingest path batch by batch and, after each, read the rows it changed (by
    their change stamp, as the daemon reads them): what the floor writes per batch."""
    from corral.ingest import IngestReport, ingest_lines, read_lines
    from corral.store.rows import raw_rows
    from corral.store.store import Store

    store = Store.open(url)
    store.check()
    existing: dict[str, set[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for name in ("jobs", "frames", "instances", "workers"):
            existing[name] = {tuple(r) for r in raw_rows(conn, f"SELECT {', '.join(_keys(name))} FROM {name}")}  # noqa: S608
        last_transition = int(conn.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM transitions").scalar_one())
    with store._marked() as (_, mark):
        pass
    batches: list[dict[str, Any]] = []
    text = Path(file).read_text(encoding="utf-8").splitlines()
    seen_lines = 0

    def on_batch(part: IngestReport) -> None:
        nonlocal mark, last_transition, seen_lines
        with store._marked() as (conn, next_mark):
            where = f"rev >= {int(mark.value)}"
            out: dict[str, Any] = {"lines": text[seen_lines : part.lines], "writes": []}
            for name in STAMPED:
                cols = _columns(name)
                rows = list(raw_rows(conn, f"SELECT {', '.join(cols)} FROM {name} WHERE {where}"))  # noqa: S608
                if name in existing:
                    keys = _keys(name)
                    at = [cols.index(k) for k in keys]
                    old = [r for r in rows if tuple(r[i] for i in at) in existing[name]]
                    new = [r for r in rows if tuple(r[i] for i in at) not in existing[name]]
                    existing[name].update(tuple(r[i] for i in at) for r in new)
                    sets = [c for c in cols if c not in keys]
                    if old:
                        sql = (f"UPDATE {name} SET {', '.join(f'{c} = ?' for c in sets)}, rev = ? "  # noqa: S608
                               f"WHERE {' AND '.join(f'{k} = ?' for k in keys)}")
                        out["writes"].append((sql, [(*(r[cols.index(c)] for c in sets), STAMP,
                                                     *(r[cols.index(k)] for k in keys)) for r in old]))
                    rows = new
                if rows:
                    sql = f"INSERT INTO {name} ({', '.join(cols)}, rev) VALUES ({', '.join('?' for _ in cols)}, ?)"  # noqa: S608
                    out["writes"].append((sql, [(*r, STAMP) for r in rows]))
            tcols = _columns("transitions")
            rows = list(raw_rows(conn, f"SELECT {', '.join(c for c in tcols if c != 'id')} FROM transitions "  # noqa: S608
                                       f"WHERE id > {last_transition}"))
            last_transition = int(conn.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM transitions").scalar_one())
            if rows:
                cols = [c for c in tcols if c != "id"]
                out["writes"].append((f"INSERT INTO transitions ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",  # noqa: S608
                                      [tuple(r) for r in rows]))
            ids = [r.event_id for r in part.applied]
            acols = _columns("applied_events")
            if ids:
                found = []
                for start in range(0, len(ids), 500):
                    marks = ", ".join("?" if conn.dialect.name == "sqlite" else "%s" for _ in ids[start : start + 500])
                    found += list(raw_rows(conn, f"SELECT {', '.join(acols)} FROM applied_events WHERE id IN ({marks})",  # noqa: S608
                                           ids[start : start + 500]))
                out["writes"].append((f"INSERT INTO applied_events ({', '.join(acols)}) "  # noqa: S608
                                      f"VALUES ({', '.join('?' for _ in acols)})", [tuple(r) for r in found]))
            mark = next_mark
        seen_lines = part.lines
        batches.append(out)

    with open(file, encoding="utf-8") as stream:
        ingest_lines(store, read_lines(stream, path=file), batch=batch, on_batch=on_batch)
    store.close()
    return batches


def path_floor(url: str, batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The captured rows written batch by batch, as leanly as the driver allows."""
    from corral.store.store import Store

    store = Store.open(url)
    pg = store.engine.dialect.name == "postgresql"
    lines = [b["lines"] for b in batches]
    events = 0
    with store.engine.connect() as conn:
        stamp = 0 if pg else int(conn.exec_driver_sql("SELECT value FROM revision WHERE id = 1").scalar_one())
        conn.rollback()
        if pg:
            writes = [[_pg_bulk(sql, rows, conn.dialect) for sql, rows in b["writes"]] for b in batches]
        else:
            writes = [[(sql, [tuple(stamp if v == STAMP else v for v in row) for row in rows]) for sql, rows in b["writes"]]
                      for b in batches]
        raw = conn.connection.dbapi_connection
        assert raw is not None
        t0 = time.perf_counter()
        for part, text in zip(writes, lines, strict=True):
            events += len([json.loads(line) for line in text])
            cursor = raw.cursor()
            if not pg:
                cursor.execute("BEGIN IMMEDIATE")
            for sql, rows in part:
                if pg:
                    cursor.execute(sql, rows)  # one statement over arrays: see _pg_bulk
                else:
                    cursor.executemany(sql, rows)
            raw.commit()
            cursor.close()
        took = time.perf_counter() - t0
    store.close()
    return {"s": took, "lines": events, "rss": _rss_mb()}


def _pg_bulk(sql: str, rows: list[tuple[Any, ...]], dialect: Any) -> tuple[str, list[list[Any]]]:
    """A captured statement for many rows as PostgreSQL's leanest: one statement over
    arrays, a column each (`unnest`), as corral's batched writer does; `rev` left to the
    trigger, which stamps every row written whatever it holds."""
    import re

    from corral.store.tables import table

    def arrays(t: Any, names: list[str]) -> str:
        return ", ".join(f"%s::{t.c[c].type.compile(dialect=dialect)}[]" for c in names)

    if sql.startswith("UPDATE"):
        m = re.match(r"UPDATE (\w+) SET (.*) WHERE (.*)$", sql)
        assert m is not None
        name, sets, keys = m.group(1), [c.split(" = ")[0] for c in m.group(2).split(", ")], \
            [c.split(" = ")[0] for c in m.group(3).split(" AND ")]
        keep = [i for i, c in enumerate(sets) if c != "rev"] + [len(sets) + i for i in range(len(keys))]
        names = [c for c in sets if c != "rev"] + keys
        t = table(name)
        bulk = (f"UPDATE {name} AS t SET {', '.join(f'{c} = v.{c}' for c in sets if c != 'rev')} "  # noqa: S608
                f"FROM unnest({arrays(t, names)}) AS v({', '.join(names)}) "
                f"WHERE {' AND '.join(f't.{k} = v.{k}' for k in keys)}")
    else:
        m = re.match(r"INSERT INTO (\w+) \(([^)]*)\)", sql)
        assert m is not None
        name, cols = m.group(1), m.group(2).split(", ")
        keep = [i for i, c in enumerate(cols) if c != "rev"]
        names = [c for c in cols if c != "rev"]
        t = table(name)
        quoted = ", ".join(f'"{c}"' for c in names)
        bulk = (f"INSERT INTO {name} ({', '.join(names)}) SELECT {quoted} "  # noqa: S608
                f"FROM unnest({arrays(t, names)}) WITH ORDINALITY AS v({quoted}, n) ORDER BY n")
    return bulk, [[row[i] for row in rows] for i in keep]


def in_child(fn: Any, *args: Any) -> Any:
    from cycle_bench import in_own_process

    return in_own_process(fn, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=positive, default=20_000)
    parser.add_argument("--db", help="postgresql://... (fresh databases are made and dropped); default: temp SQLite files")
    parser.add_argument("--frames-stored", type=lambda s: 0 if s == "0" else positive(s), default=0,
                        help="frames in the store before the stream (the farm of cycle_bench.py); default 0")
    parser.add_argument("--batch", type=positive, default=2000, help="lines a transaction (corral ingest --batch)")
    parser.add_argument("--single", type=positive, default=2000, help="events for the one-call-per-event API path")
    parser.add_argument("--paths", default="ingest,cli,api_batch,api_single,floor",
                        help="which paths to run (comma-separated)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    wanted = set(args.paths.split(","))
    lines = make_stream(args.events, args.frames_stored, args.seed)
    result: dict[str, Any] = {"db": "postgresql" if args.db else "sqlite", "events": len(lines),
                              "frames_stored": args.frames_stored, "batch": args.batch}
    with tempfile.TemporaryDirectory(prefix="corral-ingest-stream-") as tmp, \
            stores(args.db, args.frames_stored, args.seed) as fresh:
        file = f"{tmp}/events.jsonl"
        Path(file).write_text("\n".join(lines) + "\n", encoding="utf-8")
        runs: dict[str, dict[str, Any] | None] = {}
        if "ingest" in wanted:
            runs["ingest"] = in_child(path_ingest, fresh(), file, args.batch)
        if "cli" in wanted:
            runs["cli"] = path_cli(fresh(), file, args.batch)
        if "api_batch" in wanted:
            runs["api_batch"] = in_child(path_api_batch, fresh(), file, args.batch)
        if "api_single" in wanted:
            runs["api_single"] = in_child(path_api_single, fresh(), file, min(args.single, len(lines)))
        if "floor" in wanted:
            batches = in_child(capture, fresh(), file, args.batch)
            runs["floor"] = in_child(path_floor, fresh(), batches)
    for name, run in runs.items():
        if run is None:
            result[f"{name}_events_per_s"] = None
            continue
        result[f"{name}_s"] = round(run["s"], 3)
        result[f"{name}_events_per_s"] = round(run["lines"] / run["s"]) if run["s"] else None
        if "rss" in run:
            result[f"{name}_peak_rss_mb"] = run["rss"]
        for key in ("applied", "skipped", "bad"):
            if key in run:
                result[f"{name}_{key}"] = run[key]
        if run.get("bad_first"):
            result[f"{name}_bad_first"] = run["bad_first"]
    if "ingest" in runs and runs.get("floor"):
        result["ratio_floor"] = round(runs["ingest"]["s"] / runs["floor"]["s"], 2)  # type: ignore[index]
    if "api_batch" in runs and runs.get("api_batch") and runs.get("floor"):
        result["ratio_floor_api_batch"] = round(runs["api_batch"]["s"] / runs["floor"]["s"], 2)  # type: ignore[index]
    result["peak_rss_mb"] = result.get("ingest_peak_rss_mb")
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
