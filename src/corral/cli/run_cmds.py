"""`corral run`: apply the policies to the store (one cycle with --once)."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli.common import DbOption, JsonOption, console, db_url, err_console, fail, print_json
from corral.cli.policy_cmds import OnlyRulesOption, RulesOption, SetOption, parse_sets, policy_paths
from corral.policy.loader import load_paths


def run(
    rules: RulesOption = None,
    only_rules: OnlyRulesOption = False,
    db: DbOption = None,
    sets: SetOption = None,
    once: Annotated[bool, typer.Option("--once", help="Run exactly one cycle and exit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Treat every policy as audit: log, apply nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Evaluate the policies against the store and apply the plan (compare-and-set, logged)."""
    from corral.cycle import PolicySet, run_cycle
    from corral.store.store import Store, StoreError

    if not once:
        fail("only --once is available in this build; schedule `corral run --once` from cron meanwhile")
    loaded = load_paths(policy_paths(rules, only_rules), parse_sets(sets))
    for error in loaded.errors:
        err_console.print(f"skipped: {error}", highlight=False, markup=False)
    policies = loaded.policies
    if dry_run:
        from dataclasses import replace

        policies = [replace(p, mode="audit") for p in policies]
    try:
        with Store.open(db_url(db)) as store:
            result = run_cycle(store, PolicySet(policies), commit=True)
    except StoreError as err:
        fail(str(err))
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
            "skipped_files": loaded.bad_files,
        })
        return
    state = " (paused: nothing applied)" if result.paused else ""
    console.print(
        f"cycle {result.cycle_id}{state}: {result.facts} facts, {result.matches} matches, "
        f"{applied} applied, {audited} audit-only, {len(refused)} refused"
    )
    for t in result.plan.transitions:
        verb = "would " if t.audit or result.paused else ""
        console.print(f"  {t.policy}: {verb}{t.action} {t.kind} {t.ident} ({t.from_state} → {t.to_state}): {t.reason}",
                      highlight=False, markup=False)
    for r in refused:
        console.print(f"  refused: {r.proposal}: {r.reason}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command()(run)
