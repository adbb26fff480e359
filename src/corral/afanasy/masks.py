"""Afanasy's host masks, as its server reads them, and how corral edits one.

A job's ``hosts_mask_exclude`` keeps the renders it matches off that job: corral's
"block an instance" (lock a host out of one job) is an edit of it.  Afanasy reads a mask
in one of two ways, given per job as ``hosts_mask_type`` (the server's default is
``find``, inherited from the job's user):

- ``find``: the pattern is split at any of ``| ; , :`` and space into words; a host
  matches when its name *starts with* one of the words (``rnd0`` excludes rnd01, rnd02).
- ``regex``: an ECMAScript regular expression (C++ ``std::regex``) that must match the
  whole name.  Python's `re.fullmatch` agrees for the patterns hosts are named by.

Pure functions, no I/O: the mapping asks `excludes`, the sink `add_host`/`remove_host`.
"""

from __future__ import annotations

import re

FIND, REGEX = "find", "regex"
#: The characters Afanasy splits a find-mode mask at (af::strSplit's default).
_FIND_SEPARATORS = re.compile(r"[|;,: ]+")
#: ECMAScript's syntax characters: escaped, a host name is a literal in both C++'s
#: std::regex and Python's re (Python's re.escape also escapes '-', which std::regex
#: may reject outside a bracket).
_SYNTAX = frozenset("^$\\.*+?()[]{}|/")


class MaskError(ValueError):
    """A mask corral cannot read or cannot edit without changing what it means."""


def mask_type(value: object) -> str:
    """The job's ``hosts_mask_type``; absent or unknown means find, the server's default."""
    return REGEX if value == REGEX else FIND


def escape(name: str) -> str:
    """`name` as a regular expression that matches exactly it (in C++ and in Python)."""
    return "".join("\\" + c if c in _SYNTAX else c for c in name)


def find_words(mask: str) -> list[str]:
    return [w for w in _FIND_SEPARATORS.split(mask) if w]


def excludes(mask: str, kind: str, host: str) -> bool:
    """Whether the mask matches `host` (an empty mask matches nothing here: Afanasy
    ignores an empty exclude mask).  Raises MaskError for a regex Python cannot read."""
    if not mask:
        return False
    if kind == REGEX:
        try:
            return re.fullmatch(mask, host) is not None
        except re.error as err:
            raise MaskError(f"the regular expression '{mask}' cannot be read: {err}") from None
    return any(host.startswith(word) for word in find_words(mask))


def _alternatives(mask: str) -> list[str]:
    """A regex split at its top-level '|' (not inside a group, a bracket or after '\\')."""
    parts, depth, start, i, bracket = [], 0, 0, 0, False
    while i < len(mask):
        c = mask[i]
        if c == "\\":
            i += 2
            continue
        if bracket:
            bracket = c != "]"
        elif c == "[":
            bracket = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth = max(depth - 1, 0)
        elif c == "|" and depth == 0:
            parts.append(mask[start:i])
            start = i + 1
        i += 1
    parts.append(mask[start:])
    return parts


def add_host(mask: str, kind: str, host: str, others: list[str] | None = None) -> str | None:
    """The mask with `host` excluded too, keeping everything it excluded before; None when
    it already excludes `host`.

    regex: ``|^host$`` is appended (escaped), an alternative that is easy to find again.
    find: the word ``host`` is appended; as Afanasy matches words as prefixes, that also
    excludes every other render whose name starts with `host`: with `others` (the farm's
    render names) given, that is refused (MaskError) rather than done silently."""
    if excludes(mask, kind, host):
        return None
    if kind == REGEX:
        alt = f"^{escape(host)}$"
        return f"{mask}|{alt}" if mask else alt
    if _FIND_SEPARATORS.search(host):
        raise MaskError(f"the host name '{host}' contains a character Afanasy's find-mode masks split at")
    caught = sorted(o for o in others or [] if o != host and o.startswith(host) and not excludes(mask, kind, o))
    if caught:
        raise MaskError(f"the job's host masks are in find mode, where a name is a prefix: excluding '{host}' would "
                        f"also exclude {', '.join(caught)}; set the job's (or its user's) hosts mask type to regex")
    return f"{mask}|{host}" if mask else host


def remove_host(mask: str, kind: str, host: str) -> str:
    """The mask without the parts that name `host` alone (what `add_host` added, or a
    person's own ``host``/``^host$``); everything else is kept as written.  The caller
    checks `excludes` on the result: a broader part (``rnd.*``) may still exclude it."""
    if kind == REGEX:
        named = {f"^{escape(host)}$", escape(host)}
        return "|".join(p for p in _alternatives(mask) if p not in named)
    words = find_words(mask)
    if host not in words:
        return mask
    return "|".join(w for w in words if w != host)
