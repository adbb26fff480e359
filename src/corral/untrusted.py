"""Strings from the supervisor, made safe to show on a terminal or in a log line.

Job names, host names, instance ids and the reasons that quote them come from the
farm, and a farm can hold anything: a newline in a job name would forge a line of the
daemon's log, an escape sequence would repaint the wrangler's terminal.  Everything
corral shows of them goes through `visible`, which writes control characters as Python
escapes (`\\n`, `\\x1b`), so they are seen instead of obeyed.  (Rich markup in them,
`[/bold]` or `[link=...]`, is shown as it is: the CLI's consoles parse no markup unless a
command asks for it on a string of its own.)
"""

from __future__ import annotations

import re

#: C0 controls, DEL and the C1 controls (ESC's eight-bit forms among them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def no_controls(text: str) -> str:
    """`text` as it is, or ValueError when it holds a control character: a name (of a job,
    a host, an instance, an event) is written by a program, and one that holds a NUL or
    an escape is a bug in it (PostgreSQL refuses NUL in text outright)."""
    if text.isascii() and text.isprintable():  # most names: no control character can be in them
        return text
    found = _CONTROL.search(text)
    if found:
        raise ValueError(f"holds the control character {_escape(found)} at {found.start() + 1}: names are plain text")
    return text


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def visible(value: object) -> str:
    """`value` as text, its control characters written out: 'a\\nb' -> 'a\\\\nb'."""
    text = str(value)
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text
