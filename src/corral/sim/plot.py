"""A picture of the night: frames rendered, failed attempts, core-hours wasted and corral's
actions over simulated time, with corral and without (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

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
        (result.baseline, "without corral", "tab:red"),
    ]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True, constrained_layout=True)
    panels = [
        ("frames_rendered", "frames rendered"),
        ("failed_attempts", "failed frame attempts"),
        ("wasted_core_hours", "core-hours wasted"),
    ]
    for ax, (field, title) in zip(axes, panels, strict=False):
        for report, label, colour in runs:
            ax.plot([s.hours for s in report.samples], [getattr(s, field) for s in report.samples], label=label, color=colour)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    ax = axes[3]
    policies = sorted({p for _, p in result.with_corral.action_times} | {p for _, p in result.baseline.action_times})
    for row, policy in enumerate(policies):
        times = [t for t, p in result.with_corral.action_times if p == policy]
        times_base = [t for t, p in result.baseline.action_times if p == policy]
        ax.scatter(times, [row] * len(times), marker="|", s=120, color="tab:green")
        ax.scatter(times_base, [row] * len(times_base), marker="|", s=120, color="tab:red")
    ax.set_yticks(range(len(policies)), policies)
    ax.set_ylim(-0.7, max(len(policies), 1) - 0.3)
    ax.set_ylabel("actions")
    ax.set_xlabel("simulated hours")
    ax.grid(alpha=0.3, axis="x")
    s = result.scenario
    fig.suptitle(
        f"corral demo: {s['jobs']} jobs, {s['hosts']} hosts, {s['hours']:g} h, seed {s['seed']} "
        f"(wasted: {result.with_corral.wasted_core_hours:g} core-h with corral, {result.baseline.wasted_core_hours:g} without)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
