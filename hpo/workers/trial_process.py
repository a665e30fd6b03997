"""A trial process: the child process of a worker slot that imports Keras, loads the data once
and runs trials sent to it over a pipe, until it is replaced.

It is started once and reused (TensorFlow's import and the dataset load are paid once),
replaced after ``max_trials_per_process`` trials so memory cannot creep, and replaced at once
when a trial kills it (segfault, out of memory, kill -9): :class:`TrialProcess` reports how it
died. It dies with its worker (parent-death signal).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from hpo.storage import mask_url
from hpo.storage.deadlines import DEADLINE_REASON
from hpo.workers.slots import configure_backend
from hpo.workers.tasks import FinalizeTask, TrialResult, TrialTask

log = logging.getLogger("hpo.worker")


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
    from hpo.workers.runner import TrialRunner, warm_up

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
            conn.send(("begun", None))  # the trial's own time starts: see TrialProcess.run
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
        stop_at: float | None = None,
    ) -> TrialResult:
        """Run ``task`` in the trial process and wait for its result.

        ``timeout`` seconds after the process took the task (a new process imports Keras
        first: that start-up is not the trial's) it is killed and the trial fails ("timed out");
        at ``stop_at`` (seconds since the epoch: the study's deadline and its grace, the same
        clock on every machine) it is killed and the result says the deadline was reached.
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
        deadline: float | None = None  # set when the process takes the task
        stop_deadline: float | None = None
        while True:
            try:
                ready = self._conn.poll(0.5)
                if ready:
                    kind, value = self._conn.recv()
                    if kind == "begun":
                        deadline = time.monotonic() + timeout if timeout else None
                        continue
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
            if stop_at is not None and time.time() >= stop_at:
                self.close(kill=True)
                return TrialResult(state="FAIL", reason=DEADLINE_REASON, run_id=run_id)
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
