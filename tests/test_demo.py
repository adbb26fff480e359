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
    for key in ("with_corral", "baseline"):
        run = report[key]
        for field in ("wasted_core_hours", "jobs_completed", "frames_rendered", "chains_finished_at", "mean_chain_hours"):
            assert field in run
    assert report["with_corral"]["actions_by_policy"]
    assert report["baseline"]["cycles"] == 0
    assert report["scenario"]["jobs"] == 6 and report["scenario"]["hosts"] == 6
    assert set(report["faults"]) == {"bad_hosts", "broken_jobs", "flaky_frames", "hosts_dropping"}


def test_demo_json_is_deterministic() -> None:
    runs = [json.loads(CliRunner().invoke(app, ["demo", *SMALL, "--json"]).stdout) for _ in range(2)]
    for run in runs:
        run.pop("wall_seconds")
        for key in ("with_corral", "baseline"):
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
