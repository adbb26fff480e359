"""corral demo: the one-command tour, through typer's CliRunner."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app

SMALL = ["--jobs", "6", "--hosts", "6", "--hours", "1.5", "--seed", "2"]


def test_demo_json_on_a_small_farm_is_quick_and_complete() -> None:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["demo", *SMALL, "--json"])
    took = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert took < 15, f"a small demo took {took:.1f} s"
    report = json.loads(result.stdout)
    for key in ("with_corral", "baseline", "oracle"):
        run = report[key]
        for field in ("wasted_core_hours", "jobs_completed", "frames_rendered", "chains_finished_at", "mean_chain_hours",
                      "wasted_by_cause", "healthy_chains_finished", "wrong_actions"):
            assert field in run
        assert run["manager"] == "qube"  # the default baseline, under corral and the oracle too
    assert report["with_corral"]["actions_by_policy"]
    assert report["baseline"]["cycles"] == 0 and report["oracle"]["cycles"] == 0
    assert report["manager"] == "qube" and report["rules"] == "the built-in pack"
    wasted = report["with_corral"]["wasted_core_hours"], report["baseline"]["wasted_core_hours"]
    assert report["ratio_baseline"] == round(wasted[0] / wasted[1], 3)
    assert sum(report["oracle"]["wrong_actions"].values()) == 0
    assert report["scenario"]["jobs"] == 6 and report["scenario"]["hosts"] == 6
    assert set(report["faults"]) == {"bad_hosts", "broken_jobs", "flaky_frames", "hosts_dropping"}


def test_demo_json_is_deterministic() -> None:
    runs = [json.loads(CliRunner().invoke(app, ["demo", *SMALL, "--json"]).stdout) for _ in range(2)]
    for run in runs:
        run.pop("wall_seconds")
        for key in ("with_corral", "baseline", "oracle"):
            for field in ("wall_seconds", "cycle_ms_mean", "cycle_ms_max"):
                run[key].pop(field)
    assert runs[0] == runs[1]


def test_demo_keeps_the_farm_for_status_and_history(tmp_path: Path) -> None:
    db = tmp_path / "night.db"
    result = CliRunner().invoke(app, ["demo", *SMALL, "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "with corral" in result.stdout and "core-hours wasted" in result.stdout
    assert "corral status --db" in result.stdout
    url = f"sqlite:///{db.resolve()}"
    status = CliRunner().invoke(app, ["status", "--db", url, "--json"])
    assert status.exit_code == 0, status.output
    assert (
        len(json.loads(status.stdout)["jobs"] if isinstance(json.loads(status.stdout), dict) else json.loads(status.stdout)) == 6
    )
    history = CliRunner().invoke(app, ["history", "--db", url, "--actor", "corral", "--json"])
    assert history.exit_code == 0 and json.loads(history.stdout)
    again = CliRunner().invoke(app, ["demo", *SMALL, "--db", str(db)])
    assert again.exit_code == 1 and "exists already" in again.output


def test_demo_plot_writes_png_and_svg(tmp_path: Path) -> None:
    for name in ("night.png", "night.svg"):
        path = tmp_path / name
        result = CliRunner().invoke(app, ["demo", *SMALL, "--json", "--plot", str(path)])
        assert result.exit_code == 0, result.output
        assert path.stat().st_size > 1000
    assert (tmp_path / "night.png").read_bytes()[:4] == b"\x89PNG"
    svg = (tmp_path / "night.svg").read_text()
    assert "<svg" in svg[:2000]
    # the story is in the title, as text a reader can search and copy (not glyph paths)
    assert "jobs completed:" in svg and "chains finished:" in svg and "core-hours wasted:" in svg
    bad = CliRunner().invoke(app, ["demo", *SMALL, "--plot", str(tmp_path / "night.gif")])
    assert bad.exit_code == 1 and "use a file ending in" in bad.output


def test_demo_baseline_picks_the_farm_managers_handling() -> None:
    reports = {}
    for name in ("afanasy", "deadline", "none"):
        result = CliRunner().invoke(app, ["demo", *SMALL, "--baseline", name, "--no-oracle", "--json"])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(result.stdout)
        assert reports[name]["manager"] == name and reports[name]["oracle"] is None
    assert reports["afanasy"]["baseline"]["manager_settings"]["errors_avoid_host"] == 3
    assert reports["deadline"]["baseline"]["manager_settings"]["job_error_limit"] == 100
    # Afanasy avoids a bad host after three errors on a job; with no handling it fails every frame it takes
    bad_host = {name: r["baseline"]["wasted_by_cause"].get("bad_host", 0) for name, r in reports.items()}
    assert bad_host["afanasy"] < bad_host["none"]
    bad = CliRunner().invoke(app, ["demo", *SMALL, "--baseline", "tractor"])
    assert bad.exit_code == 1 and "choose one of" in bad.output


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policies" / "qube-autowrangling.yaml"


def test_demo_measures_a_wranglers_own_rules(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("policies:\n  - name: my-retry\n    kind: frame\n    when: {state: failed, retries_left: {gt: 0}}\n"
                    "    actions: [retry]\n    reason: retried\n")
    only = CliRunner().invoke(app, ["demo", *SMALL, "--rules", str(mine), "--only-rules", "--no-oracle", "--json"])
    assert only.exit_code == 0, only.output
    report = json.loads(only.stdout)
    assert report["rules"] == str(mine)
    assert set(report["with_corral"]["actions_by_policy"]) == {"my-retry"}
    tuned = CliRunner().invoke(app, ["demo", *SMALL, "--no-oracle", "--json", "--set", "retry-failed-frames.delay=30m"])
    assert tuned.exit_code == 0, tuned.output
    tuned_report = json.loads(tuned.stdout)
    assert "--set retry-failed-frames.delay=30m" in tuned_report["rules"]
    builtin = json.loads(CliRunner().invoke(app, ["demo", *SMALL, "--no-oracle", "--json"]).stdout)
    retries = "retry-failed-frames"
    assert tuned_report["with_corral"]["actions_by_policy"].get(retries, 0) < builtin["with_corral"]["actions_by_policy"][retries]
    bad_set = CliRunner().invoke(app, ["demo", *SMALL, "--set", "no-such-policy.delay=1m"])
    assert bad_set.exit_code == 1 and "--set" in bad_set.output
    nothing = CliRunner().invoke(app, ["demo", *SMALL, "--only-rules"])
    assert nothing.exit_code == 1 and "--only-rules needs" in nothing.output
