"""Logging for the daemon: human-readable lines by default, JSON lines on request.

Plain stdlib logging.  Whatever the format, every line goes through `mask_secrets`,
so a database URL in a message or a traceback never shows its password.  Extra
fields given with `extra={...}` (cycle, policy, ...) appear in both formats.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from corral.store.engine import MASK, mask_secrets
from corral.untrusted import visible

__all__ = ["MASK", "HumanFormatter", "JsonFormatter", "mask_secrets", "setup_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class HumanFormatter(logging.Formatter):
    """`2026-11-28 02:00:00,123 INFO corral.daemon: message [cycle=... policy=...]`.

    One record, one line (and a traceback's lines after it): control characters in the
    message and the fields (a newline in a job name, an escape sequence) are written out
    (`corral.untrusted.visible`), so the farm's strings cannot forge a log line or
    repaint a terminal.  The JSON format escapes them by its nature."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = visible(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            fields = " ".join(f"{k}={visible(v)}" for k, v in extras.items())
            head, sep, tail = line.partition("\n")
            line = f"{head} [{fields}]{sep}{tail}"
        return mask_secrets(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_extras(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return mask_secrets(json.dumps(data, default=str))


def setup_logging(fmt: str = "human", level: str | int = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Route corral's (and APScheduler's) logs to `stream` (stderr) in `fmt` ("human" or "json")."""
    if fmt not in ("human", "json"):
        raise ValueError(f"log format must be human or json, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_corral", False)]:
        root.removeHandler(old)
    handler._corral = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # APScheduler says "Running job ..." at INFO every interval: keep its warnings only.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return handler
