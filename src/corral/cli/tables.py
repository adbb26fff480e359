"""Tables that survive a narrow pane and a pipe (`corral status`, `history`, `outbox`).

A command declares its columns as *fixed* or *elastic* and hands over its rows; `show`
picks one of three layouts:

* **table**, in a pane wide enough for it.  A fixed column (an id, a state, a number, a
  time) is exactly as wide as its widest value: never cut, never wrapped.  Elastic
  columns (names, reasons) share the room that is left, up to what they need: a name
  gives way with an ellipsis on one line (`wrap=False`), a reason is wrapped at word
  boundaries (`wrap=True`; a single word longer than the column, a host name, ends in
  an ellipsis rather than being split mid-word).
* **records**, one block of `label: value` lines per row, when even the fixed columns,
  with each elastic column at its `min_width`, do not fit the pane (60 columns for
  `corral history`).  Fixed values are written whole (a terminal narrower than an id
  wraps it, nothing cuts it); elastic ones are wrapped at word boundaries under their
  label.
* **lines**, one row per line as `key=value` pairs (logfmt: a value holding a space, a
  quote or `=`, or nothing, is double-quoted as in JSON), every value whole, when
  stdout is not a terminal and no width was asked for: output piped to grep, less or a
  file is the same whatever pane it came from.  `--json` is the format for programs.

The pane is the console's width: $COLUMNS when it is set (then a pipe gets the layout of
a pane that wide: `COLUMNS=120 corral status | less`), else the terminal's.

Every value goes through `corral.untrusted.visible` and is shown as Rich `Text`: the
farm's strings are never read as markup or emoji codes, and their control characters
are written out.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.untrusted import visible

#: What a table costs beyond its columns' values: a rule and a space either side of
#: each column (Rich's default box, padding 1), and the closing rule.
PER_COLUMN = 3
#: A key or an unquoted value in the lines layout.
_BARE = re.compile(r'[^\s"=]+')


class Layout(StrEnum):
    TABLE = "table"
    RECORDS = "records"
    LINES = "lines"


@dataclass(frozen=True)
class Col:
    """One column.  `header` heads it in the table; `label` names it in the records
    layout (default: the header) and `key` in the lines layout (default: the label)."""

    header: str
    fixed: bool = True
    label: str | None = None
    key: str | None = None
    justify: Literal["left", "right"] = "left"
    #: Elastic only: wrap at word boundaries instead of one line cut with an ellipsis.
    wrap: bool = False
    #: Elastic only: narrower than this (or than its header) and the table is not used.
    min_width: int = 12
    #: How a 0 is shown in the table (status writes "·" so the counts that are not
    #: zero stand out); the records and lines layouts write 0.
    zero: str | None = None

    def __post_init__(self) -> None:
        if not _BARE.fullmatch(self.name):
            raise ValueError(f"column {self.header!r}: its key {self.name!r} must be one word")

    @property
    def title(self) -> str:
        return self.label or self.header

    @property
    def name(self) -> str:
        return self.key or self.title


def fixed(header: str, *, label: str | None = None, key: str | None = None, right: bool = False,
          zero: str | None = None) -> Col:
    """An id, a state, a number or a time: never cut, never wrapped."""
    return Col(header, True, label, key, "right" if right else "left", zero=zero)


def elastic(header: str, *, label: str | None = None, key: str | None = None, wrap: bool = False,
            min_width: int = 12) -> Col:
    """A name (`wrap=False`: ellipsis) or a reason (`wrap=True`: word-wrapped) that gives way."""
    return Col(header, False, label, key, wrap=wrap, min_width=min_width)


Row = Sequence[object]


def pane_width(console: Console) -> int | None:
    """How wide a pane to lay out for: the console's width when stdout is a terminal or
    $COLUMNS is set; None (the lines layout) when piped without $COLUMNS."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)  # read now: the shared console took its width when it was made
    isatty = getattr(console.file, "isatty", None)
    try:
        terminal = bool(isatty is not None and isatty())
    except ValueError:  # a closed file
        terminal = False
    return console.width if terminal else None


def _cell(col: Col, value: object, layout: Layout) -> str:
    if layout is Layout.TABLE and col.zero is not None and isinstance(value, int) and value == 0:
        return col.zero
    return visible("" if value is None else value)


def _cells(columns: Sequence[Col], rows: Sequence[Row], layout: Layout) -> list[list[str]]:
    return [[_cell(c, v, layout) for c, v in zip(columns, row, strict=True)] for row in rows]


def table_widths(columns: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> list[int] | None:
    """Each column's width in a table at most `width` cells wide, or None when it does
    not fit: fixed columns as wide as their widest value, elastic ones sharing what is
    left (each at least its `min_width`, at most what it needs)."""
    need = [max(cell_len(c.header), *(cell_len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    least = [n if c.fixed else min(n, max(c.min_width, cell_len(c.header))) for c, n in zip(columns, need, strict=True)]
    spare = width - PER_COLUMN * len(columns) - 1 - sum(least)
    if spare < 0:
        return None
    widths = list(least)
    growing = [i for i, c in enumerate(columns) if not c.fixed and widths[i] < need[i]]
    while spare > 0 and growing:
        share = max(1, spare // len(growing))
        for i in list(growing):
            more = min(share, need[i] - widths[i], spare)
            widths[i] += more
            spare -= more
            if widths[i] >= need[i]:
                growing.remove(i)
            if not spare:
                break
    return widths


def show(columns: Sequence[Col], rows: Sequence[Row], *, console: Console, title: str | None = None,
         caption: str | None = None) -> Layout:
    """Print `rows` in the layout that fits the pane (see the module's docstring) and
    return it.  The title is printed by the table and records layouts, the caption
    (which explains the table's short headers) by the table only."""
    return show_in(pane_width(console), columns, rows, console=console, title=title, caption=caption)


def show_in(width: int | None, columns: Sequence[Col], rows: Sequence[Row], *, console: Console,
            title: str | None = None, caption: str | None = None) -> Layout:
    """`show` for a pane `width` wide (None: piped), on a console at least that wide."""
    if width is None:
        for row in _cells(columns, rows, Layout.LINES):
            console.print(Text(logfmt(columns, row)), soft_wrap=True)
        return Layout.LINES
    cells = _cells(columns, rows, Layout.TABLE)
    widths = table_widths(columns, cells, width)
    if widths is None:
        _print_records(console, columns, _cells(columns, rows, Layout.RECORDS), width, title)
        return Layout.RECORDS
    _print_table(console, columns, cells, widths, title, caption, width)
    return Layout.TABLE


def _print_table(console: Console, columns: Sequence[Col], cells: Sequence[Sequence[str]], widths: Sequence[int],
                 title: str | None, caption: str | None, pane: int) -> None:
    table = Table(title=Text(title) if title else None, caption=Text(caption) if caption else None,
                  title_justify="left")
    for col, w in zip(columns, widths, strict=True):
        # A fixed column is as wide as its widest value: its ellipsis never shows.
        table.add_column(Text(col.header), justify=col.justify, width=w, no_wrap=col.fixed or not col.wrap,
                         overflow="ellipsis")
    for row in cells:
        table.add_row(*(Text(v) for v in row))
    # Rendered for the pane laid out for: the console may have taken another width when it
    # was made, and Rich never prints wider than that.  As wide as its columns: nothing to squeeze.
    made = console.width
    console.width = max(pane, made)
    try:
        console.print(table, soft_wrap=False)
    finally:
        console.width = made


def _print_records(console: Console, columns: Sequence[Col], cells: Sequence[Sequence[str]], width: int,
                   title: str | None) -> None:
    labels = [f"{c.title}:" for c in columns]
    indent = max(cell_len(label) for label in labels) + 1
    room = max(width - indent, 16)
    if title:
        console.print(Text(title, style="table.title"), soft_wrap=True)
    for n, row in enumerate(cells):
        if n:
            console.print()
        for col, label, value in zip(columns, labels, row, strict=True):
            head = Text(label, style="bold") + " " * (indent - cell_len(label))
            if col.fixed or cell_len(value) <= room:
                lines = [Text(value)]
            else:
                lines = list(Text(value).wrap(console, room, overflow="ellipsis"))
            for i, line in enumerate(lines):
                text = (head if i == 0 else Text(" " * indent)) + line
                text.rstrip()  # no trailing blanks: after a wrapped word, or for an empty value
                console.print(text, soft_wrap=True)


def logfmt(columns: Sequence[Col], row: Sequence[str]) -> str:
    """One row as `key=value` pairs; a value with a space, a quote, `=` or nothing in it
    is double-quoted as in JSON."""
    return " ".join(f"{c.name}={v if _BARE.fullmatch(v) else json.dumps(v, ensure_ascii=False)}"
                    for c, v in zip(columns, row, strict=True))
