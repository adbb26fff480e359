"""The daemon in-process: cycles, audit and dry run, pause, hot reload, schedules, faults, metrics, logs."""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.isolated import EngineCrashed, IsolatedEvaluator
from corral.daemon.logs import mask_secrets, setup_logging
from corral.daemon.schedule import ScheduleTracker
from corral.daemon.service import Daemon, DaemonConfig
from corral.evaluate import ReferenceEvaluator
from corral.policy.model import Policy
from corral.states import Kind
from corral.store import Store
from daemon_helpers import BLOCK_PENDING, load, pending_farm, write_rules
from engine_faults import SegfaultOnce

AUDIT = BLOCK_PENDING.replace('reason: "held: {name} is pending"', 'reason: "held: {name} is pending"\n    mode: audit')


def make(url: str, rules: Path, **kw: Any) -> Daemon:
    extra = {k: kw.pop(k) for k in ("evaluator_factory", "clock") if k in kw}
    return Daemon(DaemonConfig(db_url=url, paths=[rules], engine="reference", isolate=False, **kw), **extra)


@pytest.fixture
def daemon_parts(store_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    load(store_url, pending_farm(4))
    yield store_url, write_rules(tmp_path / "rules")


def test_a_cycle_applies_and_a_second_over_the_unchanged_farm_applies_nothing(daemon_parts: tuple[str, Path]) -> None:
    url, rules = daemon_parts
    d = make(url, rules)
    try:
        first = d.tick()
        second = d.tick()
    finally:
        d.close()
    assert first.outcome == "ok" and first.result and first.result.report and len(first.result.report.applied) == 4
    assert second.outcome == "ok" and second.result and second.result.report is None
    with Store.open(url) as store:
        log = store.transitions()
    assert len(log) == 4 and {t.cycle_id for t in log} == {first.result.cycle_id}
    assert {t.policy for t in log} == {"block-pending"} and all(t.applied for t in log)


def test_audit_policies_and_the_dry_run_log_would_have_and_change_nothing(store_url: str, tmp_path: Path) -> None:
    load(store_url, pending_farm(2))
    for rules, dry in ((write_rules(tmp_path / "a", AUDIT), False), (write_rules(tmp_path / "b"), True)):
        d = make(store_url, rules, dry_run=dry)
        try:
            tick = d.tick()
        finally:
            d.close()
        assert tick.result and tick.result.report and len(tick.result.report.audited) == 2
        assert not tick.result.report.applied
    with Store.open(store_url) as store:
        assert all(j.state.value == "pending" for j in store.read_farm().jobs.values())
        assert [t.applied for t in store.transitions()] == [False] * 4


def test_while_paused_cycles_run_and_apply_nothing_then_resume(daemon_parts: tuple[str, Path]) -> None:
    url, rules = daemon_parts
    with Store.open(url) as store:
        store.set_setting("paused", "1")
    d = make(url, rules)
    try:
        paused = d.tick()
        assert paused.outcome == "paused" and d.metrics.paused._value.get() == 1
        with Store.open(url) as store:
            assert all(not t.applied for t in store.transitions())
            store.set_setting("paused", "0")
        resumed = d.tick()
    finally:
        d.close()
    assert resumed.outcome == "ok" and resumed.result and resumed.result.report
    assert len(resumed.result.report.applied) == 4


def test_hot_reload_takes_a_good_edit_and_keeps_the_last_good_version_of_a_broken_one(
    daemon_parts: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    url, rules = daemon_parts
    d = make(url, rules.parent)  # the folder: files may come and go
    try:
        d.tick()
        assert [p.name for p in d.policy_set.policies] == ["block-pending"]  # type: ignore[union-attr]
        rules.write_text(BLOCK_PENDING.replace("block-pending", "block-pending-v2"))
        d.tick()
        assert [p.name for p in d.policy_set.policies] == ["block-pending-v2"]  # type: ignore[union-attr]
        before = d.policy_set
        rules.write_text(BLOCK_PENDING.replace("block-pending", "v3").replace("state: pending", "state: pendng"))
        with caplog.at_level(logging.ERROR):
            tick = d.tick()
        assert tick.outcome == "ok" and d.policy_set is before  # the last good version keeps running
        assert f"{rules}:4:" in caplog.text and "did you mean 'pending'" in caplog.text
        assert "last good version stays in force" in caplog.text
        assert d.metrics.policy_errors._value.get() == 1
        (rules.parent / "more.yaml").write_text(AUDIT.replace("block-pending", "audit-pending"))
        d.tick()
        assert {p.name for p in d.policy_set.policies} == {"block-pending-v2", "audit-pending"}  # type: ignore[union-attr]
        rules.unlink()
        d.tick()
        assert [p.name for p in d.policy_set.policies] == ["audit-pending"]  # type: ignore[union-attr]
    finally:
        d.close()


class _Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def test_a_cron_policy_acts_in_the_first_cycle_after_its_time_once_even_across_restarts(
    store_url: str, tmp_path: Path
) -> None:
    load(store_url, pending_farm(1))
    rules = write_rules(tmp_path / "rules", BLOCK_PENDING.replace("    kind: job", '    kind: job\n    schedule: "0 20 * * *"'))
    clock = _Clock(datetime(2026, 11, 28, 19, 59, 50, tzinfo=UTC))
    d = make(store_url, rules, clock=clock)
    try:
        assert d.tick().result.report is None  # type: ignore[union-attr]  # 19:59:50, not yet
        clock.at = datetime(2026, 11, 28, 20, 0, 20, tzinfo=UTC)
        fired = d.tick()
        assert fired.result and fired.result.report and len(fired.result.report.applied) == 1
    finally:
        d.close()
    load(store_url, pending_farm(1, start=50))
    clock.at = datetime(2026, 11, 28, 20, 0, 50, tzinfo=UTC)
    d = make(store_url, rules, clock=clock)  # a restart (or a standby taking over) does not fire 20:00 again
    try:
        assert d.tick().result.report is None  # type: ignore[union-attr]
        clock.at = datetime(2026, 11, 29, 20, 0, 5, tzinfo=UTC)
        again = d.tick()
        assert again.result and again.result.report and len(again.result.report.applied) == 1
    finally:
        d.close()


def test_schedule_tracker_every_fires_at_once_then_each_period_and_coalesces_misses() -> None:
    from dataclasses import replace

    base = _policies(BLOCK_PENDING)[0]
    p = replace(base, schedule="every 5m")
    t0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
    tracker = ScheduleTracker(grace=timedelta(hours=1))
    tracker.update([p], t0, {})
    assert tracker.due(t0) == {p.name}
    tracker.fired([p.name], t0)
    assert tracker.due(t0 + timedelta(minutes=4)) == set()
    assert tracker.due(t0 + timedelta(minutes=17)) == {p.name}
    tracker.fired([p.name], t0 + timedelta(minutes=17))
    assert tracker.next_fire(p.name) == t0 + timedelta(minutes=20)
    assert tracker.due(t0 + timedelta(hours=3, minutes=1)) == {p.name}  # the misses coalesce into one fire
    tracker.fired([p.name], t0 + timedelta(hours=3, minutes=1))
    assert tracker.next_fire(p.name) == t0 + timedelta(hours=3, minutes=5)


def _policies(text: str) -> list[Policy]:
    from corral.policy.loader import load_texts

    return load_texts([("t.yaml", text)]).policies


def test_the_isolated_engine_matches_and_a_segfault_costs_one_call(tmp_path: Path) -> None:
    policies = _policies(BLOCK_PENDING)
    facts = [{"id": 1, "state": "pending", "name": "a"}, {"id": 2, "state": "running", "name": "b"}]
    fault = tmp_path / "fault"
    ev = SegfaultOnce(policies, fault)
    try:
        assert ev.evaluate(Kind.JOB, facts) == ReferenceEvaluator(policies).evaluate(Kind.JOB, facts)
        fault.touch()
        with pytest.raises(EngineCrashed, match="SIGSEGV"):
            ev.evaluate(Kind.JOB, facts)
        assert ev.evaluate(Kind.JOB, facts) == {"block-pending": [1]} and ev.starts == 2 and ev.crashes == 1
    finally:
        ev.close()


def test_an_engine_that_hangs_is_stopped_replaced_and_counted_as_lost(tmp_path: Path) -> None:
    policies = _policies(BLOCK_PENDING)
    facts = [{"id": 1, "state": "pending", "name": "a"}]
    fault, lost = tmp_path / "fault", []
    ev = SegfaultOnce(policies, fault, hang=True, timeout=1.0, on_death=lost.append)
    try:
        assert ev.evaluate(Kind.JOB, facts) == {"block-pending": [1]}
        fault.touch()
        with pytest.raises(EngineCrashed, match="did not answer within 1s"):
            ev.evaluate(Kind.JOB, facts)
        assert ev.evaluate(Kind.JOB, facts) == {"block-pending": [1]} and ev.starts == 2
        assert ev.crashes == 1 and len(lost) == 1 and "did not answer" in lost[0]
    finally:
        ev.close()


def test_a_cycle_whose_engine_crashes_applies_nothing_and_the_next_cycle_recovers(
    daemon_parts: tuple[str, Path], tmp_path: Path
) -> None:
    url, rules = daemon_parts
    fault = tmp_path / "fault"
    fault.touch()
    d = make(url, rules, evaluator_factory=lambda active: SegfaultOnce(active, fault))
    try:
        crashed = d.tick()
        assert crashed.outcome == "engine_crash"
        with Store.open(url) as store:
            assert store.transitions() == []
        ok = d.tick()
        assert ok.outcome == "ok" and ok.result and ok.result.report and len(ok.result.report.applied) == 4
        assert d.metrics.cycles.labels("engine_crash")._value.get() == 1
    finally:
        d.close()


def test_an_unreachable_database_backs_off_exponentially_and_recovers(
    tmp_path: Path, sqlite_template: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "later" / "farm.db"
    rules = write_rules(tmp_path / "rules")
    d = make(f"sqlite:///{db}", rules, interval=0.05, backoff_cap=0.4)
    try:
        with caplog.at_level(logging.ERROR):
            outcomes = []
            for _ in range(60):
                outcomes.append(d.tick().outcome)
                time.sleep(0.02)
        assert outcomes[0] == "db_unreachable" and "backoff" in outcomes
        assert d.backoff.failures >= 3 and "retrying in" in caplog.text
        delays = [float(r.args[3]) for r in caplog.records if "retrying in" in r.getMessage()]  # type: ignore[index,arg-type]
        assert delays == sorted(delays) and max(delays) == pytest.approx(0.4)
        db.parent.mkdir()
        shutil.copy(sqlite_template, db)
        load(f"sqlite:///{db}", pending_farm(2))
        time.sleep(0.45)
        recovered = d.tick()
        assert recovered.outcome == "ok" and d.backoff.failures == 0
    finally:
        d.close()


def test_a_database_password_never_reaches_the_log(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules")
    stream = io.StringIO()
    handler = setup_logging("json", "INFO", stream)
    d = make("postgresql://corral:s3cret-pw@127.0.0.1:9/nowhere", rules, interval=0.05)
    try:
        assert d.tick().outcome == "db_unreachable"
    finally:
        d.close()
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert "unreachable" in text and "s3cret-pw" not in text
    assert all(json.loads(line)["level"] for line in text.splitlines())
    assert mask_secrets("postgresql://ann:pw@db/x password=pw2 host=h") == "postgresql://ann:***@db/x password=*** host=h"


class _Slow(ReferenceEvaluator):
    """An evaluator that takes its time and records overlapping calls."""

    running = 0
    overlap = False
    lock = threading.Lock()

    def settle(self, changes: Any, now: float | None = None) -> dict[Kind, dict[str, list[Any]]]:
        with _Slow.lock:
            _Slow.running += 1
            _Slow.overlap |= _Slow.running > 1
        time.sleep(0.35)
        with _Slow.lock:
            _Slow.running -= 1
        return super().settle(changes, now)


def test_an_overrunning_cycle_makes_the_next_tick_skip_not_stack(tmp_path: Path, sqlite_template: Path) -> None:
    shutil.copy(sqlite_template, tmp_path / "farm.db")
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    load(url, pending_farm(2))
    factory: Any = _Slow
    d = make(url, write_rules(tmp_path / "rules"), interval=0.1, evaluator_factory=factory)
    port = d.metrics.serve(0)
    thread = threading.Thread(target=d.run_forever, kwargs={"install_signals": False})
    thread.start()
    try:
        time.sleep(1.6)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        d.stop()
        thread.join(10)
    assert not _Slow.overlap
    ok = d.metrics.cycles.labels("ok")._value.get()
    assert 2 <= ok <= 5 and d.metrics.cycles.labels("overrun")._value.get() >= 3
    for name in ("corral_cycles_total{outcome=\"ok\"}", "corral_cycle_duration_seconds_bucket", "corral_facts_read",
                 "corral_transitions_total{policy=\"block-pending\",result=\"applied\"} 2.0",
                 "corral_matches_total{policy=\"block-pending\"}", "corral_paused 0.0", "corral_leader 1.0",
                 "corral_last_success_timestamp_seconds", "corral_errors_total", "corral_refused_transitions_total"):
        assert name in body or name.split("{")[0] in body, name


def test_run_once_refuses_while_another_daemon_leads(tmp_path: Path, sqlite_template: Path) -> None:
    from corral.daemon.service import AnotherDaemon

    shutil.copy(sqlite_template, tmp_path / "farm.db")
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    rules = write_rules(tmp_path / "rules")
    first, second = make(url, rules), make(url, rules)
    try:
        assert first.tick().outcome == "ok"
        assert second.tick().outcome == "standby"
        with pytest.raises(AnotherDaemon):
            second.run_once()
    finally:
        first.close()
        second.close()



def test_an_engine_killed_between_cycles_is_reported_and_the_next_cycle_runs_on_a_new_one(
        tmp_path: Path, sqlite_template: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A death between two cycles (the kernel's OOM killer, a person's kill -9) is found by
    the next cycle: a warning with its cause, counted with the other engine deaths, and a
    new engine fed every candidate, so that cycle loses nothing."""
    import os
    import signal

    shutil.copy(sqlite_template, tmp_path / "farm.db")
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    load(url, pending_farm(2))
    d = Daemon(DaemonConfig(db_url=url, paths=[write_rules(tmp_path / "rules")], isolate=True))
    try:
        d.reload()
        assert d.tick().outcome == "ok"
        evaluator = d.session.evaluator if d.session else None
        assert isinstance(evaluator, IsolatedEvaluator) and evaluator.pid is not None
        os.kill(evaluator.pid, signal.SIGKILL)
        time.sleep(0.5)
        with Store.open(url) as store:  # news for the next cycle to act on
            store.load_farm(pending_farm(3, start=10), replace=False)
        with caplog.at_level(logging.WARNING, logger="corral.daemon.isolated"):
            tick = d.tick()
        assert tick.outcome == "ok" and tick.result is not None and tick.result.report is not None
        assert len(tick.result.report.applied) == 3
        assert "died of SIGKILL while idle between cycles" in caplog.text
        assert d.metrics.errors.labels("engine_crash")._value.get() == 1
        assert d.metrics.cycles.labels("engine_crash")._value.get() == 0  # no cycle was lost
    finally:
        d.close()


def test_a_transition_is_logged_after_the_rows_that_caused_it(tmp_path: Path, sqlite_template: Path) -> None:
    """The cycle's time is read once the farm has been read: a job the supervisor
    submitted while the cycle was starting is acted on at a time after its submission,
    so the log's order is the order things happened."""
    shutil.copy(sqlite_template, tmp_path / "farm.db")
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    start = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    ticks = iter(start + timedelta(seconds=s) for s in range(0, 1000, 5))  # each reading of the clock, 5 s on
    farm = pending_farm(1)
    farm.jobs[1].submitted_at = start + timedelta(seconds=2)  # written while the cycle was starting
    load(url, farm)
    d = make(url, write_rules(tmp_path / "rules"), clock=lambda: next(ticks))
    try:
        d.reload()
        assert d.leader.acquire()
        result = d.cycle()
        assert result.report is not None and len(result.report.applied) == 1
        with Store.open(url) as store:
            (row,) = store.transitions()
        assert row.at > farm.jobs[1].submitted_at and row.at == result.at
    finally:
        d.close()


@pytest.mark.postgres
def test_a_transaction_left_open_elsewhere_on_the_server_is_named_and_costs_no_evaluation(
        store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL reads start from the oldest transaction open on the whole server: one
    left open in another database has every cycle take in again what was written since.
    The cycles stay right and evaluate nothing for it, and the daemon says who to ask."""
    if not store_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite's reads start from a counter of its own")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from corral.farm import Farm, Job, JobState

    other = create_engine(make_url(store_url).set(database="postgres", query={"application_name": "nightly-report"}))
    holder = other.connect()
    try:
        holder.begin()
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        holder.execute(text("SELECT txid_current()"))  # it has written: it holds the mark from now
        load(store_url, Farm(jobs={i: Job(id=i, name=f"shot{i:05d}", state=JobState.RUNNING) for i in range(1, 1201)}))
        d = make(store_url, write_rules(tmp_path / "rules"))
        try:
            with caplog.at_level(logging.WARNING, logger="corral.daemon"):
                ticks = [d.tick() for _ in range(4)]
            results = [t.result for t in ticks]
            assert all(t.outcome == "ok" for t in ticks)
            assert [r.reread for r in results if r] == [0, 1200, 1200, 1200]  # whole read, then the same rows again
            assert all(r and r.facts == 0 for r in results[1:])  # ... which change no fact
            assert d.metrics.reread._value.get() == 1200
        finally:
            d.close()
        warnings = [r.getMessage() for r in caplog.records if "took in again" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once, on the third such cycle
        assert f"pid {pid}" in warnings[0] and "database postgres" in warnings[0] and "nightly-report" in warnings[0]
        assert "idle in transaction" in warnings[0]
    finally:
        holder.close()
        other.dispose()


def test_the_rows_corral_itself_wrote_are_not_taken_for_rows_read_again(
        tmp_path: Path, sqlite_template: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The rows a cycle's apply wrote come back from the next read looking unchanged:
    they are corral's own, not a sign of a transaction held open (no warning, no count)."""
    db = tmp_path / "farm.db"
    shutil.copy(sqlite_template, db)
    url = f"sqlite:///{db}"
    load(url, pending_farm(1200))
    d = make(url, write_rules(tmp_path / "rules"))
    try:
        with caplog.at_level(logging.WARNING, logger="corral.daemon"):
            ticks = [d.tick() for _ in range(4)]
    finally:
        d.close()
    first = ticks[0].result
    assert first and first.report and len(first.report.applied) == 1200
    assert [t.result.reread for t in ticks if t.result] == [0, 0, 0, 0]
    assert "took in again" not in caplog.text


def test_metrics_exist_at_zero_from_the_start_with_the_build_and_bind_where_asked() -> None:
    """An alert on rate(corral_errors_total{type="db_unreachable"}) works before the first
    outage; the build is named; the endpoint binds loopback unless told otherwise."""
    from corral.daemon.metrics import Metrics

    metrics = Metrics()
    port = metrics.serve(0, "127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    for line in ('corral_errors_total{type="db_unreachable"} 0.0', 'corral_errors_total{type="farm_unreachable"} 0.0',
                 'corral_cycles_total{outcome="farm_unreachable"} 0.0', 'corral_reloads_total{result="rejected"} 0.0',
                 'corral_build_info{python="'):
        assert line in body, line
    (info,) = [line for line in body.splitlines() if line.startswith("corral_build_info{")]
    assert 'version="' in info and info.endswith(" 1.0")
