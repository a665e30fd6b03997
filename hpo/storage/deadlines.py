"""A study's wall-clock budget (``budget.study_timeout``): its deadline, kept in the store.

The worker that claims a study's first trial starts its clock: the deadline (seconds since the
epoch) is stored with the study, so every worker on every machine obeys the same one (their
clocks must agree, as NTP keeps them). After it no trial is claimed; running trials get
``budget.study_timeout_grace`` seconds, then are stopped with :data:`DEADLINE_REASON`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

DEADLINE_ATTR = "hpo:deadline"
DEADLINE_REASON = "study deadline reached"
# A trial stopped at the deadline after some epochs is PRUNED, with this user attribute.
STOP_REASON_ATTR = "stop_reason"


def study_deadline(storage: BaseStorage, study_id: int) -> float | None:
    """The study's deadline (seconds since the epoch), None before its clock started."""
    value = storage.get_study_system_attrs(study_id).get(DEADLINE_ATTR)
    return float(value) if value is not None else None


def start_deadline(storage: BaseStorage, study_id: int, study_timeout: float) -> float:
    """Start the study's clock now unless it runs; returns the deadline every worker obeys.

    Two workers claiming the first trials at once may both set it, a few milliseconds apart;
    the later one stands for all.
    """
    deadline = study_deadline(storage, study_id)
    if deadline is None:
        deadline = time.time() + study_timeout
        storage.set_study_system_attr(study_id, DEADLINE_ATTR, deadline)
    return deadline


def deadline_passed(deadline: float | None) -> bool:
    """Whether ``deadline`` (seconds since the epoch, or None: no deadline) has passed.

    Example:
        >>> deadline_passed(None), deadline_passed(0.0), deadline_passed(time.time() + 60)
        (False, True, False)
    """
    return deadline is not None and time.time() >= deadline
