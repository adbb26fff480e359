"""`corral run`: the daemon (every --interval), or one cycle with --once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corral.cli.common import DbOption, JsonOption, console, db_url, err_console, fail, print_json
from corral.cli.policy_cmds import OnlyRulesOption, RulesOption, SetOption, parse_sets, policy_paths
from corral.untrusted import visible

FarmOption = Annotated[
    str | None,
    typer.Option("--farm", help="Read the farm from this farm manager before each cycle: afanasy://HOST[:51000] "
                 "(default: corral's store is the farm).", show_default=False),
]


def run(
    rules: RulesOption = None,
    only_rules: OnlyRulesOption = False,
    db: DbOption = None,
    sets: SetOption = None,
    once: Annotated[bool, typer.Option("--once", help="Run exactly one cycle and exit.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between cycles when no news comes.",
                                            min=0.05)] = 30.0,
    wake: Annotated[
        bool, typer.Option("--wake/--no-wake", help="Run a cycle soon after the feed commits news (corral ingest, the "
                           "API, corral sync, a person's action), not only every --interval.")
    ] = True,
    min_gap: Annotated[
        float, typer.Option("--min-gap", help="Seconds at least between the end of a cycle and a cycle news brings "
                            "forward (a busy feed does not keep the daemon cycling back to back).", min=0.05)
    ] = 0.5,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Treat every policy as audit: log, apply nothing.")] = False,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics on 127.0.0.1:PORT.", show_default=False)
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="The address to serve metrics on: loopback unless you name another "
                          "(e.g. 0.0.0.0 for every interface; put it behind your firewall).")
    ] = "127.0.0.1",
    log_format: Annotated[str, typer.Option("--log-format", help="human or json (one JSON object per line).")] = "human",
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error (default: info; warning with --once).")
    ] = None,
    engine: Annotated[str, typer.Option("--engine", help="durable (default) or reference.")] = "durable",
    isolate: Annotated[
        bool, typer.Option("--isolate/--no-isolate", help="Run the rule engine in a child process (a crash costs a cycle).")
    ] = True,
    stop_grace: Annotated[
        float, typer.Option("--stop-grace", help="Seconds a stop waits for the current cycle before exiting anyway.",
                            min=0.0)
    ] = 10.0,
    sinks: Annotated[
        Path | None,
        typer.Option("--sinks", help="The sinks file: where applied actions are delivered (default: sinks.yaml in a "
                     "--rules folder; none: corral's store is the farm).", show_default=False),
    ] = None,
    farm: FarmOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply the policies to the store every --interval seconds and soon after news (compare-and-set, logged), or once.

    One daemon acts per store; a second one waits as a hot standby. SIGTERM or Ctrl-C
    finishes the current cycle (for --stop-grace seconds at most: then its transaction
    rolls back), then exits 0. `corral pause` stops it applying anything.
    """
    from corral.cli.outbox_cmds import sinks_file
    from corral.daemon.courier import SinksFileError
    from corral.daemon.isolated import EngineCrashed
    from corral.daemon.logs import setup_logging
    from corral.daemon.service import AnotherDaemon, Daemon, DaemonConfig
    from corral.farms import BadFarmUrl
    from corral.ports import FarmUnreachable
    from corral.store.store import StoreError

    if engine not in ("durable", "reference"):
        fail(f"--engine must be durable or reference, not '{engine}'")
    if log_format not in ("human", "json"):
        fail(f"--log-format must be human or json, not '{log_format}'")
    level = (log_level or ("warning" if once else "info")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level must be debug, info, warning or error, not '{log_level}'")
    setup_logging(log_format, level)
    config = DaemonConfig(
        db_url=db_url(db), paths=[Path(p) for p in policy_paths(rules, only_rules)], overrides=parse_sets(sets),
        interval=interval, dry_run=dry_run, engine=engine, isolate=isolate, stop_grace=stop_grace,
        sinks_file=sinks_file(sinks, rules, only_rules), farm_url=farm, wake=wake, min_gap=min_gap,
    )
    try:
        daemon = Daemon(config)
    except SinksFileError as err:
        for line in err.errors:
            err_console.print(line, highlight=False, markup=False)
        fail(str(err))
    except BadFarmUrl as err:
        fail(str(err))
    if metrics_port is not None:
        try:
            port = daemon.metrics.serve(metrics_port, metrics_host)
        except OSError as err:
            daemon.close()
            fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: {err}")
        err_console.print(f"metrics on http://{metrics_host}:{port}/metrics", highlight=False, markup=False)
    if not once:
        daemon.run_forever()
        return
    try:
        result = daemon.run_once()
    except AnotherDaemon as err:
        daemon.close()
        fail(str(err), code=3)
    except (StoreError, EngineCrashed) as err:
        daemon.close()
        fail(str(err))
    except FarmUnreachable as err:
        daemon.close()
        fail(f"cannot read the farm manager: {err}; nothing was decided or applied")
    except Exception as err:
        daemon.close()
        fail(daemon.store.masked(f"cycle failed, nothing applied: {type(err).__name__}: {err}"))
    errors = daemon.watcher.errors
    delivery = daemon.last_delivery
    daemon.close()
    for error in errors:
        err_console.print(f"skipped: {error}", highlight=False, markup=False)
    report = result.report
    applied = len(report.applied) if report else 0
    audited = len(report.audited) if report else 0
    refused = report.refused if report else []
    if as_json:
        print_json({
            "cycle": result.cycle_id,
            "paused": result.paused,
            "planned": result.plan.to_json(),
            "applied": applied,
            "audited": audited,
            "refused": [{"action": str(r.proposal), "reason": r.reason} for r in refused],
            "skipped_files": sorted({e.pos.file for e in errors}),
            "timings": result.timings,
            "delivered": None if delivery is None else {
                "delivered": len(delivery.delivered), "refused": len(delivery.refused), "failed": len(delivery.failed),
                "dead": len(delivery.dead), "doubt": len(delivery.doubt), "waiting": delivery.waiting},
        })
        return
    state = " (paused: nothing applied)" if result.paused else ""
    console.print(
        f"cycle {result.cycle_id}{state}: {result.facts} facts, {result.matches} matches, "
        f"{applied} applied, {audited} audit-only, {len(refused)} refused"
    )
    for t in result.plan.transitions:
        verb = "would " if t.audit or result.paused else ""
        console.print(visible(f"  {t.policy}: {verb}{t.action} {t.kind} {t.ident} ({t.from_state} → {t.to_state}): "
                              f"{t.reason}"), highlight=False)
    for r in refused:
        console.print(visible(f"  refused: {r.proposal}: {r.reason}"), highlight=False)
    if delivery is not None:
        console.print(f"delivered {len(delivery.delivered)}, refused {len(delivery.refused)}, failed "
                      f"{len(delivery.failed) + len(delivery.dead)}; {delivery.waiting} waiting (`corral outbox`)")
        for entry, said in delivery.refused + delivery.failed + delivery.dead:
            console.print(visible(f"  {entry.describe()} to {entry.sink}: {said}"), highlight=False)


def sync(
    farm: Annotated[str, typer.Option("--farm", help="The farm manager: afanasy://HOST[:51000].")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Read the farm manager once and write what changed into the store (no policy runs).

    Changed rows only; an action corral queued but has not delivered yet is kept; a
    person's undo of corral's block is recorded (`corral history`)."""
    from corral.farm import utcnow
    from corral.farms import BadFarmUrl, open_farm
    from corral.ports import FarmUnreachable
    from corral.store.store import Store, StoreError

    try:
        reader = open_farm(farm)
    except BadFarmUrl as err:
        fail(str(err))
    try:
        now = utcnow()
        truth, problems = reader.read(now)
        with Store.open(db_url(db)) as store:
            report = store.sync_farm(truth, now=now, actor=reader.name, announce=True)
    except FarmUnreachable as err:
        fail(f"cannot read the farm manager: {err}; the store is unchanged")
    except StoreError as err:
        fail(str(err))
    finally:
        reader.close()
    if as_json:
        print_json({"jobs": len(truth.jobs), "workers": len(truth.workers), "inserted": report.inserted,
                    "updated": report.updated, "deleted": report.deleted, "runs": report.runs, "held": report.held,
                    "overridden": report.overridden, "problems": problems})
        return
    console.print(f"synced {len(truth.jobs)} jobs and {len(truth.workers)} workers from {reader.name}: "
                  f"{report.inserted} rows inserted, {report.updated} updated, {report.deleted} deleted, "
                  f"{report.runs} runs recorded")
    for line in report.held:
        console.print(visible(f"  kept as corral has it (an action on its way): {line}"), highlight=False)
    for line in report.overridden:
        console.print(visible(f"  a person overrode corral: {line}"), highlight=False)
    for line in problems:
        err_console.print(visible(f"  skipped: {line}"), highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(sync)
