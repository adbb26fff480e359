"""Failure classes: what a failed attempt's exit code says about why it failed.  Pure.

Farm managers decide differently by cause: OpenCue retries an out-of-memory frame with
more memory and backs off a license failure without spending a retry, Tractor never
retries a deliberate kill.  corral names the cause of each failed attempt from its exit
code with a table (the built-in defaults below, which a policy file's
`failure_classes:` overrides class by class), and shows it as `failure_class` (a frame's
last failure) and `failures.<class>` (counts, per frame and per job).

The class names are fixed, so policies, the JSON Schema and `corral fields` know them;
what a wrangler writes is which exit codes and signals fall in each.  A signal matches
the two ways a killed process is reported: the negative signal number (what Python and
many supervisors report) and 128 + the number (what a shell reports: 137 for SIGKILL).
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The classes, in the order they are documented: `error` is every other non-zero exit.
CLASSES: tuple[str, ...] = ("oom", "license", "user_kill", "crash", "timeout", "error")
DECLARABLE: tuple[str, ...] = CLASSES[:-1]

#: Signal names a table may use (SIGKILL...), from this platform's `signal` module.
SIGNALS: dict[str, int] = {s.name: int(s.value) for s in signal.Signals if s.name.startswith("SIG")
                           and not s.name.startswith("SIG_")}


@dataclass(frozen=True)
class FailureClass:
    """One class's exit codes and signals; `where` says which file declared it (or "built-in")."""

    name: str
    exit_codes: frozenset[int] = frozenset()
    signals: frozenset[str] = frozenset()
    where: str = "built-in"

    def codes(self) -> set[int]:
        """Every exit code this class takes, signals spelled both ways."""
        out = set(self.exit_codes)
        for name in self.signals:
            number = SIGNALS[name]
            out |= {-number, 128 + number}
        return out


#: The defaults (docs/policies.md, "Failure classes").  `license` has none: license
#: servers' exit codes differ by renderer, so a studio declares its own.
DEFAULTS: tuple[FailureClass, ...] = (
    FailureClass("oom", signals=frozenset({"SIGKILL"})),  # the kernel's OOM killer: 137 / -9
    FailureClass("license"),
    FailureClass("user_kill", signals=frozenset({"SIGTERM", "SIGINT", "SIGHUP"})),  # 143, 130, 129
    FailureClass("crash", signals=frozenset({"SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE", "SIGILL"})),  # 139...
    FailureClass("timeout", exit_codes=frozenset({124})),  # coreutils `timeout`
)


@dataclass(frozen=True)
class FailureClasses:
    """A whole table: each declared class, and the exit code → class lookup made from it."""

    classes: tuple[FailureClass, ...] = DEFAULTS
    _by_code: dict[int, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for cls in self.classes:
            for code in cls.codes():
                self._by_code.setdefault(code, cls.name)

    def classify(self, exit_code: int | None) -> str | None:
        """The class of a failed attempt's exit code (None: no code to judge by, or 0)."""
        if exit_code is None or exit_code == 0:
            return None
        return self._by_code.get(exit_code, "error")

    def counts(self, codes: Mapping[int | None, int]) -> dict[str, int]:
        """Failed attempts per class (every class present, 0 when none), from counts per code."""
        out = dict.fromkeys(CLASSES, 0)
        for code, n in codes.items():
            cls = self.classify(code)
            if cls is not None and n:
                out[cls] += n
        return out

    def overridden(self, declared: Iterable[FailureClass]) -> FailureClasses:
        """This table with `declared` classes in place of those of the same name (a code
        a declared class takes is no longer any default class's)."""
        mine = {c.name: c for c in declared}
        taken = set().union(*(c.codes() for c in mine.values())) if mine else set()
        kept = []
        for cls in self.classes:
            if cls.name in mine:
                kept.append(mine.pop(cls.name))
                continue
            left = cls.codes() - taken
            kept.append(cls if len(left) == len(cls.codes()) else FailureClass(cls.name, frozenset(left), where=cls.where))
        return FailureClasses((*kept, *mine.values()))


DEFAULT_CLASSES = FailureClasses()
