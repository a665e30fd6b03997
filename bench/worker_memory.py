"""Memory of a worker's trial process from trial to trial.

Runs a real study (image_cnn on digits, real Keras training, SQLite store, MLflow logging) with
one in-process worker, and samples the trial process's resident memory (RSS) after every trial:
once with the trial process replaced every 25 trials (the default) and once never replaced, so
the per-trial growth that replacement bounds is visible side by side.

    .venv/bin/python bench/worker_memory.py            # 50 trials per mode
    .venv/bin/python bench/worker_memory.py --quick    # 20 trials per mode
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import psutil

from hpo.storage import open_storage
from hpo.studies import StudyConfig, create_study
from hpo.worker import TrialProcess, Worker, WorkerOptions

SPACE = """
family: image_cnn
dataset: {name: digits, subset: 400}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 1}
params:
  conv_blocks: {type: int, low: 1, high: 3}
  filters: {type: int, low: 4, high: 32, log: true}
  conv_type: {type: categorical, choices: [Conv2D, SeparableConv2D]}
  batchnorm: {type: categorical, choices: [none, before, after]}
  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""


def measure(trials: int, per_process: int, workdir: Path) -> list[float]:
    """RSS in MB of the trial process after each trial."""
    from hpo import tracking

    url = f"sqlite:///{workdir / f'mem{per_process}.db'}"
    store = open_storage(url)
    config = StudyConfig(
        name=f"mem{per_process}",
        source=SPACE,
        filename="bench.yaml",
        algorithm="optuna-random",
        pruner="none",
        n_trials=trials,
        seed=0,
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
    )
    study = create_study(store, config)
    config.experiment_id, config.parent_run_id = tracking.start_study_run(
        config.tracking_uri or "", config.name, {}, {}
    )
    from hpo.studies import save_config

    save_config(store, study, config)
    from hpo.studies import set_study_state

    set_study_state(store, config.name, "active")
    samples: list[float] = []
    original = TrialProcess.run

    def run_and_sample(self: TrialProcess, task, timeout=None):  # type: ignore[no-untyped-def]
        result = original(self, task, timeout)
        if self._proc is not None and self._proc.is_alive():
            samples.append(psutil.Process(self._proc.pid).memory_info().rss / 2**20)
        return result

    TrialProcess.run = run_and_sample  # type: ignore[method-assign]
    try:
        Worker(WorkerOptions(url, config.name, threads=2, max_trials_per_process=per_process)).run()
    finally:
        TrialProcess.run = original  # type: ignore[method-assign]
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 trials instead of 50")
    parser.add_argument("--trials", type=int, default=None)
    args = parser.parse_args()
    n = args.trials or (20 if args.quick else 50)
    with tempfile.TemporaryDirectory() as tmp:
        recycled = measure(n, 25, Path(tmp))
        kept = measure(n, 10_000, Path(tmp))
    marks = [m for m in (5, 10, 25, 50, n) if m <= n]
    print(f"{'trial':>6} {'RSS MB, replaced every 25':>26} {'RSS MB, never replaced':>23}")
    for m in sorted(set(marks)):
        print(f"{m:>6} {recycled[m - 1]:>26.1f} {kept[m - 1]:>23.1f}")
    growth_kept = (kept[n - 1] - kept[4]) / (n - 5)
    peak_recycled = max(recycled[4:])
    print(
        f"growth per trial, never replaced: {growth_kept:.2f} MB; "
        f"peak after trial 5, replaced every 25: {peak_recycled:.1f} MB"
    )
    print(
        f"ratio: RSS at trial {n} / RSS at trial 5 = never replaced "
        f"{kept[n - 1] / kept[4]:.3f}, replaced every 25 {recycled[n - 1] / recycled[4]:.3f}"
    )


if __name__ == "__main__":
    main()
