"""bench/outcome_bench.py: the figures, the targets beside them, and its options."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from bench_scripts import load_bench


def _bench() -> ModuleType:
    return load_bench("outcome_bench")


def test_seeds_are_ranges_or_lists_and_bad_ones_say_how_to_write_them() -> None:
    bench = _bench()
    assert bench.parse_seeds("1-3,7") == [1, 2, 3, 7]
    with pytest.raises(SystemExit, match="1-20"):
        bench.parse_seeds("one")


def test_the_large_night_is_at_least_200_jobs_100_hosts_12_hours() -> None:
    large = _bench().NIGHTS["large"]
    assert large.jobs >= 200 and large.hosts >= 100 and large.hours >= 12


def test_one_seed_reports_three_runs_ratios_and_targets(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    assert bench.main(["--seeds", "2", "--night", "small", "--baseline", "afanasy", "--workers", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (night,) = out["nights"]
    runs = night["runs"]
    assert set(runs) == {"baseline", "corral", "oracle"}
    assert night["ratio_oracle"] == round(runs["corral"]["wasted_core_hours"] / runs["oracle"]["wasted_core_hours"], 3)
    for run in runs.values():
        assert set(run["wasted_by_cause"]) == set(bench.CAUSES)
        assert sum(run["wasted_by_cause"].values()) == pytest.approx(run["wasted_core_hours"], abs=0.05)
    assert sum(runs["oracle"]["wrong_actions"].values()) == 0
    per_frame = {who: run["wasted_core_hours"] / run["frames_rendered"] for who, run in runs.items()}
    assert runs["corral"]["wasted_per_1000_frames"] == pytest.approx(1000 * per_frame["corral"], abs=0.01)
    assert night["ratio_baseline_per_frame"] == round(per_frame["corral"] / per_frame["baseline"], 3)
    agg = out["aggregate"]["afanasy"]
    assert agg["median_ratio_oracle"] == night["ratio_oracle"] == agg["worst_ratio_oracle"]
    assert agg["median_ratio_baseline_per_frame"] == night["ratio_baseline_per_frame"]
    assert agg["targets"]["median_ratio_oracle"] == (night["ratio_oracle"] <= 1.25)
    assert set(agg["targets"]) == set(bench.TARGETS)
    with pytest.raises(SystemExit, match="choose from"):
        bench.main(["--seeds", "1", "--baseline", "tractor"])


def test_history_plays_corral_on_a_store_with_a_past(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    assert bench.main(["--seeds", "2", "--night", "small", "--baseline", "qube", "--workers", "1", "--history",
                       "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["history"] is True
    assert out["nights"][0]["runs"]["corral"]["frames_rendered"] > 0
