"""Commands that let a wrangler trust the automaton: corral test, explain, replay."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from corral.cli.common import DbOption, JsonOption, console, db_url, err_console, fail, print_json, progress_bar
from corral.cli.policy_cmds import OnlyRulesOption, RulesOption, SetOption, load_or_fail, parse_now
from corral.states import Kind
from corral.untrusted import visible

if TYPE_CHECKING:
    from corral.farm import Farm

SnapshotOption = Annotated[
    Path | None, typer.Option("--snapshot", help="Read the farm from a snapshot file instead of the store.")
]
NowOption = Annotated[str | None, typer.Option("--now", help="Evaluate as of this ISO 8601 time (default: now).")]
EngineOption = Annotated[str, typer.Option("--engine", help="durable (default, as in production) or reference.")]


def _say(line: str) -> None:
    console.print(visible(line), highlight=False)


def _engine(engine: str) -> str:
    if engine not in ("durable", "reference"):
        fail(f"--engine must be durable or reference, not '{engine}'")
    return engine


def _read_farm(snapshot: Path | None, db: str | None) -> tuple[Farm, str | None]:
    """The farm from a snapshot or the store; the store URL too when it came from one."""
    if snapshot is not None:
        from corral.snapshot import SnapshotError, load_snapshot_file

        try:
            return load_snapshot_file(snapshot), None
        except SnapshotError as err:
            for line in err.errors:
                err_console.print(line, highlight=False, markup=False)
            fail(f"{snapshot}: not a valid snapshot")
    from corral.store.store import Store, StoreError

    url = db_url(db)
    try:
        with Store.open(url) as store:
            return store.read_farm(), url
    except StoreError as err:
        fail(str(err))


def _last_actions(url: str, since: datetime) -> dict[tuple[str, str, str], datetime]:
    from corral.store.store import Store

    with Store.open(url) as store:
        raw = store.last_actions(since)
    return {(p, k, i): at for (p, k, i), at in raw.items() if p is not None}


# --- corral test ------------------------------------------------------------------------------


def test(
    paths: Annotated[list[Path] | None, typer.Argument(help="Test files or folders (default: the built-in pack).")] = None,
    init: Annotated[str | None, typer.Option("--init", help="Write a starter test for this policy.", show_default=False)] = None,
    snapshot: SnapshotOption = None,
    db: DbOption = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="With --init: write here (default: stdout).")] = None,
    rules: RulesOption = None,
    only_rules: OnlyRulesOption = False,
    sets: SetOption = None,
    now: NowOption = None,
    engine: EngineOption = "durable",
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show every step, not only failures.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run policy tests (*.test.yaml): a line per case, a diff per failure, `N passed, N failed` last. Exit 1 on any failure.

    With --init POLICY: write a starter test from the store (or --snapshot): the farm trimmed
    to what the policy touches plus a few untouched entities, and today's plan as expectations.
    """
    _engine(engine)
    if init is not None:
        _init(init, snapshot, db, output, rules, only_rules, sets, now, engine)
        return
    from corral.policy.loader import builtin_dir
    from corral.policytest import render, result_json, run_tests

    result = run_tests(paths or [builtin_dir()], engine=engine)
    if as_json:
        print_json(result_json(result))
    else:
        for line in render(result, verbose=verbose):
            _say(line)
    if not result.ok:
        raise typer.Exit(1)


def _init(
    name: str, snapshot: Path | None, db: str | None, output: Path | None, rules: list[Path] | None,
    only_rules: bool, sets: list[str] | None, now: str | None, engine: str,
) -> None:
    import difflib
    import os

    from corral.policytest import init_test

    loaded = load_or_fail(rules, only_rules, sets)
    policy = next((p for p in loaded.policies if p.name == name), None)
    if policy is None:
        close = difflib.get_close_matches(name, [p.name for p in loaded.policies], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else " (see `corral check` for the loaded policies)"
        fail(f"no loaded policy is named '{name}'{hint}")
    when = parse_now(now) or datetime.now(UTC)
    farm, url = _read_farm(snapshot, db)
    history = {}
    if url is not None and policy.cooldown:
        from datetime import timedelta

        history = _last_actions(url, when - timedelta(seconds=policy.cooldown))
    source = policy.source.file if policy.source else None
    rules_ref = None
    if source:
        base = output.resolve().parent if output else Path.cwd()
        rules_ref = os.path.relpath(Path(source).resolve(), base)
    text = init_test(policy, farm, now=when, history=history, rules=rules_ref, engine=engine)
    if output is None:
        typer.echo(text, nl=False)
        return
    if output.exists():
        fail(f"{output} exists already; choose another -o, or delete it first")
    output.write_text(text, encoding="utf-8")
    err_console.print(f"wrote {output}: run it with `corral test {output}`", highlight=False, markup=False)


# --- corral explain -------------------------------------------------------------------------


def explain(
    kind: Annotated[Kind, typer.Argument(help="job, frame, instance or worker.")],
    ident: Annotated[str, typer.Argument(metavar="ID", help="Job number, JOB:FRAME, instance id or host name.")],
    snapshot: SnapshotOption = None,
    db: DbOption = None,
    rules: RulesOption = None,
    only_rules: OnlyRulesOption = False,
    sets: SetOption = None,
    now: NowOption = None,
    engine: EngineOption = "durable",
    history: Annotated[int, typer.Option("--history", help="How many logged transitions to show (with the store).")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Why would (or wouldn't) each policy act on this entity? Condition by condition, then the planner's verdict."""
    from corral.explain import UnknownEntity, entity_history, render
    from corral.explain import explain as do_explain

    _engine(engine)
    loaded = load_or_fail(rules, only_rules, sets)
    when = parse_now(now) or datetime.now(UTC)
    farm, url = _read_farm(snapshot, db)
    last = {}
    if url is not None:
        from corral.policyset import PolicySet

        last = _last_actions(url, when - PolicySet(loaded.policies).history_window)
    try:
        result = do_explain(farm, loaded.policies, kind, ident, now=when, last_actions=last, engine=engine)
    except UnknownEntity as err:
        fail(str(err))
    if url is not None:
        from corral.store.store import Store

        with Store.open(url) as store:
            result.history = entity_history(store, result.kind, result.ident, history)
    if as_json:
        print_json(result.to_json())
        return
    for line in render(result):
        _say(line)


# --- corral replay --------------------------------------------------------------------------


def replay(
    db: DbOption = None,
    rules: RulesOption = None,
    only_rules: OnlyRulesOption = False,
    sets: SetOption = None,
    since: Annotated[str | None, typer.Option("--since", help="Only cycles at or after this ISO 8601 time.")] = None,
    engine: EngineOption = "durable",
    examples: Annotated[int, typer.Option("--examples", help="Examples shown per policy and direction.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """Re-run policies over the store's recorded cycles; per policy, the actions added and removed. Writes nothing."""
    from corral.replay import render
    from corral.replay import replay as do_replay
    from corral.store.store import Store, StoreError

    _engine(engine)
    loaded = load_or_fail(rules, only_rules, sets)
    start = parse_now(since) if since else None
    try:
        with Store.open(db_url(db)) as store, progress_bar("replaying cycles") as advance:
            report = do_replay(store, loaded.policies, since=start, engine=engine, progress=advance)
    except StoreError as err:
        fail(str(err))
    if as_json:
        print_json(report.to_json(examples))
        return
    for line in render(report, examples):
        _say(line)


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the app."""
    app.command()(test)
    app.command()(explain)
    app.command()(replay)
