"""Derived facts on small hand-built farms: the numbers a wrangler would count by hand."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.facts import (
    FIELDS,
    MISSING,
    Aggregates,
    FactBuilder,
    Needs,
    first_stage,
    get_path,
    narrow,
)
from corral.facts.builder import FIRST
from corral.farm import Farm, Frame, FrameRun, Instance, Job, Worker
from corral.policy.loader import builtin_dir, load_paths, load_texts
from corral.policy.model import Policy, paths_read
from corral.policy.reference import holds
from corral.policyset import screen_for
from corral.states import FrameState, Hold, InstanceState, JobState, Kind, WorkerState
from strategies import NOW, farms, policy_sets

F = FrameState


def ago(minutes: float) -> object:
    return NOW - timedelta(minutes=minutes)


def run(host: str, state: FrameState, minutes: float, inst: str | None = None) -> FrameRun:
    return FrameRun(host, inst, state, 0 if state is F.COMPLETE else 1, ago(minutes + 5), ago(minutes))  # type: ignore[arg-type]


def lockout_farm() -> Farm:
    """Job 1 fails on 'bad' (three in a row on instance 1.a) and completes on 'good'."""
    farm = Farm()
    job = Job(id=1, name="shot010", retry_limit=3, retries=1, state=JobState.FAILING, state_since=ago(20),
              submitted_at=ago(120))
    job.frames = {
        1: Frame(1, 1, F.COMPLETE, host="bad", instance="1.a", runs=[run("bad", F.COMPLETE, 50, "1.a")]),
        2: Frame(1, 2, F.FAILED, host="bad", instance="1.a", retries=1, runs=[run("bad", F.FAILED, 40, "1.a")]),
        3: Frame(1, 3, F.FAILED, host="bad", instance="1.a", runs=[run("bad", F.FAILED, 30, "1.a")]),
        4: Frame(1, 4, F.FAILED, host="bad", instance="1.a", runs=[run("bad", F.FAILED, 20, "1.a")]),
        5: Frame(1, 5, F.COMPLETE, host="good", instance="1.b", runs=[run("good", F.COMPLETE, 10, "1.b")]),
        6: Frame(1, 6, F.RUNNING, host="good", instance="1.b", attempts=1, started_at=ago(7), state_since=ago(7)),
        7: Frame(1, 7, F.PENDING),
    }
    job.instances = {"1.a": Instance("1.a", 1, "bad", InstanceState.RUNNING, ago(60)),
                     "1.b": Instance("1.b", 1, "good", InstanceState.RUNNING, ago(60))}
    other = Job(id=2, name="shot020", state=JobState.FAILED)
    other.frames = {1: Frame(2, 1, F.FAILED, host="bad", runs=[run("bad", F.FAILED, 5)])}
    farm.jobs = {1: job, 2: other}
    farm.workers = {"bad": Worker("bad", state_since=ago(600)), "good": Worker("good")}
    return farm


def test_a_host_s_recent_runs_are_kept_for_two_windows_not_for_the_daemon_s_life() -> None:
    """The daemon feeds every finished run to its counts for its whole life: a host's
    list for the recent window keeps only the last two windows before its newest run,
    and the window's counts stay what they were."""
    agg = Aggregates(recent=timedelta(hours=1))
    for minute in range(600):  # ten hours, a run a minute, every third one failed
        at = ago(600 - minute)
        state = F.FAILED if minute % 3 == 0 else F.COMPLETE
        agg.run(1, minute, FrameRun("h", "1.a", state, 0, at - timedelta(minutes=1), at, minute + 1))  # type: ignore[operator]
    assert len(agg.host_recent["h"]) <= 2 * 60 + 1
    in_window = [m for m in range(600) if 600 - m <= 60]
    failed = sum(1 for m in in_window if m % 3 == 0)
    assert agg.recent_counts("h", NOW) == (failed, len(in_window) - failed)


def test_an_instance_counts_its_failures_in_a_row_since_its_last_success() -> None:
    fact = FactBuilder(lockout_farm(), NOW).fact(Kind.INSTANCE, "1.a")
    assert fact["consecutive_failures"] == 3
    assert fact["frames_failed"] == 3 and fact["frames_completed"] == 1
    assert fact["host_failures_on_job"] == 3 and fact["host_successes_on_job"] == 1
    assert fact["other_hosts_succeeding"] == 1 and fact["other_hosts_failing"] == 0
    assert fact["job"]["name"] == "shot010" and "dependencies" not in fact["job"]
    assert fact["worker"]["consecutive_failures"] == 4


def test_a_worker_counts_failures_and_distinct_jobs_since_its_last_success() -> None:
    builder = FactBuilder(lockout_farm(), NOW)
    bad = builder.fact(Kind.WORKER, "bad")
    assert bad["consecutive_failures"] == 4  # frames 2, 3, 4 of job 1 and frame 1 of job 2
    assert bad["distinct_jobs_failed"] == 2
    assert bad["recent_failures"] == 4 and bad["recent_successes"] == 1
    assert bad["time_in_state"] == 36000.0 and bad["state"] == "up"
    good = builder.fact(Kind.WORKER, "good")
    assert (good["consecutive_failures"], good["distinct_jobs_failed"], good["frames_running"]) == (0, 0, 1)
    assert "time_in_state" not in good  # never told when it came up


def test_a_success_resets_the_workers_count() -> None:
    farm = lockout_farm()
    farm.jobs[2].frames[2] = Frame(2, 2, F.COMPLETE, host="bad", runs=[run("bad", F.COMPLETE, 1)])
    bad = FactBuilder(farm, NOW).fact(Kind.WORKER, "bad")
    assert (bad["consecutive_failures"], bad["distinct_jobs_failed"]) == (0, 0)


def test_a_success_ends_only_the_failures_recorded_before_it_in_a_row() -> None:
    """Runs that finished at the same instant are ordered by when they were recorded: a
    success ends the failures recorded before it, not one recorded after it."""
    at = NOW - timedelta(minutes=5)
    agg = Aggregates()
    for run_id, state in ((1, F.FAILED), (2, F.FAILED), (4, F.FAILED)):
        agg.run(7, 1, FrameRun("bad", "7.a", state, 1, at - timedelta(minutes=1), at, id=run_id))
    agg.run(7, 1, FrameRun("bad", "7.a", F.COMPLETE, 0, at - timedelta(minutes=1), at, id=3))
    assert agg.host_tail["bad"].failures == 1 and agg.inst_tail["7.a"].failures == 1  # run 4 only
    agg.run(7, 1, FrameRun("bad", "7.a", F.FAILED, 1, at - timedelta(minutes=2), at - timedelta(seconds=1), id=5))
    assert agg.host_tail["bad"].failures == 1  # finished before the success: not "in a row"
    agg.run(7, 1, FrameRun("bad", "7.a", F.COMPLETE, 0, at, at + timedelta(seconds=1), id=6))
    assert agg.host_tail["bad"].failures == 0 and agg.host_tail["bad"].distinct_jobs() == 0


def test_a_job_counts_failing_and_succeeding_hosts() -> None:
    farm = lockout_farm()
    farm.jobs[1].frames[8] = Frame(1, 8, F.FAILED, host="worse", runs=[run("worse", F.FAILED, 3)])
    fact = FactBuilder(farm, NOW).fact(Kind.JOB, "1")
    assert fact["hosts"] == 3  # bad, good, worse
    assert fact["failing_hosts"] == 1  # only 'worse': 'bad' also completed a frame
    assert fact["succeeding_hosts"] == 2
    assert fact["hosts_not_failing"] == 2


def test_a_job_counts_its_frames_instances_retries_and_times() -> None:
    fact = FactBuilder(lockout_farm(), NOW).fact(Kind.JOB, "1")
    assert fact["frames_total"] == 7 and fact["frames_failed"] == 3 and fact["frames_complete"] == 2
    assert fact["frames_done_percent"] == 100 * 2 / 7
    assert fact["instances_running"] == 2 and fact["instances_total"] == 2
    assert fact["retries_left"] == 2
    assert fact["time_in_state"] == 1200.0 and fact["age"] == 7200.0
    assert "since_retry" not in fact
    assert fact["suspended"] is False


def test_retries_left_never_goes_below_zero() -> None:
    farm = lockout_farm()
    farm.jobs[1].retries = 5
    builder = FactBuilder(farm, NOW)
    assert builder.fact(Kind.JOB, "1")["retries_left"] == 0
    assert builder.fact(Kind.FRAME, "1:2")["retries_left"] == 2  # frame: retry_limit 3 minus its own 1


def test_dependencies_are_counted_and_all_complete_needs_at_least_one() -> None:
    farm = Farm()
    states = {1: JobState.COMPLETE, 2: JobState.FAILED, 3: JobState.KILLED, 4: JobState.RUNNING}
    for jid, state in states.items():
        farm.jobs[jid] = Job(id=jid, name=f"j{jid}", state=state)
    farm.jobs[5] = Job(id=5, name="waits", depends_on=[1, 2, 3, 4], hold=Hold.BLOCKED, state=JobState.BLOCKED)
    farm.jobs[6] = Job(id=6, name="ready", depends_on=[1])
    farm.jobs[7] = Job(id=7, name="gone", depends_on=[1, 99])
    builder = FactBuilder(farm, NOW)
    assert builder.fact(Kind.JOB, "5")["dependencies"] == {
        "total": 4, "complete": 1, "failed": 1, "killed": 1, "incomplete": 3, "all_complete": False}
    assert builder.fact(Kind.JOB, "6")["dependencies"]["all_complete"] is True
    assert builder.fact(Kind.JOB, "1")["dependencies"]["all_complete"] is False  # no dependencies at all
    assert builder.fact(Kind.JOB, "7")["dependencies"]["all_complete"] is False  # one is not in the farm
    assert builder.fact(Kind.JOB, "7")["dependencies"]["incomplete"] == 1


def test_frame_dependencies_count_complete_and_incomplete_frames() -> None:
    farm = lockout_farm()
    farm.jobs[2].frames[1].depends_on = [(1, 1), (1, 2), (1, 7)]
    deps = FactBuilder(farm, NOW).fact(Kind.FRAME, "2:1")["dependencies"]
    assert deps == {"total": 3, "complete": 1, "incomplete": 2}


def test_run_time_and_time_in_state_of_frames() -> None:
    builder = FactBuilder(lockout_farm(), NOW)
    running = builder.fact(Kind.FRAME, "1:6")
    assert running["run_time"] == 420.0 and running["time_in_state"] == 420.0
    assert running["worker"]["name"] == "good" and running["job"]["id"] == 1
    farm = lockout_farm()
    done = farm.jobs[1].frames[5]
    done.started_at, done.finished_at = ago(30), ago(25)
    assert FactBuilder(farm, NOW).fact(Kind.FRAME, "1:5")["run_time"] == 300.0  # finished: start to finish


def test_unknown_values_are_omitted_not_null() -> None:
    builder = FactBuilder(lockout_farm(), NOW)
    pending = builder.fact(Kind.FRAME, "1:7")
    for name in ("host", "instance", "exit_code", "run_time", "time_in_state", "worker"):
        assert name not in pending, name
        assert get_path(pending, name) is MISSING
    assert None not in pending.values()
    assert get_path(pending, "job.name") == "shot010"
    assert get_path(pending, "worker.state") is MISSING


def test_every_fact_field_is_declared_in_fields() -> None:
    builder = FactBuilder(lockout_farm(), NOW)

    def leaves(fact: dict[str, object], prefix: str = "") -> set[str]:
        out: set[str] = set()
        for key, value in fact.items():
            if isinstance(value, dict):
                out |= leaves(value, f"{prefix}{key}.")  # type: ignore[arg-type]
            else:
                out.add(prefix + key)
        return out

    for kind in Kind:
        for fact in builder.facts(kind):
            assert leaves(fact) <= set(FIELDS[kind]), (kind, leaves(fact) - set(FIELDS[kind]))


def test_narrow_keeps_only_the_paths_asked_for() -> None:
    fact = FactBuilder(lockout_farm(), NOW).fact(Kind.FRAME, "1:2")
    assert narrow(fact, ["state", "job.name", "worker.missing", "exit_code"]) == {
        "id": "1:2", "state": "failed", "job": {"name": "shot010"}}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(farm=farms(), data=st.data())
def test_a_fact_built_for_the_fields_policies_read_has_them_as_the_whole_fact_does(farm: Farm, data: Any) -> None:
    """The engine's facts are built narrowed (`Needs`): whatever fields the policies of
    each kind read, each one is there with the value the whole fact has (or missing in
    both), also when frame or instance policies read a little of a job (`job.state`)
    and job policies much more of it (its host counts), or the other way round."""
    read = {kind: data.draw(st.sets(st.sampled_from(sorted(FIELDS[kind])), max_size=6)) for kind in Kind}
    whole = FactBuilder(farm, NOW)
    narrowed = FactBuilder(farm, NOW, needs=Needs.of(read))
    for kind in Kind:
        for fact in whole.facts(kind):
            entity = farm.entity(kind, str(fact["id"]))
            small = narrowed.of(kind, entity)
            for path in read[kind]:
                assert get_path(small, path) == get_path(fact, path), (kind, path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(farm=farms(), policies=policy_sets(), data=st.data())
def test_an_entity_screened_out_on_its_first_stage_matches_no_policy(farm: Farm, policies: list[Policy], data: Any) -> None:
    """The engine's facts are built in stages: the rest of a fact is skipped when its
    first stage (row fields, frame counts) or its second (host counts) already fails
    every gate.  Whatever the policies, an entity screened out is one that no policy
    matches, and one that is not screened out gets the same fact as without screening."""
    kind = data.draw(st.sampled_from(list(Kind)))
    mine = [p for p in policies if p.kind is kind]
    needs = Needs.of(paths_read(mine))
    screen = screen_for(kind, mine)
    whole = FactBuilder(farm, NOW)
    for fact in whole.facts(kind):
        entity = farm.entity(kind, str(fact["id"]))
        got = FactBuilder(farm, NOW, needs=needs).candidate(kind, entity, screen)
        if got is None:
            assert not any(holds(p.when, fact) for p in mine), (kind, fact["id"])
        else:
            assert got == FactBuilder(farm, NOW, needs=needs).of(kind, entity)


def test_a_running_job_with_frames_complete_is_screened_out_before_its_host_counts() -> None:
    """The built-in pack's one policy for running jobs wants no frame complete: a running
    job that has completed frames is ruled out on its first stage."""
    farm = lockout_farm()
    farm.jobs[1].state = JobState.RUNNING
    pack = load_paths([builtin_dir()]).policies
    jobs = [p for p in pack if p.kind is Kind.JOB]
    screen = screen_for(Kind.JOB, jobs)
    assert screen is not None
    builder = FactBuilder(farm, NOW, needs=Needs.of(paths_read(jobs)))
    assert builder.candidate(Kind.JOB, farm.jobs[1], screen) is None
    farm.jobs[1].state = JobState.BLOCKED  # a blocked job may be unblocked: a candidate
    assert builder.candidate(Kind.JOB, farm.jobs[1], screen) is not None


def test_a_screen_tests_an_unknown_field_as_missing_not_as_none() -> None:
    """A job that is not blocked has no `blocked_by` (the field is left out of its fact):
    a screen probing it field by field must see it missing, as the fact does, so a gate
    asking that it not exist, or not equal something, admits the job."""
    farm = lockout_farm()
    job = farm.jobs[1]
    assert job.hold is not Hold.BLOCKED and "blocked_by" not in FactBuilder(farm, NOW).job(job)
    for when, admitted in (("{blocked_by: {exists: false}}", True), ("{blocked_by: {exists: true}}", False),
                           ("{blocked_by: {ne: wrangler}}", False), ("{blocked_by: {not_in: [wrangler]}}", False)):
        loaded = load_texts([("p.yaml", f"policies:\n  - name: p\n    kind: job\n    when: {when}\n"
                                        "    actions: [block]\n    reason: r\n")])
        assert loaded.ok, [str(e) for e in loaded.errors]
        screen = screen_for(Kind.JOB, loaded.policies)
        assert screen is not None
        fact = FactBuilder(farm, NOW).job(job)
        assert holds(loaded.policies[0].when, fact) is admitted, when
        assert (FactBuilder(farm, NOW).candidate(Kind.JOB, job, screen) is not None) is admitted, when


def test_a_running_job_with_no_frame_complete_is_screened_out_on_its_host_counts() -> None:
    """No frame complete passes the first screen of the built-in pack's policy for running
    jobs; the second rules the job out when not every host that ran it is failing."""
    farm = lockout_farm()
    job = farm.jobs[1]
    job.state = JobState.RUNNING
    for frame in job.frames.values():
        if frame.state == F.COMPLETE:
            frame.state = F.PENDING
    jobs = [p for p in load_paths([builtin_dir()]).policies if p.kind is Kind.JOB]
    screen = screen_for(Kind.JOB, jobs)
    assert screen is not None and screen.then is not None
    fact = FactBuilder(farm, NOW).job(job)
    assert fact["frames_complete"] == 0 and fact["succeeding_hosts"] == 2  # runs completed on both hosts earlier
    assert FactBuilder(farm, NOW, needs=Needs.of(paths_read(jobs))).candidate(Kind.JOB, job, screen) is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(farm=farms())
def test_each_first_stage_field_probed_alone_is_what_the_whole_fact_has(farm: Farm) -> None:
    """A screen reads first-stage fields one by one (`corral.facts.builder.FIRST`): every
    such field of a job, an instance and a worker has its own definition, and it gives
    the value the whole fact has (None where the fact leaves the field out)."""
    for kind, table in FIRST.items():
        assert {p for p in FIELDS[kind] if first_stage(kind, p)} <= set(table), kind
        assert set(table) <= set(FIELDS[kind]), kind
    builder = FactBuilder(farm, NOW)
    subjects: dict[Kind, list[tuple[Any, dict[str, Any]]]] = {
        Kind.JOB: [(job, builder.job(job)) for job in farm.jobs.values()],
        Kind.INSTANCE: [(inst, builder.instance(inst.id)) for inst in farm.instances.values()],
        Kind.WORKER: [(name, builder.worker(name)) for name in {*farm.workers, *builder.agg.host_tail}],
    }
    for kind, pairs in subjects.items():
        for subject, whole in pairs:
            for path, get in FIRST[kind].items():
                assert get_path(whole, path) == _or_missing(get(subject, builder)), (kind, whole["id"], path)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(farm=farms())
def test_every_fact_has_exactly_the_fields_the_vocabulary_declares(farm: Farm) -> None:
    """The vocabulary (`FIELDS`) is what `corral fields`, the docs, the JSON Schema and
    the loader use; the builder writes some facts out by hand (a frame's whole fact):
    each fact built with every group holds no field the vocabulary lacks, and every
    field it declares that is not unknown for that entity."""
    builder = FactBuilder(farm, NOW)
    may_be_missing = {"blocked_by", "since_retry", "time_in_state", "age", "host", "instance", "exit_code", "run_time",
                      "state", "host_since_last_failure_on_job", "owner", "layer", "failure_class",
                      "failing_for"}
    for kind in Kind:
        declared = set(FIELDS[kind])
        for fact in builder.facts(kind):
            paths = _paths(fact)
            assert paths <= declared, (kind, sorted(paths - declared))
            own = {p for p in declared if "." not in p or p.startswith("dependencies.")}
            missing = {p for p in own - paths if p.rpartition(".")[2] not in may_be_missing}
            assert not missing, (kind, fact["id"], sorted(missing))


def _paths(fact: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in fact.items():
        if isinstance(value, dict):
            out |= _paths(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def _or_missing(value: Any) -> Any:
    return MISSING if value is None else value


# --- counts that mean what they say (frames against attempts), and the peers' facts -------

def retried_on_bad_farm() -> Farm:
    """Job 1: frame 1 failed three times on 'bad' (then once on 'other'), frame 2 once on
    'bad'; frame 3 completed on 'good'.  Hosts: bad (up), other (up), good (locked),
    spare (up, but job 1 has a blocked instance on it), down (down)."""
    farm = Farm()
    job = Job(id=1, name="shot010", state=JobState.FAILING, state_since=ago(30))
    job.frames = {
        1: Frame(1, 1, F.FAILED, host="other", instance="1.o", attempts=4,
                 runs=[run("bad", F.FAILED, 50, "1.b"), run("bad", F.FAILED, 40, "1.b"),
                       run("bad", F.FAILED, 30, "1.b"), run("other", F.FAILED, 20, "1.o")]),
        2: Frame(1, 2, F.FAILED, host="bad", instance="1.b", runs=[run("bad", F.FAILED, 25, "1.b")]),
        3: Frame(1, 3, F.COMPLETE, host="good", instance="1.g", runs=[run("good", F.COMPLETE, 10, "1.g")]),
        4: Frame(1, 4, F.PENDING),
    }
    job.instances = {"1.b": Instance("1.b", 1, "bad", InstanceState.RUNNING, ago(60)),
                     "1.o": Instance("1.o", 1, "other", InstanceState.RUNNING, ago(60)),
                     "1.g": Instance("1.g", 1, "good", InstanceState.RUNNING, ago(60)),
                     "1.s": Instance("1.s", 1, "spare", InstanceState.BLOCKED, ago(60))}
    farm.jobs = {1: job}
    farm.workers = {"bad": Worker("bad"), "other": Worker("other"), "spare": Worker("spare"),
                    "good": Worker("good", WorkerState.LOCKED), "down": Worker("down", WorkerState.DOWN)}
    return farm


def test_a_frame_failed_three_times_on_a_host_is_one_frame_and_three_attempts() -> None:
    b = FactBuilder(retried_on_bad_farm(), NOW)
    bad = b.fact(Kind.INSTANCE, "1.b")
    assert bad["host_failed_frames_on_job"] == 2 and bad["host_failed_attempts_on_job"] == 4
    assert bad["host_failures_on_job"] == 4  # the deprecated name keeps what it counted
    assert bad["host_since_last_failure_on_job"] == 25 * 60
    assert "host_since_last_failure_on_job" not in b.fact(Kind.INSTANCE, "1.g")  # never failed: unknown
    job = b.fact(Kind.JOB, "1")
    assert job["worst_host_failed_frames"] == 2 and job["worst_host_failed_attempts"] == 4
    assert job["worst_host_failures"] == 4
    assert job["failed_attempts"] == 5  # over the job's life, every host
    assert job["frames_failed_percent"] == 50.0  # 2 of its 4 frames are failed now


def test_a_frame_knows_how_many_different_hosts_failed_it() -> None:
    b = FactBuilder(retried_on_bad_farm(), NOW)
    assert b.fact(Kind.FRAME, "1:1")["hosts_failed"] == 2
    assert b.fact(Kind.FRAME, "1:1")["failed_attempts"] == 4
    assert b.fact(Kind.FRAME, "1:3")["hosts_failed"] == 0


def test_workers_available_leaves_out_hosts_down_locked_or_locked_out_of_the_job() -> None:
    farm = retried_on_bad_farm()
    assert FactBuilder(farm, NOW).fact(Kind.JOB, "1")["workers_available"] == 2  # bad and other
    farm.workers["bad"].state = WorkerState.LOCKED
    assert FactBuilder(farm, NOW).fact(Kind.JOB, "1")["workers_available"] == 1
    farm.jobs[1].instances["1.o"].state = InstanceState.BLOCKED
    assert FactBuilder(farm, NOW).fact(Kind.JOB, "1")["workers_available"] == 0


def test_counting_run_by_run_gives_the_distinct_frames_and_the_last_failure() -> None:
    """The live farm counts each run as it is read: a frame failing again on the same host
    adds an attempt, not a frame."""
    agg = Aggregates()
    for minutes in (50, 40, 30):
        agg.run(1, 1, run("bad", F.FAILED, minutes, "1.b"))
    agg.run(1, 2, run("bad", F.FAILED, 45, "1.b"))
    assert agg.job_host_fail[(1, "bad")] == 4 and agg.job_host_fail_frames[(1, "bad")] == 2
    assert agg.job_host_last_fail[(1, "bad")] == ago(30) and agg.job_failed_attempts[1] == 4


def only_here_farm() -> Farm:
    """Job 1 is failed by a and b (nothing else failed anywhere), by c (which completed a
    frame of job 2) and by 'bad' (which also failed job 2); d failed a frame of it but
    completed another.  Job 2 is failed only by 'bad'."""
    farm = Farm()
    job = Job(id=1, name="broken", state=JobState.FAILING)
    job.frames = {
        1: Frame(1, 1, F.FAILED, host="a", runs=[run("a", F.FAILED, 30), run("a", F.FAILED, 20)]),
        2: Frame(1, 2, F.FAILED, host="b", runs=[run("b", F.FAILED, 25)]),
        3: Frame(1, 3, F.FAILED, host="c", runs=[run("c", F.FAILED, 22)]),
        4: Frame(1, 4, F.FAILED, host="bad", runs=[run("bad", F.FAILED, 21)]),
        5: Frame(1, 5, F.FAILED, host="d", runs=[run("d", F.FAILED, 19)]),
        6: Frame(1, 6, F.COMPLETE, host="d", runs=[run("d", F.COMPLETE, 10)]),
        7: Frame(1, 7, F.PENDING),
    }
    other = Job(id=2, name="healthy", state=JobState.RUNNING)
    other.frames = {
        1: Frame(2, 1, F.FAILED, host="bad", runs=[run("bad", F.FAILED, 40)]),
        2: Frame(2, 2, F.COMPLETE, host="c", runs=[run("c", F.COMPLETE, 35)]),
        3: Frame(2, 3, F.PENDING),
    }
    farm.jobs = {1: job, 2: other}
    farm.workers = {name: Worker(name) for name in ("a", "b", "c", "d", "bad")}
    return farm


def test_a_job_counts_the_failing_hosts_that_failed_no_other_job() -> None:
    b = FactBuilder(only_here_farm(), NOW)
    job = b.fact(Kind.JOB, "1")
    assert job["failing_hosts"] == 4  # a, b, c, bad (d completed a frame of it)
    assert job["failing_hosts_only_here"] == 3  # a (twice: one host), b, c; not 'bad', which failed job 2
    assert job["failing_hosts_healthy_elsewhere"] == 1  # c alone completed anything anywhere
    assert b.fact(Kind.JOB, "2")["failing_hosts_only_here"] == 0  # 'bad' failed job 1 too


def turned_bad_farm() -> Farm:
    """'h' completed a frame of job 3 long ago, then failed job 1, then job 2: a host that
    turned bad after good work.  'g' completed a frame of job 3 and failed job 1 since."""
    farm = Farm()
    new = Job(id=1, name="new_shot", state=JobState.FAILING)
    new.frames = {1: Frame(1, 1, F.FAILED, host="h", runs=[run("h", F.FAILED, 30)]),
                  2: Frame(1, 2, F.FAILED, host="g", runs=[run("g", F.FAILED, 30)]),
                  3: Frame(1, 3, F.PENDING)}
    other = Job(id=2, name="other_shot", state=JobState.FAILING)
    other.frames = {1: Frame(2, 1, F.FAILED, host="h", runs=[run("h", F.FAILED, 20)]), 2: Frame(2, 2, F.PENDING)}
    old = Job(id=3, name="last_week", state=JobState.COMPLETE)
    old.frames = {1: Frame(3, 1, F.COMPLETE, host="h", runs=[run("h", F.COMPLETE, 10_000)]),
                  2: Frame(3, 2, F.COMPLETE, host="g", runs=[run("g", F.COMPLETE, 10_000)])}
    farm.jobs = {1: new, 2: other, 3: old}
    farm.workers = {name: Worker(name) for name in ("h", "g")}
    return farm


def test_a_host_failing_other_jobs_now_is_not_healthy_elsewhere_whatever_it_completed_before() -> None:
    """A host that completed frames and now fails every job it takes speaks against none of
    them: two hosts with a good past that turn bad together cannot get a healthy job blocked."""
    farm = turned_bad_farm()
    b = FactBuilder(farm, NOW)
    assert b.fact(Kind.JOB, "1")["failing_hosts"] == 2
    assert b.fact(Kind.JOB, "1")["failing_hosts_healthy_elsewhere"] == 1  # g; not h, failing job 2 since
    assert b.fact(Kind.JOB, "2")["failing_hosts_healthy_elsewhere"] == 0  # h failed job 1 in the same row
    # Once h completes a frame again, its failures are no longer in a row: healthy elsewhere again.
    farm.jobs[3].frames[3] = Frame(3, 3, F.COMPLETE, host="h", runs=[run("h", F.COMPLETE, 5)])
    b = FactBuilder(farm, NOW)
    assert b.fact(Kind.JOB, "1")["failing_hosts_healthy_elsewhere"] == 2


def test_failing_for_spans_a_host_s_last_completed_frame_to_its_latest_failure() -> None:
    farm = turned_bad_farm()  # h and g completed frames of job 3 10,000 minutes ago, then failed
    farm.jobs[1].frames[3] = Frame(1, 3, F.COMPLETE, host="g", runs=[run("g", F.COMPLETE, 25)])
    farm.workers["new"] = Worker("new")
    b = FactBuilder(farm, NOW)
    assert b.fact(Kind.WORKER, "h")["failing_for"] == (10_000 - 20) * 60  # to its failure of job 2, 20 min ago
    assert b.fact(Kind.WORKER, "g")["failing_for"] == 0  # it failed 30 min ago and completed a frame since
    assert "failing_for" not in b.fact(Kind.WORKER, "new")  # never completed one: no value, not 0
    # time passing does not move it (a host waiting for work is not failing meanwhile)
    assert FactBuilder(farm, NOW + timedelta(hours=5)).fact(Kind.WORKER, "h")["failing_for"] == (10_000 - 20) * 60


def test_counting_run_by_run_tells_when_a_host_s_failures_in_a_row_reach_another_job() -> None:
    """The live farm is told (`newly_healthy`) when a host's failures in a row come to span
    another job, and again when a completed frame ends them: only then, not on every run."""
    agg = Aggregates()
    agg.run(3, 1, run("h", F.COMPLETE, 100))
    agg.newly_healthy.clear()
    agg.run(1, 1, run("h", F.FAILED, 30))
    assert agg.newly_healthy == set()  # its first failure of any job: only job 1 (whose row the run is) judges it
    agg.run(1, 2, run("h", F.FAILED, 28))
    assert agg.newly_healthy == set()  # still only job 1
    agg.run(2, 1, run("h", F.FAILED, 20))
    assert agg.newly_healthy == {"h"}  # now job 2 too: job 1 no longer counts h as healthy elsewhere
    agg.newly_healthy.clear()
    agg.run(2, 2, run("h", F.FAILED, 15))
    assert agg.newly_healthy == set()
    agg.run(3, 2, run("h", F.COMPLETE, 10))
    assert agg.newly_healthy == {"h"}


def test_counting_run_by_run_tells_a_host_s_first_failure_of_a_second_job() -> None:
    """The live farm is told when a host fails a second job: the first job's count of
    hosts failing only it falls although nothing of that job changed."""
    agg = Aggregates()
    agg.run(1, 1, run("a", F.FAILED, 30))
    agg.run(1, 2, run("a", F.FAILED, 25))
    agg.run(2, 1, run("a", F.COMPLETE, 22))  # a success elsewhere changes nothing of it
    assert agg.host_failed_jobs["a"] == {1} and agg.newly_failing_elsewhere == set()
    agg.run(3, 1, run("a", F.FAILED, 20))
    assert agg.host_failed_jobs["a"] == {1, 3} and agg.newly_failing_elsewhere == {"a"}
    agg.newly_failing_elsewhere.clear()
    agg.run(4, 1, run("a", F.FAILED, 10))
    assert agg.host_failed_jobs["a"] == {1, 3, 4} and agg.newly_failing_elsewhere == set()  # told once
    farm = only_here_farm()
    assert Aggregates.from_farm(farm).host_failed_jobs == {"a": {1}, "b": {1}, "c": {1}, "bad": {1, 2}, "d": {1}}


def others_complete_farm() -> Farm:
    """'h' completed a frame of job 4, then failed frames of jobs 1, 2 and 3 in a row
    (job 1 twice).  Job 1 is broken: 'x' failed it too and nobody completed a frame of it.
    Job 2 is completed by 'x'; job 3 only by 'h' itself, before its failures began."""
    farm = Farm()
    broken = Job(id=1, name="broken", state=JobState.FAILING)
    broken.frames = {
        1: Frame(1, 1, F.FAILED, host="h", runs=[run("h", F.FAILED, 30), run("h", F.FAILED, 25)]),
        2: Frame(1, 2, F.FAILED, host="x", runs=[run("x", F.FAILED, 28)]),
    }
    healthy = Job(id=2, name="healthy", state=JobState.RUNNING)
    healthy.frames = {
        1: Frame(2, 1, F.FAILED, host="h", runs=[run("h", F.FAILED, 20)]),
        2: Frame(2, 2, F.COMPLETE, host="x", runs=[run("x", F.COMPLETE, 22)]),
    }
    own = Job(id=3, name="own", state=JobState.RUNNING)
    own.frames = {
        1: Frame(3, 1, F.COMPLETE, host="h", runs=[run("h", F.COMPLETE, 60)]),
        2: Frame(3, 2, F.FAILED, host="h", runs=[run("h", F.FAILED, 15)]),
    }
    earlier = Job(id=4, name="earlier", state=JobState.RUNNING)
    earlier.frames = {1: Frame(4, 1, F.COMPLETE, host="h", runs=[run("h", F.COMPLETE, 40)])}
    farm.jobs = {1: broken, 2: healthy, 3: own, 4: earlier}
    farm.workers = {name: Worker(name) for name in ("h", "x")}
    return farm


def test_a_worker_counts_the_jobs_it_fails_that_other_hosts_complete() -> None:
    """A broken job, or one only the host itself completed, does not count against it."""
    farm = others_complete_farm()
    worker = FactBuilder(farm, NOW).fact(Kind.WORKER, "h")
    assert worker["consecutive_failures"] == 4 and worker["distinct_jobs_failed"] == 3
    assert worker["distinct_jobs_failed_others_complete"] == 1  # job 2 alone
    assert worker["frames_completed"] == 2  # jobs 3 and 4, before its failures
    assert FactBuilder(farm, NOW).fact(Kind.WORKER, "x")["distinct_jobs_failed_others_complete"] == 0  # it completed since
    # 'x' completes a frame of job 3: it counts against 'h' now
    farm.jobs[3].frames[3] = Frame(3, 3, F.COMPLETE, host="x", runs=[run("x", F.COMPLETE, 5)])
    assert FactBuilder(farm, NOW).fact(Kind.WORKER, "h")["distinct_jobs_failed_others_complete"] == 2


def test_counting_run_by_run_tells_a_job_s_first_and_second_completing_hosts() -> None:
    """The live farm is told when a job gets its first or second host completing a frame:
    the hosts failing it count it differently although nothing of theirs changed."""
    agg = Aggregates()
    agg.run(1, 1, run("h", F.FAILED, 30))
    assert agg.jobs_failed_others_complete("h") == 0 and agg.newly_completed_elsewhere == set()
    agg.run(1, 2, run("x", F.COMPLETE, 25))
    assert agg.newly_completed_elsewhere == {1} and agg.jobs_failed_others_complete("h") == 1
    agg.newly_completed_elsewhere.clear()
    agg.run(1, 3, run("x", F.COMPLETE, 20))  # the same host again: nothing new
    assert agg.newly_completed_elsewhere == set()
    agg.run(1, 4, run("y", F.COMPLETE, 18))
    assert agg.newly_completed_elsewhere == {1}  # a second host: "others" moved for the first
    agg.newly_completed_elsewhere.clear()
    agg.run(1, 5, run("z", F.COMPLETE, 17))
    assert agg.newly_completed_elsewhere == set()  # told no more
    assert Aggregates.from_farm(others_complete_farm()).job_ok_hosts == {2: 1, 3: 1, 4: 1}
