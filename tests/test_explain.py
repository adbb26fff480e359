"""`corral explain`: condition-by-condition traces, the planner's verdict, holds-in, history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app
from corral.cycle import run_cycle
from corral.explain import _flips_in, explain
from corral.policy.loader import builtin_dir, load_paths, load_texts
from corral.policyset import PolicySet
from corral.session import Session
from corral.snapshot import load_snapshot_file
from corral.states import Kind
from corral.store.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "farm-snapshot.yaml"
NIGHT = "2026-11-28T02:00:00Z"
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["explain", *args, "--snapshot", str(EXAMPLE)])
    return result.exit_code, result.output


def test_a_policy_that_would_act_shows_every_condition_passing_and_the_transition() -> None:
    code, out = run("instance", "101.3", "--now", NIGHT)
    assert code == 0, out
    assert out.startswith("instance 101.3 (running) as of 2026-11-28T02:00:00+00:00")
    assert "lock-host-out-of-job (priority 70)" in out
    assert "pass  host_failed_frames_on_job > 5" in out and "actual 7" in out
    assert "lock-host-out-of-job.yaml:18:35" in out
    assert "→ WOULD ACT: would block (running → blocked): locked render07 out of job 101" in out
    # the plainer policy matched too but loses the conflict: the real planner says so
    assert "→ SKIPPED: matches, but would not act (duplicate): policy 'lock-host-out-of-job'" in out


def test_a_failing_duration_says_how_long_until_it_holds() -> None:
    code, out = run("job", "103", "--now", "2026-11-28T01:42:00Z")
    assert code == 0
    assert "FAIL  time_in_state ≥ 5m" in out and "actual 2m  (holds in 3m)" in out
    assert "it would match in 3m if nothing else changes" in out


def test_cooldown_from_the_store_is_a_skipped_verdict_and_history_is_listed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    pack = load_paths([builtin_dir()]).policies
    with Store.open(url) as store:
        store.init()
        store.load_farm(load_snapshot_file(EXAMPLE), replace=True)
        run_cycle(store, Session(PolicySet(pack), engine="reference"), commit=True, now=datetime(2026, 11, 28, 2, tzinfo=UTC))
    result = runner.invoke(app, ["explain", "instance", "101.3", "--db", url, "--now", "2026-11-28T02:10:00Z"])
    out = result.output
    assert result.exit_code == 0, out
    assert "instance 101.3 (blocked)" in out
    assert "history (latest 1, newest first):" in out
    assert "block running → blocked by policy lock-host-out-of-job [cycle 20261128T020000-" in out
    assert "locked render07 out of job 101" in out


def test_a_cooldown_is_a_skipped_verdict() -> None:
    farm = load_snapshot_file(EXAMPLE)
    pack = load_paths([builtin_dir()]).policies
    now = datetime(2026, 11, 28, 2, tzinfo=UTC)
    last = {("retry-failed-frames", "frame", "110:6"): datetime(2026, 11, 28, 1, 59, tzinfo=UTC)}
    ex = explain(farm, pack, Kind.FRAME, "110:6", now=now, last_actions=last)
    (v,) = ex.verdicts
    assert (v.verdict, v.category) == ("skipped", "cooldown")
    assert v.detail == "matches, but would not act (cooldown): acted on it 1m ago; cooldown is 2m"


def test_unknown_entities_are_named_with_a_hint() -> None:
    code, out = run("frame", "101")
    assert code == 1 and "no frame '101' in the farm (a frame is named JOB:FRAME, e.g. 12:1001)" in out
    code, out = run("frame", "101:99")
    assert code == 1 and "job 101 has frames 1-40" in out
    code, out = run("worker", "render7")
    assert code == 1 and "did you mean 'render07'?" in out
    code, out = run("job", "shot010")
    assert code == 1 and "a job is named by its number" in out


def test_json_output() -> None:
    _, out = run("job", "103", "--now", NIGHT, "--json")
    data = json.loads(out)
    (retry,) = [p for p in data["policies"] if p["policy"] == "retry-failed-jobs"]
    assert retry["verdict"] == "would-act" and retry["matched"]
    assert {c["field"] for c in retry["conditions"]} == {"state", "retries_left", "time_in_state"}
    assert all(c["pass"] for c in retry["conditions"])


def test_not_and_any_groups_are_traced() -> None:
    farm = load_snapshot_file(EXAMPLE)
    pack = load_paths([builtin_dir()]).policies
    ex = explain(farm, pack, Kind.JOB, "108", now=datetime(2026, 11, 28, 2, tzinfo=UTC), engine="reference")
    (keep,) = [v for v in ex.verdicts if v.policy.name == "keep-dependents-blocked"]
    labels = [(r.depth, r.label, r.passed) for r in keep.rows]
    assert (0, "any of:", True) in labels
    assert (1, "dependencies.failed > 0", True) in labels and (1, "dependencies.killed > 0", False) in labels
    assert keep.verdict == "would-act"


def test_a_duration_fixed_by_what_happened_is_not_said_to_hold_later_nor_woken_for() -> None:
    """`failing_for` does not grow with the clock: explain does not promise it will hold
    ("holds in 1h" would be false), and the engine does not wake to check it again."""
    from corral.policy.compiler import compile_kind

    policies = load_texts([("p.yaml", "policies:\n  - name: long-failing\n    kind: worker\n"
                                      "    when: {failing_for: {gte: 1h}}\n    actions: [block]\n    reason: r\n"
                                      "  - name: long-up\n    kind: worker\n"
                                      "    when: {time_in_state: {gte: 1h}}\n    actions: [block]\n    reason: r\n")]).policies
    timed = {p.cond.path for p in compile_kind(Kind.WORKER, list(policies)).timed}  # type: ignore[union-attr]
    assert timed == {"time_in_state"}
    fact = {"id": "h", "state": "up", "failing_for": 0.0, "time_in_state": 0.0}
    long_failing = next(p for p in policies if p.name == "long-failing")
    long_up = next(p for p in policies if p.name == "long-up")
    assert _flips_in(long_failing.when, fact, Kind.WORKER) is None  # type: ignore[arg-type]
    assert _flips_in(long_up.when, fact, Kind.WORKER) == 3600  # type: ignore[arg-type]
