"""Parsing the ``params`` of a space file into parameters, collecting every problem with its
key path (so that validation reports them all at once, each naming its key)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from hpo import names
from hpo.spaces._errors import KeyPath, RawIssue, describe_value, pydantic_issues, unknown_message
from hpo.spaces._params import (
    KINDS,
    MAX_CHOICES,
    MAX_CONDITIONAL_DEPTH,
    PATH_SEPARATOR,
    Choice,
    ConstantParam,
    Param,
    choice_label,
    duplicate_choices,
    join_path,
    name_problem,
    option_problem,
)


def parse_params(
    raw: Any, path: KeyPath = ("params",), prefix: str = ""
) -> tuple[dict[str, Param], list[RawIssue]]:
    """Parse the ``params`` mapping of a space file (``prefix``: the path name it sits under).

    Returns the parameters and a list of ``(key path, message)`` problems; the parameters are
    only meaningful when that list is empty.

    Example:
        >>> params, problems = parse_params({"units": {"type": "int", "low": 8, "high": 4}})
        >>> problems
        [(('params', 'units'), 'empty range: low (8) must be less than high (4)')]
    """
    issues: list[RawIssue] = []
    out: dict[str, Param] = {}
    depth = (prefix.count(PATH_SEPARATOR) + 1) // 2 if prefix else 0
    if depth > MAX_CONDITIONAL_DEPTH:
        return out, [
            (
                path,
                f"conditional sub-spaces nested {depth} levels deep: at most "
                f"{MAX_CONDITIONAL_DEPTH}",
            )
        ]
    if not isinstance(raw, Mapping):
        return out, [(path, f"expected a mapping of parameter names, got {describe_value(raw)}")]
    if not raw:
        return out, [(path, "no parameters: give at least one")]
    kind = raw.get("type")
    if isinstance(kind, str) and kind in KINDS:
        # `params: {type: float, ...}`, or an option written `adam: {type: float, ...}`:
        # read as parameters, `type` would silently become a constant.
        return out, [
            (
                (*path, "type"),
                f"expected parameters by name here, but this looks like one {kind} parameter; "
                f"give it a name: `my_name: {{type: {kind}, ...}}`",
            )
        ]
    for key, spec in raw.items():
        where = (*path, key)
        problem = name_problem(key)
        if problem is None:
            problem = names.path_name_problem(join_path(prefix, key) if prefix else key)
        if problem:
            issues.append((where, problem))
            continue
        param = _parse_one(spec, where, issues, join_path(prefix, key) if prefix else key)
        if param is not None:
            out[key] = param
    return out, issues


def _parse_one(spec: Any, where: KeyPath, issues: list[RawIssue], name: str) -> Param | None:
    if not isinstance(spec, Mapping):
        if isinstance(spec, list):
            issues.append((where, "a list is ambiguous: write {type: categorical, choices: [...]}"))
            return None
        return ConstantParam(value=spec)  # shorthand: `batch_size: 64`
    kind = spec.get("type")
    if kind is None:
        issues.append(
            (
                (*where, "type") if "type" in spec else where,
                "missing type: write type: float, int, categorical or constant "
                "(or give a plain value for a constant)",
            )
        )
        return None
    if not isinstance(kind, str) or kind not in KINDS:
        given = repr(kind) if isinstance(kind, str) else describe_value(kind)
        issues.append(((*where, "type"), unknown_message(f"type {given}", kind, KINDS)))
        return None
    model = KINDS[kind]
    data = dict(spec)
    bad_choices = False
    if kind == "categorical" and "choices" in data:
        choices = _parse_choices(data["choices"], (*where, "choices"), issues, name)
        bad_choices = choices is None
        # A stand-in for choices already reported, so that the other keys are still checked.
        data["choices"] = choices if choices is not None else [Choice(value=None)]
    try:
        param: Param = model.model_validate(data)
    except ValidationError as exc:
        issues.extend(
            pydantic_issues(exc, where, list(model.model_fields), f"for a {kind} parameter")
        )
        return None
    return None if bad_choices else param


def _parse_choices(
    raw: Any, where: KeyPath, issues: list[RawIssue], name: str
) -> list[Choice] | None:
    if isinstance(raw, list | Mapping) and len(raw) > MAX_CHOICES:
        issues.append((where, f"{len(raw):,} choices: at most {MAX_CHOICES:,}"))
        return None
    if isinstance(raw, list):
        if not raw:
            issues.append((where, "no choices: give at least one"))
            return None
        ok = True
        for i, v in enumerate(raw):
            if not isinstance(v, str | int | float | bool) and v is not None:
                ok = False
                issues.append(
                    (
                        (*where, i),
                        f"a choice must be a string, number, boolean or null, got "
                        f"{describe_value(v)}; for options with their own parameters write choices "
                        "as a mapping: {option: {param: {...}}}",
                    )
                )
        for i, problem in duplicate_choices(raw):
            ok = False
            issues.append(((*where, i), problem))
        return [Choice(value=v) for v in raw] if ok else None
    if isinstance(raw, Mapping):
        if not raw:
            issues.append((where, "no choices: give at least one"))
            return None
        choices = []
        ok = True
        for value, sub in raw.items():
            at = (*where, value)
            if not isinstance(value, str | int | float | bool) and value is not None:
                ok = False
                issues.append(
                    (
                        at,
                        f"an option must be a string, number, boolean or null, got "
                        f"{describe_value(value)}",
                    )
                )
                continue
            if sub is None or sub == {}:
                choices.append(Choice(value=value))
                continue
            bad_option = option_problem(value)
            if bad_option:
                ok = False
                issues.append((at, bad_option))
                continue
            params, sub_issues = parse_params(sub, at, join_path(name, choice_label(value)))
            issues.extend(sub_issues)
            ok = ok and not sub_issues
            choices.append(Choice(value=value, params=params))
        for i, problem in duplicate_choices(list(raw)):
            ok = False
            issues.append(((*where, list(raw)[i]), problem))
        return choices if ok else None
    issues.append(
        (
            where,
            f"expected a list of choices or a mapping of options to their parameters, got "
            f"{describe_value(raw)}",
        )
    )
    return None
