"""The sinks file: where corral's decisions are delivered, written by a wrangler in YAML.

One file, `sinks.yaml`, beside the policies (in a `--rules` folder) or named with
`--sinks`.  It is read with the positions of every key, checked by pydantic models (which
also give the JSON Schema editors use) and then by the checks pydantic cannot make (a
command template's fields, an entry point that is not installed); every problem comes
back at its file:line:column, all at once, as the policy loader's do.

    sinks:
      - name: farm
        type: afanasy
        server: 127.0.0.1:51000
      - name: qube
        type: command
        preset: qube
    delivery:
      max_attempts: 12

docs/sinks.md documents every key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import metadata as importlib_metadata
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from corral.outbox import Retries, Route
from corral.policy.loader import SINKS_FILES, PolicyError, duration_problem, parse_duration, suggest
from corral.ports import Sink
from corral.sinks.command import CommandSink, template_problem
from corral.states import Action, Kind
from corral.yamlpos import Pos, PosDict, PosList, YamlError, load_text, read_text

#: The names the sinks file may have in a policy folder (the policy loader skips them).
SINKS_FILENAMES = SINKS_FILES
#: The entry point group a studio's own sink registers in: a callable taking
#: (name, options) and returning a `corral.ports.Sink`.
ENTRY_POINT_GROUP = "corral.sinks"
#: The command-line tools with built-in templates (`corral/sinks/presets/NAME.yaml`).
PRESETS = ("qube", "deadline", "tractor", "opencue")


def _duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text such as 30s, 5m, 1h")
    seconds = float(value) if isinstance(value, int | float) else parse_duration(value)
    if seconds is None:
        raise ValueError(f"'{value}' is not a duration: write it as 30s, 5m, 1h or 1h30m")
    problem = duration_problem(seconds)
    if problem:
        raise ValueError(problem)
    return seconds


Duration = Annotated[float, BeforeValidator(_duration), Field(json_schema_extra={"type": ["number", "string"]})]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                            description="The sink's name: letters, digits, '.', '_', '-'; unique in the file.")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SinkBase(_Model):
    name: Name
    actions: list[Action] | None = Field(
        default=None, description="Deliver only these actions (default: every action the sink can carry).")


class AfanasySinkConfig(_SinkBase):
    """Afanasy (CGRU), natively: its own protocol, to its server (docs/afanasy.md)."""

    type: Literal["afanasy"]
    server: str = Field(default="127.0.0.1:51000", description="HOST:PORT of afserver.")
    user: str = Field(default="corral", description="The user_name Afanasy's log shows for corral's actions.")
    timeout: Duration = Field(default=10.0, description="How long to wait for the server's answer.")
    quarantine: Literal["nimby", "paused"] = Field(
        default="paused", description="How a locked worker is kept from every job: render paused, or NIMBY.")


class CommandSinkConfig(_SinkBase):
    """A command per action and kind, run without a shell (Qube!, Deadline, Tractor, OpenCue...)."""

    type: Literal["command"]
    preset: Literal["qube", "deadline", "tractor", "opencue"] | None = Field(
        default=None, description="Start from the tool's documented commands (docs/sinks.md).")
    commands: dict[Action, dict[Kind, list[str]]] = Field(
        default_factory=dict, description="action -> kind -> argv template, e.g. block: {job: [qbblock, '{job}']}.")
    timeout: Duration = Field(default=30.0, description="A command still running after this is killed (a failed send).")
    refused_exit_codes: list[int] | None = Field(
        default=None, description="Exit statuses that mean the supervisor refused (not retried); default: the preset's.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment added for the commands.")


class WebhookSinkConfig(_SinkBase):
    """An HTTP(S) POST of a JSON body per action, signed with HMAC-SHA256 (docs/sinks.md)."""

    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://", description="Where to POST (http:// or https://).")
    secret_env: str | None = Field(
        default=None, description="Name of the environment variable holding the signing secret (never the secret).")
    timeout: Duration = Field(default=10.0, description="How long to wait for the answer.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")


class PythonSinkConfig(_SinkBase):
    """A studio's own sink, installed as an entry point in the `corral.sinks` group."""

    type: Literal["python"]
    entry_point: str = Field(description="The entry point's name in the corral.sinks group.")
    options: dict[str, Any] = Field(default_factory=dict, description="Handed to the sink's factory as they are.")


SinkConfig = Annotated[
    AfanasySinkConfig | CommandSinkConfig | WebhookSinkConfig | PythonSinkConfig, Field(discriminator="type")
]


class DeliveryConfig(_Model):
    """How the outbox is delivered."""

    max_attempts: int = Field(default=12, ge=1, le=1000, description="Failed sends before a row is dead.")
    first_retry: Duration = Field(default=5.0, description="The wait after the first failed send; doubled each time.")
    longest_wait: Duration = Field(default=600.0, description="The longest wait between two sends of a row.")
    every: Duration = Field(default=5.0, description="How often the daemon delivers (and right after each cycle).")

    def retries(self) -> Retries:
        return Retries(timedelta(seconds=self.first_retry), timedelta(seconds=self.longest_wait), self.max_attempts)


class SinksFile(_Model):
    """The whole file."""

    sinks: list[SinkConfig] = Field(default_factory=list)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)


def json_schema() -> dict[str, Any]:
    """The sinks file's JSON Schema, for editors (`corral schema --sinks`)."""
    schema = SinksFile.model_json_schema()
    schema["title"] = "corral sinks file (sinks.yaml)"
    return schema


# --- loading -------------------------------------------------------------------------------


@dataclass
class SinksResult:
    """A checked sinks file: its configuration (None when it has errors) and every error."""

    file: str | None
    config: SinksFile | None = None
    errors: list[PolicyError] = field(default_factory=list)
    warnings: list[PolicyError] = field(default_factory=list)


def find_sinks_file(paths: Sequence[str | Path]) -> Path | None:
    """The sinks file in the first of `paths` (folders) that has one."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for name in SINKS_FILENAMES:
                if (path / name).is_file():
                    return path / name
    return None


def load_sinks(path: str | Path) -> SinksResult:
    name = str(path)
    try:
        text = read_text(path)
    except YamlError as err:
        return SinksResult(name, errors=[PolicyError(err.pos, err.message)])
    except OSError as err:
        return SinksResult(name, errors=[PolicyError(Pos(name, 1, 1), f"cannot read the file: {err.strerror or err}")])
    return load_sinks_text(text, name)


def load_sinks_text(text: str, filename: str = "<string>") -> SinksResult:
    result = SinksResult(filename)
    try:
        data = load_text(text, filename)
    except YamlError as err:
        result.errors.append(PolicyError(err.pos, err.message))
        return result
    if data is None:
        data = {}
    if not isinstance(data, dict):
        result.errors.append(PolicyError(Pos(filename, 1, 1), "a sinks file is a mapping with a 'sinks:' list"))
        return result
    try:
        config = SinksFile.model_validate(dict(data))
    except ValidationError as err:
        for problem in err.errors():
            where = _locate(data, problem["loc"], filename, str(problem["type"]))
            result.errors.append(PolicyError(where, _message(data, problem)))
        _sort(result)
        return result
    _check(config, data if isinstance(data, PosDict) else PosDict(data), result)
    _sort(result)
    if not result.errors:
        result.config = config
    return result


def _sort(result: SinksResult) -> None:
    result.errors.sort(key=lambda e: (e.pos.line, e.pos.column))


_TAGS = ("afanasy", "command", "webhook", "python")


def _walk(data: Any, loc: Sequence[Any]) -> tuple[Any, Any, Any]:
    """Follow a pydantic error location through the positioned data: (the container
    holding the last step found, that step, the value there; None when it is missing)."""
    node: Any = data
    parent: Any = None
    step: Any = None
    for part in loc:
        if isinstance(node, dict) and part in _TAGS and part not in node and node.get("type") == part:
            continue  # a discriminated union's tag, not a key
        if isinstance(node, dict) and isinstance(part, str) and part.endswith("[key]"):
            continue
        found = isinstance(node, dict) and part in node
        found = found or (isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        if found:
            parent, step, node = node, part, node[part]
        else:
            return node, part, None
    return parent, step, node


def _locate(data: Any, loc: Sequence[Any], filename: str, kind: str = "") -> Pos:
    parent, step, node = _walk(data, loc)
    if kind.startswith("union_tag") and isinstance(node, PosDict):
        return node.value_pos_of("type") if "type" in node else node.start
    if node is None:  # missing: where its container starts
        container = parent if isinstance(parent, PosDict | PosList) else data
        if isinstance(container, PosDict) and isinstance(step, str) and step in container:
            return container.pos_of(step)
        return container.start if isinstance(container, PosDict | PosList) else Pos(filename, 1, 1)
    if isinstance(parent, PosDict) and isinstance(step, str):
        return parent.value_pos_of(step)
    if isinstance(parent, PosList) and isinstance(step, int):
        return parent.pos_of(step)
    return Pos(filename, 1, 1)


def _message(data: Any, problem: Mapping[str, Any]) -> str:
    loc = [p for p in problem["loc"] if p not in _TAGS]
    key = _key_words(data, loc)
    kind = problem["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(problem["loc"][:-1])
        where = _key_words(data, loc[:-1])
        listed = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown key '{loc[-1]}' in {where}{suggest(str(loc[-1]), allowed)}{listed}"
    if kind == "missing":
        return f"'{key}' is required"
    if kind == "union_tag_invalid":
        return f"{key}: type must be one of {', '.join(_TAGS)}"
    if kind == "union_tag_not_found":
        return f"{key}: every sink needs a 'type': one of {', '.join(_TAGS)}"
    if kind == "enum" and str(loc[-1]).endswith("[key]"):
        choices = str(problem["msg"]).removeprefix("Input should be ")
        return f"{key}: '{problem.get('input')}' is not an action or a kind here: {choices}"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "url":
        return f"{key}: write an http:// or https:// address"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "name":
        return f"{key}: a sink's name is letters, digits, '.', '_' and '-' (63 at most), starting with a letter or digit"
    msg = str(problem["msg"]).removeprefix("Value error, ")
    return f"{key}: {msg}"


def _key_words(data: Any, loc: Sequence[Any]) -> str:
    """A location as a wrangler reads it: sinks.0.timeout -> sink 'qube': timeout."""
    parts = [str(p) for p in loc if not str(p).endswith("[key]")]
    if len(parts) >= 2 and parts[0] == "sinks" and parts[1].isdigit():
        items = data.get("sinks") if isinstance(data, dict) else None
        index = int(parts[1])
        item = items[index] if isinstance(items, list) and index < len(items) else None
        name = item.get("name") if isinstance(item, dict) else None
        label = f"sink '{name}'" if isinstance(name, str) else f"sink #{index + 1}"
        rest = ".".join(parts[2:])
        return f"{label}: {rest}" if rest else label
    return ".".join(parts) or "the file"


def _allowed_keys(loc: Sequence[Any]) -> list[str]:
    models: dict[str, type[BaseModel]] = {"afanasy": AfanasySinkConfig, "command": CommandSinkConfig,
                                          "webhook": WebhookSinkConfig, "python": PythonSinkConfig}
    if not loc:
        return list(SinksFile.model_fields)
    if loc[0] == "delivery":
        return list(DeliveryConfig.model_fields)
    tag = next((p for p in loc if p in _TAGS), None)
    return list(models[tag].model_fields) if tag else []


def _check(config: SinksFile, data: PosDict, result: SinksResult) -> None:
    """What the models cannot say: unique names, templates, presets, entry points."""
    items: Any = data.get("sinks") or PosList()
    seen: dict[str, Pos] = {}
    for index, sink in enumerate(config.sinks):
        raw = items[index] if isinstance(items, PosList) and index < len(items) else PosDict()
        where = raw.value_pos_of("name") if isinstance(raw, PosDict) else Pos(result.file or "", 1, 1)
        if sink.name in seen:
            result.errors.append(PolicyError(where, f"duplicate sink name '{sink.name}': also at {seen[sink.name]}"))
        seen.setdefault(sink.name, where)
        if isinstance(sink, CommandSinkConfig):
            _check_command(sink, raw, result)
        elif isinstance(sink, PythonSinkConfig):
            names = [ep.name for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)]
            if sink.entry_point not in names:
                result.errors.append(PolicyError(
                    raw.value_pos_of("entry_point"),
                    f"no entry point '{sink.entry_point}' in group {ENTRY_POINT_GROUP} is installed"
                    f"{suggest(sink.entry_point, names)}; install the package that provides it"))
        elif isinstance(sink, WebhookSinkConfig) and sink.secret_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*",
                                                                                        sink.secret_env):
            result.errors.append(PolicyError(raw.value_pos_of("secret_env"),
                                             "secret_env names an environment variable (not the secret itself)"))
        if sink.actions is not None:
            carried = {a for _k, a in _carries(sink)}
            for action in sink.actions:
                if action not in carried:
                    result.warnings.append(PolicyError(
                        raw.value_pos_of("actions"), f"sink '{sink.name}' has no way to deliver {action}: it is ignored"))


def _check_command(sink: CommandSinkConfig, raw: Any, result: SinksResult) -> None:
    commands = raw.get("commands") if isinstance(raw, PosDict) else None
    for action, kinds in sink.commands.items():
        for kind, argv in kinds.items():
            problem = template_problem(kind, argv)
            if problem is None:
                continue
            pos = raw.value_pos_of("commands") if isinstance(raw, PosDict) else Pos(result.file or "", 1, 1)
            by_action = commands.get(action.value) if isinstance(commands, PosDict) else None
            if isinstance(by_action, PosDict):
                pos = by_action.value_pos_of(kind.value)
            result.errors.append(PolicyError(pos, f"{sink.name}: {action} {kind}: {problem}"))
    if not _command_templates(sink):
        result.errors.append(PolicyError(raw.start if isinstance(raw, PosDict) else Pos(result.file or "", 1, 1),
                                         f"{sink.name}: a command sink needs a preset or commands"))


# --- presets and building --------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    commands: dict[Action, dict[Kind, list[str]]]
    refused_exit_codes: frozenset[int]


def preset(name: str) -> Preset:
    """A built-in command preset (`corral/sinks/presets/NAME.yaml`, cited in docs/sinks.md)."""
    import yaml

    text = (resources.files("corral.sinks") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    commands = {Action(a): {Kind(k): list(argv) for k, argv in kinds.items()} for a, kinds in data["commands"].items()}
    return Preset(commands, frozenset(int(c) for c in data.get("refused_exit_codes", [])))


def _command_templates(sink: CommandSinkConfig) -> dict[Action, dict[Kind, list[str]]]:
    merged: dict[Action, dict[Kind, list[str]]] = {}
    if sink.preset:
        for action, kinds in preset(sink.preset).commands.items():
            merged.setdefault(action, {}).update(kinds)
    for action, kinds in sink.commands.items():
        merged.setdefault(action, {}).update(kinds)
    if sink.actions is not None:
        merged = {a: k for a, k in merged.items() if a in sink.actions}
    return merged


def _carries(sink: Any) -> frozenset[tuple[Kind, Action]]:
    if isinstance(sink, CommandSinkConfig):
        return frozenset((k, a) for a, kinds in _command_templates(sink).items() for k in kinds)
    if isinstance(sink, AfanasySinkConfig):
        from corral.afanasy.sink import CARRIES

        carried: frozenset[tuple[Kind, Action]] = CARRIES
        return carried
    return frozenset((k, a) for a in Action for k in Kind)


def build_sinks(config: SinksFile) -> dict[str, Sink]:
    """The sinks of a checked file, ready to deliver."""
    sinks: dict[str, Sink] = {}
    for sink in config.sinks:
        sinks[sink.name] = _build(sink)
    return sinks


def _build(sink: Any) -> Sink:
    if isinstance(sink, CommandSinkConfig):
        codes = sink.refused_exit_codes
        refused = frozenset(codes) if codes is not None else (
            preset(sink.preset).refused_exit_codes if sink.preset else frozenset())
        return CommandSink(sink.name, _command_templates(sink), sink.timeout, refused, dict(sink.env))
    if isinstance(sink, WebhookSinkConfig):
        from corral.sinks.webhook import WebhookSink

        return WebhookSink(sink.name, sink.url, sink.secret_env, sink.timeout, dict(sink.headers),
                           frozenset(sink.actions) if sink.actions is not None else None)
    if isinstance(sink, AfanasySinkConfig):
        from corral.afanasy.sink import AfanasySink

        return AfanasySink.from_config(sink)
    assert isinstance(sink, PythonSinkConfig)
    (entry,) = [ep for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == sink.entry_point]
    factory: Any = entry.load()
    made: Sink = factory(sink.name, dict(sink.options))
    return made


def routes_of(config: SinksFile, sinks: Mapping[str, Sink]) -> list[Route]:
    """What each sink is queued: the actions it carries, narrowed by its `actions`."""
    out = []
    for sink in config.sinks:
        carries = sinks[sink.name].carries()
        if sink.actions is not None:
            carries = frozenset((k, a) for k, a in carries if a in sink.actions)
        out.append(Route(sink.name, carries))
    return out
