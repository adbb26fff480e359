"""The `command` sink: one argv template per action and kind, run without a shell.

For farm managers driven from their command line (Qube!'s `qbblock`, Deadline's
`deadlinecommand`, Tractor's `tq`, OpenCue's `cueadmin`): the built-in presets
(`corral/sinks/presets/*.yaml`, cited in docs/sinks-presets.md) give their documented commands,
and a sink's own `commands` add to or replace them.

A template is a list of words; `{field}` in a word is replaced by the row's value (see
`FIELDS`), nothing else is interpreted: no shell, no globbing, no attribute access.
An unknown field, or one the kind does not have (`{frame}` for a job), is refused when
the file is checked, at its line.
"""

from __future__ import annotations

import os
import re
import string
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.outbox import Delivered, Entry, Failed, Outcome, Refused
from corral.states import Action, Kind

#: The fields every template may name, and those each kind adds.
COMMON_FIELDS = ("action", "kind", "entity", "policy", "reason", "key", "cycle", "actor", "to")
KIND_FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.JOB: ("job", "job_name"),
    Kind.FRAME: ("job", "job_name", "frame"),
    Kind.INSTANCE: ("job", "job_name", "instance", "host"),
    Kind.WORKER: ("worker", "host"),
}
#: Everything a template may name, for the docs and the JSON Schema.
FIELDS = tuple(dict.fromkeys(COMMON_FIELDS + tuple(f for fs in KIND_FIELDS.values() for f in fs)))
#: The most of a command's output kept with the row (its last characters).
OUTPUT_KEPT = 2000
#: Fields that name something the tool looks up.  Their values must be one plain word:
#: an empty one (Qube! reads job 0 as "all my jobs"), one starting with '-' (read as an
#: option) or holding a separator or wildcard (cueman splits on commas and takes '*',
#: tq parses search clauses) could widen a command to other jobs or hosts.
NAMING_FIELDS = ("job", "frame", "instance", "host", "worker", "entity", "job_name")
UNSAFE = re.compile(r"^$|^-|[\s,*?;|&<>()\[\]{}'\"`$\\=]")


def template_fields(word: str) -> list[str]:
    """The fields a template word names; raises ValueError for a malformed word (an
    unmatched brace, a conversion or format spec, an index or attribute)."""
    names = []
    for _literal, name, spec, conversion in string.Formatter().parse(word):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"'{{{name}}}' has a format or conversion: write the field name alone, as {{{name.split('!')[0]}}}")
        if not name.isidentifier():
            raise ValueError(f"'{{{name}}}' is not a field name: write one of {', '.join(FIELDS)}")
        names.append(name)
    return names


def template_problem(kind: Kind, argv: Sequence[str]) -> str | None:
    """What is wrong with a template for `kind` (None: nothing)."""
    if not argv or not all(isinstance(w, str) for w in argv):
        return "a command is a non-empty list of words (strings), the program first"
    allowed = COMMON_FIELDS + KIND_FIELDS[kind]
    for word in argv:
        try:
            names = template_fields(word)
        except ValueError as err:
            return str(err)
        for name in names:
            if name not in allowed:
                where = [k.value for k, fs in KIND_FIELDS.items() if name in fs]
                hint = (f": only {' or '.join(('an ' if w[0] in 'aeiou' else 'a ') + w for w in where)} has it" if where
                        else f"; the fields are {', '.join(allowed)}")
                return f"unknown field {{{name}}} for a {kind.value}{hint}"
    if "{" in argv[0]:
        return "the program (the first word) is fixed text, never a field"
    return None


def values_of(entry: Entry) -> dict[str, str]:
    """The row's fields as template values (absent ones empty)."""
    values: dict[str, Any] = {
        "action": entry.action.value, "kind": entry.kind.value, "entity": entry.entity_id,
        "policy": entry.policy or "", "reason": entry.reason, "key": entry.key, "cycle": entry.cycle_id or "",
        "actor": entry.actor, "to": entry.params.get("to", "room") if entry.action is Action.NOTIFY else "",
    }
    values.update(entry.target)
    return {k: "" if v is None else str(v) for k, v in values.items()}


class UnsafeValue(ValueError):
    """A naming field whose value could widen the command (see `NAMING_FIELDS`)."""


def render(argv: Sequence[str], entry: Entry) -> list[str]:
    """The argv for `entry`; raises UnsafeValue rather than run a command that could
    reach more than the entity it names."""
    values = values_of(entry)
    for word in argv:
        for name in template_fields(word):
            if name in NAMING_FIELDS and UNSAFE.search(values.get(name, "")):
                raise UnsafeValue(f"{{{name}}} is {values.get(name, '')!r}: not sent, a value that is empty, starts "
                                  "with '-' or holds spaces, separators or wildcards could reach other jobs or hosts")
    return [word.format_map(values) for word in argv]


@dataclass
class CommandSink:
    """Runs `commands[action][kind]` for each row; exit 0 is delivered, an exit status in
    `refused_codes` is the supervisor saying no, anything else (another status, a
    timeout, a program not found) is a failed send, retried."""

    name: str
    commands: Mapping[Action, Mapping[Kind, Sequence[str]]]
    timeout: float = 30.0
    refused_codes: frozenset[int] = frozenset()
    env: Mapping[str, str] = field(default_factory=dict)

    def carries(self) -> frozenset[tuple[Kind, Action]]:
        return frozenset((kind, action) for action, kinds in self.commands.items() for kind in kinds)

    def deliver(self, entry: Entry) -> Outcome:
        template = self.commands.get(entry.action, {}).get(entry.kind)
        if template is None:
            return Failed(f"no command for {entry.action} {entry.kind} (sinks file changed since it was queued?)")
        try:
            argv = render(template, entry)
        except UnsafeValue as err:
            return Refused(str(err))  # never sent: corral takes the transition back, as for a refusal
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False,
                                  env={**os.environ, **self.env} if self.env else None, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Failed(f"{argv[0]} did not finish within {self.timeout:g}s (killed)")
        except OSError as err:
            return Failed(f"cannot run {argv[0]}: {err.strerror or err}")
        output = (done.stdout + done.stderr).strip()[-OUTPUT_KEPT:]
        said = f"exit {done.returncode}" + (f": {output}" if output else "")
        if done.returncode == 0:
            return Delivered(said)
        if done.returncode in self.refused_codes:
            return Refused(said)
        return Failed(said)

    def took(self, entry: Entry) -> bool | None:
        return None  # a command line cannot be asked: an interrupted retry waits for a person

    def close(self) -> None:
        pass
