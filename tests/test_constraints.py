"""Feasibility constraints (``constraints:`` in a space): validation, what the samplers read,
which trials count as best and as ensemble candidates, and real studies that enforce them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hpo.spaces import ConstraintSpec, SpaceError, parse_spec
from hpo.storage.feasibility import CONSTRAINTS_ATTR, FEASIBLE_ATTR, best_trials, is_feasible

from conftest import hpo

HEADER = """\
family: dense_bn
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
params: {units: 8}
"""


def issues(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(SpaceError) as info:
        parse_spec(text, "space.yaml")
    return [(i.path, i.line, i.message) for i in info.value.issues]


def test_constraints_are_read_with_their_bounds() -> None:
    spec = parse_spec(
        HEADER + "constraints:\n  - {metric: params_count, max: 50000}\n"
        "  - {metric: val_loss, min: 0, max: 1.5}\n",
        "space.yaml",
    )
    assert spec.constraints == [
        ConstraintSpec(metric="params_count", max=50000.0),
        ConstraintSpec(metric="val_loss", min=0.0, max=1.5),
    ]
    from rich.console import Console

    from hpo.spaces._render import space_tree

    console = Console(width=120, color_system=None)
    with console.capture() as shown:  # what `hpo spaces show` prints
        console.print(space_tree(spec))
    assert "feasible: params_count <= 50000, 0 <= val_loss <= 1.5" in shown.get()
    assert parse_spec(HEADER, "s.yaml").constraints == []
    assert parse_spec(HEADER + "constraints: []\n", "s.yaml").constraints == []


@pytest.mark.parametrize(
    ("entry", "path", "fragment"),
    [
        ("3", "constraints", "expected a list of {metric: ..., max: ...}"),
        ("[3]", "constraints.0", "expected {metric: ..., max: ...} (or min), got 3"),
        ("[{metric: val_loss}]", "constraints.0.max", "give max, min or both"),
        ("[{max: 1}]", "constraints.0.metric", "required key is missing"),
        ("[{metric: val_loss, mx: 1}]", "constraints.0.mx", "did you mean 'max'?"),
        ("[{metric: val_loss, max: '1'}]", "constraints.0.max", "got the text '1'"),
        ("[{metric: val_loss, max: true}]", "constraints.0.max", "valid number"),
        ("[{metric: val_loss, max: .nan}]", "constraints.0.max", "finite number"),
        ("[{metric: val_loss, min: -.inf}]", "constraints.0.min", "finite number"),
        ("[{metric: val_loss, min: 2, max: 1}]", "constraints.0.min", "must not exceed max"),
        ("[{metric: '', max: 1}]", "constraints.0.metric", "at least 1 character"),
        ("[{metric: [a], max: 1}]", "constraints.0.metric", "valid string"),
        (
            "[{metric: loss, max: 1}, {metric: loss, min: 0}]",
            "constraints.1.metric",
            "'loss' is constrained twice",
        ),
        (
            "[{metric: param_count, max: 1}]",
            "constraints.0.metric",
            "unknown metric 'param_count' (did you mean 'params_count'?)",
        ),
    ],
)
def test_a_bad_constraint_names_its_key_and_line(entry: str, path: str, fragment: str) -> None:
    [(got_path, line, message)] = issues(HEADER + f"constraints: {entry}\n")
    assert got_path == path and line == 6, (got_path, line, message)
    assert fragment in message and "\n" not in message, message


def test_hpo_run_refuses_a_bad_constraint_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(HEADER + "constraints: [{metric: param_count, max: 5}]\n")
    result = hpo("run", "s.yaml", "--trials", "1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "s.yaml:6: constraints.0.metric: unknown metric 'param_count'" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


hostile_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
)
hostile_entry = st.one_of(
    hostile_scalar,
    st.dictionaries(
        st.one_of(st.sampled_from(["metric", "min", "max", "mx", "bound"]), st.text(max_size=8)),
        st.one_of(hostile_scalar, st.sampled_from(["params_count", "val_loss", "param_count"])),
        max_size=4,
    ),
)


@given(st.one_of(hostile_scalar, st.lists(hostile_entry, max_size=4)))
@settings(max_examples=150, deadline=None)
def test_any_constraints_section_gives_constraints_or_one_line_errors(value: Any) -> None:
    text = HEADER + yaml.safe_dump({"constraints": value}, allow_unicode=True)
    try:
        spec = parse_spec(text, "space.yaml")
    except SpaceError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.path.startswith("constraints"), issue
            assert "\n" not in issue.message and issue.line is not None, issue
        return
    given_entries = value or []
    assert len(spec.constraints) == len(given_entries)
    for c, raw in zip(spec.constraints, given_entries, strict=True):
        assert c.metric == raw["metric"] and (c.min, c.max) != (None, None)
        for bound in (c.min, c.max):
            assert bound is None or math.isfinite(bound)
        assert c.min is None or c.max is None or c.min <= c.max


@given(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9),
    st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6)),
    st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6)),
)
def test_a_violation_is_positive_exactly_outside_the_bounds(
    value: float, low: float | None, high: float | None
) -> None:
    if low is None and high is None:
        return
    if low is not None and high is not None and low > high:
        low, high = high, low
    c = ConstraintSpec(metric="m", min=low, max=high)
    inside = (low is None or value >= low) and (high is None or value <= high)
    assert (c.violation(value) <= 0) == inside
    assert c.violation(float("nan")) > 0


# -- what Optuna's samplers and hpo's readers make of the stored violations --------------------


def _trial(x: float, value: float, constraints: list[float] | None) -> Any:
    attrs = {CONSTRAINTS_ATTR: constraints} if constraints is not None else {}
    return optuna.trial.create_trial(
        params={"x": x},
        distributions={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
        value=value,
        system_attrs=attrs,
    )


def test_optuna_tpe_steers_away_from_trials_marked_infeasible() -> None:
    """The value grows with x, but x > 0.5 breaks the constraint: proposals stay below 0.5,
    and without the stored violations they go above it. The sampler is hpo's optuna-tpe, built
    without ``constraints_func``: it reads the ``constraints`` attribute of the trials."""
    from hpo.engines import create_sampler
    from hpo.spaces import FloatParam, SearchSpace

    algorithm = "optuna-tpe"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace({"x": FloatParam(low=0.0, high=1.0)})
    xs = [i / 19 for i in range(20)]

    def proposals(constrained: bool) -> list[float]:
        sampler = create_sampler(algorithm, space, seed=0, directions=["maximize"], n_trials=40)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for x in xs:
            study.add_trial(_trial(x, x, [x - 0.5] if constrained else None))
        out = []
        for _ in range(10):
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            if constrained:  # as the trial process does, before the worker tells the trial
                study._storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_ATTR, [x - 0.5])
            study.tell(trial, x)
            out.append(x)
        return out

    feasible = sum(x <= 0.5 for x in proposals(constrained=True))
    unconstrained = sum(x <= 0.5 for x in proposals(constrained=False))
    # The best feasible trial lies at the boundary (x = 0.47): some proposals cross it.
    assert feasible >= 6 and unconstrained <= 2, (feasible, unconstrained)


def test_best_status_notes_and_ensemble_candidates_skip_infeasible_trials(
    storage_url: str, tmp_path: Path
) -> None:
    from hpo.api import load_study
    from hpo.ensemble._candidates import StudyInfo, complete_trials
    from hpo.storage import open_storage
    from hpo.storage.status import study_status
    from hpo.storage.studies import RUN_ID_ATTR, StudyConfig, create_study
    from hpo.tracking.notes import study_note
    from hpo.tracking.study_report import best_trial_summary

    space = HEADER + "constraints: [{metric: params_count, max: 1000}]\n"
    config = StudyConfig(
        name="constrained", source=space, filename="c.yaml", algorithm="optuna-random",
        pruner="none", n_trials=4, seed=0,
    )  # fmt: skip
    store = open_storage(storage_url)
    study = create_study(store, config)
    # Trial 0 has the best value but broke the constraint; trial 1 is the best feasible one.
    for number, (value, violation) in enumerate([(0.9, 500.0), (0.7, -10.0), (0.5, -20.0)]):
        trial = _trial(0.1 * number, value, [violation])
        trial.user_attrs.update({RUN_ID_ATTR: f"run{number}", FEASIBLE_ATTR: violation <= 0})
        study.add_trial(trial)
    study.add_trial(  # stopped before training: pruned, and infeasible
        optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                  system_attrs={CONSTRAINTS_ATTR: [300.0]})
    )  # fmt: skip
    loaded = optuna.load_study(study_name="constrained", storage=store)
    assert [t.number for t in best_trials(loaded)] == [1]
    assert [is_feasible(t) for t in loaded.trials] == [False, True, True, False]
    status = study_status(store, "constrained")
    assert (status.complete, status.pruned, status.infeasible) == (3, 1, 2)
    assert status.best_trial == 1 and status.best_values == [0.7]
    summary = best_trial_summary(store, config)
    assert summary is not None and [t["number"] for t in summary["best_trials"]] == [1]
    api_best = load_study("constrained", storage_url).best_trial
    assert api_best is not None and api_best.number == 1
    info = StudyInfo("constrained", "val_accuracy", "maximize", "dense_bn", None, None, None)
    assert [c.trial_number for c in complete_trials(store, info)] == [1, 2]
    note = study_note(config, loaded.trials)
    assert "3 complete, 1 pruned, 0 failed (2 infeasible)" in note, note
    assert "**Best trial:** trial 1:" in note, note

    # No feasible complete trial: no best, rather than Optuna's ValueError; the CLI says so.
    none_feasible = create_study(store, dataclasses.replace(config, name="none-feasible"))
    none_feasible.add_trial(_trial(0.2, 0.9, [1.0]))
    assert best_trials(none_feasible) == []
    url = storage_url
    best = hpo("study", "best", "none-feasible", "--storage", url, cwd=tmp_path)
    assert best.returncode == 1, best.stderr
    assert "has no complete trial that meets its constraints yet" in best.stderr, best.stderr
    shown = hpo("study", "status", "constrained", "--storage", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "2 infeasible (not best)" in " ".join(shown.stdout.split()), shown.stdout
    assert "best: 0.7 (trial 1)" in shown.stdout, shown.stdout


def test_report_by_a_parameter_leaves_infeasible_trials_out_of_the_objective(
    tmp_path: Path,
) -> None:
    """`hpo study report --by`: per value, the best and median objective of feasible complete
    trials only, with the infeasible ones counted."""
    from hpo.storage import open_storage
    from hpo.storage.studies import StudyConfig, create_study
    from hpo.tracking.study_report import report_by

    space = HEADER.replace("params: {units: 8}", "params: {x: {type: float, low: 0.0, high: 1.0}}")
    space += "constraints: [{metric: params_count, max: 1000}]\n"
    config = StudyConfig(
        name="by", source=space, filename="c.yaml", algorithm="optuna-random",
        pruner="none", n_trials=4, seed=0,
    )  # fmt: skip
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    store = open_storage(url)
    study = create_study(store, config)
    for value, violation in [(0.9, 500.0), (0.7, -10.0), (0.5, -20.0)]:
        study.add_trial(_trial(0.25, value, [violation]))
    [row] = report_by(store, config, "x")
    assert row["value"] == "0.25"
    assert (row["trials"], row["complete"], row["infeasible"]) == (3, 3, 1)
    assert row["best_val_accuracy"] == 0.7 and row["median_val_accuracy"] == pytest.approx(0.6)
    # An 80-column terminal (as when piped): the table is printed whole, no value cut short.
    narrow = {"COLUMNS": "80"}
    shown = hpo(
        "study",
        "report",
        "by",
        "--by",
        "x",
        "--no-mlflow",
        "--storage",
        url,
        cwd=tmp_path,
        env=narrow,
    )
    assert shown.returncode == 0, shown.stderr
    assert "infeasible" in shown.stdout and "0.7000" in shown.stdout, shown.stdout
    assert "…" not in shown.stdout and "val_accuracy" in shown.stdout, shown.stdout
    assert "0.9000" not in shown.stdout, shown.stdout


def test_the_best_trials_of_several_objectives_are_the_feasible_pareto_front() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values, violation in [((0.9, 0.1), 1.0), ((0.7, 0.3), 0.0), ((0.5, 0.2), -1.0)]:
        attrs = {CONSTRAINTS_ATTR: [violation]}
        study.add_trial(optuna.trial.create_trial(values=list(values), system_attrs=attrs))
    # Trial 0 dominates both others but broke its constraint.
    assert sorted(t.number for t in best_trials(study)) == [1, 2]


def test_hyperopt_proposes_without_the_infeasible_trials_in_its_history() -> None:
    from hpo.engines import HyperoptSampler, create_sampler
    from hpo.spaces import FloatParam, SearchSpace

    space = SearchSpace({"x": FloatParam(low=0.0, high=1.0)})
    sampler = create_sampler("hyperopt-tpe", space, seed=0, directions=["maximize"])
    assert isinstance(sampler, HyperoptSampler)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for i, x in enumerate([0.1, 0.9, 0.3, 0.8]):
        study.add_trial(_trial(x, x, [x - 0.5] if i else None))  # trial 0: no constraints
    current = study._storage.get_trial(study.ask()._trial_id)
    history = sampler._history(study, current)
    assert sorted(doc["tid"] for doc in history.trials) == [0, 2]


# -- real studies --------------------------------------------------------------------------

STUDY_SPACE = """\
family: dense_bn
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
defaults: {pruner: none, seed: 0}
constraints:
  - {metric: params_count, max: 2000}   # 64 inputs, 10 classes: 75 * units + 10 parameters
  - {metric: val_loss, max: 100.0}
params:
  depth: 1
  units: {type: int, low: 8, high: 40}
  shrink: 1.0
  activation: relu
  batchnorm: none
  dropout: 0.0
  optimizer: adam
  learning_rate: 0.01
  batch_size: 32
"""


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["optuna-tpe", "hyperopt-tpe"])
def test_a_study_records_and_skips_trials_that_break_a_constraint(
    tmp_path: Path, algorithm: str
) -> None:
    from mlflow import MlflowClient

    from hpo import tracking
    from hpo.api import load_study
    from hpo.ensemble._candidates import complete_trials, load_studies
    from hpo.storage import open_storage

    (tmp_path / "c.yaml").write_text(STUDY_SPACE)
    result = hpo(
        "run", "c.yaml", "--study", "c", "--algorithm", algorithm, "--trials", "5", "--json",
        cwd=tmp_path, env={"HPO_OUTBOX_DIR": str(tmp_path / "outbox")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(result.stdout)
    store = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}")
    trials = optuna.load_study(study_name="c", storage=store).trials
    big = [t for t in trials if 75 * t.params["units"] + 10 > 2000]
    small = [t for t in trials if t not in big]
    assert big and small, [t.params for t in trials]  # the seed gives both kinds
    # Too large: stopped after building, recorded as infeasible with its violations.
    for t in big:
        assert t.state.name == "PRUNED" and t.user_attrs[FEASIBLE_ATTR] is False, t
        assert t.system_attrs[CONSTRAINTS_ATTR] == [t.user_attrs["params_count"] - 2000, 0.0]
        assert "epochs" not in t.user_attrs  # not trained
    for t in small:
        assert t.state.name == "COMPLETE" and t.user_attrs[FEASIBLE_ATTR] is True, t
        params, loss = t.system_attrs[CONSTRAINTS_ATTR]
        assert params == t.user_attrs["params_count"] - 2000 <= 0 and loss < 0
    assert status["infeasible"] == len(big) and status["complete"] == len(small)
    api = load_study("c", f"sqlite:///{tmp_path / 'hpo.db'}")
    best = api.best_trial
    assert best is not None and best.number in {t.number for t in small}
    assert {t.number for t in api.trials if not t.feasible} == {t.number for t in big}
    assert status["best_trial"] == best.number
    [info] = load_studies(store, ["c"])
    assert {c.trial_number for c in complete_trials(store, info)} == {t.number for t in small}

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("c")
    assert experiment is not None
    runs = {
        int(r.data.tags["hpo.trial_number"]): r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("hpo.kind") == "trial"
    }
    for t in big:
        tags = runs[t.number].data.tags
        assert tags["hpo.feasible"] == "false", tags
        count = t.user_attrs["params_count"]
        assert tags[tracking.NOTE_TAG] == (
            f"Trial {t.number}: **infeasible**: params_count = {count} > max 2000; "
            "stopped before training."
        )
    for t in small:
        assert runs[t.number].data.tags["hpo.feasible"] == "true"


def test_docstring_examples_run() -> None:
    import doctest
    import importlib

    for name in ("hpo.spaces._constraints", "hpo.storage.feasibility", "hpo.tracking.notes"):
        module = importlib.import_module(name)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
        assert result.failed == 0 and result.attempted > 0, name


def test_a_constrained_metric_the_model_does_not_report_fails_its_check(
    small_digits: Any,
) -> None:
    """As for an objective: the trial fails before its first epoch, naming the constraint."""
    from hpo.families import get_family
    from hpo.spaces import Params
    from hpo.workers.model_checks import ModelCheckError, check_model

    family = get_family("dense_bn")
    model = family.build(Params({"units": 8}), small_digits)
    check_model(model, family, small_digits, ["val_accuracy"], constrained=["val_loss"])
    with pytest.raises(ModelCheckError) as info:
        check_model(model, family, small_digits, ["val_accuracy"], constrained=["val_auc"])
    assert str(info.value).startswith(
        "the model does not report 'auc', which the constraint on 'val_auc' needs: "
    ), info.value
