"""A picture of the night: frames rendered, failed attempts, core-hours wasted and corral's
actions over simulated time: with corral, the farm manager alone, and the oracle (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.sim.report import Comparison, RunReport

FORMATS = (".png", ".svg", ".pdf")


def write_plot(result: Comparison, path: str | Path) -> Path:
    """Write the timeline to `path` (.png, .svg or .pdf, from its suffix)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot write a plot as {path.suffix or 'a file with no suffix'}: use {', '.join(FORMATS)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: list[tuple[RunReport, str, str]] = [
        (result.with_corral, "with corral", "tab:green"),
        (result.baseline, f"{result.baseline.manager} alone", "tab:red"),
    ]
    if result.oracle is not None:
        runs.append((result.oracle, "oracle (knows the faults)", "tab:blue"))
    s = result.scenario
    hours = float(s["hours"])
    every = float(s.get("wrangler_every_hours") or 0)
    check_ins = [every * n for n in range(1, int(hours / every) + 1)] if every > 0 else []
    with plt.rc_context({"svg.fonttype": "none"}):  # text in an SVG stays text: searchable, selectable
        fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True, constrained_layout=True,
                                 gridspec_kw={"height_ratios": [3, 3, 3, 2.5]})
        panels = [
            ("frames_rendered", "frames rendered"),
            ("failed_attempts", "failed frame attempts"),
            ("wasted_core_hours", "core-hours wasted"),
        ]
        for ax, (field, title) in zip(axes, panels, strict=False):
            for report, label, colour in runs:
                ax.plot([x.hours for x in report.samples], [getattr(x, field) for x in report.samples], label=label,
                        color=colour)
            _mark_check_ins(ax, check_ins, label=ax is axes[0])
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left")
        _actions_panel(axes[3], result, check_ins)
        axes[3].set_xlim(0, hours)
        w, b = result.with_corral, result.baseline
        fig.suptitle(
            f"corral demo: {s['jobs']} jobs, {s['hosts']} hosts, {hours:g} h, seed {s['seed']}\n"
            f"jobs completed: {w.jobs_completed} of {w.jobs_total} with corral, {b.jobs_completed} {b.manager} alone  ·  "
            f"chains finished: {w.chains_finished} of {w.chains_total} with, {b.chains_finished} alone\n"
            f"core-hours wasted: {w.wasted_core_hours:g} with corral, {b.wasted_core_hours:g} {b.manager} alone"
            + (f", {result.oracle.wasted_core_hours:g} oracle" if result.oracle is not None else "")
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
    return path


def _mark_check_ins(ax: Any, check_ins: list[float], *, label: bool) -> None:
    """The wrangler's check-ins (the baseline's only moments of action), as dashed lines."""
    for n, at in enumerate(check_ins):
        ax.axvline(at, color="tab:gray", linestyle="--", linewidth=0.8,
                   label="wrangler checks in (without corral)" if label and n == 0 else None)


def _actions_panel(ax: Any, result: Comparison, check_ins: list[float]) -> None:
    """When corral (and the wrangler) acted, a row per policy, named inside the panel so the
    names do not push every panel's plot to the right."""
    policies = sorted({p for _, p in result.with_corral.action_times} | {p for _, p in result.baseline.action_times})
    for row, policy in enumerate(policies):
        times = [t for t, p in result.with_corral.action_times if p == policy]
        times_base = [t for t, p in result.baseline.action_times if p == policy]
        ax.scatter(times, [row] * len(times), marker="|", s=120, color="tab:green")
        ax.scatter(times_base, [row] * len(times_base), marker="|", s=120, color="tab:red")
        ax.annotate(policy, (0, row), xycoords=("axes fraction", "data"), xytext=(4, 5), textcoords="offset points",
                    fontsize=8, color="0.25")
    _mark_check_ins(ax, check_ins, label=False)
    ax.set_yticks([])
    ax.set_ylim(-0.7, max(len(policies), 1) - 0.1)
    ax.set_ylabel("actions, per policy")
    ax.set_xlabel("simulated hours")
    ax.grid(alpha=0.3, axis="x")
