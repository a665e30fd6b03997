"""Errors of the search-space language: each issue names the file, the key path and the line.

Validation works on plain YAML data and collects *raw issues* ``(key path, message)``; the
file name and line are added at the end (see :class:`SpaceError`). The helpers here turn
pydantic's errors into messages for someone who has never read our code: no class names,
the allowed keys when a key is unknown, and what was given when a type is wrong.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeAlias

from pydantic import ValidationError

from hpo.errors import UsageError

KeyPath: TypeAlias = tuple[str | int, ...]
RawIssue: TypeAlias = tuple[KeyPath, str]


@dataclass(frozen=True)
class SpaceIssue:
    """One problem found in a search-space file.

    Example:
        >>> str(SpaceIssue("s.yaml", "params.lr.low", 7, "Input should be a valid number"))
        's.yaml:7: params.lr.low: Input should be a valid number'
    """

    file: str
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = self.path or "<top level>"
        return f"{where}: {key}: {self.message}"


class SpaceError(UsageError, ValueError):
    """A search-space file is invalid. ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[SpaceIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.path))
        super().__init__("\n".join(str(i) for i in self.issues))


class FieldError(UsageError, ValueError):
    """A model check that failed because of one field; validation reports it at that key.

    pydantic reports a model validator's error at the model itself; raising this instead lets
    :func:`pydantic_issues` point at the key the user has to change.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def describe_value(value: Any) -> str:
    """How a YAML value reads in a message.

    Example:
        >>> describe_value("0.1"), describe_value(None), describe_value([1])
        ("the text '0.1'", 'nothing', 'a list')
    """
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, datetime | date):
        return f"the date {value.isoformat()}"
    return f"a value of type {type(value).__name__}"


def unknown_message(noun: str, given: object, allowed: Iterable[str]) -> str:
    """Message for a name that is not allowed, with the allowed names and a close match.

    Example:
        >>> unknown_message("key for a float parameter", "hgih", ["low", "high"])
        "unknown key for a float parameter (did you mean 'high'?); expected one of: low, high"
    """
    names = list(allowed)
    close = difflib.get_close_matches(given, names, n=1) if isinstance(given, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {noun}{hint}; expected one of: {', '.join(names)}"


def _shows_input(kind: str) -> bool:
    # pydantic's messages for these error types say what was expected but not what was given.
    return (
        kind.endswith(("_type", "_parsing"))
        or kind.startswith(("greater_than", "less_than"))
        or kind in ("literal_error", "enum")
    )


def pydantic_issues(
    exc: ValidationError,
    prefix: KeyPath,
    allowed: Sequence[str],
    what: str,
) -> list[RawIssue]:
    """Raw issues of a pydantic ``ValidationError`` raised while validating the value at ``prefix``.

    Args:
        exc: The error.
        prefix: Key path of the validated value in the file.
        allowed: Keys of the model, listed when a key is unknown.
        what: Where an unknown key was found, for the message (``"in budget"``).
    """
    issues: list[RawIssue] = []
    for err in exc.errors():
        loc: list[str | int] = [x for x in err["loc"] if x != "[key]"]
        kind = err["type"]
        msg = err["msg"]
        if kind == "extra_forbidden":
            msg = unknown_message(f"key {what}", loc[-1] if loc else "", allowed)
        elif kind == "missing":
            msg = "required key is missing"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = f"expected a mapping of keys to values, got {describe_value(err['input'])}"
        elif kind == "list_type":
            msg = f"expected a list, got {describe_value(err['input'])}"
        elif kind in ("value_error", "assertion_error"):
            error = err.get("ctx", {}).get("error")
            if isinstance(error, FieldError):
                loc.append(error.field)
            msg = str(error) if error is not None else msg
        elif kind == "too_short" and not err["input"]:
            msg = "the list is empty: give at least one"
        elif _shows_input(kind):
            msg = f"{msg}, got {describe_value(err['input'])}"
        issues.append(((*prefix, *loc), msg))
    return issues
