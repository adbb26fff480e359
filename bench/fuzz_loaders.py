"""Fuzz the three loaders a wrangler or a supervisor feeds: policy files, farm snapshots
and event lines.  Prints how many inputs were tried and how each ended.

    python bench/fuzz_loaders.py [--inputs 500] [--seed 1] [--json]

Inputs are the shipped files (the built-in pack, examples/farm-snapshot.yaml,
examples/events.jsonl) mutated the ways the hardening audit found to hurt: integers
beyond 64 bits, impossible dates, invalid UTF-8, NUL and control characters, unhashable
keys, deep nesting, alias bombs, huge frame ranges, wrong JSON types, flipped and cut
bytes.  Each input runs in this process under a time limit (--timeout, 5 s) and a
memory limit (--memory, 2 GB).  Outcomes:

- `rejected`: refused with the loader's own error, which names a position;
- `accepted`: loaded (a mutation can leave a valid file);
- `traceback`: any other exception (a defect);
- `hang`: over the time limit (a defect);
- `unpositioned`: a policy or snapshot error with no file:line:column (a defect).

Nothing here is a test; tests/test_fuzz.py runs a bounded version of the same in the
suite.  docs/production.md records the figures with this command.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import resource
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from corral.cycle import plan_farm  # noqa: E402
from corral.feed import BadEvent, parse_line  # noqa: E402
from corral.policy.loader import load_texts  # noqa: E402
from corral.policyset import PolicySet  # noqa: E402
from corral.snapshot import SnapshotError, load_snapshot_file, parse_snapshot, read_document  # noqa: E402

POSITIONED = re.compile(r":\d+:\d+")

#: Text that hurt some loader once, to splice in.
NASTY = [
    "99999999999999999999999999999999", "-99999999999999999999", "1e400", ".inf", ".nan", "2026-02-30",
    "2026-13-01T00:00:00Z", "\x00", "\x1b[2J", "\u202e", "\ud800", "? [a, b]\n  : x", "{? {a: 1} : 2}",
    "[" * 200 + "]" * 200, "{a: " * 120 + "1" + "}" * 120, "1-99999999", "'1-4294967296'", "&a [x, *a]",
    "true", "null", "~", "''", '"\\uffff"', "!!python/object:os.system {}", "!!binary AAAA", "<<: *x",
]
BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9 if p else ['x'] * 9)}]\n"
               for c, p in zip("abcdefg", ["", "a", "b", "c", "d", "e", "f"], strict=True))


def mutate(text: str, rnd: random.Random) -> str:
    """One to three edits of a seed text."""
    for _ in range(rnd.randint(1, 3)):
        what = rnd.random()
        at = rnd.randrange(len(text) + 1)
        if what < 0.35:
            text = text[:at] + rnd.choice(NASTY) + text[at:]
        elif what < 0.5:  # replace a token (a number, a word) by something nasty
            tokens = list(re.finditer(r"[A-Za-z0-9_.:-]+", text))
            if tokens:
                tok = rnd.choice(tokens)
                text = text[:tok.start()] + rnd.choice(NASTY) + text[tok.end():]
        elif what < 0.6:
            text = text[:at]  # cut short
        elif what < 0.7:
            text = text[:at] + chr(rnd.randrange(0, 0x250)) + text[at + 1:]
        elif what < 0.8:
            text = BOMB + text
        elif what < 0.9:
            line_start = text.rfind("\n", 0, at) + 1
            text = text[:line_start] + text[line_start:at] + text[line_start:]  # duplicate part of a line
        else:
            chunk = text[at:at + rnd.randint(1, 80)]
            text = text[:at] + chunk * rnd.randint(2, 5) + text[at:]
    return text


def _policies(text: str) -> str:
    """Loaded, and what loads is then evaluated by both engines on the example farm: a file
    `corral check` accepts must never fail a cycle."""
    loaded = load_texts([("p.yaml", text)])
    if loaded.errors and not all(POSITIONED.search(str(e)) for e in loaded.errors):
        return "unpositioned"
    if loaded.errors:
        return "rejected"
    for engine in ("durable", "reference"):
        plan_farm(_example_farm(), PolicySet(loaded.policies), now=NOW, engine=engine)
    return "accepted"


_FARM: list[Any] = []
NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def _example_farm() -> Any:
    if not _FARM:
        _FARM.append(load_snapshot_file(ROOT / "examples" / "farm-snapshot.yaml"))
    return copy.deepcopy(_FARM[0])


def _snapshot(text: str) -> str:
    try:
        parse_snapshot(read_document(text, "s.yaml"), "s.yaml")
    except SnapshotError as err:
        return "rejected" if all(POSITIONED.search(e) for e in err.errors) else "unpositioned"
    return "accepted"


def _event(text: str) -> str:
    try:
        parse_line(text)
    except BadEvent:
        return "rejected"
    return "accepted"


def _seeds() -> dict[str, tuple[list[str], Callable[[str], str]]]:
    policies = [p.read_text() for p in sorted((ROOT / "rules").glob("*.yaml")) if not p.name.endswith(".test.yaml")]
    events = (ROOT / "examples" / "events.jsonl").read_text().splitlines()
    return {
        "policy": (policies, _policies),
        "snapshot": ([(ROOT / "examples" / "farm-snapshot.yaml").read_text()], _snapshot),
        "event": (events, _event),
    }


class _Timeout(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise _Timeout


def run(inputs: int, seed: int, timeout: float, memory_gb: float) -> dict[str, Any]:
    resource.setrlimit(resource.RLIMIT_AS, (int(memory_gb * 2**30), resource.RLIM_INFINITY))
    signal.signal(signal.SIGALRM, _alarm)
    rnd = random.Random(seed)
    out: dict[str, Any] = {"inputs_per_loader": inputs, "seed": seed}
    for name, (seeds, load) in _seeds().items():
        counts: Counter[str] = Counter()
        examples: dict[str, str] = {}
        slowest = 0.0
        for _ in range(inputs):
            text = mutate(rnd.choice(seeds), rnd)
            signal.setitimer(signal.ITIMER_REAL, timeout)
            t0 = time.perf_counter()
            try:
                outcome = load(text)
            except _Timeout:
                outcome = "hang"
            except Exception:
                outcome = "traceback"
                examples.setdefault(traceback.format_exc().strip().splitlines()[-1], text[:300])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.perf_counter() - t0)
            counts[outcome] += 1
        out[name] = {**{k: counts.get(k, 0) for k in ("accepted", "rejected", "traceback", "hang", "unpositioned")},
                     "slowest_s": round(slowest, 3), "traceback_examples": examples}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=500, help="mutated inputs per loader")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds an input may take")
    parser.add_argument("--memory", type=float, default=2.0, help="GB the process may use")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.inputs < 1:
        raise SystemExit("--inputs must be at least 1")
    result = run(args.inputs, args.seed, args.timeout, args.memory)
    if args.json:
        print(json.dumps(result))
        return
    for name in ("policy", "snapshot", "event"):
        r = result[name]
        print(f"{name:9} accepted {r['accepted']:5}  rejected {r['rejected']:5}  traceback {r['traceback']:3}  "
              f"hang {r['hang']:3}  unpositioned {r['unpositioned']:3}  slowest {r['slowest_s']} s")
        for error, text in r["traceback_examples"].items():
            print(f"    {error}\n        {text!r}")


if __name__ == "__main__":
    main()
