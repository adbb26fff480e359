"""YAML loading that remembers where every value came from.

Wranglers edit policy and snapshot files by hand, so every error must point at
`file:line:column`.  This is PyYAML's SafeLoader (the loader behind
`yaml.safe_load`: plain data only, no Python objects) with one addition: mappings
and lists come back as `dict`/`list` subclasses that carry the position of each key
and item.  They compare and behave as plain dicts and lists everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Pos:
    """A 1-based line and column in a named file."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{shown_path(self.file)}:{self.line}:{self.column}"


@lru_cache(maxsize=1)
def _builtin_dir() -> str:
    return str(Path(str(resources.files("corral") / "rules")).resolve())


def shown_path(file: str) -> str:
    """A file as a wrangler reads it in a message: a file of the built-in pack as
    `builtin:NAME` (not a path inside site-packages), one under the current folder
    relative to it, any other as it is.  `Pos.file` keeps the real path."""
    if not file or file.startswith("<"):
        return file
    try:
        path = Path(file).resolve()
        if str(path.parent) == _builtin_dir():
            return f"builtin:{path.name}"
        return str(path.relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return file


class PosDict(dict[str, Any]):
    """A mapping that knows where it starts and where each of its keys and values is."""

    start: Pos
    key_pos: dict[str, Pos]
    value_pos: dict[str, Pos]

    def pos_of(self, key: str) -> Pos:
        return self.key_pos.get(key, self.start)

    def value_pos_of(self, key: str) -> Pos:
        return self.value_pos.get(key, self.pos_of(key))


class PosList(list[Any]):
    """A list that knows where it starts and where each item is."""

    start: Pos
    item_pos: list[Pos]

    def pos_of(self, index: int) -> Pos:
        return self.item_pos[index] if index < len(self.item_pos) else self.start


class YamlError(Exception):
    """A file that is not YAML at all; `pos` says where the parser gave up."""

    def __init__(self, pos: Pos, message: str) -> None:
        self.pos, self.message = pos, message
        super().__init__(f"{pos}: {message}")


def _pos(file: str, node: yaml.Node) -> Pos:
    mark = node.start_mark
    return Pos(file, mark.line + 1, mark.column + 1)


#: How deep mappings and lists may nest: a policy needs a handful of levels, a snapshot
#: four; far deeper is a mistake or an attack (Python's recursion would end it, later).
MAX_DEPTH = 64
#: How many values a document may grow to through aliases (`*name` repeats what `&name`
#: marked, without copying it): at most this many beyond the values written out, then at
#: most ten times those.  A "billion laughs" file of 70 values that expands to millions is
#: refused at the alias that crosses the line.
ALIAS_ALLOWANCE = 10_000


class _PositionLoader(yaml.SafeLoader):
    """SafeLoader whose containers carry positions (safe: it constructs plain data only),
    with bounds on nesting and on what aliases expand to."""

    filename = "<string>"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._written = 0  # values written out (nodes composed from events, not aliases)
        self._sizes: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded
        self._expanded = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            node = super().compose_node(parent, index)
            self._grow(self._sizes.get(id(node), 1), event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                              self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._written += 1
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for c in children)
            self._grow(1, node.start_mark)
        return node

    def _grow(self, values: int, mark: Any) -> None:
        self._expanded += values
        if self._expanded > max(ALIAS_ALLOWANCE + self._written, 10 * self._written) and values > 1:
            raise yaml.composer.ComposerError(
                None, None, f"this alias makes the document more than {self._expanded:,} values long, far more than "
                "it writes out; write the values, or use fewer nested aliases", mark)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        """A date or time YAML reads as one; an impossible one (2026-02-30) is an error here."""
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as err:
            raise yaml.constructor.ConstructorError(None, None, f"'{node.value}' is not a real date or time: {err}",
                                                    node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> PosDict:  # type: ignore[override]
        self.flatten_mapping(node)
        out = PosDict()
        out.start = _pos(self.filename, node)
        out.key_pos, out.value_pos = {}, {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found an unhashable key", key_node.start_mark
                ) from None
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (it is set twice in this mapping)", key_node.start_mark
                )
            out[key] = self.construct_object(value_node, deep=True)
            out.key_pos[key] = _pos(self.filename, key_node)
            out.value_pos[key] = _pos(self.filename, value_node)
        return out

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> PosList:
        out = PosList(self.construct_object(child, deep=True) for child in node.value)
        out.start = _pos(self.filename, node)
        out.item_pos = [_pos(self.filename, child) for child in node.value]
        return out


_PositionLoader.add_constructor("tag:yaml.org,2002:map", _PositionLoader.construct_mapping)
_PositionLoader.add_constructor("tag:yaml.org,2002:seq", _PositionLoader.construct_sequence)
_PositionLoader.add_constructor("tag:yaml.org,2002:timestamp", _PositionLoader.construct_yaml_timestamp)


def text_pos(filename: str, text: str, offset: int) -> Pos:
    """The line and column of a character offset in `text`."""
    line = text.count("\n", 0, offset) + 1
    return Pos(filename, line, offset - (text.rfind("\n", 0, offset) + 1) + 1)


def load_text(text: str, filename: str = "<string>") -> Any:
    """Parse one YAML document safely, keeping positions; YamlError on bad syntax, on a
    character YAML does not allow (NUL, most control characters), on nesting deeper than
    MAX_DEPTH and on aliases that expand far beyond the document."""
    loader: _PositionLoader | None = None
    try:
        loader = _PositionLoader(text)  # the reader checks every character here
        loader.filename = filename
        return loader.get_single_data()
    except yaml.reader.ReaderError as err:
        shown = repr(chr(err.character)) if isinstance(err.character, int) else repr(err.character)
        raise YamlError(text_pos(filename, text, err.position),
                        f"the character {shown} is not allowed in YAML: remove it (or quote it as an escape in "
                        "double quotes, e.g. \"\\t\")") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        pos = Pos(filename, mark.line + 1, mark.column + 1) if mark else Pos(filename, 1, 1)
        problem = " ".join(p for p in (err.context, err.problem) if p)
        raise YamlError(pos, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as err:
        raise YamlError(Pos(filename, 1, 1), f"YAML error: {err}") from None
    except RecursionError:  # a construct deeper than MAX_DEPTH allows got past the composer
        raise YamlError(Pos(filename, 1, 1), f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text(path: str | Path) -> str:
    """A file's text as UTF-8; YamlError at the line and column of a byte that is not."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start].decode("utf-8", errors="replace")
        raise YamlError(text_pos(str(path), before, len(before)),
                        f"byte {data[err.start]:#04x} is not UTF-8: save the file as UTF-8") from None


def load_file(path: str | Path) -> Any:
    return load_text(read_text(path), str(path))


def position(container: Any, key: str | int | None = None) -> Pos | None:
    """Best known position of `container[key]` (or of the container), if it has one."""
    if isinstance(container, PosDict):
        return container.start if key is None else container.value_pos_of(str(key))
    if isinstance(container, PosList):
        return container.start if key is None else container.pos_of(int(key))
    return None
