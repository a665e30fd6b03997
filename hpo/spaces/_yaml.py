"""YAML loading that remembers the line of every key and refuses duplicate keys."""

from __future__ import annotations

import re
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2), as users write it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class YamlDocument:
    """Plain data parsed from YAML plus the 1-based line of every key path.

    Example:
        >>> doc = YamlDocument.parse("a:\\n  b: 1\\n", "x.yaml")
        >>> doc.data, doc.line_of(("a", "b"))
        ({'a': {'b': 1}}, 2)
    """

    def __init__(self, data: Any, lines: dict[KeyPath, int], duplicates: list[tuple[KeyPath, int]]):
        self.data = data
        self._lines = lines
        self.duplicates = duplicates

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the deepest prefix of ``path`` that the document knows."""
        for end in range(len(path), -1, -1):
            line = self._lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    @classmethod
    def parse(cls, text: str, filename: str = "<string>") -> YamlDocument:
        node = yaml.compose(text, Loader=_Loader)
        lines: dict[KeyPath, int] = {}
        duplicates: list[tuple[KeyPath, int]] = []
        if node is None:
            return cls(None, lines, duplicates)
        lines[()] = node.start_mark.line + 1
        constructor = _Loader("")

        def build(n: yaml.Node, path: KeyPath) -> Any:
            if isinstance(n, yaml.MappingNode):
                constructor.flatten_mapping(n)
                out: dict[Any, Any] = {}
                for key_node, value_node in n.value:
                    key = constructor.construct_object(key_node, deep=True)
                    child = (*path, key)
                    if key in out:
                        duplicates.append((child, key_node.start_mark.line + 1))
                    lines[child] = key_node.start_mark.line + 1
                    out[key] = build(value_node, child)
                return out
            if isinstance(n, yaml.SequenceNode):
                items = []
                for i, item in enumerate(n.value):
                    lines[(*path, i)] = item.start_mark.line + 1
                    items.append(build(item, (*path, i)))
                return items
            return constructor.construct_object(n, deep=True)

        return cls(build(node, ()), lines, duplicates)
