"""Benchmark: does corral earn its keep?  The same simulated nights, three ways, per farm manager.

    python bench/outcome_bench.py --seeds 1-20 [--baseline qube,afanasy,deadline] [--night default|large]
        [--rules PATH ...] [--only-rules] [--set POLICY.PARAM=VALUE ...] [--history] [--workers 2] [--per-seed] [--json]

For every seed and every farm manager (`corral.sim.managers`, at its documented
defaults), the night is played with the manager alone (the baseline, with a wrangler's
check-ins every 3 h), with corral's policies on top (the built-in pack unless
--only-rules), and with the ground-truth oracle on top (`corral.sim.oracle`).  Per seed:
wasted core-hours of each, `ratio_baseline` (corral / baseline) and `ratio_oracle`
(corral / oracle), frames and jobs completed, healthy chains finished (chains with no
broken job), waste by cause, and corral's wrong actions checked against the ground
truth (`corral.sim.audit`).  Per manager: the median and worst ratios and the targets
beside them.  With --history, corral's store holds a day of the hosts' past work before
the night (`corral.sim.history`: every host, the bad ones too, completed frames, some
failed one), as a studio's store does; the facts counted over history read it.
docs/demo.md records the table with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from corral.policy.loader import builtin_dir, load_paths
from corral.sim import HANDLINGS, REAL_BASELINES, RunReport, Scenario, draw_night, play
from corral.sim.audit import WRONG
from corral.sim.report import ratio

#: The nights the benchmark knows: the demo's, and a larger one (issue 22: at least 200
#: jobs, 100 hosts, 12 hours).
NIGHTS = {
    "small": Scenario(jobs=12, hosts=10, hours=3.0),
    "default": Scenario(),
    "large": Scenario(jobs=200, hosts=100, hours=12.0),
}
TARGETS = {
    "median_ratio_oracle": 1.25,
    "worst_ratio_oracle": 1.6,
    "median_ratio_baseline": 0.5,
    "wrong_actions": 0,
    "healthy_chains_missed": 0,
}
CAUSES = ("bad_host", "broken_job", "futile_retry", "flaky_frame", "host_dropped", "taken_off_host")


def parse_seeds(text: str) -> list[int]:
    """`1-20`, `3`, `1,4,9` or `1-5,9`."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: write a range such as 1-20, or seeds separated by commas") from None
    if not seeds:
        raise SystemExit("--seeds: give at least one seed")
    return seeds


def _policies(rules: list[str], only_rules: bool, sets: dict[str, dict[str, Any]]) -> list[Any]:
    paths = ([] if only_rules else [builtin_dir()]) + [Path(r) for r in rules]
    if not paths:
        raise SystemExit("--only-rules needs at least one --rules PATH")
    loaded = load_paths(paths, sets)
    if loaded.errors:
        raise SystemExit("\n".join(str(e) for e in loaded.errors))
    return list(loaded.policies)


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, eq, raw = item.partition("=")
        policy, dot, param = target.rpartition(".")
        if not eq or not dot:
            raise SystemExit(f"--set {item!r}: write POLICY.PARAM=VALUE")
        out.setdefault(policy, {})[param] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _run_figures(run: RunReport) -> dict[str, Any]:
    return {
        "wasted_core_hours": run.wasted_core_hours,
        "wasted_by_cause": {c: run.wasted_by_cause.get(c, 0.0) for c in CAUSES},
        "frames_rendered": run.frames_rendered,
        "wasted_per_1000_frames": _per_frame(run),
        "jobs_completed": run.jobs_completed,
        "healthy_chains_finished": len(run.healthy_chains_finished),
        "wrong_actions": run.wrong_actions,
        "wall_seconds": run.wall_seconds,
    }


def one_night(task: tuple[str, int, str, list[str], bool, dict[str, dict[str, Any]], bool]) -> dict[str, Any]:
    """Play one seed's night three ways under one manager (in a worker process)."""
    baseline, seed, night_name, rules, only_rules, sets, history = task
    policies = _policies(rules, only_rules, sets)
    night = draw_night(replace(NIGHTS[night_name], seed=seed))
    started = time.perf_counter()
    corral = play(night, policies=policies, handling=baseline, history=history)
    base = play(night, policies=None, handling=baseline)
    oracle = play(night, policies=None, handling=baseline, oracle=True)
    missed = sorted(set(oracle.healthy_chains_finished) - set(corral.healthy_chains_finished))
    return {
        "baseline": baseline,
        "seed": seed,
        "ratio_baseline": ratio(corral.wasted_core_hours, base.wasted_core_hours),
        "ratio_oracle": ratio(corral.wasted_core_hours, oracle.wasted_core_hours),
        "ratio_baseline_per_frame": _per_frame_ratio(corral, base),
        "healthy_chains_total": corral.healthy_chains_total,
        "healthy_chains_missed": missed,
        "wrong_action_lines": corral.wrong_action_lines,
        "runs": {"baseline": _run_figures(base), "corral": _run_figures(corral), "oracle": _run_figures(oracle)},
        "wall_seconds": round(time.perf_counter() - started, 2),
    }


def _per_frame(run: RunReport) -> float | None:
    """Core-hours wasted per 1,000 frames rendered (None: nothing rendered)."""
    return round(1000 * run.wasted_core_hours / run.frames_rendered, 2) if run.frames_rendered else None


def _per_frame_ratio(corral: RunReport, base: RunReport) -> float | None:
    """`ratio_baseline` per frame rendered: not a target, the figure beside it.  Waste grows
    with the work a night gets done (a flaky frame fails once wherever it renders), and a
    manager whose handling stalls the night (Qube!'s blocks jobs, then renders a fifth of the
    frames) wastes little by rendering little; this says what a rendered frame costs."""
    if not corral.frames_rendered or not base.frames_rendered:
        return None
    return ratio(corral.wasted_core_hours / corral.frames_rendered, base.wasted_core_hours / base.frames_rendered)


def _worst(values: list[float | None]) -> float | None:
    """The largest ratio; an undefined one (corral wasted, the other nothing) is the worst."""
    if any(v is None for v in values):
        return None
    return max(v for v in values if v is not None) if values else None


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known and len(known) == len(values) else None


def aggregate(nights: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and worst over the seeds of one manager, and the targets met or not."""
    rb = [n["ratio_baseline"] for n in nights]
    ro = [n["ratio_oracle"] for n in nights]
    wrong: Counter[str] = Counter(dict.fromkeys(WRONG, 0))
    oracle_wrong: Counter[str] = Counter(dict.fromkeys(WRONG, 0))
    causes: Counter[str] = Counter()
    for n in nights:
        wrong.update(n["runs"]["corral"]["wrong_actions"])
        oracle_wrong.update(n["runs"]["oracle"]["wrong_actions"])
        causes.update(n["runs"]["corral"]["wasted_by_cause"])
    total_waste = sum(causes.values())
    missed = sum(len(n["healthy_chains_missed"]) for n in nights)
    out: dict[str, Any] = {
        "seeds": len(nights),
        "median_ratio_baseline": _median(rb),
        "worst_ratio_baseline": _worst(rb),
        "median_ratio_oracle": _median(ro),
        "worst_ratio_oracle": _worst(ro),
        "median_ratio_baseline_per_frame": _median([n["ratio_baseline_per_frame"] for n in nights]),
        **{
            f"median_wasted_{who}": round(statistics.median(n["runs"][who]["wasted_core_hours"] for n in nights), 2)
            for who in ("baseline", "corral", "oracle")
        },
        **{
            f"median_jobs_completed_{who}": statistics.median(n["runs"][who]["jobs_completed"] for n in nights)
            for who in ("baseline", "corral", "oracle")
        },
        **{
            f"median_frames_rendered_{who}": statistics.median(n["runs"][who]["frames_rendered"] for n in nights)
            for who in ("baseline", "corral", "oracle")
        },
        **{
            f"healthy_chains_finished_{who}": sum(n["runs"][who]["healthy_chains_finished"] for n in nights)
            for who in ("baseline", "corral", "oracle")
        },
        "healthy_chains_total": sum(n["healthy_chains_total"] for n in nights),
        "healthy_chains_missed": missed,
        "wrong_actions": dict(wrong),
        "wrong_actions_total": sum(wrong.values()),
        "seeds_with_wrong_actions": sum(1 for n in nights if any(n["runs"]["corral"]["wrong_actions"].values())),
        "oracle_wrong_actions_total": sum(oracle_wrong.values()),
        "corral_waste_by_cause": {c: round(causes[c], 1) for c in CAUSES},
        "corral_waste_share": {c: round(causes[c] / total_waste, 3) if total_waste else 0.0 for c in CAUSES},
        "wall_seconds_max": max(n["wall_seconds"] for n in nights),
    }
    out["targets"] = {
        "median_ratio_oracle": _met(out["median_ratio_oracle"], TARGETS["median_ratio_oracle"]),
        "worst_ratio_oracle": _met(out["worst_ratio_oracle"], TARGETS["worst_ratio_oracle"]),
        "median_ratio_baseline": _met(out["median_ratio_baseline"], TARGETS["median_ratio_baseline"]),
        "wrong_actions": out["wrong_actions_total"] <= TARGETS["wrong_actions"],
        "healthy_chains_missed": missed <= TARGETS["healthy_chains_missed"],
    }
    return out


def _met(value: float | None, target: float) -> bool:
    return value is not None and value <= target


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_table(result: dict[str, Any], per_seed: bool) -> None:
    past = "; corral's store with a day of the hosts' past work" if result["history"] else ""
    print(f"night: {result['night']} ({result['scenario']}); seeds {result['seeds']}; rules: {result['rules']}{past}")
    print(f"wall: {result['wall_seconds']} s with {result['workers']} worker process(es)")
    header = (
        "| manager | median ratio_oracle (≤1.25) | worst ratio_oracle (≤1.6) | median ratio_baseline (≤0.5) "
        "| median wasted core-h baseline / corral / oracle | healthy chains finished baseline / corral / oracle "
        "| missed by corral (0) | wrong actions (0) |"
    )
    print(header)
    print("|" + " --- |" * 8)
    for name, agg in result["aggregate"].items():
        tg = agg["targets"]
        wrong = ", ".join(f"{k} {v}" for k, v in agg["wrong_actions"].items() if v) or "none"
        print(
            f"| {name} | {_fmt(agg['median_ratio_oracle'])} {_mark(tg['median_ratio_oracle'])} "
            f"| {_fmt(agg['worst_ratio_oracle'])} {_mark(tg['worst_ratio_oracle'])} "
            f"| {_fmt(agg['median_ratio_baseline'])} {_mark(tg['median_ratio_baseline'])} "
            f"| {agg['median_wasted_baseline']} / {agg['median_wasted_corral']} / {agg['median_wasted_oracle']} "
            f"| {agg['healthy_chains_finished_baseline']} / {agg['healthy_chains_finished_corral']} / "
            f"{agg['healthy_chains_finished_oracle']} of {agg['healthy_chains_total']} "
            f"| {agg['healthy_chains_missed']} {_mark(tg['healthy_chains_missed'])} "
            f"| {agg['wrong_actions_total']} on {agg['seeds_with_wrong_actions']} seed(s): {wrong} {_mark(tg['wrong_actions'])} |"
        )
    print()
    print("per frame rendered (not a target; waste grows with the work done): median ratio_baseline_per_frame")
    for name, agg in result["aggregate"].items():
        print(f"  {name}: {_fmt(agg['median_ratio_baseline_per_frame'])} (ratio_baseline "
              f"{_fmt(agg['median_ratio_baseline'])}; frames rendered, median, baseline / corral / oracle: "
              f"{agg['median_frames_rendered_baseline']:g} / {agg['median_frames_rendered_corral']:g} / "
              f"{agg['median_frames_rendered_oracle']:g})")
    print()
    print("corral's waste by cause, summed over the seeds (share):")
    for name, agg in result["aggregate"].items():
        parts = ", ".join(f"{c.replace('_', ' ')} {agg['corral_waste_by_cause'][c]:g} ({agg['corral_waste_share'][c]:.0%})"
                          for c in CAUSES)
        print(f"  {name}: {parts}")
    if per_seed:
        print()
        print("| manager | seed | wasted baseline / corral / oracle | ratio_baseline | ratio_oracle "
              "| jobs b/c/o | wrong | missed chains |")
        print("|" + " --- |" * 8)
        for n in result["nights"]:
            r = n["runs"]
            print(
                f"| {n['baseline']} | {n['seed']} | {r['baseline']['wasted_core_hours']} / {r['corral']['wasted_core_hours']} / "
                f"{r['oracle']['wasted_core_hours']} | {_fmt(n['ratio_baseline'])} | {_fmt(n['ratio_oracle'])} "
                f"| {r['baseline']['jobs_completed']}/{r['corral']['jobs_completed']}/{r['oracle']['jobs_completed']} "
                f"| {sum(r['corral']['wrong_actions'].values())} | {n['healthy_chains_missed'] or '-'} |"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seeds", default="1-20")
    ap.add_argument("--baseline", default=",".join(REAL_BASELINES),
                    help=f"managers, comma-separated, of: {', '.join(HANDLINGS)} (default: the real ones)")
    ap.add_argument("--night", choices=sorted(NIGHTS), default="default")
    ap.add_argument("--rules", action="append", default=[], metavar="PATH")
    ap.add_argument("--only-rules", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="POLICY.PARAM=VALUE")
    ap.add_argument("--history", action="store_true",
                    help="corral's store holds a day of the hosts' past work first (corral.sim.history)")
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--per-seed", action="store_true", help="also print a row per seed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    managers = [m.strip() for m in args.baseline.split(",") if m.strip()]
    unknown = [m for m in managers if m not in HANDLINGS]
    if unknown or not managers:
        raise SystemExit(f"--baseline {args.baseline}: choose from {', '.join(HANDLINGS)}")
    sets = parse_sets(args.sets)
    _policies(args.rules, args.only_rules, sets)  # fail here, not in a worker
    tasks = [(m, s, args.night, args.rules, args.only_rules, sets, args.history) for m in managers for s in seeds]
    started = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            nights = list(pool.map(one_night, tasks))
    else:
        nights = [one_night(t) for t in tasks]
    wall = round(time.perf_counter() - started, 1)
    result = {
        "night": args.night,
        "scenario": {k: v for k, v in NIGHTS[args.night].to_dict().items() if k in ("jobs", "hosts", "hours")},
        "seeds": args.seeds,
        "history": args.history,
        "rules": " + ".join(([] if args.only_rules else ["built-in pack"]) + args.rules)
        + (f" --set {' '.join(args.sets)}" if args.sets else ""),
        "targets": TARGETS,
        "workers": args.workers,
        "wall_seconds": wall,
        "aggregate": {m: aggregate([n for n in nights if n["baseline"] == m]) for m in managers},
        "nights": nights,
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_table(result, args.per_seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
