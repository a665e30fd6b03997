"""The epoch a complete trial keeps: its best by the objective, not merely its last.

A trial's value, the model it saves and the validation predictions that ensembles are fitted
on all come from one epoch. With ``budget.restore_best_epoch`` (the default) that is the epoch
whose objective was best, the first of equals, as ``EarlyStopping(restore_best_weights=True)``,
``ModelCheckpoint(save_best_only=True)`` and Keras Tuner keep it: a short trial often ends an
epoch below its best, and ranking it by its last epoch both misjudges it and throws away the
better model it had. The weights are copied (to host memory) only when an epoch improves on the
best so far, and put back once training ends. Several objectives have no single best epoch: such
trials keep their last.

Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    >>> kept = BestEpoch(model, "val_accuracy", "maximize")
    >>> for epoch, value in enumerate([0.5, 0.8, 0.8, 0.7], 1):
    ...     _ = model.layers[0].bias.assign([float(epoch)])  # stands for training
    ...     kept.update(epoch, {"val_accuracy": value})
    >>> kept.restore(last_epoch=4), float(model.layers[0].bias.numpy()[0])
    (2, 2.0)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger("hpo.runner")


class BestEpoch:
    """Tracks the best epoch of one training by ``metric`` and copies its model's weights."""

    def __init__(self, model: Any, metric: str, direction: str) -> None:
        self.model = model
        self.metric = metric
        self.sign = 1.0 if direction == "maximize" else -1.0
        self.epoch: int | None = None
        self.value: float | None = None
        self.weights: list[np.ndarray] | None = None
        self.working = True

    def better(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (a tie keeps the earlier epoch)."""
        if not math.isfinite(value):
            return False
        return self.value is None or self.sign * value > self.sign * self.value

    def update(self, epoch: int, logs: dict[str, float], *, last: bool = False) -> None:
        """Take this epoch (its logs, its model's current weights) if it is the best so far;
        ``last``: training ends with it, so the model keeps its weights and none are copied."""
        value = logs.get(self.metric)
        if not self.working or value is None or not self.better(float(value)):
            return
        if last:
            self.epoch, self.value, self.weights = epoch, float(value), None
            return
        try:
            # get_weights returns copies: training goes on changing the variables.
            weights = [np.array(w, copy=True) for w in self.model.get_weights()]
        except Exception as exc:  # a model that cannot hand its weights over keeps its last
            log.warning("the best epoch cannot be kept (%s): the trial keeps its last", exc)
            self.working = False
            self.epoch = self.value = self.weights = None
            return
        self.epoch, self.value, self.weights = epoch, float(value), weights

    def resume(
        self,
        history: list[dict[str, float]],
        best_epoch: int | None,
        best_weights: list[np.ndarray] | None,
    ) -> None:
        """Continue from a checkpoint of ``len(history)`` epochs (the model holds the last).

        Its best epoch's weights when the checkpoint stored them; without them, the epochs
        before the checkpoint's own cannot be kept, so the search starts at that epoch.
        """
        if best_epoch is not None and best_weights is not None and 1 <= best_epoch <= len(history):
            value = history[best_epoch - 1].get(self.metric)
            if value is not None and math.isfinite(value):
                self.epoch, self.value, self.weights = best_epoch, float(value), best_weights
                return
        if history:
            self.update(len(history), history[-1])

    def earlier(self, last_epoch: int) -> tuple[int, list[np.ndarray]] | None:
        """The best epoch and its weights when it came before ``last_epoch`` (whose weights the
        model holds): what a checkpoint stores beside its own, what :meth:`restore` puts back."""
        if self.epoch is None or self.epoch >= last_epoch or self.weights is None:
            return None
        return self.epoch, self.weights

    def restore(self, last_epoch: int) -> int:
        """Put the best epoch's weights back into the model; the epoch the model now holds."""
        best = self.earlier(last_epoch)
        if best is None:
            return last_epoch
        try:
            self.model.set_weights(best[1])
        except Exception as exc:
            log.warning("the best epoch's weights cannot be restored (%s): keeping the last", exc)
            return last_epoch
        return best[0]
