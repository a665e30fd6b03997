"""Which epoch a complete trial keeps (hpo.workers.best_epoch), over generated curves.

Any curve of objective values, NaN and infinities included, in either direction: the kept
epoch is the first of the best finite values (the last epoch when none is finite), and the
model holds exactly the weights it had at the end of that epoch. A resumed training keeps an
earlier best epoch only when its checkpoint stored that epoch's weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hpo.workers.best_epoch import BestEpoch

values = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
curves = st.lists(values, min_size=1, max_size=12)
directions = st.sampled_from(["maximize", "minimize"])


class Model:
    """Stands for a Keras model: weights that training changes, handed over as copies."""

    def __init__(self) -> None:
        self.w = [np.zeros(3), np.zeros((2, 2))]

    def train(self, epoch: int) -> None:
        self.w[0][:] = epoch  # in place, as training updates variables
        self.w[1][:] = -epoch

    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.w]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        for mine, theirs in zip(self.w, weights, strict=True):
            mine[:] = theirs


def expected(curve: list[float], direction: str) -> int:
    finite = [(v, e) for e, v in enumerate(curve, 1) if math.isfinite(v)]
    if not finite:
        return len(curve)
    sign = -1.0 if direction == "maximize" else 1.0
    return min(finite, key=lambda p: (sign * p[0], p[1]))[1]


def train(kept: BestEpoch, model: Model, curve: list[float], start: int = 0) -> None:
    for epoch in range(start + 1, len(curve) + 1):
        model.train(epoch)
        kept.update(epoch, {"val_x": curve[epoch - 1]}, last=epoch == len(curve))


@settings(max_examples=300, deadline=None)
@given(curve=curves, direction=directions)
def test_the_kept_epoch_is_the_first_best_and_the_model_holds_its_weights(
    curve: list[float], direction: str
) -> None:
    model = Model()
    kept = BestEpoch(model, "val_x", direction)
    train(kept, model, curve)
    epoch = kept.restore(len(curve))
    assert epoch == expected(curve, direction)
    assert (model.w[0] == epoch).all() and (model.w[1] == -epoch).all()


@settings(max_examples=200, deadline=None)
@given(curve=curves, direction=directions, data=st.data())
def test_a_resumed_training_keeps_what_its_checkpoint_allows(
    curve: list[float], direction: str, data: Any
) -> None:
    stop = data.draw(st.integers(1, len(curve)), label="checkpoint epoch")
    first = Model()
    before = BestEpoch(first, "val_x", direction)
    train(before, first, curve[:stop])
    history = [{"val_x": v} for v in curve[:stop]]
    stored = before.earlier(stop)  # what the checkpoint stores beside the epoch's own weights

    # With the stored weights: as if training had never stopped.
    model = Model()
    model.train(stop)  # the checkpoint's own weights
    kept = BestEpoch(model, "val_x", direction)
    kept.resume(history, *(stored or (None, None)))
    train(kept, model, curve, start=stop)
    epoch = kept.restore(len(curve))
    assert epoch == expected(curve, direction)
    assert (model.w[0] == epoch).all()

    # Without them (an older or torn checkpoint): the best from the checkpoint's epoch on.
    model = Model()
    model.train(stop)
    kept = BestEpoch(model, "val_x", direction)
    kept.resume(history, None, None)
    train(kept, model, curve, start=stop)
    epoch = kept.restore(len(curve))
    assert epoch == stop - 1 + expected(curve[stop - 1 :], direction)
    assert (model.w[0] == epoch).all()


def test_a_model_that_cannot_hand_over_its_weights_keeps_its_last_epoch() -> None:
    class Opaque(Model):
        def get_weights(self) -> list[np.ndarray]:
            raise RuntimeError("no weights here")

    model = Opaque()
    kept = BestEpoch(model, "val_x", "maximize")
    train(kept, model, [0.9, 0.1, 0.2])
    assert kept.restore(3) == 3 and (model.w[0] == 3).all()
