"""The three loaders under fuzzed input (bench/fuzz_loaders.py's mutations, driven by
hypothesis): every input is loaded or refused with a positioned error, within seconds and
bounded memory; never a traceback, never a hang.  A policy file that loads is evaluated by
both engines too: what `corral check` accepts never fails a cycle."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import fuzz_loaders

SEEDS = fuzz_loaders._seeds()


@pytest.mark.parametrize("loader", ["policy", "snapshot", "event"])
@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rnd=st.randoms(use_true_random=False), pick=st.integers(0, 1000))
def test_a_mutated_input_is_loaded_or_refused_with_its_position_at_once(loader: str, rnd: object, pick: int) -> None:
    seeds, load = SEEDS[loader]
    text = fuzz_loaders.mutate(seeds[pick % len(seeds)], rnd)  # type: ignore[arg-type]
    started = time.perf_counter()
    outcome = load(text)
    assert outcome in ("accepted", "rejected"), (outcome, text[:500])
    assert time.perf_counter() - started < 5, text[:500]


@pytest.mark.parametrize(("loader", "text"), [
    ("policy", fuzz_loaders.BOMB + "policies: []\n"),
    ("policy", "policies:\n  - name: p\n    kind: job\n    when: " + "{not: " * 100 + "{state: failed}" + "}" * 100 + "\n"),
    ("policy", "policies:\n  - name: p\x00\n"),
    ("policy", "policies:\n  - name: p\n    kind: job\n    when: {name: 2026-02-30}\n    actions: [block]\n    reason: r\n"),
    ("snapshot", "jobs:\n  - {id: 1, name: a, frames: [{range: '1-99999999'}]}\n"),
    ("snapshot", "jobs:\n  - {id: 99999999999999999999999, name: a}\n"),
    ("snapshot", "jobs:\n  - {id: 1, name: \"a\\0b\"}\n"),
    ("snapshot", "jobs: " + "[" * 1000 + "]" * 1000 + "\n"),
    ("event", '{"id":"x","type":"frame_failed","job":' + "[" * 1000 + "]" * 1000 + "}"),
    ("event", '{"id":"x","type":"frame_failed","job":true,"frame":1,"exit_code":1}'),
    ("event", '{"id":"x","type":"frame_failed","job":1,"frame":1,"exit_code":"0"}'),
    ("event", '{"id":"x\\u0000","type":"worker_up","host":"a"}'),
])
def test_what_the_audit_found_is_refused_with_a_clear_error(loader: str, text: str) -> None:
    """Each input the hardening audit reported (a traceback, a hang, or 2.4 GB in 6 s)."""
    started = time.perf_counter()
    assert SEEDS[loader][1](text) == "rejected"
    assert time.perf_counter() - started < 5
