"""Which trials meet a study's constraints, and the best among those.

The trial process stores, on every trial it finishes, the violation of each of the space's
``constraints`` under the trial system attribute ``constraints`` (a list; 0 or less: met), the
attribute Optuna's samplers and ``Study.best_trial(s)`` read, and a user attribute
``feasible`` (true or false) that people read. A trial without them (a study without
constraints, or a failed trial) counts as feasible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

#: Trial system attribute read by Optuna's samplers: one violation per constraint.
CONSTRAINTS_ATTR = "constraints"
#: Trial user attribute: whether the trial met every constraint.
FEASIBLE_ATTR = "feasible"
#: Trial user attribute: the violated constraints, described.
INFEASIBLE_ATTR = "infeasible_because"


def record_feasibility(
    storage: Any, trial_id: int, values: Sequence[float], violated: Sequence[str]
) -> None:
    """Store the violations ``values`` of a trial and whether it is feasible."""
    storage.set_trial_system_attr(trial_id, CONSTRAINTS_ATTR, [float(v) for v in values])
    storage.set_trial_user_attr(trial_id, FEASIBLE_ATTR, not violated)
    if violated:
        storage.set_trial_user_attr(trial_id, INFEASIBLE_ATTR, "; ".join(violated))


def is_feasible(trial: FrozenTrial) -> bool:
    """True unless a stored violation is above 0.

    Example:
        >>> import optuna
        >>> t = optuna.trial.create_trial(value=1.0, system_attrs={"constraints": [-1.0, 2.0]})
        >>> is_feasible(t), is_feasible(optuna.trial.create_trial(value=1.0))
        (False, True)
    """
    return all(v <= 0 for v in trial.constraints.values())


def infeasible_count(trials: Iterable[FrozenTrial]) -> int:
    """How many of ``trials`` broke a constraint (complete or stopped)."""
    return sum(not is_feasible(t) for t in trials)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best feasible COMPLETE trial in a list (the feasible Pareto front for several
    objectives); empty when no trial is complete and feasible.

    Optuna's ``best_trial`` and ``best_trials`` leave infeasible trials out (they read the same
    attribute); ``best_trial`` raises when none is left.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not any(is_feasible(t) for t in trials):
        return []
    if len(study.directions) > 1:
        return list(study.best_trials)
    return [study.best_trial]
