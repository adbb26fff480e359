"""Commands on policies: check, schema, fields, plan (the dry run)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from corral.cli.common import DbOption, JsonOption, console, db_url, err_console, fail, print_json
from corral.policy.loader import LoadResult, builtin_dir, load_paths
from corral.states import Kind
from corral.untrusted import visible

RulesOption = Annotated[
    list[Path] | None,
    typer.Option("--rules", "-r", help="Policy file or folder to add (repeatable).", show_default=False),
]
OnlyRulesOption = Annotated[
    bool, typer.Option("--only-rules", help="Use only the --rules given, not the built-in pack.")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a policy parameter: POLICY.PARAM=VALUE (repeatable).", show_default=False),
]


def parse_sets(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """`--set retry-failed-jobs.delay=10m` -> {"retry-failed-jobs": {"delay": "10m"}}; values are YAML scalars."""
    import yaml

    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for item in items or []:
        target, eq, raw = item.partition("=")
        policy, dot, param = target.rpartition(".")
        if not eq or not dot or not policy or not param:
            fail(f"--set '{item}': write POLICY.PARAM=VALUE, e.g. --set retry-failed-jobs.delay=10m")
        out[policy][param] = yaml.safe_load(raw) if raw.strip() else ""
    return dict(out)


def policy_paths(rules: list[Path] | None, only_rules: bool) -> list[Path]:
    paths = [] if only_rules else [builtin_dir()]
    paths.extend(rules or [])
    if not paths:
        fail("--only-rules needs at least one --rules PATH")
    return paths


def load_or_fail(rules: list[Path] | None, only_rules: bool, sets: list[str] | None) -> LoadResult:
    result = load_paths(policy_paths(rules, only_rules), parse_sets(sets))
    option = [e for e in result.errors if e.pos.file == "--set"]
    files = [e for e in result.errors if e.pos.file != "--set"]
    for error in files:
        err_console.print(str(error), highlight=False, markup=False)
    if files:
        fail(f"{len(files)} error(s) in policy files; fix them or check with `corral check`")
    if option:
        for error in option:
            err_console.print(f"--set: {error.message}", highlight=False, markup=False)
        hint = "" if rules else " (a policy of your own is loaded with --rules FOLDER)"
        fail(f"the --set option names what is not loaded{hint}; `corral check` lists the loaded policies")
    return result


def parse_now(now: str | None) -> datetime | None:
    if now is None:
        return None
    try:
        value = datetime.fromisoformat(now)
    except ValueError:
        fail(f"--now '{now}' is not an ISO 8601 time such as 2026-11-28T02:00:00Z")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def check(
    paths: Annotated[list[Path] | None, typer.Argument(help="Policy files or folders (default: the built-in pack).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Validate policy files and the sinks file beside them: every error at file:line:column.

    All errors at once; exit 1 on any. A folder's sinks.yaml is checked with its policies."""
    from corral.policy.loader import SINKS_FILES
    from corral.sinks.config import SinksResult, find_sinks_file, load_sinks

    given = paths or [builtin_dir()]
    policy_args = [p for p in given if p.name not in SINKS_FILES or p.is_dir()]
    sinks_path = next((p for p in given if p.name in SINKS_FILES and p.is_file()), None) or find_sinks_file(given)
    result = load_paths(policy_args) if policy_args else LoadResult()
    sinks = load_sinks(sinks_path) if sinks_path else SinksResult(None)
    warnings = ([str(w) for w in result.warnings] + [str(w) for w in sinks.warnings]
                + (_undeliverable(result, sinks) if sinks.config else []))
    errors = result.errors + sinks.errors
    ok = not errors
    if as_json:
        print_json({
            "ok": ok,
            "files": result.files + ([str(sinks_path)] if sinks_path else []),
            "policies": [p.name for p in result.policies],
            "sinks": [s.name for s in sinks.config.sinks] if sinks.config else [],
            "errors": [{"file": e.pos.file, "line": e.pos.line, "column": e.pos.column, "message": e.message}
                       for e in errors],
            "warnings": warnings,
        })
    else:
        for error in errors:
            console.print(str(error), highlight=False, markup=False)
        for warning in warnings:
            console.print(f"warning: {warning}", highlight=False, markup=False)
        sink_note = f" and {len(sinks.config.sinks)} sink(s) in {sinks_path}" if sinks.config else ""
        if ok:
            console.print(f"ok: {len(result.policies)} policies in {len(result.files)} file(s){sink_note}")
        elif not result.files and not sinks_path:
            console.print(f"{len(errors)} error(s); no policy file was found")
        else:
            bad = len(result.bad_files) + (1 if sinks.errors else 0)
            console.print(f"{len(errors)} error(s) in {bad} of {len(result.files) + (1 if sinks_path else 0)} file(s)")
    if not ok:
        raise typer.Exit(1)


def _undeliverable(result: LoadResult, sinks: Any) -> list[str]:
    """Policies whose actions no configured sink can carry: they would change only corral's store."""
    from corral.sinks.config import build_sinks, routes_of

    try:
        routes = routes_of(sinks.config, build_sinks(sinks.config))
    except Exception as err:  # a studio's sink that cannot even be built: said, not a traceback
        return [f"the sinks could not be built to check what they carry: {type(err).__name__}: {err}"]
    if not routes:
        return []
    out = []
    for policy in result.policies:
        for spec in policy.actions:
            if not any(r.takes(policy.kind, spec.action) for r in routes):
                out.append(f"{policy.source or policy.name}: policy {policy.name}: no sink delivers "
                           f"{spec.action} {policy.kind}; it would change only corral's store")
    return out


def schema(
    sinks: Annotated[bool, typer.Option("--sinks", help="The sinks file's schema instead (sinks.yaml).")] = False,
    tests: Annotated[bool, typer.Option("--tests", help="The policy test files' schema instead (*.test.yaml).")] = False,
) -> None:
    """Print the JSON Schema of policy files (or sinks.yaml, or *.test.yaml), for editors.

    docs/editors.md says how to point VS Code's YAML extension (or any editor using
    yaml-language-server) at it."""
    if sinks and tests:
        fail("--sinks and --tests print different schemas: give one")
    if sinks:
        from corral.sinks.config import json_schema

        print_json(json_schema())
        return
    if tests:
        from corral.policytest.schema import policytest_json_schema

        print_json(policytest_json_schema())
        return
    from corral.policy.schema import policy_json_schema

    print_json(policy_json_schema())


def fields(
    kind: Annotated[Kind | None, typer.Argument(help="job, frame, instance or worker (default: all).")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the fact fields a policy can test, with their types and meanings."""
    from corral.facts import FIELDS

    kinds = [kind] if kind else list(Kind)
    if as_json:
        print_json({str(k): {n: {"type": s.type, "doc": s.doc, **({"states": list(s.states)} if s.states else {})}
                             for n, s in FIELDS[k].items()} for k in kinds})
        return
    for k in kinds:
        table = Table(title=f"{k} fields", title_justify="left")
        table.add_column("field", style="cyan")
        table.add_column("type")
        table.add_column("meaning")
        for name, spec in FIELDS[k].items():
            table.add_row(name, spec.type, spec.doc + (f" ({', '.join(spec.states)})" if spec.states else ""))
        console.print(table)


def plan(
    rules: RulesOption = None,
    only_rules: OnlyRulesOption = False,
    snapshot: Annotated[
        Path | None, typer.Option("--snapshot", help="Evaluate a snapshot file instead of the store.")
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
    sets: SetOption = None,
    now: Annotated[str | None, typer.Option("--now", help="Evaluate as of this ISO 8601 time (default: now).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="durable (default) or reference.")] = "durable",
    show_skipped: Annotated[bool, typer.Option("--skipped", help="Also list matches that were skipped, and why "
                                                "(with --json: an object with transitions and skipped).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Save the plan to FILE, for `corral apply FILE` "
                                             "to apply exactly it.", show_default=False)] = None,
    detailed_exitcode: Annotated[bool, typer.Option(
        "--detailed-exitcode", help="Exit 2 when the plan holds transitions (0: nothing to do, 1: error).")] = False,
) -> None:
    """Dry run: show what the policies would do, without doing it.

    Exit status: 0 on success, 1 on error; with --detailed-exitcode, 2 when the plan holds
    transitions (as terraform plan does).
    """
    from corral.cycle import plan_farm, run_cycle
    from corral.policyset import PolicySet
    from corral.session import Session

    if engine not in ("durable", "reference"):
        fail(f"--engine must be durable or reference, not '{engine}'")
    loaded = load_or_fail(rules, only_rules, sets)
    policy_set = PolicySet(loaded.policies, loaded.classes)
    when = parse_now(now)
    if snapshot is not None and out is not None:
        fail("--out saves a plan of the store, to apply to it; a snapshot's plan cannot be applied")
    if snapshot is not None:
        from corral.snapshot import SnapshotError, load_snapshot_file

        try:
            farm = load_snapshot_file(snapshot)
        except SnapshotError as err:
            for line in err.errors:
                err_console.print(line, highlight=False, markup=False)
            fail(f"{snapshot}: not a valid snapshot")
        except OSError as err:
            fail(f"cannot read {snapshot}: {err}")
        result_plan, _ = plan_farm(farm, policy_set, now=when or datetime.now(UTC), engine=engine)
    else:
        from corral.store.store import Store, StoreError

        try:
            with Store.open(db_url(db)) as store:
                if out is None:
                    result_plan = run_cycle(store, Session(policy_set, engine=engine), commit=False, now=when).plan
                else:
                    result_plan = _save_plan(store, policy_set, when or datetime.now(UTC), engine, out)
        except StoreError as err:
            fail(str(err))
    if as_json:
        print_json({"transitions": result_plan.to_json(), "skipped": [s.to_json() for s in result_plan.skipped],
                    "notes": result_plan.notes} if show_skipped else result_plan.to_json())
    else:
        _print_plan(result_plan, show_skipped)
        if out is not None:
            enforced = len(result_plan.enforced)
            err_console.print(f"saved {enforced} transition(s) to {out}: `corral apply {out}` applies exactly them",
                              highlight=False, markup=False)
    raise typer.Exit(2 if detailed_exitcode and result_plan.transitions else 0)


def _save_plan(store: Any, policy_set: Any, when: datetime, engine: str, out: Path) -> Any:
    """A plan made on a whole read of the store (the farm it was made on is the one whose
    row versions it records), with the store's cooldowns, written to `out`."""
    import json

    from corral import planfile
    from corral.cycle import plan_farm
    from corral.store.engine import describe

    farm = store.read_farm()
    acted = store.last_actions(when - policy_set.history_window)
    result, _ = plan_farm(farm, policy_set, now=when, engine=engine, last_actions=acted)
    content = planfile.save(result, farm, now=when, store=describe(store.url))
    try:
        out.write_text(json.dumps(content, indent=1) + "\n")
    except OSError as err:
        fail(f"cannot write {out}: {err.strerror or err}")
    return result


def apply(
    file: Annotated[Path, typer.Argument(help="A plan saved by `corral plan -o FILE`.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply a plan saved by `corral plan -o FILE`, exactly as it was planned.

    A transition whose rows moved since it was planned is refused, and said why; the rest
    are applied with compare-and-set, logged with you as actor and the plan's id as cycle,
    and delivered like any action. Exit 1 if any was refused."""
    import getpass

    from corral import planfile
    from corral.store.engine import describe
    from corral.store.store import Store, StoreError

    try:
        data = planfile.load(file.read_text(), str(file))
    except OSError as err:
        fail(f"cannot read {file}: {err.strerror or err}")
    except planfile.PlanFileError as err:
        fail(str(err))
    try:
        with Store.open(db_url(db)) as store:
            farm = store.read_farm()
            try:
                checked = planfile.check(data, farm, store=describe(store.url))
            except planfile.PlanFileError as err:
                fail(str(err))
            report = store.apply_transitions(farm, checked.proposals, now=datetime.now(UTC),
                                             actor=f"user:{getpass.getuser()}", cycle_id=checked.id, announce=True)
    except StoreError as err:
        fail(str(err))
    refused = [(words, why) for words, why in checked.moved] + [(str(r.proposal), r.reason) for r in report.refused]
    if as_json:
        print_json({"plan": checked.id, "applied": [str(d.proposal) for d in report.applied],
                    "refused": [{"transition": w, "why": why} for w, why in refused]})
    else:
        console.print(f"plan {checked.id}: {len(report.applied)} applied, {len(refused)} refused")
        for d in report.applied:
            console.print(visible(f"  {d.proposal}: {d.from_state} → {d.to_state}"), highlight=False)
        for words, why in refused:
            console.print(visible(f"  refused: {words}: {why}"), highlight=False)
    if refused:
        raise typer.Exit(1)


def _print_plan(result: Any, show_skipped: bool) -> None:
    if not result.transitions:
        console.print("Nothing to do: no policy would change anything.")
    elif console.width < 120:
        # A table with a readable reason column needs a wide terminal: list instead.
        console.print("Planned transitions (dry run: nothing was changed)")
        for policy in sorted({t.policy for t in result.transitions}):
            console.print(f"[bold]{escape(policy)}[/]", highlight=False, markup=True)
            for t in (t for t in result.transitions if t.policy == policy):
                would = "would " if t.audit else ""
                console.print(f"  {would}{t.action} {t.kind} {visible(t.ident)}: {t.from_state} → {t.to_state}",
                              highlight=False)
                console.print(f"      {visible(t.reason)}", highlight=False)
        audit = sum(1 for t in result.transitions if t.audit)
        console.print(f"{len(result.transitions)} transition(s)" + (f", {audit} in audit mode (reported only)" if audit else ""))
    else:
        table = Table(title="Planned transitions (dry run: nothing was changed)", title_justify="left")
        for col in ("policy", "kind", "id", "action", "from → to"):
            table.add_column(col, no_wrap=True)
        table.add_column("reason", overflow="fold", ratio=1)
        last = None
        for t in sorted(result.transitions, key=lambda t: (t.policy, str(t.kind))):
            would = "would " if t.audit else ""
            table.add_row(
                t.policy if t.policy != last else "", str(t.kind), visible(t.ident), would + str(t.action),
                f"{t.from_state} → {t.to_state}", visible(t.reason),
            )
            last = t.policy
        console.print(table)
        audit = sum(1 for t in result.transitions if t.audit)
        console.print(f"{len(result.transitions)} transition(s)" + (f", {audit} in audit mode (reported only)" if audit else ""))
    for name, note in sorted(result.notes.items()):
        console.print(f"[yellow]{escape(name)}[/]: {escape(visible(note))}", highlight=False, markup=True)
    skipped = result.skipped  # made anew on each access (Plan.held): once
    if skipped:
        counts: dict[str, int] = defaultdict(int)
        for s in skipped:
            counts[s.category] += 1
        summary = ", ".join(f"{n} {c}" for c, n in sorted(counts.items()))
        if show_skipped:
            table = Table(title="Skipped", title_justify="left")
            for col in ("policy", "kind", "id", "action", "why"):
                table.add_column(col, overflow="fold")
            for s in skipped:
                table.add_row(s.policy, str(s.kind), visible(s.ident), s.action, visible(f"{s.category}: {s.why}"))
            console.print(table)
        else:
            console.print(f"skipped: {summary} (--skipped lists them)")


def register(app: typer.Typer) -> None:
    app.command()(check)
    app.command()(schema)
    app.command()(fields)
    app.command()(plan)
    app.command()(apply)



