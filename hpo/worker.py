"""A worker: takes trials of a study from the shared store and runs each in a trial process.

The worker process itself never imports Keras. Trials run in a child process that is started
once and reused (TensorFlow's import and the dataset load are paid once), replaced after
``max_trials_per_process`` trials so memory cannot creep, and replaced at once when a trial
kills it (segfault, out of memory, kill -9): that trial is recorded FAIL with the reason and
the worker goes on.

A worker has one or more slots (:mod:`hpo.slots`): one thread per slot claims a trial, runs it
in the slot's own trial process and records the result, so a worker with ``--gpus 0,1
--trials-per-gpu 4`` runs eight trials at once. The slots share the worker's heartbeat and
reaper threads, its stop request and its ``max_trials``.
"""

from __future__ import annotations

import functools
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

from hpo._retry import is_transient, with_db_retry
from hpo.runner import FinalizeTask, TrialResult, TrialTask
from hpo.slots import SlotPlan, configure_backend, plan_slots
from hpo.storage import mask_url, open_storage
from hpo.studies import (
    BROKEN_AFTER,
    CONFIG_ATTR,
    FAIL_REASON_ATTR,
    SETUP_FAILURES_ATTR,
    StudyConfig,
    StudyError,
    claim_trial,
    clear_setup_failures,
    describe_unread_params,
    fail_trial,
    load_config,
    load_config_and_state,
    load_study,
    note_unread_params,
    reap_stale_trials,
    reap_unstarted_trials,
    record_setup_failure,
    requeue,
    state_from_attrs,
)

log = logging.getLogger("hpo.worker")
WORKER_ATTR = "hpo:worker"
GPU_ATTR = "hpo:gpu"
FINALIZED_ATTR = "hpo:finalized"
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
STOPPED_REASON = "the worker was stopped (SIGTERM/SIGINT) before the trial finished; requeued"


def _child_main(
    conn: Connection,
    threads: int | None,
    env: dict[str, str] | None = None,
    worker_pid: int | None = None,
) -> None:
    """Entry point of a trial process: run tasks from ``conn`` until it closes.

    ``env`` (the slot's GPU, memory share, Keras backend) is set before Keras is imported.
    """
    _die_with_parent(worker_pid)
    os.environ.update(env or {})
    if threads:
        # Set before TensorFlow is imported so each trial process keeps to its share of cores.
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS_THREADS"):
            os.environ[var] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides what Ctrl-C means
    # Each trial builds new models, so TensorFlow's "retracing" warnings are expected noise.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    configure_backend()
    from hpo.runner import TrialRunner, warm_up

    # The worker starts this process before it claims a trial: these imports (seconds) overlap
    # with the claim instead of delaying the first trial.
    warm_up()
    runner = TrialRunner()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break
        if isinstance(task, FinalizeTask):
            conn.send(("finalized", runner.finalize(task)))
            continue
        try:
            result = runner.run(task, lambda kind, value: conn.send((kind, value)))
        except Exception as exc:  # the study's set-up (its config, MLflow): not this process
            reason = mask_url(f"set-up failed: {type(exc).__name__}: {exc}")
            result = TrialResult(state="FAIL", reason=reason, setup_failed=True)
        conn.send(("result", result))
    # Every result was sent and every write committed. Tearing down an interpreter that holds
    # TensorFlow takes seconds (and its threads have hung at exit), for nothing to clean up.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _die_with_parent(worker_pid: int | None = None) -> None:
    """Ask Linux to kill this trial process when its worker dies (kill -9 included).

    A worker killed while this process was still starting died before the request was made:
    then this process has another parent already and exits at once.
    """
    if sys.platform != "linux":
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass
    if worker_pid is not None and os.getppid() != worker_pid:
        os._exit(1)


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

    def __init__(
        self, threads: int | None = None, max_trials: int = 25, env: dict[str, str] | None = None
    ) -> None:
        self.threads = threads
        self.max_trials = max_trials
        self.env = dict(env or {})
        self._proc: Any = None
        self._conn: Connection | None = None
        self._served = 0

    def start(self) -> None:
        """Start the process now (unless it runs), so that it imports Keras ahead of a trial."""
        if self._proc is None or not self._proc.is_alive():
            self.close()
            self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child_main, args=(child, self.threads, self.env, os.getpid()), daemon=True
        )
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
                    if self._served >= self.max_trials:
                        # Replace the spent process now: the new one imports while the
                        # worker records this result and claims the next trial.
                        self.close()
                        self._start()
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

    def finalize(self, task: FinalizeTask, timeout: float = 300.0) -> str | None:
        """End the study's MLflow run in this process, which has run trials, so MLflow and
        matplotlib are loaded here already (seconds the worker would pay to import them).

        Returns None when done, else why not (no warm process, it died, or the error).
        """
        if self._proc is None or self._conn is None or self._served == 0:
            return "no trial process that has run a trial"
        try:
            self._conn.send(task)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._conn.poll(0.5):
                    kind, value = self._conn.recv()
                    if kind == "finalized":
                        return value  # type: ignore[no-any-return]
                elif not self._proc.is_alive():
                    break
        except (EOFError, OSError):
            pass
        self.close(kill=True)
        return "the trial process did not answer"

    def close(self, kill: bool = False) -> None:
        if self._proc is None:
            return
        kill = kill or self._served == 0  # started ahead and never used: nothing to finish
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
    """How a worker runs. Without ``study`` it serves every active study with budget left.

    ``gpus`` and ``trials_per_gpu`` make ``len(gpus) * trials_per_gpu`` slots (see
    :mod:`hpo.slots`); without ``gpus`` the worker has one slot. ``backend`` sets
    ``KERAS_BACKEND`` for the trial processes; ``compile_cache`` is the JAX compile cache of
    GPU slots (None: ``~/.cache/hpo/jax``, ``""``: off).

    ``settle_poll_interval``: how often a worker that will exit when idle looks again while
    the last trials run elsewhere (they may fail and be requeued; else the study is done and
    the worker exits). ``start_gate``: called once the trial processes have started and
    before the store is opened; False means the study will not run, and the worker exits
    having written nothing (``hpo run`` starts its workers while it still checks the data and
    sets up MLflow, so that their imports overlap).
    """

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
    gpus: list[str] | None = None
    trials_per_gpu: int = 1
    backend: str | None = None
    compile_cache: str | None = None
    settle_poll_interval: float = 1.0
    start_gate: Callable[[], bool] | None = None
    broken_after: int = BROKEN_AFTER


@dataclass
class _Served:
    config: StudyConfig
    study: Any


@dataclass
class Slot:
    """One trial at a time on one GPU (or none): its plan and its reusable trial process."""

    plan: SlotPlan
    process: TrialProcess


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
        if self.options.start_gate is not None and not self.options.start_gate():
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
                    trial = claim_trial(served.study, config.n_trials)
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
        """No active study this worker serves has a running or queued trial."""
        from optuna.trial import TrialState

        for config in self._active_configs():
            study_id = self.storage.get_study_id_from_name(config.name)
            states = (TrialState.RUNNING, TrialState.WAITING)
            if self.storage.get_all_trials(study_id, deepcopy=False, states=states):
                return False
        return True

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
            result = slot.process.run(
                task,
                timeout=config.spec().budget.trial_timeout,
                stop_requested=self._stop.is_set,
                stop_grace=self.options.stop_grace,
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
                with_db_retry(
                    lambda: fail_trial(served.study, trial_id, reason, retry=False, max_retries=0)
                )
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
        def tell() -> None:
            with self._lock:  # the study and its sampler are shared by the slots
                self._tell(served, trial, result)

        with_db_retry(tell, what="recording a result")

    def _finalize_if_done(self, config: StudyConfig, slot: Slot | None = None) -> None:
        """The worker that records a study's last trial ends its MLflow study run with plots.

        The slot's trial process does it when it can (it has MLflow and matplotlib loaded);
        else this process does.
        """
        from hpo.studies import is_done, study_status
        from hpo.study_report import finalize_study

        storage = self.storage

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
            served = self._served.get(config.name)
            if served is not None and not is_done(served.study, config.n_trials):
                return  # the cheap check (cached trials); study_status reads every trial
            with self._finalize_lock:  # two slots may record a study's last trials at once
                if not with_db_retry(claim_finalization, what="checking the study's end"):
                    return
                latest = with_db_retry(lambda: load_config(storage, config.name))
                if slot is not None:
                    task = FinalizeTask(self.options.storage_url, latest.to_json())
                    why = slot.process.finalize(task)
                    if why is None:
                        return
                    log.info("finalizing study %s here: %s", config.name, why)
                with_db_retry(lambda: finalize_study(storage, latest), what="finalizing the study")
        except Exception as exc:  # reporting must never stop a worker
            log.warning("could not finalize study %s: %s", config.name, exc)

    def _tell(self, served: _Served, trial: Any, result: TrialResult) -> None:
        from optuna.trial import TrialState

        study, config = served.study, served.config
        # A reaper (or an earlier attempt of this call) may have recorded the trial already:
        # ``skip_if_finished`` makes tell check that with the one read it does anyway.
        if result.state == "FAIL":
            if study._storage.get_trial(trial._trial_id).state.is_finished():
                return
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

    @staticmethod
    def _end_orphan_run(config: StudyConfig, run_id: str, reason: str) -> None:
        """End the MLflow run of a trial whose process died before it could."""
        from hpo import tracking

        try:
            # Never reads the server: works while it is down and with placeholder run ids.
            tracking.end_orphan_run(config.tracking_uri or "", run_id, reason)
        except Exception as exc:
            log.warning("could not end MLflow run %s: %s", run_id, exc)
