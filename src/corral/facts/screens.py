"""Screens: a cheap test that rules an entity out before its whole fact is built.

A screen holds, per state, the first-stage fields some policy's gate reads and the test
over them (made by `corral.policy.reference.screen` from the gates
`corral.policy.compiler.screen_of` cuts); `FactBuilder.candidate` probes an entity on
those fields alone.  Every entity some policy can match passes its screen (held to the
reference evaluator by tests/test_parity.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from corral.facts.vocabulary import MISSING

#: One gate of a screen, one comparison at a time: (path, test of the value found there,
#: MISSING when the field is unknown).
ProbeGate = tuple[tuple[str, Callable[[Any], bool]], ...]


class StateScreen(NamedTuple):
    """What a screen asks of an entity in one state."""

    #: The fields the state's gates read.
    paths: tuple[str, ...]
    #: The gates over a fact (or a probe) holding those fields.
    test: Callable[[dict[str, Any]], bool]
    #: The same gates, one field at a time (`Screen.admits`).
    gates: tuple[ProbeGate, ...]


@dataclass(frozen=True)
class Screen:
    """A test over a fact's first stage that every entity some policy can match passes
    (see `corral.policy.compiler.screen_of`; made by `corral.policy.reference.screen`),
    split by the entity's state: for each state some gate admits, the other first-stage
    fields those gates read and the test over them.  A state no gate admits is not
    there, so most entities are ruled out on one lookup, and the rest on the two or
    three fields their state's gates read, not on every field of every gate."""

    by_state: Mapping[str, StateScreen]
    #: The screen over the second stage (SECOND_STAGE), tested once it is built (None:
    #: the gates read nothing more of it).
    then: Screen | None = None

    def passes(self, fact: dict[str, Any]) -> bool:
        rest = self.by_state.get(fact["state"])
        return rest is not None and rest.test(fact)

    def passes_all(self, fact: dict[str, Any]) -> bool:
        """Whether a fact built whole passes every stage's screen."""
        return (self.then or self).passes(fact)

    def admits(self, state: str, fields: Mapping[str, Callable[[Any, Any], Any]], subject: Any, builder: Any) -> bool:
        """Whether an entity in `state` passes, probed on only the fields its state's
        gates read, each worked out alone (`fields[path](subject, builder)`: the getters
        of `corral.facts.builder.FIRST`; None: unknown) and
        only until its gate fails: no dict of them is made, and for most entities a
        cycle screens (a running job with frames complete) one field and one test are
        all it costs.  `state` may be the member itself: a `StrEnum` finds its value's
        key (and `str(member)` would copy it, on every entity a cycle screens)."""
        rest = self.by_state.get(state)
        if rest is None:
            return False
        for gate in rest.gates:
            for path, test in gate:
                value = fields[path](subject, builder)
                if not test(MISSING if value is None else value):
                    break
            else:
                return True
        return False

