"""The Keras callback a trial trains with: each epoch logged and reported (pruners), training
stopped on a non-finite loss or a prune; and the family's files after an epoch."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from hpo import tracking
from hpo.datasets import Dataset
from hpo.spaces import Params

log = logging.getLogger("hpo.runner")


class EpochCallback:
    """Keras callback: logs every epoch to MLflow, reports the objective, stops on NaN/prune."""

    def __init__(
        self,
        on_epoch: Callable[[int, dict[str, float], float], bool],
    ) -> None:
        import keras

        outer = self

        class _Callback(keras.callbacks.Callback):  # type: ignore[misc]
            # A callback with a batch-end hook makes Keras wait for every step's loss before
            # it dispatches the next step, unless it is declared safe to run on Keras's
            # callback thread (JAX and PyTorch backends; TensorFlow always runs callbacks
            # inline). The NaN check is: on that thread it only records the failure, and the
            # next batch-begin hook, which Keras always calls inline, stops training (setting
            # stop_training from the callback thread races with the JAX trainer's state:
            # "Buffer has been deleted or donated"). So steps stay queued on the GPU and a NaN
            # still stops training a few steps after it.
            async_safe = True

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                outer._t0 = time.perf_counter()

            def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
                if outer.failure:
                    self.model.stop_training = True

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                loss = (logs or {}).get("loss")
                if loss is not None and not outer.failure and not math.isfinite(float(loss)):
                    outer.failure = f"loss became {float(loss)} during epoch {outer.epochs + 1}"

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                if outer.failure:  # a NaN in the epoch's last steps: no next batch-begin
                    self.model.stop_training = True
                    return
                seconds = time.perf_counter() - outer._t0
                values = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
                outer.epochs = epoch + 1
                outer.epoch_seconds.append(seconds)
                outer.history.append(values)
                bad = [k for k, v in values.items() if not math.isfinite(v) and "loss" in k]
                if bad:
                    outer.failure = f"{bad[0]} is {values[bad[0]]} after epoch {epoch + 1}"
                    self.model.stop_training = True
                    return
                if on_epoch(epoch + 1, values, seconds):
                    outer.pruned = True
                    self.model.stop_training = True

        self.keras_callback = _Callback()
        self._t0 = 0.0
        self.epochs = 0
        self.epoch_seconds: list[float] = []
        self.history: list[dict[str, float]] = []
        self.failure: str | None = None
        self.pruned = False


def log_epoch_artifacts(
    mlflow: Any,
    run_id: str,
    family: Any,
    model: Any,
    hp: Params,
    data: Dataset,
    epoch: int,
    max_epochs: int,
) -> None:
    """The family's files of this epoch (text samples) into the run; they never fail a trial."""
    try:
        files = family.epoch_artifacts(model, hp, data, epoch, max_epochs)
        if files:
            tracking.log_artifact_files(mlflow, run_id, files)
    except Exception as exc:
        log.warning("epoch %d: the files of family %s failed: %s", epoch, family.name, exc)


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
