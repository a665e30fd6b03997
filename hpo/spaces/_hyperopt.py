"""Compile a search space to a hyperopt ``hp.*`` expression, and translate values both ways.

Every searched parameter gets a hyperopt label equal to its path name. Categoricals are
``hp.choice`` over dicts, so a sample is a nested dict that :func:`flatten` turns back into
path names. Discrete ranges that do not start at 0 are sampled as an offset (``low + k*step``)
so that both engines see the same grid; :func:`to_raw` and :func:`from_raw` translate between a
parameter's value and the number hyperopt stores for its label.
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


def to_hyperopt(space: SearchSpace) -> dict[str, Any]:
    """The hyperopt expression of ``space``; sample it and :func:`flatten` the result.

    Example:
        >>> import numpy as np
        >>> from hyperopt.pyll.stochastic import sample
        >>> from hpo.spaces import FloatParam
        >>> space = SearchSpace({"lr": FloatParam(low=0.001, high=0.1, log=True)})
        >>> 0.001 <= flatten(sample(to_hyperopt(space), np.random.default_rng(0)))["lr"] <= 0.1
        True
    """
    return _compile(space.params, "")


def _compile(params: Mapping[str, Param], prefix: str) -> dict[str, Any]:
    from hyperopt import hp
    from hyperopt.pyll import scope

    out: dict[str, Any] = {}
    for key, p in params.items():
        name = join_path(prefix, key) if prefix else key
        if isinstance(p, FloatParam):
            if p.step is not None:
                out[name] = p.low + hp.quniform(name, 0, p.high - p.low, p.step)
            elif p.log:
                out[name] = hp.loguniform(name, math.log(p.low), math.log(p.high))
            else:
                out[name] = hp.uniform(name, p.low, p.high)
        elif isinstance(p, IntParam):
            if p.log:
                out[name] = scope.int(hp.qloguniform(name, math.log(p.low), math.log(p.high), 1))
            else:
                out[name] = scope.int(p.low + hp.quniform(name, 0, p.high - p.low, p.step))
        elif isinstance(p, CategoricalParam):
            options = []
            for c in p.choices:
                branch: dict[str, Any] = {name: c.value}
                if c.params:
                    branch[_NESTED] = _compile(c.params, join_path(name, c.label))
                options.append(branch)
            out[name] = hp.choice(name, options)
        elif isinstance(p, ConstantParam):
            out[name] = p.value
    return out


def flatten(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a sample of :func:`to_hyperopt`'s expression into values by path name."""
    out: dict[str, Any] = {}
    for key, value in sample.items():
        if key == _NESTED:
            out.update(flatten(value))
        elif isinstance(value, Mapping) and key in value:
            out.update(flatten(value))
        else:
            out[key] = value
    return out


def to_raw(node: ParamNode, value: Any) -> float | int:
    """The number hyperopt stores for ``node``'s label when the parameter equals ``value``."""
    p = node.param
    if isinstance(p, CategoricalParam):
        return p.choices.index(p.choice(value))
    if isinstance(p, FloatParam):
        return float(value) - p.low if p.step is not None else float(value)
    if isinstance(p, IntParam):
        return float(value) if p.log else float(int(value) - p.low)
    raise TypeError(f"{node.name} is not searched")


def from_raw(node: ParamNode, raw: float | int) -> Any:
    """The parameter value for the number hyperopt stores under ``node``'s label."""
    p = node.param
    if isinstance(p, CategoricalParam):
        return p.choices[int(raw)].value
    if isinstance(p, FloatParam):
        if p.step is not None:
            return min(p.high, p.low + float(raw))
        return float(raw)
    if isinstance(p, IntParam):
        return int(raw) if p.log else p.low + int(raw)
    raise TypeError(f"{node.name} is not searched")


def decode(space: SearchSpace, vals: Mapping[str, list[Any]]) -> dict[str, Any]:
    """Values by path name from hyperopt's ``misc.vals`` (label -> [] or [raw]).

    Constants of active branches are included, as :func:`hpo.spaces.suggest` does.
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
