"""Facts: what a policy can see of each job, frame, instance and worker.

A fact is a flat-ish dict per entity, built from a `Farm` at a given `now`.  Four parts,
each a module a reader can hold in mind:

- `vocabulary`: every field, with its type, meaning and the group of work that computes
  it (`FIELDS`), and which groups a set of policies needs (`Needs`);
- `aggregates`: the counts facts are made of, kept by deltas (`Aggregates`);
- `screens`: the cheap per-state tests that rule an entity out early (`Screen`);
- `builder`: the facts themselves (`FactBuilder`).
"""

from corral.facts.aggregates import Aggregates, frame_runs
from corral.facts.builder import FactBuilder
from corral.facts.screens import ProbeGate, Screen, StateScreen
from corral.facts.vocabulary import (
    DEFAULT_RECENT,
    FIELDS,
    FIRST_STAGE,
    GROUPS,
    MISSING,
    SECOND_STAGE,
    FieldSpec,
    Needs,
    first_stage,
    get_path,
    narrow,
)

__all__ = [
    "DEFAULT_RECENT",
    "FIELDS",
    "FIRST_STAGE",
    "GROUPS",
    "MISSING",
    "SECOND_STAGE",
    "Aggregates",
    "FactBuilder",
    "FieldSpec",
    "Needs",
    "ProbeGate",
    "Screen",
    "StateScreen",
    "first_stage",
    "frame_runs",
    "get_path",
    "narrow",
]
