"""Checkpoints of a trial in its MLflow run, and the resume of a retried trial from them.

After an epoch other than the last that ends ``budget.checkpoint_interval`` seconds or more
after its previous checkpoint (or the start of its training; 0: after every epoch), a trial
whose family can resume (its ``fit`` takes ``initial_epoch``) stores in its MLflow run the
model's weights with the optimizer's state (``model.save_weights``) and
:data:`~hpo.tracking.artifacts.CHECKPOINT_FILE`: the epoch, the epochs' logged metrics and
seconds, numpy's and Python's random state, and which weights file holds that epoch with its
SHA-256; when the trial keeps its best epoch (:mod:`hpo.workers.best_epoch`) and that is an
earlier one, that epoch's weights too (:data:`~hpo.tracking.artifacts.CHECKPOINT_BEST_FILES`).
The weights go to the two files of
:data:`~hpo.tracking.artifacts.CHECKPOINT_WEIGHTS_FILES` in turn and the pointer is written last,
so a process killed while it writes leaves the previous checkpoint whole.

A retry (its ``failed_trial`` system attribute names the trial it repeats) reads the checkpoint
of that trial's run, which every worker can read as the tracking store is shared. No checkpoint,
an unreadable one or a hash that does not match: the retry trains from epoch 0.

Used by :mod:`hpo.workers.runner`, in trial processes: it works on the trial's Keras model.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpo import tracking
from hpo.storage._retry import with_db_retry
from hpo.storage.studies import RUN_ID_ATTR
from hpo.tracking.artifacts import (
    CHECKPOINT_BEST_FILES,
    CHECKPOINT_FILE,
    CHECKPOINT_WEIGHTS_FILES,
)

log = logging.getLogger("hpo.runner")

RESUMED_ATTR = "resumed_from_epoch"
"""The trial user attribute: the epoch whose checkpoint a retry started from."""
RESUMED_RUN_TAG = "hpo.resumed_from_run"
"""The MLflow tag of a retry's run: the run (of the failed trial) whose checkpoint it read."""


@dataclass
class Checkpoint:
    """What a trial had done by the end of ``epoch`` (its weights in ``weights``, a local file)."""

    epoch: int
    history: list[dict[str, float]]
    epoch_seconds: list[float]
    weights: Path
    run_id: str
    rng: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    best_weights: list[np.ndarray] | None = None


def can_resume(family: Any) -> bool:
    """Whether ``family.fit`` can start at a later epoch: the family says it can
    (``resumable``) and its ``fit`` takes ``initial_epoch`` (a user's own ``fit`` may not)."""
    if not getattr(family, "resumable", True):
        return False
    try:
        return "initial_epoch" in inspect.signature(family.fit).parameters
    except (TypeError, ValueError):
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "numpy": [kind, np.asarray(keys).tolist(), pos, has_gauss, gauss],
        "python": [version, list(state), gauss_next],
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    if "numpy" in rng:
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "python" in rng:
        version, state, gauss_next = rng["python"]
        random.setstate((version, tuple(state), gauss_next))


def save(
    mlflow: Any,
    run_id: str,
    model: Any,
    epoch: int,
    history: list[dict[str, float]],
    epoch_seconds: list[float],
    best: tuple[int, list[np.ndarray]] | None = None,
) -> float:
    """Store the checkpoint of ``epoch`` in run ``run_id``, with ``best`` (an earlier epoch
    and its weights) when the trial keeps one; returns the seconds it took."""
    t0 = time.perf_counter()
    slot = epoch % len(CHECKPOINT_WEIGHTS_FILES)
    name = CHECKPOINT_WEIGHTS_FILES[slot]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / name
        model.save_weights(weights)
        pointer: dict[str, Any] = {
            "epoch": epoch,
            "weights": name,
            "sha256": _sha256(weights),
            "history": history[:epoch],
            "epoch_seconds": epoch_seconds[:epoch],
            "rng": _rng_state(),
        }
        files: dict[str, Path] = {name: weights}
        if best is not None:
            best_name = CHECKPOINT_BEST_FILES[slot]
            best_path = Path(tmp) / best_name
            np.savez(best_path, allow_pickle=False, **{f"w{i}": w for i, w in enumerate(best[1])})
            pointer.update(
                best_epoch=best[0], best_weights=best_name, best_sha256=_sha256(best_path)
            )
            files[best_name] = best_path
        tracking.log_artifact_files(mlflow, run_id, files)
        tracking.log_artifact_files(mlflow, run_id, {CHECKPOINT_FILE: json.dumps(pointer).encode()})
    return time.perf_counter() - t0


def failed_run_id(storage: Any, study_name: str, trial_id: int) -> str | None:
    """The MLflow run of the trial that trial ``trial_id`` retries, if it is a retry with one."""
    trial = with_db_retry(lambda: storage.get_trial(trial_id))
    number = trial.system_attrs.get("failed_trial")
    if number is None:
        return None

    def read() -> Any:
        study_id = storage.get_study_id_from_name(study_name)
        failed_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(number))
        return storage.get_trial(failed_id).user_attrs.get(RUN_ID_ATTR)

    run_id = with_db_retry(read, what="reading the failed trial")
    return str(run_id) if run_id else None


def load(mlflow: Any, run_id: str, into: Path) -> Checkpoint | None:
    """The checkpoint stored in run ``run_id``, downloaded under ``into``; None if there is
    none or it cannot be read whole (then the trial trains from epoch 0)."""
    try:
        names = {f.path for f in mlflow.list_artifacts(run_id)}
        if CHECKPOINT_FILE not in names:
            return None
        pointer = json.loads(
            Path(mlflow.download_artifacts(run_id, CHECKPOINT_FILE, str(into))).read_text()
        )
        name = str(pointer["weights"])
        if name not in CHECKPOINT_WEIGHTS_FILES:
            raise ValueError(f"unknown weights file {name!r}")
        weights = Path(mlflow.download_artifacts(run_id, name, str(into)))
        if _sha256(weights) != pointer["sha256"]:
            raise ValueError(f"{name} does not match the checkpoint's hash")
        epoch = int(pointer["epoch"])
        history = [{str(k): float(v) for k, v in h.items()} for h in pointer["history"]]
        seconds = [float(s) for s in pointer["epoch_seconds"]]
        if epoch < 1 or len(history) != epoch or len(seconds) != epoch:
            raise ValueError(f"epoch {epoch} with {len(history)} epochs of history")
    except Exception as exc:  # a checkpoint is an optimisation: never fail the retry for it
        log.warning("checkpoint of MLflow run %s not used: %s: %s", run_id, type(exc).__name__, exc)
        return None
    found = Checkpoint(epoch, history, seconds, weights, run_id, dict(pointer.get("rng") or {}))
    found.best_epoch, found.best_weights = _load_best(mlflow, run_id, pointer, into)
    return found


def _load_best(
    mlflow: Any, run_id: str, pointer: dict[str, Any], into: Path
) -> tuple[int | None, list[np.ndarray] | None]:
    """The checkpoint's earlier best epoch and its weights; (None, None) without them (the
    resumed trial then keeps its best from the checkpoint's epoch on)."""
    name = pointer.get("best_weights")
    if name is None:
        return None, None
    try:
        if name not in CHECKPOINT_BEST_FILES:
            raise ValueError(f"unknown best-epoch file {name!r}")
        path = Path(mlflow.download_artifacts(run_id, name, str(into)))
        if _sha256(path) != pointer.get("best_sha256"):
            raise ValueError(f"{name} does not match the checkpoint's hash")
        with np.load(path, allow_pickle=False) as arrays:
            weights = [arrays[f"w{i}"] for i in range(len(arrays.files))]
        return int(pointer["best_epoch"]), weights
    except Exception as exc:
        log.warning(
            "best epoch of the checkpoint of MLflow run %s not used: %s: %s",
            run_id,
            type(exc).__name__,
            exc,
        )
        return None, None


def restore(model: Any, checkpoint: Checkpoint) -> bool:
    """Load the checkpoint's weights and optimizer state into ``model`` (built and compiled
    as the checkpointed one was) and its random state; False if they do not fit the model."""
    try:
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)  # its variables, to load into
        # The saved learning rate is the one a schedule callback (sorted_seq's cosine) had set
        # for the last epoch; such callbacks set it again each epoch from the built one.
        rate: Any = getattr(optimizer, "_learning_rate", None)
        built_rate = np.array(rate) if hasattr(rate, "assign") else None
        model.load_weights(checkpoint.weights)
        if built_rate is not None:
            rate.assign(built_rate)
    except Exception as exc:
        log.warning(
            "checkpoint of MLflow run %s does not fit the model: %s", checkpoint.run_id, exc
        )
        return False
    _set_rng_state(checkpoint.rng)
    return True


def resume(
    storage: Any,
    mlflow: Any,
    study_name: str,
    trial_id: int,
    run_id: str | None,
    model: Any,
    max_epochs: int,
) -> Checkpoint | None:
    """Load into ``model`` the checkpoint of the trial that trial ``trial_id`` retries, and
    record where it came from (trial attribute, run tag); None when it trains from epoch 0."""
    failed_run = failed_run_id(storage, study_name, trial_id)
    if not failed_run:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        found = load(mlflow, failed_run, Path(tmp))
        if found is None or found.epoch >= max_epochs or not restore(model, found):
            return None
    with_db_retry(lambda: storage.set_trial_user_attr(trial_id, RESUMED_ATTR, found.epoch))
    if run_id:
        mlflow.set_tag(run_id, RESUMED_RUN_TAG, failed_run)
    return found
