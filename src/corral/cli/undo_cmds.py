"""`corral undo`: the inverse of what the policies applied in a window, planned, applied on --yes."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Annotated

import typer

from corral.cli.common import DbOption, JsonOption, console, db_url, fail, print_json
from corral.untrusted import visible


def undo(
    db: DbOption = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Only this policy's transitions.")] = None,
    cycle: Annotated[str | None, typer.Option("--cycle", help="Only this cycle's transitions.")] = None,
    since: Annotated[str, typer.Option("--since", help="From: a duration back from now (2h, 1d) or an ISO 8601 time.")
                     ] = "1h",
    until: Annotated[str | None, typer.Option("--until", help="Up to: a duration back from now or an ISO 8601 time "
                                              "(default: now).", show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Apply the undo (default: show it only).")] = False,
    detailed_exitcode: Annotated[bool, typer.Option(
        "--detailed-exitcode", help="Exit 2 when there is something to undo (0: nothing, 1: error).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Plan the inverse of what corral's policies applied in a window, newest first.

    Shown only, unless --yes: then applied with compare-and-set, logged with you as actor
    and each undone transition named, and delivered like any action. What moved since
    (the supervisor or a person changed it) or cannot be undone is left alone, with why."""
    from corral.cli.daemon_cmds import parse_since
    from corral.store.store import Store, StoreError
    from corral.undo import plan_undo

    now = datetime.now(UTC)
    start = parse_since(since, now)
    end = parse_since(until, now) if until else now
    if end < start:
        fail(f"--until ({end:%Y-%m-%d %H:%M}) is before --since ({start:%Y-%m-%d %H:%M})")
    try:
        with Store.open(db_url(db)) as store:
            rows = [r for r in store.transitions(policy=policy, since=start)
                    if r.at <= end and (cycle is None or r.cycle_id == cycle)]
            farm = store.read_farm()
            plan = plan_undo(farm, rows, now=now)
            report = None
            if yes and plan.proposals:
                undo_id = f"undo-{now:%Y%m%dT%H%M%S}"
                report = store.apply_transitions(farm, [p for _e, p in plan.proposals], now=now,
                                                 actor=f"user:{getpass.getuser()}", cycle_id=undo_id, announce=True)
    except StoreError as err:
        fail(str(err))
    refused = [(str(r.proposal), r.reason) for r in report.refused] if report else []
    if as_json:
        print_json({
            "undo": [{"transition": e.id, "at": e.at.isoformat(), "policy": e.policy, "undoes": f"{e.action} {e.kind} "
                      f"{e.entity_id}", "action": str(p.action), "applied": report is not None and
                      any(d.proposal is p for d in report.applied)} for e, p in plan.proposals],
            "skipped": [{"transition": e.id, "policy": e.policy, "what": f"{e.action} {e.kind} {e.entity_id}",
                         "why": why} for e, why in plan.skipped],
            "refused": [{"transition": w, "why": why} for w, why in refused],
        })
    else:
        if not plan.proposals:
            console.print("nothing to undo in that window" + (f" ({len(plan.skipped)} left alone)" if plan.skipped else ""))
        for entry, proposal in plan.proposals:
            verb = "" if report is not None else "would "
            console.print(visible(f"{verb}{proposal.action} {entry.kind} {entry.entity_id}: undoes {entry.action} by "
                                  f"policy {entry.policy} at {entry.at:%Y-%m-%d %H:%M:%S}"), highlight=False)
        for entry, why in plan.skipped:
            console.print(visible(f"  left alone: {entry.action} {entry.kind} {entry.entity_id} (policy {entry.policy}):"
                                  f" {why}"), highlight=False)
        for words, why in refused:
            console.print(visible(f"  refused: {words}: {why}"), highlight=False)
        if plan.proposals and report is None:
            console.print(f"{len(plan.proposals)} to undo: run again with --yes to apply")
    if refused:
        raise typer.Exit(1)
    raise typer.Exit(2 if detailed_exitcode and plan.proposals and report is None else 0)


def register(app: typer.Typer) -> None:
    app.command()(undo)
