"""The JSON Schema of policy test files (`*.test.yaml`), for editors (`corral schema --tests`).

Built from the same tables the reader checks against (`corral.policytest.model`), with
the farm of a case as the snapshot format's own schema.  The reader remains the
authority: it also checks what a schema cannot (that a policy named is loaded, that an
entity named is in the case's farm).
"""

from __future__ import annotations

from typing import Any

from corral.policy.schema import DURATION_SCHEMA
from corral.policytest.model import CASE_KEYS, FILE_KEYS, KINDS, SKIP_CATEGORIES
from corral.snapshot import snapshot_json_schema
from corral.states import Action

#: An ISO 8601 time, as a case's `at:` takes it (YAML may also read it as a timestamp).
_TIME = {"type": "string", "description": "an ISO 8601 time, e.g. 2026-11-28T02:00:00Z"}
_ENTITY = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
_REF = {"type": "string", "pattern": "^(" + "|".join(KINDS) + r") \S+$",
        "description": "an entity: job 104, frame 101:2, instance 101.3, worker render01"}


def _with_entity(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """An item that names one entity by its kind's key (job: 3, frame: "3:1"...)."""
    return {
        "type": "object",
        "properties": {**properties, **{kind: {**_ENTITY, "description": f"the {kind}'s id"} for kind in KINDS}},
        "required": required,
        "additionalProperties": False,
        "minProperties": len(required) + 1,
    }


def policytest_json_schema() -> dict[str, Any]:
    farm = snapshot_json_schema()
    defs = dict(farm.pop("$defs", {}))
    defs["farm"] = farm
    expect = _with_entity({
        "policy": {"type": "string"},
        "action": {"enum": [a.value for a in Action]},
        "to": {"type": "string", "description": "the state the entity is left in"},
        "reason": {"type": "string", "description": "text the reason must contain"},
    }, ["policy", "action"])
    skipped = _with_entity({
        "policy": {"type": "string"},
        "because": {"enum": list(SKIP_CATEGORIES)},
    }, ["policy", "because"])
    history = _with_entity({
        "policy": {"type": "string"}, "at": _TIME, "ago": DURATION_SCHEMA,
        "action": {"enum": [a.value for a in Action]},
    }, ["policy"])
    step_props = {
        "at": {**_TIME, "description": CASE_KEYS["at"]},
        "expect": {"type": ["array", "null"], "items": {"$ref": "#/$defs/expectation"}, "description": CASE_KEYS["expect"]},
        "untouched": {"type": "array", "items": _REF, "description": CASE_KEYS["untouched"]},
        "skipped": {"type": "array", "items": {"$ref": "#/$defs/skip"}, "description": CASE_KEYS["skipped"]},
    }
    defs["expectation"] = expect
    defs["skip"] = skipped
    defs["case"] = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "description": CASE_KEYS["name"]},
            "farm": {"$ref": "#/$defs/farm", "description": CASE_KEYS["farm"]},
            "snapshot": {"type": "string", "description": CASE_KEYS["snapshot"]},
            "history": {"type": "array", "items": history, "description": CASE_KEYS["history"]},
            **step_props,
            "steps": {"type": "array", "minItems": 1, "description": CASE_KEYS["steps"], "items": {
                "type": "object", "required": ["at"], "additionalProperties": False, "properties": step_props}},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://corral.invalid/schema/policy-test-file.json",
        "title": "corral policy test file (*.test.yaml)",
        "description": "Cases a set of policies must pass: `corral test`. See docs/testing-policies.md.",
        "type": "object",
        "required": ["cases"],
        "additionalProperties": False,
        "properties": {
            "policies": {"type": "array", "items": {"type": "string"}, "description": FILE_KEYS["policies"]},
            "rules": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                      "description": FILE_KEYS["rules"]},
            "set": {"type": "object", "additionalProperties": {"type": "object"}, "description": FILE_KEYS["set"]},
            "cases": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/case"},
                      "description": FILE_KEYS["cases"]},
        },
        "$defs": defs,
    }
