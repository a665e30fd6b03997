"""Build the Optuna pruner of a pruner name (see :data:`hpo.engines.PRUNERS`).

Steps are epochs: a trial reports its metric after epoch ``e`` as step ``e`` (1-based), so the
budget's ``min_epochs`` is the first step at which a trial may be stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpo._registry import import_object
from hpo.catalog import PRUNERS, call_factory, check_allowed, is_user_target

if TYPE_CHECKING:
    import optuna

    from hpo.spaces import BudgetSpec


def create_pruner(name: str, budget: BudgetSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner called ``name``, with resources measured in epochs of ``budget``.

    ``none`` never prunes; ``median`` stops a trial below the median of earlier trials at the
    same epoch (after 5 trials, from epoch ``min_epochs``); ``sha`` is asynchronous successive
    halving from ``min_epochs`` that keeps the best 1/``reduction_factor`` (3 by default) of
    the trials at each rung; ``hyperband`` runs several such brackets between ``min_epochs``
    and ``max_epochs``. ``module:attribute`` names a factory of an Optuna pruner, called with
    ``budget`` if it takes it.

    Raises:
        ValueError: The name is unknown.
        TypeError: A factory returned something else than a pruner.

    Example:
        >>> from hpo.spaces import BudgetSpec
        >>> type(create_pruner("median", BudgetSpec(max_epochs=10, min_epochs=2))).__name__
        'MedianPruner'
    """
    import optuna

    if is_user_target(name):
        check_allowed("pruner", name)
        made = call_factory(import_object(name), {"budget": budget})
        if not isinstance(made, optuna.pruners.BasePruner):
            raise TypeError(
                f"pruner {name!r} returned a {type(made).__name__}, not an Optuna pruner"
            )
        return made
    pruners = optuna.pruners
    if name == "none":
        return pruners.NopPruner()
    if name == "median":
        # With 1-based epochs, warm-up steps = min_epochs lets a trial be stopped from that
        # epoch on (Optuna skips steps below n_warmup_steps).
        return pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=budget.min_epochs)
    if name == "sha":
        return pruners.SuccessiveHalvingPruner(
            min_resource=budget.min_epochs, reduction_factor=budget.reduction_factor
        )
    if name == "hyperband":
        from hpo.engines._hyperband import SharedHistoryHyperband

        return SharedHistoryHyperband(
            pruners.HyperbandPruner(
                min_resource=budget.min_epochs,
                max_resource=budget.max_epochs,
                reduction_factor=budget.reduction_factor,
            )
        )
    raise ValueError(f"unknown pruner {name!r}; known: {', '.join(PRUNERS)}")
