"""Commands on deliveries: `corral outbox` (list, retry, drop) and `corral deliver`."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from corral.cli import tables
from corral.cli.common import DbOption, JsonOption, console, db_url, err_console, fail, print_json
from corral.cli.policy_cmds import OnlyRulesOption, RulesOption, policy_paths
from corral.untrusted import visible

if TYPE_CHECKING:
    from corral.outbox import Entry
    from corral.store.store import Store

SinksOption = Annotated[
    Path | None,
    typer.Option("--sinks", help="The sinks file (default: sinks.yaml in a --rules folder).", show_default=False),
]

OUTBOX_SHORT = "The outbox: corral's actions on their way to the farm manager."
#: What `corral outbox --help` shows (Typer shows this, not the callback's docstring).
OUTBOX_HELP = (f"{OUTBOX_SHORT} Without a command, lists it newest first: a table when the pane is wide enough (the sink's "
               "answer wrapped at word boundaries; ids, actions and statuses never cut), one block per row when it is "
               "not, and one line per row (key=value, nothing cut) when piped; set COLUMNS to get the table in a pipe.")

outbox_app = typer.Typer(help=OUTBOX_HELP, short_help=OUTBOX_SHORT, invoke_without_command=True, no_args_is_help=False)


def sinks_file(sinks: Path | None, rules: list[Path] | None, only_rules: bool) -> Path | None:
    """--sinks, else sinks.yaml in the first --rules folder that has one."""
    from corral.sinks.config import find_sinks_file

    if sinks is not None:
        if not sinks.is_file():
            fail(f"--sinks {sinks}: no such file")
        return sinks
    return find_sinks_file(policy_paths(rules, only_rules))


def _open(db: str | None) -> Store:
    from corral.store.store import Store

    return Store.open(db_url(db))


#: The outbox table's columns: only what the sink answered gives way.
OUTBOX_COLUMNS = (
    tables.fixed("id", right=True),
    tables.fixed("queued"),
    tables.fixed("sink"),
    tables.fixed("action"),
    tables.fixed("status"),
    tables.fixed("tries", right=True),
    tables.elastic("answer", wrap=True),
)


def _row(e: Entry) -> dict[str, Any]:
    return {
        "id": e.id, "key": e.key, "sink": e.sink, "at": e.at.isoformat(), "status": str(e.status), "kind": str(e.kind),
        "entity": e.entity_id, "action": str(e.action), "target": dict(e.target), "params": dict(e.params),
        "policy": e.policy, "actor": e.actor, "reason": e.reason, "cycle": e.cycle_id, "attempts": e.attempts,
        "next_at": e.next_at.isoformat() if e.next_at else None, "last_error": e.last_error, "answer": e.answer,
        "done_at": e.done_at.isoformat() if e.done_at else None,
    }


@outbox_app.callback()
def outbox(
    ctx: typer.Context,
    db: DbOption = None,
    pending: Annotated[bool, typer.Option("--pending", help="Only rows not yet delivered (pending, sending, in doubt).")] = False,
    dead: Annotated[bool, typer.Option("--dead", help="Only rows that need a person: dead, in doubt, refused.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many rows, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List the outbox, newest first: each action, its sink, and where its delivery stands
    (laid out as OUTBOX_HELP says)."""
    from corral.outbox import UNSETTLED, Status

    if ctx.invoked_subcommand is not None:
        return
    if pending and dead:
        fail("--pending and --dead list different rows: give one")
    statuses = UNSETTLED if pending else {Status.DEAD, Status.DOUBT, Status.REFUSED} if dead else None
    with _open(db) as store:
        rows = store.outbox_rows(statuses, limit)
        backlog = store.outbox_backlog()
    if as_json:
        print_json([_row(e) for e in rows])
        return
    summary = ", ".join(f"{sink} {status}: {n}" for (sink, status), n in sorted(backlog.counts.items()))
    if not rows:
        console.print("the outbox is empty" + (" for that filter" if statuses else "") + (f" ({summary})" if summary else ""))
        return
    tables.show(OUTBOX_COLUMNS, [(e.id, f"{e.at:%m-%d %H:%M:%S}", e.sink, e.describe(), str(e.status), e.attempts,
                                  e.answer or e.last_error or "") for e in rows], console=console)
    console.print(visible(summary), highlight=False)


def _settle_by_hand(db: str | None, entry_id: int, verb: str) -> None:
    import logging

    from corral.outbox import Status

    who, now = getpass.getuser(), datetime.now(UTC)
    allowed = {"retry": (Status.DEAD, Status.DOUBT, Status.REFUSED, Status.PENDING),
               "drop": (Status.PENDING, Status.DEAD, Status.DOUBT)}[verb]
    with _open(db) as store:
        entry = store.outbox_entry(entry_id)
        if entry is None:
            fail(f"no outbox row {entry_id}; `corral outbox` lists them")
        if entry.status not in allowed:
            fail(f"outbox {entry_id} is {entry.status}: only a row that is {', '.join(allowed)} can be {verb}"
                 + ("ped" if verb == "drop" else "d"))
        note = f"{verb} by {who} at {now.isoformat(timespec='seconds')}"
        if verb == "retry":
            done = store.outbox_mark(entry_id, Status.PENDING, expect=allowed, attempts=0, next_at=None,
                                     last_error=f"{note} (was {entry.status})")
        else:
            done = store.outbox_mark(entry_id, Status.DROPPED, expect=allowed, done_at=now,
                                     answer=f"{note} (was {entry.status})")
    if not done:
        fail(f"outbox {entry_id} changed meanwhile; look again with `corral outbox`")
    logging.getLogger("corral.outbox").warning("outbox %d (%s to %s): %s", entry_id, entry.describe(), entry.sink, note)
    console.print(visible(f"outbox {entry_id} ({entry.describe()} to {entry.sink}): "
                          + ("queued again" if verb == "retry" else "dropped: it will not be delivered")), highlight=False)


@outbox_app.command("retry")
def retry(entry_id: Annotated[int, typer.Argument(metavar="ID")], db: DbOption = None) -> None:
    """Send a dead, refused or in-doubt row again (its attempts start over)."""
    _settle_by_hand(db, entry_id, "retry")


@outbox_app.command("drop")
def drop(entry_id: Annotated[int, typer.Argument(metavar="ID")], db: DbOption = None) -> None:
    """Never deliver this row (recorded with who dropped it and when)."""
    _settle_by_hand(db, entry_id, "drop")


def deliver(
    rules: RulesOption = None,
    only_rules: OnlyRulesOption = False,
    sinks: SinksOption = None,
    db: DbOption = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Send at most this many rows.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Deliver the outbox once, for cron without a daemon: what is due is sent, in order.

    Refused while a daemon leads: the daemon delivers (only one deliverer at a time)."""
    from corral.daemon.courier import Courier, SinksFileError, load_sinks_file
    from corral.farm import utcnow

    path = sinks_file(sinks, rules, only_rules)
    try:
        config, built = load_sinks_file(path)
    except SinksFileError as err:
        for line in err.errors:
            err_console.print(line, highlight=False, markup=False)
        fail(str(err))
    with _open(db) as store:
        state = store.lease_state()
        if state.alive:
            fail(f"a corral daemon ({state.holder}) leads this store and delivers its outbox; `corral deliver` is "
                 "for setups without one", code=3)
        courier = Courier(store, config, built, clock=utcnow)
        try:
            courier.publish()
            report = courier.run(limit=limit)
        finally:
            courier.close()
    if report is None:
        console.print("no sink configured: nothing to deliver" if not built else "nothing delivered")
        return
    if as_json:
        print_json({
            "delivered": [e.id for e in report.delivered],
            "refused": [{"id": e.id, "answer": a} for e, a in report.refused],
            "failed": [{"id": e.id, "error": a} for e, a in report.failed],
            "dead": [{"id": e.id, "error": a} for e, a in report.dead],
            "doubt": [e.id for e in report.doubt],
            "waiting": report.waiting,
        })
        return
    console.print(f"delivered {len(report.delivered)}, refused {len(report.refused)}, failed {len(report.failed)} "
                  f"(retried later), dead {len(report.dead)}, in doubt {len(report.doubt)}; {report.waiting} waiting")
    for entry, said in report.refused + report.failed + report.dead:
        console.print(visible(f"  {entry.id} {entry.describe()} to {entry.sink}: {said}"), highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(outbox_app, name="outbox")
    app.command()(deliver)
