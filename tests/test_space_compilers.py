"""Property tests: the Optuna and hyperopt compilations of a space describe the same space.

Random valid spaces (every kind, log and step variants, categoricals whose options carry
sub-spaces nested up to depth 3, constants) are compiled both ways and compared: the same
parameter names, kinds, bounds and steps, the same activation conditions, values inside their
domains, and ``encode`` / ``decode`` as exact inverses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import optuna
from hyperopt import Trials, rand, space_eval
from hyperopt.base import Domain
from hyperopt.pyll import as_apply
from hyperopt.pyll.stochastic import sample
from hyperopt.pyll_utils import expr_to_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo.spaces import (
    CategoricalParam,
    ConstantParam,
    FloatParam,
    IntParam,
    SearchSpace,
    distributions,
    parse_params,
    suggest,
)
from hpo.spaces._hyperopt import decode, encode, flatten, from_raw, to_hyperopt
from hpo.spaces._params import Param, Scalar, duplicate_choices

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- random valid spaces, as the plain data of a space file -----------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
# Options that carry parameters are part of path names: no "." in them.
LABELS = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9_\-]{0,4}", fullmatch=True),
    st.integers(-5, 99),
    st.booleans(),
)
SCALARS = st.one_of(
    st.text(max_size=6),
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.booleans(),
    st.none(),
)
CONSTANTS = st.one_of(
    SCALARS,
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
STEPS = ["0.05", "0.1", "0.25", "0.5", "1", "2.5"]


def distinct(values: Sequence[Any]) -> bool:
    return not list(duplicate_choices(list(values)))


@st.composite
def floats(draw: st.DrawFn) -> dict[str, Any]:
    variant = draw(st.sampled_from(["linear", "log", "step"]))
    if variant == "step":
        step = Decimal(draw(st.sampled_from(STEPS)))
        k = draw(st.integers(-40, 40))
        n = draw(st.integers(1, 40))
        return {"type": "float", "low": float(step * k), "high": float(step * (k + n)),
                "step": float(step)}  # fmt: skip
    if variant == "log":
        low = draw(st.floats(1e-6, 1e2))
        high = low * draw(st.floats(1.01, 1e4))
        return {"type": "float", "low": low, "high": high, "log": True}
    low = draw(st.floats(-1e3, 1e3))
    return {"type": "float", "low": low, "high": low + draw(st.floats(1e-3, 1e3))}


@st.composite
def ints(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        low = draw(st.integers(1, 50))
        return {"type": "int", "low": low, "high": low + draw(st.integers(1, 2000)), "log": True}
    low, step, n = draw(st.integers(-100, 100)), draw(st.integers(1, 5)), draw(st.integers(1, 20))
    out = {"type": "int", "low": low, "high": low + n * step}
    return out | ({"step": step} if step > 1 else {})


@st.composite
def categoricals(draw: st.DrawFn, depth: int) -> dict[str, Any]:
    if depth == 0 or draw(st.booleans()):
        values = draw(st.lists(SCALARS, min_size=1, max_size=5).filter(distinct))
        return {"type": "categorical", "choices": values}
    return draw(conditionals(depth))


@st.composite
def conditionals(draw: st.DrawFn, depth: int) -> dict[str, Any]:
    """A categorical whose options (mostly) carry sub-spaces, ``depth - 1`` levels more."""
    labels = draw(st.lists(LABELS, min_size=1, max_size=3).filter(distinct))
    choices = {}
    for label in labels:
        with_params = draw(st.sampled_from([True, True, False]))
        choices[label] = draw(spaces(depth - 1, max_size=2)) if with_params else None
    return {"type": "categorical", "choices": choices}


KINDS = ["float", "int", "categorical", "constant", "shorthand"]


@st.composite
def params(draw: st.DrawFn, depth: int) -> Any:
    # Conditionals are weighted up so that many spaces nest two or three levels deep.
    kind = draw(st.sampled_from(KINDS + ["conditional"] * 3 if depth > 0 else KINDS))
    if kind == "float":
        return draw(floats())
    if kind == "int":
        return draw(ints())
    if kind == "categorical":
        return draw(categoricals(depth))
    if kind == "conditional":
        return draw(conditionals(depth))
    if kind == "constant":
        return {"type": "constant", "value": draw(CONSTANTS)}
    return draw(SCALARS)  # `name: 64`


def spaces(depth: int = 3, max_size: int = 4) -> st.SearchStrategy[dict[str, Any]]:
    return st.lists(NAMES, min_size=1, max_size=max_size, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: params(depth) for name in names})
    )


@st.composite
def search_spaces(draw: st.DrawFn) -> SearchSpace:
    raw = draw(spaces())
    parsed, problems = parse_params(raw)
    assert problems == [], problems  # every generated space is valid
    return SearchSpace(parsed)


# -- what a value of a parameter must be ------------------------------------------------------


def in_domain(p: Param, value: Any) -> bool:
    if isinstance(p, FloatParam):
        if type(value) is not float or not p.low <= value <= p.high:
            return False
        if p.step is None:
            return True
        k = (value - p.low) / p.step
        return abs(k - round(k)) < 1e-8  # Optuna's own tolerance
    if isinstance(p, IntParam):
        return type(value) is int and p.low <= value <= p.high and (value - p.low) % p.step == 0
    if isinstance(p, CategoricalParam):
        return any(same(value, v) for v in p.values)
    assert isinstance(p, ConstantParam)
    return same(value, p.value)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type (1, 1.0 and True are different values here)."""
    return type(a) is type(b) and a == b


def assert_same_values(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert same(got[name], want[name]), (name, got[name], want[name])


class RecordingTrial:
    """A fake Optuna trial: answers from ``values`` and records every question."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.asked: dict[str, tuple[Any, ...]] = {}

    def _answer(self, name: str, question: tuple[Any, ...]) -> Any:
        assert name not in self.asked, f"{name} asked twice"
        self.asked[name] = question
        return self.values[name]

    def suggest_float(
        self, name: str, low: float, high: float, *, log: bool = False, step: float | None = None
    ) -> Any:
        return self._answer(name, ("float", low, high, log, step))

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> Any:
        return self._answer(name, ("int", low, high, log, step))

    def suggest_categorical(self, name: str, choices: Sequence[Scalar]) -> Any:
        return self._answer(name, ("categorical", tuple(choices)))


class DrawingTrial:
    """A fake Optuna trial whose answers hypothesis draws from each distribution."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def suggest_float(
        self, name: str, low: float, high: float, *, log: bool = False, step: float | None = None
    ) -> float:
        if step is None:
            return self.data.draw(st.floats(low, high), label=name)
        k = self.data.draw(st.integers(0, round((high - low) / step)), label=name)
        return FloatParam(low=low, high=high, step=step).snap(low + k * step)

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        k = self.data.draw(st.integers(0, (high - low) // step), label=name)
        return low + k * step

    def suggest_categorical(self, name: str, choices: Sequence[Scalar]) -> Any:
        return self.data.draw(st.sampled_from(list(choices)), label=name)


def question(p: Param) -> tuple[Any, ...]:
    """What :func:`suggest` must ask a trial for ``p``."""
    if isinstance(p, FloatParam):
        return ("float", p.low, p.high, p.log, p.step)
    if isinstance(p, IntParam):
        return ("int", p.low, p.high, p.log, p.step)
    assert isinstance(p, CategoricalParam)
    return ("categorical", tuple(p.values))


def extremes(kind: str, args: list[Any]) -> list[float]:
    """The smallest and largest numbers a hyperopt distribution yields, computed as it does."""
    if kind == "randint":
        return [0, args[0] - 1]
    low, high = np.float64(args[0]), np.float64(args[1])
    if kind == "uniform":
        return [float(low), float(high)]
    if kind == "loguniform":
        return [float(np.exp(low)), float(np.exp(high))]
    q = args[2]
    if kind == "quniform":
        return [float(np.round(low / q) * q), float(np.round(high / q) * q)]
    assert kind == "qloguniform"
    return [float(np.round(np.exp(low) / q) * q), float(np.round(np.exp(high) / q) * q)]


def active_nodes(space: SearchSpace, values: dict[str, Any]) -> set[str]:
    """Names whose conditions hold for ``values`` (constants included)."""
    return {
        n.name
        for n in space.nodes()
        if all(c in values and same(values[c], v) for c, v in n.conditions)
    }


# -- the properties ---------------------------------------------------------------------------


@SETTINGS
@given(space=search_spaces())
def test_both_compilations_declare_the_same_parameters(space: SearchSpace) -> None:
    """Names, kinds, bounds, log, step and activation conditions agree."""
    hps: dict[str, Any] = {}
    expr_to_config(as_apply(to_hyperopt(space)), None, hps)
    dists = distributions(space)
    assert set(hps) == set(dists) == {n.name for n in space.searched_nodes()}
    for node in space.searched_nodes():
        p, d = node.param, dists[node.name]
        dist = hps[node.name]["node"]
        kind = dist.name
        args = [a.obj for a in dist.pos_args]
        if isinstance(d, optuna.distributions.FloatDistribution):
            assert isinstance(p, FloatParam)
            assert (d.low, d.high, d.log, d.step) == (p.low, p.high, p.log, p.step)
            if p.step is not None:  # offset grid: low + k * step, k = 0..n
                assert kind == "quniform" and args[0] == 0 and args[2] == p.step
                assert math.isclose(args[1], p.high - p.low)
            elif p.log:
                assert kind == "loguniform"
                assert math.isclose(args[0], math.log(p.low))
                assert math.isclose(args[1], math.log(p.high))
            else:
                assert kind == "uniform" and args == [p.low, p.high]
        elif isinstance(d, optuna.distributions.IntDistribution):
            assert isinstance(p, IntParam)
            assert (d.low, d.high, d.log, d.step) == (p.low, p.high, p.log, p.step)
            if p.log:
                assert kind == "qloguniform" and args[2] == 1
                assert math.isclose(args[0], math.log(p.low))
                assert math.isclose(args[1], math.log(p.high))
            else:
                assert kind == "quniform" and args == [0, p.high - p.low, p.step]
        else:
            assert isinstance(d, optuna.distributions.CategoricalDistribution)
            assert isinstance(p, CategoricalParam)
            assert kind == "randint" and args == [len(p.choices)]
            assert list(d.choices) == p.values
        # the extreme numbers hyperopt can store for the label still decode into the domain
        for raw in extremes(kind, args):
            assert in_domain(p, from_raw(node, raw)), (node.name, raw, from_raw(node, raw))
        # hyperopt's conditions: (categorical label, option index) from the root down
        want = tuple(
            (cat, space.node(cat).param.choices.index(space.node(cat).param.choice(v)))  # type: ignore[union-attr]
            for cat, v in node.conditions
        )
        got = {tuple((c.name, c.val) for c in conds) for conds in hps[node.name]["conditions"]}
        assert got == {want}


@SETTINGS
@given(space=search_spaces(), seed=st.integers(0, 2**32 - 1))
def test_hyperopt_samples_are_what_suggest_asks_for(space: SearchSpace, seed: int) -> None:
    """For hyperopt's samples, suggest asks for exactly the sampled names, with the same bounds."""
    expr = to_hyperopt(space)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        values = flatten(sample(expr, rng))
        assert set(values) == active_nodes(space, values)
        for name, value in values.items():
            assert in_domain(space.node(name).param, value), (name, value)
        trial = RecordingTrial(values)
        assert_same_values(suggest(trial, space), values)  # type: ignore[arg-type]
        searched = {n for n in values if space.node(n).searched}
        assert set(trial.asked) == searched
        for name, asked in trial.asked.items():
            assert asked == question(space.node(name).param)
        # and Optuna itself accepts every value: FixedTrial warns when one is out of range
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fixed = optuna.trial.FixedTrial({n: values[n] for n in searched})
            assert_same_values(suggest(fixed, space), values)


@SETTINGS
@given(space=search_spaces(), seed=st.integers(0, 2**31 - 2))
def test_hyperopt_proposals_decode_like_the_expression_evaluates(
    space: SearchSpace, seed: int
) -> None:
    """hyperopt's ``misc.vals`` decode to the values its expression gives, and encode back."""
    expr = to_hyperopt(space)
    domain = Domain(lambda _: 0.0, expr)
    (doc,) = rand.suggest([0], domain, Trials(), seed)
    vals = {
        k: [v.item() if hasattr(v, "item") else v for v in vs]
        for k, vs in doc["misc"]["vals"].items()
    }
    assert set(vals) == {n.name for n in space.searched_nodes()}
    values = decode(space, vals)
    point = {k: v[0] for k, v in vals.items() if v}
    assert_same_values(values, flatten(space_eval(expr, point)))
    assert {k for k, v in vals.items() if v} == {n for n in values if space.node(n).searched}
    for name, value in values.items():
        assert in_domain(space.node(name).param, value), (name, value)
    assert encode(space, values) == vals


@SETTINGS
@given(space=search_spaces(), data=st.data())
def test_encode_decode_round_trip(space: SearchSpace, data: st.DataObject) -> None:
    """decode(encode(values)) gives back every valid assignment exactly, types included."""
    values = suggest(DrawingTrial(data), space)  # type: ignore[arg-type]
    vals = encode(space, values)
    assert set(vals) == {n.name for n in space.searched_nodes()}
    assert all(len(v) == (1 if k in values else 0) for k, v in vals.items())
    assert_same_values(decode(space, vals), values)
    # Optuna's own numbers round-trip too (its step grid is the same low + k * step)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna_values = suggest(study.ask(), space)
    for name, value in optuna_values.items():
        assert in_domain(space.node(name).param, value), (name, value)
    assert_same_values(decode(space, encode(space, optuna_values)), optuna_values)


def test_nested_example_by_hand() -> None:
    """A fixed three-level space, so that a failure of the properties is easy to read."""
    raw = {
        "opt": {
            "type": "categorical",
            "choices": {
                "adam": {
                    "sched": {
                        "type": "categorical",
                        "choices": {
                            "cos": {
                                "warm": {
                                    "type": "categorical",
                                    "choices": {1: {"steps": {"type": "int", "low": 0, "high": 9}}},
                                }
                            },
                            "flat": None,
                        },
                    }
                },
                "sgd": None,
            },
        },
        "cfg": {"type": "constant", "value": {"cfg": 1}},
    }
    parsed, problems = parse_params(raw)
    assert problems == []
    space = SearchSpace(parsed)
    assert space.names() == [
        "opt",
        "opt.adam.sched",
        "opt.adam.sched.cos.warm",
        "opt.adam.sched.cos.warm.1.steps",
        "cfg",
    ]
    vals = {"opt": [0], "opt.adam.sched": [0], "opt.adam.sched.cos.warm": [0]}
    vals["opt.adam.sched.cos.warm.1.steps"] = [4.0]
    values = decode(space, vals)
    assert values == {
        "opt": "adam",
        "opt.adam.sched": "cos",
        "opt.adam.sched.cos.warm": 1,
        "opt.adam.sched.cos.warm.1.steps": 4,
        "cfg": {"cfg": 1},  # a constant mapping is not mistaken for a categorical's sample
    }
    assert flatten(space_eval(to_hyperopt(space), {k: v[0] for k, v in vals.items()})) == values
    assert encode(space, values) == vals
