"""The search-space language: parsing every kind, conditional sub-spaces, names and values."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from rich.console import Console

from hpo.spaces import (
    CategoricalParam,
    Choice,
    ConstantParam,
    FloatParam,
    IntParam,
    Params,
    SearchSpace,
    StudySpec,
    distributions,
    load_spec,
    parse_params,
    parse_spec,
    suggest,
)
from hpo.spaces._optuna import grid
from hpo.spaces._render import describe, space_tree

REPO = Path(__file__).resolve().parents[1]

HEADER = """\
family: image_cnn
dataset: digits
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 2}
"""

EVERY_KIND = (
    HEADER
    + """\
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  dropout: {type: float, low: 0.0, high: 0.5}
  momentum: {type: float, low: 0.5, high: 0.9, step: 0.1}
  units: {type: int, low: 8, high: 64, step: 8}
  filters: {type: int, low: 4, high: 128, log: true}
  layers: {type: int, low: 1, high: 3}
  activation: {type: categorical, choices: [relu, tanh]}
  batch_size: {type: categorical, choices: [32, 64]}
  use_bias: {type: categorical, choices: [true, false]}
  epochs_hint: 64
  name_hint: resnet
  flag: true
  nothing: null
  shape: {type: constant, value: [28, 28]}
"""
)

NESTED = (
    HEADER
    + """\
params:
  optimizer:
    type: categorical
    choices:
      adam:
        beta_1: {type: float, low: 0.8, high: 0.99}
        schedule:
          type: categorical
          choices:
            cosine:
              warmup: {type: int, low: 0, high: 5}
            constant: null
      sgd:
        momentum: {type: float, low: 0.0, high: 0.9}
        nesterov: {type: categorical, choices: [true, false]}
      plain: {}
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
"""
)


def spec_of(text: str) -> StudySpec:
    return parse_spec(text, "space.yaml")


# -- parsing every kind ----------------------------------------------------------------------


def test_every_kind_parses_to_its_model() -> None:
    p = spec_of(EVERY_KIND).space.params
    assert p["lr"] == FloatParam(low=1e-4, high=1e-1, log=True)
    assert p["dropout"] == FloatParam(low=0.0, high=0.5)
    assert p["momentum"] == FloatParam(low=0.5, high=0.9, step=0.1)
    assert p["units"] == IntParam(low=8, high=64, step=8)
    assert p["filters"] == IntParam(low=4, high=128, log=True)
    assert p["layers"] == IntParam(low=1, high=3)
    assert isinstance(p["activation"], CategoricalParam)
    assert p["activation"].values == ["relu", "tanh"]
    assert p["batch_size"].values == [32, 64]  # type: ignore[union-attr]
    assert p["use_bias"].values == [True, False]  # type: ignore[union-attr]
    assert not p["activation"].is_conditional


def test_shorthand_constants_keep_their_yaml_type() -> None:
    p = spec_of(EVERY_KIND).space.params
    assert p["epochs_hint"] == ConstantParam(value=64)
    assert p["name_hint"] == ConstantParam(value="resnet")
    assert p["flag"] == ConstantParam(value=True)
    assert p["nothing"] == ConstantParam(value=None)
    assert p["shape"] == ConstantParam(value=[28, 28])
    assert type(p["epochs_hint"].value) is int  # type: ignore[union-attr]


def test_yaml_1_2_exponents_are_floats() -> None:
    # PyYAML alone reads `1e-3` (no dot) as text.
    spec = spec_of(HEADER + "params:\n  lr: {type: float, low: 1e-5, high: 1e-1, log: true}\n")
    assert spec.space.params["lr"] == FloatParam(low=1e-5, high=0.1, log=True)


def test_spec_sections_and_defaults() -> None:
    spec = spec_of(EVERY_KIND)
    assert spec.name == "space"  # the file name's stem when no name is given
    assert spec.family == "image_cnn"
    assert spec.dataset.name == "digits"  # `dataset: digits` is short for {name: digits}
    assert spec.metrics == ["val_accuracy"] and spec.directions == ["maximize"]
    assert not spec.multi_objective
    assert spec.budget.max_epochs == 2 and spec.budget.min_epochs == 1
    assert spec.defaults.algorithm == "optuna-tpe" and spec.defaults.pruner == "median"
    assert spec.source == EVERY_KIND and spec.filename == "space.yaml"


def test_multi_objective_without_a_pruner_gets_none() -> None:
    text = EVERY_KIND.replace(
        "objective: {metric: val_accuracy, direction: maximize}",
        "objective:\n  - {metric: val_accuracy, direction: maximize}\n"
        "  - {metric: params, direction: minimize}",
    )
    spec = spec_of(text)
    assert spec.multi_objective and spec.directions == ["maximize", "minimize"]
    assert spec.defaults.pruner == "none"


def test_merge_keys_may_override_without_a_duplicate_error() -> None:
    text = HEADER + textwrap.dedent("""\
        params:
          lr: &rate {type: float, low: 0.001, high: 0.1}
          lr2: {<<: *rate, high: 0.5}
        """)
    p = spec_of(text).space.params
    assert p["lr2"] == FloatParam(low=0.001, high=0.5)


def test_shipped_space_files_are_valid() -> None:
    files = sorted((REPO / "search_spaces").glob("*.yaml"))
    assert files
    for path in files:
        spec = load_spec(path)
        assert spec.space.searched_nodes()


# -- conditional sub-spaces -------------------------------------------------------------------


def test_nested_conditionals_have_path_names_and_conditions() -> None:
    space = spec_of(NESTED).space
    conditions = {n.name: n.conditions for n in space.nodes()}
    assert conditions == {
        "optimizer": (),
        "optimizer.adam.beta_1": (("optimizer", "adam"),),
        "optimizer.adam.schedule": (("optimizer", "adam"),),
        "optimizer.adam.schedule.cosine.warmup": (
            ("optimizer", "adam"),
            ("optimizer.adam.schedule", "cosine"),
        ),
        "optimizer.sgd.momentum": (("optimizer", "sgd"),),
        "optimizer.sgd.nesterov": (("optimizer", "sgd"),),
        "lr": (),
    }
    warmup = space.node("optimizer.adam.schedule.cosine.warmup")
    assert warmup.key == "warmup" and warmup.param == IntParam(low=0, high=5)
    optimizer = space.params["optimizer"]
    assert isinstance(optimizer, CategoricalParam) and optimizer.is_conditional
    assert optimizer.values == ["adam", "sgd", "plain"]
    assert optimizer.choice("plain").params == {}
    with pytest.raises(KeyError):
        space.node("optimizer.rmsprop.rho")


def test_suggest_asks_only_for_the_active_branch() -> None:
    space = spec_of(NESTED).space
    trial = optuna.trial.FixedTrial(
        {
            "optimizer": "adam",
            "optimizer.adam.beta_1": 0.9,
            "optimizer.adam.schedule": "cosine",
            "optimizer.adam.schedule.cosine.warmup": 2,
            "lr": 0.01,
        }
    )
    assert suggest(trial, space) == {
        "optimizer": "adam",
        "optimizer.adam.beta_1": 0.9,
        "optimizer.adam.schedule": "cosine",
        "optimizer.adam.schedule.cosine.warmup": 2,
        "lr": 0.01,
    }
    plain = suggest(optuna.trial.FixedTrial({"optimizer": "plain", "lr": 0.1}), space)
    assert plain == {"optimizer": "plain", "lr": 0.1}


def test_suggest_includes_constants_without_asking_for_them() -> None:
    space = spec_of(EVERY_KIND).space
    values = {n.name: n.param.low for n in space.searched_nodes() if hasattr(n.param, "low")}
    values |= {"activation": "tanh", "batch_size": 64, "use_bias": False}
    out = suggest(optuna.trial.FixedTrial(values), space)
    assert out["epochs_hint"] == 64 and out["shape"] == [28, 28] and out["nothing"] is None


def test_params_children_and_missing_names() -> None:
    hp = Params(
        {
            "optimizer": "adam",
            "optimizer.adam.beta_1": 0.9,
            "optimizer.adam.schedule": "cosine",
            "optimizer.adam.schedule.cosine.warmup": 2,
            "lr": 0.01,
        }
    )
    assert hp.children("optimizer") == {"beta_1": 0.9, "schedule": "cosine"}
    assert hp.children("optimizer.adam.schedule") == {"warmup": 2}
    assert hp["lr"] == 0.01 and len(hp) == 5 and hp.get("units", 32) == 32
    assert hp.to_dict()["optimizer"] == "adam"
    with pytest.raises(KeyError, match="not active in this trial"):
        hp["optimizer.sgd.momentum"]
    assert Params({"flag": True, "flag.true.x": 1}).children("flag") == {"x": 1}


# -- round trips and derived facts ------------------------------------------------------------


@pytest.mark.parametrize("text", [EVERY_KIND, NESTED])
def test_to_dict_round_trips_through_parse_params(text: str) -> None:
    space = spec_of(text).space
    data = space.to_dict()
    params, problems = parse_params(data)
    assert problems == []
    assert SearchSpace(params) == space
    # and through YAML text, as `hpo spaces show` could write it
    params2, problems2 = parse_params(yaml.safe_load(yaml.safe_dump(data)))
    assert problems2 == [] and SearchSpace(params2) == space


def test_is_discrete() -> None:
    assert not spec_of(EVERY_KIND).space.is_discrete()  # lr and dropout have no step
    discrete = SearchSpace(
        {
            "p": FloatParam(low=0.0, high=1.0, step=0.25),
            "n": IntParam(low=1, high=100, log=True),
            "c": CategoricalParam(
                choices=[Choice(value="a", params={"q": FloatParam(low=0.0, high=1.0, step=0.5)})]
            ),
            "k": ConstantParam(value=1.5),
        }
    )
    assert discrete.is_discrete()
    hidden = SearchSpace(
        {
            "c": CategoricalParam(
                choices=[Choice(value="a", params={"q": FloatParam(low=0, high=1)})]
            )
        }
    )
    assert not hidden.is_discrete()  # a continuous float inside a branch counts


def test_grid_values_stay_in_range() -> None:
    space = SearchSpace(
        {
            "p": FloatParam(low=0.1, high=0.3, step=0.1),
            "n": IntParam(low=2, high=10, step=4),
            "m": IntParam(low=1, high=10, log=True),
            "c": CategoricalParam(choices=[Choice(value="x"), Choice(value=2)]),
        }
    )
    values = grid(space)
    assert values["p"] == pytest.approx([0.1, 0.2, 0.3]) and max(values["p"]) <= 0.3
    assert values["n"] == [2, 6, 10] and values["m"] == [1, 2, 4, 8, 10]
    assert values["c"] == ["x", 2]
    with pytest.raises(ValueError, match="needs a step"):
        grid(SearchSpace({"x": FloatParam(low=0, high=1)}))


def test_distributions_cover_every_branch() -> None:
    dists = distributions(spec_of(NESTED).space)
    assert set(dists) == {
        "optimizer",
        "optimizer.adam.beta_1",
        "optimizer.adam.schedule",
        "optimizer.adam.schedule.cosine.warmup",
        "optimizer.sgd.momentum",
        "optimizer.sgd.nesterov",
        "lr",
    }
    lr = dists["lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log


def test_snap_moves_values_onto_the_grid() -> None:
    assert FloatParam(low=0.1, high=0.3, step=0.1).snap(0.1 + 0.2) == 0.3
    assert FloatParam(low=0.0, high=1.0).snap(1.0000000001) == 1.0
    assert IntParam(low=8, high=64, step=8).snap(70) == 64
    assert isinstance(IntParam(low=1, high=9).snap(3.0), int)


def test_python_api_refuses_names_that_would_break_path_names() -> None:
    with pytest.raises(ValueError, match="invalid parameter name"):
        SearchSpace({"a.b": FloatParam(low=0, high=1)})
    with pytest.raises(ValueError, match=r"no '\.'"):
        Choice(value=0.5, params={"x": FloatParam(low=0, high=1)})
    with pytest.raises(ValueError, match="Optuna cannot tell them apart"):
        CategoricalParam(choices=[Choice(value=1), Choice(value=True)])


# -- rendering --------------------------------------------------------------------------------


def test_space_tree_shows_conditional_branches() -> None:
    console = Console(width=120, color_system=None)
    with console.capture() as out:
        console.print(space_tree(spec_of(NESTED)))
    text = out.get()
    assert "space" in text and "image_cnn" in text and "maximize val_accuracy" in text
    assert "optimizer: categorical {adam, sgd, plain}" in text
    assert "if optimizer = adam" in text and "if optimizer = sgd" in text
    assert "if schedule = cosine" in text and "warmup: int [0, 5]" in text
    assert "if optimizer = plain" not in text  # no parameters, no branch
    assert "lr: float log [0.0001, 0.1]" in text


def test_space_tree_shows_markup_characters_literally() -> None:
    text = HEADER + "params:\n  tag: {type: categorical, choices: ['[/]', '[bold]x']}\n"
    console = Console(width=120, color_system=None)
    with console.capture() as out:
        console.print(space_tree(spec_of(text)))
    assert "categorical {[/], [bold]x}" in out.get()


def test_describe() -> None:
    assert describe(FloatParam(low=0, high=1, step=0.25)) == "float [0, 1] step 0.25"
    assert describe(IntParam(low=2, high=8, step=2)) == "int [2, 8] step 2"
    assert describe(ConstantParam(value="x")) == "constant 'x'"
