"""Warm starts (``hpo study enqueue``, ``Study.enqueue``): known configurations trained first.

Checked against the space before anything is queued (hypothesis generates the values, and the
test decides independently which must be accepted), taken before the sampler proposes by both
engines, counted against the budget, and tagged in MLflow; through the real CLI and a real
worker for the whole chain.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo.errors import UsageError
from hpo.spaces import parse_spec
from hpo.storage.warm_start import Configuration, check_configuration

from conftest import FAST_SPACE, FAULT_FAMILY_ENV, hpo

SPACE = """
family: dense_bn
dataset: {name: digits}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
params:
  learning_rate: {type: float, low: 0.0001, high: 0.1, log: true}
  units: {type: int, low: 16, high: 128, step: 16}
  epochs_hint: 3
  optimizer:
    type: categorical
    choices:
      adam: {}
      sgd: {momentum: {type: float, low: 0.0, high: 0.9}}
"""


@pytest.fixture(scope="module")
def space() -> Any:
    return parse_spec(SPACE).space


def _check(space: Any, params: dict[str, Any]) -> dict[str, Any]:
    return check_configuration(space, Configuration(params, "given"))


def test_a_configuration_that_fits_is_returned_without_constants(space: Any) -> None:
    params = {"learning_rate": 0.01, "units": 32, "optimizer": "sgd", "optimizer.sgd.momentum": 0.5}
    assert _check(space, {**params, "epochs_hint": 3}) == params
    assert _check(space, {"learning_rate": 0.01, "units": 32, "optimizer": "adam"}) == {
        "learning_rate": 0.01, "units": 32, "optimizer": "adam",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"learning_rate": 0.5, "units": 32, "optimizer": "adam"},
         "given: parameter 'learning_rate' = 0.5 is outside the space (0.0001 to 0.1)"),
        ({"learning_rate": 0.01, "units": 40, "optimizer": "adam"},
         "given: parameter 'units' = 40 is outside the space (16 to 128 in steps of 16)"),
        ({"learning_rate": 0.01, "units": 32, "optimizer": "rmsprop"},
         "given: parameter 'optimizer' = 'rmsprop' is outside the space (one of 'adam', 'sgd')"),
        ({"learning_rate": 0.01, "optimizer": "adam"},
         "given: parameter 'units' is missing (the space searches it)"),
        ({"learning_rate": 0.01, "units": 32, "optimizer": "sgd"},
         "given: parameter 'optimizer.sgd.momentum' is missing (the space searches it)"),
        ({"learning_rate": 0.01, "units": 32, "optimizer": "adam", "unitz": 3},
         "given: 'unitz' is not a parameter of the space here"),
        ({"learning_rate": 0.01, "units": 32, "optimizer": "adam", "optimizer.sgd.momentum": 0.1},
         "given: 'optimizer.sgd.momentum' is not a parameter of the space here"),
        ({"learning_rate": 0.01, "units": 32, "optimizer": "adam", "epochs_hint": 4},
         "given: parameter 'epochs_hint' is fixed at 3 in the space, not 4"),
    ],
)  # fmt: skip
def test_a_configuration_that_does_not_fit_is_named_in_one_line(
    space: Any, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError) as raised:
        _check(space, params)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lr=st.floats(allow_nan=True, allow_infinity=True),
    units=st.integers(-1000, 1000),
    optimizer=st.sampled_from(["adam", "sgd", "SGD", "", "adam "]),
    momentum=st.one_of(st.none(), st.floats(-2, 2)),
    extra=st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)
def test_generated_configurations_are_accepted_exactly_when_they_fit(
    space: Any,
    lr: float,
    units: int,
    optimizer: str,
    momentum: float | None,
    extra: dict[str, int],
) -> None:
    params: dict[str, Any] = {"learning_rate": lr, "units": units, "optimizer": optimizer}
    if momentum is not None:
        params["optimizer.sgd.momentum"] = momentum
    params.update(extra)
    # The oracle, from the space's text above.
    fits = (
        math.isfinite(lr)
        and 0.0001 <= lr <= 0.1
        and 16 <= units <= 128
        and units % 16 == 0
        and optimizer in ("adam", "sgd")
        and (momentum is not None) == (optimizer == "sgd")
        and (momentum is None or 0.0 <= momentum <= 0.9)
        and all(k in ("epochs_hint",) and v == 3 for k, v in extra.items())
    )
    try:
        _check(space, params)
    except UsageError as exc:
        assert not fits, f"refused a fitting configuration: {exc}"
        assert "\n" not in str(exc)
    else:
        assert fits, f"accepted {params}"


@pytest.mark.parametrize("algorithm", ["optuna-tpe", "hyperopt-tpe"])
def test_queued_configurations_come_first_for_both_engines_and_count_in_the_budget(
    workdir: Path, algorithm: str
) -> None:
    import hpo as api
    from hpo.engines import create_sampler
    from hpo.spaces._optuna import suggest
    from hpo.storage.studies import ENQUEUED_ATTR, claim_trial

    study = api.create_study(
        FAST_SPACE, name="warm", trials=3, algorithm=algorithm, seed=1, check_data=False
    )
    configs = workdir / "configs.yaml"
    configs.write_text(yaml.safe_dump([{"x": 0.75}]))
    assert study.enqueue({"x": 0.25}, file=configs) == 2
    # What a worker does: claim within the budget, then suggest through the engine's sampler.
    spec = study.config.spec()
    sampler = create_sampler(algorithm, spec.space, seed=1, directions=spec.directions, n_trials=3)
    store = optuna.load_study(study_name="warm", storage=study._store, sampler=sampler)
    xs = []
    while (trial := claim_trial(store, 3)) is not None:
        xs.append(suggest(trial, spec.space)["x"])
        store.tell(trial, xs[-1])
    assert xs[:2] == [0.25, 0.75] and len(xs) == 3 and 0.0 <= xs[2] <= 1.0
    sources = [t.user_attrs.get(ENQUEUED_ATTR) for t in store.trials]
    assert sources == ["given", "configs.yaml[0]", None]
    # The budget is spent: nothing more may be queued, and nothing was.
    with pytest.raises(UsageError, match=r"has 0 trial\(s\) of its budget of 3 left; 1"):
        study.enqueue({"x": 0.5})
    assert len(store.trials) == 3


def test_from_study_takes_the_best_trials_of_another_study(workdir: Path) -> None:
    import hpo as api

    source = api.create_study(FAST_SPACE, name="source", trials=5, check_data=False)
    raw = optuna.load_study(study_name="source", storage=source._store)
    values = {0.1: 0.3, 0.2: 0.9, 0.3: 0.5, 0.4: 0.7}
    for x, value in values.items():
        raw.add_trial(
            optuna.trial.create_trial(
                params={"x": x},
                distributions={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
                value=value,
            )
        )
    target = api.create_study(FAST_SPACE, name="target", trials=4, check_data=False)
    assert target.enqueue(from_study="source", top=2) == 2
    queued = optuna.load_study(study_name="target", storage=target._store).trials
    # maximize: the two largest values, best first.
    best = sorted(values, key=values.__getitem__, reverse=True)[:2]
    assert [t.system_attrs["fixed_params"]["x"] for t in queued] == best
    assert [t.user_attrs["enqueued_from"] for t in queued] == [
        "study source, trial 1", "study source, trial 3",
    ]  # fmt: skip


@pytest.mark.slow
def test_the_cli_queues_checks_first_and_the_run_is_tagged_in_mlflow(workdir: Path) -> None:
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    import hpo as api
    from hpo.cli import app

    api.create_study(FAST_SPACE, name="warm", trials=2, algorithm="hyperopt-tpe", check_data=False)

    def enqueue(*args: str) -> Any:
        return CliRunner().invoke(app, ["study", "enqueue", "warm", *args])

    # Refused: exit 2, one line, nothing queued (the good one before a bad one neither).
    for args, message in [
        (["--params", '{"x": 0.5}', "--params", '{"x": 7}'], "given[1]: parameter 'x' = 7"),
        (["--params", "{x: 1"], "--params #1: not valid JSON"),
        (["--file", "missing.yaml"], "missing.yaml: no such file"),
        (["--params", '{"x": 0.1}'] * 3, "has 2 trial(s) of its budget of 2 left; 3"),
        ([], "give configurations with --params, --file or --from-study"),
    ]:
        refused = enqueue(*args)
        assert refused.exit_code == 2, (args, refused.output)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], refused.stderr
    assert not optuna.load_study(study_name="warm", storage="sqlite:///hpo.db").trials
    queued = enqueue("--params", '{"x": 0.125}', "--json")
    assert queued.exit_code == 0, queued.output
    assert json.loads(queued.stdout) == {"study": "warm", "enqueued": 1}
    # A real worker takes it first and logs where it came from.
    ran = hpo("worker", "--study", "warm", cwd=workdir, env=dict(FAULT_FAMILY_ENV))
    assert ran.returncode == 0, ran.stderr
    trials = optuna.load_study(study_name="warm", storage="sqlite:///hpo.db").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].params == {"x": 0.125}
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`hpo.enqueued` = 'given'",
    )
    assert len(runs) == 1 and runs[0].data.params["x"] == "0.125"
