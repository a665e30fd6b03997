"""Validation of space files: every problem names the file, the dotted key path and the line.

The product's promise: an unknown key, a wrong type, an empty range, a log range touching 0, a
duplicate name, an unknown family or dataset each give an error naming the file, the key path
and the line; nothing is written.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpo.engines._names import ALGORITHMS, PRUNERS
from hpo.spaces import SpaceError, SpaceIssue, check_run_options, load_spec, parse_spec

HEADER = """\
family: image_cnn
dataset: digits
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 2}
"""
# In files made of HEADER + "params:\n" + ..., the first parameter is on line 6.
PARAMS = HEADER + "params:\n"
VALID = PARAMS + "  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"

Expected = tuple[str, int, str]  # dotted key path, line, a fragment of the message


def problems(text: str, tmp_path: Path) -> list[SpaceIssue]:
    """The issues of ``text`` saved as space.yaml; fails unless it is refused."""
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpaceError) as info:
        load_spec(path)
    for issue in info.value.issues:
        assert issue.file == str(path)
        # the one-line form a user reads: file:line: key.path: message
        where = f"{path}:{issue.line}" if issue.line else str(path)
        assert str(issue) == f"{where}: {issue.path or '<top level>'}: {issue.message}"
    assert str(info.value) == "\n".join(str(i) for i in info.value.issues)
    return info.value.issues


def check(text: str, tmp_path: Path, *expected: Expected) -> list[SpaceIssue]:
    """Assert that ``text`` gives exactly the ``expected`` issues (in file order)."""
    issues = problems(text, tmp_path)
    got = [(i.path, i.line) for i in issues]
    assert got == [(key, line) for key, line, _ in expected], "\n".join(map(str, issues))
    for issue, (_, _, fragment) in zip(issues, expected, strict=True):
        assert fragment in issue.message, str(issue)
    return issues


def test_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(VALID)
    assert load_spec(path).space.names() == ["lr"]


# -- the promise, case by case ----------------------------------------------------------------


def test_unknown_key_in_a_parameter(tmp_path: Path) -> None:
    text = PARAMS + "  lr:\n    type: float\n    low: 0.001\n    hgih: 0.1\n"
    missing, hgih = check(
        text,
        tmp_path,
        ("params.lr.high", 6, "required key is missing"),  # a missing key: its mapping's line
        ("params.lr.hgih", 9, "unknown key for a float parameter (did you mean 'high'?)"),
    )
    assert hgih.message.endswith("expected one of: type, low, high, log, step")
    assert missing.message == "required key is missing"


def test_unknown_top_level_section(tmp_path: Path) -> None:
    check(
        HEADER + "parms:\n  lr: 0.1\n",
        tmp_path,
        ("params", 1, "required section is missing"),
        ("parms", 5, "unknown section (did you mean 'params'?)"),
    )


def test_unknown_key_in_a_section(tmp_path: Path) -> None:
    text = VALID.replace("budget: {max_epochs: 2}", "budget:\n  max_epoch: 2")
    check(
        text,
        tmp_path,
        ("budget.max_epochs", 4, "required key is missing"),
        ("budget.max_epoch", 5, "unknown key in budget (did you mean 'max_epochs'?)"),
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "Input should be a valid number, got the text 'abc'"),
        ('"0.1"', "Input should be a valid number, got the text '0.1'"),
        ("true", "Input should be a valid number, got true"),
        ("", "Input should be a valid number, got nothing"),
        ("[1, 2]", "Input should be a valid number, got a list"),
        (".inf", "must be a finite number, got inf"),
    ],
)
def test_wrong_type_inside_a_parameter(tmp_path: Path, value: str, message: str) -> None:
    text = PARAMS + f"  units: 8\n  lr:\n    type: float\n    low: {value}\n    high: 1\n"
    (issue,) = check(text, tmp_path, ("params.lr.low", 9, message))
    assert issue.message == message


def test_wrong_types_elsewhere(tmp_path: Path) -> None:
    text = (
        HEADER.replace("max_epochs: 2", 'max_epochs: "10"')
        + "params:\n"
        + "  n: {type: int, low: 1.5, high: 4}\n"
        + "  flag: {type: float, low: 0, high: 1, log: yes please}\n"
    )
    issues = check(
        text,
        tmp_path,
        ("budget.max_epochs", 4, "Input should be a valid integer, got the text '10'"),
        ("params.n.low", 6, "Input should be a valid integer, got 1.5"),
        ("params.flag.log", 7, "Input should be a valid boolean, got the text 'yes please'"),
    )
    assert len(issues) == 3


def test_empty_ranges(tmp_path: Path) -> None:
    text = PARAMS + (
        "  lr: {type: float, low: 0.1, high: 0.1}\n  units:\n    type: int\n    low: 64\n"
        "    high: 8\n"
    )
    check(
        text,
        tmp_path,
        ("params.lr", 6, "empty range: low (0.1) must be less than high (0.1)"),
        ("params.units", 7, "empty range: low (64) must be less than high (8)"),
    )


def test_log_range_touching_zero(tmp_path: Path) -> None:
    text = PARAMS + (
        "  lr:\n    type: float\n    low: 0.0\n    high: 0.1\n    log: true\n"
        "  units: {type: int, low: -4, high: 8, log: true}\n"
    )
    check(
        text,
        tmp_path,
        ("params.lr.low", 8, "a log range must be above 0, but low is 0.0"),
        ("params.units.low", 11, "a log range must be above 0, but low is -4"),
    )


def test_duplicate_parameter_name(tmp_path: Path) -> None:
    text = VALID + "  units: 8\n  lr: {type: float, low: 0.1, high: 0.2}\n"
    (issue,) = check(text, tmp_path, ("params.lr", 8, "duplicate key"))
    assert issue.message == "duplicate key: 'lr' is already given on line 6"


def test_duplicate_key_in_a_section_and_nested(tmp_path: Path) -> None:
    text = VALID.replace("dataset: digits", "dataset: digits\nfamily: image_cnn") + (
        "  opt:\n    type: categorical\n    choices:\n      a: {x: 1, x: 2}\n"
    )
    check(
        text,
        tmp_path,
        ("family", 3, "already given on line 1"),
        ("params.opt.choices.a.x", 11, "already given on line 11"),
    )


@pytest.mark.parametrize("field", ["family", "dataset"])
def test_unknown_family_or_dataset(tmp_path: Path, field: str) -> None:
    text = VALID.replace(f"{field}: ", f"{field}: nope_", 1)
    key = field if field == "family" else "dataset"  # `dataset: name` is the short form
    line = 1 if field == "family" else 2
    (issue,) = check(text, tmp_path, (key, line, f"unknown {field} 'nope_"))
    assert "known: " in issue.message


def test_unknown_dataset_in_the_long_form(tmp_path: Path) -> None:
    text = VALID.replace("dataset: digits", "dataset:\n  subset: 100\n  name: mnist_typo")
    check(text, tmp_path, ("dataset.name", 4, "unknown dataset 'mnist_typo'; known: digits"))


def test_unknown_family_and_dataset_are_reported_with_other_broken_sections(
    tmp_path: Path,
) -> None:
    # Known gap (a): these were only checked when every other section was valid.
    text = (
        "family: nope\n"
        "dataset: {name: nope2, subset: -1}\n"
        "objective: {metric: val_accuracy, direction: up}\n"
        "budget: {max_epochs: 0}\n"
        "defaults: {algorithm: optuna-nope, pruner: medain}\n"
        "params:\n"
        "  lr: {type: float, low: abc, high: 1}\n"
    )
    check(
        text,
        tmp_path,
        ("family", 1, "unknown family 'nope'"),
        ("dataset.name", 2, "unknown dataset 'nope2'"),
        ("dataset.subset", 2, "Input should be greater than 0, got -1"),
        ("objective.direction", 3, "Input should be 'minimize' or 'maximize', got the text 'up'"),
        ("budget.max_epochs", 4, "Input should be greater than 0, got 0"),
        ("defaults.algorithm", 5, "unknown algorithm 'optuna-nope'"),
        ("defaults.pruner", 5, "unknown pruner 'medain' (did you mean 'median'?)"),
        ("params.lr.low", 7, "Input should be a valid number"),
    )


def test_unknown_dataset_name_is_reported_beside_a_bad_dataset_option(tmp_path: Path) -> None:
    text = VALID.replace("dataset: digits", "dataset: {name: nope, subset: -1}")
    check(
        text,
        tmp_path,
        ("dataset.name", 2, "unknown dataset 'nope'"),
        ("dataset.subset", 2, "greater than 0"),
    )


def test_own_family_needs_an_importable_module(tmp_path: Path) -> None:
    check(
        VALID.replace("family: image_cnn", "family: no_such_module_xyz:build"),
        tmp_path,
        ("family", 1, "cannot find module 'no_such_module_xyz'"),
    )
    check(
        VALID.replace("family: image_cnn", "family: 'mymodule:'"),
        tmp_path,
        ("family", 1, "write your own family as 'module:attribute'"),
    )
    ok = parse_spec(VALID.replace("family: image_cnn", "family: json:loads"))
    assert ok.family == "json:loads"


# -- objective: one mapping or a list (known gap b) -------------------------------------------


def test_objective_written_as_one_mapping_reports_its_own_keys(tmp_path: Path) -> None:
    text = VALID.replace(
        "objective: {metric: val_accuracy, direction: maximize}",
        "objective:\n  metric: val_accuracy\n  direction: up\n  weight: 2",
    )
    check(
        text,
        tmp_path,
        ("objective.direction", 5, "got the text 'up'"),
        ("objective.weight", 6, "unknown key in objective; expected one of: metric, direction"),
    )


def test_objective_written_as_a_list_reports_the_index(tmp_path: Path) -> None:
    text = VALID.replace(
        "objective: {metric: val_accuracy, direction: maximize}",
        "objective:\n  - {metric: val_accuracy, direction: maximize}\n"
        "  - metric: loss\n    direction: lower\n  - {metric: val_accuracy, direction: minimize}",
    )
    check(
        text,
        tmp_path,
        ("objective.1.direction", 6, "Input should be 'minimize' or 'maximize'"),
        ("objective.2.metric", 7, "metric 'val_accuracy' appears twice"),
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("val_accuracy", "expected {metric: ..., direction: ...} or a list of them, got the text"),
        ("[]", "or a list of them, got a list"),
        ("[val_accuracy]", "expected a mapping of keys to values, got the text 'val_accuracy'"),
    ],
)
def test_objective_of_the_wrong_shape(tmp_path: Path, value: str, message: str) -> None:
    text = VALID.replace("{metric: val_accuracy, direction: maximize}", value)
    (issue,) = problems(text, tmp_path)
    assert issue.line == 3 and issue.path.startswith("objective") and message in issue.message


# -- YAML and file-level problems -------------------------------------------------------------


def test_invalid_yaml_reports_its_line(tmp_path: Path) -> None:
    text = VALID + "  units: {type: int, low: 1, high: 4\n  dropout: 0.1\n"
    (issue,) = problems(text, tmp_path)
    assert issue.line == 8 and issue.path == "" and issue.message.startswith("not valid YAML: ")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("family: image_cnn\n  dataset: digits\n", 2, "mapping values are not allowed here"),
        ("a: 1\n\tb: 2\n", 2, "cannot start any token"),
        ("family: x\n---\nfamily: y\n", 2, "expected a single document"),
        ("params:\n  ? [a, b]\n  : 1\n", 2, "a key must be a plain value"),
        ("params:\n  x: &a [*a]\n", 2, "an alias refers to itself"),
        ("params:\n  x: {type: constant, value: 2024-13-45}\n", 2, "cannot read value"),
    ],
)
def test_broken_yaml(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    (issue,) = problems(text, tmp_path)
    assert (issue.path, issue.line) == ("", line) and fragment in issue.message, str(issue)


def test_missing_required_sections(tmp_path: Path) -> None:
    issues = check(
        "family: image_cnn\n",
        tmp_path,
        ("budget", 1, "required section is missing: epochs per trial"),
        ("dataset", 1, "required section is missing"),
        ("objective", 1, "required section is missing"),
        ("params", 1, "required section is missing: the parameters to search"),
    )
    assert all("e.g." in i.message for i in issues)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a mapping with family, dataset, objective, budget and params, got nothing"),
        ("- a\n- b\n", "expected a mapping with family, dataset, objective, budget and params"),
        ("just text\n", "got the text 'just text'"),
    ],
)
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str, message: str) -> None:
    (issue,) = problems(text, tmp_path)
    assert issue.path == "" and message in issue.message


def test_empty_or_wrong_params_section(tmp_path: Path) -> None:
    check(PARAMS, tmp_path, ("params", 5, "expected a mapping of parameter names, got nothing"))
    check(PARAMS + "  {}\n", tmp_path, ("params", 5, "no parameters: give at least one"))
    check(
        PARAMS + "  - lr\n",
        tmp_path,
        ("params", 5, "expected a mapping of parameter names, got a list"),
    )


def test_sections_of_the_wrong_type(tmp_path: Path) -> None:
    text = (
        "name: my study\nfamily: [a]\ndataset: 5\nobjective: {metric: '', direction: maximize}\n"
        "budget: 3\ndefaults: {trials: 0}\ndescription: 7\n" + "params:\n  x: 1\n"
    )
    check(
        text,
        tmp_path,
        ("name", 1, "invalid study name 'my study': use letters, digits"),
        ("family", 2, "expected the name of a model family, got a list"),
        ("dataset", 3, "expected a dataset name or a mapping with its name and options, got 5"),
        ("objective.metric", 4, "String should have at least 1 character"),
        ("budget", 5, "expected a mapping of keys to values, got 3"),
        ("defaults.trials", 6, "Input should be greater than 0, got 0"),
        ("description", 7, "expected text, got 7"),
    )


def test_min_epochs_above_max_epochs(tmp_path: Path) -> None:
    text = VALID.replace("budget: {max_epochs: 2}", "budget:\n  max_epochs: 2\n  min_epochs: 3")
    check(text, tmp_path, ("budget.min_epochs", 6, "min_epochs (3) must not exceed max_epochs"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("trial_timeout", "0", "greater than 0, got 0"),
        ("study_timeout", "-30", "greater than 0, got -30"),
        ("study_timeout", "'3600'", "a valid number, got the text '3600'"),
        ("study_timeout", "1h", "a valid number, got the text '1h'"),
        ("study_timeout", ".inf", "finite number"),
        ("trial_timeout", ".nan", "finite number"),
        ("study_timeout", "true", "a valid number, got true"),
        ("study_timeout_grace", "-1", "greater than or equal to 0, got -1"),
        ("checkpoint_interval", "-5", "greater than or equal to 0, got -5"),
        ("checkpoint_interval", ".inf", "finite number"),
    ],
)
def test_bad_time_limits_in_the_space(tmp_path: Path, key: str, value: str, message: str) -> None:
    budget = f"budget:\n  max_epochs: 2\n  {key}: {value}"
    text = VALID.replace("budget: {max_epochs: 2}", budget)
    check(text, tmp_path, (f"budget.{key}", 6, message))


def test_time_limits_in_the_space(tmp_path: Path) -> None:
    budget = "budget:\n  max_epochs: 2\n  trial_timeout: 600\n  study_timeout: 7200.5"
    spec = parse_spec(VALID.replace("budget: {max_epochs: 2}", budget))
    assert (spec.budget.trial_timeout, spec.budget.study_timeout) == (600.0, 7200.5)
    assert spec.budget.study_timeout_grace == 60.0  # the documented default
    assert parse_spec(VALID).budget.study_timeout is None


def test_reduction_factor_below_two(tmp_path: Path) -> None:
    budget = "budget:\n  max_epochs: 2\n  reduction_factor: 1"
    text = VALID.replace("budget: {max_epochs: 2}", budget)
    check(text, tmp_path, ("budget.reduction_factor", 6, "greater than or equal to 2, got 1"))


def test_checkpoints_is_true_or_false(tmp_path: Path) -> None:
    budget = "budget:\n  max_epochs: 2\n  checkpoints: 'no'"
    text = VALID.replace("budget: {max_epochs: 2}", budget)
    check(text, tmp_path, ("budget.checkpoints", 6, "Input should be a valid boolean"))
    path = tmp_path / "off.yaml"
    path.write_text(VALID.replace("{max_epochs: 2}", "{max_epochs: 2, checkpoints: false}"))
    assert load_spec(path).budget.checkpoints is False


def test_checkpoint_interval_defaults_to_a_minute(tmp_path: Path) -> None:
    assert parse_spec(VALID).budget.checkpoint_interval == 60.0  # the documented default
    every_epoch = VALID.replace("{max_epochs: 2}", "{max_epochs: 2, checkpoint_interval: 0}")
    assert parse_spec(every_epoch).budget.checkpoint_interval == 0.0


def test_unreadable_files() -> None:
    with pytest.raises(SpaceError, match=r"missing\.yaml: <top level>: cannot read: "):
        load_spec("/nonexistent/dir/missing.yaml")


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VALID.replace("digits", "digits  # caf\xe9").encode("latin-1"))
    with pytest.raises(SpaceError, match="cannot read: not UTF-8 text"):
        load_spec(path)


# -- parameters -------------------------------------------------------------------------------


def test_categorical_without_choices(tmp_path: Path) -> None:
    text = PARAMS + (
        "  a: {type: categorical, choices: []}\n"
        "  b: {type: categorical, choices: {}}\n"
        "  c: {type: categorical}\n"
        "  d: {type: categorical, choices: relu}\n"
    )
    check(
        text,
        tmp_path,
        ("params.a.choices", 6, "no choices: give at least one"),
        ("params.b.choices", 7, "no choices: give at least one"),
        ("params.c.choices", 8, "required key is missing"),
        ("params.d.choices", 9, "expected a list of choices or a mapping of options"),
    )


def test_duplicate_choices(tmp_path: Path) -> None:
    text = PARAMS + (
        "  act:\n    type: categorical\n    choices:\n      - relu\n      - tanh\n      - relu\n"
        "  size: {type: categorical, choices: [1, true, 1.0, '1']}\n"
    )
    check(
        text,
        tmp_path,
        ("params.act.choices.2", 11, "duplicate choice relu"),
        ("params.size.choices.1", 12, "true equals the choice 1 listed before"),
        ("params.size.choices.2", 12, "1.0 equals the choice 1 listed before"),
        ("params.size.choices.3", 12, "duplicate choice 1"),
    )


def test_choice_that_is_not_a_plain_value(tmp_path: Path) -> None:
    text = PARAMS + (
        "  act:\n    type: categorical\n    choices:\n      - relu\n      - {a: 1}\n"
        "    default: relu\n"
    )
    check(
        text,
        tmp_path,
        ("params.act.choices.1", 10, "write choices as a mapping"),
        ("params.act.default", 11, "unknown key for a categorical parameter"),  # still checked
    )


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("learning-rate", "invalid parameter name 'learning-rate': use letters, digits and _"),
        ("1st", "invalid parameter name '1st'"),
        ("a.b", "invalid parameter name 'a.b'"),
        ("__x", "names starting with __ are reserved"),
        ("3", "invalid parameter name 3"),
    ],
)
def test_bad_parameter_name(tmp_path: Path, name: str, fragment: str) -> None:
    check(PARAMS + f"  {name}: 1\n  ok: 2\n", tmp_path, (f"params.{name}", 6, fragment))


def test_bad_name_inside_a_branch(tmp_path: Path) -> None:
    text = PARAMS + (
        "  optimizer:\n    type: categorical\n    choices:\n      adam:\n"
        "        beta-1: {type: float, low: 0.8, high: 0.99}\n"
    )
    check(
        text,
        tmp_path,
        ("params.optimizer.choices.adam.beta-1", 10, "invalid parameter name 'beta-1'"),
    )


def test_option_with_parameters_needs_a_plain_label(tmp_path: Path) -> None:
    text = PARAMS + (
        "  rate:\n    type: categorical\n    choices:\n      0.5:\n        x: 1\n      0.9: null\n"
    )
    # Options without parameters may be anything; 0.5 would make `rate.0.5.x` ambiguous.
    check(text, tmp_path, ("params.rate.choices.0.5", 9, "use letters, digits, _ and - only"))


def test_option_written_like_a_parameter(tmp_path: Path) -> None:
    text = PARAMS + (
        "  optimizer:\n    type: categorical\n    choices:\n"
        "      adam: {type: float, low: 0.8, high: 0.99}\n"
    )
    check(
        text,
        tmp_path,
        ("params.optimizer.choices.adam.type", 9, "this looks like one float parameter"),
    )


def test_params_written_like_one_parameter(tmp_path: Path) -> None:
    check(PARAMS + "  type: float\n  low: 0\n  high: 1\n", tmp_path, ("params.type", 6, "name"))


def test_errors_deep_in_nested_branches(tmp_path: Path) -> None:
    text = PARAMS + (
        "  optimizer:\n"
        "    type: categorical\n"
        "    choices:\n"
        "      adam:\n"
        "        schedule:\n"
        "          type: categorical\n"
        "          choices:\n"
        "            cosine:\n"
        "              warmup: {type: int, low: 5, high: 1}\n"
        "              decay: {type: float, low: 0.1, high: 0.9, sep: 0.1}\n"
        "      sgd:\n"
        "        momentum: {type: float, low: 0.0, high: 0.9, step: 0.4}\n"
    )
    check(
        text,
        tmp_path,
        ("params.optimizer.choices.adam.schedule.choices.cosine.warmup", 14, "empty range"),
        ("params.optimizer.choices.adam.schedule.choices.cosine.decay.sep", 15, "did you mean"),
        ("params.optimizer.choices.sgd.momentum.step", 17, "step 0.4 does not divide"),
    )


def test_step_must_divide_the_range(tmp_path: Path) -> None:
    text = PARAMS + (
        "  p: {type: float, low: 0.0, high: 1.0, step: 0.3}\n"
        "  n: {type: int, low: 1, high: 10, step: 4}\n"
        "  q: {type: float, low: 0.1, high: 0.7, step: 0.2}\n"  # fine: decimal arithmetic
    )
    check(
        text,
        tmp_path,
        ("params.p.step", 6, "step 0.3 does not divide the range: high - low = 1.0 is not"),
        ("params.n.step", 7, "step 4 does not divide the range: high - low = 9 is not"),
    )


def test_step_with_log_and_bad_steps(tmp_path: Path) -> None:
    text = PARAMS + (
        "  p: {type: float, low: 0.1, high: 1.0, step: 0.1, log: true}\n"
        "  n: {type: int, low: 1, high: 9, step: 2, log: true}\n"
        "  m: {type: int, low: 1, high: 9, step: 0}\n"
        "  q: {type: float, low: 0.0, high: 1.0, step: -0.5}\n"
    )
    check(
        text,
        tmp_path,
        ("params.p.step", 6, "step cannot be combined with log"),
        ("params.n.step", 7, "step cannot be combined with log"),
        ("params.m.step", 8, "Input should be greater than or equal to 1, got 0"),
        ("params.q.step", 9, "Input should be greater than 0, got -0.5"),
    )


def test_missing_or_unknown_type(tmp_path: Path) -> None:
    text = PARAMS + (
        "  a: {low: 1, high: 2}\n  b: {type: floot, low: 1, high: 2}\n  c: {type: constant}\n"
        "  d: [1, 2]\n  e: {type: }\n"
    )
    check(
        text,
        tmp_path,
        ("params.a", 6, "missing type: write type: float, int, categorical or constant"),
        ("params.b.type", 7, "unknown type 'floot' (did you mean 'float'?)"),
        ("params.c.value", 8, "required key is missing"),
        ("params.d", 9, "a list is ambiguous: write {type: categorical, choices: [...]}"),
        ("params.e.type", 10, "missing type"),
    )


# -- defaults and how the study may run -------------------------------------------------------


def test_unknown_algorithm_and_pruner(tmp_path: Path) -> None:
    text = VALID.replace("params:", "defaults:\n  algorithm: tpe\n  pruner: asha\nparams:")
    issues = check(
        text,
        tmp_path,
        ("defaults.algorithm", 6, "unknown algorithm 'tpe'; known: optuna-tpe"),
        ("defaults.pruner", 7, "unknown pruner 'asha' (did you mean 'sha'?); known: none, median"),
    )
    assert "hyperopt-tpe" in issues[0].message


MULTI = VALID.replace(
    "objective: {metric: val_accuracy, direction: maximize}",
    "objective:\n  - {metric: val_accuracy, direction: maximize}\n"
    "  - {metric: params, direction: minimize}",
)  # objective now spans lines 3-5, budget is line 6, params line 7


def test_multi_objective_with_a_pruner(tmp_path: Path) -> None:
    text = MULTI.replace("params:", "defaults: {pruner: median}\nparams:")
    check(
        text,
        tmp_path,
        ("defaults.pruner", 7, "pruning works with one objective only, this study has 2"),
    )
    assert parse_spec(MULTI.replace("params:", "defaults: {pruner: none}\nparams:"))


def test_multi_objective_with_a_single_objective_algorithm(tmp_path: Path) -> None:
    text = MULTI.replace("params:", "defaults:\n  algorithm: hyperopt-tpe\nparams:")
    (issue,) = check(
        text, tmp_path, ("defaults.algorithm", 8, "hyperopt-tpe optimizes one objective")
    )
    assert "optuna-nsga2" in issue.message


def test_grid_algorithm_with_a_continuous_float(tmp_path: Path) -> None:
    text = PARAMS.replace("params:", "defaults: {algorithm: optuna-grid}\nparams:") + (
        "  units: {type: int, low: 8, high: 64, step: 8}\n"
        "  opt:\n    type: categorical\n    choices:\n"
        "      sgd: {momentum: {type: float, low: 0.0, high: 0.9}}\n"
        "      adam: {beta: {type: float, low: 0.8, high: 0.9, step: 0.05}}\n"
        "  dropout: {type: float, low: 0.0, high: 0.5}\n"
    )
    (issue,) = check(text, tmp_path, ("defaults.algorithm", 5, "optuna-grid needs a discrete"))
    assert issue.message.endswith("(no step: opt.sgd.momentum, dropout)")


def test_check_run_options_for_command_line_flags() -> None:
    spec = parse_spec(VALID)
    assert check_run_options(spec, "optuna-tpe", "hyperband") == []
    assert check_run_options(spec, "xyz", "xyz") == [
        f"unknown algorithm 'xyz'; known: {', '.join(ALGORITHMS)}, "
        "or 'module:attribute' for your own algorithm",
        f"unknown pruner 'xyz'; known: {', '.join(PRUNERS)}, "
        "or 'module:attribute' for your own pruner",
    ]
    assert check_run_options(spec, "optuna-grid", "none") == [
        "optuna-grid needs a discrete space: give every float a step (no step: lr)"
    ]
    multi = parse_spec(MULTI)
    assert multi.defaults.pruner == "none"
    assert len(check_run_options(multi, "optuna-cmaes", "sha")) == 2


# -- messages for people who never read our code (known gap c) ------------------------------

BAD_FILES = [
    "dataset: 5\nobjective: [5]\nbudget: 3\ndefaults: [1]\nfamily: 3\n",
    "family: x\ndataset: {nme: digits}\nobjective: {metric: 1}\nbudget: {max_epochs: a}\n",
    PARAMS + "  x: {type: float}\n  y: {type: int, low: a, high: []}\n  z: {type: categorical,"
    " choices: {a: 1, b: [1]}}\n  w: {type: constant, value: 1, extra: 2}\n",
    PARAMS + "  c: {type: categorical, choices: {adam: {x: {type: float, low: 1, high: 0}}}}\n",
    VALID.replace("dataset: digits", "dataset: {name: digits, validation_fraction: 0.7}"),
    VALID.replace("budget: {max_epochs: 2}", "budget: {max_epochs: 2, trial_timeout: -1}"),
]


@pytest.mark.parametrize("text", BAD_FILES)
def test_messages_name_no_internal_classes(tmp_path: Path, text: str) -> None:
    internal = re.compile(
        r"Spec\b|Param\b|Choice\b|instance of|pydantic|Value error|Field required|"
        r"Extra inputs|errors\.pydantic|\[type=|ModelMetaclass|Literal\["
    )
    for issue in problems(text, tmp_path):
        assert not internal.search(issue.message), str(issue)
        assert issue.line is not None, str(issue)
        assert issue.message[0].islower() or issue.message.startswith("Input"), str(issue)


# -- nothing is written -----------------------------------------------------------------------


def test_validation_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(VALID.replace("family: image_cnn", "family: nope"))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SpaceError):
        load_spec(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
