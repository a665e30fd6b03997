"""A worker: takes trials of a study from the shared store and runs each in a trial process.

The worker process itself never imports Keras. Trials run in a child process that is started
once and reused (TensorFlow's import and the dataset load are paid once), replaced after
``max_trials_per_process`` trials so memory cannot creep, and replaced at once when a trial
kills it (segfault, out of memory, kill -9): that trial is recorded FAIL with the reason and
the worker goes on.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from hpo._retry import with_db_retry
from hpo.runner import TrialResult, TrialTask
from hpo.storage import mask_url, open_storage
from hpo.studies import (
    CONFIG_ATTR,
    FAIL_REASON_ATTR,
    StudyConfig,
    claim_trial,
    fail_trial,
    get_study_state,
    load_config,
    load_study,
    reap_stale_trials,
    requeue,
)

log = logging.getLogger("hpo.worker")
WORKER_ATTR = "hpo:worker"
FINALIZED_ATTR = "hpo:finalized"
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
STOPPED_REASON = "the worker was stopped (SIGTERM/SIGINT) before the trial finished; requeued"


def _child_main(conn: Connection, threads: int | None) -> None:
    """Entry point of a trial process: run tasks from ``conn`` until it closes."""
    if threads:
        # Set before TensorFlow is imported so each trial process keeps to its share of cores.
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS_THREADS"):
            os.environ[var] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides what Ctrl-C means
    # Each trial builds new models, so TensorFlow's "retracing" warnings are expected noise.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from hpo.runner import TrialRunner

    runner = TrialRunner()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        result = runner.run(task, lambda kind, value: conn.send((kind, value)))
        conn.send(("result", result))


def _die_with_parent() -> None:
    """Ask Linux to kill this trial process when its worker dies (kill -9 included)."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the trial process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the trial process was killed by {name}"
    return f"the trial process exited with code {code}"


class TrialProcess:
    """A reusable child process that runs trials (see the module docstring)."""

    def __init__(self, threads: int | None = None, max_trials: int = 25) -> None:
        self.threads = threads
        self.max_trials = max_trials
        self._proc: Any = None
        self._conn: Connection | None = None
        self._served = 0

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child, self.threads), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self._served = 0

    def run(
        self,
        task: TrialTask,
        timeout: float | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
        stop_grace: float = 20.0,
    ) -> TrialResult:
        """Run ``task`` in the trial process and wait for its result.

        When ``stop_requested()`` turns true (SIGTERM), the trial gets ``stop_grace`` seconds
        to finish; then its process is killed and the result says the worker stopped.
        """
        if self._proc is None or not self._proc.is_alive() or self._served >= self.max_trials:
            self.close()
            self._start()
        assert self._conn is not None
        self._served += 1
        self._conn.send(task)
        run_id: str | None = None
        deadline = time.monotonic() + timeout if timeout else None
        stop_deadline: float | None = None
        while True:
            try:
                ready = self._conn.poll(0.5)
                if ready:
                    kind, value = self._conn.recv()
                    if kind == "started":
                        run_id = value
                        continue
                    result: TrialResult = value
                    return result
            except (EOFError, OSError):
                ready = False
            if not ready and not self._proc.is_alive():
                code = self._proc.exitcode
                self.close()
                return TrialResult(state="FAIL", reason=_describe_exit(code), run_id=run_id)
            if deadline is not None and time.monotonic() > deadline:
                self.close(kill=True)
                return TrialResult(
                    state="FAIL", reason=f"timed out after {timeout:g} s", run_id=run_id
                )
            if stop_requested():
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + stop_grace
                elif time.monotonic() > stop_deadline:
                    self.close(kill=True)
                    return TrialResult(state="FAIL", reason=STOPPED_REASON, run_id=run_id)

    def close(self, kill: bool = False) -> None:
        if self._proc is None:
            return
        if self._conn is not None:
            try:
                if not kill and self._proc.is_alive():
                    self._conn.send(None)
            except OSError:
                pass
            self._conn.close()
        self._proc.join(timeout=0 if kill else 10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=10)
        self._proc = None
        self._conn = None


@dataclass
class WorkerOptions:
    """How a worker runs. Without ``study`` it serves every active study with budget left."""

    storage_url: str
    study: str | None = None
    threads: int | None = None
    worker_index: int | None = None
    max_trials_per_process: int = 25
    max_trials: int | None = None
    heartbeat_interval: int = 10
    grace_period: int = 30
    stop_grace: float = 20.0
    poll_interval: float = 5.0
    exit_when_idle: bool | None = None  # default: exit when serving one named study


@dataclass
class _Served:
    config: StudyConfig
    study: Any


class Worker:
    """Takes trials from the store and runs them, one at a time, in its trial process.

    A worker with ``study`` set runs that study's trials until its budget is used up. Without
    it, the worker serves every active study that has budget left, highest ``priority`` first
    and then oldest first, and waits for new studies when there is nothing to do, so operators
    start workers once and users create studies at any time (``hpo study create``).

    While it runs, a heartbeat thread marks its current trial alive and a reaper thread fails
    (and requeues, up to the study's ``max_retries``) trials whose worker stopped sending
    heartbeats. SIGTERM or SIGINT: no new trial is taken; the running one gets ``stop_grace``
    seconds to finish, else it is failed and requeued; then the worker exits.

    Example (a sketch; see ``hpo worker --help``):
        >>> # Worker(WorkerOptions("sqlite:///hpo.db", "image_cnn")).run()
    """

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.storage = open_storage(
            options.storage_url, options.heartbeat_interval, options.grace_period
        )
        self.process = TrialProcess(options.threads, options.max_trials_per_process)
        self._served: dict[str, _Served] = {}
        self._stop = threading.Event()
        self._current_trial_id: int | None = None

    # -- signals ---------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        if not self._stop.is_set():
            log.info(
                "stop requested: finishing the running trial (up to %.0f s)",
                self.options.stop_grace,
            )
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- background threads ----------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.options.heartbeat_interval):
            trial_id = self._current_trial_id
            if trial_id is not None:
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
            reaped.extend(numbers)
        return reaped

    # -- choosing work ---------------------------------------------------------------------

    def _candidate_configs(self) -> list[StudyConfig]:
        if self.options.study:
            return [load_config(self.storage, self.options.study)]
        configs = []
        for frozen in self.storage.get_all_studies():
            raw = frozen.system_attrs.get(CONFIG_ATTR)
            if raw is not None:
                configs.append(StudyConfig.from_json(raw))
        configs.sort(key=lambda c: (-c.priority, c.created_at))
        return configs

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
            )
            pruner = create_pruner(config.pruner, spec.budget)
            served = _Served(
                config, load_study(self.storage, config, sampler=sampler, pruner=pruner)
            )
            self._served[config.name] = served
        # The budget may have been raised with --resume --trials: read the latest config.
        served.config = config
        return served

    def _claim(self) -> tuple[_Served, Any] | None:
        for config in self._candidate_configs():
            if get_study_state(self.storage, config.name) != "active":
                continue
            served = self._served_study(config)
            trial = claim_trial(served.study, config.n_trials)
            if trial is not None:
                return served, trial
        return None

    def _settled(self) -> bool:
        """No active study this worker serves has a running or queued trial."""
        from optuna.trial import TrialState

        for config in self._candidate_configs():
            if get_study_state(self.storage, config.name) != "active":
                continue
            study_id = self.storage.get_study_id_from_name(config.name)
            states = (TrialState.RUNNING, TrialState.WAITING)
            if self.storage.get_all_trials(study_id, deepcopy=False, states=states):
                return False
        return True

    def _sampler_seed(self, config: StudyConfig) -> int | None:
        from hpo.engines._names import ALGORITHMS

        if config.seed is None or ALGORITHMS[config.algorithm].engine == "hyperopt":
            # hyperopt's proposals are seeded per trial number: the same in every worker.
            return config.seed
        # Workers with the same seed would propose the same parameters; worker 0 keeps the
        # study's seed so that a one-worker study is reproducible.
        index = self.options.worker_index
        return config.seed + (index if index is not None else os.getpid())

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Run trials until there is no work (or a stop); returns how many this worker ran."""
        exit_when_idle = self.options.exit_when_idle
        if exit_when_idle is None:
            exit_when_idle = self.options.study is not None
        if self.options.study:
            load_config(self.storage, self.options.study)  # a clear error before anything
        threads = [
            threading.Thread(target=self._heartbeat_loop, daemon=True, name="heartbeat"),
            threading.Thread(target=self._reaper_loop, daemon=True, name="reaper"),
        ]
        for t in threads:
            t.start()
        ran = 0
        try:
            while not self._stop.is_set():
                if self.options.max_trials is not None and ran >= self.options.max_trials:
                    break
                claimed = with_db_retry(self._claim, what="claiming a trial")
                if claimed is None:
                    # Trials still running elsewhere may yet fail and be requeued (a dead
                    # worker's), so a worker only leaves once its studies have settled.
                    if exit_when_idle and with_db_retry(self._settled, what="reading status"):
                        break
                    self._stop.wait(
                        min(self.options.poll_interval, float(self.options.heartbeat_interval))
                    )
                    continue
                served, trial = claimed
                ran += 1
                self._run_trial(served, trial)
        finally:
            self._stop.set()
            self.process.close()
        return ran

    def _run_trial(self, served: _Served, trial: Any) -> None:
        from hpo.spaces import suggest

        config = served.config
        self._current_trial_id = trial._trial_id
        self.storage.record_heartbeat(trial._trial_id)
        # Which worker runs a trial: for operators reading the store after a failure.
        self.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, WORKER_ID)
        try:
            try:
                params = suggest(trial, config.spec().space)
            except Exception as exc:  # a sampler bug must not stop the worker
                self._tell(served, trial, TrialResult("FAIL", reason=f"sampling failed: {exc}"))
                return
            log.info("study %s trial %d: %s", config.name, trial.number, params)
            task = TrialTask(
                self.options.storage_url, config.to_json(), trial._trial_id, trial.number, params
            )
            result = self.process.run(
                task,
                timeout=config.spec().budget.trial_timeout,
                stop_requested=self._stop.is_set,
                stop_grace=self.options.stop_grace,
            )
            with_db_retry(lambda: self._tell(served, trial, result), what="recording a result")
            self._finalize_if_done(served.config)
        finally:
            self._current_trial_id = None

    def _finalize_if_done(self, config: StudyConfig) -> None:
        """The worker that records a study's last trial ends its MLflow study run with plots."""
        from hpo.studies import is_done, study_status
        from hpo.study_report import finalize_study

        try:
            served = self._served.get(config.name)
            if served is not None and not is_done(served.study, config.n_trials):
                return  # the cheap check (cached trials); study_status reads every trial
            if not study_status(self.storage, config.name).done:
                return
            study_id = self.storage.get_study_id_from_name(config.name)
            if self.storage.get_study_system_attrs(study_id).get(FINALIZED_ATTR):
                return
            self.storage.set_study_system_attr(study_id, FINALIZED_ATTR, WORKER_ID)
            finalize_study(self.storage, load_config(self.storage, config.name))
        except Exception as exc:  # reporting must never stop a worker
            log.warning("could not finalize study %s: %s", config.name, exc)

    def _tell(self, served: _Served, trial: Any, result: TrialResult) -> None:
        from optuna.trial import TrialState

        study, config = served.study, served.config
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            return  # a reaper (or an earlier attempt of this call) already recorded it
        if result.state == "FAIL":
            reason = mask_url(result.reason or "unknown error")
            stopped = result.reason == STOPPED_REASON
            log.warning("trial %d failed: %s", trial.number, reason)
            if result.run_id and config.tracking_uri:
                self._end_orphan_run(config, result.run_id, reason)
            if stopped:
                # Interrupted by our own shutdown, not the trial's fault: always requeue.
                if fail_trial(study, trial._trial_id, reason, retry=False, max_retries=0):
                    requeue(study, study._storage.get_trial(trial._trial_id))
            else:
                self.storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
                study.tell(trial, state=TrialState.FAIL)
        elif result.state == "PRUNED":
            log.info("trial %d pruned", trial.number)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            log.info("trial %d: %s", trial.number, result.values)
            study.tell(trial, values=result.values)

    @staticmethod
    def _end_orphan_run(config: StudyConfig, run_id: str, reason: str) -> None:
        """End the MLflow run of a trial whose process died before it could."""
        from hpo import tracking

        try:
            # Never reads the server: works while it is down and with placeholder run ids.
            tracking.end_orphan_run(config.tracking_uri or "", run_id, reason)
        except Exception as exc:
            log.warning("could not end MLflow run %s: %s", run_id, exc)
