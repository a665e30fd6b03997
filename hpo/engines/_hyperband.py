"""hpo's ``hyperband``: Optuna's Hyperband, the sampler's history shared over brackets."""

from __future__ import annotations

import optuna


class SharedHistoryHyperband(optuna.pruners.BasePruner):
    """Hyperband whose brackets prune on their own trials while the sampler sees every trial.

    Optuna's :class:`~optuna.pruners.HyperbandPruner` also filters what the *sampler* sees
    (Optuna recognizes the pruner by its class): each proposal gets a study whose
    ``get_trials`` holds only its own bracket's trials, about a third of them with 3
    brackets. Optuna 5's own samplers read through ``Study._get_trials``, which that study
    leaves unfiltered, but hpo's hyperopt sampler (and any sampler using the public method)
    saw its bracket only. Wrapping the pruner keeps every pruning decision the same (the
    wrapped pruner still compares a trial with its bracket only) and lets every sampler learn
    from all trials, pruned ones by their last reported value, as BOHB shares its model over
    brackets. ``bench/hyperband_history.py`` compares the two.

    Example:
        >>> import optuna
        >>> pruner = SharedHistoryHyperband(optuna.pruners.HyperbandPruner(max_resource=9))
        >>> isinstance(pruner, optuna.pruners.HyperbandPruner)
        False
    """

    def __init__(self, hyperband: optuna.pruners.HyperbandPruner) -> None:
        self.hyperband = hyperband

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return bool(self.hyperband.prune(study, trial))
