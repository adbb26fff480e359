"""Commands that feed the supervisor's news into the store: `corral job submit`, `corral ingest`.

Both go through the Python API (`corral.api.Corral`), so the command line, a
supervisor plugin and an event stream write exactly the same rows.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Annotated

import typer
from pydantic import ValidationError

from corral.cli import farm_cmds
from corral.cli.common import DbOption, JsonOption, console, err_console, print_json
from corral.cli.farm_cmds import actor, fail, open_store
from corral.feed import SubmitState, event_json_schema
from corral.ingest import DEFAULT_BATCH, DEFAULT_MAX_WAIT, IngestReport, read_lines
from corral.snapshot import farm_to_snapshot
from corral.states import Kind
from corral.untrusted import visible

# --- corral job submit ---------------------------------------------------------------


def submit(
    name: Annotated[str, typer.Option("--name", "-n", help="The job's name.", show_default=False)],
    frames: Annotated[
        str, typer.Option("--frames", help="Frame numbers: 1-100, or ranges and lists like 1-10,20,30-40.", show_default=False)
    ],
    state: Annotated[
        SubmitState, typer.Option("--state", help="pending (may start at once) or blocked (held until unblocked).")
    ] = SubmitState.PENDING,
    depends_on: Annotated[
        list[int] | None,
        typer.Option("--depends-on", metavar="JOB", help="A job this one waits on (repeatable).", show_default=False),
    ] = None,
    retry_limit: Annotated[int, typer.Option("--retry-limit", min=0, help="Automatic retries allowed.")] = 0,
    priority: Annotated[int, typer.Option("--priority", help="Priority.")] = 50,
    job_id: Annotated[
        int | None, typer.Option("--id", min=0, help="The job's id (default: the next free one).", show_default=False)
    ] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Who submitted it (default: you).", show_default=False)] = None,
    layer: Annotated[
        list[str] | None,
        typer.Option("--layer", metavar="NAME=FRAMES", help="A layer (task type) and its frames, e.g. comp=101-110 "
                     "(repeatable).", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole job (snapshot format), not just its id.")] = False,
    db: DbOption = None,
) -> None:
    """Submit a job and print its id.

    A blocked job waits until unblocked (the built-in pack does it once its dependencies complete).
    """
    import getpass

    from corral.api import Corral, EventRejected

    layers: dict[str, str] = {}
    for item in layer or []:
        name_, sep, numbers = item.partition("=")
        if not sep or not name_.strip() or not numbers.strip():
            fail(f"--layer '{item}': write NAME=FRAMES, e.g. comp=101-110")
        layers[name_.strip()] = numbers.strip()
    with open_store(db) as store:
        corral = Corral(store, actor=actor())
        try:
            job = corral.submit_job(
                name,
                frames=frames,
                state=state,
                depends_on=depends_on or [],
                retry_limit=retry_limit,
                priority=priority,
                job_id=job_id,
                owner=owner if owner is not None else getpass.getuser(),
                layers=layers,
            )
        except ValidationError as err:
            fail("; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {_msg(e['msg'])}" for e in err.errors()))
        except EventRejected as err:
            fail(str(err).removeprefix("job_submitted: "))
    if as_json:
        from corral.farm import Farm

        print_json(farm_to_snapshot(Farm(jobs={job.id: job}))["jobs"][0])
    else:
        typer.echo(job.id)


def _msg(text: str) -> str:
    return text.removeprefix("Value error, ")


# --- corral ingest -----------------------------------------------------------------------


@contextmanager
def _stop_on_signals() -> Iterator[list[str]]:
    """SIGINT and SIGTERM ask the reader to stop (after committing what it has), once."""
    caught: list[str] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        caught.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ingest(
    file: Annotated[
        str, typer.Argument(metavar="[FILE|-]", help="JSON lines of supervisor events; - or nothing: standard input.")
    ] = "-",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep reading as the file grows (like tail -f) until SIGINT/SIGTERM.")
    ] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.01, help="Seconds between looks at a quiet file or pipe.")] = 1.0,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Lines per transaction (larger: fewer commits).")] = DEFAULT_BATCH,
    max_wait: Annotated[
        float, typer.Option("--max-wait", min=0.0, help="Seconds a line waits at most for its batch to fill.")
    ] = DEFAULT_MAX_WAIT,
    schema: Annotated[bool, typer.Option("--schema", help="Print the JSON Schema of one event line and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print every applied event.")] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Apply supervisor events (JSON lines, docs/ingest.md) in order; replayed events are skipped.

    A bad line is reported with its number and reason and changes nothing; the lines
    around it still apply.  Exit status 1 when any line was bad.
    """
    if schema:
        print_json(event_json_schema())
        return
    from corral.api import Corral

    source = "<stdin>" if file == "-" else file
    total = IngestReport()

    def report(part: IngestReport) -> None:
        for bad in part.bad:
            err_console.print(visible(f"{source}:{bad.line}: {bad.reason}"), highlight=False, soft_wrap=True)
        if verbose:
            for done in part.applied:
                change = f"; job {done.job_change[0]}: {done.job_change[1]} -> {done.job_change[2]}" if done.job_change else ""
                console.print(visible(f"{source}:{done.line}: {done.what}{change}"), highlight=False)

    with open_store(db) as store, _stop_on_signals() as caught:
        corral = Corral(store)
        stream = sys.stdin if file == "-" else _open(file)
        try:
            lines = read_lines(
                stream, follow=follow, path=None if file == "-" else file, poll=poll, stop=lambda: bool(caught)
            )
            total = corral.ingest(lines, batch=batch, on_batch=report, max_wait=max_wait)
        finally:
            if stream is not sys.stdin:
                stream.close()
    if as_json:
        print_json({"source": source, **total.to_json(), "stopped_by": caught[0] if caught else None})
    else:
        stopped = f" (stopped by {caught[0]})" if caught else ""
        (err_console if total.bad else console).print(f"{source}: {total.summary()}{stopped}", highlight=False, markup=False)
    if total.bad:
        raise typer.Exit(1)


def _open(file: str) -> IO[str]:
    try:
        return Path(file).open(encoding="utf-8", errors="replace")
    except OSError as err:
        fail(f"{file}: cannot read: {err.strerror}")


def register(app: typer.Typer) -> None:
    """`corral ingest`, and `corral job submit` in the job group farm_cmds made (register that first)."""
    app.command("ingest")(ingest)
    group = farm_cmds.GROUPS.get(Kind.JOB)
    if group is None:  # pragma: no cover - a wiring mistake in corral.cli
        raise RuntimeError("corral.cli.feed_cmds.register needs farm_cmds.register to run first")
    group.command("submit")(submit)

