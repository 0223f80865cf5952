"""YAML loading that remembers where every value came from.

Validation errors must name the file, the line and the field. PyYAML's `safe_load` forgets the
positions, so the document is composed into nodes first and built into plain Python values here,
recording the mark of each mapping key and sequence item under its path (`("routes", 0,
"backend")`). A validation error's location is then looked up, falling back to the nearest
enclosing value that exists (a missing field is reported at the mapping that lacks it).

Duplicate mapping keys are rejected: PyYAML would silently keep the last one, and a route or a
backend defined twice is a configuration mistake worth stopping for.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


class YamlSourceError(Exception):
    """The file is not valid YAML (or repeats a key); carries the position of the problem."""

    def __init__(self, message: str, position: Position | None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass
class YamlDocument:
    data: Any
    marks: dict[Path, Position]

    def position_of(self, path: Sequence[str | int]) -> tuple[Position | None, int]:
        """The position of `path` or of its nearest existing parent, and how many parts matched."""
        for length in range(len(path), -1, -1):
            position = self.marks.get(tuple(path[:length]))
            if position is not None:
                return position, length
        return None, 0


def _position(mark: Any) -> Position | None:
    if mark is None:
        return None
    return Position(mark.line + 1, mark.column + 1)


def load_yaml(text: str) -> YamlDocument:
    """Parse one YAML document into plain values plus the position of each of them."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise YamlSourceError(
                f"{exc.problem or exc.context or 'invalid YAML'}", _position(exc.problem_mark)
            ) from None
        except yaml.YAMLError as exc:
            raise YamlSourceError(str(exc), None) from None
        marks: dict[Path, Position] = {}
        if node is None:
            return YamlDocument(None, {(): Position(1, 1)})
        data = _build(loader, node, (), marks)
        return YamlDocument(data, marks)
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: Node, path: Path, marks: dict[Path, Position]) -> Any:
    position = _position(node.start_mark)
    if position is not None:
        marks.setdefault(path, position)
    if isinstance(node, MappingNode):
        # Resolves `<<: *anchor` merge keys the way safe_load would.
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar_key(loader, key_node)
            if key in result:
                raise YamlSourceError(f"duplicate key {key!r}", _position(key_node.start_mark))
            key_path = (*path, key if isinstance(key, int) else str(key))
            # The key's line is where a reader looks for "field: value" mistakes.
            key_position = _position(key_node.start_mark)
            if key_position is not None:
                marks[key_path] = key_position
            result[key] = _build(loader, value_node, key_path, marks)
        return result
    if isinstance(node, SequenceNode):
        items: list[Any] = []
        for index, item_node in enumerate(node.value):
            item_position = _position(item_node.start_mark)
            if item_position is not None:
                marks[(*path, index)] = item_position
            items.append(_build(loader, item_node, (*path, index), marks))
        return items
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        raise YamlSourceError(str(exc.problem), _position(exc.problem_mark)) from None


def _scalar_key(loader: yaml.SafeLoader, node: Node) -> Hashable:
    if not isinstance(node, ScalarNode):
        raise YamlSourceError("mapping keys must be plain values", _position(node.start_mark))
    key = loader.construct_object(node)
    if not isinstance(key, Hashable):
        raise YamlSourceError("mapping keys must be plain values", _position(node.start_mark))
    return key
