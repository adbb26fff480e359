"""Hot reload: watch the policy files, reload what changed, keep the last good version of a broken file.

Every tick the watcher lists the policy files (folders expanded, as `corral check`
does) and fingerprints each by size, mtime and, when those moved, a hash of its
bytes (an editor that rewrites a file unchanged reloads nothing).  On any change it
loads every file again with the loader `corral check` uses.  Per file:

* loads cleanly: its new policies replace its old ones;
* has errors: each is logged with `file:line:column`, and the file's last good
  policies stay in force (none, if it never loaded cleanly);
* was deleted: its policies go.

A policy name already taken by a kept (last good) policy of another file is refused
for the file that newly claims it, so names stay unique.  The caller builds a new
PolicySet from `policies` whenever `poll()` says so and swaps it into its session (a new
rule engine, the same farm in memory: `corral.session.Session.swap`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.failures import DEFAULT_CLASSES, FailureClasses
from corral.policy.loader import PolicyError, load_paths, policy_files
from corral.policy.model import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Stamp:
    size: int
    mtime_ns: int
    digest: str


@dataclass
class ReloadReport:
    """What one (re)load did."""

    changed: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[PolicyError] = field(default_factory=list)


class PolicyWatcher:
    def __init__(self, paths: Sequence[str | Path], overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.overrides = dict(overrides or {})
        self._stamps: dict[str, _Stamp] = {}
        self._good: dict[str, list[Policy]] = {}
        self.errors: list[PolicyError] = []
        self.generation = 0
        #: The failure classes of the last load (the good files' tables over the defaults).
        self.classes: FailureClasses = DEFAULT_CLASSES
        #: What the last load warned of (a deprecated field), logged at each reload.
        self.warnings: list[PolicyError] = []

    @property
    def policies(self) -> list[Policy]:
        """The policies in force: each file's last good version, in file order."""
        return [p for name in sorted(self._good) for p in self._good[name]]

    def _stamp(self, path: Path, old: _Stamp | None) -> _Stamp | None:
        try:
            st = path.stat()
            if old is not None and (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns):
                return old
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None
        return _Stamp(st.st_size, st.st_mtime_ns, digest)

    def _scan(self) -> dict[str, _Stamp]:
        files, _errors = policy_files(self.paths)
        out: dict[str, _Stamp] = {}
        for f in files:
            stamp = self._stamp(f, self._stamps.get(str(f)))
            if stamp is not None:
                out[str(f)] = stamp
        return out

    def poll(self) -> ReloadReport | None:
        """Reload if any file changed, appeared or vanished; None when nothing did."""
        stamps = self._scan()
        old = {k: v.digest for k, v in self._stamps.items()}
        new = {k: v.digest for k, v in stamps.items()}
        if self.generation and old == new:
            self._stamps = stamps
            return None
        report = ReloadReport(changed=sorted(k for k in new.keys() | old.keys() if old.get(k) != new.get(k)))
        self._stamps = stamps
        self._reload(report)
        self.generation += 1
        return report

    def _reload(self, report: ReloadReport) -> None:
        result = load_paths(self.paths, self.overrides)
        self.classes = result.classes
        self.warnings = list(result.warnings)
        self.errors = list(result.errors)
        report.errors = list(result.errors)
        bad = set(result.bad_files)
        fresh: dict[str, list[Policy]] = {f: [] for f in result.files if f not in bad}
        for policy in result.policies:
            fresh.setdefault(policy.source.file if policy.source else "", []).append(policy)
        good: dict[str, list[Policy]] = {}
        for name in result.files:
            if name in bad:
                report.rejected.append(name)
                if name in self._good:
                    good[name] = self._good[name]
            else:
                good[name] = fresh.get(name, [])
                report.loaded.append(name)
        for name in self._good:
            if name not in result.files and name not in bad:
                report.removed.append(name)
        # names stay unique: a name kept from a file's last good version wins over a new claim elsewhere
        kept = {p.name: f for f in report.rejected if f in good for p in good[f]}
        for f in list(good):
            if f in report.rejected:
                continue
            clash = [p.name for p in good[f] if p.name in kept]
            if clash:
                msg = (f"policy name(s) {', '.join(clash)} still belong to the last good version of "
                       f"{kept[clash[0]]}; {f} is not loaded until that file is fixed")
                self.errors.append(PolicyError(_pos(f), msg))
                report.errors.append(PolicyError(_pos(f), msg))
                report.loaded.remove(f)
                report.rejected.append(f)
                if f in self._good and not any(p.name in kept for p in self._good[f]):
                    good[f] = self._good[f]
                else:
                    del good[f]
        self._good = good


def _pos(file: str) -> Any:
    from corral.yamlpos import Pos

    return Pos(file, 1, 1)
