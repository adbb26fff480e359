"""The `corral` command line.  Modules here hold commands and options only; the work
is done by the core and the store, so the CLI, the daemon and the Python API share it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import (
    daemon_cmds,
    demo_cmds,
    farm_cmds,
    feed_cmds,
    outbox_cmds,
    policy_cmds,
    run_cmds,
    trust_cmds,
    undo_cmds,
)

app = typer.Typer(
    name="corral",
    help="Auto-wrangling for render farms: YAML policies that block, retry and unblock so wranglers can sleep.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)


def version() -> str:
    """The installed distribution's version (the package's own when run from a source tree not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("corral")
    except PackageNotFoundError:
        from corral import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"corral {version()}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", help="Print corral's version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Options for every command (the help text is the app's)."""


farm_cmds.register(app)
policy_cmds.register(app)
run_cmds.register(app)
daemon_cmds.register(app)
feed_cmds.register(app)
trust_cmds.register(app)
demo_cmds.register(app)
outbox_cmds.register(app)
undo_cmds.register(app)


def main() -> None:
    """The console script: a store or database error anywhere ends the command with a
    one-line message, never a traceback."""
    from rich.markup import escape
    from sqlalchemy.exc import SQLAlchemyError

    from corral.cli.common import err_console
    from corral.store.engine import first_line, mask_secrets
    from corral.store.store import StoreError

    try:
        app()
    except (StoreError, SQLAlchemyError) as err:
        message = str(err) if isinstance(err, StoreError) else f"database error: {first_line(err)}"
        err_console.print(f"[bold red]error:[/] {escape(mask_secrets(message))}", highlight=False, markup=True)
        raise SystemExit(1) from None
