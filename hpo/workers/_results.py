"""Recording a trial's result in the store, and ending a study's MLflow run once its last trial
is recorded (by the one worker that claims it)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from hpo.storage import mask_url
from hpo.storage._retry import with_db_retry
from hpo.storage.deadlines import DEADLINE_REASON, STOP_REASON_ATTR, study_deadline
from hpo.storage.studies import FAIL_REASON_ATTR, StudyConfig, load_config
from hpo.storage.trial_failures import fail_trial
from hpo.storage.unread_params import describe_unread_params, note_unread_params
from hpo.workers.tasks import FinalizeTask, TrialResult
from hpo.workers.trial_process import STOPPED_REASON, TrialProcess

log = logging.getLogger("hpo.worker")
FINALIZED_ATTR = "hpo:finalized"
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def record_result(
    storage: Any, lock: Any, study: Any, config: StudyConfig, trial: Any, result: TrialResult
) -> None:
    """Tell the study ``result`` of ``trial`` under ``lock`` (the study and its sampler are
    shared by the worker's slots), retrying across dropped connections."""

    def tell() -> None:
        with lock:
            _tell(storage, study, config, trial, result)

    with_db_retry(tell, what="recording a result")


def finalize_if_done(
    storage: Any,
    storage_url: str,
    finalize_lock: Any,
    config: StudyConfig,
    study: Any | None,
    process: TrialProcess | None,
) -> None:
    """The worker that records a study's last trial ends its MLflow study run with plots.

    The slot's trial ``process`` does it when it can (it has MLflow and matplotlib loaded);
    else this process does. ``study`` (the worker's Optuna study, if it serves it) gives a
    cheap first check.
    """
    from hpo.storage.status import study_status
    from hpo.storage.studies import is_done
    from hpo.tracking.study_report import finalize_study

    def claim_finalization() -> bool:
        if not study_status(storage, config.name).done:
            return False
        study_id = storage.get_study_id_from_name(config.name)
        owner = storage.get_study_system_attrs(study_id).get(FINALIZED_ATTR)
        if owner is None:
            storage.set_study_system_attr(study_id, FINALIZED_ATTR, WORKER_ID)
            return True
        return bool(owner == WORKER_ID)  # True: an earlier attempt of ours set it

    try:
        if study is not None:
            deadline = None
            if config.spec().budget.study_timeout:
                deadline = with_db_retry(lambda: study_deadline(storage, study._study_id))
            if not is_done(study, config.n_trials, deadline):
                return  # the cheap check (cached trials); study_status reads every trial
        with finalize_lock:  # two slots may record a study's last trials at once
            if not with_db_retry(claim_finalization, what="checking the study's end"):
                return
            latest = with_db_retry(lambda: load_config(storage, config.name))
            if process is not None:
                why = process.finalize(FinalizeTask(storage_url, latest.to_json()))
                if why is None:
                    return
                log.info("finalizing study %s here: %s", config.name, why)
            with_db_retry(lambda: finalize_study(storage, latest), what="finalizing the study")
    except Exception as exc:  # reporting must never stop a worker
        log.warning("could not finalize study %s: %s", config.name, exc)


def _tell(storage: Any, study: Any, config: StudyConfig, trial: Any, result: TrialResult) -> None:
    from optuna.trial import TrialState

    # A reaper (or an earlier attempt of this call) may have recorded the trial already:
    # ``skip_if_finished`` makes tell check that with the one read it does anyway.
    if result.state == "FAIL":
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            return
        reason = mask_url(result.reason or "unknown error")
        if result.reason == DEADLINE_REASON:
            # The store first: other workers (and the study's end) wait on it, not on MLflow.
            _stop_at_deadline(storage, study, trial)
            if result.run_id and config.tracking_uri:
                _end_orphan_run(config, result.run_id, reason)
            return
        log.warning("trial %d failed: %s", trial.number, reason)
        if result.run_id and config.tracking_uri:
            _end_orphan_run(config, result.run_id, reason)
        if result.reason == STOPPED_REASON:
            # Interrupted by our own shutdown, not the trial's fault: always requeue.
            fail_trial(study, trial._trial_id, reason, retry=True)
        else:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    elif result.state == "PRUNED":
        log.info("trial %d pruned", trial.number)
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        log.info("trial %d: %s", trial.number, result.values)
        study.tell(trial, values=result.values, skip_if_finished=True)
        unread = note_unread_params(study)
        if unread:
            log.warning("study %s: %s", config.name, describe_unread_params(unread))


def _stop_at_deadline(storage: Any, study: Any, trial: Any) -> None:
    """Record a trial stopped at the study's deadline; it is never requeued.

    A trial that reported epochs is PRUNED: Optuna gives it its last epoch's objective as its
    value, so samplers, pruners and reports keep what it learned. A trial without any epoch
    (or with several objectives, which report none) fails.
    """
    from optuna.trial import TrialState

    reported = study._storage.get_trial(trial._trial_id).intermediate_values
    if reported and len(study.directions) == 1:
        log.info("trial %d pruned after epoch %d: %s", trial.number, max(reported), DEADLINE_REASON)
        storage.set_trial_user_attr(trial._trial_id, STOP_REASON_ATTR, DEADLINE_REASON)
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        log.warning("trial %d failed: %s", trial.number, DEADLINE_REASON)
        storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, DEADLINE_REASON)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def _end_orphan_run(config: StudyConfig, run_id: str, reason: str) -> None:
    """End the MLflow run of a trial whose process died before it could."""
    from hpo import tracking

    try:
        # Never reads the server: works while it is down and with placeholder run ids.
        tracking.end_orphan_run(config.tracking_uri or "", run_id, reason)
    except Exception as exc:
        log.warning("could not end MLflow run %s: %s", run_id, exc)
