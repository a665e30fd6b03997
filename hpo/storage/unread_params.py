"""Parameters of a space that no trial's family read: recorded per trial, reported per study
(a misspelt key is searched but never used)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from hpo.spaces import Params


PARAMS_READ_ATTR = "params_read"
PARAMS_UNREAD_ATTR = "params_unread"
#: Study user attribute: parameters of the space that trials had but no family read.
UNREAD_PARAMS_ATTR = "unread_params"


def record_params_read(storage: BaseStorage, trial_id: int, hp: Params) -> None:
    """Store on the trial which of its parameters ``hp`` saw read (see :class:`Params`)."""
    storage.set_trial_user_attr(trial_id, PARAMS_READ_ATTR, hp.read())
    storage.set_trial_user_attr(trial_id, PARAMS_UNREAD_ATTR, hp.unread())


def unread_params(trials: Iterable[FrozenTrial]) -> list[str]:
    """Parameters some trial had and no trial's family read, sorted.

    A conditional parameter counts once a trial had it active; until then it is not reported.

    Example:
        >>> import optuna
        >>> def trial(read, unread):
        ...     return optuna.trial.create_trial(value=0.0, user_attrs={
        ...         PARAMS_READ_ATTR: read, PARAMS_UNREAD_ATTR: unread})
        >>> unread_params([trial(["lr"], ["unitz", "opt.sgd.momentum"]),
        ...                trial(["lr", "opt.sgd.momentum"], ["unitz"])])
        ['unitz']
    """
    read: set[str] = set()
    unread: set[str] = set()
    for t in trials:
        read.update(t.user_attrs.get(PARAMS_READ_ATTR) or ())
        unread.update(t.user_attrs.get(PARAMS_UNREAD_ATTR) or ())
    return sorted(unread - read)


def note_unread_params(study: optuna.Study) -> list[str] | None:
    """Store :func:`unread_params` of the study's complete trials on it when it changed.

    Returns the names when they are stored for the first time (the study's first complete
    trial that reads less than it was given), so that the caller warns once; else None.
    """
    from optuna.trial import TrialState

    names = unread_params(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    before = study.user_attrs.get(UNREAD_PARAMS_ATTR)
    if names == before or (not names and before is None):
        return None
    study.set_user_attr(UNREAD_PARAMS_ATTR, names)
    return names if names and before is None else None


def describe_unread_params(names: list[str]) -> str:
    """The warning about parameters no family read.

    Example:
        >>> describe_unread_params(["unitz"])
        'searched but never read by the family: unitz (a misspelled key?)'
    """
    return f"searched but never read by the family: {', '.join(names)} (a misspelled key?)"
