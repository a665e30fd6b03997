"""Scaling: throughput of 1, 2 and 4 ``hpo worker`` processes on one machine.

Each run is a fresh SQLite study (MLflow logging to a file store, as ``hpo run`` does) of image_cnn
on scikit-learn's digits, with the same fixed list of configurations enqueued, so every N trains
the same models. N real ``hpo worker`` processes start together, each with
``--threads max(1, cores // N)`` so that they do not oversubscribe the cores. Throughput is
measured in the steady state: from the moment every worker has finished its first trial
(TensorFlow's import and the first model's tracing are behind it) to the last completion,
counting the trials completed in that window. Speed-up = throughput(N) / throughput(1).

    .venv/bin/python bench/scaling.py            # 10 trials per worker after warm-up
    .venv/bin/python bench/scaling.py --quick    # 2 trials per worker after warm-up, 1 epoch
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _hpo_bench import make_study

SPACE = """
family: image_cnn
dataset: {name: digits, validation_fraction: 0.15, test_fraction: 0.2, seed: 0}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: EPOCHS}
params:
  conv_blocks: {type: int, low: 1, high: 2}
  filters: {type: int, low: 8, high: 32, log: true}
  kernel_size: 3
  pooling: max
  batchnorm: {type: categorical, choices: [none, after]}
  dropout: {type: float, low: 0.0, high: 0.3}
  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: 32
"""
CONFIGS = [
    {"conv_blocks": 1, "filters": 16, "batchnorm": "none", "dropout": 0.1, "learning_rate": 3e-3},
    {"conv_blocks": 2, "filters": 16, "batchnorm": "after", "dropout": 0.2, "learning_rate": 2e-3},
    {"conv_blocks": 1, "filters": 32, "batchnorm": "after", "dropout": 0.0, "learning_rate": 5e-3},
    {"conv_blocks": 2, "filters": 8, "batchnorm": "none", "dropout": 0.3, "learning_rate": 1e-3},
]


def run(n_workers: int, per_worker: int, epochs: int, cores: int, tmp: Path) -> dict[str, float]:
    from hpo.storage.studies import load_study
    from hpo.workers.worker import WORKER_ATTR

    name = f"scale{n_workers}"
    url = f"sqlite:///{tmp / f'{name}.db'}"
    n_trials = n_workers * (1 + per_worker)
    store, config = make_study(
        url,
        name,
        SPACE.replace("EPOCHS", str(epochs)),
        n_trials,
        filename="scaling.yaml",
        tracking_uri=f"sqlite:///{tmp / f'{name}-mlflow.db'}",
        enqueue=(CONFIGS[i % len(CONFIGS)] for i in range(n_trials)),
    )
    threads = max(1, cores // n_workers)
    env = dict(os.environ, HPO_STORAGE=url)
    t0 = time.time()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hpo", "worker", "--study", name, "--threads", str(threads),
             "--worker-index", str(i)],
            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for i in range(n_workers)
    ]  # fmt: skip
    for p in procs:
        p.wait()
    wall = time.time() - t0
    trials = load_study(store, config).get_trials()
    done = [t for t in trials if t.datetime_complete is not None and t.state.name == "COMPLETE"]
    first: dict[str, float] = {}
    for t in done:
        assert t.datetime_complete is not None
        w = str(t.system_attrs.get(WORKER_ATTR))
        first[w] = min(first.get(w, float("inf")), t.datetime_complete.timestamp())
    warm = max(first.values())
    ends = [t.datetime_complete.timestamp() for t in done if t.datetime_complete is not None]
    counted = [e for e in ends if e > warm]
    window = max(ends) - warm
    return {
        "workers": n_workers,
        "threads": threads,
        "trials": len(done),
        "failed": len(trials) - len(done),
        "wall": wall,
        "steady_trials": len(counted),
        "window": window,
        "throughput": len(counted) / window * 60 if window > 0 else float("nan"),
        "active_workers": len(first),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 trials per worker after warm-up, 1 epoch"
    )
    parser.add_argument("--per-worker", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    args = parser.parse_args()
    per = args.per_worker or (2 if args.quick else 10)
    epochs = args.epochs or (1 if args.quick else 3)
    cores = os.cpu_count() or 1
    counts = [int(x) for x in args.workers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        for n in counts:
            rows.append(run(n, per, epochs, cores, Path(tmp_name)))
            r = rows[-1]
            print(f"{n} workers done: {r['trials']} trials in {r['wall']:.0f} s", flush=True)
    base = rows[0]["throughput"] / rows[0]["workers"]
    print(
        f"\nScaling: image_cnn on digits, {epochs} epochs, {cores} cores, "
        "SQLite + MLflow file store"
    )
    print(
        f"{'workers':>7} {'threads':>7} {'trials':>6} {'wall s':>7} {'steady':>6} "
        f"{'window s':>8} {'trials/min':>10} {'speed-up':>8} {'goal':>5}"
    )
    for r in rows:
        speedup = r["throughput"] / base
        goal = 0.9 * min(r["workers"], cores)
        print(
            f"{r['workers']:>7} {r['threads']:>7} {r['trials']:>6} {r['wall']:>7.0f} "
            f"{r['steady_trials']:>6} {r['window']:>8.1f} {r['throughput']:>10.2f} "
            f"{speedup:>8.2f} {goal:>5.1f}"
        )
    ratio = ", ".join(f"{r['workers']}: {r['throughput'] / base:.2f}" for r in rows)
    print(
        f"ratios: throughput(N) / throughput(1) = {ratio} (goal >= 0.9*N where {cores} cores "
        f"allow: at most {0.9 * cores:.1f} here)"
    )


if __name__ == "__main__":
    main()
