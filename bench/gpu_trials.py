"""image_cnn trials per hour with K concurrent trials per GPU, cold and warm compile cache.

Each run is one real ``hpo worker --gpus G --trials-per-gpu K --backend jax`` process working
through the same fixed list of image_cnn trials (enqueued in a fresh SQLite study, so every run
trains the same models) on full Fashion-MNIST (54,000 training and 6,000 validation images).
MLflow tracking is off: this measures the slots, not a tracking server. Runs:

* K = 1, 4, 8, each with an empty JAX compile cache ("cold": shapes repeat within the list,
  so later trials of a run, in any slot, may load what an earlier one compiled);
* the largest K again on the cache the run before filled ("warm": a new worker on a machine
  that has seen these shapes);
* the largest K with the cache off ("off": every trial process compiles everything itself).

For each run it prints trials/hour over the whole run (worker start to exit, trial-process
start-up included) and over the trials themselves (first trial start to last trial end), the
median trial and first-epoch (compile-heavy) seconds, and at the end one line of ratios.

    python bench/gpu_trials.py                      # on a GPU machine (see docs/benchmarks.md)
    python bench/gpu_trials.py --quick --gpu 0      # tiny, on a CPU, in a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _hpo_bench import make_study

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPACE = """
family: image_cnn
dataset: {{name: fashion_mnist, subset: {subset}, validation_fraction: 0.1, seed: 0{options}}}
objective: {{metric: val_accuracy, direction: maximize}}
budget: {{max_epochs: {epochs}}}
params:
  conv_blocks: {{type: int, low: 1, high: 3}}
  filters: {{type: categorical, choices: [16, 32]}}
  kernel_size: 3
  conv_type: Conv2D
  batchnorm: after
  pooling: max
  dropout: {{type: float, low: 0.0, high: 0.3}}
  dense_units: {{type: categorical, choices: [0, 128]}}
  optimizer: {{type: categorical, choices: [adam]}}
  learning_rate: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
  batch_size: {batch_size}
"""


@dataclass
class Run:
    """What one worker run measured."""

    label: str
    k: int
    cache: str  # cold, warm or off
    trials: int
    complete: int
    wall_s: float
    span_s: float
    median_trial_s: float
    median_first_epoch_s: float
    median_epoch_s: float

    @property
    def per_hour_wall(self) -> float:
        return 3600 * self.complete / self.wall_s if self.wall_s else 0.0

    @property
    def per_hour_trials(self) -> float:
        return 3600 * self.complete / self.span_s if self.span_s else 0.0

    def row(self) -> str:
        return (
            f"{self.label:<10} {self.k:>2} {self.cache:<5} {self.complete:>3}/{self.trials:<3} "
            f"{self.wall_s:>7.1f} {self.per_hour_wall:>9.0f} {self.per_hour_trials:>9.0f} "
            f"{self.median_trial_s:>8.2f} {self.median_first_epoch_s:>8.2f} "
            f"{self.median_epoch_s:>8.2f}"
        )


def trial_list(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` fixed trials over 12 model shapes (3 depths x 2 widths x 2 dense heads)."""
    rng = random.Random(seed)
    return [
        {
            "conv_blocks": rng.randint(1, 3),
            "filters": rng.choice([16, 32]),
            "dropout": round(rng.uniform(0.0, 0.3), 3),
            "dense_units": rng.choice([0, 128]),
            "optimizer": "adam",
            "learning_rate": round(10 ** rng.uniform(-3, -2), 5),
        }
        for _ in range(n)
    ]


def measure(
    label: str, k: int, cache: str, args: argparse.Namespace, space: str, workdir: Path
) -> Run:
    import optuna
    from optuna.trial import TrialState

    from hpo.storage import open_storage

    trials = trial_list(args.trials)
    url = f"sqlite:///{workdir / f'{label}.db'}"
    store, _ = make_study(
        url, label, space, len(trials), filename="gpu_trials.yaml", enqueue=trials
    )
    optuna.load_study(study_name=label, storage=store)  # the enqueued trials are readable
    cache_dir = "" if cache == "off" else str(workdir / "jax-cache")
    cmd = [
        sys.executable, "-m", "hpo", "worker", "--study", label, "--storage", url,
        "--gpus", args.gpu, "--trials-per-gpu", str(k), "--backend", args.backend,
        "--compile-cache", cache_dir, "--heartbeat", "5",
    ]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    if args.data_dir:
        env["HPO_FASHION_MNIST_DIR"] = args.data_dir
    log_path = workdir / f"{label}.log"
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{label}: the worker exited with {rc}; the end of its log:\n{tail}")
    done = optuna.load_study(study_name=label, storage=open_storage(url)).get_trials()
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    if len(complete) < len(trials):
        reasons = {t.user_attrs.get("fail_reason") for t in done if t.state != TrialState.COMPLETE}
        print(f"warning: {label}: {len(complete)}/{len(trials)} complete; {reasons}", flush=True)
    starts = [t.datetime_start for t in done if t.datetime_start]
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    return Run(
        label=label,
        k=k,
        cache=cache,
        trials=len(trials),
        complete=len(complete),
        wall_s=wall,
        span_s=span,
        median_trial_s=median(
            [(t.datetime_complete - t.datetime_start).total_seconds() for t in complete]  # type: ignore[operator]
        ),
        median_first_epoch_s=median([t.user_attrs["first_epoch_seconds"] for t in complete]),
        median_epoch_s=median([t.user_attrs["epoch_seconds_median"] for t in complete]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a CPU")
    parser.add_argument("--gpu", default="0", help="the GPU index the slots use (default 0)")
    parser.add_argument("--ks", default=None, help="trials per GPU to compare (default 1,4,8)")
    parser.add_argument("--trials", type=int, default=None, help="trials per run (default 24)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 2)")
    parser.add_argument("--subset", type=int, default=None, help="training images (all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per trial")
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files")
    parser.add_argument("--workdir", default=None, help="keep stores, logs and cache here")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    ks = sorted({int(k) for k in (args.ks or ("1,2" if quick else "1,4,8")).split(",")})
    if len(ks) < 2 or ks[0] < 1:
        parser.error("--ks needs at least two values >= 1, e.g. 1,8")
    args.trials = args.trials or (4 if quick else 24)
    epochs = args.epochs or (1 if quick else 2)
    subset = args.subset or (600 if quick else 60_000)
    options = f", options: {{path: {args.data_dir}}}" if args.data_dir else ""
    space = SPACE.format(subset=subset, epochs=epochs, batch_size=args.batch_size, options=options)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hpo-gpu-trials-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.trials} image_cnn trials per run, {epochs} epoch(s), {subset} training images "
        f"(90% train, 10% validation), batch {args.batch_size}, backend {args.backend}, "
        f"GPU {args.gpu}, K in {ks}; work in {workdir}",
        flush=True,
    )
    # The headline numbers first (K=1, the largest K cold and warm), in case time runs out.
    top = max(ks)
    plan = [(f"k{ks[0]}_cold", ks[0], "cold"), (f"k{top}_cold", top, "cold")]
    plan.append((f"k{top}_warm", top, "warm"))
    plan += [(f"k{k}_cold", k, "cold") for k in ks[1:-1]]
    if not quick:
        plan.append((f"k{top}_off", top, "off"))
    runs: list[Run] = []
    header = (
        f"{'run':<10} {'K':>2} {'cache':<5} {'done':>7} {'wall s':>7} {'trials/h':>9} "
        f"{'trials/h*':>9} {'trial s':>8} {'epoch1 s':>8} {'epoch s':>8}"
    )
    for label, k, cache in plan:
        if cache == "cold":
            import shutil

            shutil.rmtree(workdir / "jax-cache", ignore_errors=True)
        run = measure(label, k, cache, args, space, workdir)
        runs.append(run)
        print(run.row(), flush=True)
        if args.json:
            rows = [asdict(r) | {"per_hour_wall": r.per_hour_wall} for r in runs]
            Path(args.json).write_text(json.dumps(rows, indent=1))
    runs.sort(key=lambda r: (r.k, ["cold", "warm", "off"].index(r.cache)))
    print()
    print(header)
    for run in runs:
        print(run.row())
    print(
        "trials/h: over the whole run (worker start to exit); trials/h*: first trial start to "
        "last trial end; trial s, epoch1 s (with compile), epoch s: medians"
    )
    by = {r.label: r for r in runs}
    base = by[f"k{ks[0]}_cold"]
    ratios = [
        f"K={k}/K={ks[0]}: {by[f'k{k}_cold'].per_hour_wall / base.per_hour_wall:.2f}x"
        for k in ks[1:]
    ]
    warm, cold = by[f"k{top}_warm"], by[f"k{top}_cold"]
    ratios.append(f"warm/cold (K={top}): {warm.per_hour_wall / cold.per_hour_wall:.2f}x")
    if f"k{top}_off" in by:
        off = by[f"k{top}_off"]
        ratios.append(f"cold/off (K={top}): {cold.per_hour_wall / off.per_hour_wall:.2f}x")
    print("ratios (trials/hour, whole runs): " + ", ".join(ratios), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
