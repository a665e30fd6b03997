"""What a worker is asked to do (:class:`WorkerOptions`, the options of ``hpo worker``), and
what it keeps per slot and per study it serves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpo.storage.studies import (
    BROKEN_AFTER,
    StudyConfig,
)
from hpo.workers.slots import SlotPlan
from hpo.workers.trial_process import TrialProcess


@dataclass
class WorkerOptions:
    """How a worker runs. Without ``study`` it serves every active study with budget left.

    ``gpus`` and ``trials_per_gpu`` make ``len(gpus) * trials_per_gpu`` slots (see
    :mod:`hpo.workers.slots`); without ``gpus`` the worker has one slot. ``backend`` sets
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
