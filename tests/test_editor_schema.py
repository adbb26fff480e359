"""The schemas editors use: small enough to load at once, accepting every file corral
ships, and naming the allowed values when a state is misspelled."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema.exceptions import best_match

from corral.policy.loader import builtin_dir
from corral.policy.schema import policy_json_schema
from corral.policytest.schema import policytest_json_schema

ROOT = Path(__file__).resolve().parent.parent


def _as_editor_reads(value: Any) -> Any:
    """YAML timestamps as the strings an editor validates."""
    if isinstance(value, dict):
        return {k: _as_editor_reads(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_editor_reads(v) for v in value]
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    return value


def test_the_policy_schema_is_small_and_shares_its_field_types() -> None:
    text = json.dumps(policy_json_schema())
    assert len(text) < 200_000, len(text)
    assert len(json.dumps(policytest_json_schema())) < 100_000


@pytest.mark.parametrize("path", sorted(p for p in builtin_dir().glob("*.yaml") if not p.name.endswith(".test.yaml")),
                         ids=lambda p: p.name)
def test_every_built_in_policy_file_is_valid(path: Path) -> None:
    jsonschema.validate(_as_editor_reads(yaml.safe_load(path.read_text())), policy_json_schema())


@pytest.mark.parametrize("path", sorted(builtin_dir().glob("*.test.yaml")), ids=lambda p: p.name)
def test_every_built_in_test_file_is_valid(path: Path) -> None:
    jsonschema.validate(_as_editor_reads(yaml.safe_load(path.read_text())), policytest_json_schema())


def test_a_misspelled_state_is_answered_with_the_states_it_can_be() -> None:
    doc = {"policies": [{"name": "p", "kind": "job", "when": {"state": "runing"}, "actions": ["block"], "reason": "r"}]}
    errors = list(jsonschema.Draft202012Validator(policy_json_schema()).iter_errors(doc))
    messages = []

    def walk(error: Any) -> None:
        messages.append(error.message)
        for child in error.context or []:
            walk(child)

    for error in errors:
        walk(error)
    assert any("'runing' is not one of ['pending', 'blocked', 'running'" in m for m in messages), messages
    assert not any("does not match" in m and "runing" in m for m in messages), messages  # never a regex
    assert best_match(errors) is not None


def test_a_param_and_a_week_are_still_accepted() -> None:
    doc = {"name": "p", "kind": "job", "when": {"state": "$st", "frames_failed": {"gte": "$n"}}, "actions": ["block"],
           "reason": "r", "params": {"st": "failing", "n": 3}, "limits": {"cooldown": "2w"}}
    jsonschema.validate(doc, policy_json_schema())


def test_a_test_file_with_a_wrong_expectation_is_refused() -> None:
    doc = {"cases": [{"name": "c", "at": "2026-11-28T02:00:00Z", "expect": [{"policy": "p", "job": 3, "action": "retri"}]}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, policytest_json_schema())
