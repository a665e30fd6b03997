"""A real study whose trials end below their best epoch keeps the best epoch's model.

The tests' family in ``forget`` mode trains normally for two epochs, then zeroes its weights at
the start of the third: its last epoch predicts class 0 for every digit. ``hpo run`` (real
subprocess workers, Keras training, MLflow) must rank each trial by its best epoch and store
that epoch's model and validation predictions, which ensembles are fitted on. With
``budget.restore_best_epoch: false`` the same trial keeps its last epoch, as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from hpo.datasets import load_dataset
from hpo.spaces import parse_spec
from hpo.storage.studies import RUN_ID_ATTR
from hpo.tracking.artifacts import MODEL_FILE, PREDICTIONS_FILE

from conftest import FAST_SPACE, FAULT_FAMILY_ENV, hpo

pytestmark = pytest.mark.slow

SPACE = (
    FAST_SPACE.replace("mode: ok", "mode: forget\n  forget_epoch: 3\n  learning_rate: 0.05")
    .replace("subset: 200", "subset: 400")
    .replace("budget: {max_epochs: 1}", "budget: {max_epochs: 3, checkpoint_interval: 0}")
)


def _run(tmp_path: Path, name: str, space: str, trials: int) -> list[Any]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(space)
    result = hpo(
        "run", str(path), "--study", name, "--trials", str(trials), "--seed", "3", "--json",
        cwd=tmp_path, env=FAULT_FAMILY_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["complete"] == trials
    store = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    return [t for t in store.trials if t.state == optuna.trial.TrialState.COMPLETE]


def _stored(tmp_path: Path, trial: Any, into: Path) -> tuple[Any, dict[str, np.ndarray]]:
    """The trial's saved model (what it reads: the transformed arrays) and predictions."""
    import keras
    from mlflow import MlflowClient

    from hpo.inputs import core_model

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = trial.user_attrs[RUN_ID_ATTR]
    into.mkdir()
    model = keras.saving.load_model(client.download_artifacts(run_id, MODEL_FILE, str(into)))
    with np.load(client.download_artifacts(run_id, PREDICTIONS_FILE, str(into))) as stored:
        arrays = {k: stored[k] for k in stored.files}
    return core_model(model), arrays


def _accuracy(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=-1) == y))


def test_a_trial_keeps_its_best_epoch_its_model_and_predictions(tmp_path: Path) -> None:
    trials = _run(tmp_path, "best", SPACE, 2)
    data = load_dataset(parse_spec(SPACE).dataset)
    zeroed = float(np.mean(data.validation.y == 0))  # what the last epoch scores
    for trial in trials:
        curve = trial.intermediate_values
        assert sorted(curve) == [1, 2, 3] and curve[3] == pytest.approx(zeroed)
        best = max(curve, key=lambda epoch: (curve[epoch], -epoch))
        assert best < 3 and curve[best] > zeroed + 0.2, curve  # it learned, then forgot
        assert trial.value == curve[best]
        assert trial.user_attrs["kept_epoch"] == best and trial.user_attrs["epochs"] == 3
        model, stored = _stored(tmp_path, trial, tmp_path / f"trial-{trial.number}")
        rows = stored.get("validation_rows", np.arange(len(data.validation.y)))
        np.testing.assert_array_equal(stored["validation_true"], data.validation.y[rows])
        # The predictions ensembles are fitted on, and the saved model's own, are the best
        # epoch's: they score its value, not the last epoch's.
        assert _accuracy(stored["validation"], stored["validation_true"]) == pytest.approx(
            trial.value
        )
        predicted = np.asarray(model.predict(data.validation.x[rows], verbose=0))
        np.testing.assert_allclose(predicted, stored["validation"], atol=1e-5)


def test_a_study_can_keep_the_last_epoch_instead(tmp_path: Path) -> None:
    space = SPACE.replace(
        "checkpoint_interval: 0", "checkpoint_interval: 0, restore_best_epoch: false"
    )
    (trial,) = _run(tmp_path, "last", space, 1)
    curve = trial.intermediate_values
    assert trial.value == curve[3] and trial.user_attrs["kept_epoch"] == 3
    assert max(curve.values()) > curve[3]
    _, stored = _stored(tmp_path, trial, tmp_path / "trial")
    assert _accuracy(stored["validation"], stored["validation_true"]) == pytest.approx(curve[3])
