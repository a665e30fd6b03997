"""Failed trials: marked FAIL with their reason, requeued with the same parameters while
retries are left; trials whose worker stopped beating (or never started them) reaped."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hpo.storage.studies import (
    FAIL_REASON_ATTR,
    RETRY_ATTR,
    RUN_ID_ATTR,
    SURPLUS_ATTR,
    StudyConfig,
)

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial


def requeue(study: optuna.Study, trial: FrozenTrial, *, as_retry: bool = True) -> int:
    """Queue a retry of ``trial`` with the same parameters; returns the retry's trial id.

    The retry carries ``failed_trial`` (the number it repeats), as Optuna's own
    RetryFailedTrialCallback does, so the trial it repeats stops counting toward the budget.
    ``as_retry=False`` (a trial that never ran) keeps the retry count as it was.
    """
    import optuna as _optuna
    from optuna.trial import TrialState

    count = int(trial.system_attrs.get(RETRY_ATTR, 0)) + (1 if as_retry else 0)
    template = _optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        system_attrs={"failed_trial": trial.number, RETRY_ATTR: count},
    )
    return int(study._storage.create_new_trial(study._study_id, template_trial=template))


def fail_trial(
    study: optuna.Study,
    trial_id: int,
    reason: str,
    *,
    retry: bool,
    max_retries: int | None = None,
    count_retry: bool = True,
) -> bool:
    """Mark a RUNNING trial FAIL with ``reason``, queueing its retry first if one is due.

    ``retry`` asks for a retry while fewer than ``max_retries`` (None: no limit) were made;
    ``count_retry=False`` does not count it as one (a trial that never ran). The retry is
    queued *before* the trial is failed, so no one ever sees the trial finished with its
    retry not yet queued: a worker checking the budget in between would find the study done.
    While both exist the trial does not count (see ``counted_trials``).

    Returns False when another process finished the trial first; a retry queued for it is
    then withdrawn (marked surplus and failed), so several reapers can race safely.
    """
    import optuna as _optuna
    from optuna.trial import TrialState

    storage = study._storage
    frozen = storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return False
    queued = None
    if retry and (max_retries is None or int(frozen.system_attrs.get(RETRY_ATTR, 0)) < max_retries):
        # An earlier attempt of this call (a dropped connection retried) may have queued it.
        queued = _queued_retry(storage, study._study_id, frozen.number)
        if queued is None:
            queued = requeue(study, frozen, as_retry=count_retry)
    try:
        storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
        failed = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except _optuna.exceptions.UpdateFinishedTrialError:
        failed = False
    if not failed and queued is not None:
        _withdraw(study, queued, f"trial {frozen.number} was finished by another process")
    return bool(failed)


def _queued_retry(storage: BaseStorage, study_id: int, number: int) -> int | None:
    for t in storage.get_all_trials(study_id, deepcopy=False):
        if t.system_attrs.get("failed_trial") == number and not t.system_attrs.get(SURPLUS_ATTR):
            return int(t._trial_id)
    return None


def _withdraw(study: optuna.Study, trial_id: int, reason: str) -> None:
    """Take back a queued retry: it stops counting, and it is failed unless it has finished."""
    import optuna as _optuna
    from optuna.trial import TrialState

    storage = study._storage
    try:
        storage.set_trial_system_attr(trial_id, SURPLUS_ATTR, True)
        storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except _optuna.exceptions.UpdateFinishedTrialError:
        pass  # a worker ran it to the end already: its result stands, marked or not


def reap_stale_trials(storage: BaseStorage, config: StudyConfig) -> list[int]:
    """Fail (and requeue) trials whose worker stopped sending heartbeats; returns their numbers.

    Their MLflow runs are ended as FAILED so that no run stays RUNNING.
    """
    import optuna

    if not getattr(storage, "heartbeat_interval", None):
        return []
    study = optuna.load_study(study_name=config.name, storage=storage)
    reaped = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):  # type: ignore[attr-defined]
        frozen = storage.get_trial(trial_id)
        reason = "the worker running this trial stopped sending heartbeats (died or lost)"
        if fail_trial(study, trial_id, reason, retry=True, max_retries=config.max_retries):
            reaped.append(frozen.number)
            run_id = frozen.user_attrs.get(RUN_ID_ATTR)
            if run_id and config.tracking_uri:
                from hpo import tracking

                try:  # queued in the local outbox when the server is down
                    tracking.end_orphan_run(config.tracking_uri, run_id, reason)
                except Exception as exc:
                    import logging

                    logging.getLogger("hpo.studies").warning(
                        "could not end MLflow run %s: %s", run_id, exc
                    )
    return reaped


UNSTARTED_REASON = "claimed but never started: its worker died or lost the database right after"


def reap_unstarted_trials(
    storage: BaseStorage, config: StudyConfig, seen: dict[int, float]
) -> list[int]:
    """Requeue RUNNING trials that have had no heartbeat at all for the grace period.

    A worker records a trial's first heartbeat right after claiming it; a trial without one was
    claimed by a worker that died or lost its database connection in between (a database
    restart, kill -9). Heartbeat-based reaping never sees such a trial: it would stay RUNNING
    for ever and keep the study from finishing. It is failed with :data:`UNSTARTED_REASON` and
    queued again (it never ran, so this is not counted as a retry). ``seen`` is the caller's
    memory between calls (trial id -> monotonic time it was first found without a heartbeat),
    so no two machines' clocks are ever compared. Returns the numbers of the requeued trials.
    """
    import optuna
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    interval = getattr(storage, "heartbeat_interval", None)
    if not interval:
        return []
    grace = getattr(storage, "grace_period", None) or 2 * interval
    study = optuna.load_study(study_name=config.name, storage=storage)
    trial_model, beat = models.TrialModel, models.TrialHeartbeatModel
    with _create_scoped_session(storage.scoped_session) as session:  # type: ignore[attr-defined]
        found = [
            int(trial_id)
            for (trial_id,) in session.query(trial_model.trial_id)
            .outerjoin(beat, beat.trial_id == trial_model.trial_id)
            .filter(trial_model.study_id == study._study_id)
            .filter(trial_model.state == TrialState.RUNNING)
            .filter(beat.trial_heartbeat_id.is_(None))
            .all()
        ]
    now = time.monotonic()
    first_seen = {t: seen.get(t, now) for t in found}
    seen.clear()
    seen.update(first_seen)
    reaped = []
    for trial_id, since in first_seen.items():
        if now - since < grace:
            continue
        del seen[trial_id]
        if fail_trial(study, trial_id, UNSTARTED_REASON, retry=True, count_retry=False):
            reaped.append(storage.get_trial(trial_id).number)
    return reaped
