"""Studies through a real MLflow tracking server over HTTP, as docker-compose.yml runs them.

The server (``tests/services.py``) keeps runs in PostgreSQL and serves the artifacts itself;
the study store is PostgreSQL too. Every check goes through ``MlflowClient`` on the server's
URL, so artifacts are downloaded through the server, as a person or a program elsewhere would.
"""

from __future__ import annotations

import configparser
import json
import time
import urllib.request
import zipfile
from base64 import b64encode
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient

from hpo.storage import open_storage
from hpo.tracking.mlflow_app import remember_training_script

from conftest import REPO, hpo
from services import (
    DIGITS_SPACE,
    SERVED_TRIALS,
    MlflowServer,
    ServedStudy,
    StartWorkers,
    fresh_database,
    http_status,
    started,
)

pytest_plugins = ["services"]
pytestmark = pytest.mark.slow


def _study_runs(client: MlflowClient, name: str) -> tuple[str, list, list]:  # type: ignore[type-arg]
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("hpo.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("hpo.kind") == "trial"]
    assert len(parents) + len(trials) == len(runs), "runs that are neither study nor trial"
    return experiment.experiment_id, parents, trials


def test_a_study_runs_through_the_server_over_http(served_study: ServedStudy) -> None:
    server = served_study.server
    summary = served_study.summary
    assert summary["finished"] == SERVED_TRIALS and summary["running"] == 0, summary
    assert summary["tracking_uri"] == server.url

    client = MlflowClient(server.url)
    # One experiment for the study, holding all its runs. Other tests share this server and
    # add experiments of their own, so those are not counted; none of them may hold this
    # study's runs.
    experiments = client.search_experiments()
    assert [e.name for e in experiments].count(served_study.name) == 1, experiments
    others = [e.experiment_id for e in experiments if e.name != served_study.name]
    stray = client.search_runs(others, f"tags.`hpo.study` = '{served_study.name}'")
    assert not stray, [(r.info.experiment_id, r.info.run_name) for r in stray]
    experiment_id, parents, trials = _study_runs(client, served_study.name)
    assert len(parents) == 1 and len(trials) == SERVED_TRIALS
    parent = parents[0]
    assert parent.info.run_name == f"study {served_study.name}"
    assert parent.info.status == "FINISHED"
    assert sorted(int(r.data.tags["hpo.trial_number"]) for r in trials) == [0, 1, 2]

    # The median pruner starts after 5 trials: all 3 trials train their 2 epochs.
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["hpo.state"] == "COMPLETE", run.data.tags
        assert run.info.status == "FINISHED"
        for metric in ("val_accuracy", "val_loss", "accuracy", "loss"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == [1, 2], (metric, history)
        assert 0.0 <= run.data.metrics["val_accuracy"] <= 1.0

        # Artifacts go to the server (mlflow-artifacts:/), never to a local directory.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        listed = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"model.keras", "predictions.npz"} <= listed, listed
        local = Path(
            client.download_artifacts(run.info.run_id, "predictions.npz", str(served_study.workdir))
        )
        preds = np.load(local)
        assert preds["validation"].shape == (len(preds["validation_true"]), 10)
        np.testing.assert_allclose(preds["validation"].sum(axis=1), 1.0, atol=1e-4)
        assert "test" not in preds.files and len(preds["test_true"]) > 0
        model = Path(
            client.download_artifacts(run.info.run_id, "model.keras", str(served_study.workdir))
        )
        with zipfile.ZipFile(model) as archive:  # a .keras file is a zip with the model config
            assert "config.json" in archive.namelist()
        stored = server.artifacts_dir / experiment_id / run.info.run_id / "artifacts"
        assert (stored / "model.keras").is_file(), sorted(server.artifacts_dir.rglob("*"))

    runs = client.search_runs([experiment_id], max_results=1000)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    assert not (served_study.workdir / "mlruns").exists()
    assert not (served_study.workdir / "mlflow.db").exists()


def test_hpo_run_json_is_only_json_with_a_tracking_server(served_study: ServedStudy) -> None:
    """``--json`` output stays parseable when MLflow is a server (MLflow prints run links)."""
    assert json.loads(served_study.stdout) == served_study.summary, served_study.stdout[:2000]


def test_the_server_comes_back_on_the_same_port_with_its_runs(served_study: ServedStudy) -> None:
    server = served_study.server
    client = MlflowClient(server.url)
    _, _, before = _study_runs(client, served_study.name)
    port = server.port

    server.stop()
    assert http_status(f"{server.url}/health", timeout=2.0) == 0
    started(server)

    assert server.port == port and server.running
    _, _, after = _study_runs(MlflowClient(server.url), served_study.name)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)
    first = after[0]
    local = MlflowClient(server.url).download_artifacts(
        first.info.run_id, "predictions.npz", str(served_study.workdir / "after-restart")
    )
    assert Path(local).stat().st_size > 0


def test_workers_started_like_compose_serve_a_study(
    tmp_path: Path, mlflow_server: MlflowServer, start_workers: StartWorkers
) -> None:
    """Plain ``hpo worker`` processes (compose's command) serve a study created afterwards."""
    name = "compose_workers"
    with fresh_database("hpo_compose") as storage:  # its own store: workers serve every study
        # compose's init-store first: processes that open an empty store together race to
        # create its tables.
        init = hpo("study", "list", cwd=tmp_path, env={"HPO_STORAGE": storage})
        assert init.returncode == 0, init.stderr
        workers = start_workers(2, storage=storage, args=["--threads", "1"])
        created = hpo(
            "study",
            "create",
            str(DIGITS_SPACE),
            "--name",
            name,
            "--trials",
            "2",
            "--seed",
            "0",
            cwd=tmp_path,
            env={"HPO_STORAGE": storage, "MLFLOW_TRACKING_URI": mlflow_server.url},
        )
        assert created.returncode == 0, created.stderr

        store = open_storage(storage)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            trials = optuna.load_study(study_name=name, storage=store).get_trials()
            if sum(t.state.is_finished() for t in trials) >= 2:
                break
            assert all(p.poll() is None for p in workers.procs), workers.log_text()
            time.sleep(1.0)
        else:
            pytest.fail("the workers did not finish 2 trials in 300 s\n" + workers.log_text())
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], workers.log_text()
        store.engine.dispose()

        # `docker compose stop`: SIGTERM, and every worker is gone within stop_grace_period.
        codes = workers.stop(grace=30.0)
        assert codes == [0, 0], workers.log_text()

    client = MlflowClient(mlflow_server.url)
    _, parents, runs = _study_runs(client, name)
    # Workers that wait for work claim a new study's first trials at once: those must be
    # logged too (the study's MLflow run has to exist before workers can see the study).
    assert len(parents) == 1 and len(runs) == 2, "trials missing in MLflow"
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}


def test_basic_auth_of_the_compose_file_guards_the_server(tmp_path: Path) -> None:
    """docker-compose.yml's basic auth on a real server: a login is needed, /health is not."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mlflow = compose["services"]["mlflow"]
    command = mlflow["command"]
    app_name = command[command.index("--app-name") + 1]
    env_names = {name for name in mlflow["environment"] if "AUTH" in name or "FLASK" in name}
    assert env_names == {
        "MLFLOW_AUTH_CONFIG_PATH",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    }

    # The compose file's auth config, with its user database moved out of the container path.
    config = configparser.ConfigParser()
    config.read(REPO / "deploy" / "mlflow-basic-auth.ini")
    config["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'basic_auth.db'}"
    ini = tmp_path / "basic_auth.ini"
    with open(ini, "w") as f:
        config.write(f)
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "test-admin-password",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
    }
    server = MlflowServer(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        tmp_path / "server",
        app_name=app_name,
        env=env,
    )
    started(server)
    try:
        api = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
        login = b64encode(b"admin:test-admin-password").decode()
        wrong = b64encode(b"admin:wrong").decode()
        # Generous timeouts: checking a password is deliberately slow (PBKDF2).
        assert http_status(f"{server.url}/health", timeout=60) == 200
        assert http_status(api, timeout=60) == 401
        assert http_status(api, timeout=60, headers={"Authorization": f"Basic {wrong}"}) == 401
        assert http_status(api, timeout=60, headers={"Authorization": f"Basic {login}"}) == 200
        # hpo's app: the UI page (behind the login too) opens experiments on their runs.
        page = urllib.request.Request(f"{server.url}/", headers={"Authorization": f"Basic {login}"})
        with urllib.request.urlopen(page, timeout=60) as response:
            assert remember_training_script() in response.read().decode()
        assert http_status(f"{server.url}/", timeout=60) == 401
    finally:
        server.stop()
