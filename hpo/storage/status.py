"""A study's status: its trials counted by state, the best so far, why it ended; what ``hpo
study status`` and the progress of ``hpo run`` show."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.storage.deadlines import DEADLINE_ATTR, DEADLINE_REASON, deadline_passed
from hpo.storage.studies import (
    BROKEN_REASON_ATTR,
    counted_trials,
    load_config,
    state_from_attrs,
)
from hpo.storage.unread_params import unread_params

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


@dataclass
class StudyStatus:
    """Counts and best value of a study, as ``hpo study status`` shows them."""

    name: str
    n_trials: int
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best_values: list[float] | None
    best_trial: int | None
    directions: list[str]
    algorithm: str
    pruner: str
    family: str
    dataset: str
    state: str = "active"
    broken_reason: str | None = None
    #: Parameters trials had that no family read (see :func:`unread_params`).
    unread_params: list[str] = field(default_factory=list)
    #: Finished trials (complete or stopped) that broke a constraint of the space: counted in
    #: ``complete`` or ``pruned`` too, never best.
    infeasible: int = 0
    #: Its wall-clock budget in seconds (``budget.study_timeout``; None: none).
    study_timeout: float | None = None
    #: The study's deadline (seconds since the epoch; None: no study_timeout, or not started).
    deadline: float | None = None
    #: Whether the deadline had passed when the status was read.
    deadline_reached: bool = False

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def budget_used(self) -> bool:
        return self.finished >= self.n_trials and self.running == 0 and self.waiting == 0

    @property
    def done(self) -> bool:
        """Every trial finished, or the deadline passed and no trial runs (queued trials
        that never started stay queued)."""
        return self.budget_used or (self.deadline_reached and self.running == 0)

    @property
    def end_reason(self) -> str | None:
        """Why the study ended (None while it has not)."""
        if self.budget_used:
            return "trial budget used"
        return DEADLINE_REASON if self.done else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "finished": self.finished,
            "done": self.done,
            "end_reason": self.end_reason,
        }


#: Trial user attributes: the parameters its family read, and those it did not.
def study_status(storage: BaseStorage, name: str) -> StudyStatus:
    import optuna
    from optuna.trial import TrialState

    from hpo.storage.feasibility import best_trials, infeasible_count

    config = load_config(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    try:
        spec = config.spec()
        directions, family, dataset = spec.directions, spec.family, spec.dataset.name
        study_timeout = spec.budget.study_timeout
    except Exception as exc:  # e.g. its family module is not installed here: still shown
        spec = None
        study_timeout = None
        directions = [d.name.lower() for d in study.directions]
        family = dataset = f"? ({type(exc).__name__})"
    trials = counted_trials(study.get_trials(deepcopy=False))

    def n(state: TrialState) -> int:
        return sum(1 for t in trials if t.state == state)

    best_values: list[float] | None = None
    best_number: int | None = None
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    attrs = storage.get_study_system_attrs(study._study_id)
    state = state_from_attrs(attrs)
    deadline = float(attrs[DEADLINE_ATTR]) if attrs.get(DEADLINE_ATTR) is not None else None
    unread = unread_params(complete)
    if len(directions) == 1:
        best = best_trials(study)
        if best:
            best_values, best_number = list(best[0].values), best[0].number
    return StudyStatus(
        name=name,
        n_trials=config.n_trials,
        complete=len(complete),
        pruned=n(TrialState.PRUNED),
        failed=n(TrialState.FAIL),
        running=n(TrialState.RUNNING),
        waiting=n(TrialState.WAITING),
        best_values=best_values,
        best_trial=best_number,
        directions=directions,
        algorithm=config.algorithm,
        pruner=config.pruner,
        family=family,
        dataset=dataset,
        state=state,
        broken_reason=attrs.get(BROKEN_REASON_ATTR) if state == "broken" else None,
        unread_params=unread,
        infeasible=infeasible_count(t for t in trials if t.state.is_finished()),
        study_timeout=study_timeout,
        deadline=deadline,
        deadline_reached=deadline_passed(deadline),
    )
