"""Search algorithms and pruners by name, all as Optuna samplers and pruners.

Every algorithm, hyperopt's included, runs over an Optuna study store, so a study has the same
workers, pruning, statuses and logging whichever engine proposes its trials. Importing this
package is cheap: Optuna and hyperopt are imported when a sampler or pruner is built.

Example:
    >>> import optuna
    >>> from hpo.engines import create_pruner, create_sampler
    >>> from hpo.spaces import BudgetSpec, FloatParam, SearchSpace, suggest
    >>> space = SearchSpace({"x": FloatParam(low=-2.0, high=2.0)})
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = optuna.create_study(
    ...     sampler=create_sampler("hyperopt-tpe", space, seed=1, directions=["minimize"]),
    ...     pruner=create_pruner("median", BudgetSpec(max_epochs=5)),
    ... )
    >>> study.optimize(lambda t: suggest(t, space)["x"] ** 2, n_trials=5)
    >>> len(study.trials)
    5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.engines._names import ALGORITHMS, PRUNERS, AlgorithmInfo
from hpo.engines._pruners import create_pruner
from hpo.engines._samplers import create_sampler, grid_size, startup_trials

if TYPE_CHECKING:
    from hpo.engines._hyperopt_sampler import HyperoptSampler

__all__ = [
    "ALGORITHMS",
    "PRUNERS",
    "AlgorithmInfo",
    "HyperoptSampler",
    "create_pruner",
    "create_sampler",
    "grid_size",
    "startup_trials",
]


def __getattr__(name: str) -> Any:
    # HyperoptSampler subclasses Optuna's BaseSampler: defining it imports Optuna.
    if name == "HyperoptSampler":
        from hpo.engines._hyperopt_sampler import HyperoptSampler

        return HyperoptSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
