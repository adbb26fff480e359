"""The `webhook` sink: each action POSTed as JSON, signed, for chat rooms and studio services.

The body (documented in docs/sinks.md) carries the idempotency key, which is also sent
as the `Idempotency-Key` header: a receiver that sees a key twice (corral retries a send
whose answer was lost) ignores the repeat.  With `secret_env`, the body is signed:
`X-Corral-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>`.  The secret
is read from the environment at each send and never logged or stored.

Several notifications due at once go as one digest POST (`digest`).

Answers: 2xx delivered; 408, 429 and 5xx (and no answer) a failed send, retried; any
other 4xx the receiver refusing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.outbox import Delivered, Entry, Failed, Outcome, Refused
from corral.states import Action, Kind

#: Kept of a receiver's answer.
ANSWER_KEPT = 500
RETRY_STATUSES = frozenset({408, 425, 429})


def body_of(entry: Entry) -> dict[str, Any]:
    """The JSON body of one delivery (docs/sinks.md, "The webhook body")."""
    return {
        "key": entry.key,
        "sink": entry.sink,
        "at": entry.at.isoformat(),
        "action": entry.action.value,
        "kind": entry.kind.value,
        "entity": entry.entity_id,
        "target": dict(entry.target),
        "params": dict(entry.params),
        "policy": entry.policy,
        "reason": entry.reason,
        "actor": entry.actor,
        "cycle": entry.cycle_id,
    }


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class WebhookSink:
    name: str
    url: str
    secret_env: str | None = None
    timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    actions: frozenset[Action] | None = None

    def carries(self) -> frozenset[tuple[Kind, Action]]:
        return frozenset((k, a) for a in Action for k in Kind if self.actions is None or a in self.actions)

    def deliver(self, entry: Entry) -> Outcome:
        return self._post(body_of(entry), entry.key)

    def digest(self, entries: Sequence[Entry]) -> Outcome:
        """Many notifications as one POST (docs/sinks.md, "Digests"); its key is derived
        from its rows' keys, so a repeat of the same digest is recognised too."""
        keys = "|".join(e.key for e in entries)
        key = "corral-digest-" + hashlib.sha256(keys.encode()).hexdigest()[:32]
        return self._post({"digest": True, "key": key, "sink": self.name, "count": len(entries),
                           "items": [body_of(e) for e in entries]}, key)

    def _post(self, message: Mapping[str, Any], key: str) -> Outcome:
        body = json.dumps(message, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "corral", "Idempotency-Key": key,
                   **self.headers}
        if self.secret_env:
            secret = os.environ.get(self.secret_env)
            if not secret:
                return Failed(f"the environment variable {self.secret_env} (the signing secret) is not set")
            headers["X-Corral-Signature"] = sign(secret, body)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only, checked at load
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                text = answer.read(ANSWER_KEPT).decode("utf-8", "replace")
                return Delivered(f"HTTP {answer.status}" + (f": {text}" if text else ""))
        except urllib.error.HTTPError as err:
            text = err.read(ANSWER_KEPT).decode("utf-8", "replace") if err.fp else ""
            said = f"HTTP {err.code}" + (f": {text}" if text else "")
            if err.code >= 500 or err.code in RETRY_STATUSES:
                return Failed(said)
            return Refused(said)
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            reason = getattr(err, "reason", err)
            return Failed(f"no answer from {self.url}: {reason}")

    def took(self, entry: Entry) -> bool | None:
        return None

    def close(self) -> None:
        pass
