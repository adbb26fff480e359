"""The action registry (`corral.actions.REGISTRY`), walked: every action is registered once,
has an inverse or says why not, documents its parameters, and the policy language, the
JSON Schema, the reference docs and the CLI offer exactly what it declares."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from typer.main import get_command

from conftest import NOW, snap
from corral.actions import REGISTRY, action_def
from corral.cli import app
from corral.effects import apply_action
from corral.farm import entity_id
from corral.policy.loader import load_texts
from corral.policy.schema import policy_json_schema
from corral.states import DERIVED, RULES, Action, IllegalAction, Kind, actions_for

ROOT = Path(__file__).resolve().parent.parent

#: A farm with an entity of each kind in each state an action may start from.
FARM = """
jobs:
  - id: 1
    name: running
    retry_limit: 2
    instances:
      - {id: i1, host: n1, state: running}
      - {id: i2, host: n2, state: failed}
      - {id: i3, host: n3, state: pending}
    frames:
      - {number: 1, state: running, host: n1, instance: i1}
      - {number: 2, state: failed, host: n2, instance: i2}
      - {number: 3, state: complete, host: n1, instance: i1}
      - {number: 4, state: pending}
  - {id: 2, name: failed, frames: [{number: 1, state: failed, host: n2}]}
  - {id: 3, name: done, frames: [{number: 1, state: complete, host: n1}]}
  - {id: 4, name: waiting, frames: [{number: 1}]}
  - id: 5
    name: held
    state: blocked
    instances: [{id: i5, host: n3, state: blocked}]
    frames: [{number: 1, state: blocked}, {number: 2}]
  - {id: 6, name: suspended, suspended: true, frames: [{number: 1}]}
workers:
  - {name: n1, state: up}
  - {name: n2, state: down}
  - {name: n3, state: locked}
"""


def test_every_action_is_registered_once_under_its_own_name() -> None:
    assert set(REGISTRY) == set(Action)
    for action, definition in REGISTRY.items():
        assert definition.action is action
        assert definition.kinds() == actions_kinds(action)


def actions_kinds(action: Action) -> list[Kind]:
    return [kind for kind in Kind if action in actions_for(kind)]


@pytest.mark.parametrize("action", list(Action))
def test_every_action_has_an_inverse_or_says_why_not(action: Action) -> None:
    definition = REGISTRY[action]
    if definition.inverse is None:
        assert len(definition.no_inverse) > 20, f"{action}: say why it cannot be undone"
        return
    assert not definition.no_inverse, f"{action} has an inverse and a reason it has none"
    for kind in definition.kinds():
        inverse = RULES.get((kind, definition.inverse))
        assert inverse is not None, f"{action} {kind}: its inverse {definition.inverse} does not apply to a {kind}"
        for target in set(RULES[(kind, action)].moves.values()) - {DERIVED}:
            assert target in inverse.moves, f"{action} {kind} leaves it {target}; {definition.inverse} cannot start there"


@pytest.mark.parametrize(("kind", "action"), sorted((k, a) for k, a in RULES if REGISTRY[a].inverse is not None))
def test_a_person_can_undo_what_an_action_did_with_its_inverse(kind: Kind, action: Action) -> None:
    """Played on every entity it may act on, then its inverse by a person: the inverse
    is always legal (what `corral undo` relies on)."""
    definition = REGISTRY[action]
    assert definition.inverse is not None
    farm = snap(FARM)
    played = 0
    for entity in _entities(farm, kind):
        ident = entity_id(kind, entity)
        trial = copy.deepcopy(farm)
        try:
            apply_action(trial, kind, ident, action, now=NOW, actor="user:ann")
        except IllegalAction:
            continue
        apply_action(trial, kind, ident, definition.inverse, now=NOW, actor="user:ann")  # never IllegalAction
        played += 1
    assert played, f"the test farm has no {kind} that {action} applies to"


def _entities(farm, kind):  # type: ignore[no-untyped-def]
    if kind is Kind.JOB:
        return list(farm.jobs.values())
    if kind is Kind.FRAME:
        return [f for j in farm.jobs.values() for f in j.frames.values()]
    if kind is Kind.INSTANCE:
        return list(farm.instances.values())
    return list(farm.workers.values())


@pytest.mark.parametrize("action", list(Action))
def test_every_parameter_is_documented_and_means_something_for_a_kind_it_acts_on(action: Action) -> None:
    definition = REGISTRY[action]
    for param in definition.params:
        assert param.type in (int, bool, str) and len(param.help) > 10, param
        assert param.kinds is None or param.kinds <= set(definition.kinds()), param
        assert (param.type is str) == bool(param.choices), param  # a word is one of its choices
        bad, good = {int: (-1, 3), bool: ("yes", True), str: ("everyone", param.choices[:1] and param.choices[0])}[
            param.type]
        assert param.problem(bad)  # a bad value is refused, in words
        assert param.problem(good) is None


def test_a_wrong_parameter_is_refused_the_same_way_by_a_policy_and_by_the_farm() -> None:
    """One check (`Param.problem`) behind both: a policy file gets it with its position,
    a manual action with the value."""
    policy = ("policies:\n  - name: p\n    kind: job\n    when: {state: failed}\n"
              "    actions: [{resubmit: {priority: -3}}]\n    reason: r\n")
    loaded = load_texts([("p.yaml", policy)])
    words = "'resubmit' parameter 'priority' must be a whole number from 0 to 2,147,483,647"
    assert [e.message for e in loaded.errors] == [f"{words}, not the number -3"]
    with pytest.raises(IllegalAction, match=f"{words}, not -3"):
        apply_action(snap(FARM), Kind.JOB, "2", Action.RESUBMIT, now=NOW, params={"priority": -3})
    # past what the store's columns hold: refused at load, not by every cycle's commit
    huge = load_texts([("p.yaml", policy.replace("-3", "99999999999999999999"))])
    assert [(e.pos.line, e.message) for e in huge.errors] == [(5, f"{words}, not the number 99999999999999999999")]
    with pytest.raises(IllegalAction, match=f"{words}, not 2147483648"):
        apply_action(snap(FARM), Kind.JOB, "2", Action.RESUBMIT, now=NOW, params={"priority": 2**31})
    with pytest.raises(ValueError, match="'retry' takes spend, avoid_failed_hosts; 'priority' is not one of them"):
        action_def("retry").check_params({"priority": 1})


def test_the_json_schema_offers_each_kind_exactly_its_actions_and_their_parameters() -> None:
    schema = policy_json_schema()
    text = str(schema)
    for action, definition in REGISTRY.items():
        assert f"'{action}'" in text
        for param in definition.params:
            assert f"'{param.name}'" in text and param.help in text


def test_the_reference_docs_list_every_action_and_parameter() -> None:
    doc = (ROOT / "docs" / "policy-reference.md").read_text()
    for action, definition in REGISTRY.items():
        assert f"`{action}`" in doc
        for param in definition.params:
            assert f"`{param.name}`" in doc


def test_the_cli_has_a_command_per_kind_and_action_with_the_parameters_for_that_kind() -> None:
    root = get_command(app)
    for kind in Kind:
        group = root.commands[kind.value]  # type: ignore[attr-defined]
        assert set(group.commands) >= {a.value for a in actions_for(kind)}
        for action in actions_for(kind):
            options = {p.name for p in group.commands[action.value].params}
            expected = {p.name for p in REGISTRY[action].params_for(kind)}
            others = {p.name for p in REGISTRY[action].params} - expected
            assert expected <= options and not others & options, (kind, action, options)
