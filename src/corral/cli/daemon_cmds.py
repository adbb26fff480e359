"""Commands around the daemon: `history` (the transition log), `pause`, `resume`, `daemon-status`."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from corral.cli import tables
from corral.cli.common import DbOption, JsonOption, console, db_url, fail, print_json
from corral.untrusted import visible

PAUSE_KEYS = ("paused", "paused_reason", "paused_by", "paused_at")
def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'2h' (the last two hours), '1d12h', '30m', '2w' (the one duration syntax, as in a
    policy), or an ISO 8601 time (naive means UTC)."""
    from corral.policy.loader import parse_duration

    now = now or datetime.now(UTC)
    seconds = parse_duration(text)
    if seconds is not None:
        return now - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"--since '{text}': write a duration such as 2h, 30m or 1d, or an ISO 8601 time such as 2026-11-28T02:00Z")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _open(db: str | None) -> Any:
    from corral.store.store import Store

    return Store.open(db_url(db))


#: The history table's columns: who did it (a policy or a person) and why give way.
HISTORY_COLUMNS = (
    tables.fixed("at (UTC)", key="at"),
    tables.fixed("entity"),
    tables.fixed("action"),
    tables.fixed("from → to", key="from_to"),
    tables.elastic("by", min_width=10),
    tables.elastic("reason", wrap=True, min_width=16),
    tables.fixed("cycle"),
)


def history(
    db: DbOption = None,
    job: Annotated[int | None, typer.Option("--job", help="Only this job (with its frames and instances).")] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Only transitions of this policy.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this actor (corral, or a person).")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO 8601 time, or a duration such as 2h meaning the last 2 hours.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows (newest first).", min=1)] = 50,
    as_json: JsonOption = False,
) -> None:
    """The transition log, newest first: what changed, who or which policy did it, and why.
    A table when the pane is wide enough (reasons wrapped at word boundaries; times, ids,
    actions, states and cycles never cut), one block per transition when it is not, and
    one line per transition (key=value, nothing cut) when piped; set COLUMNS to get the
    table in a pipe."""
    from corral.store.store import StoreError

    after = parse_since(since) if since else None
    try:
        with _open(db) as store:
            rows = store.transitions(job=job, policy=policy, actor=actor, since=after, limit=limit)
    except StoreError as err:
        fail(str(err))
    if as_json:
        print_json([
            {
                "at": r.at.isoformat(), "kind": str(r.kind), "id": r.entity_id, "job": r.job_id, "action": r.action,
                "from": r.from_state, "to": r.to_state, "policy": r.policy, "actor": r.actor, "reason": r.reason,
                "cycle": r.cycle_id, "applied": r.applied,
            }
            for r in rows
        ])
        return
    if not rows:
        console.print("no transitions match")
        return
    tables.show(HISTORY_COLUMNS, [
        (f"{r.at:%Y-%m-%d %H:%M:%S}", f"{r.kind} {r.entity_id}", r.action if r.applied else f"would {r.action}",
         f"{r.from_state} → {r.to_state}", f"policy {r.policy}" if r.policy else r.actor, r.reason, r.cycle_id or "")
        for r in rows
    ], console=console)


def pause(
    db: DbOption = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (shown by daemon-status).")] = "",
) -> None:
    """Stop corral applying anything: cycles keep running and reporting, nothing is changed."""
    from corral.store.store import PAUSE_SETTING, StoreError

    who, now = getpass.getuser(), datetime.now(UTC).isoformat(timespec="seconds")
    try:
        with _open(db) as store:
            store.set_setting("paused_reason", reason)
            store.set_setting("paused_by", who)
            store.set_setting("paused_at", now)
            store.set_setting(PAUSE_SETTING, "1")
    except StoreError as err:
        fail(str(err))
    console.print(visible(f"paused by {who} at {now}" + (f": {reason}" if reason else "")), highlight=False)


def resume(db: DbOption = None) -> None:
    """Let corral apply its policies again (from its next cycle)."""
    from corral.store.store import PAUSE_SETTING, StoreError

    try:
        with _open(db) as store:
            was = store.paused()
            store.set_setting(PAUSE_SETTING, "0")
            store.set_setting("paused_by", getpass.getuser())
            store.set_setting("paused_at", datetime.now(UTC).isoformat(timespec="seconds"))
            store.set_setting("paused_reason", "")
    except StoreError as err:
        fail(str(err))
    console.print("resumed" if was else "was not paused; nothing to resume")


def daemon_status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Whether corral is paused (by whom, why), which daemon leads, and its last cycle."""
    from corral.daemon.service import HEARTBEAT_SETTING
    from corral.store.store import StoreError

    try:
        with _open(db) as store:
            values = {k: store.get_setting(k) for k in (*PAUSE_KEYS, HEARTBEAT_SETTING)}
            lease = store.lease_state()
    except StoreError as err:
        fail(str(err))

    def parsed(key: str) -> dict[str, Any] | None:
        raw = values.get(key)
        try:
            return dict(json.loads(raw)) if raw else None
        except (ValueError, TypeError):
            return None

    data = {
        "paused": values["paused"] == "1",
        "paused_by": values["paused_by"] if values["paused"] == "1" else None,
        "paused_at": values["paused_at"] if values["paused"] == "1" else None,
        "paused_reason": values["paused_reason"] if values["paused"] == "1" else None,
        "leader": {
            "alive": lease.alive,  # a daemon holds the store's lease now
            "holder": lease.holder,
            "since": _iso(lease.since),
            "expires": _iso(lease.expires),
        } if lease.holder else None,
        "last_cycle": parsed(HEARTBEAT_SETTING),
    }
    if as_json:
        print_json(data)
        return
    if data["paused"]:
        why = f": {data['paused_reason']}" if data["paused_reason"] else ""
        console.print(visible(f"PAUSED by {data['paused_by']} since {data['paused_at']}{why}"), highlight=False)
    else:
        console.print("active (not paused)")
    leader, last = data["leader"], data["last_cycle"]
    if leader and leader["alive"]:
        console.print(visible(f"leader: {leader['holder']} since {leader['since']} (alive: its lease runs to "
                              f"{leader['expires']})"), highlight=False)
    elif leader:
        console.print(visible(f"leader: none (the last, {leader['holder']}, let its lease go at {leader['expires']})"),
                      highlight=False)
    else:
        console.print("leader: none (no daemon has led this store)", highlight=False)
    if last:
        console.print(visible(f"last cycle: {last['cycle']} at {last['at']}, {last.get('applied', 0)} applied"
                              + (" (paused)" if last.get("paused") else "")), highlight=False)
    else:
        console.print("last cycle: none recorded")


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the app."""
    app.command()(history)
    app.command()(pause)
    app.command()(resume)
    app.command("daemon-status")(daemon_status)
