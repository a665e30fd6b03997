"""docker-compose.yml's PostgreSQL roles against a real PostgreSQL, with real processes.

deploy/postgres-init's script runs as the postgres image would run it; then the services run
as the roles compose gives them: ``hpo study list`` as the study store's owner (init-store),
``hpo study create`` and a real ``hpo worker`` as the DML-only worker role, the Optuna
dashboard as the read-only role, and an ``mlflow server`` with basic auth as the mlflow role,
which a worker signs in to with MLFLOW_TRACKING_USERNAME/PASSWORD. The local test server
trusts its clients, so the passwords themselves are not checked here; the grants are.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo.storage import open_storage

from conftest import FAST_SPACE, FAULT_FAMILY_ENV, REPO, hpo
from services import (
    ComposeRoles,
    MlflowServer,
    StartWorkers,
    compose_roles,
    http_status,
    optuna_dashboard,
    started,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def roles() -> Iterator[ComposeRoles]:
    with compose_roles() as made:
        yield made


def _env(storage: str, **extra: str) -> dict[str, str]:
    return {"HPO_STORAGE": storage, **FAULT_FAMILY_ENV, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _refused(url: str, statement: str) -> str:
    """The error PostgreSQL answers ``statement`` with, run as the user of ``url``."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
    except sa.exc.ProgrammingError as exc:
        return str(exc.orig)
    finally:
        engine.dispose()
    pytest.fail(f"{make_url(url).username} may run: {statement}")


def _init_and_create(
    roles: ComposeRoles, tmp_path: Path, name: str, tracking_uri: str, **login: str
) -> None:
    # init-store: the owner creates Optuna's tables.
    init = hpo("study", "list", cwd=tmp_path, env=_env(roles.owner))
    assert init.returncode == 0, init.stderr
    # `docker compose run --rm worker study create ...`: the worker role, rows only.
    space = tmp_path / f"{name}.yaml"
    space.write_text(FAST_SPACE)
    created = hpo(
        "study", "create", str(space), "--name", name, "--trials", "2",
        "--tracking-uri", tracking_uri,
        cwd=tmp_path, env=_env(roles.worker, **login),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr


def test_worker_role_runs_trials_but_no_ddl_and_the_dashboard_only_reads(
    roles: ComposeRoles, tmp_path: Path, start_workers: StartWorkers
) -> None:
    _init_and_create(roles, tmp_path, "roles", f"sqlite:///{tmp_path / 'mlflow.db'}")
    workers = start_workers(
        1, storage=roles.worker, args=["--study", "roles", "--threads", "1"], env=FAULT_FAMILY_ENV
    )
    assert workers.wait(timeout=400) == [0], workers.log_text()
    store = open_storage(roles.worker)
    try:
        trials = optuna.load_study(study_name="roles", storage=store).get_trials()
    finally:
        store.engine.dispose()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, workers.log_text()

    # The worker role (hence any study's family code) changes rows, never the schema.
    for statement in (
        "DROP TABLE trials",
        "TRUNCATE trials",
        "ALTER TABLE trials ADD COLUMN x int",
        "CREATE TABLE x (i int)",
        "CREATE TEMP TABLE x (i int)",
    ):
        error = _refused(roles.worker, statement)
        assert "permission denied" in error or "must be owner" in error, (statement, error)
    # Nor can it connect to MLflow's database.
    worker_role = make_url(roles.worker).username
    engine = sa.create_engine(
        make_url(roles.mlflow).set(username=worker_role).render_as_string(hide_password=False)
    )
    try:
        with pytest.raises(sa.exc.OperationalError, match="permission denied"):
            engine.connect().close()
    finally:
        engine.dispose()

    # The dashboard: reads the study, and its delete button fails (read-only role), with
    # the password from PGPASSWORD as in docker-compose.yml.
    dashboard_url = make_url(roles.dashboard)
    dashboard = optuna_dashboard(
        dashboard_url.set(password=None).render_as_string(hide_password=False),
        tmp_path / "dashboard",
        env={"PGPASSWORD": dashboard_url.password or ""},
    )
    started(dashboard)
    try:
        base = dashboard.health_url.removesuffix("/api/meta")
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as response:
            studies = json.load(response)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["roles"]
        request = urllib.request.Request(
            f"{base}/api/studies/{studies[0]['study_id']}", method="DELETE"
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=30)
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as response:
            assert len(json.load(response)["study_summaries"]) == 1
    finally:
        dashboard.stop()
    assert "permission denied" in _refused(roles.dashboard, "DELETE FROM trial_values")


def test_mlflow_role_serves_basic_auth_and_workers_sign_in(
    roles: ComposeRoles,
    tmp_path: Path,
    start_workers: StartWorkers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    command = compose["services"]["mlflow"]["command"]
    app_name = command[command.index("--app-name") + 1]
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(
        (REPO / "deploy" / "mlflow-basic-auth.ini")
        .read_text()
        .replace("sqlite:////mlflow/auth/basic_auth.db", f"sqlite:///{tmp_path / 'auth.db'}")
    )
    mlflow_url = make_url(roles.mlflow)
    # As in docker-compose.yml: the role in the URL, its password in PGPASSWORD.
    server = MlflowServer(
        mlflow_url.set(password=None).render_as_string(hide_password=False),
        tmp_path / "server",
        app_name=app_name,
        env={
            "PGPASSWORD": mlflow_url.password or "",
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
            "MLFLOW_AUTH_ADMIN_PASSWORD": "test-admin-password",
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
        },
    )
    started(server)  # its migrations ran as the mlflow role
    try:
        api = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert http_status(api, timeout=60) == 401
        login = {
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": "test-admin-password",
        }
        # `docker compose run --rm worker study create ...` has the worker's login too.
        _init_and_create(roles, tmp_path, "signed_in", server.url, **login)
        workers = start_workers(
            1,
            storage=roles.worker,
            tracking_uri=server.url,
            args=["--study", "signed_in", "--threads", "1"],
            env={**FAULT_FAMILY_ENV, **login},
        )
        assert workers.wait(timeout=400) == [0], workers.log_text()
        for name, value in login.items():
            monkeypatch.setenv(name, value)
        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name("signed_in")
        assert experiment is not None, workers.log_text()
        runs = client.search_runs([experiment.experiment_id])
        trials = [r for r in runs if r.data.tags.get("hpo.kind") == "trial"]
        assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    finally:
        server.stop()
