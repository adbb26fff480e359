"""The JSON Schema of policy files, generated from the same tables the loader uses.

Fields come from `corral.facts.FIELDS`, operators from `corral.policy.operators`,
actions and their parameters from `corral.states`: an editor that uses this schema
suggests exactly what `corral check` accepts.  (The loader remains the authority: it
also checks meaning the schema cannot express, such as `$param` references.)
"""

from __future__ import annotations

from typing import Any

from corral.actions import REGISTRY, Param
from corral.facts import FIELDS, FieldSpec
from corral.failures import DECLARABLE, SIGNALS
from corral.farm import MAX_INT
from corral.policy.loader import LIMIT_KEYS, POLICY_KEYS
from corral.policy.operators import OPERATORS
from corral.states import Kind, actions_for

_PARAM = {"type": "string", "pattern": r"^\$[A-Za-z0-9][A-Za-z0-9_.-]*$", "description": "a policy parameter"}
#: A duration as every file writes it (`corral.policy.loader.parse_duration`).
DURATION_SCHEMA = {"type": "string", "pattern": r"^\s*(?:\d+(?:\.\d+)?\s*[wdhms]\s*)+$",
                   "description": "e.g. 90s, 10m, 1h30m, 2w"}


def _or_param(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or a `$param` reference.  As if/then/else, not anyOf: a misspelled value
    then fails only `schema`, and an editor names the allowed values, not a pattern."""
    return {"if": {"type": "string", "pattern": r"^\$"}, "then": _PARAM, "else": schema}


def _type_key(spec: FieldSpec) -> str:
    """The name of a field type's shared definitions: its type, and a state field's states."""
    if spec.type == "state":
        return "state_" + "_".join(spec.states)
    return spec.type


def _value_schema(spec: FieldSpec) -> dict[str, Any]:
    if spec.type == "duration":
        return _or_param({"anyOf": [{"type": "number", "minimum": 0}, DURATION_SCHEMA]})
    if spec.type == "int":
        return _or_param({"type": "integer"})
    if spec.type == "float":
        return _or_param({"type": "number"})
    if spec.type == "bool":
        return _or_param({"type": "boolean"})
    if spec.type == "state":
        return _or_param({"enum": list(spec.states)})
    return {"type": "string"}


def _type_defs(spec: FieldSpec) -> dict[str, Any]:
    """A field type's definitions, shared by every field of that type: its value, and the
    operators that take it (each with its doc).  Inlined per field, the schema was 2.6 MB."""
    key = _type_key(spec)
    value_ref = {"$ref": f"#/$defs/value_{key}"}
    ops: dict[str, Any] = {}
    for op in OPERATORS.values():
        if spec.type not in op.types:
            continue
        if op.value == "list":
            schema: dict[str, Any] = {"type": "array", "items": value_ref, "minItems": 1}
        elif op.value == "pattern":
            schema = _or_param({"type": "string"})
        elif op.value == "bool":
            schema = {"type": "boolean"}
        else:
            schema = dict(value_ref)
        for name in (op.name, *op.aliases):
            ops[name] = {**schema, "description": op.doc}
    return {
        f"value_{key}": _value_schema(spec),
        f"field_{key}": {"anyOf": [
            value_ref,
            {"type": "array", "items": value_ref, "minItems": 1, "description": "one of these values"},
            {"type": "object", "properties": ops, "additionalProperties": False, "minProperties": 1},
        ]},
    }


def _condition_defs(kind: Kind, defs: dict[str, Any]) -> dict[str, Any]:
    cond = f"condition_{kind}"
    props: dict[str, Any] = {}
    for name, spec in FIELDS[kind].items():
        if f"field_{_type_key(spec)}" not in defs:
            defs.update(_type_defs(spec))
        props[name] = {"$ref": f"#/$defs/field_{_type_key(spec)}", "description": spec.doc}
    props["all"] = {"type": "array", "items": {"$ref": f"#/$defs/{cond}"}, "minItems": 1,
                    "description": "every condition in the list holds"}
    props["any"] = {"type": "array", "items": {"$ref": f"#/$defs/{cond}"}, "minItems": 1,
                    "description": "at least one condition in the list holds"}
    props["not"] = {
        "$ref": f"#/$defs/{cond}",
        "description": "the condition does not hold (a missing field counts as not holding)",
    }
    return {
        cond: {
            "anyOf": [
                {"type": "object", "properties": props, "additionalProperties": False, "minProperties": 1},
                {"type": "array", "items": {"$ref": f"#/$defs/{cond}"}, "minItems": 1},
            ]
        }
    }


def _param_schema(p: Param) -> dict[str, Any]:
    if p.type is int:
        return {"type": "integer", "minimum": 0, "maximum": MAX_INT, "description": p.help}
    if p.type is str:
        return {"enum": list(p.choices), "description": p.help}
    return {"type": "boolean", "description": p.help}


def _action_schema(kind: Kind) -> dict[str, Any]:
    names = [str(a) for a in actions_for(kind)]
    with_params = []
    for action in actions_for(kind):
        params = {p.name: _param_schema(p) for p in REGISTRY[action].params}
        with_params.append({
            "type": "object",
            "properties": {str(action): {"type": ["object", "null"], "properties": params, "additionalProperties": False}},
            "required": [str(action)],
            "additionalProperties": False,
        })
    return {"anyOf": [{"enum": names}, *with_params]}


def policy_json_schema() -> dict[str, Any]:
    """The schema of a policy file: `policies:` with a list, or one policy."""
    defs: dict[str, Any] = {}
    variants = []
    for kind in Kind:
        defs.update(_condition_defs(kind, defs))
        action = _action_schema(kind)
        variants.append({
            "if": {"properties": {"kind": {"const": str(kind)}}},
            "then": {
                "properties": {
                    "when": {"$ref": f"#/$defs/condition_{kind}"},
                    "actions": {"anyOf": [action, {"type": "array", "items": action, "minItems": 1}]},
                }
            },
        })
    policy = {
        "type": "object",
        "required": ["name", "kind", "when", "actions", "reason"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", "description": POLICY_KEYS["name"]},
            "description": {"type": "string", "description": POLICY_KEYS["description"]},
            "kind": {"enum": [str(k) for k in Kind], "description": POLICY_KEYS["kind"]},
            "when": {"description": POLICY_KEYS["when"]},
            "actions": {"description": POLICY_KEYS["actions"]},
            "reason": {"type": "string", "minLength": 1, "description": POLICY_KEYS["reason"]},
            "priority": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 50,
                         "description": POLICY_KEYS["priority"]},
            "enabled": {"type": "boolean", "default": True, "description": POLICY_KEYS["enabled"]},
            "mode": {"enum": ["enforce", "audit"], "default": "enforce", "description": POLICY_KEYS["mode"]},
            "params": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]},
                       "description": POLICY_KEYS["params"]},
            "limits": {
                "type": "object",
                "additionalProperties": False,
                "description": POLICY_KEYS["limits"],
                "properties": {
                    "max_actions": {"type": "integer", "minimum": 1, "description": LIMIT_KEYS["max_actions"]},
                    "max_percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100,
                                    "description": LIMIT_KEYS["max_percent"]},
                    "cooldown": {**_or_param({"anyOf": [{"type": "number", "minimum": 0}, DURATION_SCHEMA]}),
                                 "description": LIMIT_KEYS["cooldown"]},
                },
            },
            "schedule": {"type": "string", "description": POLICY_KEYS["schedule"]},
        },
        "allOf": variants,
    }
    defs["policy"] = policy
    defs["failure_classes"] = {
        "type": "object",
        "description": "Which exit codes and signals fall in each failure class (docs/policies.md, Failure classes).",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {name: {
            "type": "object", "additionalProperties": False,
            "properties": {
                "exit_codes": {"type": "array", "items": {"type": "integer", "not": {"const": 0}}},
                "signals": {"type": "array", "items": {"enum": sorted(SIGNALS)}},
            },
        } for name in DECLARABLE},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://corral.invalid/schema/policy-file.json",
        "title": "corral policy file",
        "description": "Auto-wrangling policies for corral. See docs/policies.md.",
        "$defs": defs,
        "anyOf": [
            {
                "type": "object",
                "anyOf": [{"required": ["policies"]}, {"required": ["failure_classes"]}],
                "additionalProperties": False,
                "properties": {"policies": {"type": "array", "items": {"$ref": "#/$defs/policy"}},
                               "failure_classes": {"$ref": "#/$defs/failure_classes"}},
            },
            {"$ref": "#/$defs/policy"},
        ],
    }
