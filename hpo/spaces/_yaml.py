"""YAML loading that remembers the line of every key and refuses duplicate keys."""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from hpo.errors import UsageError
from hpo.spaces._errors import KeyPath

# Limits on what a document may hold, so that a small hostile file cannot take the machine's
# memory or time: every value counts once per place it appears, so an alias (``*name``) counts
# as often as it is used (a "billion laughs" file of a few hundred bytes is refused early).
MAX_VALUES = 100_000
MAX_STRING_LENGTH = 10_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class YamlLimitError(UsageError, yaml.YAMLError):
    """A document beyond :data:`MAX_VALUES` values (aliases expanded)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


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

    ``duplicates`` lists ``(key path, line, line of the first occurrence)`` of every key given
    twice in one mapping (the later value wins, as in plain YAML). Keys that a merge key
    (``<<: *base``) brings in may be overridden: that is what merging is for. ``problems``
    lists ``(key path, message)`` of values beyond the size limits (long text, integers
    outside 64 bits).

    Example:
        >>> doc = YamlDocument.parse("a:\\n  b: 1\\n  b: 2\\n", "x.yaml")
        >>> doc.data, doc.line_of(("a", "b")), doc.duplicates
        ({'a': {'b': 2}}, 3, [(('a', 'b'), 3, 2)])
    """

    def __init__(
        self,
        data: Any,
        lines: dict[KeyPath, int],
        duplicates: list[tuple[KeyPath, int, int]],
        problems: list[tuple[KeyPath, str]] | None = None,
    ) -> None:
        self.data = data
        self._lines = lines
        self.duplicates = duplicates
        self.problems = problems or []

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the deepest prefix of ``path`` that the document knows."""
        for end in range(len(path), -1, -1):
            line = self._lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    @classmethod
    def parse(cls, text: str, filename: str = "<string>") -> YamlDocument:
        """Parse ``text``; raises :class:`yaml.YAMLError` (with ``problem_mark``) when invalid."""
        node = yaml.compose(text, Loader=_Loader)
        lines: dict[KeyPath, int] = {}
        duplicates: list[tuple[KeyPath, int, int]] = []
        if node is None:
            return cls(None, lines, duplicates)
        lines[()] = node.start_mark.line + 1
        constructor = _Loader("")
        # Nodes being built: an alias inside its own anchor would otherwise recurse forever.
        building: set[int] = set()
        problems: list[tuple[KeyPath, str]] = []
        count = [0]

        def build(n: yaml.Node, path: KeyPath) -> Any:
            if id(n) in building:
                raise ConstructorError(None, None, "an alias refers to itself", n.start_mark)
            count[0] += 1
            if count[0] > MAX_VALUES:
                raise YamlLimitError(
                    f"the document holds more than {MAX_VALUES:,} values once its aliases "
                    "(*name) are expanded: refused",
                    n.start_mark,
                )
            if isinstance(n, yaml.MappingNode):
                building.add(id(n))
                own = sum(1 for k, _ in n.value if k.tag != "tag:yaml.org,2002:merge")
                constructor.flatten_mapping(n)
                merged = len(n.value) - own  # flatten_mapping puts merged keys first
                out: dict[Any, Any] = {}
                first_line: dict[Any, int] = {}
                for i, (key_node, value_node) in enumerate(n.value):
                    key = scalar(key_node)
                    try:
                        hash(key)
                    except TypeError:
                        raise ConstructorError(
                            None,
                            None,
                            "a key must be a plain value, not a list or mapping",
                            key_node.start_mark,
                        ) from None
                    child = (*path, key)
                    line = key_node.start_mark.line + 1
                    if key in first_line and i >= merged:
                        duplicates.append((child, line, first_line[key]))
                    if i >= merged:
                        first_line.setdefault(key, line)
                    lines[child] = line
                    out[key] = build(value_node, child)
                building.discard(id(n))
                return out
            if isinstance(n, yaml.SequenceNode):
                building.add(id(n))
                items = []
                for i, item in enumerate(n.value):
                    lines[(*path, i)] = item.start_mark.line + 1
                    items.append(build(item, (*path, i)))
                building.discard(id(n))
                return items
            value = scalar(n)
            if isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
                problems.append(
                    (path, f"text of {len(value):,} characters: at most {MAX_STRING_LENGTH:,}")
                )
            elif (
                isinstance(value, int)
                and not isinstance(value, bool)
                and not INT64_MIN <= value <= INT64_MAX
            ):
                problems.append((path, f"integer {_short_int(value)} is outside the 64-bit range"))
            return value

        def scalar(n: yaml.Node) -> Any:
            try:
                return constructor.construct_object(n, deep=True)
            except (ValueError, TypeError, OverflowError) as exc:
                # e.g. a date that does not exist, `2024-13-01`: say where it is.
                raise ConstructorError(
                    None, None, f"cannot read value: {exc}", n.start_mark
                ) from None

        data = build(node, ())
        return cls(data, lines, duplicates, problems)


def _short_int(value: int) -> str:
    text = str(value)
    return text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"
