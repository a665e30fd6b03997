"""Name -> implementation registries that do not import the implementation until it is used.

Validation of a search space must know which families, datasets and algorithms exist without
importing TensorFlow or Optuna, so registries map names to ``"module:attribute"`` strings.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def import_object(target: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute.

    Example:
        >>> import_object("os.path:join")("a", "b")
        'a/b'
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'module:attribute', got {target!r}")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def module_exists(target: str) -> bool:
    """Whether the module part of ``"module:attribute"`` can be found, without importing it."""
    module_name = target.partition(":")[0]
    try:
        return bool(module_name) and importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


class LazyRegistry(Generic[T]):
    """A mapping from names to lazily imported objects.

    Example:
        >>> reg: LazyRegistry[object] = LazyRegistry("thing", {"join": "os.path:join"})
        >>> "join" in reg, reg.names()
        (True, ['join'])
    """

    def __init__(self, kind: str, targets: dict[str, str]) -> None:
        self.kind = kind
        self._targets = dict(targets)

    def names(self) -> list[str]:
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def target(self, name: str) -> str:
        return self._targets[name]

    def register(self, name: str, target: str) -> None:
        self._targets[name] = target

    def get(self, name: str) -> T:
        if name not in self._targets:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        obj: T = import_object(self._targets[name])
        return obj
