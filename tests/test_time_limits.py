"""Time limits: a trial's (``budget.trial_timeout``, ``--trial-timeout``) and a study's
(``budget.study_timeout``, ``--study-timeout``, with ``--study-timeout-grace``).

The slow tests run real ``hpo`` commands and workers on a tiny real Keras model on digits
(``fault_family``); its ``hang`` mode sleeps for ever inside an epoch while the worker's
heartbeat goes on, so only the time limit can end such a trial.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow import MlflowClient
from optuna.trial import TrialState

import hpo
from hpo.api import StudyOptions
from hpo.api._setup import seconds_value
from hpo.errors import UsageError
from hpo.storage import open_storage
from hpo.storage.deadlines import DEADLINE_REASON, study_deadline
from hpo.storage.status import StudyStatus
from hpo.storage.studies import claim_trial
from hpo.workers._results import FINALIZED_ATTR

from conftest import FAULT_FAMILY_ENV
from conftest import hpo as run_hpo
from services import wait_for

# ``mode`` is searched so that each test queues the trials it needs (hpo study enqueue).
SPACE = """
family: fault_family:build
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: EPOCHS}
defaults: {algorithm: optuna-random, pruner: none}
params:
  mode: {type: categorical, choices: [ok, hang]}
  hang_epoch: EPOCHS
  x: {type: float, low: 0.0, high: 1.0}
"""


def _space(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.replace("EPOCHS", str(epochs)))
    return path


def _env(tmp_path: Path, storage: str) -> dict[str, str]:
    return {
        **FAULT_FAMILY_ENV,
        "HPO_STORAGE": storage,
        "HPO_TEST_HANGING": str(tmp_path / "hanging.txt"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _enqueue(name: str, modes: list[str], cwd: Path, env: dict[str, str]) -> None:
    params = [
        arg
        for i, mode in enumerate(modes)
        for arg in ("--params", json.dumps({"mode": mode, "x": i / 10}))
    ]
    done = run_hpo("study", "enqueue", name, *params, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def _hung_pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "hanging.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _seconds(trial: optuna.trial.FrozenTrial) -> float:
    assert trial.datetime_start is not None and trial.datetime_complete is not None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


# -- the trial's limit ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_hanging_trial_is_stopped_at_its_timeout_and_the_next_trial_runs(
    tmp_path: Path, workdir: Path
) -> None:
    # From when the trial process takes the trial (its start-up is not counted): long enough
    # for an ok trial (one epoch on 200 digits) on a busy machine.
    timeout = 20
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    env = _env(tmp_path, storage)
    space = _space(tmp_path, 1)
    created = run_hpo(
        "study", "create", str(space), "--study", "tt", "--trials", "3",
        "--trial-timeout", str(timeout), cwd=workdir, env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    _enqueue("tt", ["ok", "hang", "ok"], workdir, env)

    ran = run_hpo("run", str(space), "--study", "tt", "--resume", cwd=workdir, env=env)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    first, hung, after = _trials(storage, "tt")
    assert [t.params["mode"] for t in (first, hung, after)] == ["ok", "hang", "ok"]
    assert first.state == TrialState.COMPLETE and after.state == TrialState.COMPLETE
    assert hung.state == TrialState.FAIL
    assert hung.user_attrs["fail_reason"] == f"timed out after {timeout} s"
    # Stopped at its limit (the worker looks twice a second), not by anything else.
    assert timeout <= _seconds(hung) < timeout + 15
    # Its process was killed (it hung for ever), and the slot went on with a new one.
    [pid] = _hung_pids(tmp_path)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert hung.datetime_complete is not None and after.datetime_start is not None
    assert after.datetime_start >= hung.datetime_complete
    assert f"timed out after {timeout} s" in ran.stdout
    study = hpo.load_study("tt", storage)
    assert study.status().done and study.status().end_reason == "trial budget used"
    client = MlflowClient(study.config.tracking_uri)
    run = client.get_run(hung.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["hpo.fail_reason"] == f"timed out after {timeout} s"
    assert client.get_run(study.config.parent_run_id).info.status == "FINISHED"


# -- the study's limit ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_study_ends_at_its_deadline_and_grace(
    tmp_path: Path, workdir: Path, postgres_url: str
) -> None:
    """On each study store. The two studies run at once: most of their time is the wait for the
    deadline."""
    # The first claim starts the clock, possibly while the trial process still imports Keras
    # (seconds, more on a busy machine): the deadline must outlast that, trial 0 (two epochs on
    # 200 digits, stored) and trial 1's first epoch on a busy machine.
    study_timeout, grace = 60, 5
    stores = {"sqlite": f"sqlite:///{tmp_path / 'studies.db'}", "postgresql": postgres_url}
    runs, envs = {}, {}
    for kind, storage_url in stores.items():
        folder = workdir / kind
        folder.mkdir()
        env = envs[kind] = _env(folder, storage_url)
        space = _space(folder, 2)
        name = f"deadline-{kind}"
        created = run_hpo(
            "study", "create", str(space), "--study", name, "--trials", "4",
            "--study-timeout", str(study_timeout), "--study-timeout-grace", str(grace),
            cwd=folder, env=env,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        # The clock starts at the first claimed trial, not when the study is created.
        assert hpo.load_study(name, storage_url).status().deadline is None
        # One worker: trial 0 completes; trial 1 hangs in its second epoch until the deadline
        # and its grace are over; trials 2 and 3 wait behind it and never start.
        _enqueue(name, ["ok", "hang", "ok", "ok"], folder, env)
        runs[kind] = subprocess.Popen(
            [sys.executable, "-m", "hpo", "run", str(space), "--study", name, "--resume"],
            cwd=folder, env={**os.environ, **env}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    outputs = {kind: proc.communicate(timeout=600) for kind, proc in runs.items()}

    for kind, storage_url in stores.items():
        folder, name = workdir / kind, f"deadline-{kind}"
        stdout, stderr = outputs[kind]
        assert runs[kind].returncode == 0, f"{kind}: {stdout}{stderr}"
        assert f"{DEADLINE_REASON} (" in stdout
        assert "2 of the 4 trials never ran" in stdout
        study = hpo.load_study(name, storage_url)
        status = study.status()
        store = open_storage(storage_url)
        deadline = study_deadline(store, store.get_study_id_from_name(name))
        assert deadline is not None and status.deadline == deadline
        first, hung, *queued = _trials(storage_url, name)
        assert first.datetime_start is not None
        assert abs(deadline - study_timeout - first.datetime_start.timestamp()) < 5
        assert first.state == TrialState.COMPLETE
        # The hung trial ran into the grace and was stopped there, keeping its first epoch.
        assert hung.state == TrialState.PRUNED
        assert hung.user_attrs["stop_reason"] == DEADLINE_REASON
        assert list(hung.intermediate_values) == [1] and hung.value == hung.intermediate_values[1]
        assert hung.datetime_complete is not None
        assert deadline + grace <= hung.datetime_complete.timestamp() < deadline + grace + 10
        # No trial started after the deadline; none is left running.
        assert [t.state for t in queued] == [TrialState.WAITING, TrialState.WAITING]
        assert all(t.datetime_start is None for t in queued)
        assert status.running == 0 and status.done and status.deadline_reached
        assert status.end_reason == DEADLINE_REASON
        env = envs[kind]
        shown = run_hpo("study", "status", name, cwd=folder, env=env)
        assert shown.returncode == 0 and f"ended: {DEADLINE_REASON}" in shown.stdout
        assert "(reached: no new trials)" in shown.stdout
        client = MlflowClient(study.config.tracking_uri)
        assert client.get_run(hung.user_attrs["mlflow_run_id"]).info.status == "FAILED"
        parent = client.get_run(study.config.parent_run_id)
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["hpo.end_reason"] == DEADLINE_REASON
        # The completed trial makes an ensemble.
        built = run_hpo("ensemble", "build", name, "--json", cwd=folder, env=env)
        assert built.returncode == 0, built.stderr
        assert [m["trial"] for m in json.loads(built.stdout)["members"]] == [first.number]


@pytest.mark.slow
def test_a_service_worker_ends_a_study_whose_deadline_passed_with_nothing_running(
    tmp_path: Path, workdir: Path
) -> None:
    """The study's workers went elsewhere before its deadline: a worker that finds it past
    the deadline, with no trial running, ends it (its MLflow run, why it ended)."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = hpo.create_study(
        _space(tmp_path, 1),
        StudyOptions(name="idle", storage=storage, check_data=False, study_timeout=2, trials=3),
    )
    store = open_storage(storage)
    loaded = optuna.load_study(study_name="idle", storage=store)
    first = claim_trial(loaded, 3, study_timeout=2)  # what a worker's claim does
    assert first is not None
    loaded.tell(first, state=TrialState.FAIL)
    deadline = study_deadline(store, loaded._study_id)
    assert deadline is not None
    wait_for(lambda: time.time() >= deadline, 30, "the deadline")
    env = {**os.environ, **_env(tmp_path, storage)}
    env.pop("MLFLOW_TRACKING_URI", None)

    worker = subprocess.run(
        [sys.executable, "-m", "hpo", "worker", "--threads", "1", "--exit-when-idle"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert worker.returncode == 0, worker.stderr
    assert "0 trial(s)" in worker.stderr  # it claimed nothing
    attrs = store.get_study_system_attrs(loaded._study_id)
    assert attrs[FINALIZED_ATTR].endswith(f":{worker_pid(worker.stderr)}")
    status = study.status()
    assert status.done and status.end_reason == DEADLINE_REASON and status.finished == 1
    parent = MlflowClient(study.config.tracking_uri).get_run(study.config.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["hpo.end_reason"] == DEADLINE_REASON


def worker_pid(log: str) -> int:
    """The process id a worker's log names (``worker PID on ...``)."""
    match = re.search(r"worker (\d+) on ", log)
    assert match, log
    return int(match[1])


# -- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--trial-timeout", "--study-timeout", "--study-timeout-grace"])
@pytest.mark.parametrize("value", ["0", "abc", "inf"])
def test_bad_time_limits_on_the_command_line(workdir: Path, option: str, value: str) -> None:
    space = _space(workdir, 1)
    if option == "--study-timeout-grace" and value == "0":
        value = "-0.5"  # no grace at all is allowed
    done = run_hpo("study", "create", str(space), "--skip-data-check", option, value, cwd=workdir)
    assert done.returncode == 2
    low = "0 or more" if option == "--study-timeout-grace" else "above 0"
    assert done.stderr.strip() == (
        f"error: {option}: must be a number of seconds {low}, got {value!r}"
    )
    assert os.listdir(workdir) == ["space.yaml"]  # nothing written


@pytest.mark.parametrize("field", ["trial_timeout", "study_timeout", "study_timeout_grace"])
@pytest.mark.parametrize("value", [-1, float("nan"), True, "ten"])
def test_bad_time_limits_in_the_api(workdir: Path, field: str, value: object) -> None:
    options = StudyOptions(check_data=False, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=f"^--{field.replace('_', '-')}: must be a number"):
        hpo.create_study(_space(workdir, 1), options)
    assert os.listdir(workdir) == ["space.yaml"]


@given(
    st.one_of(
        st.text(max_size=30),
        st.floats(),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
    st.booleans(),
)
def test_any_value_is_seconds_or_one_line(value: object, zero_ok: bool) -> None:
    try:
        seconds = seconds_value(value, "--study-timeout", zero_ok=zero_ok)
    except UsageError as exc:
        message = str(exc)
        assert message.startswith("--study-timeout: must be a number of seconds")
        assert "\n" not in message.splitlines()[0] and len(message.splitlines()) <= 1
        return
    assert math.isfinite(seconds) and (seconds > 0 or (zero_ok and seconds == 0))
    assert seconds == float(value)  # type: ignore[arg-type]


def test_time_limits_given_as_options_override_the_space(workdir: Path) -> None:
    study = hpo.create_study(
        _space(workdir, 1),
        StudyOptions(check_data=False, trial_timeout=90, study_timeout=3600, study_timeout_grace=0),
    )
    budget = study.config.spec().budget
    assert (budget.trial_timeout, budget.study_timeout, budget.study_timeout_grace) == (
        90.0,
        3600.0,
        0.0,
    )
    assert study.status().deadline is None  # no trial claimed yet
    assert study.status().study_timeout == 3600.0
    shown = run_hpo("study", "status", "space", cwd=workdir, env=FAULT_FAMILY_ENV).stdout
    assert "deadline: 3600 s after the first claimed trial (none yet)" in shown


def test_resuming_with_another_time_limit_is_refused(workdir: Path) -> None:
    space = _space(workdir, 1)
    hpo.create_study(space, StudyOptions(name="r", check_data=False, study_timeout=3600))
    with pytest.raises(UsageError) as refused:
        hpo.create_study(space, StudyOptions(name="r", resume=True, study_timeout=60))
    assert "--study-timeout 60.0 instead of --study-timeout 3600.0" in str(refused.value)
    # Without options it goes on with the stored limits.
    resumed = hpo.create_study(space, StudyOptions(name="r", resume=True, check_data=False))
    assert resumed.config.spec().budget.study_timeout == 3600.0


def test_a_status_past_its_deadline_is_done_once_nothing_runs() -> None:
    def status(**counts: int) -> StudyStatus:
        fields = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0} | counts
        return StudyStatus(
            name="s", n_trials=4, best_values=None, best_trial=None, directions=["maximize"],
            algorithm="optuna-tpe", pruner="none", family="f", dataset="d",
            deadline=0.0, deadline_reached=True, **fields,
        )  # fmt: skip

    assert not status(complete=1, running=1).done
    ended = status(complete=1, pruned=1, waiting=2)
    assert ended.done and ended.end_reason == DEADLINE_REASON
    assert status(complete=4).end_reason == "trial budget used"
