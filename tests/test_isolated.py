"""The engine in a child process answers exactly what the engine in the daemon's process
answers (corral.daemon.isolated), though only the changed facts cross the pipe one way
and only the changed matches the other, and the schedule of due entities is kept on the
daemon's side: over random sequences of farms changing cycle after cycle, and across a
child that dies and is replaced."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.daemon.isolated import EngineCrashed, IsolatedEvaluator
from corral.engine import RuleEngine
from corral.evaluate import make_evaluator
from corral.facts import FactBuilder
from corral.policy.loader import load_texts
from corral.policy.model import Policy
from corral.states import Kind
from engine_faults import SegfaultOnce
from strategies import NOW, farms, mutate, policy_sets

#: Durations that fall due between the cycles below (20 s to an hour apart).
TIMED = """policies:
  - name: long-running
    kind: frame
    when: {state: running, time_in_state: {gte: 7200}}
    actions: [notify]
    reason: running for {time_in_state}
  - name: pending-long
    kind: job
    when: {state: pending, time_in_state: {gte: 10800}}
    actions: [notify]
    reason: pending for {time_in_state}
"""


def _timed() -> list[Policy]:
    loaded = load_texts([("timed.yaml", TIMED)])
    assert not loaded.errors and len(loaded.policies) == 2
    return loaded.policies


def _facts(farm: Any, at: Any) -> dict[Kind, dict[Any, dict[str, Any]]]:
    builder = FactBuilder(farm, at)
    return {kind: {f["id"]: f for f in builder.facts(kind)} for kind in Kind}


def _as_sets(answer: dict[Kind, dict[str, list[Any]]]) -> dict[Kind, dict[str, set[Any]]]:
    return {kind: {name: set(ids) for name, ids in by_name.items()} for kind, by_name in answer.items()}


def _kill(ev: IsolatedEvaluator) -> None:
    """SIGKILL the engine child and wait until it is dead (as an out-of-memory kill would)."""
    proc = ev._proc
    assert proc is not None and proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


class _Both:
    """The same cycles sent to both engines, as `corral.cycle.plan_live` sends them: the
    facts that changed, those that fell due, and None for those gone."""

    def __init__(self, policies: list[Policy]) -> None:
        self.here = RuleEngine(policies)
        self.there = IsolatedEvaluator(policies)
        self.sent: dict[Kind, dict[Any, dict[str, Any]]] = {kind: {} for kind in Kind}

    def cycle(self, facts: dict[Kind, dict[Any, dict[str, Any]]], now: float, *, everything: bool = False,
              twice: frozenset[Kind] = frozenset()) -> None:
        """`twice`: those kinds are sent in three parts of one cycle (as a generator, as
        `plan_live` sends parts): every candidate dropped, then sent, then every other
        one dropped (and so left out of `facts`): moves undone within a cycle must cancel
        out, whichever came first."""
        self.there.ready()
        kinds = list(Kind)
        woken_here, woken_there = self.here.due_all(kinds, now), self.there.due_all(kinds, now)
        assert woken_there == woken_here
        parts: list[tuple[Kind, dict[Any, dict[str, Any] | None]]] = []
        for kind in kinds:
            before, after = self.sent[kind], facts[kind]
            moved = {i: f for i, f in after.items() if everything or before.get(i) != f or i in woken_here[kind]}
            moved.update(dict.fromkeys(i for i in before if i not in after))
            if kind in twice:  # every candidate dropped, then sent, then every other one dropped
                gone = dict.fromkeys([*before, *after])
                kept = {i: f for n, (i, f) in enumerate(sorted(after.items(), key=lambda item: str(item[0]))) if n % 2}
                parts += [(kind, gone), (kind, {**gone, **after})]
                moved, facts[kind] = dict.fromkeys(i for i in after if i not in kept), kept
            parts.append((kind, moved))
        if twice:
            want = _as_sets(self.here.settle(iter(parts), now))
            got = _as_sets(self.there.settle(iter(parts), now))
        else:
            want = _as_sets(self.here.settle(dict(parts), now))
            got = _as_sets(self.there.settle(dict(parts), now))
        assert got == want
        self.sent = {kind: dict(facts[kind]) for kind in kinds}

    def close(self) -> None:
        self.there.close()


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(farm=farms(), policies=policy_sets(), data=st.data())
def test_the_isolated_engine_answers_what_the_engine_in_process_answers_cycle_after_cycle(
        farm: Any, policies: list[Policy], data: Any) -> None:
    policies = policies + _timed()
    both = _Both(policies)
    try:
        both.cycle(_facts(farm, NOW), NOW.timestamp(), everything=True)
        at = NOW
        for _ in range(data.draw(st.integers(2, 5))):
            if data.draw(st.booleans()):
                farm = mutate(data.draw, farm)
            at += timedelta(seconds=data.draw(st.sampled_from([20, 600, 1800, 4000])))
            facts = _facts(farm, at)
            if data.draw(st.integers(0, 3)) == 0:  # a whole picture of one kind between cycles (a dry run's)
                kind = data.draw(st.sampled_from(list(Kind)))
                whole = list(facts[kind].values())
                stamp = at.timestamp()
                assert (_as_sets({kind: both.there.evaluate(kind, whole, stamp)})
                        == _as_sets({kind: both.here.evaluate(kind, whole, stamp)}))
                both.sent[kind] = dict(facts[kind])
            if data.draw(st.integers(0, 3)) == 0:  # the child dies between cycles
                _kill(both.there)
                both.there.ready()  # a new child: sent every candidate, as the session does
                assert both.there.starts == both.there.crashes + 1
                both.here = RuleEngine(policies)  # so is a fresh engine here, to compare
                both.sent = {kind: {} for kind in Kind}
                both.cycle(facts, at.timestamp(), everything=True)
            else:
                twice = frozenset(data.draw(st.sets(st.sampled_from(list(Kind)), max_size=2)))
                both.cycle(facts, at.timestamp(), twice=twice)
    finally:
        both.close()


def test_a_child_gone_when_a_cycle_sends_its_changes_costs_that_cycle_and_the_next_sends_everything() -> None:
    policies = _timed()
    frames = {f"1:{n}": {"id": f"1:{n}", "state": "running", "time_in_state": 7200.0 * n} for n in range(1, 4)}
    ev = IsolatedEvaluator(policies)
    try:
        ev.ready()
        first = ev.settle({Kind.FRAME: dict(frames)}, NOW.timestamp())
        assert set(first[Kind.FRAME]["long-running"]) == set(frames)
        _kill(ev)
        # Only a change is sent, which a new child (knowing nothing) cannot take.
        with pytest.raises(EngineCrashed, match="SIGKILL"):
            ev.settle({Kind.FRAME: {"1:1": None}}, NOW.timestamp())
        assert ev.crashes == 1 and ev.starts == 2
        frames.pop("1:1")
        again = ev.settle({Kind.FRAME: dict(frames)}, NOW.timestamp())
        assert set(again[Kind.FRAME]["long-running"]) == {"1:2", "1:3"}
    finally:
        ev.close()


def test_a_duration_falls_due_on_the_daemon_s_side_without_asking_the_child() -> None:
    policies = _timed()
    ev = IsolatedEvaluator(policies)
    try:
        ev.ready()
        ev.settle({Kind.FRAME: {"1:1": {"id": "1:1", "state": "running", "time_in_state": 7140.0}}}, 1000.0)
        asked: list[str] = []  # what was waited for
        sent: list[str] = []  # what went to the child
        real, post = ev._call, ev._post
        ev._call = lambda method, *args, **kw: asked.append(method) or real(method, *args, **kw)  # type: ignore[method-assign]
        ev._post = lambda method, *args, **kw: sent.append(method) or post(method, *args, **kw)  # type: ignore[method-assign]
        assert ev.due_all([Kind.FRAME], 1059.0) == {Kind.FRAME: set()}
        assert ev.due_all([Kind.FRAME], 1060.0) == {Kind.FRAME: {"1:1"}}
        assert asked == sent == []
        woken = ev.settle({Kind.FRAME: {"1:1": {"id": "1:1", "state": "running", "time_in_state": 7200.0}}}, 1060.0)
        assert woken[Kind.FRAME]["long-running"] == ["1:1"]
        assert sent == ["part", "settled"] and asked == ["settled"]  # one answer a cycle
    finally:
        ev.close()


@pytest.mark.parametrize("engine", ["durable", "reference"])
def test_a_whole_picture_between_cycles_answers_as_the_engine_in_process_does(engine: str) -> None:
    """`evaluate` (a dry run's whole picture of a kind) between cycles: the durable engine
    takes it as its memory of the kind (outside a cycle, so the next cycle's answer must
    be the kind's matches as they are then, not the ones held before with the cycle's
    changes on top); the reference evaluator keeps its memory.  The child answers as
    the same engine in the daemon's process does."""
    policies = _timed()
    frames = {f"1:{n}": {"id": f"1:{n}", "state": "running", "time_in_state": 7200.0 * n} for n in range(1, 4)}
    ev, here = IsolatedEvaluator(policies, engine=engine), make_evaluator(policies, engine)
    try:
        ev.ready()
        for evaluator in (ev, here):
            evaluator.settle({Kind.FRAME: dict(frames)}, NOW.timestamp())
        done = {"id": "1:1", "state": "complete", "time_in_state": 0.0}
        assert ev.evaluate(Kind.FRAME, [done])["long-running"] == here.evaluate(Kind.FRAME, [done])["long-running"] == []
        after = _as_sets(ev.settle({Kind.FRAME: {}}, NOW.timestamp()))
        assert after == _as_sets(here.settle({Kind.FRAME: {}}, NOW.timestamp()))
        assert after[Kind.FRAME]["long-running"] == (set() if engine == "durable" else set(frames))
    finally:
        ev.close()


def test_a_kind_the_child_cannot_take_in_fails_the_cycle_with_its_error_and_the_next_starts_afresh() -> None:
    """A cycle's kinds go to the child one by one, unanswered ("part"), while the daemon
    builds the next: a part the engine fails on is told at the cycle's answer, with the
    engine's own error, and nothing of that cycle is kept (the next child is sent
    everything)."""
    ev = IsolatedEvaluator(_timed())
    running = {"id": "1:1", "state": "running", "time_in_state": 7200.0}
    try:
        ev.ready()
        parts = iter([(Kind.FRAME, {"1:1": {"state": "running"}}), (Kind.JOB, {})])  # a fact without its id
        with pytest.raises(EngineCrashed, match="KeyError"):
            ev.settle(parts, NOW.timestamp())
        ev.ready()
        assert ev.starts == 2
        assert ev.settle(iter([(Kind.FRAME, {"1:1": running})]), NOW.timestamp()) == {Kind.FRAME: {
            "long-running": ["1:1"]}}
    finally:
        ev.close()


def test_a_cycle_that_fails_between_two_kinds_costs_a_new_child_that_is_sent_everything() -> None:
    """The caller's building of a later kind fails after an earlier kind went to the child
    (and into its memory): nobody will ask for that cycle's answer, so the child is
    stopped, and the next cycle's new one, sent everything, answers what the engine in
    process answers."""
    policies = _timed()
    frames = {f"1:{n}": {"id": f"1:{n}", "state": "running", "time_in_state": 7200.0 * n} for n in range(1, 4)}
    ev, here = IsolatedEvaluator(policies), RuleEngine(policies)

    def failing() -> Any:
        yield Kind.FRAME, dict(frames)
        raise RuntimeError("a fact could not be built")

    try:
        ev.ready()
        for evaluator in (ev, here):
            with pytest.raises(RuntimeError, match="could not be built"):
                evaluator.settle(failing(), NOW.timestamp())
        ev.ready()
        assert ev.starts == 2 and ev.crashes == 0  # stopped on purpose: not counted as a crash
        after = _as_sets(ev.settle({Kind.FRAME: dict(frames)}, NOW.timestamp()))
        assert after == _as_sets(here.settle({Kind.FRAME: dict(frames)}, NOW.timestamp()))
        assert after[Kind.FRAME]["long-running"] == set(frames)
    finally:
        ev.close()


def test_a_child_that_hangs_while_a_cycle_is_sent_costs_that_cycle_not_the_daemon(tmp_path: Path) -> None:
    """Kinds go to the child while it may be busy with the last one: one that hangs stops
    reading, and a kind bigger than the pipe holds would wait for ever to be sent.  The
    watchdog stops the child after `timeout`; the cycle is lost with that said."""
    fault = tmp_path / "hang"
    ev = SegfaultOnce(_timed(), fault, hang=True, timeout=2)
    big = {f"{j}:{n}": {"id": f"{j}:{n}", "state": "running", "time_in_state": 10.0, "pad": "x" * 100}
           for j in range(1, 21) for n in range(1, 1001)}  # about 3 MB: more than the pipe holds
    try:
        ev.ready()
        fault.touch()  # the child hangs on the next message it receives: the first part
        t0 = time.monotonic()
        with pytest.raises(EngineCrashed, match="did not take in a cycle's facts within 2s"):
            ev.settle(iter([(Kind.JOB, {}), (Kind.FRAME, big)]), NOW.timestamp())
        assert time.monotonic() - t0 < 10
        ev.ready()
        assert ev.starts == 2 and ev.settle({Kind.FRAME: {}}, NOW.timestamp()) == {Kind.FRAME: {"long-running": []}}
    finally:
        ev.close()


def test_a_child_that_dies_between_two_kinds_costs_that_cycle_and_says_of_what(tmp_path: Path) -> None:
    """The child segfaults on the cycle's first kind; the daemon, sending the next, finds
    it dead: the cycle is lost with the signal named, and the next child answers afresh."""
    fault = tmp_path / "segv"
    ev = SegfaultOnce(_timed(), fault, timeout=10)
    running = {"1:1": {"id": "1:1", "state": "running", "time_in_state": 7200.0}}

    def parts() -> Any:
        yield Kind.JOB, {}
        assert ev._proc is not None
        ev._proc.join(10)  # dead before the next kind goes (else the send may find it first)
        yield Kind.FRAME, running

    try:
        ev.ready()
        fault.touch()
        with pytest.raises(EngineCrashed, match="died of SIGSEGV while settle"):
            ev.settle(parts(), NOW.timestamp())
        assert ev.crashes == 1
        ev.ready()
        assert ev.settle({Kind.FRAME: running}, NOW.timestamp()) == {Kind.FRAME: {"long-running": ["1:1"]}}
    finally:
        ev.close()
