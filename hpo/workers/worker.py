"""A worker: takes trials of a study from the shared store and runs each in a trial process.

The worker process itself never imports Keras. Trials run in a child process
(:mod:`hpo.workers.trial_process`); when a trial kills it, that trial is recorded FAIL with the
reason and the worker goes on.

A worker has one or more slots (:mod:`hpo.workers.slots`): one thread per slot claims a trial,
runs it in the slot's own trial process and records the result, so a worker with ``--gpus 0,1
--trials-per-gpu 4`` runs eight trials at once. The slots share the worker's heartbeat and
reaper threads, its stop request and its ``max_trials``.

Over 500 lines on purpose: :class:`Worker` is one loop whose threads (slots, heartbeat,
reaper) share its state and locks; split across modules, that sharing would be harder to see.
What does not touch that state lives elsewhere (results: ``_results.py``, options:
``_options.py``, claims and reaping: :mod:`hpo.storage`).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from typing import Any

from hpo.errors import HpoError
from hpo.storage import import_store_modules, mask_url, open_storage
from hpo.storage._retry import is_transient, with_db_retry
from hpo.storage.deadlines import deadline_passed, study_deadline
from hpo.storage.studies import (
    CONFIG_ATTR,
    SETUP_FAILURES_ATTR,
    StudyConfig,
    StudyError,
    claim_trial,
    clear_setup_failures,
    load_config,
    load_config_and_state,
    load_study,
    record_setup_failure,
    state_from_attrs,
)
from hpo.storage.trial_failures import fail_trial, reap_stale_trials, reap_unstarted_trials
from hpo.workers._options import Slot, WorkerOptions, _Served
from hpo.workers._results import WORKER_ID, finalize_if_done, record_result
from hpo.workers.slots import plan_slots
from hpo.workers.tasks import TrialResult, TrialTask
from hpo.workers.trial_process import STOPPED_REASON, TrialProcess

__all__ = ["GPU_ATTR", "STOPPED_REASON", "WORKER_ATTR", "TrialProcess", "Worker", "WorkerOptions"]

log = logging.getLogger("hpo.worker")
WORKER_ATTR = "hpo:worker"
GPU_ATTR = "hpo:gpu"


class Worker:
    """Takes trials from the store and runs them in its slots, one trial per slot at a time.

    A worker with ``study`` set runs that study's trials until its budget is used up. Without
    it, the worker serves every active study that has budget left, highest ``priority`` first
    and then oldest first, and waits for new studies when there is nothing to do, so operators
    start workers once and users create studies at any time (``hpo study create``).

    While it runs, a heartbeat thread marks its running trials alive and a reaper thread fails
    (and requeues, up to the study's ``max_retries``) trials whose worker stopped sending
    heartbeats. SIGTERM or SIGINT: no new trial is taken; the running ones get ``stop_grace``
    seconds to finish, else they are failed and requeued; then the worker exits.

    Example (a sketch; see ``hpo worker --help``):
        >>> # Worker(WorkerOptions("sqlite:///hpo.db", "image_cnn")).run()
    """

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        plans = plan_slots(
            options.gpus,
            options.trials_per_gpu,
            backend=options.backend,
            threads=options.threads,
            compile_cache=options.compile_cache,
        )
        self.slots = [
            Slot(p, TrialProcess(p.threads, options.max_trials_per_process, p.env)) for p in plans
        ]
        self._served: dict[str, _Served] = {}
        self._stop = threading.Event()
        self._unstarted: dict[str, dict[int, float]] = {}  # per study: see reap_unstarted_trials
        self._finished = threading.Event()  # every slot is done
        self._activity = threading.Event()  # a trial ended or a stop came: idle slots look again
        # Claims, counts and results go through one lock: Optuna's study and sampler objects
        # are shared by the slots, and claims must be counted exactly for max_trials.
        self._lock = threading.RLock()  # RLock: a failed claim records it under the lock
        self._finalize_lock = threading.Lock()
        self._running: dict[int, int] = {}  # slot index -> trial id, for the heartbeat
        self._started = 0
        self._error: Exception | None = None  # what stopped a slot, raised by run()
        # Per study: its set-up failures in a row as last read (None: not known), so that a
        # trial that gets past its set-up resets the count only when there is one to reset.
        self._setup_failures: dict[str, int | None] = {}
        self._warned: set[str] = set()
        # Studies whose deadline this worker found passed, until they are finalized (then in
        # _ended).
        self._past_deadline: dict[str, StudyConfig] = {}
        self._ended: set[str] = set()

    @functools.cached_property
    def storage(self) -> Any:
        """The study store, opened on first use (after the trial processes have started)."""
        return open_storage(
            self.options.storage_url, self.options.heartbeat_interval, self.options.grace_period
        )

    # -- signals ---------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        if not self._stop.is_set():
            log.info(
                "stop requested: finishing the running trial(s) (up to %.0f s)",
                self.options.stop_grace,
            )
        self._stop.set()
        self._activity.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- background threads ----------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        # Beats on after a stop request, while the running trials use their stop grace.
        while not self._finished.wait(self.options.heartbeat_interval):
            self._beat()

    def _beat(self) -> None:
        for trial_id in self._running.copy().values():
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as exc:  # a dropped connection: the next beat retries
                log.warning("heartbeat failed: %s", mask_url(str(exc)).splitlines()[0])

    def _reaper_loop(self) -> None:
        while not self._stop.wait(self.options.heartbeat_interval):
            try:
                self.reap()
            except Exception as exc:
                log.warning("reaper failed: %s", mask_url(str(exc)).splitlines()[0])

    def reap(self) -> list[int]:
        """Fail and requeue stale trials of the studies this worker serves."""
        reaped: list[int] = []
        for config in self._candidate_configs():
            numbers = reap_stale_trials(self.storage, config)
            for n in numbers:
                log.warning(
                    "study %s: trial %d had no heartbeat; failed and requeued", config.name, n
                )
            unstarted = reap_unstarted_trials(
                self.storage, config, self._unstarted.setdefault(config.name, {})
            )
            for n in unstarted:
                log.warning(
                    "study %s: trial %d was claimed but never started; failed and requeued",
                    config.name,
                    n,
                )
            reaped.extend(numbers + unstarted)
        return reaped

    # -- choosing work ---------------------------------------------------------------------

    def _candidate_configs(self) -> list[StudyConfig]:
        return [config for config, _ in self._candidates()]

    def _active_configs(self) -> list[StudyConfig]:
        return [config for config, state in self._candidates() if state == "active"]

    def _candidates(self) -> list[tuple[StudyConfig, str]]:
        """The studies this worker serves, by priority, each with its state (one read)."""
        if self.options.study:
            return [load_config_and_state(self.storage, self.options.study)]
        found = []
        for frozen in self.storage.get_all_studies():
            raw = frozen.system_attrs.get(CONFIG_ATTR)
            if raw is None:
                continue
            try:
                config = StudyConfig.from_json(raw)
            except Exception as exc:  # one bad study must not stop the others
                self._warn_once(frozen.study_name, f"unreadable configuration: {exc}")
                continue
            failures = frozen.system_attrs.get(SETUP_FAILURES_ATTR) or 0
            self._setup_failures[config.name] = int(failures)
            found.append((config, state_from_attrs(frozen.system_attrs)))
        found.sort(key=lambda c: (-c[0].priority, c[0].created_at))
        return found

    def _served_study(self, config: StudyConfig) -> _Served:
        from hpo.engines import create_pruner, create_sampler

        served = self._served.get(config.name)
        if served is None:
            spec = config.spec()
            sampler = create_sampler(
                config.algorithm,
                spec.space,
                seed=self._sampler_seed(config),
                directions=spec.directions,
                n_trials=config.n_trials,
            )
            pruner = create_pruner(config.pruner, spec.budget)
            served = _Served(
                config, load_study(self.storage, config, sampler=sampler, pruner=pruner)
            )
            self._served[config.name] = served
        # The budget may have been raised with --resume --trials: read the latest config.
        served.config = config
        return served

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Run trials until there is no work (or a stop); returns how many this worker ran."""
        if self.options.study:
            # A named study has work at once: its trial processes start importing Keras now,
            # while this process opens the store and claims. (A worker serving every study
            # starts them when a trial comes, so that an idle worker holds no Keras process.)
            for slot in self.slots:
                slot.process.start()
        if self.options.start_gate is not None:
            # While the study is being created, not after.
            import_store_modules(self.options.storage_url)
            if not self.options.start_gate():
                log.info("start cancelled: no trial taken, nothing written")
                for slot in self.slots:
                    slot.process.close(kill=True)
                return 0
        try:
            storage = self.storage  # opened here, before the threads that share it
            if self.options.study:
                config = load_config(storage, self.options.study)  # a clear error first
                from hpo.catalog import ALLOWED_MODULES_ENV, first_disallowed

                refused = first_disallowed(config.user_targets())
                if refused is not None:
                    raise StudyError(
                        f"study {config.name!r}: {refused[0]} {refused[1]!r} is not allowed "
                        f"on this worker (${ALLOWED_MODULES_ENV})"
                    )
        except BaseException:
            for slot in self.slots:
                slot.process.close(kill=True)
            raise
        if len(self.slots) > 1:
            log.info(
                "%d slots: %s",
                len(self.slots),
                ", ".join(f"{s.plan.label}: {s.plan.threads} thread(s)" for s in self.slots),
            )
        background = [
            threading.Thread(target=self._heartbeat_loop, daemon=True, name="heartbeat"),
            threading.Thread(target=self._reaper_loop, daemon=True, name="reaper"),
        ]
        slot_threads = [
            threading.Thread(target=self._slot_loop, args=(s,), name=f"slot-{s.plan.index}")
            for s in self.slots
        ]
        for t in background + slot_threads:
            t.start()
        try:
            # The main thread only waits (briefly, so that it handles SIGTERM at once).
            while any(t.is_alive() for t in slot_threads):
                for t in slot_threads:
                    t.join(timeout=0.5)
        finally:
            self._stop.set()
            self._activity.set()
            for t in slot_threads:
                t.join()
            self._finished.set()
        if self._error is not None:
            raise self._error
        return self._started

    def _slot_loop(self, slot: Slot) -> None:
        """One slot: claim a trial, run it in the slot's trial process, record it; repeat."""
        exit_when_idle = self.options.exit_when_idle
        if exit_when_idle is None:
            exit_when_idle = self.options.study is not None
        try:
            while not self._stop.is_set():
                if self._quota_used():
                    return
                self._activity.clear()
                claimed = with_db_retry(self._claim, what="claiming a trial")
                if claimed is None:
                    with_db_retry(lambda: self._finalize_past_deadline(slot))
                    # Trials still running elsewhere (in another slot too) may yet fail and be
                    # requeued, so a slot only leaves once its studies have settled.
                    if exit_when_idle and with_db_retry(self._settled, what="reading status"):
                        return
                    # About to exit: look again soon, since the study's end waits for this
                    # worker (``hpo run`` returns when its workers have exited).
                    o = self.options
                    interval = o.settle_poll_interval if exit_when_idle else o.poll_interval
                    self._activity.wait(min(interval, float(o.heartbeat_interval)))
                    continue
                served, trial = claimed
                try:
                    self._run_trial(slot, served, trial)
                finally:
                    self._activity.set()
        except Exception as exc:  # the worker stops, and run() raises it
            self._error = self._error or exc
            self._stop.set()
            self._activity.set()
        finally:
            slot.process.close()

    def _quota_used(self) -> bool:
        return self.options.max_trials is not None and self._started >= self.options.max_trials

    def _claim(self) -> tuple[_Served, Any] | None:
        """A trial to run (counted against ``max_trials``), or None."""
        with self._lock:
            if self._stop.is_set() or self._quota_used():
                return None
            for config in self._active_configs():
                try:
                    if not self._family_allowed(config):
                        continue
                    served = self._served_study(config)
                    timeout = config.spec().budget.study_timeout
                    trial = claim_trial(served.study, config.n_trials, timeout)
                    if trial is None and timeout and self._newly_past_deadline(served):
                        self._past_deadline[config.name] = config
                except Exception as exc:
                    if is_transient(exc):
                        raise  # the store, not the study: with_db_retry retries the claim
                    self._setup_failed(
                        config, f"setting up its sampler failed: {type(exc).__name__}: {exc}"
                    )
                    continue  # the next study
                if trial is not None:
                    self._started += 1
                    return served, trial
        return None

    def _settled(self) -> bool:
        """No active study this worker serves has a running or queued trial (queued trials of
        a study past its deadline never start: they do not count)."""
        from optuna.trial import TrialState

        for config in self._active_configs():
            study_id = self.storage.get_study_id_from_name(config.name)
            states: tuple[TrialState, ...] = (TrialState.RUNNING, TrialState.WAITING)
            if _has_study_timeout(config) and deadline_passed(
                study_deadline(self.storage, study_id)
            ):
                states = (TrialState.RUNNING,)
            if self.storage.get_all_trials(study_id, deepcopy=False, states=states):
                return False
        return True

    def _newly_past_deadline(self, served: _Served) -> bool:
        if served.config.name in self._ended:
            return False
        return deadline_passed(study_deadline(self.storage, served.study._study_id))

    def _finalize_past_deadline(self, slot: Slot) -> None:
        """Finalize the studies whose deadline passed once no trial of theirs runs: the
        worker that recorded their last trial does it, unless it went away before."""
        from hpo.workers._results import FINALIZED_ATTR

        for name, config in list(self._past_deadline.items()):
            study_id = self.storage.get_study_id_from_name(name)
            if self.storage.get_study_system_attrs(study_id).get(FINALIZED_ATTR) is not None:
                self._past_deadline.pop(name, None)  # two slots may get here at once
                self._ended.add(name)
                continue
            self._finalize_if_done(config, slot)

    def _sampler_seed(self, config: StudyConfig) -> int | None:
        from hpo.engines._names import ALGORITHMS

        info = ALGORITHMS.get(config.algorithm)  # None: the study's own sampler
        if config.seed is None or (info is not None and info.engine == "hyperopt"):
            # hyperopt's proposals are seeded per trial number: the same in every worker.
            return config.seed
        # Workers with the same seed would propose the same parameters; worker 0 keeps the
        # study's seed so that a one-worker study is reproducible.
        index = self.options.worker_index
        return config.seed + (index if index is not None else os.getpid())

    def _run_trial(self, slot: Slot, served: _Served, trial: Any) -> None:
        from hpo.spaces import suggest

        config = served.config
        trial_id = trial._trial_id
        self._running[slot.plan.index] = trial_id
        try:
            with_db_retry(lambda: self.storage.record_heartbeat(trial_id), what="a heartbeat")
            # Which worker (and GPU) runs a trial: for operators reading the store after a failure.
            with_db_retry(
                lambda: self.storage.set_trial_system_attr(trial_id, WORKER_ATTR, WORKER_ID)
            )
            gpu = slot.plan.gpu
            if gpu is not None:
                with_db_retry(lambda: self.storage.set_trial_system_attr(trial_id, GPU_ATTR, gpu))

            def sample() -> Any:
                with self._lock:  # the sampler is shared by the slots
                    return suggest(trial, config.spec().space)

            try:
                # Suggesting writes each parameter to the store; suggesting again after a
                # dropped connection returns those already written.
                params = with_db_retry(sample, what="sampling parameters")
            except Exception as exc:  # a sampler bug must not stop the worker
                reason = f"sampling failed: {type(exc).__name__}: {exc}"
                result = TrialResult("FAIL", reason=reason, setup_failed=True)
                self._record(served, trial, result)
                self._setup_failed(config, reason)
                return
            log.info(
                "study %s trial %d%s: %s",
                config.name,
                trial.number,
                f" on {slot.plan.label}" if len(self.slots) > 1 else "",
                params,
            )
            task = TrialTask(
                self.options.storage_url, config.to_json(), trial._trial_id, trial.number, params
            )
            budget = config.spec().budget
            stop_at = None
            if budget.study_timeout:
                # Set by the claim (this one, or the study's first): the same on every machine.
                study_id = served.study._study_id
                deadline = with_db_retry(lambda: study_deadline(self.storage, study_id))
                if deadline is not None:
                    stop_at = deadline + budget.study_timeout_grace
            result = slot.process.run(
                task,
                timeout=budget.trial_timeout,
                stop_requested=self._stop.is_set,
                stop_grace=self.options.stop_grace,
                stop_at=stop_at,
            )
            self._record(served, trial, result)
            if result.setup_failed:
                self._setup_failed(config, result.reason or "unknown error")
            else:
                self._setup_passed(config)
            self._finalize_if_done(served.config, slot)
        except Exception as exc:
            if is_transient(exc):
                raise  # the store is gone for longer than with_db_retry waits: as before
            # The study's sampler (its after_trial) or a bad configuration: fail this trial
            # and count it against the study, never stop the worker.
            reason = f"recording the trial failed: {type(exc).__name__}: {exc}"
            try:
                with_db_retry(lambda: fail_trial(served.study, trial_id, reason, retry=False))
            except Exception as inner:
                log.warning("could not fail trial %d: %s", trial.number, inner)
            self._setup_failed(config, reason)
        finally:
            self._running.pop(slot.plan.index, None)

    # -- studies that keep failing -----------------------------------------------------------

    def _family_allowed(self, config: StudyConfig) -> bool:
        """Whether this worker may import the study's own modules (``--allow-module``)."""
        from hpo.catalog import ALLOWED_MODULES_ENV, first_disallowed

        refused = first_disallowed(config.user_targets())
        if refused is None:
            return True
        self._warn_once(
            config.name,
            f"its {refused[0]} {refused[1]!r} is not allowed here (${ALLOWED_MODULES_ENV})",
        )
        return False

    def _warn_once(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("study %s skipped: %s", name, mask_url(message))

    def _setup_failed(self, config: StudyConfig, reason: str) -> None:
        """Count a set-up failure of ``config``'s study; at ``broken_after`` in a row it is
        marked broken (and skipped by every worker) with ``reason``."""
        reason = mask_url(reason)
        log.warning("study %s: set-up failed: %s", config.name, reason)
        with self._lock:
            self._served.pop(config.name, None)  # a fresh sampler and study the next time
        try:
            broken = with_db_retry(
                lambda: record_setup_failure(
                    self.storage, config.name, reason, self.options.broken_after
                ),
                what="recording a set-up failure",
            )
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("study %s: could not record its set-up failure: %s", config.name, exc)
            return
        self._setup_failures[config.name] = None
        if broken:
            log.error("study %s is broken and skipped from now on: %s", config.name, reason)

    def _setup_passed(self, config: StudyConfig) -> None:
        if self._setup_failures.get(config.name) == 0:
            return
        try:
            with_db_retry(lambda: clear_setup_failures(self.storage, config.name))
            self._setup_failures[config.name] = 0
        except Exception as exc:  # only a count: the next trial tries again
            log.warning("study %s: could not reset its set-up failures: %s", config.name, exc)

    def _record(self, served: _Served, trial: Any, result: TrialResult) -> None:
        record_result(self.storage, self._lock, served.study, served.config, trial, result)

    def _finalize_if_done(self, config: StudyConfig, slot: Slot | None = None) -> None:
        served = self._served.get(config.name)
        finalize_if_done(
            self.storage,
            self.options.storage_url,
            self._finalize_lock,
            config,
            served.study if served is not None else None,
            slot.process if slot is not None else None,
        )


def _has_study_timeout(config: StudyConfig) -> bool:
    """Whether the study has a wall-clock budget; False for a space that does not validate
    here (a family this machine may not import): this worker never serves it."""
    try:
        return bool(config.spec().budget.study_timeout)
    except HpoError:
        return False
