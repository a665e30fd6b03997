"""Parameter kinds of the search-space language and the parsed space they form.

A space is an ordered mapping of parameter names to parameters. A categorical parameter may
carry a sub-space per option (a *conditional* sub-space), nested to any depth. Every parameter
has a flat *path name*: a top-level ``lr`` is ``lr``; ``beta_1`` under the ``adam`` option of
``optimizer`` is ``optimizer.adam.beta_1``. Both engines and MLflow use these names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Scalar: TypeAlias = str | int | float | bool | None
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PATH_SEPARATOR = "."


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Param):
    """A real number in ``[low, high]``; ``log`` samples its logarithm uniformly.

    ``step`` makes it discrete: ``low, low + step, ...`` up to ``high``.
    """

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"empty range: low ({self.low}) must be less than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log range must be above 0, but low is {self.low}")
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log")
        if self.step is not None and not _divides(self.high - self.low, self.step):
            raise ValueError(f"step {self.step} does not divide high - low = {self.high - self.low}")
        return self


class IntParam(_Param):
    """An integer in ``[low, high]`` (both included); ``log`` samples its logarithm uniformly."""

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"empty range: low ({self.low}) must be less than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log range must be above 0, but low is {self.low}")
        if self.log and self.step != 1:
            raise ValueError("step cannot be combined with log")
        if (self.high - self.low) % self.step:
            raise ValueError(f"step {self.step} does not divide high - low = {self.high - self.low}")
        return self


class Choice(_Param):
    """One option of a categorical parameter, with the sub-space active when it is chosen."""

    value: Scalar
    params: dict[str, Param] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return _label(self.value)


class CategoricalParam(_Param):
    """One of several options. Options written as a mapping carry conditional sub-spaces."""

    type: Literal["categorical"] = "categorical"
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        labels = [c.label for c in self.choices]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"duplicate choices: {', '.join(dupes)}")
        return self

    @property
    def values(self) -> list[Scalar]:
        return [c.value for c in self.choices]

    @property
    def is_conditional(self) -> bool:
        return any(c.params for c in self.choices)

    def choice(self, value: Scalar) -> Choice:
        for c in self.choices:
            if c.value == value and type(c.value) is type(value):
                return c
        for c in self.choices:
            if c.label == _label(value):
                return c
        raise KeyError(value)


class ConstantParam(_Param):
    """A fixed value: passed to the model, never searched."""

    type: Literal["constant"] = "constant"
    value: Any


Param = Annotated[
    FloatParam | IntParam | CategoricalParam | ConstantParam, Field(discriminator="type")
]
Choice.model_rebuild()


def _divides(span: float, step: float) -> bool:
    n = span / step
    return abs(n - round(n)) < 1e-9 * max(1.0, abs(n))


def _label(value: Scalar) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    return str(value)


def join_path(*parts: str) -> str:
    return PATH_SEPARATOR.join(parts)


@dataclass(frozen=True)
class ParamNode:
    """A parameter with its flat path name and the conditions under which it is active.

    ``conditions`` lists ``(path name of a categorical, option value)`` from the root down.
    """

    name: str
    key: str
    param: FloatParam | IntParam | CategoricalParam | ConstantParam
    conditions: tuple[tuple[str, Scalar], ...]

    @property
    def searched(self) -> bool:
        return not isinstance(self.param, ConstantParam)


class SearchSpace:
    """A parsed, valid search space.

    Example:
        >>> space = SearchSpace({"lr": FloatParam(low=1e-4, high=1e-1, log=True)})
        >>> [n.name for n in space.nodes()]
        ['lr']
    """

    def __init__(self, params: Mapping[str, Param]) -> None:
        self.params: dict[str, Param] = dict(params)

    def nodes(self) -> list[ParamNode]:
        """Every parameter, depth first in file order, with its activation conditions."""
        return list(_walk(self.params, "", ()))

    def names(self) -> list[str]:
        return [n.name for n in self.nodes()]

    def searched_nodes(self) -> list[ParamNode]:
        return [n for n in self.nodes() if n.searched]

    def node(self, name: str) -> ParamNode:
        for n in self.nodes():
            if n.name == name:
                return n
        raise KeyError(name)

    def is_discrete(self) -> bool:
        """True when every searched parameter has finitely many values (grid search works)."""
        return all(
            not isinstance(n.param, FloatParam) or n.param.step is not None
            for n in self.searched_nodes()
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :func:`parse_params` reads back into an equal space."""
        return {k: _param_to_dict(p) for k, p in self.params.items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SearchSpace({self.names()})"


def _walk(
    params: Mapping[str, Param], prefix: str, conditions: tuple[tuple[str, Scalar], ...]
) -> Iterator[ParamNode]:
    for key, param in params.items():
        name = join_path(prefix, key) if prefix else key
        yield ParamNode(name, key, param, conditions)
        if isinstance(param, CategoricalParam):
            for choice in param.choices:
                if choice.params:
                    yield from _walk(
                        choice.params,
                        join_path(name, choice.label),
                        (*conditions, (name, choice.value)),
                    )


def _param_to_dict(p: Param) -> Any:
    if isinstance(p, CategoricalParam):
        if p.is_conditional:
            return {
                "type": "categorical",
                "choices": {
                    c.value: {k: _param_to_dict(v) for k, v in c.params.items()} or None
                    for c in p.choices
                },
            }
        return {"type": "categorical", "choices": p.values}
    if isinstance(p, ConstantParam):
        return {"type": "constant", "value": p.value}
    return p.model_dump(exclude_defaults=True) | {"type": p.type}


# -- parsing raw (YAML) data, collecting every problem with its key path ---------------------

RawIssue = tuple[tuple[str | int, ...], str]


def parse_params(raw: Any, path: tuple[str | int, ...] = ("params",)) -> tuple[
    dict[str, Param], list[RawIssue]
]:
    """Parse the ``params`` mapping of a space file.

    Returns the parameters and a list of ``(key path, message)`` problems; the parameters are
    only meaningful when that list is empty.

    Example:
        >>> params, problems = parse_params({"units": {"type": "int", "low": 8, "high": 4}})
        >>> problems
        [(('params', 'units'), 'empty range: low (8) must be less than high (4)')]
    """
    issues: list[RawIssue] = []
    out: dict[str, Param] = {}
    if not isinstance(raw, Mapping):
        return out, [(path, f"expected a mapping of parameter names, got {_kind(raw)}")]
    if not raw:
        return out, [(path, "no parameters: give at least one")]
    for key, spec in raw.items():
        where = (*path, key)
        if not isinstance(key, str) or not NAME_PATTERN.match(key):
            issues.append((where, f"invalid parameter name {key!r}: use letters, digits and _"))
            continue
        param = _parse_one(spec, where, issues)
        if param is not None:
            out[key] = param
    return out, issues


def _parse_one(spec: Any, where: tuple[str | int, ...], issues: list[RawIssue]) -> Param | None:
    if not isinstance(spec, Mapping):
        if isinstance(spec, list):
            issues.append((where, "a list is ambiguous: write {type: categorical, choices: [...]}"))
            return None
        return ConstantParam(value=spec)  # shorthand: `batch_size: 64`
    kind = spec.get("type")
    kinds = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam,
             "constant": ConstantParam}
    if kind not in kinds:
        issues.append(((*where, "type"), f"unknown or missing type {kind!r}; expected one of "
                       + ", ".join(kinds)))
        return None
    data = dict(spec)
    if kind == "categorical":
        choices = _parse_choices(data.get("choices"), (*where, "choices"), issues)
        if choices is None:
            return None
        data["choices"] = choices
    try:
        param: Param = kinds[kind].model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(x for x in err["loc"] if x != kind)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key for a {kind} parameter"
            issues.append(((*where, *loc), msg))
        return None
    return param


def _parse_choices(
    raw: Any, where: tuple[str | int, ...], issues: list[RawIssue]
) -> list[Choice] | None:
    if isinstance(raw, list):
        if not raw:
            issues.append((where, "no choices: give at least one"))
            return None
        bad = [i for i, v in enumerate(raw) if not isinstance(v, str | int | float | bool)
               and v is not None]
        for i in bad:
            issues.append(((*where, i), "a choice must be a string, number, boolean or null; "
                           "for options with their own parameters write choices as a mapping"))
        return None if bad else [Choice(value=v) for v in raw]
    if isinstance(raw, Mapping):
        if not raw:
            issues.append((where, "no choices: give at least one"))
            return None
        choices = []
        ok = True
        for value, sub in raw.items():
            if sub is None or sub == {}:
                choices.append(Choice(value=value))
                continue
            params, sub_issues = parse_params(sub, (*where, value))
            issues.extend(sub_issues)
            ok = ok and not sub_issues
            choices.append(Choice(value=value, params=params))
        return choices if ok else None
    issues.append((where, f"expected a list or a mapping of choices, got {_kind(raw)}"))
    return None


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


class Params(Mapping[str, Any]):
    """The sampled values of one trial, by flat path name, as model-building code reads them.

    Example:
        >>> hp = Params({"optimizer": "adam", "optimizer.adam.beta_1": 0.9, "lr": 0.01})
        >>> hp["lr"], hp.children("optimizer")
        (0.01, {'beta_1': 0.9})
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            known = ", ".join(sorted(self._values)) or "none"
            raise KeyError(f"parameter {name!r} is not active in this trial (active: {known})") \
                from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def children(self, name: str) -> dict[str, Any]:
        """The active direct sub-parameters of categorical ``name``, by their short names."""
        prefix = join_path(name, _label(self[name])) + PATH_SEPARATOR
        return {
            k[len(prefix):]: v
            for k, v in self._values.items()
            if k.startswith(prefix) and PATH_SEPARATOR not in k[len(prefix):]
        }

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"
