"""The performance benchmarks of issue 20 run end to end, on a small farm, and say what
they promise: the feed's rates by both paths with the same rows applied, reaction times
with nothing missed, a steady cycle weighed part by part, the paired A/B of the engine
child.  Their figures are for docs/benchmarks.md; here only that a script still runs and
its report holds together (a benchmark that broke would otherwise be found the next time
someone needs a number)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run(script: str, *args: str, timeout: float = 120) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_feed_benchmark_applies_the_same_stream_by_every_path_and_reports_rates() -> None:
    out = json.loads(_run("ingest_bench.py", "--events", "300", "--frames-stored", "2000", "--json"))
    for path in ("ingest", "cli", "api_batch"):
        assert out[f"{path}_events_per_s"] > 0
        assert out[f"{path}_bad"] == 0
        # the stream's replays are skipped, the rest applied, the same by each path
        assert out[f"{path}_applied"] == out["ingest_applied"] > 0
        assert out[f"{path}_skipped"] == out["ingest_skipped"] > 0
    assert out["ingest_applied"] + out["ingest_skipped"] == 300
    assert out["api_single_bad"] == 0
    # the ingest path's time over the floor's (both rounded to the millisecond in the report, the ratio is not)
    took, floor = out["ingest_s"], out["floor_s"]
    assert abs(out["ratio_floor"] - took / floor) <= 0.0005 / floor + 0.0005 * took / floor**2 + 0.005
    assert out["peak_rss_mb"] > 0


def test_the_reaction_benchmark_commits_and_delivers_every_injection() -> None:
    out = json.loads(_run("latency_bench.py", "--frames", "2000", "--duration", "6", "--injections", "4",
                          "--events-per-s", "200", "--json"))
    assert out["errors"] == 0
    committed, delivered = out["committed"], out["delivered"]
    assert committed["count"] >= 1 and committed["misses"] == 0
    assert delivered["count"] == committed["count"] and delivered["misses"] == 0
    assert 0 < committed["median_s"] <= committed["p99_s"]  # (the targets are the benchmark's, on a quiet machine)
    assert out["targets"] == {"median_s": 1.0, "p99_s": 3.0}
    assert out["cycles"] >= 1


def test_the_cycle_parts_harness_weighs_the_default_mode_against_its_target() -> None:
    out = _run("cycle_parts.py", "--frames", "2000", "--rounds", "2", "--isolate")
    assert "engine in a child" in out
    settle = re.search(r"^\s+engine settle\s+([\d.]+)$", out, re.M)
    assert settle is not None and float(settle.group(1)) > 0  # the exchange with the child is timed
    weighed = dict(re.findall(r"^\s+(steady cycle|without the live farm's update|a cycle with nothing changed)\s+([\d.]+)",
                              out, re.M))
    assert set(weighed) == {"steady cycle", "without the live farm's update", "a cycle with nothing changed"}
    assert float(weighed["without the live farm's update"]) <= float(weighed["steady cycle"])


def test_the_paired_engine_child_benchmark_runs_both_ways() -> None:
    out = _run("pipe_ab.py", "--frames", "2000", "--rounds", "4")
    assert re.search(r"kinds as built\s*: cycle_ms [\d.]+, io_floor_ms [\d.]+, ratio_io [\d.]+, rounds 2", out)
    assert re.search(r"all kinds at once: cycle_ms [\d.]+, io_floor_ms [\d.]+, ratio_io [\d.]+, rounds 2", out)
