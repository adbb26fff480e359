"""Options and output helpers shared by every command (defined once, reused)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from corral.store.engine import mask_secrets
from corral.untrusted import visible

DEFAULT_DB = "sqlite:///corral.db"

#: No markup is parsed unless a print asks for it (`markup=True`, on a string of the
#: command's own with anything else in it escaped): the farm's strings are shown as they
#: are, through `visible` (corral.untrusted), never read as markup.
console = Console(soft_wrap=True, markup=False)
err_console = Console(stderr=True, soft_wrap=True, markup=False)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="SQLAlchemy URL of the store (default: $CORRAL_DB, else sqlite:///corral.db in this folder).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def db_url(db: str | None) -> str:
    """--db, then $CORRAL_DB, then the embedded SQLite file."""
    return db or os.environ.get("CORRAL_DB") or DEFAULT_DB


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with a one-line error (no password of any connection string in it)."""
    err_console.print(f"[bold red]error:[/] {escape(visible(mask_secrets(message)))}", highlight=False, markup=True)
    raise typer.Exit(code)


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr while a long operation runs (nothing when stderr is not a
    terminal: a pipe or a log gets no bar codes); yields `advance(done, total)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not err_console.is_terminal:
        yield lambda done, total: None
        return
    bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console,
                   transient=True)
    task = bar.add_task(what, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def working(first: str) -> Iterator[Callable[[str], None]]:
    """A spinner with what is being done, on stderr while a long step runs (a million-frame
    load or dump takes a minute); yields `say(stage)` to name the next stage.  Nothing
    when stderr is not a terminal."""
    if not err_console.is_terminal:
        yield lambda stage: None
        return
    with err_console.status(first) as status:
        yield lambda stage: status.update(stage)
