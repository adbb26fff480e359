"""The sinks file and the generic sinks: errors at file:line, the schema editors use, a
command run without a shell, a signed webhook."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from corral.cli import app
from corral.outbox import Delivered, Entry, Failed, Refused
from corral.sinks.command import CommandSink, render, template_problem
from corral.sinks.config import build_sinks, json_schema, load_sinks_text, routes_of
from corral.sinks.webhook import WebhookSink
from corral.states import Action, Kind

AT = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def entry(kind: Kind = Kind.JOB, ident: str = "42", action: Action = Action.BLOCK, **target: Any) -> Entry:
    return Entry(id=7, key="corral-abc", sink="s", at=AT, kind=kind, entity_id=ident, action=action,
                 target=target or {"job": 42, "job_name": "shot_010"}, policy="p", reason="failed 5 in a row")


# --- the file ----------------------------------------------------------------------------------

GOOD = """\
sinks:
  - name: qube
    type: command
    commands:
      block: {job: [qbblock, "{job}"]}
      retry: {frame: [qbretry, "{job}.{frame}"]}
    refused_exit_codes: [2]
  - name: room
    type: webhook
    url: https://chat.example/hook
    secret_env: CORRAL_HOOK_SECRET
    actions: [block, kill]
delivery:
  max_attempts: 5
  first_retry: 10s
"""


def test_a_good_file_builds_its_sinks_and_routes() -> None:
    result = load_sinks_text(GOOD, "sinks.yaml")
    assert result.errors == [] and result.config is not None
    sinks = build_sinks(result.config)
    routes = {r.sink: r for r in routes_of(result.config, sinks)}
    assert routes["qube"].carries == {(Kind.JOB, Action.BLOCK), (Kind.FRAME, Action.RETRY)}
    assert {a for _k, a in routes["room"].carries} == {Action.BLOCK, Action.KILL}
    assert result.config.delivery.retries().max_attempts == 5


@pytest.mark.parametrize(("text", "line", "words"), [
    ("sinks:\n  - name: a\n    type: command\n    commands: {block: {job: [qbblock, '{jobid}']}}\n", 4,
     "unknown field {jobid}"),
    ("sinks:\n  - name: a\n    type: command\n    commands:\n      block:\n        job: [qbblock, '{frame}']\n", 6,
     "only a frame has it"),
    ("sinks:\n  - name: a\n    type: command\n    timeout: .inf\n    preset: qube\n", 4, "at most"),
    ("sinks:\n  - name: a\n    type: smoke-signal\n", 3, "type must be one of"),
    ("sinks:\n  - name: a\n    type: webhook\n    url: ftp://x\n", 4, "http:// or https://"),
    ("sinks:\n  - name: a\n    type: webhook\n    url: http://x\n    secret: hunter2\n", 5, "unknown key 'secret'"),
    ("sinks:\n  - name: a\n    type: webhook\n    url: http://x\n  - name: a\n    type: webhook\n    url: http://y\n", 5,
     "duplicate sink name"),
    ("sinks:\n  - name: a\n    type: python\n    entry_point: nowhere\n", 4, "no entry point 'nowhere'"),
    ("sinks:\n  - name: a\n    type: command\n    commands: {block: {job: ['{job}']}}\n", 4, "the program"),
    ("sinks:\n  - name: a\n    type: command\n    commands: {block: {job: [qb, '{job!r}']}}\n", 4, "format or conversion"),
    ("delivery:\n  max_attempts: 0\n", 2, "greater than or equal to 1"),
    ("sinks: [\n", 2, ""),
])
def test_every_mistake_is_reported_at_its_line_with_what_to_do(text: str, line: int, words: str) -> None:
    result = load_sinks_text(text, "sinks.yaml")
    assert result.config is None and result.errors, text
    first = result.errors[0]
    assert first.pos.file == "sinks.yaml" and first.pos.line == line and words in first.message, str(first)


def test_the_schema_editors_use_accepts_the_good_file_and_refuses_a_bad_type() -> None:
    schema = json_schema()
    jsonschema.validate(yaml.safe_load(GOOD), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"sinks": [{"name": "a", "type": "smoke"}]}, schema)


def test_check_reads_the_sinks_file_beside_the_policies_and_warns_of_undeliverable_policies(tmp_path: Path) -> None:
    (tmp_path / "sinks.yaml").write_text(
        "sinks:\n  - name: q\n    type: command\n    commands: {kill: {job: [qbkill, '{job}']}}\n")
    (tmp_path / "p.yaml").write_text(
        "name: hold-broken\nkind: job\nwhen: {frames_failed: {gte: 3}}\nactions: [block]\nreason: broken\n")
    out = CliRunner().invoke(app, ["check", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "1 sink(s)" in out.output and "no sink delivers block job" in out.output
    (tmp_path / "sinks.yaml").write_text("sinks:\n  - name: q\n    type: nope\n")
    out = CliRunner().invoke(app, ["check", str(tmp_path)])
    assert out.exit_code == 1 and "sinks.yaml:3:11" in out.output


def test_the_policy_loader_does_not_take_the_sinks_file_for_a_policy(tmp_path: Path) -> None:
    from corral.policy.loader import load_paths

    (tmp_path / "sinks.yaml").write_text(GOOD)
    assert load_paths([tmp_path]).errors == []


# --- the command sink ---------------------------------------------------------------------------


def test_templates_name_only_fields_their_kind_has() -> None:
    assert template_problem(Kind.FRAME, ["qbretry", "{job}.{frame}"]) is None
    assert "unknown field" in (template_problem(Kind.JOB, ["x", "{__class__}"]) or "")
    assert "not a field name" in (template_problem(Kind.JOB, ["x", "{job.__class__}"]) or "")
    assert render(["tool", "--reason={reason}", "{job_name}"], entry()) == ["tool", "--reason=failed 5 in a row", "shot_010"]


def _tool(tmp_path: Path, code: int, sleep: float = 0) -> str:
    script = tmp_path / "tool.py"
    script.write_text(
        "import json, sys, time\n"
        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        f"time.sleep({sleep})\nprint('job 42: done' if {code} == 0 else 'no such job', file=sys.stderr)\n"
        f"sys.exit({code})\n")
    return str(script)


def test_a_command_runs_without_a_shell_and_its_exit_status_decides(tmp_path: Path) -> None:
    def sink(code: int, sleep: float = 0) -> CommandSink:
        return CommandSink("s", {Action.BLOCK: {Kind.JOB: [sys.executable, _tool(tmp_path, code, sleep), "{job}",
                                                          "{job_name}; rm -rf /"]}},
                           timeout=1.0, refused_codes=frozenset({2}))

    assert sink(0).deliver(entry()) == Delivered("exit 0: job 42: done")
    assert json.loads((tmp_path / "argv.json").read_text()) == ["42", "shot_010; rm -rf /"]  # one word, no shell
    assert sink(2).deliver(entry()) == Refused("exit 2: no such job")
    assert isinstance(sink(1).deliver(entry()), Failed)
    slow = sink(0, sleep=5).deliver(entry())
    assert isinstance(slow, Failed) and "did not finish within 1s" in slow.error
    missing = CommandSink("s", {Action.BLOCK: {Kind.JOB: ["/no/such/qbblock", "{job}"]}}).deliver(entry())
    assert isinstance(missing, Failed) and "cannot run /no/such/qbblock" in missing.error


# --- the webhook sink --------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    answers: list[int] = []
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        code = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"thanks" if code < 300 else b"nope")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.answers, _Receiver.got = [], []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


def test_a_webhook_posts_a_signed_body_with_its_idempotency_key(receiver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    outcome = WebhookSink("room", receiver, secret_env="HOOK_SECRET").deliver(entry())
    assert outcome == Delivered("HTTP 200: thanks")
    headers, body = _Receiver.got[0]
    assert headers["Idempotency-Key"] == "corral-abc"
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Corral-Signature"] == expected
    sent = json.loads(body)
    assert sent["action"] == "block" and sent["target"] == {"job": 42, "job_name": "shot_010"} and sent["key"] == "corral-abc"
    assert b"s3cret" not in body


def test_webhook_answers_decide_between_retry_and_refusal(receiver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = WebhookSink("room", receiver)
    _Receiver.answers = [503, 429, 404]
    assert isinstance(sink.deliver(entry()), Failed)
    assert isinstance(sink.deliver(entry()), Failed)
    assert sink.deliver(entry()) == Refused("HTTP 404: nope")
    unreachable = WebhookSink("room", "http://127.0.0.1:9/nowhere", timeout=1).deliver(entry())
    assert isinstance(unreachable, Failed) and "no answer" in unreachable.error
    monkeypatch.delenv("MISSING_SECRET", raising=False)
    unsigned = WebhookSink("room", receiver, secret_env="MISSING_SECRET").deliver(entry())
    assert isinstance(unsigned, Failed) and "MISSING_SECRET" in unsigned.error


@pytest.mark.parametrize("name", ["", "-rf", "a b", "shot,other", "shot*", "x;y", "$(id)"])
def test_a_value_that_could_widen_a_command_is_never_sent(tmp_path: Path, name: str) -> None:
    sink = CommandSink("s", {Action.BLOCK: {Kind.JOB: [sys.executable, _tool(tmp_path, 0), "{job_name}"]}})
    outcome = sink.deliver(entry(job=42, job_name=name))
    assert isinstance(outcome, Refused) and "not sent" in outcome.answer
    assert not (tmp_path / "argv.json").exists()


# --- a studio's own sink, through the entry point group -----------------------------------------


class StudioSink:
    """What a studio's package would provide: a factory registered in `corral.sinks`."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name, self.options = name, options

    def carries(self) -> frozenset[tuple[Kind, Action]]:
        return frozenset({(Kind.WORKER, Action.BLOCK)})

    def deliver(self, entry: Entry) -> Delivered:
        return Delivered(f"paged {self.options['pager']}")

    def took(self, entry: Entry) -> bool | None:
        return None

    def close(self) -> None:
        pass


def test_a_studio_sink_is_found_by_its_entry_point_and_built_with_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    from corral.sinks import config

    point = EntryPoint(name="pager", value=f"{__name__}:StudioSink", group=config.ENTRY_POINT_GROUP)
    monkeypatch.setattr(config.importlib_metadata, "entry_points",
                        lambda group: [point] if group == config.ENTRY_POINT_GROUP else [])
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    text = "sinks:\n  - name: ops\n    type: python\n    entry_point: pager\n    options: {pager: night-shift}\n"
    result = load_sinks_text(text, "sinks.yaml")
    assert result.errors == [] and result.config is not None
    sinks = build_sinks(result.config)
    assert sinks["ops"].deliver(entry(Kind.WORKER, "r07", worker="r07", host="r07")) == Delivered("paged night-shift")
    assert routes_of(result.config, sinks)[0].carries == {(Kind.WORKER, Action.BLOCK)}
    wrong = load_sinks_text(text.replace("pager\n", "pagr\n", 1), "sinks.yaml")
    assert "did you mean 'pager'" in wrong.errors[0].message
