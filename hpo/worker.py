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
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from hpo.runner import TrialResult, TrialTask
from hpo.storage import mask_url, open_storage
from hpo.studies import FAIL_REASON_ATTR, StudyConfig, claim_trial, load_config, load_study

log = logging.getLogger("hpo.worker")


def _child_main(conn: Connection, threads: int | None) -> None:
    """Entry point of a trial process: run tasks from ``conn`` until it closes."""
    if threads:
        # Set before TensorFlow is imported so each trial process keeps to its share of cores.
        for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "XLA_FLAGS_THREADS"):
            os.environ[var] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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

    def run(self, task: TrialTask, timeout: float | None = None) -> TrialResult:
        if self._proc is None or not self._proc.is_alive() or self._served >= self.max_trials:
            self.close()
            self._start()
        assert self._conn is not None
        self._served += 1
        self._conn.send(task)
        run_id: str | None = None
        deadline = time.monotonic() + timeout if timeout else None
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
    storage_url: str
    study: str
    threads: int | None = None
    worker_index: int | None = None
    max_trials_per_process: int = 25
    max_trials: int | None = None


class Worker:
    """Runs trials of one study until its budget is used up.

    Example (a sketch; see ``hpo worker --help``):
        >>> # Worker(WorkerOptions("sqlite:///hpo.db", "image_cnn")).run()
    """

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.storage = open_storage(options.storage_url)
        self.process = TrialProcess(options.threads, options.max_trials_per_process)

    def _sampler_seed(self, config: StudyConfig) -> int | None:
        from hpo.engines._names import ALGORITHMS

        if config.seed is None or ALGORITHMS[config.algorithm].engine == "hyperopt":
            # hyperopt's proposals are seeded per trial number: the same in every worker.
            return config.seed
        # Workers with the same seed would propose the same parameters; worker 0 keeps the
        # study's seed so that a one-worker study is reproducible.
        index = self.options.worker_index
        return config.seed + (index if index is not None else os.getpid())

    def run(self) -> int:
        """Run trials until the study's budget is used up; returns how many this worker ran."""
        from hpo.engines import create_pruner, create_sampler
        from hpo.spaces import suggest

        config = load_config(self.storage, self.options.study)
        spec = config.spec()
        sampler = create_sampler(
            config.algorithm,
            spec.space,
            seed=self._sampler_seed(config),
            directions=spec.directions,
        )
        pruner = create_pruner(config.pruner, spec.budget)
        study = load_study(self.storage, config, sampler=sampler, pruner=pruner)
        ran = 0
        try:
            while self.options.max_trials is None or ran < self.options.max_trials:
                trial = claim_trial(study, config.n_trials)
                if trial is None:
                    break
                ran += 1
                try:
                    params = suggest(trial, spec.space)
                except Exception as exc:  # a sampler bug must not stop the worker
                    self._tell(study, trial, TrialResult("FAIL", reason=f"sampling failed: {exc}"))
                    continue
                log.info("trial %d: %s", trial.number, params)
                task = TrialTask(
                    self.options.storage_url,
                    config.to_json(),
                    trial._trial_id,
                    trial.number,
                    params,
                )
                result = self.process.run(task, timeout=spec.budget.trial_timeout)
                self._tell(study, trial, result)
        finally:
            self.process.close()
        return ran

    def _tell(self, study: Any, trial: Any, result: TrialResult) -> None:
        from optuna.trial import TrialState

        config = load_config(self.storage, self.options.study)
        if result.state == "FAIL":
            reason = mask_url(result.reason or "unknown error")
            log.warning("trial %d failed: %s", trial.number, reason)
            self.storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
            if result.run_id and config.tracking_uri:
                self._end_orphan_run(config, result.run_id, reason)
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

        c = tracking.client(config.tracking_uri or "")
        run = c.get_run(run_id)
        if run.info.status == "RUNNING":
            tracking.end_trial_run(c, run_id, "FAIL", reason)
