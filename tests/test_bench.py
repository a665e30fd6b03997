"""The benchmark scripts start, and the orchestration bench's worker loop runs (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpo.storage import open_storage
from hpo.storage.status import study_status
from hpo.storage.studies import StudyConfig, create_study, is_done, load_study

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(script: str, *args: str, timeout: float = 120) -> str:
    """Run ``bench/script`` with ``args``; its standard output, once it exited 0."""
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


SPACE = """
family: image_cnn
dataset: {name: digits}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
params:
  x: {type: float, low: 0.0, high: 1.0}
"""


@pytest.mark.parametrize(
    "script",
    [
        "overhead.py",
        "scaling.py",
        "worker_memory.py",
        "startup.py",
        "epoch_callback.py",
        "hyperband_history.py",
        "short_trial_pruning.py",
        "store_scale.py",
        "store_proxies.py",
        "retention.py",
        "resume.py",
        "trial_steps.py",
    ],
)
def test_bench_help(script: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout


@pytest.mark.parametrize(
    ("flag", "modes"),
    [("--store-open", ["imported ahead", "not imported"]),
     ("--tracking-open", ["copied from the cache", "built by MLflow"])],
)  # fmt: skip
def test_startup_one_step_bench_smoke(flag: str, modes: list[str]) -> None:
    """Both ways of one start-up step, measured and compared."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "startup.py"), flag, "--rounds", "1"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert [line.split("  ")[1].strip() for line in lines[2:4]] == modes
    assert lines[-1].startswith(f"ratio: {modes[0]} / {modes[1]} ")


@pytest.mark.slow
def test_orchestration_smoke() -> None:
    """20 no-training trials through the real worker loop on SQLite: a table and a ratio line."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "orchestration.py"), "--trials", "20", "--skip-mlflow",
         "--skip-postgres"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    all_row = next(line for line in out.stdout.splitlines() if " all " in line)
    assert "(20 trials in" in all_row
    assert out.stdout.splitlines()[-1].startswith("ratios: SQLite, 1 worker: p95 ")


@pytest.mark.slow
def test_store_scale_30_workers_through_pgbouncer_on_20_connections() -> None:
    """30 workers (the real loop, stub trials) finish an exact budget through PgBouncer in front
    of a PostgreSQL that allows 20 connections: directly they would need about 4 each."""
    import shutil

    from services import unavailable

    if shutil.which("pgbouncer") is None:
        unavailable("pgbouncer missing (make pooler installs it)")
    out = subprocess.run(
        [sys.executable, str(BENCH / "store_scale.py"), "--workers", "30", "--modes", "pgbouncer",
         "--max-connections", "20", "--pool-size", "10", "--trials-per-worker", "2",
         "--trial-seconds", "0.2", "--threads-per-process", "15", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    [row] = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert row["dead_workers"] == 0, row["first_error"]
    assert row["exact_budget"] and row["complete"] == 60 and row["duplicates"] == 0, row
    assert 0 < row["peak_connections"] <= 10, row  # the pool, not the workers
    assert row["transactions_per_trial"] > 0


def test_is_done_agrees_with_study_status(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from hpo.storage.trial_failures import requeue

    store = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    config = StudyConfig("s", SPACE, "s.yaml", "optuna-random", "none", n_trials=2)
    create_study(store, config)
    study = load_study(store, config)  # kept, as a worker keeps it

    def check(expected: bool) -> None:
        assert is_done(study, config.n_trials) is expected
        assert study_status(store, "s").done is expected

    check(False)
    first = study.ask()
    check(False)  # running
    study.tell(first, 0.5)
    check(False)  # one of two
    second = study.ask()
    study.tell(second, state=TrialState.FAIL)
    check(True)
    requeue(study, store.get_trial(second._trial_id))  # the failed one is retried: not done
    check(False)
    retry = study.ask()
    study.tell(retry, 0.7)
    check(True)


@pytest.mark.slow
def test_epoch_callback_bench_smoke() -> None:
    """Tiny sizes on this process's backend: one table row per callback and a ratio line."""
    stdout = _bench(
        "epoch_callback.py", "--rounds", "1", "--subset", "300", "--epochs", "1", timeout=300
    )
    rows = [line.split()[0] for line in stdout.splitlines()]
    assert {"none", "hpo", "inline"} <= set(rows)
    assert stdout.strip().splitlines()[-1].startswith("ratios: none / hpo ")


@pytest.mark.slow
def test_trial_steps_bench_trains_the_same_model_each_way() -> None:
    """bench/trial_steps.py on digits, one configuration: the three ways give the same training
    (Keras' defaults, one trace, larger validation batches) and a line of ratios."""
    stdout = _bench(
        "trial_steps.py", "--space", "dense_bn_digits", "--rounds", "1", "--subset", "200",
        "--epochs", "2", timeout=300,
    )  # fmt: skip
    gap = next(line for line in stdout.splitlines() if line.startswith("largest difference"))
    assert float(gap.rsplit(":", 1)[1]) < 1e-4, gap
    assert stdout.strip().splitlines()[-1].startswith("ratios: keras / prebuild / hpo fit 1.00 / ")


@pytest.mark.slow
def test_hyperband_history_bench_smoke() -> None:
    """Two seeds of short simulated studies: four arms and a ratio line naming both engines."""
    stdout = _bench("hyperband_history.py", "--seeds", "2", "--trials", "12")
    arms = [line.split()[:3] for line in stdout.splitlines() if "-tpe " in line[:14]]
    assert ["optuna-tpe", "12", "bracket"] in arms and ["hyperopt-tpe", "12", "shared"] in arms
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("ratios (median best") and "hyperopt-tpe 12 trials" in last


@pytest.mark.slow
def test_short_trial_pruning_bench_smoke() -> None:
    """Three seeds of 10 simulated trials: the four arms, each one's difference to hpo's
    hyperband, and the epochs each pruning rule trains in order."""
    stdout = _bench("short_trial_pruning.py", "--seeds", "3", "--trials", "10", "--noise", "0.02")
    rows = {line.split()[2]: line.split() for line in stdout.splitlines()[2:-1]}
    assert list(rows) == ["hyperband", "patient", "first-rung-2", "none"]
    epochs = {arm: float(row[4]) for arm, row in rows.items()}
    assert epochs["hyperband"] < epochs["patient"] < epochs["none"] == 40.0
    assert rows["hyperband"][5] == "+0.00"


def test_patient_hyperband_waits_for_a_full_rung_before_it_stops_a_trial() -> None:
    """The bench's patient rule: Optuna stops the second trial at a rung when the first was
    better; the patient pruner lets trials go on until three have reached it."""
    import optuna

    from hpo.engines import create_pruner
    from hpo.spaces import BudgetSpec

    sys.path.insert(0, str(BENCH))
    from short_trial_pruning import patient_hyperband

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def decisions(pruner: Any) -> list[bool]:
        study = optuna.create_study(direction="maximize", pruner=pruner)
        out = []
        for value in [0.5, 0.4, 0.3, 0.6, 0.45, float("nan")]:
            trial = study.ask()
            trial.report(value, 1)
            out.append(bool(trial.should_prune()))
            if out[-1]:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, value)
        return out

    budget = BudgetSpec(max_epochs=2)  # factor 3: one bracket whose only rung is epoch 1
    assert decisions(create_pruner("hyperband", budget)) == [False, True, True, False, True, True]
    assert decisions(patient_hyperband(budget)) == [False, False, True, False, True, True]


def test_pruning_bench_epoch_bound_matches_optunas_hyperband() -> None:
    """The bound bench/pruning.py prints: the mean epochs of trials that Optuna's own Hyperband
    pruner stops, on random learning curves, come out near it."""
    import random

    import optuna

    pruning = _pruning_bench()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for max_epochs in (6, 9):
        pruner = optuna.pruners.HyperbandPruner(1, max_epochs, reduction_factor=3)
        study = optuna.create_study(direction="maximize", pruner=pruner, study_name="hb")
        rng = random.Random(0)
        trained = []
        for _ in range(400):
            trial, skill = study.ask(), rng.random()
            for epoch in range(1, max_epochs + 1):
                trial.report(skill + 0.01 * epoch, epoch)
                if epoch < max_epochs and trial.should_prune():
                    break
            trained.append(epoch)
            study.tell(trial, skill)
        expected = pruning.hyperband_epochs(1, max_epochs)
        mean = sum(trained) / len(trained)
        assert abs(mean - expected) <= 0.08 * expected, (max_epochs, mean, expected)


def _pruning_bench() -> Any:
    import importlib.util

    module = importlib.util.spec_from_file_location("pruning_bench", BENCH / "pruning.py")
    assert module is not None and module.loader is not None
    pruning = importlib.util.module_from_spec(module)
    sys.path.insert(0, str(BENCH))  # its `from _hpo_bench import ...`
    try:
        module.loader.exec_module(pruning)
    finally:
        sys.path.remove(str(BENCH))
    return pruning


def test_pruning_bench_copies_a_space_with_another_reduction_factor(tmp_path: Path) -> None:
    from hpo.spaces import load_spec

    original = BENCH.parent / "search_spaces" / "image_cnn.yaml"
    copy = _pruning_bench().with_reduction_factor(original, 4, tmp_path)
    assert copy.parent == tmp_path
    before, after = load_spec(original), load_spec(copy)
    assert (before.budget.reduction_factor, after.budget.reduction_factor) == (3, 4)
    assert after.space == before.space and after.dataset == before.dataset
    assert after.budget.max_epochs == before.budget.max_epochs


def test_gan_fd_figure_tables_and_draws_each_trials_distances(tmp_path: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(study_name="g", storage=storage)
    for fds, state in (
        ([30.0, 20.0, 25.0], optuna.trial.TrialState.COMPLETE),
        ([60.0], optuna.trial.TrialState.PRUNED),
        ([40.0, 12.0], optuna.trial.TrialState.COMPLETE),
    ):
        trial = study.ask()
        for epoch, fd in enumerate(fds, start=1):
            trial.report(fd, epoch)
        study.tell(trial, fds[-1] if state.name == "COMPLETE" else None, state=state)
    out = tmp_path / "fd.png"
    result = subprocess.run(
        [sys.executable, str(BENCH / "gan_fd_figure.py"), "g", "--storage", storage,
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:4]]
    # trial, state, epochs, last and lowest reported distance; the summary is of the objective.
    assert rows == [
        ["0", "COMPLETE", "3", "25.0", "20.0", rows[0][5]],
        ["1", "PRUNED", "1", "60.0", "60.0", rows[1][5]],
        ["2", "COMPLETE", "2", "12.0", "12.0", rows[2][5]],
    ]
    assert "complete trials: 2; best val_fd 12.0, median 18.5, worst 25.0" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_gan_variants_trains_each_variant_and_compares_them(tmp_path: Path) -> None:
    """bench/gan_variants.py on digits, tiny: one line per variant and seed with its epochs'
    distances, the ratio table against the first variant, the sample grids written."""
    import re

    out = tmp_path / "grids"
    result = subprocess.run(
        [sys.executable, str(BENCH / "gan_variants.py"), "--dataset", "digits", "--subset", "200",
         "--validation-fraction", "0.2", "--defaults", "--epochs", "2",
         "--set", "g_filters=8", "--set", "d_filters=4", "--set", "latent_dim=8",
         "--set", "fd_samples=100", "--variant", "g_upsampling=transpose",
         "--variant", "g_upsampling=resize", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = re.findall(r"^(g_upsampling=\w+) seed 0: epoch_fd ([\d. ]+); lowest ([\d.]+)",
                       result.stdout, re.M)  # fmt: skip
    assert [name for name, _, _ in lines] == ["g_upsampling=transpose", "g_upsampling=resize"]
    for _, fds, lowest in lines:
        values = [float(v) for v in fds.split()]
        assert len(values) == 2 and float(lowest) == pytest.approx(min(values), abs=0.051)
    ratios = re.findall(r"^  (g_upsampling=\w+) +([\d.]+)  ratio ([\d.]+)$", result.stdout, re.M)
    assert ratios[0][2] == "1.000" and len(ratios) == 2
    assert float(ratios[1][2]) == pytest.approx(float(ratios[1][1]) / float(ratios[0][1]), 1e-2)
    assert sorted(p.name for p in out.iterdir()) == [
        "g_upsampling_resize_s0_kept.png", "g_upsampling_resize_s0_last.png",
        "g_upsampling_transpose_s0_kept.png", "g_upsampling_transpose_s0_last.png",
    ]  # fmt: skip
