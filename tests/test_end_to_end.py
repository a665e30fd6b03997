"""Real studies end to end: `hpo run` with worker subprocesses, real Keras training on digits,
a SQLite study store shared by the workers, and MLflow runs checked through MlflowClient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import FAST_SPACE, FAULT_FAMILY_ENV, REPO, hpo

pytestmark = pytest.mark.slow
DIGITS_SPACE = REPO / "search_spaces" / "image_cnn_digits.yaml"


def _runs(tracking_uri: str, study: str) -> tuple[MlflowClient, list, object]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return client, runs, experiment


@pytest.mark.parametrize(
    ("algorithm", "pruner"), [("optuna-tpe", "median"), ("hyperopt-tpe", "hyperband")]
)
def test_study_reaches_exactly_n_trials_with_two_workers(
    tmp_path: Path, algorithm: str, pruner: str
) -> None:
    n = 4
    result = hpo(
        "run",
        str(DIGITS_SPACE),
        "--trials",
        str(n),
        "--workers",
        "2",
        "--algorithm",
        algorithm,
        "--pruner",
        pruner,
        "--study",
        "e2e",
        "--seed",
        "1",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    summary = json.loads(result.stdout)
    assert summary["finished"] == n and summary["running"] == 0
    assert summary["complete"] >= 1

    status = json.loads(hpo("study", "status", "e2e", "--json", cwd=tmp_path).stdout)
    assert status["finished"] == n

    client, runs, _ = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "e2e")
    study_runs = [r for r in runs if r.data.tags.get("hpo.kind") == "study"]
    trial_runs = [r for r in runs if r.data.tags.get("hpo.kind") == "trial"]
    assert len(study_runs) == 1 and len(trial_runs) == n
    parent = study_runs[0]
    assert parent.info.status == "FINISHED"
    assert all(r.info.status != "RUNNING" for r in runs)
    assert sorted(int(r.data.tags["hpo.trial_number"]) for r in trial_runs) == list(range(n))
    for run in trial_runs:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["hpo.algorithm"] == algorithm
        assert run.data.tags["hpo.family"] == "image_cnn"
        assert "learning_rate" in run.data.params and "optimizer" in run.data.params
        conditional = [k for k in run.data.params if k.startswith("optimizer.")]
        assert conditional, run.data.params
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
        assert run.info.status == expected[run.data.tags["hpo.state"]]
        if run.data.tags["hpo.state"] == "COMPLETE":
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"model.keras", "predictions.npz", "learning_curves.png"} <= names
            local = client.download_artifacts(run.info.run_id, "predictions.npz", str(tmp_path))
            preds = np.load(local)
            assert preds["validation"].shape[0] == preds["validation_true"].shape[0]
            assert preds["validation"].shape[1] == 10
            np.testing.assert_allclose(preds["validation"].sum(axis=1), 1.0, atol=1e-4)
            # The test split is predicted at the final stage, not by the trial.
            assert "test" not in preds.files and len(preds["test_true"]) > 0
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_trial.json", "optimization_history.png"} <= parent_files

    report = hpo("study", "report", "e2e", "--by", "conv_type", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)["rows"]
    assert sum(r["trials"] for r in rows) == n
    assert {r["value"] for r in rows} <= {"Conv2D", "SeparableConv2D"}
    for r in rows:
        if r["complete"]:
            assert r["median_epoch_seconds"] > 0 and r["median_params_count"] > 0
    assert "report_by_conv_type.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    unknown = hpo("study", "report", "e2e", "--by", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "not a parameter" in unknown.stderr


def test_crashing_nan_and_killed_trials_are_recorded_and_the_study_goes_on(
    tmp_path: Path,
) -> None:
    space = tmp_path / "faults.yaml"
    space.write_text(
        "family: fault_family:build\n"
        "dataset: {name: digits, subset: 200}\n"
        "objective: {metric: val_accuracy, direction: maximize}\n"
        "budget: {max_epochs: 1}\n"
        "defaults: {algorithm: optuna-grid, pruner: none}\n"
        "params:\n"
        "  mode: {type: categorical, choices: [ok, raise, nan, kill, segfault, oom]}\n"
    )
    env = FAULT_FAMILY_ENV
    result = hpo(
        "run",
        str(space),
        "--trials",
        "6",
        "--workers",
        "1",
        "--study",
        "faults",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    import optuna

    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    by_mode = {t.params["mode"]: t for t in study.get_trials()}
    assert set(by_mode) == {"ok", "raise", "nan", "kill", "segfault", "oom"}
    assert "killed by SIGSEGV" in by_mode["segfault"].user_attrs["fail_reason"]
    # numpy's MemoryError for its 16 GiB array, raised in the trial: the process lives on.
    assert "MemoryError: Unable to allocate" in by_mode["oom"].user_attrs["fail_reason"]
    assert by_mode["ok"].state.name == "COMPLETE"
    assert "deliberate failure in build" in by_mode["raise"].user_attrs["fail_reason"]
    assert "nan" in by_mode["nan"].user_attrs["fail_reason"].lower()
    assert "SIGKILL" in by_mode["kill"].user_attrs["fail_reason"]
    for mode in ("raise", "nan", "kill", "segfault", "oom"):
        assert by_mode[mode].state.name == "FAIL"
    assert len(study.get_trials()) == 6  # the study went on after every failure

    _, runs, _ = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "faults")
    assert all(r.info.status != "RUNNING" for r in runs)
    trial_runs = {
        r.data.tags["hpo.trial_number"]: r for r in runs if r.data.tags.get("hpo.kind") == "trial"
    }
    killed = trial_runs[str(by_mode["kill"].number)]
    assert killed.info.status == "FAILED"
    assert "SIGKILL" in killed.data.tags["hpo.fail_reason"]
    for mode, reason in (("segfault", "SIGSEGV"), ("oom", "MemoryError")):
        run = trial_runs[str(by_mode[mode].number)]
        assert run.info.status == "FAILED" and reason in run.data.tags["hpo.fail_reason"]


def test_run_resume_twice_as_make_run_does(tmp_path: Path) -> None:
    """`make run` is `hpo run --resume`: the first run creates the study and finishes it, a
    second one finds it finished, runs no trial, writes no MLflow run, and exits 0."""
    space = tmp_path / "again.yaml"
    space.write_text(FAST_SPACE)
    args = ("run", str(space), "--resume", "--study", "again", "--trials", "2", "--json")
    first = hpo(*args, cwd=tmp_path, env=FAULT_FAMILY_ENV)
    assert first.returncode == 0, first.stderr + first.stdout
    assert json.loads(first.stdout)["complete"] == 2

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, runs_before, _ = _runs(tracking, "again")
    second = hpo(*args, cwd=tmp_path, env=FAULT_FAMILY_ENV)
    assert second.returncode == 0, second.stderr + second.stdout
    summary = json.loads(second.stdout)
    assert (summary["complete"], summary["n_trials"]) == (2, 2), summary
    import optuna

    study = optuna.load_study(study_name="again", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    _, runs_after, _ = _runs(tracking, "again")
    assert sorted(r.info.run_id for r in runs_after) == sorted(r.info.run_id for r in runs_before)
    assert all(r.info.status == "FINISHED" for r in runs_after)
