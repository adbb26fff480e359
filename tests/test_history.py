"""`corral history`, `pause`, `resume` and `daemon-status` through the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app
from corral.cli.daemon_cmds import parse_since
from corral.store import Store
from daemon_helpers import BLOCK_PENDING, load, pending_farm, write_rules

runner = CliRunner()


def _store_with_history(tmp_path: Path, sqlite_template: Path) -> str:
    import shutil

    shutil.copy(sqlite_template, tmp_path / "farm.db")
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    load(db, pending_farm(3))
    audit = BLOCK_PENDING.replace("block-pending", "audit-pending").replace("[block]", "[block]\n    mode: audit")
    first = write_rules(tmp_path / "audit", audit)
    then = write_rules(tmp_path / "enforce", BLOCK_PENDING.replace("{state: pending}", "{state: pending, id: 2}"))
    for rules in (first, then):
        assert runner.invoke(app, ["run", "--once", "--db", db, "--rules", str(rules), "--only-rules"]).exit_code == 0
    assert runner.invoke(app, ["job", "block", "3", "--db", db, "--reason", "checking the scene"]).exit_code == 0
    return db


def test_history_json_lists_the_log_newest_first_with_every_field(tmp_path: Path, sqlite_template: Path) -> None:
    db = _store_with_history(tmp_path, sqlite_template)
    result = runner.invoke(app, ["history", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["actor"] != "corral" and rows[0]["reason"] == "checking the scene"
    for key in ("kind", "id", "action", "from", "to", "policy", "actor", "reason", "at", "cycle", "applied"):
        assert key in rows[0]
    applied = [r for r in rows if r["policy"] == "block-pending"]
    assert applied == [{**applied[0], "id": "2", "from": "pending", "to": "blocked", "applied": True}]
    assert applied[0]["cycle"]
    audited = [r for r in rows if r["policy"] == "audit-pending"]
    assert len(audited) == 3 and not any(r["applied"] for r in audited)
    ats = [r["at"] for r in rows]
    assert ats == sorted(ats, reverse=True)


def test_history_filters_by_job_policy_actor_since_and_limit(tmp_path: Path, sqlite_template: Path) -> None:
    db = _store_with_history(tmp_path, sqlite_template)

    def ids(*args: str) -> list[tuple[str, str | None]]:
        result = runner.invoke(app, ["history", "--db", db, "--json", *args])
        assert result.exit_code == 0, result.output
        return [(r["id"], r["policy"]) for r in json.loads(result.output)]

    assert ids("--job", "2") == [("2", "block-pending"), ("2", "audit-pending")]
    assert ids("--policy", "block-pending") == [("2", "block-pending")]
    assert len(ids("--actor", "corral")) == 4
    assert len(ids("--limit", "2")) == 2
    assert len(ids("--since", "2h")) == 5
    assert ids("--since", (datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    table = runner.invoke(app, ["history", "--db", db, "--policy", "audit-pending"])
    assert "would block" in table.output


def test_since_accepts_durations_and_iso_times() -> None:
    now = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("1d12h", now) == now - timedelta(days=1, hours=12)
    assert parse_since("2026-11-27T20:00:00Z", now) == datetime(2026, 11, 27, 20, tzinfo=UTC)
    assert parse_since("2026-11-27T20:00", now) == datetime(2026, 11, 27, 20, tzinfo=UTC)
    result = runner.invoke(app, ["history", "--since", "yesterday", "--db", "sqlite://"])
    assert result.exit_code == 1 and "2h" in result.output


def test_pause_resume_and_daemon_status(tmp_path: Path, sqlite_template: Path) -> None:
    db = _store_with_history(tmp_path, sqlite_template)
    out = runner.invoke(app, ["pause", "--db", db, "--reason", "farm maintenance"])
    assert out.exit_code == 0 and "paused" in out.output
    with Store.open(db) as store:
        assert store.get_setting("paused") == "1" and store.get_setting("paused_reason") == "farm maintenance"
    status = json.loads(runner.invoke(app, ["daemon-status", "--db", db, "--json"]).output)
    assert status["paused"] and status["paused_reason"] == "farm maintenance" and status["last_cycle"]["cycle"]
    load(db, pending_farm(2, start=10))
    run = json.loads(runner.invoke(app, ["run", "--once", "--db", db, "--rules", str(write_rules(tmp_path / "r2")),
                                         "--only-rules", "--json"]).output)
    assert run["paused"] and run["applied"] == 0 and len(run["planned"]) == 2
    assert "PAUSED by" in runner.invoke(app, ["daemon-status", "--db", db]).output
    assert runner.invoke(app, ["resume", "--db", db]).output.strip() == "resumed"
    assert runner.invoke(app, ["resume", "--db", db]).output.startswith("was not paused")
    assert not json.loads(runner.invoke(app, ["daemon-status", "--db", db, "--json"]).output)["paused"]
