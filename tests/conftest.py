"""Shared fixtures: one `store` fixture that runs every store test on SQLite and PostgreSQL.

PostgreSQL comes from $CORRAL_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/test).
A fresh database `corral_test_<random>` is created for the session and dropped at the
end, so concurrent runs never see each other's rows; every test starts on empty
tables.  Unset: the PostgreSQL half is skipped, except on CI (CI=true), where a
missing or unreachable server fails the run instead of silently testing less.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import strategies as st
from psycopg import sql
from sqlalchemy.engine import make_url

from corral.farm import Farm, Frame, FrameRun, Instance, Job, Worker
from corral.snapshot import parse_snapshot
from corral.states import FrameState, Hold, InstanceState, WorkerState
from corral.store import Store
from corral.store.store import FARM_TABLES
from corral.yamlpos import load_text

PG_ENV = "CORRAL_TEST_POSTGRES_URL"
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _libpq(url: str) -> str:
    """A URL psycopg understands (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get(PG_ENV)
    if not url:
        if on_ci():
            pytest.fail(f"CI=true but {PG_ENV} is not set: the PostgreSQL tests must run on CI")
        pytest.skip(f"{PG_ENV} is not set")
    try:
        admin = psycopg.connect(_libpq(url), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        if on_ci():
            pytest.fail(f"PostgreSQL at {PG_ENV} is unreachable: {err}")
        pytest.skip(f"PostgreSQL at {PG_ENV} is unreachable: {err}")
    name = f"corral_test_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    test_url = make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        with Store.open(test_url) as store:
            store.init()
        yield test_url
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating per test would be slower)."""
    path = tmp_path_factory.mktemp("template") / "corral.db"
    with Store.open(f"sqlite:///{path}") as store:
        store.init()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """The URL of an empty, migrated store on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "corral.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        tables = sql.SQL(", ").join(sql.Identifier(t) for t in (*FARM_TABLES, "transitions", "settings", "outbox"))
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(tables))
        conn.execute("UPDATE daemon_lease SET holder = NULL, token = 0, expires = NULL, since = NULL")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as s:
        yield s


def snap(text: str) -> Farm:
    """A farm from a YAML snapshot written in the test (scenario style)."""
    return parse_snapshot(load_text(text, "<test>"), "<test>")


# --- random farms -------------------------------------------------------------------------

stamps = st.none() | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@st.composite
def farms(draw: Any, max_jobs: int = 4, max_frames: int = 5) -> Farm:
    """Random farms that obey the snapshot's rules (and so the state model's)."""
    names = draw(st.lists(st.sampled_from(["n1", "n2", "n3", "n4"]), min_size=1, max_size=4, unique=True))
    workers = {n: Worker(n, draw(st.sampled_from(list(WorkerState))), draw(stamps)) for n in names}
    job_ids = draw(st.lists(st.integers(1, 60), max_size=max_jobs, unique=True))
    farm = Farm(workers=workers)
    for job_id in job_ids:
        job = Job(
            id=job_id,
            name=draw(st.text("abcdefgh_0123456789", min_size=1, max_size=12)),
            priority=draw(st.integers(-10, 100)),
            retry_limit=draw(st.integers(0, 3)),
            retries=draw(st.integers(0, 3)),
            hold=draw(st.sampled_from(list(Hold))),
            submitted_at=draw(stamps),
            state_since=draw(stamps),
            last_retry_at=draw(stamps),
        )
        if job.hold is Hold.BLOCKED:
            job.blocked_by = draw(st.none() | st.just("user:ann") | st.just("policy:deps"))
        for k in range(draw(st.integers(0, 3))):
            iid = f"i{job_id}_{k}"
            job.instances[iid] = Instance(
                iid, job_id, draw(st.sampled_from(names)), draw(st.sampled_from(list(InstanceState))), draw(stamps)
            )
        for number in draw(st.lists(st.integers(0, 2000), max_size=max_frames, unique=True)):
            inst = draw(st.none() | st.sampled_from(sorted(job.instances))) if job.instances else None
            host = job.instances[inst].host if inst else draw(st.none() | st.sampled_from(names))
            runs = [
                FrameRun(
                    draw(st.sampled_from(names)),
                    None,
                    draw(st.sampled_from([FrameState.COMPLETE, FrameState.FAILED, FrameState.KILLED])),
                    draw(st.none() | st.integers(-1, 255)),
                    draw(stamps),
                    draw(stamps),
                )
                for _ in range(draw(st.integers(0, 2)))
            ]
            job.frames[number] = Frame(
                job_id=job_id,
                number=number,
                state=draw(st.sampled_from(list(FrameState))),
                host=host,
                instance=inst,
                attempts=draw(st.integers(0, 5)),
                retries=draw(st.integers(0, 3)),
                exit_code=draw(st.none() | st.integers(-1, 255)),
                started_at=draw(stamps),
                finished_at=draw(stamps),
                state_since=draw(stamps),
                runs=runs,
            )
        job.state = job.derived_state()
        farm.jobs[job_id] = job
    others = [(j, n) for j in farm.jobs.values() for n in j.frames]
    for job in farm.jobs.values():
        job.depends_on = draw(st.lists(st.sampled_from([i for i in job_ids if i != job.id] or [0]), unique=True))
        job.depends_on = [d for d in job.depends_on if d in farm.jobs]
        for frame in job.frames.values():
            refs = [(j.id, n) for j, n in others if j.id != job.id]
            if refs:
                frame.depends_on = draw(st.lists(st.sampled_from(refs), max_size=2, unique=True))
    return farm


def later(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


#: The test files whose PostgreSQL tests count what a cycle read (rows, facts, plan parts).
COUNTING_READS = ("tests/test_live.py", "tests/test_store.py", "tests/test_session.py")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """A parallel run hands the PostgreSQL tests (`[postgresql]` in their id) of the files
    that count what a cycle read (COUNTING_READS) to one worker, the rest as they come.

    Each run has its own database, but PostgreSQL's change mark is the oldest transaction
    open on the whole server (corral.store.changes): another worker's open transaction
    holds it back, and rows are then read again.  Harmless to corral, but tests that
    count what a cycle read would see it.  (A scheduler, not xdist_group marks: pytest
    9.2 ignores the node ids xdist 3.8 rewrites for them.)"""
    from xdist.scheduler import LoadScopeScheduling

    class OnePostgresWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            counts_reads = nodeid.startswith(COUNTING_READS)
            return "postgresql" if "postgres" in nodeid and counts_reads else nodeid

    return OnePostgresWorker(config, log)
