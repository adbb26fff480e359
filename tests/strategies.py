"""Hypothesis strategies: random farms and random policies over the fact vocabulary.

Farms are small (a few jobs, frames, instances, hosts) but dense in the things the
policy language reads: frame histories on several hosts, dependencies (some on jobs
that do not exist), missing timestamps and exit codes, awkward names.  Policies are
random condition trees over `FIELDS[kind]` with values of the field's type, every
operator, nesting and `not`.  Values are drawn from the same pools as the farm's
data, so comparisons are true often enough to matter, and durations and percentages
land exactly on fact values (boundary cases) some of the time.

`policy_yaml` renders a policy as a YAML file the way a wrangler might write it
(operator aliases, `state: failed` shorthands, `$param`s, '1h30m' durations) and
returns the Policy the loader is expected to build from it.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from hypothesis import assume
from hypothesis import strategies as st

from corral.facts import FIELDS, FieldSpec
from corral.farm import Farm, Frame, FrameRun, Instance, Job, Worker
from corral.policy.model import ActionSpec, All, AnyOf, Cmp, Cond, Not, Policy, pinned_states
from corral.policy.operators import OPERATORS
from corral.states import FrameState, Hold, InstanceState, JobState, Kind, WorkerState, actions_for, legal_from

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

HOSTS = ("r01", "r02", "render-3", "gpu.4", "x_5")
NAMES = ("shot010_comp", "shot020_lgt", "fx-sim.v2", "Ünïcode_é", "a b", "shot010_comp_v2")
LETTERS = ("a", "b", "c")

# Offsets in seconds: whole minutes, plus a few awkward fractions (float boundaries).
OFFSETS = st.one_of(
    st.integers(0, 240).map(lambda m: float(m * 60)),
    st.sampled_from([0.5, 59.999, 600.000001, 1830.123456, 5400.0, 3600.0, 1.0 / 3.0]),
)


def _ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


maybe_time = st.one_of(st.none(), OFFSETS.map(_ago))


@st.composite
def frame_runs(draw: Any, job_id: int) -> list[FrameRun]:
    runs = []
    for _ in range(draw(st.integers(0, 3))):
        host = draw(st.one_of(st.none(), st.sampled_from(HOSTS)))
        inst = draw(st.one_of(st.none(), st.sampled_from([f"{job_id}.{x}" for x in LETTERS])))
        state = draw(st.sampled_from([FrameState.FAILED, FrameState.COMPLETE, FrameState.KILLED]))
        code = draw(st.one_of(st.none(), st.sampled_from([-9, -1, 0, 1, 2, 3, 137, 143, 139])))
        runs.append(FrameRun(host, inst, state, code, draw(maybe_time), draw(maybe_time)))
    return runs


@st.composite
def frames_of(draw: Any, job_id: int, job_ids: list[int]) -> dict[int, Frame]:
    out = {}
    for number in draw(st.sets(st.integers(1, 5), max_size=4)):
        deps = draw(st.lists(st.tuples(st.sampled_from([*job_ids, 99]), st.integers(1, 5)), max_size=2))
        out[number] = Frame(
            job_id=job_id,
            number=number,
            state=draw(st.sampled_from(list(FrameState))),
            host=draw(st.one_of(st.none(), st.sampled_from(HOSTS))),
            instance=draw(st.one_of(st.none(), st.sampled_from([f"{job_id}.{x}" for x in LETTERS]))),
            attempts=draw(st.integers(0, 4)),
            retries=draw(st.integers(0, 3)),
            exit_code=draw(st.one_of(st.none(), st.sampled_from([-9, -1, 0, 1, 2, 3, 137, 143]))),
            started_at=draw(maybe_time),
            finished_at=draw(maybe_time),
            state_since=draw(maybe_time),
            layer=draw(st.one_of(st.none(), st.sampled_from(["render", "comp"]))),
            avoid_hosts=draw(st.one_of(st.none(), st.sampled_from(HOSTS[:2]), st.just(" ".join(sorted(HOSTS[:2]))))),
            depends_on=deps,
            runs=draw(frame_runs(job_id)),
        )
    return out


@st.composite
def jobs(draw: Any, job_id: int, job_ids: list[int]) -> Job:
    job = Job(
        id=job_id,
        name=draw(st.sampled_from(NAMES)),
        priority=draw(st.integers(0, 100)),
        state=draw(st.sampled_from(list(JobState))),
        hold=draw(st.sampled_from(list(Hold))),
        retry_limit=draw(st.integers(0, 3)),
        retries=draw(st.integers(0, 4)),
        depends_on=draw(st.lists(st.sampled_from([*[j for j in job_ids if j != job_id], 99]), max_size=3, unique=True)),
        submitted_at=draw(maybe_time),
        state_since=draw(maybe_time),
        last_retry_at=draw(maybe_time),
        owner=draw(st.one_of(st.none(), st.sampled_from(["ann", "bob"]))),
        frames=draw(frames_of(job_id, job_ids)),
    )
    for letter in draw(st.sets(st.sampled_from(LETTERS), max_size=3)):
        iid = f"{job_id}.{letter}"
        job.instances[iid] = Instance(
            iid, job_id, draw(st.sampled_from(HOSTS)), draw(st.sampled_from(list(InstanceState))), draw(maybe_time)
        )
    return job


@st.composite
def farms(draw: Any, max_jobs: int = 4) -> Farm:
    job_ids = sorted(draw(st.sets(st.integers(1, 6), max_size=max_jobs)))
    farm = Farm()
    for jid in job_ids:
        farm.jobs[jid] = draw(jobs(jid, job_ids))
    for host in draw(st.sets(st.sampled_from(HOSTS))):
        farm.workers[host] = Worker(host, draw(st.sampled_from(list(WorkerState))), draw(maybe_time))
    return farm


def mutate(draw: Any, farm: Farm) -> Farm:
    """A copy of `farm` with a few random changes: what one daemon cycle might see."""
    farm = copy.deepcopy(farm)
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.sampled_from(["frame", "frame", "job_state", "add_job", "remove_job", "worker", "instance"]))
        frames = [f for j in farm.jobs.values() for f in j.frames.values()]
        if what == "frame" and frames:
            frame = draw(st.sampled_from(frames))
            frame.state = draw(st.sampled_from(list(FrameState)))
            frame.host = draw(st.one_of(st.none(), st.sampled_from(HOSTS)))
            frame.exit_code = draw(st.one_of(st.none(), st.integers(-1, 3)))
            frame.state_since = draw(maybe_time)
            if draw(st.booleans()):
                frame.runs.append(FrameRun(frame.host, frame.instance, draw(st.sampled_from(
                    [FrameState.FAILED, FrameState.COMPLETE])), frame.exit_code, draw(maybe_time), draw(maybe_time)))
        elif what == "job_state" and farm.jobs:
            job = farm.jobs[draw(st.sampled_from(sorted(farm.jobs)))]
            job.state = draw(st.sampled_from(list(JobState)))
            job.retries = draw(st.integers(0, 4))
        elif what == "add_job":
            free = [i for i in range(1, 8) if i not in farm.jobs]
            if free:
                jid = draw(st.sampled_from(free))
                farm.jobs[jid] = draw(jobs(jid, sorted([*farm.jobs, jid])))
        elif what == "remove_job" and farm.jobs:
            del farm.jobs[draw(st.sampled_from(sorted(farm.jobs)))]
        elif what == "worker":
            host = draw(st.sampled_from(HOSTS))
            if host in farm.workers and draw(st.booleans()):
                del farm.workers[host]
            else:
                farm.workers[host] = Worker(host, draw(st.sampled_from(list(WorkerState))), draw(maybe_time))
        elif what == "instance" and farm.instances:
            inst = farm.instances[draw(st.sampled_from(sorted(farm.instances)))]
            inst.state = draw(st.sampled_from(list(InstanceState)))
    farm.reindex()
    return farm


# --- policies -------------------------------------------------------------------------

REGEXES = ("^r0", r"\d$", "render", "^shot0[0-9]{2}_", "comp|lgt", ".", "^$", r"\.", "a+", "(?i)SHOT", "-", "é",
           r"^\w+$", " ", ":1$", r"^[^_]*$")
GLOBS = ("r0*", "*", "?", "r0?", "shot*_comp", "*[0-9]", "[!r]*", "render-*", "gpu.*", "*.v2", "x_?", "", "[a-c]*",
         "*-*", "1:*", "*.a", "Ü*", "*é*", "a b", "*%*", "[]]", "*_v?", "shot010_comp")
FLOATS = (0, 0.0, 25.0, 33.333333333333336, 50, 66.66666666666667, 100.0, 99.9)


def _str_pool(kind: Kind, path: str) -> tuple[str, ...]:
    last = path.rsplit(".", 1)[-1]
    if last == "host" or path.startswith("worker.") or kind is Kind.WORKER:
        pool: tuple[str, ...] = HOSTS
    elif last == "name":
        pool = NAMES
    elif last == "owner":
        pool = ("ann", "bob")
    elif last == "layer":
        pool = ("render", "comp")
    elif last == "instance" or (kind is Kind.INSTANCE and path == "id"):
        pool = tuple(f"{j}.{x}" for j in (1, 2) for x in LETTERS)
    elif kind is Kind.FRAME and path == "id":
        pool = tuple(f"{j}:{n}" for j in (1, 2, 3) for n in (1, 2))
    else:
        pool = HOSTS + NAMES
    return (*pool, "", "zzz")


def typed_value(kind: Kind, path: str, spec: FieldSpec) -> st.SearchStrategy[Any]:
    if spec.type == "int":
        return st.integers(-1, 6)
    if spec.type == "float":
        return st.sampled_from(FLOATS)
    if spec.type == "duration":
        return OFFSETS
    if spec.type == "bool":
        return st.booleans()
    if spec.type == "state":
        return st.sampled_from(spec.states)
    return st.sampled_from(_str_pool(kind, path))


@st.composite
def comparisons(draw: Any, kind: Kind) -> Cmp:
    fields = FIELDS[kind]
    path = draw(st.sampled_from(sorted(fields)))
    spec = fields[path]
    op = draw(st.sampled_from([o for o in OPERATORS.values() if spec.type in o.types]))
    if op.value == "bool":
        value: Any = draw(st.booleans())
    elif op.value == "list":
        value = tuple(draw(st.lists(typed_value(kind, path, spec), min_size=1, max_size=3)))
    elif op.name == "regex":
        value = draw(st.sampled_from(REGEXES))
    elif op.name == "glob":
        value = draw(st.sampled_from(GLOBS + _str_pool(kind, path)))
    else:
        value = draw(typed_value(kind, path, spec))
    return Cmp(path, op.name, value)


def conditions(kind: Kind, depth: int = 3) -> st.SearchStrategy[Cond]:
    leaf = comparisons(kind)
    if depth == 0:
        return leaf
    sub = st.deferred(lambda: conditions(kind, depth - 1))
    return st.one_of(
        leaf,
        leaf,
        st.lists(sub, min_size=1, max_size=3).map(lambda xs: All(tuple(xs))),
        st.lists(sub, min_size=1, max_size=3).map(lambda xs: AnyOf(tuple(xs))),
        sub.map(Not),
    )


def _action_for(draw: Any, kind: Kind, when: Cond) -> ActionSpec:
    pinned = pinned_states(when)
    choices = [a for a in actions_for(kind) if pinned is None or pinned & legal_from(kind, a)]
    assume(choices)
    return ActionSpec(draw(st.sampled_from(choices)))


@st.composite
def policies(draw: Any, kind: Kind, name: str) -> Policy:
    when = draw(conditions(kind))
    return Policy(name=name, kind=kind, when=when, actions=(_action_for(draw, kind, when),), reason="matched {id}")


@st.composite
def policy_sets(draw: Any, kinds: tuple[Kind, ...] = tuple(Kind)) -> list[Policy]:
    out = []
    for kind in kinds:
        for i in range(draw(st.integers(0, 3))):
            out.append(draw(policies(kind, f"{kind}-{i}")))
    return out


# --- the same policies written as YAML ---------------------------------------------------


def duration_text(seconds: float) -> str | None:
    """Whole seconds as a wrangler writes them ('1h30m', '90s'); None if not whole."""
    if seconds != int(seconds):
        return None
    s, out = int(seconds), ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out or "0s"


class _Writer:
    def __init__(self, draw: Any, kind: Kind) -> None:
        self.draw, self.kind = draw, kind
        self.params: dict[str, Any] = {}

    def scalar(self, path: str, value: Any) -> Any:
        spec = FIELDS[self.kind].get(path)
        if spec is not None and spec.type == "duration" and not isinstance(value, bool):
            text = duration_text(value)
            if text is not None and self.draw(st.booleans()):
                value = text
        if self.draw(st.integers(0, 4)) == 0:
            name = f"p{len(self.params)}"
            self.params[name] = value
            return f"${name}"
        return value

    def cond(self, cond: Cond) -> Any:
        if isinstance(cond, All):
            return {"all": [self.cond(c) for c in cond.items]}
        if isinstance(cond, AnyOf):
            return {"any": [self.cond(c) for c in cond.items]}
        if isinstance(cond, Not):
            return {"not": self.cond(cond.item)}
        op = OPERATORS[cond.op]
        if op.value == "list":
            value: Any = [self.scalar(cond.path, v) for v in cond.value]
            if cond.op == "in" and self.draw(st.booleans()):
                return {cond.path: value}  # `state: [failed, killed]`
        elif op.value == "scalar":
            value = self.scalar(cond.path, cond.value)
            if cond.op == "eq" and not isinstance(value, str) and self.draw(st.booleans()):
                return {cond.path: value}  # `retries: 3`
        else:
            value = self.scalar(cond.path, cond.value) if op.value == "pattern" else cond.value
        alias = self.draw(st.sampled_from((op.name, *op.aliases)))
        return {cond.path: {alias: value}}


@st.composite
def policy_yaml(draw: Any, kind: Kind, name: str) -> tuple[str, Policy]:
    """A YAML file holding one policy, and the Policy the loader should make of it."""
    policy = draw(policies(kind, name))
    writer = _Writer(draw, kind)
    when = writer.cond(policy.when)
    doc: dict[str, Any] = {"name": name, "kind": str(kind)}
    if writer.params:
        doc["params"] = writer.params
    doc |= {"when": when, "actions": [str(policy.actions[0].action)], "reason": policy.reason}
    text = yaml.safe_dump({"policies": [doc]}, allow_unicode=True, sort_keys=False)
    expected = Policy(**{**policy.__dict__, "params": tuple(sorted(writer.params.items()))})
    return text, _normalise(expected)


def _normalise(policy: Policy) -> Policy:
    """Durations load as float seconds; everything else as written."""

    def fix(cond: Cond) -> Cond:
        if isinstance(cond, All):
            return All(tuple(fix(c) for c in cond.items))
        if isinstance(cond, AnyOf):
            return AnyOf(tuple(fix(c) for c in cond.items))
        if isinstance(cond, Not):
            return Not(fix(cond.item))
        spec = FIELDS[policy.kind][cond.path]
        if spec.type == "duration" and cond.op != "exists":
            value = tuple(float(v) for v in cond.value) if isinstance(cond.value, tuple) else float(cond.value)
            return Cmp(cond.path, cond.op, value)
        return cond

    return Policy(**{**policy.__dict__, "when": fix(policy.when)})
