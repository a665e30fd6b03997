"""Memory of a worker and its trial process from trial to trial.

Runs a real study (image_cnn on digits, real Keras training, SQLite store, MLflow logging) with
one in-process worker, and samples per trial the resident memory (RSS) of the worker process
after the trial (this process: store, sampler, worker loop; it never imports Keras) and the
largest RSS of its trial process during the trial: once with the trial process replaced every
25 trials (the default) and once never replaced, so the per-trial growth that replacement
bounds is visible side by side. Growth per trial is the least-squares slope of RSS against the
trial number after a warm-up of 10 trials.

    .venv/bin/python bench/worker_memory.py            # 200 trials per mode
    .venv/bin/python bench/worker_memory.py --quick    # 30 trials per mode
    .venv/bin/python bench/worker_memory.py --quick --backend jax
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from pathlib import Path

import psutil
from _hpo_bench import make_study

from hpo.workers.worker import TrialProcess, Worker, WorkerOptions

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


WARMUP = 10


def measure(
    trials: int, per_process: int, workdir: Path, backend: str | None = None
) -> tuple[list[float], list[float]]:
    """Per trial, the trial process's largest RSS while it ran the trial and the worker's RSS
    after it, in MB.

    The trial process is sampled every 50 ms during the trial rather than once after it: a
    process that has served its last trial exits as soon as it sends the result, so a sample
    taken after it would catch it half torn down.
    """
    url = f"sqlite:///{workdir / f'mem{per_process}.db'}"
    _, config = make_study(
        url, f"mem{per_process}", SPACE, trials, tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}"
    )
    samples: list[float] = []
    worker_rss: list[float] = []
    original = TrialProcess.run
    me = psutil.Process()

    def run_and_sample(self: TrialProcess, task, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.start()  # the process that will run this trial (started ahead, normally)
        assert self._proc is not None and self._proc.pid is not None
        child = psutil.Process(self._proc.pid)
        peak = [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                with contextlib.suppress(psutil.Error):
                    peak[0] = max(peak[0], child.memory_info().rss / 2**20)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = original(self, task, *args, **kwargs)
        finally:
            done.set()
            sampler.join()
        samples.append(peak[0])
        worker_rss.append(me.memory_info().rss / 2**20)
        return result

    TrialProcess.run = run_and_sample  # type: ignore[method-assign]
    try:
        options = WorkerOptions(
            url, config.name, threads=2, max_trials_per_process=per_process, backend=backend
        )
        Worker(options).run()
    finally:
        TrialProcess.run = original  # type: ignore[method-assign]
    return samples, worker_rss


def slope(values: list[float], start: int = WARMUP) -> float:
    """Least-squares MB per trial of ``values`` from trial ``start + 1`` on."""
    ys = values[start:]
    if len(ys) < 2:
        return float("nan")
    xs = list(range(len(ys)))
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 trials per mode instead of 200")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument(
        "--backend", default=None, help="Keras backend of the trial processes (default: hpo's)"
    )
    args = parser.parse_args()
    n = args.trials or (30 if args.quick else 200)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        recycled, worker_recycled = measure(n, 25, Path(tmp), args.backend)
        kept, worker_kept = measure(n, 10_000, Path(tmp), args.backend)
        wall = time.perf_counter() - t0
    n = min(len(recycled), len(kept))
    marks = sorted({m for m in (1, 5, WARMUP, 25, 26, 50, 100, 150, n) if m <= n})
    backend = args.backend or "the default backend"
    print(
        f"Memory: image_cnn on digits (400 images, 1 epoch), {n} trials per mode, {backend}, "
        f"{wall:.0f} s"
    )
    print(
        f"{'trial':>6} {'trial process MB,':>18} {'worker MB,':>11} {'trial process MB,':>18} "
        f"{'worker MB,':>11}"
    )
    print(
        f"{'':>6} {'replaced every 25':>18} {'same run':>11} {'never replaced':>18} "
        f"{'same run':>11}"
    )
    for m in marks:
        print(
            f"{m:>6} {recycled[m - 1]:>18.1f} {worker_recycled[m - 1]:>11.1f} "
            f"{kept[m - 1]:>18.1f} {worker_kept[m - 1]:>11.1f}"
        )
    print(
        f"{'slope':>6} {slope(recycled):>18.3f} {slope(worker_recycled):>11.3f} "
        f"{slope(kept):>18.3f} {slope(worker_kept):>11.3f}   MB per trial after trial {WARMUP}"
    )
    print(
        f"peak after trial {WARMUP}: trial process replaced every 25 "
        f"{max(recycled[WARMUP:] or recycled):.1f} MB, never replaced "
        f"{max(kept[WARMUP:] or kept):.1f} MB"
    )
    print(
        f"ratios: MB per trial (goal <= 1): trial process never replaced {slope(kept):.3f}, "
        f"replaced every 25 {slope(recycled):.3f}; worker {slope(worker_kept):.3f} / "
        f"{slope(worker_recycled):.3f}; RSS at trial {n} / trial {WARMUP}, never replaced "
        f"{kept[n - 1] / kept[WARMUP - 1]:.3f}"
    )


if __name__ == "__main__":
    main()
