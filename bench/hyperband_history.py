"""Hyperband with the sampler's history per bracket (Optuna's) or shared over brackets (hpo's).

Optuna's ``HyperbandPruner`` also decides what the *sampler* sees: it hands each proposal a
study whose ``get_trials`` returns the trials of the proposal's own bracket only. With 3
brackets (epochs 1 to 9, reduction factor 3) a study of 30 trials leaves about 10 a bracket.
(Optuna 5's own samplers read trials through ``Study._get_trials``, which that study does not
filter, so they see every trial anyway; hpo's hyperopt sampler used ``get_trials`` and saw its
bracket only.) hpo's ``hyperband`` prunes exactly as Optuna's (same brackets, rungs and trials
compared) but hands samplers the whole study, as BOHB shares its model over brackets.

This script runs both on a simulated learning curve, so that many seeds fit in a few minutes:
a trial's "validation accuracy" after epoch ``e`` is a fixed function of its parameters (an
image_cnn-like space: learning rate, units, dropout, optimizer, batch normalization) that rises
with the epochs, fast for high learning rates but to a lower plateau, plus seeded noise. Nothing
is trained; what differs between the two arms is only which trials the sampler sees. Each arm
runs the same seeds; the table gives the median over seeds of the best final accuracy among
COMPLETE trials and the epochs trained; the last line gives the differences.

    .venv/bin/python bench/hyperband_history.py --quick     # 8 seeds, 30 trials
    .venv/bin/python bench/hyperband_history.py             # 30 seeds, 30 and 60 trials
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

SPACE = """
family: image_cnn
dataset: {name: fashion_mnist}
objective: {metric: val_accuracy, direction: maximize}
budget: {max_epochs: 9, min_epochs: 1}
params:
  learning_rate: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}
  dense_units: {type: int, low: 8, high: 512, log: true}
  dropout: {type: float, low: 0.0, high: 0.7}
  optimizer: {type: categorical, choices: [adam, rmsprop, sgd]}
  batchnorm: {type: categorical, choices: [none, before, after]}
"""
OPTIMIZER_PENALTY = {"adam": 0.0, "rmsprop": 0.01, "sgd": 0.05}
BATCHNORM_PENALTY = {"none": 0.02, "before": 0.0, "after": 0.005}


def accuracy(p: dict[str, Any], epoch: int, noise: float) -> float:
    """The simulated validation accuracy of parameters ``p`` after ``epoch`` epochs."""
    lr = math.log10(float(p["learning_rate"]))  # best plateau near 10^-3
    plateau = (
        0.92
        - 0.035 * (lr + 3.0) ** 2
        - 0.25 * (float(p["dropout"]) - 0.25) ** 2
        - 0.012 * abs(math.log2(int(p["dense_units"])) - 7)
        - OPTIMIZER_PENALTY[str(p["optimizer"])]
        - BATCHNORM_PENALTY[str(p["batchnorm"])]
    )
    rate = 0.25 * 10 ** ((lr + 3.0) / 2)  # higher learning rates rise faster
    return max(0.1, 0.1 + (plateau - 0.1) * (1 - math.exp(-rate * epoch)) + noise)


def run_arm(algorithm: str, shared: bool, seed: int, n_trials: int) -> tuple[float, int]:
    """One study: the best final accuracy of its COMPLETE trials and the epochs it trained."""
    import numpy as np
    import optuna

    from hpo.engines import create_pruner, create_sampler
    from hpo.spaces import parse_spec, suggest

    spec = parse_spec(SPACE, "hyperband_history.yaml")
    pruner = create_pruner("hyperband", spec.budget)
    if not shared:  # Optuna's own: the sampler sees its bracket only
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=spec.budget.min_epochs,
            max_resource=spec.budget.max_epochs,
            reduction_factor=3,
        )
    sampler = create_sampler(
        algorithm, spec.space, seed=seed, directions=["maximize"], n_trials=n_trials
    )
    study = optuna.create_study(
        study_name=f"hb-{seed}", direction="maximize", sampler=sampler, pruner=pruner
    )
    epochs = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal epochs
        p = suggest(trial, spec.space)
        rng = np.random.default_rng([seed, trial.number])
        value = 0.0
        for epoch in range(1, spec.budget.max_epochs + 1):
            value = accuracy(p, epoch, float(rng.normal(0.0, 0.004)))
            epochs += 1
            trial.report(value, epoch)
            if epoch < spec.budget.max_epochs and trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=n_trials)
    complete = [t.value for t in study.trials if t.value is not None]
    return max(complete), epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 seeds, 30 trials")
    parser.add_argument("--seeds", type=int, default=None, help="default 30 (quick: 8)")
    parser.add_argument("--trials", default=None, help="trials per study, comma separated")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    seeds = range(args.seeds or (8 if args.quick else 30))
    sizes = [int(n) for n in (args.trials or ("30" if args.quick else "30,60")).split(",")]
    t0 = time.perf_counter()
    rows: dict[tuple[str, int, bool], tuple[list[float], list[int]]] = {}
    for n in sizes:
        for algorithm in ("optuna-tpe", "hyperopt-tpe"):
            for shared in (False, True):
                bests, epochs = [], []
                for seed in seeds:
                    best, used = run_arm(algorithm, shared, seed, n)
                    bests.append(best)
                    epochs.append(used)
                rows[(algorithm, n, shared)] = (bests, epochs)
    print(f"simulated learning curves, {len(seeds)} seeds; {time.perf_counter() - t0:.0f} s")
    print(f"{'algorithm':13} {'trials':>6} {'history':>10} {'best (median)':>14} "
          f"{'best (mean)':>12} {'epochs':>7}")  # fmt: skip
    for (algorithm, n, shared), (bests, epochs) in rows.items():
        print(
            f"{algorithm:13} {n:6} {'shared' if shared else 'bracket':>10} "
            f"{statistics.median(bests):14.4f} {statistics.mean(bests):12.4f} "
            f"{statistics.mean(epochs):7.1f}"
        )
    parts = []
    for algorithm, n, shared in rows:
        if not shared:
            a, b = rows[(algorithm, n, False)][0], rows[(algorithm, n, True)][0]
            pairs = list(zip(a, b, strict=True))
            better = sum(y > x for x, y in pairs)
            worse = sum(y < x for x, y in pairs)
            diff = 100 * (statistics.median(b) - statistics.median(a))
            parts.append(f"{algorithm} {n} trials: {diff:+.2f} points, shared better/worse/same "
                         f"in {better}/{worse}/{len(a) - better - worse} seeds")  # fmt: skip
    print("ratios (median best, shared minus per-bracket history): " + "; ".join(parts))


if __name__ == "__main__":
    main()
