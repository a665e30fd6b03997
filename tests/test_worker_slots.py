"""Several trials per worker: slot planning, and real `hpo worker --gpus ... --trials-per-gpu`.

There is no GPU here: a slot pinned to "GPU 0" runs on the CPU, which is enough to show that
the slots run their trials at once, each in its own trial process with the slot's environment
(GPU, memory share, compile cache), and that budgets and SIGTERM still work with several.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_worker_service import (
    FAST_SPACE,
    SLOW_SPACE,
    Workers,
    _create,
    _trials,
    _wait_for,
)

from hpo.storage.studies import counted_trials
from hpo.workers.slots import SlotError, parse_gpus, plan_slots, resolve_backend

from conftest import REPO, hpo

# -- planning (unit) ---------------------------------------------------------------------------


def test_no_gpus_is_one_slot_with_the_environment_untouched() -> None:
    [slot] = plan_slots(None, 1, threads=None, cpu_count=16)
    assert slot.gpu is None and slot.threads is None and slot.env == {}


def test_k_slots_per_gpu_each_pinned_with_its_memory_share(tmp_path: Path) -> None:
    slots = plan_slots(["0", "1"], 4, backend="jax", compile_cache=tmp_path, cpu_count=16)
    assert [s.gpu for s in slots] == ["0"] * 4 + ["1"] * 4
    assert [s.index for s in slots] == list(range(8))
    assert all(s.threads == 2 for s in slots)  # 16 cores / 8 slots
    for s in slots:
        assert s.env["CUDA_VISIBLE_DEVICES"] == s.gpu
        assert s.env["KERAS_BACKEND"] == "jax"
        assert s.env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
        assert float(s.env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.9 / 4, abs=1e-3)
        assert s.env["HPO_GPU_MEMORY_FRACTION"] == s.env["XLA_PYTHON_CLIENT_MEM_FRACTION"]
        assert s.env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
        assert s.env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
        assert s.env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] == "0"


def test_threads_given_win_and_the_compile_cache_can_be_turned_off() -> None:
    slots = plan_slots(["3"], 2, threads=5, compile_cache="", cpu_count=2)
    assert [s.threads for s in slots] == [5, 5]
    assert all("JAX_COMPILATION_CACHE_DIR" not in s.env for s in slots)
    assert all(s.threads == 1 for s in plan_slots(["0"], 8, cpu_count=2))  # never 0
    default = plan_slots(["0"], 1)[0].env["JAX_COMPILATION_CACHE_DIR"]
    assert default == str(Path.home() / ".cache" / "hpo" / "jax")


@pytest.mark.parametrize(
    ("text", "message"),
    [("0,x", "'x' is not a GPU index"), ("1,1", "GPU 1 is listed more than once"), ("0,", "''")],
)
def test_bad_gpu_lists_are_named(text: str, message: str) -> None:
    with pytest.raises(SlotError, match=message):
        parse_gpus(text)


def test_gpu_lists_and_bad_slot_counts() -> None:
    assert parse_gpus(" 0, 2 ") == ["0", "2"] and parse_gpus(None) is None
    with pytest.raises(SlotError, match="at least 1"):
        plan_slots(["0"], 0)
    with pytest.raises(SlotError, match="needs --gpus"):
        plan_slots(None, 2)


def test_backend_defaults_to_keras_backend_and_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert resolve_backend(None) == "tensorflow"
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert resolve_backend(None) == "torch"
    assert resolve_backend("TensorFlow") == "tensorflow"
    with pytest.raises(SlotError, match="'mxnet' is not one of"):
        resolve_backend("mxnet")


def test_the_worker_imports_no_backend() -> None:
    """CUDA_VISIBLE_DEVICES only works when set before the trial process imports a backend."""
    code = (
        "import sys, hpo.workers.worker, hpo.workers.runner, hpo.cli._run;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'keras', 'tensorflow', 'jax', 'torch'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "0,a"], "'a' is not a GPU index"),
        (["--trials-per-gpu", "2"], "needs --gpus"),
        (["--gpus", "0", "--trials-per-gpu", "0"], "--trials-per-gpu"),
        (["--backend", "mxnet"], "'mxnet' is not one of"),
    ],
)
def test_worker_rejects_bad_slot_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from hpo.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["worker", "--study", "x", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "hpo.db").exists()  # refused before opening the store


def test_run_passes_the_slot_options_to_its_workers() -> None:
    from hpo import LocalWorkers

    two = LocalWorkers(gpus="0,1", trials_per_gpu=3)
    assert (two.slot_args, two.slots) == (["--trials-per-gpu", "3", "--gpus", "0,1"], 6)
    one = LocalWorkers(backend="jax")
    assert (one.slot_args, one.slots) == (["--trials-per-gpu", "1", "--backend", "jax"], 1)


def test_a_worker_waiting_for_go_exits_when_its_stdin_ends(tmp_path: Path) -> None:
    # What an `hpo run` that died or gave up before the study was ready leaves its workers.
    db = tmp_path / "hpo.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "worker", "--study", "s", "--wait-for-go"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=dict(os.environ, HPO_STORAGE=f"sqlite:///{db}"),
    )
    out, _ = proc.communicate(input=b"", timeout=120)  # stdin ends without a 'go'
    assert proc.returncode == 0, out.decode()
    assert b"start cancelled" in out
    assert not db.exists()


def test_run_rejects_bad_gpus_before_creating_a_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from hpo.cli import app

    monkeypatch.chdir(tmp_path)
    space = tmp_path / "s.yaml"
    space.write_text(FAST_SPACE)
    result = CliRunner().invoke(app, ["run", str(space), "--gpus", "0,0"])
    assert result.exit_code == 2 and "listed more than once" in result.output
    assert not (tmp_path / "hpo.db").exists()


# -- the worker's slots with a fake trial process (no Keras) ---------------------------------


def _fake_study(tmp_path: Path, n_trials: int, algorithm: str = "optuna-random") -> str:
    from hpo.storage import open_storage
    from hpo.storage.studies import StudyConfig, create_study, set_study_state

    url = f"sqlite:///{tmp_path / 'fake.db'}"
    space = FAST_SPACE.replace("fault_family:build", "image_cnn")
    config = StudyConfig("fake", space, "fake.yaml", algorithm, "none", n_trials, seed=0)
    store = open_storage(url)
    create_study(store, config)
    set_study_state(store, "fake", "active")
    return url


@pytest.mark.parametrize(
    ("algorithm", "startup", "expected"),
    [("optuna-tpe", "_n_startup_trials", 5), ("hyperopt-tpe", None, 3)],
)
def test_the_worker_sizes_tpe_random_start_to_the_study_budget(
    tmp_path: Path, algorithm: str, startup: str | None, expected: int
) -> None:
    # With the engines' defaults (10 and 20 random trials) a 12-trial study would be random
    # search throughout; the worker's sampler starts its model after 5 (Optuna) or 3 (hyperopt).
    import functools

    from hpo.storage.studies import load_config
    from hpo.workers.worker import Worker, WorkerOptions

    url = _fake_study(tmp_path, n_trials=12, algorithm=algorithm)
    worker = Worker(WorkerOptions(url, "fake"))
    sampler = worker._served_study(load_config(worker.storage, "fake")).study.sampler
    if startup is not None:
        assert getattr(sampler, startup) == expected
    else:
        suggest = sampler._suggest  # type: ignore[attr-defined]
        assert isinstance(suggest, functools.partial)
        assert suggest.keywords == {"n_startup_jobs": expected}


class _FakeRuns:
    """Stands in for TrialProcess.run: sleeps, or waits for a stop; counts concurrent runs."""

    def __init__(self, seconds: float) -> None:
        import threading

        self.seconds, self.running, self.peak = seconds, 0, 0
        self.envs: list[dict[str, str]] = []
        self._lock = threading.Lock()

    @property
    def run(self):  # type: ignore[no-untyped-def]
        """A function to set as ``TrialProcess.run`` (so that it gets the process as self)."""
        return lambda process, *args, **kwargs: self._run(process, *args, **kwargs)

    def _run(self, process, task, timeout=None, stop_requested=lambda: False, stop_grace=0, **_):  # type: ignore[no-untyped-def]
        from hpo.workers.tasks import TrialResult
        from hpo.workers.worker import STOPPED_REASON

        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.envs.append(process.env)
        try:
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline:
                if stop_requested():
                    return TrialResult("FAIL", reason=STOPPED_REASON)
                time.sleep(0.05)
            return TrialResult("COMPLETE", values=[task.params["x"]])
        finally:
            with self._lock:
                self.running -= 1


def test_three_slots_keep_max_trials_and_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.workers.worker import TrialProcess, Worker, WorkerOptions

    url = _fake_study(tmp_path, n_trials=10)
    fake = _FakeRuns(seconds=0.5)
    monkeypatch.setattr(TrialProcess, "run", fake.run)
    monkeypatch.setattr(TrialProcess, "start", lambda process: None)
    options = WorkerOptions(
        url, "fake", gpus=["0"], trials_per_gpu=3, max_trials=5, poll_interval=0.5
    )
    assert Worker(options).run() == 5
    assert fake.peak == 3  # all three slots ran at once
    assert {e["CUDA_VISIBLE_DEVICES"] for e in fake.envs} == {"0"}
    trials = _trials(url, "fake")
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    # A second worker finishes the budget exactly.
    assert (
        Worker(
            WorkerOptions(url, "fake", gpus=["0", "1"], trials_per_gpu=2, poll_interval=0.5)
        ).run()
        == 5
    )
    trials = _trials(url, "fake")
    assert len(trials) == 10 and len(counted_trials(trials)) == 10


def test_a_stop_requeues_the_trials_of_every_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from hpo.workers.worker import TrialProcess, Worker, WorkerOptions

    url = _fake_study(tmp_path, n_trials=6)
    fake = _FakeRuns(seconds=60)
    monkeypatch.setattr(TrialProcess, "run", fake.run)
    monkeypatch.setattr(TrialProcess, "start", lambda process: None)
    worker = Worker(WorkerOptions(url, "fake", gpus=["0", "1"], trials_per_gpu=1))
    stopped_at: list[float] = []

    def stop_once_both_slots_run() -> None:
        # A condition, not a timer: both slots have a trial (however slow the machine is).
        deadline = time.monotonic() + 120
        while fake.running < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped_at.append(time.monotonic())
        worker.request_stop()

    threading.Thread(target=stop_once_both_slots_run, daemon=True).start()
    assert worker.run() == 2
    assert fake.peak == 2 and stopped_at
    # The 60 s trials were stopped, not waited for.
    assert time.monotonic() - stopped_at[0] < 30
    trials = _trials(url, "fake")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(failed) == 2 and len(waiting) == 2
    assert sorted(t.params["x"] for t in waiting) == sorted(t.params["x"] for t in failed)


def test_a_named_study_starts_every_trial_process_before_the_first_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpo.workers.worker
    from hpo.workers.worker import TrialProcess, Worker, WorkerOptions

    url = _fake_study(tmp_path, n_trials=2)
    events: list[str] = []
    claim = hpo.workers.worker.claim_trial

    def counted_claim(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("claim")
        return claim(*args, **kwargs)

    monkeypatch.setattr(hpo.workers.worker, "claim_trial", counted_claim)
    monkeypatch.setattr(TrialProcess, "start", lambda process: events.append("start"))
    monkeypatch.setattr(TrialProcess, "run", _FakeRuns(seconds=0.1).run)
    assert Worker(WorkerOptions(url, "fake", gpus=["0"], trials_per_gpu=2)).run() == 2
    assert events[:3] == ["start", "start", "claim"]
    # A worker serving every study starts a trial process only when a trial comes (here the
    # budget is spent: it never does), so that an idle worker holds no Keras process.
    events.clear()
    assert Worker(WorkerOptions(url, exit_when_idle=True, poll_interval=0.1)).run() == 0
    assert "start" not in events


def test_a_closed_start_gate_stops_the_trial_processes_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hpo run starts its workers before the data check and the MLflow set-up; when those fail
    # the gate says no, and the worker must leave no store behind.
    from hpo.workers.worker import TrialProcess, Worker, WorkerOptions

    events: list[str] = []
    monkeypatch.setattr(TrialProcess, "start", lambda process: events.append("start"))
    monkeypatch.setattr(
        TrialProcess, "close", lambda process, kill=False: events.append(f"close kill={kill}")
    )
    db = tmp_path / "never.db"

    def gate() -> bool:
        events.append("gate")
        return False

    worker = Worker(WorkerOptions(f"sqlite:///{db}", "study", start_gate=gate))
    assert worker.run() == 0
    assert events == ["start", "gate", "close kill=True"]
    assert not db.exists()


def test_an_open_start_gate_runs_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo.workers.worker import TrialProcess, Worker, WorkerOptions

    url = _fake_study(tmp_path, n_trials=2)
    monkeypatch.setattr(TrialProcess, "start", lambda process: None)
    monkeypatch.setattr(TrialProcess, "run", _FakeRuns(seconds=0.1).run)
    assert Worker(WorkerOptions(url, "fake", start_gate=lambda: True)).run() == 2


def test_a_worker_about_to_exit_looks_again_soon_for_the_end_of_the_others_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slot 0 runs a short trial, slot 1 a long one; with nothing left to claim, slot 0 waits
    # for slot 1's trial (it could fail and be requeued). hpo run waits for every worker, so
    # the study's end must not wait for a full poll interval after the last trial.
    import threading

    from hpo.workers.worker import TrialProcess, Worker, WorkerOptions

    url = _fake_study(tmp_path, n_trials=2)
    lengths = iter([0.1, 2.0])
    lock = threading.Lock()
    ended: list[float] = []  # when each trial ended

    def run(process, task, timeout=None, stop_requested=lambda: False, stop_grace=0, **_):  # type: ignore[no-untyped-def]
        from hpo.workers.tasks import TrialResult

        with lock:
            seconds = next(lengths)
        time.sleep(seconds)
        ended.append(time.monotonic())
        return TrialResult("COMPLETE", values=[task.params["x"]])

    closed: list[float] = []  # one entry per slot that ended
    monkeypatch.setattr(TrialProcess, "start", lambda process: None)
    monkeypatch.setattr(TrialProcess, "run", run)
    monkeypatch.setattr(TrialProcess, "close", lambda p, kill=False: closed.append(1.0))
    options = WorkerOptions(
        url, "fake", gpus=["0", "1"], poll_interval=30.0, settle_poll_interval=0.2
    )
    assert Worker(options).run() == 2
    returned = time.monotonic()
    assert len(closed) == 2 and len(ended) == 2
    # Both slots are gone soon after the last trial ended: well within one 30 s poll interval
    # (measured from the trial's end, so a slow start of the worker does not count).
    assert returned - max(ended) < 10.0


# -- real workers with two slots ---------------------------------------------------------------


def _records(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_slots_run_trials_at_once_with_their_gpu_environment(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 4
    _create(tmp_path, postgres_url, "slots", n, SLOW_SPACE.replace("SECONDS", "3"))
    record, cache = tmp_path / "record.jsonl", tmp_path / "jax-cache"
    workers = Workers(tmp_path, postgres_url)
    monkeypatch.setenv("HPO_TEST_RECORD", str(record))  # inherited by the worker and its trials
    try:
        workers.start(
            "--study", "slots", "--gpus", "0", "--trials-per-gpu", "2",
            "--compile-cache", str(cache),
        )  # fmt: skip
        assert workers.wait(timeout=300) == [0], workers.logs()
    finally:
        workers.stop_all()
    trials = _trials(postgres_url, "slots")
    assert len(trials) == n  # exactly the budget: no surplus trial was even asked for
    assert all(t.state == TrialState.COMPLETE for t in counted_trials(trials))
    assert {t.system_attrs["hpo:gpu"] for t in trials} == {"0"}
    runs = _records(record)
    assert len(runs) == n and len({r["pid"] for r in runs}) == 2  # one process per slot
    for r in runs:
        assert r["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        assert r["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
        assert float(r["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.45)
        assert r["env"]["JAX_COMPILATION_CACHE_DIR"] == str(cache)
        assert r["env"]["OMP_NUM_THREADS"] == "1"  # --threads 1
    # Two trials of different slots ran at the same time.
    overlaps = [
        (a, b)
        for a in runs
        for b in runs
        if a["pid"] < b["pid"] and a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlaps, runs


@pytest.mark.slow
def test_sigterm_with_two_slots_requeues_both_running_trials(
    tmp_path: Path, postgres_url: str
) -> None:
    _create(tmp_path, postgres_url, "term2", 3, SLOW_SPACE.replace("SECONDS", "60"))
    sleeping = tmp_path / "sleeping.txt"
    workers = Workers(tmp_path, postgres_url, env={"HPO_TEST_SLEEPING": str(sleeping)})
    try:
        proc = workers.start(
            "--study", "term2", "--gpus", "0", "--trials-per-gpu", "2", "--stop-grace", "2"
        )

        def both_running() -> bool:
            trials = _trials(postgres_url, "term2")
            return len([t for t in trials if t.state == TrialState.RUNNING]) == 2

        _wait_for(both_running, 180, "two running trials")
        # Both trial processes are inside their trials' code (the signal must reach them there).
        _wait_for(
            lambda: sleeping.is_file() and len(sleeping.read_text().split()) == 2,
            600,
            "both trials sleeping in their trial processes",
        )
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 0, workers.logs()
        assert time.monotonic() - t0 < 30
    finally:
        workers.stop_all()
    trials = _trials(postgres_url, "term2")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(failed) == 2 and all("stopped" in t.user_attrs["fail_reason"] for t in failed)
    assert sorted(str(t.params) for t in waiting) == sorted(str(t.params) for t in failed)
    assert len(trials) == 4  # the third trial of the budget was never started


# -- the JAX backend ---------------------------------------------------------------------------

JAX_SPACE = """
name: cnn
family: image_cnn
dataset: {name: digits, subset: 200}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
defaults: {algorithm: optuna-random, pruner: none}
params:
  conv_blocks: 1
  filters: 4
  kernel_size: 3
  conv_type: Conv2D
  batchnorm: none
  pooling: max
  dropout: 0.1
  dense_units: 0
  optimizer: {type: categorical, choices: [adam]}
  learning_rate: 0.01
  batch_size: 32
"""


@pytest.mark.slow
def test_a_jax_backend_worker_trains_image_cnn(tmp_path: Path) -> None:
    from importlib.util import find_spec

    if find_spec("jax") is None:
        if os.environ.get("CI"):
            pytest.fail("jax is in the dev extra but not installed")
        pytest.skip("jax is not installed")
    from mlflow import MlflowClient

    space = tmp_path / "cnn.yaml"
    space.write_text(JAX_SPACE)
    # The dev environment has TensorFlow: keep it out of the trial (as on a JAX-only image).
    blocker = tmp_path / "notf"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_TENSORFLOW)
    path = os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": path, "KERAS_BACKEND": "tensorflow"}
    result = hpo(
        "run", str(space), "--trials", "1", "--backend", "jax", "--json", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["complete"] == 1
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = [
        r
        for r in client.search_runs([client.get_experiment_by_name("cnn").experiment_id])  # type: ignore[union-attr]
        if r.data.tags.get("hpo.kind") == "trial"
    ]
    assert run.data.tags["hpo.backend"] == "jax"
    assert 0.0 <= run.data.metrics["val_accuracy"] <= 1.0


NO_TENSORFLOW = """
import importlib.abc
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorboard", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTensorFlow())
"""
