"""Compile a search space to Optuna's define-by-run suggestions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hpo.spaces._params import (
    CategoricalParam,
    ConstantParam,
    FloatParam,
    IntParam,
    Param,
    SearchSpace,
    join_path,
)

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample every active parameter of ``space`` through ``trial``; returns them by path name.

    Constants are included in the result but never suggested.

    Example:
        >>> import optuna
        >>> from hpo.spaces import IntParam
        >>> space = SearchSpace({"units": IntParam(low=8, high=64, log=True)})
        >>> sorted(suggest(optuna.trial.FixedTrial({"units": 16}), space).items())
        [('units', 16)]
    """
    out: dict[str, Any] = {}
    _suggest(trial, space.params, "", out)
    return out


def _suggest(trial: Any, params: Mapping[str, Param], prefix: str, out: dict[str, Any]) -> None:
    for key, p in params.items():
        name = join_path(prefix, key) if prefix else key
        if isinstance(p, FloatParam):
            out[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[name] = trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, CategoricalParam):
            value = trial.suggest_categorical(name, p.values)
            out[name] = value
            chosen = p.choice(value)
            if chosen.params:
                _suggest(trial, chosen.params, join_path(name, chosen.label), out)
        elif isinstance(p, ConstantParam):
            out[name] = p.value


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Optuna distribution of every searched parameter, by path name (all branches)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, BaseDistribution] = {}
    for node in space.searched_nodes():
        p = node.param
        if isinstance(p, FloatParam):
            out[node.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[node.name] = IntDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, CategoricalParam):
            out[node.name] = CategoricalDistribution(p.values)
    return out


def grid(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid values of every searched parameter (all branches), for Optuna's grid sampler.

    Categoricals give their options, ints with a linear scale and floats with a step every
    point ``low, low + step, ..., high``. Log-scaled ints give ``low, 2*low, 4*low, ...`` and
    ``high``: a log scale asks for points spread evenly in ratio, not every integer.

    Example:
        >>> from hpo.spaces import FloatParam, IntParam
        >>> grid(SearchSpace({"p": FloatParam(low=0.1, high=0.3, step=0.1),
        ...                   "n": IntParam(low=1, high=10, log=True)}))
        {'p': [0.1, 0.2, 0.3], 'n': [1, 2, 4, 8, 10]}
    """
    out: dict[str, list[Any]] = {}
    for node in space.searched_nodes():
        p = node.param
        if isinstance(p, CategoricalParam):
            out[node.name] = p.values
        elif isinstance(p, IntParam):
            if p.log:
                out[node.name] = sorted({round(v) for v in _log_grid(p.low, p.high)})
            else:
                out[node.name] = list(range(p.low, p.high + 1, p.step))
        elif isinstance(p, FloatParam):
            if p.step is None:
                raise ValueError(f"{node.name}: a float needs a step for grid search")
            n = round((p.high - p.low) / p.step)
            # snap: low + n * step may land an ulp above high, which Optuna would refuse.
            out[node.name] = [p.snap(p.low + i * p.step) for i in range(n + 1)]
    return out


def _log_grid(low: int, high: int) -> list[float]:
    values: list[float] = []
    v = float(low)
    while v <= high:
        values.append(v)
        v *= 2
    if values[-1] != high:
        values.append(float(high))
    return values
