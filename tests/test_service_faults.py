"""Faults of the whole service, with every part real: PostgreSQL restarted under running
workers, the MLflow server down for 30 s in the middle of a study, and the Model Registry
unreachable while an ensemble is built.

The workers are real ``hpo worker`` subprocesses (``tests/services.py``); trials train a tiny
real Keras model on digits (``fault_family``), and sleep a little first so that faults land
while trials are in flight. Every check reads the real stores back: the Optuna store in
PostgreSQL and the runs through the MLflow server's REST API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from hpo.storage import open_storage
from hpo.storage.studies import counted_trials
from hpo.tracking._outbox import Outbox, is_placeholder

from conftest import FAULT_FAMILY_ENV, SLOW_SPACE, hpo
from services import (
    SERVED_TRIALS,
    MlflowServer,
    ServedStudy,
    StartWorkers,
    WorkerGroup,
    ensure_postgres_up,
    forget_ensemble,
    forget_experiment,
    postgres_cluster,
    restart_postgres,
    started,
    wait_for,
)

pytest_plugins = ["services"]
pytestmark = pytest.mark.slow


def _create(
    tmp_path: Path, storage: str, tracking_uri: str, name: str, trials: int, seconds: float
) -> None:
    space = tmp_path / f"{name}.yaml"
    # Each trial sleeps SECONDS before one epoch on 200 digits: about SECONDS + 0.5 s once its
    # trial process is warm.
    space.write_text(SLOW_SPACE.replace("SECONDS", str(seconds)))
    result = hpo(
        "study",
        "create",
        str(space),
        "--name",
        name,
        "--trials",
        str(trials),
        "--seed",
        "0",
        cwd=tmp_path,
        env={
            "HPO_STORAGE": storage,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "HPO_OUTBOX_DIR": str(tmp_path / "outbox"),
            **FAULT_FAMILY_ENV,
        },
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def trials_of(postgres_url: str) -> Iterator[Callable[[str], list[FrozenTrial]]]:
    """``trials_of(name)``: the study's trials, read through one pooled store."""
    store = open_storage(postgres_url)

    def read(name: str) -> list[FrozenTrial]:
        return optuna.load_study(study_name=name, storage=store).get_trials()

    yield read
    store.engine.dispose()


def _wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, workers: WorkerGroup
) -> None:
    wait_for(predicate, timeout, what, alive=workers.procs, logs=workers.log_text)


def _trial_runs(client: MlflowClient, name: str) -> tuple[list, list]:  # type: ignore[type-arg]
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    study_runs = [r for r in runs if r.data.tags.get("hpo.kind") == "study"]
    trial_runs = [r for r in runs if r.data.tags.get("hpo.kind") == "trial"]
    assert len(study_runs) + len(trial_runs) == len(runs), "runs that are neither study nor trial"
    return study_runs, trial_runs


def _sync(tmp_path: Path, uri: str) -> dict[str, object]:
    """``hpo sync`` of the test's outbox: nothing may stay pending or be dropped."""
    result = hpo(
        "sync",
        "--tracking-uri",
        uri,
        "--json",
        cwd=tmp_path,
        env={"HPO_OUTBOX_DIR": str(tmp_path / "outbox")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [synced] = json.loads(result.stdout)["outboxes"]
    assert synced["pending"] == 0 and synced["dropped"] == [], synced
    assert not (Path(synced["outbox"]) / "dropped.jsonl").exists()
    return dict(synced)


def _check_every_trial_has_one_finished_run(
    client: MlflowClient, uri: str, name: str, trials: list[FrozenTrial], n: int
) -> None:
    """Exactly ``n`` COMPLETE trials, numbered uniquely, each with one FINISHED MLflow run."""
    from hpo import tracking

    counted = counted_trials(trials)
    assert len(counted) == n, [(t.number, t.state.name) for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in counted), [
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in counted
    ]
    assert len({t.number for t in counted}) == n
    assert not [t for t in trials if not t.state.is_finished()]
    study_runs, runs = _trial_runs(client, name)
    assert len(study_runs) == 1 and study_runs[0].info.status == "FINISHED"
    ran = [t for t in trials if "mlflow_run_id" in t.user_attrs]
    numbers = sorted(int(r.data.tags["hpo.trial_number"]) for r in runs)
    assert numbers == sorted(t.number for t in ran), "a trial without its run, or two runs"
    by_id = {r.info.run_id: r for r in runs}
    for t in counted:
        run = by_id[tracking.resolve_run_id(uri, t.user_attrs["mlflow_run_id"])]
        assert run.info.status == "FINISHED", (t.number, run.info.status)
        assert run.data.tags["hpo.state"] == "COMPLETE"
        assert run.data.tags["mlflow.parentRunId"] == study_runs[0].info.run_id
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]


def _study_through_faults(
    tmp_path: Path,
    postgres_url: str,
    mlflow_server: MlflowServer,
    start_workers: StartWorkers,
    trials_of: Callable[[str], list[FrozenTrial]],
    name: str,
    rounds: tuple[int, ...],
    fault: Callable[[], None],
) -> None:
    """Six 1-second trials on two workers; ``fault()`` once per round, when that many trials
    have finished and one runs; then the exact budget, unique trials, one FINISHED MLflow run
    per trial (after ``hpo sync`` of the workers' outbox)."""
    n = 6
    _create(tmp_path, postgres_url, mlflow_server.url, name, n, seconds=1.0)
    workers = start_workers(
        2,
        storage=postgres_url,
        tracking_uri=mlflow_server.url,
        # A trial orphaned by the fault is requeued after the grace period: keep it short.
        args=["--study", name, "--threads", "1", "--heartbeat", "2", "--grace-period", "15"],
        env=FAULT_FAMILY_ENV,
    )
    for finished in rounds:  # while trials are in flight, early and late
        _wait_for(
            lambda f=finished: (
                sum(t.state.is_finished() for t in trials_of(name)) >= f
                and any(t.state == TrialState.RUNNING for t in trials_of(name))
            ),
            300,
            f"{finished} finished trial(s) and one running",
            workers,
        )
        fault()
    try:
        codes = workers.wait(timeout=300)
    except Exception:
        pytest.fail("the workers did not finish after the faults\n" + workers.log_text())
    assert codes == [0, 0], workers.log_text()
    try:
        _sync(tmp_path, mlflow_server.url)  # anything the MLflow server failed in a fault
        _check_every_trial_has_one_finished_run(
            MlflowClient(mlflow_server.url), mlflow_server.url, name, trials_of(name), n
        )
    finally:
        forget_experiment(mlflow_server, name)  # the shared server as other tests expect it


def test_postgresql_restart_mid_study_loses_and_duplicates_nothing(
    tmp_path: Path,
    postgres_url: str,
    mlflow_server: MlflowServer,
    start_workers: StartWorkers,
    trials_of: Callable[[str], list[FrozenTrial]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two restarts of the real server while two workers run trials; the MLflow server, whose
    own store is in the same PostgreSQL, goes through them too."""
    cluster = postgres_cluster()
    monkeypatch.setenv("HPO_OUTBOX_DIR", str(tmp_path / "outbox"))  # the workers' outbox
    outages: list[float] = []
    try:
        _study_through_faults(
            tmp_path,
            postgres_url,
            mlflow_server,
            start_workers,
            trials_of,
            "pg_restart",
            (1, 3),  # once early, once later
            lambda: outages.append(restart_postgres(cluster)),
        )
    finally:
        ensure_postgres_up(cluster)
    assert len(outages) == 2 and all(s > 0 for s in outages)


def test_cut_database_connections_lose_and_duplicate_nothing(
    tmp_path: Path,
    postgres_url: str,
    mlflow_server: MlflowServer,
    start_workers: StartWorkers,
    trials_of: Callable[[str], list[FrozenTrial]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every connection of the workers, their trial processes and the MLflow server (whose
    store is in the same PostgreSQL) cut with ``pg_terminate_backend``, three times while
    trials run: the exact budget, unique trials, one ended MLflow run per trial."""
    import sqlalchemy as sa

    monkeypatch.setenv("HPO_OUTBOX_DIR", str(tmp_path / "outbox"))
    databases = [
        url.rsplit("/", 1)[1].split("?")[0]
        for url in (postgres_url, mlflow_server.backend_store_uri)
    ]
    admin = sa.create_engine(postgres_url.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")
    cuts: list[int] = []

    def cut() -> None:
        with admin.connect() as conn:
            cuts.append(
                conn.execute(
                    sa.text(
                        "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                        "where datname = any(:d) and pid <> pg_backend_pid()"
                    ),
                    {"d": databases},
                ).scalar_one()
            )

    try:
        _study_through_faults(
            tmp_path,
            postgres_url,
            mlflow_server,
            start_workers,
            trials_of,
            "pg_cuts",
            (1, 2, 4),
            cut,
        )
    finally:
        admin.dispose()
    # Each round cut something: the workers hold connections while they run.
    assert len(cuts) == 3 and all(c > 0 for c in cuts), cuts


OUTAGE_S = 30.0


def test_mlflow_server_down_30_s_mid_study_every_trial_reaches_mlflow(
    tmp_path: Path,
    postgres_url: str,
    mlflow_server: MlflowServer,
    start_workers: StartWorkers,
    trials_of: Callable[[str], list[FrozenTrial]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server is stopped while a trial trains and started again 30 s later: trials that
    started and ended in the outage reach MLflow complete (params, metrics, artifacts, ended)."""
    name, n = "mlflow_outage", 10
    uri = mlflow_server.url
    monkeypatch.setenv("HPO_OUTBOX_DIR", str(tmp_path / "outbox"))  # the worker's outbox
    _create(tmp_path, postgres_url, uri, name, n, seconds=1.0)
    workers = start_workers(
        1,
        storage=postgres_url,
        tracking_uri=uri,
        args=["--study", name, "--threads", "1"],
        env=FAULT_FAMILY_ENV,
    )

    def finished() -> int:
        return sum(t.state.is_finished() for t in trials_of(name))

    _wait_for(
        lambda: finished() >= 1 and any(t.state == TrialState.RUNNING for t in trials_of(name)),
        300,
        "a finished trial and a running one",
        workers,
    )
    mlflow_server.stop()
    down_at, before = time.monotonic(), finished()
    try:
        time.sleep(OUTAGE_S)
        # On a slow machine, longer: at least one trial must start and end in the outage.
        _wait_for(lambda: finished() - before >= 2, 300, "2 trials ended in the outage", workers)
    finally:
        started(mlflow_server)  # the session's server: always back up for the other tests
    try:
        assert workers.wait(timeout=300) == [0], workers.log_text()
    except Exception:
        pytest.fail("the worker did not finish the study\n" + workers.log_text())
    assert time.monotonic() - down_at > OUTAGE_S

    try:
        trials = trials_of(name)
        queued = [t.number for t in trials if is_placeholder(t.user_attrs.get("mlflow_run_id"))]
        assert queued, "no trial run was created during the outage"
        _sync(tmp_path, uri)  # usually nothing left: the worker replays after each trial
        outbox = Outbox(uri, tmp_path / "outbox")
        outbox.refresh()
        assert not outbox.has_pending()

        client = MlflowClient(uri)
        _check_every_trial_has_one_finished_run(client, uri, name, trials, n)
        _, runs = _trial_runs(client, name)
        for run in runs:
            assert {"mode", "x"} <= set(run.data.params), run.data.params
            history = client.get_metric_history(run.info.run_id, "val_accuracy")
            assert [m.step for m in history] == [1], history
            assert "final_val_accuracy" in run.data.metrics
            listed = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"model.keras", "predictions.npz"} <= listed, (run.data.tags, listed)
    finally:
        forget_experiment(mlflow_server, name)


def test_ensemble_registration_fails_clearly_and_loses_nothing_when_the_server_is_down(
    served_study: ServedStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry has no outbox: a build fails (exit 1) rather than pretend it registered.

    The real server is stopped at the worst moment, right as the version is being created
    (in-process build, so the test can pick that moment), and then a CLI build runs while it is
    down. Back up, after ``hpo sync``: no version exists, the one ensemble run is FAILED.
    """
    import mlflow

    from hpo.ensemble import RegistryUnavailableError, build_ensemble

    server, name = served_study.server, "served-down-ens"
    uri = server.url
    monkeypatch.setenv("HPO_OUTBOX_DIR", str(tmp_path / "outbox"))
    register = mlflow.MlflowClient.create_model_version

    def stop_server_then_register(self: mlflow.MlflowClient, *args: object, **kw: object) -> object:
        server.stop()
        return register(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", stop_server_then_register)
    try:
        with pytest.raises(RegistryUnavailableError, match="no version of 'served-down-ens'"):
            build_ensemble(
                [served_study.name],
                name,
                top=SERVED_TRIALS,
                size=3,
                storage=served_study.storage,
                tracking_uri=uri,
            )
        monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", register)
        assert not server.running

        began = time.monotonic()
        down = hpo(
            "ensemble",
            "build",
            served_study.name,
            "--name",
            name,
            "--storage",
            served_study.storage,
            "--tracking-uri",
            uri,
            cwd=tmp_path,
            env={"HPO_OUTBOX_DIR": str(tmp_path / "outbox")},
        )
        assert down.returncode == 1, down.stdout + down.stderr
        message = " ".join(down.stderr.split())  # as one line, however the console wrapped it
        assert "does not answer" in message and "nothing was built or registered" in message
        assert "Traceback" not in message
        assert time.monotonic() - began < 60  # refused before any work
    finally:
        started(server)

    try:
        _sync(tmp_path, uri)  # the FAILED end of the ensemble's run, if it waited in the outbox
        client = MlflowClient(uri)
        assert client.search_model_versions(f"name = '{name}'") == []
        experiment = client.get_experiment_by_name(served_study.name)
        assert experiment is not None
        [run] = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`hpo.ensemble.name` = '{name}'"
        )
        assert run.info.status == "FAILED"
        assert "stopped answering" in run.data.tags["hpo.fail_reason"]
        listed = hpo("ensemble", "list", "--tracking-uri", uri, "--json", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert name not in {e["name"] for e in json.loads(listed.stdout)}
    finally:
        forget_ensemble(server, served_study.name, name)  # the served study as it was
