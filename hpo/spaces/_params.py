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
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from hpo import names
from hpo.spaces._errors import (
    FieldError,
    describe_value,
)

Scalar: TypeAlias = str | int | float | bool | None
# An option with its own parameters becomes part of their path names (``optimizer.adam.lr``):
# no "." (it would make names ambiguous) and only characters MLflow accepts in parameter keys.
OPTION_PATTERN = re.compile(r"[A-Za-z0-9_\-]+")
PATH_SEPARATOR = "."
# Conditional sub-spaces nest at most this deep. Both engines were run (hyperopt-tpe and
# optuna-tpe sampling) at 100 levels; hyperopt recursion fails at some 200 on the default
# recursion limit: 32 leaves a wide margin (tests/test_hostile_input.py runs it).
MAX_CONDITIONAL_DEPTH = 32
# Choices of one categorical: Optuna and hyperopt handle a few thousand easily.
MAX_CHOICES = 10_000


class _Param(BaseModel):
    # strict: a quoted "0.1" is text, not a number; YAML already gives numbers their type.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FloatParam(_Param):
    """A real number in ``[low, high]``; ``log`` samples its logarithm uniformly.

    ``step`` makes it discrete: ``low, low + step, ...`` up to ``high``; ``high - low`` must be a
    whole number of steps (checked in decimal, as Optuna does, so ``0.1`` steps work).

    Example:
        >>> FloatParam(low=0.0, high=1.0, step=0.25).snap(0.3)
        0.25
    """

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @field_validator("low", "high", "step")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if self.low >= self.high:
            raise ValueError(f"empty range: low ({self.low}) must be less than high ({self.high})")
        if self.log and self.low <= 0:
            raise FieldError("low", f"a log range must be above 0, but low is {self.low}")
        if self.log and self.step is not None:
            raise FieldError("step", "step cannot be combined with log: remove one of them")
        if self.step is not None and not _divides(self.low, self.high, self.step):
            raise FieldError(
                "step",
                f"step {self.step} does not divide the range: high - low = "
                f"{_decimal(self.high) - _decimal(self.low)} is not a whole number of steps",
            )
        return self

    def snap(self, value: float) -> float:
        """``value`` moved into ``[low, high]`` and, with a step, onto the nearest grid point.

        Grid points are computed as ``low + k * step`` like Optuna's samplers do, so both
        engines hand out the same floats.
        """
        v = float(value)
        if self.step is not None:
            v = self.low + round((v - self.low) / self.step) * self.step
        return min(max(v, self.low), self.high)


class IntParam(_Param):
    """An integer in ``[low, high]`` (both included); ``log`` samples its logarithm uniformly.

    Example:
        >>> IntParam(low=8, high=64, step=8).snap(21.0)
        24
    """

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
            raise FieldError("low", f"a log range must be above 0, but low is {self.low}")
        if self.log and self.step != 1:
            raise FieldError("step", "step cannot be combined with log: remove one of them")
        if (self.high - self.low) % self.step:
            raise FieldError(
                "step",
                f"step {self.step} does not divide the range: high - low = "
                f"{self.high - self.low} is not a whole number of steps",
            )
        return self

    def snap(self, value: float) -> int:
        """``value`` rounded onto ``low, low + step, ...`` and moved into ``[low, high]``."""
        v = self.low + round((float(value) - self.low) / self.step) * self.step
        return min(max(v, self.low), self.high)


class Choice(_Param):
    """One option of a categorical parameter, with the sub-space active when it is chosen."""

    value: Scalar
    params: dict[str, Param] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Choice:
        if self.params:
            problem = option_problem(self.value)
            if problem:
                raise ValueError(problem)
            for name in self.params:
                problem = name_problem(name)
                if problem:
                    raise ValueError(problem)
        return self

    @property
    def label(self) -> str:
        """The option as text, as it appears in path names (``true``, ``null``, ``64``)."""
        return choice_label(self.value)


class CategoricalParam(_Param):
    """One of several options. Options written as a mapping carry conditional sub-spaces.

    Options must differ in Python's sense too: ``1``, ``1.0`` and ``true`` are equal there and
    Optuna cannot tell them apart.
    """

    type: Literal["categorical"] = "categorical"
    choices: list[Choice] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        problems = list(duplicate_choices(self.values))
        if problems:
            i, problem = problems[0]
            raise FieldError("choices", f"choice {i}: {problem}")
        return self

    @property
    def values(self) -> list[Scalar]:
        return [c.value for c in self.choices]

    @property
    def is_conditional(self) -> bool:
        return any(c.params for c in self.choices)

    def choice(self, value: Scalar) -> Choice:
        """The option equal to ``value`` (same type first, then same label); KeyError if none."""
        for c in self.choices:
            if c.value == value and type(c.value) is type(value):
                return c
        for c in self.choices:
            if c.label == choice_label(value):
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

KINDS: dict[str, type[FloatParam | IntParam | CategoricalParam | ConstantParam]] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
    "constant": ConstantParam,
}


def _decimal(x: float) -> Decimal:
    return Decimal(str(x))


def _divides(low: float, high: float, step: float) -> bool:
    # The same test as Optuna's FloatDistribution: otherwise Optuna would silently move high.
    try:
        return (_decimal(high) - _decimal(low)) % _decimal(step) == 0
    except InvalidOperation:
        return False


def choice_label(value: Scalar) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    return str(value)


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a parameter, or None when it can.

    Example:
        >>> name_problem("learning-rate")[:39]
        "invalid parameter name 'learning-rate':"
    """
    return names.name_problem(name, "parameter")


def option_problem(value: Scalar) -> str | None:
    """Why option ``value`` cannot carry its own parameters, or None when it can."""
    label = choice_label(value)
    if not OPTION_PATTERN.fullmatch(label):
        return (
            f"option {label!r} has its own parameters, so it is part of their names "
            f"(<parameter>.{label}.<name>): use letters, digits, _ and - only (no '.')"
        )
    return None


def duplicate_choices(values: list[Any]) -> Iterator[tuple[int, str]]:
    """``(index, problem)`` for every option that repeats an earlier one.

    Example:
        >>> list(duplicate_choices([1, "a", True, "a"]))
        [(2, 'true equals the choice 1 listed before (Optuna cannot tell them apart)'), \
(3, 'duplicate choice a')]
    """
    for i, v in enumerate(values):
        for u in values[:i]:
            if choice_label(u) == choice_label(v):
                yield i, f"duplicate choice {choice_label(v)}"
                break
            if u == v:
                yield (
                    i,
                    (
                        f"{describe_value(v)} equals the choice {describe_value(u)} listed before "
                        "(Optuna cannot tell them apart)"
                    ),
                )
                break


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
    """A parsed, valid search space: parameter names to parameters, in file order.

    Path names are unique: names and the options that carry parameters contain no ".".

    Example:
        >>> space = SearchSpace({"lr": FloatParam(low=1e-4, high=1e-1, log=True)})
        >>> [n.name for n in space.nodes()]
        ['lr']
    """

    def __init__(self, params: Mapping[str, Param]) -> None:
        for name in params:
            problem = name_problem(name)
            if problem:
                raise ValueError(problem)
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


class Params(Mapping[str, Any]):
    """The sampled values of one trial, by flat path name, as model-building code reads them.

    It records which parameters were read (``hp[name]``, ``hp.get``, :meth:`children`, and
    every value of :meth:`to_dict`, ``dict(hp)`` or ``hp.items()``); ``name in hp`` looks
    without reading. :meth:`unread` lists the others: a parameter the family never reads is
    searched for nothing (a misspelled key, most often).

    Example:
        >>> hp = Params({"optimizer": "adam", "optimizer.adam.beta_1": 0.9, "lr": 0.01,
        ...              "unitz": 8})
        >>> hp["lr"], hp.children("optimizer"), "unitz" in hp
        (0.01, {'beta_1': 0.9}, True)
        >>> hp.unread()
        ['unitz']
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)
        self._read: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        try:
            value = self._values[name]
        except KeyError:
            known = ", ".join(sorted(self._values)) or "none"
            raise KeyError(
                f"parameter {name!r} is not active in this trial (active: {known})"
            ) from None
        self._read.add(name)
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def children(self, name: str) -> dict[str, Any]:
        """The active direct sub-parameters of categorical ``name``, by their short names."""
        prefix = join_path(name, choice_label(self[name])) + PATH_SEPARATOR
        found = {
            k: v
            for k, v in self._values.items()
            if k.startswith(prefix) and PATH_SEPARATOR not in k[len(prefix) :]
        }
        self._read.update(found)
        return {k[len(prefix) :]: v for k, v in found.items()}

    def to_dict(self) -> dict[str, Any]:
        self._read.update(self._values)
        return dict(self._values)

    def read(self) -> list[str]:
        """The names read so far, sorted."""
        return sorted(self._read)

    def unread(self) -> list[str]:
        """The names never read so far, sorted."""
        return sorted(set(self._values) - self._read)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"
