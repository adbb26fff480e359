"""Commands: corral demo, a simulated night on a fresh farm: a farm manager alone, with
corral's pack on top, and with the ground-truth oracle on top."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from corral.cli.common import JsonOption, console, fail, print_json
from corral.cli.policy_cmds import OnlyRulesOption, RulesOption, SetOption, load_or_fail
from corral.policy.model import Policy
from corral.sim import DEFAULT_BASELINE, HANDLINGS, Comparison, Night, RunReport, Sample, Scenario, draw_night, play
from corral.sim.plot import FORMATS, write_plot

#: What the report's table shows, in order: (label, field, format).
_ROWS = [
    ("jobs completed", "jobs_completed", "{}"),
    ("frames rendered", "frames_rendered", "{}"),
    ("failed frame attempts", "failed_attempts", "{}"),
    ("frames taken off their host", "frames_taken_off_hosts", "{}"),
    ("core-hours wasted on failures", "wasted_core_hours", "{:.1f}"),
    ("core-hours rendering", "useful_core_hours", "{:.1f}"),
    ("dependency chains finished", "chains_finished", "{}"),
    ("mean time to finish a chain (h)", "mean_chain_hours", "{:.2f}"),
    ("all chains finished at (h)", "chains_finished_at", "{:.2f}"),
]


def _db_url(db: str | None) -> str | None:
    """--db takes a file path (an SQLite farm) or any SQLAlchemy URL."""
    if db is None or "://" in db:
        return db
    path = Path(db).expanduser().resolve()
    if path.exists() and path.stat().st_size > 0:
        fail(f"{db} exists already: the demo builds a fresh farm; give a new file (or remove it)")
    return f"sqlite:///{path}"


def _cell(value: object, fmt: str, field: str) -> str:
    if value is None:
        return "none finished" if field == "mean_chain_hours" else "not all finished"
    return fmt.format(value)


def _report(result: Comparison, wall: float, rules: str) -> None:
    w, b, o = result.with_corral, result.baseline, result.oracle
    s = result.scenario
    faults = result.faults
    console.print(
        f"[bold]A simulated night[/]: {s['jobs']} jobs in {w.chains_total} dependency chains ({w.frames_total} frames), "
        f"{s['hosts']} hosts, {s['hours']:g} h, a cycle every {s['cycle_seconds']} s, seed {s['seed']}.",
        highlight=False, markup=True,
    )
    console.print(
        f"Faults: bad hosts {', '.join(faults['bad_hosts']) or 'none'}; broken jobs "
        f"{', '.join(map(str, faults['broken_jobs'])) or 'none'}; {faults['flaky_frames']} flaky frames; hosts dropping "
        f"offline {', '.join(faults['hosts_dropping']) or 'none'}.",
        highlight=False,
    )
    manager = HANDLINGS[b.manager].title
    default = " (the default: the simulated farm has Qube!'s states and actions)" if b.manager == DEFAULT_BASELINE else ""
    console.print(f"Farm manager: {manager}{default}; corral runs {rules} on top of it.", highlight=False)
    runs = [("with corral", w), ("manager alone", b)] + ([("oracle", o)] if o is not None else [])
    table = Table(title="the same night, three ways", title_justify="left")
    table.add_column("")
    for name, _ in runs:
        table.add_column(name, justify="right")
    for label, field, fmt in _ROWS:
        table.add_row(label, *(_cell(getattr(r, field), fmt, field) for _, r in runs))
    table.add_row("healthy chains finished", *(f"{len(r.healthy_chains_finished)}/{r.healthy_chains_total}" for _, r in runs))
    table.add_row("core-hours wasted, by cause", *(_causes(r.wasted_by_cause) for _, r in runs))
    table.add_row("actions taken", *(_actions(r) for _, r in runs))
    table.add_row("wrong actions (ground truth)", *(str(sum(r.wrong_actions.values())) for _, r in runs))
    console.print(table)
    ratios = result.ratios()
    line = f"corral's waste is {_ratio(ratios['ratio_baseline'])} of the manager's alone"
    if ratios["ratio_oracle"] is not None:
        line += f" and {_ratio(ratios['ratio_oracle'])} of the oracle's (the floor: a wrangler who knows the faults)"
    console.print(line + ".", highlight=False)
    for line in w.wrong_action_lines:
        console.print(f"  wrong: {escape(line)}", highlight=False)
    if w.actions_by_policy:
        actions = Table(title="corral's actions, by policy", title_justify="left")
        actions.add_column("policy")
        actions.add_column("actions", justify="right")
        for policy, count in sorted(w.actions_by_policy.items(), key=lambda kv: (-kv[1], kv[0])):
            actions.add_row(policy, str(count))
        console.print(actions)
    if w.hosts_locked:
        console.print(f"Hosts corral quarantined: {', '.join(w.hosts_locked)}.", highlight=False)
    cycle = f"; one cycle took {w.cycle_ms_mean} ms on average, {w.cycle_ms_max} ms at most" if w.cycles else ""
    console.print(f"{w.cycles} cycles{cycle}; the demo took {wall:.1f} s.", highlight=False)
    if result.db:
        console.print(
            f"The farm is kept in {escape(result.db)}: try [bold]corral status --db {escape(result.db)}[/] and "
            f"[bold]corral history --db {escape(result.db)}[/].",
            highlight=False, markup=True,
        )


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _actions(run: RunReport) -> str:
    n = sum(run.actions_by_policy.values())
    if run.label == "baseline":
        return f"{n} (wrangler)"
    return str(n) if run.label != "oracle" else f"{n} (oracle)"


_CAUSES = {"futile_retry": "retries that cannot succeed", "taken_off_host": "taken off a host"}


def _causes(causes: dict[str, float]) -> str:
    return "\n".join(
        f"{_CAUSES.get(k, k.replace('_', ' '))} {v:.1f}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1])
    ) or "-"


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the app."""

    @app.command("demo")
    def demo(
        seed: Annotated[int, typer.Option(help="Seed of the simulated farm: the same seed plays the same night.")] = 1,
        jobs: Annotated[int, typer.Option(min=1, help="Jobs submitted (in dependency chains).")] = 40,
        hosts: Annotated[int, typer.Option(min=1, help="Render hosts.")] = 30,
        hours: Annotated[float, typer.Option(min=0.1, help="Simulated hours.")] = 10.0,
        cycle: Annotated[int, typer.Option(min=5, help="Simulated seconds between two corral cycles.")] = 60,
        db: Annotated[
            str | None,
            typer.Option(
                "--db",
                metavar="PATH",
                help="Keep the farm (with corral) in this new SQLite file or SQLAlchemy URL, to inspect it "
                "afterwards with corral status / history (default: a temporary file).",
                show_default=False,
            ),
        ] = None,
        plot: Annotated[
            Path | None,
            typer.Option(help=f"Write a timeline of the night ({', '.join(FORMATS)}).", show_default=False),
        ] = None,
        baseline: Annotated[
            str,
            typer.Option(
                "--baseline",
                help=f"The farm manager's own failure handling, alone and under corral: {', '.join(HANDLINGS)} "
                "(none: a supervisor that only dispatches, and a wrangler every 3 h).",
            ),
        ] = DEFAULT_BASELINE,
        rules: RulesOption = None,
        only_rules: OnlyRulesOption = False,
        sets: SetOption = None,
        oracle: Annotated[
            bool, typer.Option("--oracle/--no-oracle", help="Also play the night with the ground-truth oracle.")
        ] = True,
        json_out: JsonOption = False,
    ) -> None:
        """Simulate a night on a fresh farm with faults: the farm manager alone, with corral's
        policies on top (the built-in pack unless --only-rules), and with an oracle that knows
        the faults; compare."""
        if plot is not None and plot.suffix.lower() not in FORMATS:
            fail(f"--plot {plot}: use a file ending in {', '.join(FORMATS)}")
        if baseline not in HANDLINGS:
            fail(f"--baseline {baseline}: choose one of {', '.join(HANDLINGS)}")
        policies = list(load_or_fail(rules, only_rules, sets).policies)
        if not policies:
            fail("no policy loaded: give --rules with at least one policy (or drop --only-rules)")
        described = _describe_rules(rules, only_rules, sets)
        scenario = Scenario(seed=seed, jobs=jobs, hosts=hosts, hours=hours, cycle_seconds=cycle)
        url = _db_url(db)
        night = draw_night(scenario)
        started = time.perf_counter()
        live = not json_out and console.is_terminal
        try:
            if live:
                with_corral, base, best = _play_live(night, url, policies, baseline, oracle)
            else:
                with_corral = play(night, url=url, policies=policies, handling=baseline)
                base = play(night, policies=None, handling=baseline)
                best = play(night, policies=None, handling=baseline, oracle=True) if oracle else None
        except ValueError as err:
            fail(str(err))
        result = Comparison(scenario.to_dict(), night.faults(), with_corral, base, db=url, oracle=best)
        wall = time.perf_counter() - started
        if plot is not None:
            write_plot(result, plot)
        if json_out:
            out = result.to_dict()
            out["wall_seconds"] = round(wall, 2)
            out["plot"] = str(plot) if plot is not None else None
            out["rules"] = described
            print_json(out)
            return
        _report(result, wall, described)
        if plot is not None:
            console.print(f"Timeline written to {escape(str(plot))}.", highlight=False)


def _describe_rules(rules: list[Path] | None, only_rules: bool, sets: list[str] | None) -> str:
    parts = [] if only_rules else ["the built-in pack"]
    parts += [str(p) for p in rules or []]
    text = " + ".join(parts)
    return text + (f" (with --set {', '.join(sets)})" if sets else "")


def _play_live(
    night: Night, url: str | None, policies: list[Policy], baseline: str, oracle: bool
) -> tuple[RunReport, RunReport, RunReport | None]:
    """The runs with a progress bar each, and each run's figures on a line of their own
    below (on the bar's line they squeezed the bar and the clock to "…" in a 100-column pane)."""
    hours = night.scenario.hours
    progress = Progress(
        TextColumn("{task.description:<15}"),
        BarColumn(),
        TextColumn("{task.fields[hour]:>5.1f}/{task.total:g} h"),
        TimeElapsedColumn(),
        console=console,
    )
    figures: dict[str, str] = {}

    class Figures:
        def __rich__(self) -> Text:
            return Text("\n".join(f"  {name}: {line}" for name, line in figures.items()), overflow="ellipsis",
                        no_wrap=True)

    def updater(task: TaskID, name: str) -> Callable[[Sample], None]:
        def update(sample: Sample) -> None:
            figures[name] = (
                f"{sample.frames_rendered} frames, {sample.failed_attempts} failed, "
                f"{sample.wasted_core_hours:.0f} core-h wasted, {sample.jobs_completed} jobs done, "
                f"{sample.actions} actions, {sample.busy_hosts} busy"
            )
            progress.update(task, completed=sample.hours, hour=sample.hours)

        return update

    with Live(Group(progress, Figures()), console=console, transient=False, refresh_per_second=8):
        first = progress.add_task("with corral", total=hours, hour=0.0)
        second = progress.add_task("manager alone", total=hours, hour=0.0)
        third = progress.add_task("oracle", total=hours, hour=0.0) if oracle else None
        with_corral = play(night, url=url, policies=policies, handling=baseline, progress=updater(first, "with corral"))
        base = play(night, policies=None, handling=baseline, progress=updater(second, "manager alone"))
        best = (
            play(night, policies=None, handling=baseline, oracle=True, progress=updater(third, "oracle"))
            if third is not None
            else None
        )
    return with_corral, base, best
