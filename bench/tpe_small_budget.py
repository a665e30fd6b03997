"""Optuna TPE configurations at small budgets, on the simulated curves of hyperband_history.

At 10 trials hpo's ``optuna-tpe`` lost to Keras Tuner's random search (issue 26). This script
varies one setting of hpo's TPESampler at a time and runs each arm over the same seeds on the
simulated image_cnn-like objective of ``bench/hyperband_history.py`` (nothing is trained), with
hpo's own pruner (``median``, the default, or ``hyperband``), sequential trials. The table gives,
per arm, the median, mean, standard deviation and 10th percentile over seeds of the best final
value among COMPLETE trials, and how many seeds the arm beat / lost to hpo's configuration.

Arms (each is hpo's configuration with one change, unless named otherwise):

- ``hpo``: ``create_sampler("optuna-tpe", ...)`` as a worker builds it.
- ``startup-N``: N random trials first instead of ``startup_trials`` (3 at 10 trials, 7 at 30).
- ``independent``: ``multivariate=False, group=False``.
- ``no-liar``: ``constant_liar=False`` (matters with ``--workers`` above 1 only).
- ``gamma-.25``: the best ``ceil(0.25 n)`` trials form the good group (Optuna: ``ceil(0.1 n)``;
  hyperopt's TPE: 0.25).
- ``pruned-by-value``: a pruned trial ranks by its last reported value among the complete ones
  (Optuna ranks every pruned trial below every complete one; hyperopt-tpe in hpo uses the last
  value as the loss).
- ``optuna-random``, ``hyperopt-tpe``: references, as hpo builds them.

    PYTHONPATH=$PWD .venv/bin/python bench/tpe_small_budget.py --quick   # 8 seeds
    PYTHONPATH=$PWD .venv/bin/python bench/tpe_small_budget.py           # 60 seeds, 10 and 30
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hyperband_history import SPACE, accuracy

Factory = Callable[[Any, int, int], Any]


@contextmanager
def _pruned_by_value() -> Iterator[None]:
    """Optuna's TPE split with pruned trials ranked by their last value among the complete."""
    from optuna.samplers._tpe import sampler as tpe
    from optuna.trial import TrialState

    original = tpe._split_trials

    def split(study: Any, trials: list[Any], n_below: int) -> tuple[list[Any], list[Any]]:
        def value(t: Any) -> float:
            if t.state == TrialState.COMPLETE:
                return float(t.value)
            if t.state == TrialState.PRUNED and t.intermediate_values:
                return float(t.intermediate_values[max(t.intermediate_values)])
            return -math.inf  # running (constant liar) or pruned before a report: worst

        ranked = sorted(trials, key=value, reverse=True)  # the study maximizes
        return ranked[:n_below], ranked[n_below:]

    tpe._split_trials = split
    try:
        yield
    finally:
        tpe._split_trials = original


def _tpe(**changes: Any) -> Factory:
    def build(space: Any, seed: int, n_trials: int) -> Any:
        import optuna

        from hpo.engines._samplers import startup_trials

        kwargs: dict[str, Any] = {
            "n_startup_trials": startup_trials("optuna-tpe", n_trials),
            "multivariate": True,
            "group": True,
            "constant_liar": True,
            "seed": seed,
        }
        kwargs.update(changes)
        return optuna.samplers.TPESampler(**kwargs)

    return build


def _hpo(algorithm: str) -> Factory:
    def build(space: Any, seed: int, n_trials: int) -> Any:
        from hpo.engines import create_sampler

        return create_sampler(
            algorithm, space, seed=seed, directions=["maximize"], n_trials=n_trials
        )

    return build


ARMS: dict[str, Factory] = {
    "hpo": _hpo("optuna-tpe"),
    "startup-3": _tpe(n_startup_trials=3),
    "startup-4": _tpe(n_startup_trials=4),
    "startup-5": _tpe(n_startup_trials=5),
    "startup-6": _tpe(n_startup_trials=6),
    "startup-10": _tpe(n_startup_trials=10),
    "independent": _tpe(multivariate=False, group=False),
    "no-liar": _tpe(constant_liar=False),
    "gamma-.25": _tpe(gamma=lambda n: min(math.ceil(0.25 * n), 25)),
    "pruned-by-value": _tpe(),
    "pruned+gamma-.25": _tpe(gamma=lambda n: min(math.ceil(0.25 * n), 25)),
    "startup-5+gamma-.25": _tpe(n_startup_trials=5, gamma=lambda n: min(math.ceil(0.25 * n), 25)),
    "optuna-random": _hpo("optuna-random"),
    "hyperopt-tpe": _hpo("hyperopt-tpe"),
}
BY_VALUE = {"pruned-by-value", "pruned+gamma-.25"}


def run_study(arm: str, pruner_name: str, seed: int, n_trials: int, workers: int) -> float:
    """One study: the best final value of its COMPLETE trials."""
    import optuna

    from hpo.engines import create_pruner
    from hpo.spaces import parse_spec

    spec = parse_spec(SPACE, "tpe_small_budget.yaml")
    # A fixed name: Optuna's Hyperband puts a trial in a bracket by hashing the study's name
    # and the trial's number, so arms must share the name to share the brackets.
    study = optuna.create_study(
        study_name=f"tpe-{seed}",
        direction="maximize",
        sampler=ARMS[arm](spec.space, seed, n_trials),
        pruner=create_pruner(pruner_name, spec.budget),
    )
    with _pruned_by_value() if arm in BY_VALUE else nullcontext():
        simulate(study, spec, seed, n_trials, workers)
    complete = [t.value for t in study.trials if t.value is not None]
    return max(complete) if complete else 0.1


def simulate(
    study: Any, spec: Any, seed: int, n_trials: int, workers: int, noise: float = 0.004
) -> int:
    """Run ``n_trials`` simulated trials of ``spec`` in ``study``; the epochs they trained.

    ``workers`` trials run side by side, one epoch each in turn (ask and tell, as hpo's
    workers do): the sampler sees the others RUNNING, the pruner their partial curves. Each
    epoch's value is :func:`accuracy` plus seeded normal noise of standard deviation ``noise``.
    """
    import numpy as np
    import optuna

    from hpo.spaces import suggest

    active: list[list[Any]] = []
    asked = epochs = 0
    while asked < n_trials or active:
        while len(active) < workers and asked < n_trials:
            trial = study.ask()
            rng = np.random.default_rng([seed, trial.number])
            active.append([trial, suggest(trial, spec.space), rng, 0])
            asked += 1
        for item in list(active):
            trial, p, rng, epoch = item
            item[3] = epoch = epoch + 1
            epochs += 1
            value = accuracy(p, epoch, float(rng.normal(0.0, noise)))
            trial.report(value, epoch)
            if epoch == spec.budget.max_epochs:
                study.tell(trial, value)
            elif trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                continue
            active.remove(item)
    return epochs


def _row(bests: list[float], base: list[float]) -> str:
    """Spread of ``bests`` over seeds; seeds better/worse than ``base`` and the paired mean
    difference in points with its standard error (the same seeds run in every arm)."""
    p10 = statistics.quantiles(bests, n=10)[0]
    row = (
        f"{statistics.median(bests):7.4f} {statistics.mean(bests):7.4f} "
        f"{statistics.stdev(bests):6.4f} {p10:7.4f}"
    )
    if not base or base is bests:
        return row
    diffs = [100 * (b - a) for a, b in zip(base, bests, strict=True)]
    wins = f"{sum(d > 0 for d in diffs)}/{sum(d < 0 for d in diffs)}"
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return row + f" {wins:>10} {statistics.mean(diffs):+6.2f} ({se:4.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="default 60 (quick: 8)")
    parser.add_argument("--trials", default="10,30", help="budgets, comma separated")
    parser.add_argument("--pruners", default="median,hyperband", help="comma separated")
    parser.add_argument("--workers", type=int, default=1, help="trials run side by side")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma separated")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # `group` is experimental and `gamma` deprecated since Optuna 4.9: said here, not per study.
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    warnings.simplefilter("ignore", FutureWarning)
    seeds = range(args.seeds or (8 if args.quick else 60))
    t0 = time.perf_counter()
    print(
        f"simulated learning curves (bench/hyperband_history.py), {len(seeds)} seeds, "
        f"{args.workers} worker(s)"
    )
    print(f"{'pruner':9} {'trials':>6} {'arm':19} {'median':>7} {'mean':>7} {'std':>6} "
          f"{'p10':>7} {'vs hpo +/-':>10} {'diff (se)':>13}")  # fmt: skip
    for pruner in args.pruners.split(","):
        for n in [int(x) for x in args.trials.split(",")]:
            base: list[float] = []
            for arm in arms:
                bests = [run_study(arm, pruner, s, n, args.workers) for s in seeds]
                if arm == "hpo":
                    base = bests
                print(f"{pruner:9} {n:6} {arm:19} " + _row(bests, base), flush=True)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
