"""A worker's trial processes: started ahead of the first claim, replaced ahead of need, and
used to end the study's MLflow run; real `hpo worker` processes and real trial processes.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from mlflow import MlflowClient

from hpo.workers.tasks import FinalizeTask

from conftest import FAST_SPACE, FAULT_FAMILY_ENV, hpo

pytestmark = pytest.mark.slow


def test_a_process_started_ahead_and_never_used_is_killed_and_finalizes_nothing() -> None:
    from hpo.workers.worker import TrialProcess

    process = TrialProcess(threads=1)
    process.start()
    child = process._proc
    assert child is not None and child.is_alive()
    process.start()  # already running: the same process
    assert process._proc is child
    # It has run no trial, so it has nothing loaded that the worker lacks: the worker ends
    # the study itself.
    assert process.finalize(FinalizeTask("sqlite://", "{}")) == (
        "no trial process that has run a trial"
    )
    process.close()
    assert child.exitcode == -signal.SIGKILL  # not waited for: it had nothing to finish
    assert process._proc is None


def _study(tmp_path: Path, name: str, trials: int, space: str) -> dict[str, str]:
    (tmp_path / f"{name}.yaml").write_text(space)
    env = {**FAULT_FAMILY_ENV, "HPO_TEST_RECORD": str(tmp_path / "builds.jsonl")}
    created = hpo(
        "study", "create", f"{name}.yaml", "--name", name, "--trials", str(trials),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    return env


def _study_run(tmp_path: Path, name: str) -> object:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.kind` = 'study'")
    assert len(runs) == 1
    run = runs[0]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    return run.info.status, files


def test_spent_processes_are_replaced_and_the_last_one_ends_the_study(tmp_path: Path) -> None:
    env = _study(tmp_path, "replaced", 3, FAST_SPACE)
    worker = hpo(
        "worker", "--study", "replaced", "--threads", "1", "--max-trials-per-process", "2",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr[-3000:]
    builds = [json.loads(line) for line in (tmp_path / "builds.jsonl").read_text().splitlines()]
    pids = [b["pid"] for b in builds]
    assert len(pids) == 3 and pids[0] == pids[1] != pids[2]  # two trials, then a new process
    # The imports' objects are frozen out of the collector's way, and the one collection after
    # a trial still frees its model.
    assert all(b["frozen"] > 0 for b in builds)
    assert [b["earlier_models_alive"] for b in builds] == [0, 0, 0]
    # Nor does TensorFlow keep the first trial's traced train, test and predict steps (its
    # gradient registry held every train step: hpo.workers.runner drops what a trial registered).
    assert builds[1]["graphs_alive"] == builds[0]["graphs_alive"], builds
    status, files = _study_run(tmp_path, "replaced")
    assert status == "FINISHED"
    assert {"best_trial.json", "optimization_history.png"} <= files  # type: ignore[operator]
    # The trial process that ran the last trial drew the plots; the worker did not have to.
    assert "here:" not in worker.stderr


def test_when_the_last_trial_kills_its_process_the_worker_ends_the_study(
    tmp_path: Path,
) -> None:
    env = _study(tmp_path, "killed", 1, FAST_SPACE.replace("mode: ok", "mode: kill"))
    worker = hpo("worker", "--study", "killed", "--threads", "1", cwd=tmp_path, env=env)
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert "killed by SIGKILL" in worker.stderr
    assert "finalizing study killed here: no trial process that has run a trial" in (worker.stderr)
    status, files = _study_run(tmp_path, "killed")
    assert status == "FINISHED" and "best_trial.json" not in files  # type: ignore[operator]
