"""Compile a search space to a hyperopt ``hp.*`` expression, and translate values both ways.

Every searched parameter gets a hyperopt label equal to its path name. Categoricals are
``hp.choice`` over dicts, so a sample is a nested dict that :func:`flatten` turns back into
path names. Discrete ranges are sampled as an offset from ``low`` (``low + k*step``) so that
both engines see the same grid; :func:`to_raw` and :func:`from_raw` translate between a
parameter's value and the number hyperopt stores for its label, and the expression applies
:func:`from_raw` itself, so sampling the expression and decoding ``misc.vals`` agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hpo.spaces._params import (
    CategoricalParam,
    ConstantParam,
    FloatParam,
    IntParam,
    Param,
    ParamNode,
    SearchSpace,
    join_path,
)

_NESTED = "__hpo_nested__"
_FROM_RAW = "_hpo_from_raw"  # name of the pyll function: a label's number -> the value


def to_hyperopt(space: SearchSpace) -> dict[str, Any]:
    """The hyperopt expression of ``space``; sample it and :func:`flatten` the result.

    Every searched parameter is a hyperopt label named by its path name. A numeric label's
    number goes through :func:`from_raw` inside the expression, so a sample holds the same
    values that :func:`decode` gives for hyperopt's ``misc.vals``: inside the bounds, on the
    step grid, ints as ``int``. Constants are included unchanged.

    Example:
        >>> import numpy as np
        >>> from hyperopt.pyll.stochastic import sample
        >>> from hpo.spaces import FloatParam
        >>> space = SearchSpace({"lr": FloatParam(low=0.001, high=0.1, log=True)})
        >>> 0.001 <= flatten(sample(to_hyperopt(space), np.random.default_rng(0)))["lr"] <= 0.1
        True
    """
    _define_pyll()
    return _compile(space.params, "")


def _define_pyll() -> None:
    from hyperopt.pyll import scope

    if not hasattr(scope, _FROM_RAW):  # pyll's scope is global and refuses a second definition
        scope.define(_hpo_from_raw)


def _compile(params: Mapping[str, Param], prefix: str) -> dict[str, Any]:
    from hyperopt import hp
    from hyperopt.pyll import Literal, scope

    out: dict[str, Any] = {}
    for key, p in params.items():
        name = join_path(prefix, key) if prefix else key
        if isinstance(p, FloatParam | IntParam):
            # Discrete ranges are sampled as an offset from low, so that the grid is
            # low + k * step as in Optuna (quniform's grid starts at 0).
            if isinstance(p, FloatParam) and p.step is not None:
                raw = hp.quniform(name, 0, p.high - p.low, p.step)
            elif isinstance(p, FloatParam) and p.log:
                raw = hp.loguniform(name, math.log(p.low), math.log(p.high))
            elif isinstance(p, FloatParam):
                raw = hp.uniform(name, p.low, p.high)
            elif p.log:
                raw = hp.qloguniform(name, math.log(p.low), math.log(p.high), 1)
            else:
                raw = hp.quniform(name, 0, p.high - p.low, p.step)
            out[name] = getattr(scope, _FROM_RAW)(Literal(p), raw)
        elif isinstance(p, CategoricalParam):
            # Every branch has _NESTED (maybe empty): that is how flatten tells a categorical's
            # sample from a constant whose value happens to be a mapping.
            options = [
                {name: c.value, _NESTED: _compile(c.params, join_path(name, c.label))}
                for c in p.choices
            ]
            out[name] = hp.choice(name, options)
        elif isinstance(p, ConstantParam):
            # A Literal keeps lists and mappings as they are (pyll would make lists tuples).
            out[name] = Literal(p.value)
    return out


def flatten(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a sample of :func:`to_hyperopt`'s expression into values by path name."""
    out: dict[str, Any] = {}
    for key, value in sample.items():
        if key == _NESTED or _is_branch(key, value):
            out.update(flatten(value))
        else:
            out[key] = value
    return out


def _is_branch(key: str, value: Any) -> bool:
    # A categorical's sample is {name: option, _NESTED: {...}}.
    return isinstance(value, Mapping) and set(value) == {key, _NESTED}


def to_raw(node: ParamNode, value: Any) -> float | int:
    """The number hyperopt stores for ``node``'s label when the parameter equals ``value``.

    Raises:
        KeyError: ``value`` is not an option of a categorical.
        ValueError: ``value`` is outside a numeric parameter's range or off its step grid.
        TypeError: ``value`` is not a number, or ``node`` is a constant.
    """
    p = node.param
    if isinstance(p, CategoricalParam):
        return p.choices.index(p.choice(value))
    if isinstance(p, FloatParam | IntParam):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{node.name}: expected a number, got {value!r}")
        v = float(value)
        step = p.step if isinstance(p, IntParam) or p.step is not None else None
        k = round((v - p.low) / step) if step is not None else 0
        # The tolerance Optuna's FloatDistribution allows for values on a step grid.
        off_grid = step is not None and abs((v - p.low) / step - k) >= 1e-8
        if not p.low <= v <= p.high or off_grid:
            raise ValueError(f"{node.name}: {value!r} is not a value of {p!r}")
        if isinstance(p, IntParam) and p.log:
            return float(p.snap(v))
        if step is not None:
            return k * float(step)  # exactly quniform's number: round(x / step) * step
        return v
    raise TypeError(f"{node.name} is not searched")


def from_raw(node: ParamNode, raw: float | int) -> Any:
    """The parameter value for the number hyperopt stores under ``node``'s label.

    Numbers are moved into the range and onto the step grid (hyperopt computes them in floats).
    """
    p = node.param
    if isinstance(p, CategoricalParam):
        return p.choices[int(raw)].value
    if isinstance(p, FloatParam | IntParam):
        return _hpo_from_raw(p, raw)
    raise TypeError(f"{node.name} is not searched")


def _hpo_from_raw(p: FloatParam | IntParam, raw: float) -> float | int:
    """The value of numeric parameter ``p`` for hyperopt's number ``raw`` (see :func:`to_raw`)."""
    if isinstance(p, IntParam):
        return p.snap(float(raw) if p.log else p.low + float(raw))
    if p.step is not None:
        return p.snap(p.low + float(raw))
    return p.snap(float(raw))


def decode(space: SearchSpace, vals: Mapping[str, list[Any]]) -> dict[str, Any]:
    """Values by path name from hyperopt's ``misc.vals`` (label -> [] or [raw]).

    Constants of active branches are included, as :func:`hpo.spaces.suggest` does.

    Example:
        >>> from hpo.spaces import IntParam
        >>> space = SearchSpace({"units": IntParam(low=8, high=64, step=8)})
        >>> decode(space, {"units": [16.0]}), encode(space, {"units": 24})
        ({'units': 24}, {'units': [16.0]})
    """
    out: dict[str, Any] = {}
    _decode(space.params, "", {n.name: n for n in space.nodes()}, vals, out)
    return out


def _decode(
    params: Mapping[str, Param],
    prefix: str,
    nodes: dict[str, ParamNode],
    vals: Mapping[str, list[Any]],
    out: dict[str, Any],
) -> None:
    for key, p in params.items():
        name = join_path(prefix, key) if prefix else key
        if isinstance(p, ConstantParam):
            out[name] = p.value
            continue
        raw = vals.get(name) or []
        if not raw:
            raise KeyError(f"hyperopt proposed no value for active parameter {name!r}")
        value = from_raw(nodes[name], raw[0])
        out[name] = value
        if isinstance(p, CategoricalParam):
            chosen = p.choice(value)
            if chosen.params:
                _decode(chosen.params, join_path(name, chosen.label), nodes, vals, out)


def encode(space: SearchSpace, values: Mapping[str, Any]) -> dict[str, list[float | int]]:
    """hyperopt's ``misc.vals`` for a trial with these values (inactive labels get ``[]``)."""
    vals: dict[str, list[float | int]] = {}
    for node in space.searched_nodes():
        vals[node.name] = [to_raw(node, values[node.name])] if node.name in values else []
    return vals
