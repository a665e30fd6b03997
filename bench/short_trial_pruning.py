"""Pruning short trials: Hyperband as hpo runs it, patient rungs, a later first rung, or none.

With trials of at most 4 epochs, hpo's studies without a pruner found better models than with
``hyperband`` against Keras Tuner (``bench/vs_keras_tuner.py``). This script asks which part of
Hyperband costs the accuracy, on simulated learning curves, so that many seeds fit in minutes.
Arms, each with hpo's ``optuna-tpe`` sampler and the same seeds and study names (so the same
brackets):

- ``hyperband``: hpo's ``hyperband`` (``create_pruner``), epochs 1 to ``--max-epochs``.
- ``patient``: the same, but no trial is stopped at a rung that fewer than ``reduction_factor``
  trials of its bracket have reached. Asynchronous successive halving promotes the best
  1/``reduction_factor`` of a rung; until a rung holds that many trials Optuna promotes a trial
  only if it is the best one there so far, so the second trial to reach a rung is stopped
  whenever the first was better, on one comparison (:class:`PatientHyperband`, here only).
- ``first-rung-2``: hpo's ``hyperband`` with ``budget.min_epochs: 2``: no trial stopped before
  its second epoch.
- ``none``: no pruning.

Trials follow the simulated curves of ``bench/hyperband_history.py`` (nothing is trained),
``--workers`` side by side, with normal noise of standard deviation ``--noise`` on each epoch's
value. A study's score is the noise-free final accuracy of the trial it picks (its best complete
trial by the noisy value), as a test split scores a real study's pick. The table gives the mean
score and epochs per arm and the paired difference to ``hyperband`` in points (standard error).

    PYTHONPATH=$PWD .venv/bin/python bench/short_trial_pruning.py --quick   # 30 seeds
    PYTHONPATH=$PWD .venv/bin/python bench/short_trial_pruning.py           # 200 seeds
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hyperband_history import SPACE, accuracy
from tpe_small_budget import simulate

_RUNG_PREFIX = "completed_rung_"  # the system attribute Optuna's successive halving writes


def patient_hyperband(budget: Any) -> Any:
    """hpo's ``hyperband`` that stops no trial at a rung of fewer than ``reduction_factor``."""
    from hpo.engines import create_pruner

    hyperband = create_pruner("hyperband", budget)
    inner = hyperband.hyperband  # Optuna's HyperbandPruner inside hpo's wrapper

    class PatientHyperband(type(hyperband)):  # type: ignore[misc]
        def prune(self, study: Any, trial: Any) -> bool:
            return bool(super().prune(study, trial)) and not rung_too_small(study, trial)

    def rung_too_small(study: Any, trial: Any) -> bool:
        # Successive halving records each rung a trial reaches before it decides: the newest
        # one is the rung of this decision. A trial stopped without one (NaN) stays stopped.
        fresh = study._storage.get_trial(trial._trial_id)
        new = [
            k
            for k in fresh.system_attrs
            if k.startswith(_RUNG_PREFIX) and k not in trial.system_attrs
        ]
        if not new:
            return False
        rung = max(new, key=lambda k: int(k.removeprefix(_RUNG_PREFIX)))
        bracket = inner._get_bracket_id(study, fresh)
        reached = sum(
            rung in t.system_attrs and inner._get_bracket_id(study, t) == bracket
            for t in study.get_trials(deepcopy=False)
        )
        return reached < inner._reduction_factor

    return PatientHyperband(inner)


#: arm -> (pruner name or factory, budget.min_epochs)
ARMS: dict[str, tuple[Any, int]] = {
    "hyperband": ("hyperband", 1),
    "patient": (patient_hyperband, 1),
    "first-rung-2": ("hyperband", 2),
    "none": ("none", 1),
}


def run_study(
    arm: str, seed: int, n_trials: int, workers: int, max_epochs: int, noise: float
) -> tuple[float, int]:
    """One study: the noise-free final accuracy of the trial it picks, and its epochs."""
    import optuna

    from hpo.engines import create_pruner, create_sampler
    from hpo.spaces import parse_spec

    pruner, min_epochs = ARMS[arm]
    text = SPACE.replace("max_epochs: 9", f"max_epochs: {max_epochs}")
    spec = parse_spec(text.replace("min_epochs: 1", f"min_epochs: {min_epochs}"), "short.yaml")
    study = optuna.create_study(
        study_name=f"short-{seed}",  # shared by the arms: the same brackets
        direction="maximize",
        sampler=create_sampler(
            "optuna-tpe", spec.space, seed=seed, directions=["maximize"], n_trials=n_trials
        ),
        pruner=create_pruner(pruner, spec.budget)
        if isinstance(pruner, str)
        else pruner(spec.budget),
    )
    epochs = simulate(study, spec, seed, n_trials, workers, noise)
    complete = [t for t in study.trials if t.value is not None]
    picked = max(complete, key=lambda t: t.value)
    return accuracy(picked.params, max_epochs, 0.0), epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="default 200 (quick: 30)")
    parser.add_argument("--trials", default="10,30", help="budgets, comma separated")
    parser.add_argument("--workers", type=int, default=2, help="trials run side by side")
    parser.add_argument("--max-epochs", type=int, default=4, help="epochs of a full trial")
    parser.add_argument("--noise", default="0.004,0.02", help="noise levels, comma separated")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    seeds = range(args.seeds or (30 if args.quick else 200))
    t0 = time.perf_counter()
    print(
        f"simulated learning curves (bench/hyperband_history.py), {len(seeds)} seeds, "
        f"{args.workers} workers, epochs up to {args.max_epochs}, optuna-tpe"
    )
    header = f"{'noise':>6} {'trials':>6} {'arm':12} {'score':>7} {'epochs':>7}"
    print(f"{header} {'vs hyperband (se)':>18}")
    for noise in [float(x) for x in args.noise.split(",")]:
        for n in [int(x) for x in args.trials.split(",")]:
            base: list[float] = []
            for arm in ARMS:
                runs = [run_study(arm, s, n, args.workers, args.max_epochs, noise) for s in seeds]
                scores = [r[0] for r in runs]
                base = base or scores
                diffs = [100 * (a - b) for a, b in zip(scores, base, strict=True)]
                se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
                print(
                    f"{noise:6.3f} {n:6} {arm:12} {statistics.mean(scores):7.4f} "
                    f"{statistics.mean(r[1] for r in runs):7.1f} "
                    f"{statistics.mean(diffs):+11.2f} ({se:4.2f})",
                    flush=True,
                )
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
