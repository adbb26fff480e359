"""The store, on every backend (the `store` fixture runs each test on SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, make_url, text, update

from conftest import NOW, later, snap
from corral.states import Action, FrameState, JobState, Kind
from corral.store import Proposal, SchemaMissing, Store, StoreError, changes, migrate
from corral.store.engine import normalise_url
from corral.store.tables import metadata, table

FARM = """
jobs:
  - id: 12
    name: shot_010
    retry_limit: 2
    instances:
      - {id: i1, host: n1, state: running}
      - {id: i2, host: n2, state: failed}
    frames:
      - {number: 1, state: running, host: n1, instance: i1, started_at: "2024-06-01T11:00:00Z"}
      - number: 2
        state: failed
        host: n2
        instance: i2
        exit_code: 1
        runs: [{host: n2, instance: i2, state: failed, exit_code: 1, finished_at: "2024-06-01T11:30:00+02:00"}]
      - {number: 3, state: pending, depends_on: ["13:1"]}
  - id: 13
    name: comp
    depends_on: [12]
    frames: [{range: "1-3", state: complete}]
workers:
  - {name: n1, state: up}
  - {name: n3, state: locked}
"""


def test_a_loaded_farm_reads_back_equal(store: Store) -> None:
    farm = snap(FARM)
    store.load_farm(farm, replace=True)
    assert store.read_farm() == farm


def test_a_farm_read_whole_holds_one_string_per_instance_and_host_name(store: Store) -> None:
    """A million frames name a few thousand instances and hosts: each name is held once
    (a fifth of a big farm's memory), by its instance, its worker, and every frame and
    run that names it."""
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    running, failed = farm.jobs[12].frames[1], farm.jobs[12].frames[2]
    assert running.instance is farm.instances["i1"].id and running.host is farm.instances["i1"].host
    assert failed.runs[0].instance is failed.instance is farm.instances["i2"].id
    assert failed.runs[0].host is failed.host is farm.instances["i2"].host
    assert farm.workers["n1"].name is running.host


@pytest.mark.postgres
def test_a_postgresql_session_reads_timestamps_in_utc_whatever_zone_the_server_starts_it_in(
    postgres_url: str,
) -> None:
    """The store sets its sessions to UTC (timestamps then arrive as `datetime.UTC`, with
    nothing to convert); a server or role whose sessions start in another zone changes
    no instant corral reads or writes."""
    tokyo = make_url(postgres_url).update_query_dict({"options": "-c timezone=Asia/Tokyo"})
    with Store.open(tokyo.render_as_string(hide_password=False)) as store:
        store.load_farm(snap(FARM), replace=True)
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW TIME ZONE").scalar_one() == "UTC"
        farm = store.read_farm()
    run = farm.jobs[12].frames[2].runs[0]
    assert run.finished_at is not None and run.finished_at.tzinfo is UTC and run.finished_at.hour == 9
    assert farm == snap(FARM)


def test_timestamps_come_back_as_aware_utc(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    run = store.read_farm().jobs[12].frames[2].runs[0]
    assert run.finished_at is not None and run.finished_at.utcoffset() == timedelta(0)
    assert run.finished_at.hour == 9


def test_load_with_replace_starts_over_but_keeps_the_log(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    store.apply_transitions(farm, [Proposal(Kind.JOB, "12", Action.BLOCK)], now=NOW, actor="user:ann")
    store.load_farm(snap("jobs: [{id: 1, name: only}]"), replace=True)
    assert list(store.read_farm().jobs) == [1]
    assert len(store.transitions()) == 1


def test_load_without_replace_refuses_a_job_already_stored_and_writes_nothing(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    with pytest.raises(StoreError, match="already in the store: job 12"):
        store.load_farm(snap("jobs: [{id: 12, name: again}, {id: 14, name: new}]"), replace=False)
    assert sorted(store.read_farm().jobs) == [12, 13]


def test_load_without_replace_adds_jobs_and_keeps_known_workers_as_they_are(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    store.load_farm(snap("jobs: [{id: 14, name: new}]\nworkers: [{name: n3, state: up}, {name: n9}]"), replace=False)
    farm = store.read_farm()
    assert sorted(farm.jobs) == [12, 13, 14]
    assert farm.workers["n3"].state == "locked"
    assert "n9" in farm.workers


def test_block_writes_every_touched_row_and_bumps_their_versions(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    report = store.apply_transitions(
        farm, [Proposal(Kind.JOB, "12", Action.BLOCK, reason="bad textures")], now=NOW, actor="user:ann"
    )
    assert [d.to_state for d in report.applied] == ["blocked"]
    stored = store.read_farm()
    assert stored == farm  # the in-memory farm followed the database
    assert stored.jobs[12].frames[1].state == FrameState.PENDING
    assert stored.jobs[12].version == 1 and stored.jobs[12].frames[1].version == 1
    assert stored.jobs[12].frames[3].version == 0  # untouched rows keep their version
    (t,) = store.transitions()
    assert (t.kind, t.entity_id, t.from_state, t.to_state, t.actor, t.reason, t.applied) == (
        Kind.JOB,
        "12",
        "failing",
        "blocked",
        "user:ann",
        "bad textures",
        True,
    )


def test_the_applier_stores_each_value_as_sqlalchemy_would(store: Store) -> None:
    """The applier writes on the driver's cursor: its rows must be the ones SQLAlchemy's
    column types would have written (SQLite's timestamp text, a boolean, an enum's value),
    or readers that compare or parse them (history by time, the feed) would disagree."""
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    at = NOW.replace(microsecond=7).astimezone(timezone(timedelta(hours=2)))  # an offset, microseconds
    store.apply_transitions(farm, [Proposal(Kind.JOB, "12", Action.BLOCK, policy="p", reason="r")], now=at,
                            actor="corral", cycle_id="c1")
    jobs, log = table("jobs"), table("transitions")
    with store.engine.begin() as conn:
        raw_job = conn.execute(text("SELECT state, state_since, updated_at, version FROM jobs WHERE id = 12")).one()
        raw_log = conn.execute(text("SELECT at, kind, action, applied, cycle_id FROM transitions")).one()
        # the same values through SQLAlchemy, into a row of their own
        conn.execute(update(jobs).where(jobs.c.id == 13).values(state_since=at, updated_at=at))
        conn.execute(insert(log).values(at=at, kind=Kind.JOB.value, entity_id="x", action="block", from_state="a",
                                        to_state="b", actor="t", applied=True))
        by_sqlalchemy_job = conn.execute(text("SELECT state_since, updated_at FROM jobs WHERE id = 13")).one()
        by_sqlalchemy_log = conn.execute(text("SELECT at, applied FROM transitions WHERE entity_id = 'x'")).one()
    assert raw_job.state == "blocked" and raw_job.version == 1
    assert (raw_job.state_since, raw_job.updated_at) == tuple(by_sqlalchemy_job)
    assert (raw_log.at, raw_log.applied) == tuple(by_sqlalchemy_log)
    assert (raw_log.kind, raw_log.action, raw_log.cycle_id) == ("job", "block", "c1")
    (t,) = [t for t in store.transitions() if t.entity_id == "12"]
    assert t.at == at and t.at.tzinfo is UTC


def test_a_frame_action_that_moves_its_job_logs_the_knock_on_change(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    store.apply_transitions(farm, [Proposal(Kind.FRAME, "13:2", Action.RESUBMIT)], now=NOW, actor="user:ann")
    job_row, frame_row = store.transitions()
    assert (frame_row.kind, frame_row.entity_id, frame_row.from_state, frame_row.to_state) == (
        Kind.FRAME,
        "13:2",
        "complete",
        "pending",
    )
    assert (job_row.kind, job_row.entity_id, job_row.from_state, job_row.to_state) == (
        Kind.JOB,
        "13",
        "complete",
        "pending",
    )
    assert job_row.reason == "follows frame 13:2 (resubmit)"


def test_an_illegal_proposal_is_refused_with_the_state_models_message_and_the_rest_applies(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    report = store.apply_transitions(
        farm,
        [Proposal(Kind.JOB, "13", Action.BLOCK), Proposal(Kind.WORKER, "n1", Action.BLOCK)],
        now=NOW,
        actor="corral",
    )
    assert [r.reason for r in report.refused] == [
        "cannot block job 13: it is complete; 'block' applies only to a job that is failing, pending, retrying or running"
    ]
    assert store.read_farm().workers["n1"].state == "locked"


def test_a_proposal_for_an_unknown_entity_is_refused(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    report = store.apply_transitions(store.read_farm(), [Proposal(Kind.JOB, "99", Action.KILL)], now=NOW, actor="corral")
    assert report.refused[0].reason == "no job '99' in the farm"


def test_an_audit_proposal_logs_what_would_have_happened_and_changes_nothing(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    report = store.apply_transitions(
        farm,
        [Proposal(Kind.JOB, "12", Action.KILL, policy="kill-failing", automatic=True, applied=False)],
        now=NOW,
        actor="corral",
        cycle_id="c1",
    )
    assert [d.to_state for d in report.audited] == ["killed"] and not report.applied
    assert store.read_farm() == farm == snap(FARM)
    (t,) = store.transitions()
    assert (t.applied, t.policy, t.cycle_id, t.to_state) == (False, "kill-failing", "c1", "killed")


def test_a_stale_row_refuses_the_proposal_and_keeps_the_farm_as_it_was(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    frames = table("frames")
    with store.engine.begin() as conn:  # the supervisor finishes frame 12:1 meanwhile
        conn.execute(
            update(frames)
            .where(frames.c.job_id == 12, frames.c.number == 1)
            .values(state="complete", version=frames.c.version + 1)
        )
    report = store.apply_transitions(
        farm,
        [Proposal(Kind.JOB, "12", Action.BLOCK), Proposal(Kind.WORKER, "n3", Action.UNBLOCK)],
        now=NOW,
        actor="corral",
    )
    assert report.refused[0].stale and "frame 12:1 changed since it was read" in report.refused[0].reason
    assert [d.proposal.ident for d in report.applied] == ["n3"]
    stored = store.read_farm()
    assert stored.jobs[12].state == JobState.FAILING and stored.jobs[12].frames[1].state == FrameState.COMPLETE
    assert farm.jobs[12].state == JobState.FAILING and farm.jobs[12].frames[1].state == FrameState.RUNNING
    assert [t.entity_id for t in store.transitions()] == ["n3"]


def test_a_batch_that_fails_half_way_applies_nothing(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    before = store.read_farm()

    class Boom(Proposal):
        @property
        def kind(self) -> Kind:
            raise RuntimeError("boom")

    good = Proposal(Kind.WORKER, "n1", Action.BLOCK)
    with pytest.raises(RuntimeError):
        store.apply_transitions(
            farm,
            [good, object.__new__(Boom)],
            now=NOW,
            actor="corral",
        )
    assert store.read_farm() == before and farm == before
    assert store.transitions() == []


def test_two_proposals_on_one_job_in_one_batch_see_each_other(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    report = store.apply_transitions(
        farm,
        [Proposal(Kind.JOB, "12", Action.BLOCK), Proposal(Kind.JOB, "12", Action.UNBLOCK)],
        now=NOW,
        actor="corral",
    )
    assert not report.refused
    assert store.read_farm().jobs[12].version == 2


def test_transitions_filter_by_job_policy_actor_and_time_newest_first(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    store.apply_transitions(farm, [Proposal(Kind.FRAME, "13:2", Action.RESUBMIT)], now=NOW, actor="user:ann")
    store.apply_transitions(farm, [Proposal(Kind.WORKER, "n1", Action.BLOCK, policy="quarantine")], now=later(5), actor="corral")
    assert [t.entity_id for t in store.transitions(job=13)] == ["13", "13:2"]
    assert store.transitions(job=12) == []
    assert [t.entity_id for t in store.transitions(policy="quarantine")] == ["n1"]
    assert [t.entity_id for t in store.transitions(actor="user:ann")] == ["13", "13:2"]
    assert [t.entity_id for t in store.transitions(since=later(1))] == ["n1"]
    assert [t.entity_id for t in store.transitions(limit=1)] == ["n1"]


def test_last_actions_gives_the_latest_time_per_policy_and_entity(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    for minute, action in ((1, Action.BLOCK), (2, Action.UNBLOCK), (3, Action.BLOCK)):
        store.apply_transitions(farm, [Proposal(Kind.WORKER, "n1", action, policy="q")], now=later(minute), actor="corral")
    store.apply_transitions(
        farm, [Proposal(Kind.WORKER, "n1", Action.UNBLOCK, policy="q", applied=False)], now=later(9), actor="corral"
    )
    assert store.last_actions(NOW) == {("q", "worker", "n1"): later(3)}
    assert store.last_actions(NOW, include_audit=True) == {("q", "worker", "n1"): later(9)}
    assert store.last_actions(later(4)) == {}
    # `since` itself is in, a microsecond later is out, and any time zone means the same instant
    assert store.last_actions(later(3)) == {("q", "worker", "n1"): later(3)}
    assert store.last_actions(later(3) + timedelta(microseconds=1)) == {}
    assert store.last_actions(later(3).astimezone(timezone(timedelta(hours=-5)))) == {("q", "worker", "n1"): later(3)}


def test_a_change_read_brings_the_log_for_cooldowns_from_the_same_snapshot(store: Store) -> None:
    """The daemon's steady read: the changed rows and the recent log in one transaction."""
    store.load_farm(snap(FARM), replace=True)
    _, mark, log = store.read_farm_marked(log_since=NOW)
    assert log is not None and log.actions == []
    farm = store.read_farm()
    store.apply_transitions(farm, [Proposal(Kind.WORKER, "n1", Action.BLOCK, policy="q")], now=later(2), actor="corral")
    changes, _, whole = store.read_changes(mark, log_since=NOW)
    assert changes is not None and "n1" in [w.name for w in changes.workers]
    if store.engine.dialect.name == "sqlite":  # PostgreSQL may read rows again (see the next-but-one test)
        assert [w.name for w in changes.workers] == ["n1"]
    assert whole is not None and whole.actions == [("q", "worker", "n1", later(2))]
    assert store.last_actions(NOW) == {("q", "worker", "n1"): later(2)}
    assert store.read_changes(mark)[2] is None  # not asked for, not read


def test_the_log_is_read_on_from_the_last_row_read(store: Store) -> None:
    """After one read of the window, a change read brings only the policies' applied
    actions logged since: not a wrangler's, not an audit's, not the ones already read."""
    store.load_farm(snap(FARM), replace=True)
    farm = store.read_farm()
    store.apply_transitions(farm, [Proposal(Kind.WORKER, "n1", Action.BLOCK, policy="q")], now=later(1), actor="corral")
    _, mark, log = store.read_farm_marked(log_since=NOW)
    assert log is not None and log.actions == [("q", "worker", "n1", later(1))]
    farm = store.read_farm()
    store.apply_transitions(farm, [Proposal(Kind.WORKER, "n1", Action.UNBLOCK)], now=later(2), actor="user:ann")
    store.apply_transitions(farm, [Proposal(Kind.JOB, "12", Action.BLOCK, policy="a", applied=False)], now=later(3),
                            actor="corral")
    farm = store.read_farm()
    store.apply_transitions(farm, [Proposal(Kind.WORKER, "n1", Action.BLOCK, policy="q")], now=later(4), actor="corral")
    _, mark, more = store.read_changes(mark, log_since=NOW, log_after=log.after)
    assert more is not None and more.actions == [("q", "worker", "n1", later(4))]
    _, _, none = store.read_changes(mark, log_since=NOW, log_after=more.after)
    assert none is not None and none.actions == [] and none.after == more.after


def test_a_row_a_supervisor_inserts_is_stamped_at_once_and_read_once(store: Store) -> None:
    """An inserted farm row is stamped in the writer's own transaction, as an updated
    one is (migration 0004 on SQLite), not by the daemon's next read: the next change
    read finds it, and the one after that does not."""
    store.load_farm(snap(FARM), replace=True)
    _, mark, _ = store.read_farm_marked()
    with store.engine.begin() as conn:
        conn.execute(insert(table("frame_runs")).values(
            job_id=12, number=1, host="n1", instance="i1", state="complete", exit_code=0, started_at=NOW,
            finished_at=later(1)))
        assert conn.execute(text("SELECT count(*) FROM frame_runs WHERE rev IS NULL")).scalar_one() == 0
    got, mark, _ = store.read_changes(mark)
    assert got is not None and (12, 1, "n1", FrameState.COMPLETE) in [(j, n, r.host, r.state) for j, n, r in got.runs]
    again, _, _ = store.read_changes(mark)
    assert again is not None
    if store.engine.dialect.name == "sqlite":  # the mark is this database's own counter
        assert [(j, n, r.host, r.state) for j, n, r in got.runs] == [(12, 1, "n1", FrameState.COMPLETE)]
        assert again.runs == []
    else:
        # PostgreSQL's mark is the oldest transaction open on the whole server when the read
        # began: a session of another database (a parallel test run) can hold it back, and
        # rows are then read again, which applying them makes harmless (corral.store.changes).
        # The second read finds nothing the first did not.
        assert {r.id for _, _, r in again.runs} <= {r.id for _, _, r in got.runs}


def test_settings_are_stored_and_overwritten(store: Store) -> None:
    assert store.get_setting("paused") is None
    assert store.get_setting("paused", "no") == "no"
    store.set_setting("paused", "yes")
    store.set_setting("paused", "still")
    assert store.get_setting("paused") == "still"


def test_init_twice_is_harmless(store: Store) -> None:
    store.load_farm(snap(FARM), replace=True)
    assert store.init() == store.init() == migrate.head_revision()
    assert sorted(store.read_farm().jobs) == [12, 13]


def test_the_migrations_create_exactly_the_declared_tables(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []


def test_an_unmigrated_database_says_run_corral_db_init(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'empty.db'}") as store, pytest.raises(SchemaMissing) as err:
        store.read_farm()
    assert "run `corral db init`" in str(err.value)


def test_an_older_schema_says_to_upgrade(store_url: str) -> None:
    with Store.open(store_url) as store:
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
        with pytest.raises(SchemaMissing, match=r"at schema revision 0000.*run `corral db init`"):
            store.read_farm()
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": migrate.head_revision()})


def test_the_head_revision_corral_checks_for_is_the_newest_migration_script() -> None:
    """`migrate.HEAD` is written out (reading the scripts costs every start a few ms):
    a new migration must move it too, or every store would look out of date."""
    assert migrate.scripts_head() == migrate.HEAD


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout=7) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: a commit waits for the disk


def test_the_change_stamp_skips_the_fsync_but_every_other_write_still_waits_for_the_disk(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """The daemon's per-cycle stamp is committed with synchronous=NORMAL (it needs no
    durability, see Store._stamping); the pooled connection goes back to FULL after it."""
    shutil.copy(sqlite_template, tmp_path / "x.db")
    with Store.open(f"sqlite:///{tmp_path / 'x.db'}") as store:
        store.load_farm(snap(FARM), replace=True)
        _, mark, _ = store.read_farm_marked()
        seen: list[int] = []
        real = changes.advance

        def advance(conn: Any) -> int:
            seen.append(conn.exec_driver_sql("PRAGMA synchronous").scalar())
            return real(conn)

        with patch.object(changes, "advance", advance):
            store.read_changes(mark)
        assert seen == [1]  # NORMAL while stamping
        with store.engine.connect() as conn:  # the same pooled connection, back to FULL
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg"),
        ("sqlite:///corral.db", "sqlite"),
    ],
)
def test_postgresql_urls_use_psycopg_3(url: str, driver: str) -> None:
    assert normalise_url(url).drivername == driver


def test_upgrading_names_the_policy_that_blocked_a_job_where_older_releases_wrote_corral(store_url: str) -> None:
    """Migration 0005: jobs a policy blocked before the applier wrote policies' names take
    the policy of their latest applied block from the log; a person's block, and a job
    the log says nothing of, are left alone."""
    from alembic import command

    with Store.open(store_url) as store:
        with store.engine.begin() as conn:
            command.downgrade(migrate._config(conn), "0004")
            for job, by in ((1, "corral"), (2, "user:ann"), (3, "corral")):
                conn.execute(insert(table("jobs")).values(id=job, name=f"j{job}", state="blocked", hold="blocked",
                                                          blocked_by=by, version=0))
            for job, policy in ((1, "lock-something-else"), (1, "keep-dependents-blocked"), (2, None)):
                conn.execute(insert(table("transitions")).values(
                    at=NOW, kind="job", entity_id=str(job), job_id=job, action="block", from_state="pending",
                    to_state="blocked", actor="corral" if policy else "user:ann", policy=policy, reason="r", applied=True))
            assert migrate.current_revision(conn) == "0004"
        assert store.init() == migrate.HEAD
        by = {j.id: j.blocked_by for j in store.read_farm().jobs.values()}
    assert by == {1: "keep-dependents-blocked", 2: "user:ann", 3: "corral"}
