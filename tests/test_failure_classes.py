"""Failure classes: exit codes sorted into why an attempt failed, a table wranglers write,
and what policies do with it (retry an out-of-memory frame, back off a license failure
without spending a retry, never retry a deliberate kill)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from corral.cycle import plan_farm
from corral.facts import FactBuilder
from corral.failures import DEFAULT_CLASSES, FailureClass
from corral.farm import Farm, Frame, FrameRun, Job, Worker
from corral.policy.loader import load_texts
from corral.policyset import PolicySet
from corral.snapshot import farm_to_snapshot
from corral.states import Action, FrameState, JobState, Kind
from corral.store import Proposal, Store
from strategies import NOW

F = FrameState


@pytest.mark.parametrize(("code", "cls"), [
    (137, "oom"), (-9, "oom"), (143, "user_kill"), (-15, "user_kill"), (130, "user_kill"), (139, "crash"),
    (-11, "crash"), (134, "crash"), (124, "timeout"), (1, "error"), (3, "error"), (0, None), (None, None),
])
def test_the_default_classes_read_exit_codes_and_signals_both_ways(code: int | None, cls: str | None) -> None:
    assert DEFAULT_CLASSES.classify(code) == cls


def test_a_declared_class_takes_its_codes_from_the_defaults() -> None:
    table = DEFAULT_CLASSES.overridden([FailureClass("license", frozenset({3, 137}))])
    assert table.classify(3) == "license" and table.classify(137) == "license"
    assert table.classify(-9) == "oom"  # SIGKILL reported as -9 is still the OOM killer's


def _farm() -> Farm:
    at = NOW - timedelta(minutes=10)
    job = Job(1, "shot", state=JobState.FAILING, retry_limit=1)
    job.frames = {
        1: Frame(1, 1, F.FAILED, host="a", exit_code=137, retries=1, state_since=at,
                 runs=[FrameRun("a", None, F.FAILED, 3, at - timedelta(minutes=20), at - timedelta(minutes=10)),
                       FrameRun("b", None, F.FAILED, 137, at - timedelta(minutes=5), at)]),
        2: Frame(1, 2, F.FAILED, host="a", exit_code=143, state_since=at,
                 runs=[FrameRun("a", None, F.FAILED, 143, at - timedelta(minutes=5), at)]),
        3: Frame(1, 3, F.RUNNING, host="b"),
    }
    return Farm(jobs={1: job}, workers={"a": Worker("a"), "b": Worker("b")})


def test_a_frame_shows_its_last_failure_s_class_and_counts_per_class() -> None:
    b = FactBuilder(_farm(), NOW)
    one = b.fact(Kind.FRAME, "1:1")
    assert one["failure_class"] == "oom" and one["failures"]["oom"] == 1 and one["failures"]["error"] == 1
    assert b.fact(Kind.FRAME, "1:2")["failure_class"] == "user_kill"
    assert "failure_class" not in b.fact(Kind.FRAME, "1:3")  # never failed
    job = b.fact(Kind.JOB, "1")["failures"]
    assert (job["oom"], job["user_kill"], job["error"], job["license"]) == (1, 1, 1, 0)


def test_a_declared_table_changes_the_class_facts_show() -> None:
    loaded = load_texts([("classes.yaml", "failure_classes:\n  license: {exit_codes: [3]}\n")])
    assert loaded.ok
    b = FactBuilder(_farm(), NOW, classes=loaded.classes)
    assert b.fact(Kind.FRAME, "1:1")["failures"]["license"] == 1


POLICIES = """
failure_classes:
  license: {exit_codes: [3]}
policies:
  - name: retry-out-of-memory
    kind: frame
    when: {state: failed, failure_class: oom}
    actions: [{retry: {spend: false}}]
    reason: "out of memory on {host}: retried without spending a retry"
  - name: never-retry-a-kill
    kind: frame
    when: {state: failed, failure_class: user_kill}
    actions: [notify]
    reason: "killed by a person: left for them"
"""


def test_a_retry_that_does_not_spend_passes_a_frame_with_no_retries_left_and_keeps_its_count() -> None:
    loaded = load_texts([("p.yaml", POLICIES)])
    assert loaded.ok, loaded.errors
    farm = _farm()
    plan, _ = plan_farm(farm, PolicySet(loaded.policies, loaded.classes), now=NOW, engine="reference")
    acted = {(t.policy, t.ident, str(t.action)) for t in plan.transitions}
    assert acted == {("retry-out-of-memory", "1:1", "retry"), ("never-retry-a-kill", "1:2", "notify")}
    from corral.effects import apply_action
    (retry,) = [t for t in plan.transitions if t.policy == "retry-out-of-memory"]
    apply_action(farm, Kind.FRAME, "1:1", retry.action, now=NOW, params=dict(retry.params),
                 automatic=True, actor="retry-out-of-memory")
    assert farm.jobs[1].frames[1].retries == 1 and farm.jobs[1].frames[1].state == F.PENDING


@pytest.mark.parametrize(("text", "where", "message"), [
    ("failure_classes:\n  oom: {signals: [SIGKIL]}\n", (2, 19), "unknown signal 'SIGKIL'; did you mean 'SIGKILL'?"),
    ("failure_classes:\n  oom: {exit_codes: [0]}\n", (2, 22), "an exit code is a whole number other than 0"),
    ("failure_classes:\n  error: {exit_codes: [2]}\n", (2, 3), "unknown failure class 'error'"),
    ("failure_classes:\n  oom: {exit_codes: [3]}\n  license: {exit_codes: [3]}\n", (3, 26),
     "exit code 3 is already in class 'oom'"),
    ("failure_classes:\n  oom: {codes: [3]}\n", (2, 9), "unknown key 'codes'"),
    ("failure_classes: [oom]\n", (1, 18), "`failure_classes` is a mapping"),
])
def test_a_bad_table_is_refused_where_it_is_wrong(text: str, where: tuple[int, int], message: str) -> None:
    loaded = load_texts([("classes.yaml", text)])
    assert [(e.pos.line, e.pos.column) for e in loaded.errors] == [where]
    assert message in loaded.errors[0].message


def test_a_class_declared_in_two_files_names_the_first() -> None:
    loaded = load_texts([("a.yaml", "failure_classes:\n  oom: {exit_codes: [3]}\n"),
                         ("b.yaml", "failure_classes:\n  oom: {exit_codes: [4]}\n")])
    (error,) = loaded.errors
    assert error.pos.file == "b.yaml" and "also declared at a.yaml:2:3" in error.message


# --- per-frame host avoidance -------------------------------------------------------------

AVOIDING = """
policies:
  - name: retry-elsewhere
    kind: frame
    when: {state: failed, hosts_failed: {lt: 3}}
    actions: [{retry: {avoid_failed_hosts: true, spend: false}}]
    reason: "retried away from {hosts_failed|host} that failed it"
  - name: give-up-after-three-hosts
    kind: frame
    when: {state: failed, hosts_failed: {gte: 3}}
    actions: [{notify: {to: room}}]       # left failed for good: no retry policy takes it any more
    reason: "{hosts_failed|different host} failed it: it is the frame, not the hosts"
"""


def test_a_retry_can_keep_the_hosts_that_failed_a_frame_away_from_it_and_a_frame_fails_for_good_after_three() -> None:
    loaded = load_texts([("p.yaml", AVOIDING)])
    assert loaded.ok, loaded.errors
    at = NOW - timedelta(minutes=1)
    job = Job(1, "shot", state=JobState.FAILING)
    job.frames = {
        1: Frame(1, 1, F.FAILED, host="b", exit_code=1, runs=[FrameRun("a", None, F.FAILED, 1, at, at),
                                                             FrameRun("b", None, F.FAILED, 1, at, at)]),
        2: Frame(1, 2, F.FAILED, host="c", exit_code=1, runs=[FrameRun(h, None, F.FAILED, 1, at, at) for h in "abc"]),
    }
    farm = Farm(jobs={1: job}, workers={h: Worker(h) for h in "abcd"})
    plan, _ = plan_farm(farm, PolicySet(loaded.policies), now=NOW, engine="reference")
    assert {(t.policy, t.ident) for t in plan.transitions} == {("retry-elsewhere", "1:1"),
                                                               ("give-up-after-three-hosts", "1:2")}
    from corral.effects import apply_action
    (retry,) = [t for t in plan.transitions if t.ident == "1:1"]
    apply_action(farm, Kind.FRAME, "1:1", retry.action, now=NOW, params=dict(retry.params), automatic=True, actor="p")
    frame = farm.jobs[1].frames[1]
    assert frame.state == F.PENDING and frame.avoid_hosts == "a b" and frame.host is None
    assert FactBuilder(farm, NOW).fact(Kind.FRAME, "1:1")["hosts_avoided"] == 2


def test_the_hosts_kept_away_from_a_frame_are_stored_and_read_back(store: Store) -> None:
    at = NOW - timedelta(minutes=1)
    job = Job(1, "shot", retry_limit=2)
    job.frames = {1: Frame(1, 1, F.FAILED, host="b", exit_code=1, state_since=at,
                           runs=[FrameRun("a", None, F.FAILED, 1, at, at), FrameRun("b", None, F.FAILED, 1, at, at)])}
    job.state = job.derived_state()
    store.init()
    store.load_farm(Farm(jobs={1: job}, workers={h: Worker(h) for h in "abc"}), replace=True)
    farm = store.read_farm()
    report = store.apply_transitions(farm, [Proposal(Kind.FRAME, "1:1", Action.RETRY, {"avoid_failed_hosts": True},
                                                     policy="retry-elsewhere", automatic=True)], now=NOW, actor="corral")
    assert not report.refused
    again = store.read_farm().jobs[1].frames[1]
    assert (again.state, again.avoid_hosts, again.retries) == (F.PENDING, "a b", 1)
    assert farm_to_snapshot(store.read_farm())["jobs"][0]["frames"][0]["avoid_hosts"] == ["a", "b"]


def test_explain_shows_the_hosts_kept_away_from_a_frame() -> None:
    from corral.explain import explain, render
    from corral.policy.loader import builtin_dir, load_paths

    at = NOW - timedelta(minutes=1)
    job = Job(1, "shot", state=JobState.RUNNING)
    job.frames = {1: Frame(1, 1, F.PENDING, avoid_hosts="a b"), 2: Frame(1, 2, F.RUNNING, host="c", started_at=at)}
    farm = Farm(jobs={1: job}, workers={h: Worker(h) for h in "abc"})
    ex = explain(farm, load_paths([builtin_dir()]).policies, Kind.FRAME, "1:1", now=NOW, engine="reference")
    assert "kept away from it: a, b" in "\n".join(render(ex)) and ex.to_json()["avoided_hosts"] == ["a", "b"]
