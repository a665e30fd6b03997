"""MLflow tracking: one experiment per study, a parent run for the study, a child run per trial.

Only :class:`mlflow.MlflowClient` with explicit run ids is used, never the fluent "active run"
globals, which break with several trials per process and with threads.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

TRACKING_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_TRACKING_FILE = "mlflow.db"
# MLflow run statuses by final Optuna trial state.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the working directory."""
    uri = uri or os.environ.get(TRACKING_ENV)
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_TRACKING_FILE}"


def client(uri: str) -> MlflowClient:
    import logging

    from mlflow import MlflowClient

    # MLflow's database set-up messages are noise in a worker's log.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params as strings, by flat path name (conditional paths included)."""
    out = {}
    for k, v in params.items():
        text = json.dumps(v) if not isinstance(v, str) else v
        out[k] = text[:MAX_PARAM_LENGTH]
    return out


def start_study_run(
    uri: str, study_name: str, tags: Mapping[str, str], params: Mapping[str, Any]
) -> tuple[str, str]:
    """Create (or reuse) the study's experiment and start its parent run.

    Returns ``(experiment_id, parent_run_id)``.
    """
    c = client(uri)
    experiment = c.get_experiment_by_name(study_name)
    if experiment is None:
        experiment_id = c.create_experiment(study_name, tags={"hpo.study": study_name})
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            c.restore_experiment(experiment_id)
    run = c.create_run(
        experiment_id,
        run_name=f"study {study_name}",
        tags={"hpo.study": study_name, "hpo.kind": "study", **tags},
    )
    log_params(c, run.info.run_id, params)
    return experiment_id, run.info.run_id


def log_params(c: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in flatten_params(params).items()]
    for i in range(0, len(items), 100):  # MLflow's batch limit
        c.log_batch(run_id, params=items[i : i + 100])


def log_metrics(c: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log finite metrics at ``step``; non-finite values are skipped (MLflow rejects NaN)."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if v is not None and math.isfinite(float(v))
    ]
    if items:
        c.log_batch(run_id, metrics=items)


def start_trial_run(
    c: MlflowClient,
    experiment_id: str,
    parent_run_id: str | None,
    study_name: str,
    trial_number: int,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
) -> str:
    """Start a trial's child run under the study run; returns its run id."""
    run_tags = {
        "hpo.study": study_name,
        "hpo.kind": "trial",
        "hpo.trial_number": str(trial_number),
        "hpo.state": "RUNNING",
        **tags,
    }
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id, run_name=f"trial {trial_number}", tags=run_tags)
    log_params(c, run.info.run_id, params)
    return str(run.info.run_id)


def end_trial_run(c: MlflowClient, run_id: str, state: str, reason: str | None = None) -> None:
    """End a trial's run with the status matching its Optuna ``state``."""
    c.set_tag(run_id, "hpo.state", state)
    if reason:
        c.set_tag(run_id, "hpo.fail_reason", reason[:5000])
    c.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))


def log_artifact_files(c: MlflowClient, run_id: str, files: Mapping[str, Path | bytes]) -> None:
    """Log files (paths or bytes) under the names given, flat in the run's artifact root."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            if isinstance(content, bytes):
                path = Path(tmp) / Path(name).name
                path.write_bytes(content)
            else:
                path = Path(content)
            c.log_artifact(run_id, str(path))


def end_dangling_runs(uri: str, experiment_id: str, parent_run_id: str | None) -> int:
    """End every run of the study still RUNNING (a trial process that died); returns how many."""
    c = client(uri)
    runs = c.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000
    )
    n = 0
    for run in runs:
        if run.info.run_id == parent_run_id:
            continue
        c.set_tag(run.info.run_id, "hpo.state", "FAIL")
        c.set_tag(
            run.info.run_id, "hpo.fail_reason", "the trial's process ended without closing its run"
        )
        c.set_terminated(run.info.run_id, "FAILED")
        n += 1
    return n
