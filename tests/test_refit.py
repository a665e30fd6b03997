"""`hpo refit`: a real digits study (dense_bn, 3 trials of 2 epochs) whose best trial is
trained again on training + validation data, recorded in MLflow, registered, exported and
used for predictions like an ensemble; and what it refuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_export import LOAD_WITHOUT_HPO
from typer.testing import CliRunner

from conftest import REPO
from oracles import assert_reported_metrics, stratified_split

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
SPACE = REPO / "search_spaces" / "dense_bn_digits.yaml"
SUBSET = 300  # training examples of the study (validation and test stay whole)
EPOCHS = 2
NAME = "dig-refit"


def hpo_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `hpo` command itself, in ``root`` (its hpo.db and mlflow.db)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HPO_STORAGE", "MLFLOW_TRACKING_URI")}
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


@pytest.fixture(scope="module")
def refitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The study ``dig``, then `hpo refit dig --json` (its best trial, registered as NAME)."""
    root = tmp_path_factory.mktemp("refit")
    run = hpo_cli(
        root, "run", str(SPACE), "--study", "dig", "--trials", "3", "--epochs", str(EPOCHS),
        "--subset", str(SUBSET), "--workers", "1", "--pruner", "none", "--seed", "0", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["complete"] == 3
    proc = hpo_cli(root, "refit", "dig", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "result": json.loads(proc.stdout)}


@pytest.fixture
def ws(refitted: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    root: Path = refitted["root"]
    monkeypatch.chdir(root)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def invoke(*args: str) -> Any:
    from hpo.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def client(root: Path) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def trials(root: Path) -> list[Any]:
    import optuna

    return optuna.load_study(study_name="dig", storage=f"sqlite:///{root / 'hpo.db'}").trials


def raw_test_split() -> tuple[np.ndarray, np.ndarray, int]:
    """The study's test split as scikit-learn gives digits (values 0-16), split by the
    documented rule; and the size of training + validation (training capped at SUBSET)."""
    from sklearn.datasets import load_digits

    spec = SPACE.read_text()
    assert "validation_fraction: 0.15\n  test_fraction: 0.2\n  seed: 0" in spec
    digits = load_digits()
    train, validation, test = stratified_split(digits.target, 0.15, 0.2, 0)
    x = digits.data[test].reshape(-1, 8, 8).astype(np.float32)
    return x, digits.target[test], min(SUBSET, len(train)) + len(validation)


def test_the_refit_is_its_own_run_linked_to_the_best_trial(
    ws: Path, refitted: dict[str, Any]
) -> None:
    from optuna.trial import TrialState

    from hpo.storage.studies import RUN_ID_ATTR

    result = refitted["result"]
    done = [t for t in trials(ws) if t.state == TrialState.COMPLETE]
    best = min(done, key=lambda t: (-t.value, t.number))  # val_accuracy, maximized
    assert result["trial"] == best.number
    trial_run = best.user_attrs[RUN_ID_ATTR]
    c = client(ws)
    run = c.get_run(result["run_id"])
    tags, params = run.data.tags, run.data.params
    assert run.info.status == "FINISHED"
    assert tags["hpo.kind"] == "refit" and tags["hpo.study"] == "dig"
    assert tags["hpo.refit.trial"] == str(best.number)
    assert tags["hpo.refit.trial_run"] == trial_run == result["trial_run_id"]
    assert trial_run in tags["mlflow.note.content"]  # the description links to the trial
    trial_info = c.get_run(trial_run)
    assert run.info.experiment_id == trial_info.info.experiment_id  # the study's experiment
    assert tags["mlflow.parentRunId"] == trial_info.data.tags["mlflow.parentRunId"]
    assert trial_info.data.tags[f"hpo.refit.{NAME}"] == "1"
    # The trial's hyperparameters, under the names its own run logged them with.
    for key in best.params:
        assert params[key] == trial_info.data.params[key], key
    # Epochs: as many as led to the model the trial kept, its best epoch (whose objective
    # ranked it).
    values = best.intermediate_values
    kept = max(values, key=lambda epoch: (values[epoch], -epoch))
    assert best.user_attrs["epochs"] == EPOCHS and best.user_attrs["kept_epoch"] == kept
    assert best.value == values[kept] and result["epochs"] == kept
    assert params["refit.epochs"] == str(kept) and params["refit.epochs_rule"] == "kept"
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "loss")]
    assert steps == list(range(1, kept + 1))
    assert not any(k.startswith("val_") for k in run.data.metrics)
    # Trained on training + validation data.
    _, _, train_and_validation = raw_test_split()
    assert result["train_size"] == train_and_validation
    # Registered like an ensemble of one member: the refit's own run.
    mv = c.get_model_version(NAME, "1")
    assert mv.run_id == run.info.run_id and mv.tags["hpo.method"] == "refit"
    assert json.loads(params["members"]) == [["dig", best.number, run.info.run_id, 1.0]]
    shown = invoke("ensemble", "show", NAME, "--json")
    assert shown.exit_code == 0, shown.stderr
    version = json.loads(shown.stdout)["versions"][0]
    assert version["method"] == "refit" and version["exportable"]
    assert version["metrics"]["test"]["refit"] == pytest.approx(result["metrics"]["test"]["refit"])


def test_the_reported_test_metrics_equal_sklearn_on_the_raw_test_split(
    ws: Path, refitted: dict[str, Any], tmp_path: Path
) -> None:
    """The refit's metrics (returned, logged) against scikit-learn's on the raw test split,
    predicted by the exported file in plain Keras; the trial's own against its stored model."""
    import keras

    from hpo.tracking.models import load_keras_model

    x, y, _ = raw_test_split()
    result = refitted["result"]
    out = tmp_path / "refit.keras"
    exported = invoke("export", NAME, "--output", str(out))
    assert exported.exit_code == 0, exported.stderr
    probs = keras.models.load_model(out, safe_mode=True).predict(x, verbose=0)
    assert_reported_metrics(result["metrics"]["test"]["refit"], probs, y, num_classes=10)
    logged = client(ws).get_run(result["run_id"]).data.metrics
    assert_reported_metrics(
        {k: logged[f"refit_test_{k}"] for k in ("accuracy", "nll", "ece")}, probs, y, 10
    )
    run = client(ws).get_run(result["trial_run_id"])
    trial_model = Path(run.info.artifact_uri.removeprefix("file://")) / "model.keras"
    trial_probs = load_keras_model(trial_model).predict(x, verbose=0)
    assert_reported_metrics(result["metrics"]["test"]["trial"], trial_probs, y, 10)
    assert not np.allclose(probs, trial_probs, atol=1e-3)  # trained again, not copied


def test_the_export_loads_in_plain_keras_and_predicts_as_hpo_predict(
    ws: Path, tmp_path: Path
) -> None:
    import mlflow.pyfunc

    import hpo

    x, _, _ = raw_test_split()
    x = x[:50]
    out = tmp_path / "refit.keras"
    assert invoke("export", NAME, "--output", str(out)).exit_code == 0
    np.save(tmp_path / "x.npy", x)
    # Plain Keras, where hpo cannot be imported (see test_export.py).
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LOAD_WITHOUT_HPO, sysconfig.get_paths()["purelib"],
         str(out), str(tmp_path / "x.npy"), str(tmp_path / "keras.npy")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = np.load(tmp_path / "keras.npy")
    for i, model in enumerate((NAME, str(out))):
        predicted = tmp_path / f"predicted-{i}.npz"
        result = invoke("predict", model, "--input", str(tmp_path / "x.npy"), "-o", str(predicted))
        assert result.exit_code == 0, result.stderr
        with np.load(predicted) as got:
            assert np.max(np.abs(got["probabilities"] - plain)) <= 1e-5, model
    loaded = hpo.load_ensemble(NAME).predict(x)
    assert np.max(np.abs(loaded.probabilities - plain)) <= 1e-5
    assert loaded.labels == [str(c) for c in plain.argmax(axis=1)]
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(x)
    assert np.max(np.abs(np.stack(served["probabilities"].to_numpy()) - plain)) <= 1e-5


def test_a_chosen_trial_refits_from_python(ws: Path) -> None:
    from optuna.trial import TrialState

    import hpo

    result = hpo.refit(hpo.load_study("dig"), trial=1, name="dig-trial1", seed=7)
    trial = next(t for t in trials(ws) if t.number == 1)
    kept = trial.user_attrs["kept_epoch"]
    assert (result.trial, result.epochs, result.seed, result.version) == (1, kept, 7, 1)
    assert trial.state == TrialState.COMPLETE
    run = client(ws).get_run(result.run_id)
    assert run.data.params["refit.seed"] == "7"
    assert run.data.tags["hpo.refit.trial"] == "1"
    assert set(result.metrics["test"]) == {"refit", "trial"}


def one_line_error(result: Any, *words: str) -> None:
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_refusals_exit_2_with_one_line(ws: Path) -> None:
    import optuna

    c = client(ws)
    before = runs(c)
    one_line_error(invoke("refit", "no-such-study"), "no-such-study")
    one_line_error(invoke("refit", "dig", "--trial", "9"), "no trial 9")
    one_line_error(invoke("refit", "dig", "--name", "bad name!"), "bad name!")
    # A trial that has not run: queued in the study (WAITING).
    study = optuna.load_study(study_name="dig", storage=f"sqlite:///{ws / 'hpo.db'}")
    study.enqueue_trial(trials(ws)[0].params)
    waiting = max(t.number for t in trials(ws))
    one_line_error(invoke("refit", "dig", "--trial", str(waiting)), "WAITING", "not COMPLETE")
    assert runs(c) == before  # nothing was logged
    # A generator's trials are not refit, as they are not ensembled.
    created = invoke("study", "create", str(REPO / "search_spaces" / "gan_small.yaml"),
                     "--study", "gan", "--trials", "1")  # fmt: skip
    assert created.exit_code == 0, created.stderr
    before = runs(c)
    one_line_error(invoke("refit", "gan"), "'gan' study")
    assert runs(c) == before


def runs(c: Any) -> int:
    return len(c.search_runs([e.experiment_id for e in c.search_experiments()]))
