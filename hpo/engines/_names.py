"""The algorithm and pruner names a space file or the CLI may use (no heavy imports here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AlgorithmInfo:
    """What the CLI and the validator need to know about an algorithm."""

    name: str
    engine: str  # "optuna" or "hyperopt"
    description: str
    multi_objective: bool = False
    needs_discrete_space: bool = False


ALGORITHMS: dict[str, AlgorithmInfo] = {
    a.name: a
    for a in [
        AlgorithmInfo(
            "optuna-tpe",
            "optuna",
            "Optuna TPE, multivariate, constant liar for parallel workers",
            multi_objective=True,
        ),
        AlgorithmInfo("optuna-cmaes", "optuna", "Optuna CMA-ES (categoricals fall back to TPE)"),
        AlgorithmInfo("optuna-gp", "optuna", "Optuna Gaussian process (needs PyTorch)"),
        AlgorithmInfo("optuna-random", "optuna", "Optuna random search", multi_objective=True),
        AlgorithmInfo(
            "optuna-grid",
            "optuna",
            "Optuna grid search over a discrete space",
            multi_objective=True,
            needs_discrete_space=True,
        ),
        AlgorithmInfo(
            "optuna-nsga2", "optuna", "Optuna NSGA-II (multi-objective)", multi_objective=True
        ),
        AlgorithmInfo("hyperopt-tpe", "hyperopt", "hyperopt's TPE, proposing over the study store"),
        AlgorithmInfo("hyperopt-anneal", "hyperopt", "hyperopt's simulated annealing"),
        AlgorithmInfo("hyperopt-random", "hyperopt", "hyperopt's random search"),
    ]
}

PRUNERS: dict[str, str] = {
    "none": "never stop a trial early",
    "median": "stop a trial below the median of earlier trials at the same epoch",
    "sha": "asynchronous successive halving over epochs",
    "hyperband": "Hyperband over epochs (several successive-halving brackets)",
}
