"""Commands on the farm store: db init, load, dump, status, and the manual actions.

The manual actions (`corral job block 12`, `corral frame retry 12:3`, ...) are
generated from `corral.states.RULES`: every action the state model allows on a kind
gets a command, with the options its parameters need, and nothing else does.  They go
through the same compare-and-set applier as the daemon and are logged with the OS
user as actor.
"""

from __future__ import annotations

import getpass
import inspect
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from corral.actions import REGISTRY, Param
from corral.cli import tables
from corral.cli.common import DbOption, JsonOption, console, db_url, err_console, print_json, working
from corral.farm import Farm, utcnow
from corral.snapshot import SnapshotError, farm_to_snapshot, load_snapshot_file
from corral.states import RULES, Action, FrameState, Kind, actions_for
from corral.store import Proposal, Store, StoreError
from corral.store.engine import describe, mask_secrets
from corral.untrusted import visible


class Format(StrEnum):
    YAML = "yaml"
    JSON = "json"


ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why: kept in the transition log.")]

#: How the id of each kind is written on the command line.
_METAVAR = {Kind.JOB: "JOB", Kind.FRAME: "JOB:FRAME", Kind.INSTANCE: "ID", Kind.WORKER: "NAME"}


def actor() -> str:
    """Who a manual action is logged as: the OS user."""
    return f"user:{getpass.getuser()}"


def fail(message: str) -> NoReturn:
    """Like `common.fail`, but never wraps or reads markup: messages hold paths like jobs[0].id."""
    err_console.print(f"[bold red]error:[/] {escape(visible(mask_secrets(message)))}", soft_wrap=True, markup=True)
    raise typer.Exit(1)


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


@contextmanager
def open_store(db: str | None, *, check: bool = True) -> Iterator[Store]:
    """A store for one command; store and database errors end the command cleanly."""
    store = Store.open(db_url(db))
    try:
        if check:
            store.check()
        yield store
    except StoreError as err:
        fail(str(err))
    except SQLAlchemyError as err:
        fail(store.explain(err))
    finally:
        store.close()


# --- db, load, dump, status ----------------------------------------------------------


def db_init(db: DbOption = None) -> None:
    """Create or upgrade the store's tables (harmless to run again)."""
    with open_store(db, check=False) as store, working("creating or upgrading the schema (migrations)"):
        revision = store.init()
    console.print(f"database {describe(store.url)} is ready (schema {revision})")


def load(
    file: Annotated[Path, typer.Argument(help="Snapshot file, YAML or JSON (see docs/snapshot.md).")],
    replace: Annotated[bool, typer.Option("--replace", help="Empty the farm first (the log is kept).")] = False,
    db: DbOption = None,
) -> None:
    """Load a farm snapshot.  A bad file loads nothing and lists every error."""
    with working(f"reading {file}") as say:
        try:
            farm = load_snapshot_file(file)
        except SnapshotError as err:
            say("")
            for line in err.errors:
                err_console.print(visible(line), highlight=False, soft_wrap=True)
            fail(f"{file}: {len(err.errors)} error(s); nothing was loaded")
        frames = sum(len(j.frames) for j in farm.jobs.values())
        say(f"writing {len(farm.jobs)} job(s) and {frames} frame(s) to the store")
        with open_store(db) as store:
            store.load_farm(farm, replace=replace)
    frames = sum(len(j.frames) for j in farm.jobs.values())
    console.print(f"loaded {len(farm.jobs)} job(s), {frames} frame(s), {len(farm.workers)} worker(s) from {file}")


def dump(
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.YAML,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    db: DbOption = None,
) -> None:
    """Write the whole farm as a snapshot that `corral load` reads back."""
    with working("reading the store") as say:
        with open_store(db) as store:
            data = farm_to_snapshot(store.read_farm())
        say(f"writing the snapshot as {fmt.value}")
        text = json.dumps(data, indent=2) + "\n" if fmt is Format.JSON else yaml.safe_dump(data, sort_keys=False)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"wrote {output}")


def job_summaries(farm: Farm) -> list[dict[str, Any]]:
    """One line per job with its frame counts by state (every state, zeros included)."""
    out = []
    for job in sorted(farm.jobs.values(), key=lambda j: j.id):
        counts = Counter(str(f.state) for f in job.frames.values())
        out.append(
            {
                "id": job.id,
                "name": job.name,
                "state": str(job.state),
                "priority": job.priority,
                "frames": {s.value: counts.get(s.value, 0) for s in FrameState},
            }
        )
    return out


#: Column headings of the frame counts, short enough for an 80-column terminal.
_SHORT = {
    FrameState.PENDING: "pend",
    FrameState.BLOCKED: "blkd",
    FrameState.RUNNING: "run",
    FrameState.COMPLETE: "done",
    FrameState.FAILED: "fail",
    FrameState.KILLED: "kill",
}


#: The status table's columns: a job's id, state, priority and counts are never cut; its
#: name gives way (an ellipsis), down to 8 characters before a job per block is shown.
STATUS_COLUMNS = (
    tables.fixed("id", right=True),
    tables.elastic("name", min_width=8),
    tables.fixed("state"),
    tables.fixed("prio", label="priority", right=True),
    *(tables.fixed(_SHORT[state], label=state.value, right=True, zero="·") for state in FrameState),
)


def status(as_json: JsonOption = False, db: DbOption = None) -> None:
    """Jobs with their state, priority and frame counts.
    A table when the pane is wide enough (a long name is cut with an ellipsis; ids,
    states and counts never are), one block per job when it is not, and one line per job
    (key=value, nothing cut) when piped; set COLUMNS to get the table in a pipe."""
    with open_store(db) as store:
        rows = job_summaries(store.read_farm())
        paused = store.paused()
    if as_json:
        print_json(rows)
        return
    if paused:
        console.print("[bold yellow]corral is paused:[/] cycles run and report, nothing is applied (`corral resume`)",
                      markup=True)
    tables.show(STATUS_COLUMNS, [(r["id"], r["name"], r["state"], r["priority"], *r["frames"].values()) for r in rows],
                console=console, title="jobs", caption="frames: pending, blocked, running, complete, failed, killed")


# --- manual actions, generated from the state model ------------------------------------


def run_action(kind: Kind, action: Action, ident: str, params: dict[str, Any], reason: str, db: str | None) -> None:
    """Apply one manual action; an illegal or stale one prints why and changes nothing."""
    with open_store(db) as store:
        farm = store.read_farm()
        proposal = Proposal(kind, ident, action, params, reason=reason)
        report = store.apply_transitions(farm, [proposal], now=utcnow(), actor=actor(), announce=True)
    if report.refused:
        fail(report.refused[0].reason)
    done = report.applied[0]
    console.print(f"{kind} {visible(done.entity_id)}: {done.from_state} -> {done.to_state}", highlight=False)
    if done.job_change is not None:
        job, old, new = done.job_change
        console.print(f"job {job}: {old} -> {new}", highlight=False)
    others = [t for t in done.touched if t != f"{kind} {done.entity_id}"]
    if others:
        console.print(f"also changed: {visible(', '.join(others))}", highlight=False)


def _param(param: Param) -> inspect.Parameter:
    flag = "--" + param.name.replace("_", "-")
    if param.type is bool:
        annotation: Any = Annotated[bool, typer.Option(flag, help=param.help)]
        return inspect.Parameter(param.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=False)
    annotation = Annotated[param.type | None, typer.Option(flag, help=param.help)]
    return inspect.Parameter(param.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=None)


def make_action_command(kind: Kind, action: Action) -> Callable[..., None]:
    """A Typer command for (kind, action) whose options are the action's parameters."""
    params = REGISTRY[action].params_for(kind)
    names = [p.name for p in params]
    metavar = _METAVAR[kind]

    def command(**kwargs: Any) -> None:
        params = {n: kwargs[n] for n in names if kwargs[n] not in (None, False)}
        run_action(kind, action, str(kwargs["ident"]), params, kwargs["reason"], kwargs["db"])

    parameters = [
        inspect.Parameter(
            "ident",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[str, typer.Argument(metavar=metavar, help=f"The {kind} ({metavar}).")],
        ),
        *(_param(p) for p in params),
        inspect.Parameter("reason", inspect.Parameter.KEYWORD_ONLY, annotation=ReasonOption, default=""),
        inspect.Parameter("db", inspect.Parameter.KEYWORD_ONLY, annotation=DbOption, default=None),
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__name__ = f"{kind}_{action}"
    rule = RULES[(kind, action)]
    command.__doc__ = f"{action.capitalize()} {_a(kind)}: {rule.meaning} (from {', '.join(sorted(rule.moves))})."
    return command


#: The `corral job`, `corral frame`, ... groups, by kind, once `register` made them:
#: other modules add commands to them (feed_cmds adds `corral job submit`).
GROUPS: dict[Kind, typer.Typer] = {}


def register(app: typer.Typer) -> None:
    """Add the store commands and one group per kind of entity with its actions."""
    db = typer.Typer(help="The store's database.", no_args_is_help=True)
    db.command("init")(db_init)
    app.add_typer(db, name="db")
    app.command("load")(load)
    app.command("dump")(dump)
    app.command("status")(status)
    for kind in Kind:
        group = typer.Typer(help=f"Manual actions on {_a(kind)} (logged with you as actor).", no_args_is_help=True)
        for action in actions_for(kind):
            group.command(action.value)(make_action_command(kind, action))
        app.add_typer(group, name=kind.value)
        GROUPS[kind] = group
