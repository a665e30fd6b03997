"""The one name rule: study, ensemble and parameter names, checked wherever a name comes in.

A study name becomes a folder (``hpo-logs/<study>/``), an MLflow experiment and part of file
names; an ensemble name becomes an MLflow registered model; a parameter's path name becomes an
MLflow parameter key and part of artifact file names. So a name is a short run of letters,
digits and a few safe characters, matched in full (``re.fullmatch``: a trailing newline does
not pass) and never ``.``/``..``, a path or an option.

Example:
    >>> name_problem("cnn-large"), name_problem("lr", "parameter")
    (None, None)
    >>> name_problem("../x")[:33]
    "invalid study name '../x': use le"
"""

from __future__ import annotations

import re
from typing import Literal, TypeAlias

from hpo.errors import UsageError

NameKind: TypeAlias = Literal["study", "ensemble", "parameter"]

# Study and ensemble names. MLflow allows experiment names of 500 characters and registered
# model names of 256 (its database column); a study name also becomes a folder and a file name
# prefix, and an ensemble's default name joins study names: 100 keeps all of them well inside.
MAX_NAME_LENGTH = 100
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# One key of the ``params`` mapping (a Python identifier that hyperopt's reserved ``__`` keys
# cannot clash with), and the whole path name it forms (``optimizer.adam.beta_1``): MLflow's
# parameter keys are at most 250 characters, and ``hpo study report --by NAME`` writes
# ``report_by_<NAME>.png`` (file names: at most 255 bytes), so 200.
PARAM_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_PARAM_NAME_LENGTH = 200
RESERVED_PREFIX = "__"


class InvalidNameError(UsageError, ValueError):
    """A study, ensemble or parameter name that the name rule refuses."""


def name_problem(name: object, kind: NameKind = "study") -> str | None:
    """Why ``name`` cannot be a ``kind`` name, or None when it can."""
    if kind == "parameter":
        return _param_problem(name)
    if not isinstance(name, str):
        return f"invalid {kind} name: expected text, got {type(name).__name__}"
    if len(name) > MAX_NAME_LENGTH:
        return f"invalid {kind} name {_short(name)}: at most {MAX_NAME_LENGTH} characters"
    if not NAME_RE.fullmatch(name):
        return (
            f"invalid {kind} name {name!r}: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return None


def _param_problem(name: object) -> str | None:
    if not isinstance(name, str) or not PARAM_KEY_RE.fullmatch(name):
        shown = _short(name) if isinstance(name, str) else repr(name)
        return (
            f"invalid parameter name {shown}: use letters, digits and _, not starting with a digit"
        )
    if name.startswith(RESERVED_PREFIX):
        return f"invalid parameter name {name!r}: names starting with __ are reserved"
    return path_name_problem(name)


def path_name_problem(path_name: str) -> str | None:
    """Why a parameter's whole path name (``optimizer.adam.beta_1``) is too long, or None."""
    if len(path_name) > MAX_PARAM_NAME_LENGTH:
        return (
            f"parameter name {_short(path_name)} is {len(path_name)} characters long: at most "
            f"{MAX_PARAM_NAME_LENGTH} (MLflow's parameter keys are limited), options included"
        )
    return None


def check_name(name: object, kind: NameKind = "study") -> str:
    """``name`` if it is a valid ``kind`` name; else :class:`InvalidNameError` saying why."""
    problem = name_problem(name, kind)
    if problem:
        raise InvalidNameError(problem)
    assert isinstance(name, str)
    return name


def _short(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
