"""YAML loading that remembers where every value came from.

Wranglers edit policy and snapshot files by hand, so every error must point at
`file:line:column`.  This is PyYAML's SafeLoader (the loader behind
`yaml.safe_load`: plain data only, no Python objects) with one addition: mappings
and lists come back as `dict`/`list` subclasses that carry the position of each key
and item.  They compare and behave as plain dicts and lists everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        return f"{self.file}:{self.line}:{self.column}"


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


class _PositionLoader(yaml.SafeLoader):
    """SafeLoader whose containers carry positions (safe: it constructs plain data only)."""

    filename = "<string>"

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


def load_text(text: str, filename: str = "<string>") -> Any:
    """Parse one YAML document safely, keeping positions; YamlError on bad syntax."""
    loader = _PositionLoader(text)
    loader.filename = filename
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        pos = Pos(filename, mark.line + 1, mark.column + 1) if mark else Pos(filename, 1, 1)
        problem = " ".join(p for p in (err.context, err.problem) if p)
        raise YamlError(pos, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as err:
        raise YamlError(Pos(filename, 1, 1), f"YAML error: {err}") from None
    finally:
        loader.dispose()


def load_file(path: str | Path) -> Any:
    path = Path(path)
    return load_text(path.read_text(encoding="utf-8"), str(path))


def position(container: Any, key: str | int | None = None) -> Pos | None:
    """Best known position of `container[key]` (or of the container), if it has one."""
    if isinstance(container, PosDict):
        return container.start if key is None else container.value_pos_of(str(key))
    if isinstance(container, PosList):
        return container.start if key is None else container.pos_of(int(key))
    return None
