"""Afanasy's wire protocol: one JSON message over TCP, one JSON answer.

A message is the bytes ``AFANASY <len> JSON`` followed by exactly ``<len>`` bytes of a JSON
body; the server answers in the same framing and waits for the client to close.  This is
what Afanasy's own clients (``af.py``, ``afcmd``) speak; the recorded exchanges in
``tests/fixtures/afanasy/`` are the reference.

A fresh connection per request: the server is built for short-lived clients, and a
connection that survives a server restart would only add a failure mode.  Every wait is
bounded by one deadline (`timeout`), connect and read together: a server that accepts and
never answers costs `timeout` seconds, never a hang of the daemon.

Errors are exceptions that say what happened, so a caller can tell "try later"
(`Unreachable`, `BadReply`) from "the supervisor said no" (`Refused`).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

#: The server's port when a server is named without one (Afanasy's default).
DEFAULT_PORT = 51000
#: The largest answer accepted: a farm with tens of thousands of jobs lists in tens of
#: megabytes; a header claiming more is garbage, not a farm.
MAX_REPLY = 512 * 1024 * 1024
#: A header is ``AFANASY <digits> JSON``: never longer than this.
MAX_HEADER = 40
_MAGIC = b"AFANASY "
_TAG = b"JSON"


class AfanasyError(Exception):
    """Anything that kept a request from getting a usable answer."""


class Unreachable(AfanasyError):
    """No answer: the server could not be reached, or did not answer in time."""


class BadReply(AfanasyError):
    """An answer that is not Afanasy's: broken framing, not JSON, or not the expected shape."""


class Refused(AfanasyError):
    """The server answered ``{"info":{"kind":"error","text":...}}``: it said no."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)


def frame(message: Mapping[str, Any]) -> bytes:
    """The bytes of one message: the header, then the JSON body (as ``af.py`` writes it)."""
    body = json.dumps(message).encode("utf-8")
    return b"AFANASY %d JSON" % len(body) + body


def body_length(header: bytes) -> int | None:
    """The body length a reply's first bytes announce; None while the header is incomplete.
    Raises BadReply as soon as the bytes cannot be the start of an Afanasy header."""
    if not header.startswith(_MAGIC[: len(header)]):
        raise BadReply(f"expected a reply starting with 'AFANASY <length> JSON', got {header[:MAX_HEADER]!r}")
    end = header.find(_TAG, len(_MAGIC))
    if end < 0:
        if len(header) > MAX_HEADER:
            raise BadReply(f"expected 'AFANASY <length> JSON', got a header of {header[:MAX_HEADER]!r}...")
        return None
    digits = header[len(_MAGIC):end].strip()
    if not digits.isdigit():
        raise BadReply(f"expected a length between 'AFANASY ' and 'JSON', got {header[:end + len(_TAG)]!r}")
    length = int(digits)
    if length > MAX_REPLY:
        raise BadReply(f"the reply announces {length} bytes, more than the {MAX_REPLY} accepted")
    return length


def parse_reply(raw: bytes) -> dict[str, Any]:
    """A whole framed reply as a JSON object.  Afanasy writes raw control characters
    inside strings (task output, logs), hence ``strict=False``."""
    length = body_length(raw[: MAX_HEADER + len(_TAG)])
    if length is None:
        raise BadReply(f"expected 'AFANASY <length> JSON', got {raw[:MAX_HEADER]!r}")
    start = raw.find(_TAG, len(_MAGIC)) + len(_TAG)
    body = raw[start:start + length]
    if len(body) < length:
        raise BadReply(f"the reply ended after {len(body)} of the {length} bytes it announced")
    try:
        data = json.loads(body.decode("utf-8", errors="replace"), strict=False)
    except ValueError as err:
        raise BadReply(f"the reply body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise BadReply(f"expected a JSON object as the reply, got {type(data).__name__}")
    return data


def split_server(server: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[v6]:PORT`` too) as (host, port)."""
    text = server.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"'{server}' names no host: write HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"'{server}': the port must be a number from 1 to 65535")
    return host, int(port)


class Client:
    """Talks to one afserver.  `user` and `host` go into every action: Afanasy's log
    shows who did what, so a wrangler can tell corral's actions from a person's."""

    def __init__(self, server: str = f"127.0.0.1:{DEFAULT_PORT}", timeout: float = 10.0, user: str = "corral",
                 host: str | None = None) -> None:
        self.server = server
        self.address = split_server(server)
        self.timeout = timeout
        self.user = user
        self.host = host if host is not None else socket.gethostname()

    def __repr__(self) -> str:
        return f"Client({self.server!r}, user={self.user!r})"

    # --- the exchange ----------------------------------------------------------------

    def exchange(self, payload: bytes) -> bytes:
        """Send raw bytes, return the raw framed reply (exactly header + announced body)."""
        deadline = time.monotonic() + self.timeout
        try:
            sock = socket.create_connection(self.address, timeout=max(self.timeout, 0.001))
        except TimeoutError:
            raise Unreachable(f"Afanasy at {self.server} did not accept a connection within {self.timeout:g} s") from None
        except OSError as err:
            raise Unreachable(f"cannot reach Afanasy at {self.server}: {err.strerror or err}") from None
        with sock:
            try:
                self._settime(sock, deadline)
                sock.sendall(payload)
                return self._read(sock, deadline)
            except TimeoutError:
                raise Unreachable(f"Afanasy at {self.server} did not answer within {self.timeout:g} s") from None
            except OSError as err:
                raise Unreachable(f"the connection to Afanasy at {self.server} failed: {err.strerror or err}") from None

    def _settime(self, sock: socket.socket, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)

    def _read(self, sock: socket.socket, deadline: float) -> bytes:
        """Exactly the header and the body it announces: afserver does not close after
        answering (it waits for the client to), so reading to the end would wait."""
        data = b""
        start, length = 0, None
        while length is None or len(data) < start + length:
            self._settime(sock, deadline)
            chunk = sock.recv(1 << 16)
            if not chunk:
                if not data:
                    raise BadReply(f"Afanasy at {self.server} closed the connection without answering")
                if length is None:
                    raise BadReply(f"expected 'AFANASY <length> JSON', the reply ended after {data[:MAX_HEADER]!r}")
                raise BadReply(f"the reply ended after {len(data) - start} of the {length} bytes it announced")
            data += chunk
            if length is None:
                length = body_length(data[: MAX_HEADER + len(_TAG)])
                if length is not None:
                    start = data.find(_TAG, len(_MAGIC)) + len(_TAG)
        return data[: start + length]

    def send(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """One whole message (``{"get": ...}``, ``{"action": ...}``); its answer, or Refused
        when the answer is an error."""
        reply = parse_reply(self.exchange(frame(message)))
        info = reply.get("info")
        if isinstance(info, dict) and info.get("kind") == "error":
            raise Refused(str(info.get("text", "")) or "Afanasy refused the request (no text given)")
        return reply

    # --- the two verbs ---------------------------------------------------------------

    def get(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """A read: `request` is the inside of ``{"get": ...}``, e.g. ``{"type": "jobs",
        "ids": [3], "mode": "progress"}``."""
        return self.send({"get": dict(request)})

    def act(self, type: str, ids: Sequence[int], operation: str | Mapping[str, Any] | None = None,
            params: Mapping[str, Any] | None = None, block_ids: Sequence[int] | None = None,
            task_ids: Sequence[int] | None = None) -> str:
        """An action on `type` ("jobs", "renders") `ids`: an operation (a name, or a whole
        operation object) or new params; task operations name `block_ids` and `task_ids`
        (which go inside the operation, as the protocol wants).  The server's answer
        text ("Action processed."); Refused when it says no."""
        action: dict[str, Any] = {"type": type, "user_name": self.user, "host_name": self.host, "ids": list(ids)}
        if operation is not None:
            op: dict[str, Any] = {"type": operation} if isinstance(operation, str) else dict(operation)
            if task_ids is not None:
                op["task_ids"] = list(task_ids)
            action["operation"] = op
        elif task_ids is not None:
            raise ValueError("task_ids go with an operation")
        if params is not None:
            action["params"] = dict(params)
        if block_ids is not None:
            action["block_ids"] = list(block_ids)
        reply = self.send({"action": action})
        info = reply.get("info")
        if not isinstance(info, dict) or not isinstance(info.get("text"), str):
            raise BadReply(f'expected {{"info":{{"kind":..,"text":..}}}} in answer to an action, got {_short(reply)}')
        return str(info["text"])


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."
