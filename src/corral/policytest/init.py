"""`corral test --init POLICY`: a starter test written from a farm, with what the
policy does to it now as the expected plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.cycle import plan_farm
from corral.farm import Farm
from corral.plan import Plan
from corral.policy.loader import builtin_dir
from corral.policy.model import Policy
from corral.policyset import PolicySet
from corral.policytest.model import BUILTIN
from corral.snapshot import farm_to_snapshot, parse_snapshot
from corral.states import Kind


def init_test(
    policy: Policy,
    farm: Farm,
    *,
    now: datetime,
    history: Mapping[tuple[str, str, str], datetime] | None = None,
    rules: str | None = None,
    untouched_count: int = 3,
    engine: str = "durable",
) -> str:
    """A starter test file: the farm trimmed to what the policy touches plus a few
    untouched entities, and the current plan as the expectations.

    `rules` is what the file's `rules:` says (a path relative to where it is written); a
    policy of the built-in pack is named `rules: builtin` instead, whatever `rules` says,
    so the test runs wherever corral is installed (a path into a virtual environment would not).
    """
    if in_builtin_pack(policy):
        rules = BUILTIN
    history = {k: v for k, v in (history or {}).items() if k[0] == policy.name}
    full, _ = plan_farm(farm, PolicySet([policy]), now=now, engine=engine, last_actions=dict(history))
    acted = {(t.kind, t.ident) for t in full.transitions}
    candidates = [e for e in _entities(farm, policy.kind) if e not in acted]
    skipped = {(s.kind, s.ident) for s in full.skipped}
    candidates.sort(key=lambda e: (e not in skipped, _idkey(e[1])))  # held-back ones first: the interesting ones
    untouched = candidates[:untouched_count]
    keep_jobs: set[int] = set()
    keep_workers: set[str] = set()
    for kind, ident in [*acted, *untouched, *skipped]:
        _keep(farm, kind, ident, keep_jobs, keep_workers)
    trimmed = _trim(farm, keep_jobs, keep_workers)
    kept_history = {k: v for k, v in history.items() if _exists(trimmed, Kind(k[1]), k[2])}
    plan, _ = plan_farm(trimmed, PolicySet([policy]), now=now, engine=engine, last_actions=dict(kept_history))
    still_untouched = [e for e in untouched if not any(t.kind is e[0] and t.ident == e[1] for t in plan.transitions)]
    return _write_test(policy, trimmed, plan, still_untouched, kept_history, now, rules,
                       changed=_acts(plan) != _acts(full))


def in_builtin_pack(policy: Policy) -> bool:
    """Whether the policy was read from the built-in pack (`corral.policy.loader.builtin_dir`)."""
    if policy.source is None or not policy.source.file:
        return False
    try:
        return Path(policy.source.file).resolve().parent == builtin_dir().resolve()
    except OSError:
        return False


def _acts(plan: Plan) -> set[tuple[str, str, str, str]]:
    return {(t.policy, str(t.kind), t.ident, str(t.action)) for t in plan.transitions}


def _idkey(ident: str) -> tuple[Any, ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in ident.replace(".", ":").split(":"))


def _entities(farm: Farm, kind: Kind) -> list[tuple[Kind, str]]:
    if kind is Kind.JOB:
        return [(kind, str(j)) for j in farm.jobs]
    if kind is Kind.FRAME:
        return [(kind, f.key) for j in farm.jobs.values() for f in j.frames.values()]
    if kind is Kind.INSTANCE:
        return [(kind, i) for i in farm.instances]
    return [(kind, w) for w in farm.workers]


def _exists(farm: Farm, kind: Kind, ident: str) -> bool:
    try:
        farm.entity(kind, ident)
    except KeyError:
        return False
    return True


def _keep(farm: Farm, kind: Kind, ident: str, jobs: set[int], workers: set[str]) -> None:
    """What must stay in the trimmed farm for this entity's facts to stay the same."""
    if kind is Kind.WORKER:
        workers.add(ident)
        for job in farm.jobs.values():  # its failure counts come from every job it ran
            hosts = {i.host for i in job.instances.values()}
            hosts |= {f.host for f in job.frames.values() if f.host}
            hosts |= {r.host for f in job.frames.values() for r in f.runs if r.host}
            if ident in hosts:
                jobs.add(job.id)
        return
    owner = farm.job_of(kind, ident)
    if owner is None:
        raise KeyError(f"no {kind} '{ident}' in the farm")
    jobs.add(owner)


def _trim(farm: Farm, jobs: set[int], workers: set[str]) -> Farm:
    """The kept jobs plus what they depend on (a snapshot must name every dependency) and their hosts."""
    todo = list(jobs)
    keep: set[int] = set()
    while todo:
        job_id = todo.pop()
        if job_id in keep or job_id not in farm.jobs:
            continue
        keep.add(job_id)
        job = farm.jobs[job_id]
        todo.extend(job.depends_on)
        todo.extend(j for f in job.frames.values() for j, _ in f.depends_on)
    data = farm_to_snapshot(farm)
    data["jobs"] = [j for j in data["jobs"] if j["id"] in keep]
    hosts = set(workers)
    for job_id in keep:
        job = farm.jobs[job_id]
        hosts |= {i.host for i in job.instances.values()}
        hosts |= {f.host for f in job.frames.values() if f.host}
        hosts |= {r.host for f in job.frames.values() for r in f.runs if r.host}
    data["workers"] = [w for w in data["workers"] if w["name"] in hosts]
    return parse_snapshot(data, "<trimmed>")


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _entity_key(kind: Kind, ident: str) -> Any:
    return int(ident) if kind is Kind.JOB else ident


def _write_test(policy: Policy, farm: Farm, plan: Plan, untouched: list[tuple[Kind, str]],
                history: Mapping[tuple[str, str, str], datetime], now: datetime, rules: str | None, changed: bool) -> str:
    import yaml

    case: dict[str, Any] = {"name": f"{policy.name} on the farm as of {_stamp(now)}"}
    if history:
        case["history"] = [{"policy": p, k: _entity_key(Kind(k), i), "at": _stamp(at)} for (p, k, i), at in history.items()]
    case["at"] = _stamp(now)
    case["expect"] = [{"policy": t.policy, str(t.kind): _entity_key(t.kind, t.ident), "action": str(t.action),
                       "to": t.to_state} for t in plan.transitions]
    if untouched:
        case["untouched"] = [f"{k} {i}" for k, i in untouched]
    case["farm"] = farm_to_snapshot(farm)
    doc: dict[str, Any] = {"policies": [policy.name]}
    if rules:
        doc["rules"] = rules
    doc["cases"] = [case]
    header = [
        f"# Starter test for {policy.name}, written by `corral test --init` at {_stamp(now)}.",
        "# The expectations are what the policy plans today: read them, and keep only what you mean.",
        "# Add cases for what it must NOT do (untouched:), and more points in time (steps:).",
    ]
    if changed:
        header.append("# NOTE: trimming the farm changed the plan (limits such as max_percent count the whole farm);")
        header.append("# the expectations below are those of the trimmed farm.")
    if not plan.transitions:
        header.append("# The policy plans nothing on this farm today: expect: [] below.")
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120, default_flow_style=None)
    return "\n".join(header) + "\n" + body
