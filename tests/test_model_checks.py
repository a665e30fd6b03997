"""A family of one's own that does not suit its study fails its trial before training, saying why.

Families are modules written into a temporary folder, as a user would write them; their trials
run through the real trial runner (in this process, or through ``hpo run``) on digits and on
tabular CSVs of 2 and 3 classes.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import hpo

# ``mode`` picks what the family gets wrong; ``ok`` compiles it as hpo's families do.
USER_FAMILY = """
import keras


def build(hp, data):
    mode = hp["mode"]
    binary = data.task == "binary"
    units = {"ten_outputs": 10, "one_sigmoid": 1}.get(mode, 1 if binary else data.num_classes)
    activation = "sigmoid" if units == 1 else "softmax"
    model = keras.Sequential([
        keras.Input(data.input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(units, activation=activation),
    ])
    loss = "binary_crossentropy" if units == 1 else "sparse_categorical_crossentropy"
    if mode == "positional_compile":  # the README's old example: ["accuracy"] is loss_weights
        model.compile(keras.optimizers.Adam(1e-3), loss, ["accuracy"])
    elif mode == "no_metric":
        model.compile(optimizer="adam", loss=loss)
    elif mode == "misspelt_metric":
        model.compile(optimizer="adam", loss=loss, metrics=["acurracy"])
    else:
        model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model
"""


def _user_family(folder: Path) -> str:
    """Write the family as its own module (a new name each time: modules are cached)."""
    name = f"user_family_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(USER_FAMILY)
    return name


def _pythonpath(folder: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}


def _csv(path: Path, classes: int, rows: int = 90) -> Path:
    rng = np.random.default_rng(0)
    lines = ["a,b,label"]
    for i in range(rows):
        a, b = rng.normal(size=2)
        lines.append(f"{a:.4f},{b:.4f},{i % classes}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _space(family: str, dataset: str, modes: list[str]) -> str:
    return textwrap.dedent(
        f"""\
        family: {family}:build
        dataset: {dataset}
        objective: {{metric: val_accuracy, direction: maximize}}
        budget: {{max_epochs: 1}}
        defaults: {{algorithm: optuna-grid, pruner: none}}
        params:
          mode: {{type: categorical, choices: [{", ".join(modes)}]}}
        """
    )


def _run_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str, modes: list[str]
) -> dict[str, Any]:
    """Run one trial per mode through :class:`hpo.workers.runner.TrialRunner`, in this process."""
    from hpo.storage import open_storage
    from hpo.storage.studies import StudyConfig, create_study
    from hpo.workers.runner import TrialRunner
    from hpo.workers.tasks import TrialTask

    monkeypatch.syspath_prepend(str(tmp_path))
    family = _user_family(tmp_path)
    config = StudyConfig(
        name="checks",
        source=_space(family, dataset, modes),
        filename="checks.yaml",
        algorithm="optuna-grid",
        pruner="none",
        n_trials=len(modes),
    )
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage = open_storage(url)
    study = create_study(storage, config)
    runner = TrialRunner()
    results = {}
    for mode in modes:
        trial = study.ask()
        task = TrialTask(url, config.to_json(), trial._trial_id, trial.number, {"mode": mode})
        results[mode] = runner.run(task, lambda *_: None)
    return results


@pytest.mark.slow
def test_binary_data_needs_one_sigmoid_or_two_softmax_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet_optuna: None
) -> None:
    data = _csv(tmp_path / "two.csv", classes=2)
    dataset = f"{{name: tabular, options: {{path: {data}}}}}"
    results = _run_trials(tmp_path, monkeypatch, dataset, ["ten_outputs", "ok", "no_metric"])
    reason = results["ten_outputs"].reason or ""
    assert results["ten_outputs"].state == "FAIL"
    assert "the model outputs 10 values per example" in reason, reason
    assert "is a binary task" in reason and "Dense(1, activation='sigmoid')" in reason, reason
    assert results["ok"].state == "COMPLETE", results["ok"].reason
    reason = results["no_metric"].reason or ""
    assert results["no_metric"].state == "FAIL"
    assert (
        "the model does not report 'accuracy', which the objective 'val_accuracy' needs: "
        "compile it with metrics=['accuracy'] (it reports: loss)"
    ) in reason, reason


@pytest.mark.slow
def test_a_misspelt_metric_fails_before_training_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet_optuna: None
) -> None:
    results = _run_trials(tmp_path, monkeypatch, "{name: digits, subset: 100}", ["misspelt_metric"])
    reason = results["misspelt_metric"].reason or ""
    assert results["misspelt_metric"].state == "FAIL"
    assert "fails on 2 training examples of dataset 'digits' before training" in reason, reason
    assert "acurracy" in reason and "metrics=['accuracy']" in reason, reason


@pytest.mark.slow
def test_hpo_run_records_why_each_unsuitable_trial_failed(tmp_path: Path) -> None:
    """Three classes, through `hpo run`: the reasons land in the trials' fail_reason."""
    import optuna

    family = _user_family(tmp_path)
    data = _csv(tmp_path / "three.csv", classes=3)
    modes = ["one_sigmoid", "positional_compile", "no_metric", "ok"]
    space = tmp_path / "checks.yaml"
    space.write_text(_space(family, f"{{name: tabular, options: {{path: {data}}}}}", modes))
    result = hpo(
        "run", str(space), "--trials", "4", "--workers", "1", "--json",
        cwd=tmp_path, env=_pythonpath(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    assert json.loads(result.stdout)["complete"] == 1
    study = optuna.load_study(study_name="checks", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    reasons = {t.params["mode"]: t.user_attrs.get("fail_reason", "") for t in study.trials}
    assert reasons["ok"] == ""
    assert (
        "the model outputs 1 value per example, but dataset 'tabular' has 3 classes: end the "
        "model with Dense(data.num_classes, activation='softmax') (3 units)"
    ) in reasons["one_sigmoid"]
    assert (
        "model.compile's third positional argument is loss_weights, not metrics; write "
        "model.compile(optimizer=..., loss=..., metrics=['accuracy'])"
    ) in reasons["positional_compile"]
    assert "does not report 'accuracy'" in reasons["no_metric"]
    for reason in reasons.values():
        assert "Traceback" not in reason
