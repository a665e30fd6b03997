"""A trial whose worker is killed resumes from its last checkpoint in its retry.

Real ``hpo worker`` subprocesses, a real MLflow server over HTTP (the checkpoints live in the
trial's run there), the study store on SQLite and on PostgreSQL. The trial trains 6 epochs of
``fault_family:EpochFamily`` on 200 digits; each epoch's start is recorded with its trial
process's id, and epoch 4, once reported and checkpointed, waits at its end until the test has
killed its worker with SIGKILL (or stopped it with SIGTERM: the trial is requeued at once).
The family forgets all it learned when epoch 3 begins, so the trial's best epoch (1 or 2)
comes before the checkpoint: the retry keeps it from the checkpoint's best-epoch weights.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from hpo.storage import open_storage
from hpo.tracking.artifacts import CHECKPOINT_BEST_FILES, CHECKPOINT_FILE, PREDICTIONS_FILE

from conftest import FAULT_FAMILY_ENV, hpo
from services import wait_for

pytestmark = pytest.mark.slow

SPACE = """
family: fault_family:EpochFamily
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 6, checkpoint_interval: 0}
defaults: {algorithm: optuna-random, pruner: median}
params:
  mode: forget
  forget_epoch: 3
  learning_rate: 0.05
  hold_epoch: 4
  x: {type: float, low: 0.0, high: 1.0}
"""


def _epochs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_trial_killed_in_epoch_4_resumes_and_trains_only_epochs_5_and_6(
    tmp_path: Path, storage_url: str, mlflow_server: Any, start_workers: Any
) -> None:
    _interrupt_and_resume(tmp_path, storage_url, mlflow_server, start_workers, signal.SIGKILL)


def test_a_trial_stopped_by_sigterm_in_epoch_4_resumes_from_its_checkpoint(
    tmp_path: Path, postgres_url: str, mlflow_server: Any, start_workers: Any
) -> None:
    _interrupt_and_resume(tmp_path, postgres_url, mlflow_server, start_workers, signal.SIGTERM)


def _interrupt_and_resume(
    tmp_path: Path, storage_url: str, mlflow_server: Any, start_workers: Any, how: int
) -> None:
    """Interrupt the trial's worker with ``how`` while epoch 4 of 6 waits at its end; a second
    worker retries the trial, which must train epochs 5 and 6 alone."""
    name = f"resume-{tmp_path.name[-12:]}".replace("_", "-")
    epochs_file, hold = tmp_path / "epochs.jsonl", tmp_path / "hold"
    hold.touch()
    env = {
        **FAULT_FAMILY_ENV,
        "HPO_OUTBOX_DIR": str(tmp_path / "outbox"),
        "HPO_TEST_EPOCHS": str(epochs_file),
        "HPO_TEST_HOLD": str(hold),
    }
    (tmp_path / "space.yaml").write_text(SPACE)
    created = hpo(
        "study", "create", "space.yaml", "--study", name, "--trials", "1",
        "--max-retries", "2", "--storage", storage_url, "--tracking-uri", mlflow_server.url,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    args = ["--study", name, "--threads", "1", "--heartbeat", "1", "--grace-period", "4"]
    args += ["--stop-grace", "1"]
    run = {"storage": storage_url, "tracking_uri": mlflow_server.url, "args": args, "env": env}
    victim = start_workers(1, **run)
    wait_for(
        lambda: any(e.get("held") == 4 for e in _epochs(epochs_file)),
        300,
        "the trial to wait at the end of epoch 4",
        alive=victim.procs,
        logs=lambda: "\n".join(p.read_text()[-3000:] for p in victim.logs),
    )
    [killed_pid] = {e["pid"] for e in _epochs(epochs_file)}
    os.kill(victim.procs[0].pid, how)
    victim.procs[0].wait(timeout=60)
    if how == signal.SIGTERM:
        assert victim.procs[0].returncode == 0  # it failed and requeued the trial itself
    hold.unlink()  # a retry that trained from epoch 0 would end epoch 4 again
    survivor = start_workers(1, **run)
    assert survivor.wait(timeout=600) == [0], "\n".join(p.read_text() for p in survivor.logs)

    records = [e for e in _epochs(epochs_file) if "epoch" in e]
    assert [e["epoch"] for e in records if e["pid"] == killed_pid] == [1, 2, 3, 4]
    assert [e["epoch"] for e in records if e["pid"] != killed_pid] == [5, 6]

    store = open_storage(storage_url)
    trials = optuna.load_study(study_name=name, storage=store).get_trials()
    [failed] = [t for t in trials if t.state == TrialState.FAIL]
    reason = "heartbeat" if how == signal.SIGKILL else "stopped (SIGTERM/SIGINT)"
    assert reason in failed.user_attrs["fail_reason"]
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == failed.params
    assert retry.user_attrs["resumed_from_epoch"] == 4
    assert retry.user_attrs["epochs"] == 6
    # One curve, each epoch once: the checkpoint's four values, then epochs 5 and 6.
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4, 5, 6]
    assert sorted(failed.intermediate_values) == [1, 2, 3, 4]
    for epoch in (1, 2, 3, 4):
        assert retry.intermediate_values[epoch] == failed.intermediate_values[epoch]
    # The best epoch came before the checkpoint: its weights came back through it.
    values = retry.intermediate_values
    best = max(values, key=lambda epoch: (values[epoch], -epoch))
    assert best <= 2 and values[best] > values[6] + 0.2, values
    assert retry.values == [values[best]] and retry.user_attrs["kept_epoch"] == best

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = {
        r.info.run_id: r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("hpo.kind") == "trial"
    }
    failed_run, retry_run = failed.user_attrs["mlflow_run_id"], retry.user_attrs["mlflow_run_id"]
    assert set(runs) == {failed_run, retry_run}
    assert runs[failed_run].info.status == "FAILED"
    assert runs[retry_run].info.status == "FINISHED"
    assert runs[retry_run].data.tags["hpo.resumed_from_run"] == failed_run
    stored = {f.path for f in client.list_artifacts(failed_run)}
    assert CHECKPOINT_FILE in stored and stored & set(CHECKPOINT_BEST_FILES)
    with np.load(
        client.download_artifacts(retry_run, PREDICTIONS_FILE, str(tmp_path / "retry"))
    ) as predictions:
        kept = np.argmax(predictions["validation"], axis=-1) == predictions["validation_true"]
    assert float(np.mean(kept)) == pytest.approx(values[best])
    curve = client.get_metric_history(retry_run, "val_accuracy")
    assert sorted(m.step for m in curve) == [1, 2, 3, 4, 5, 6]
    assert {m.step: m.value for m in curve} == pytest.approx(retry.intermediate_values)
    assert len(client.get_metric_history(retry_run, "final_val_accuracy")) == 1
    assert client.get_metric_history(failed_run, "final_val_accuracy") == []
