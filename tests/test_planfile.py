"""`corral plan -o FILE` then `corral apply FILE`: exactly what was reviewed is applied, and
what moved since is refused with why; plan's exit codes for scripts; --json --skipped."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app
from corral.states import Action, Kind
from corral.store import Proposal, Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "farm-snapshot.yaml"
NIGHT = "2026-11-28T02:00:00Z"
runner = CliRunner()


def _store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'corral.db'}"
    assert runner.invoke(app, ["db", "init", "--db", url]).exit_code == 0
    assert runner.invoke(app, ["load", "--replace", str(EXAMPLE), "--db", url]).exit_code == 0
    return url


def test_a_saved_plan_is_applied_exactly_and_only_once(tmp_path: Path) -> None:
    url = _store(tmp_path)
    out = tmp_path / "plan.json"
    planned = runner.invoke(app, ["plan", "--db", url, "--now", NIGHT, "-o", str(out), "--json"])
    assert planned.exit_code == 0, planned.output
    expected = sorted(f"{t['action']} {t['kind']} {t['id']}" for t in json.loads(planned.stdout))
    applied = runner.invoke(app, ["apply", str(out), "--db", url, "--json"])
    assert applied.exit_code == 0, applied.output
    result = json.loads(applied.stdout)
    assert sorted(result["applied"]) == expected and result["refused"] == []
    with Store.open(url) as store:
        rows = [r for r in store.transitions() if r.cycle_id == result["plan"]]
    assert rows and all(r.actor.startswith("user:") for r in rows)
    again = runner.invoke(app, ["apply", str(out), "--db", url, "--json"])
    assert again.exit_code == 1 and json.loads(again.stdout)["applied"] == []  # every row moved: nothing twice


def test_a_transition_whose_rows_moved_since_the_plan_is_refused_and_the_rest_applied(tmp_path: Path) -> None:
    url = _store(tmp_path)
    out = tmp_path / "plan.json"
    assert runner.invoke(app, ["plan", "--db", url, "--now", NIGHT, "-o", str(out)]).exit_code == 0
    with Store.open(url) as store:  # meanwhile a wrangler blocks job 108 by hand
        store.apply_transitions(store.read_farm(), [Proposal(Kind.JOB, "108", Action.BLOCK)],
                                now=datetime.now(UTC), actor="user:ana")
    applied = runner.invoke(app, ["apply", str(out), "--db", url, "--json"])
    assert applied.exit_code == 1
    result = json.loads(applied.stdout)
    (refused,) = result["refused"]
    assert refused["transition"] == "block job 108" and "changed since it was planned" in refused["why"]
    assert len(result["applied"]) == 8


def test_a_plan_is_applied_only_to_the_store_it_was_made_on_and_only_if_it_is_one(tmp_path: Path) -> None:
    url = _store(tmp_path)
    out = tmp_path / "plan.json"
    assert runner.invoke(app, ["plan", "--db", url, "--now", NIGHT, "-o", str(out)]).exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    wrong = runner.invoke(app, ["apply", str(out), "--db", _store(other)])
    assert wrong.exit_code == 1 and "plan again here" in wrong.output
    (tmp_path / "junk.json").write_text("{not json")
    junk = runner.invoke(app, ["apply", str(tmp_path / "junk.json"), "--db", url])
    assert junk.exit_code == 1 and "junk.json:1:2: not a saved plan" in junk.output
    snap = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "-o", str(out)])
    assert snap.exit_code == 1 and "cannot be applied" in snap.output


def test_plan_exits_0_for_scripts_and_2_for_changes_only_when_asked(tmp_path: Path) -> None:
    plain = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--now", NIGHT])
    detailed = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--now", NIGHT, "--detailed-exitcode"])
    assert (plain.exit_code, detailed.exit_code) == (0, 2)
    empty = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--now", NIGHT, "--detailed-exitcode",
                                "--only-rules", "--rules", str(tmp_path)])
    assert empty.exit_code in (0, 1)  # an empty folder: no policy at all is an error, never "changes"


def test_json_with_skipped_lists_the_skipped_matches_and_why() -> None:
    out = runner.invoke(app, ["plan", "--snapshot", str(EXAMPLE), "--now", NIGHT, "--json", "--skipped"])
    data = json.loads(out.stdout)
    assert set(data) == {"transitions", "skipped", "notes"} and data["transitions"]
    assert data["skipped"] and all({"policy", "skipped", "why"} <= set(s) for s in data["skipped"])
