"""The learning-curve plot every COMPLETE trial stores."""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.image import imread

from hpo.workers._trial_files import learning_curve_png


def _pixels(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(imread(io.BytesIO(png), format="png"))


def test_curves_plot_loss_and_other_metrics_side_by_side() -> None:
    history = [
        {"loss": 2.0 / (e + 1), "val_loss": 2.2 / (e + 1), "accuracy": 0.5 + 0.05 * e}
        for e in range(5)
    ]
    image = _pixels(learning_curve_png(history))
    assert image.shape[:2] == (320, 800)  # 10 x 4 inches at 80 dpi
    left, right = image[:, :400, :3], image[:, 400:, :3]
    # Both panels draw coloured lines (not only black axes on white).
    for panel in (left, right):
        coloured = (panel.max(axis=2) - panel.min(axis=2)) > 0.3
        assert coloured.sum() > 200


def test_curves_survive_a_missing_group_and_non_finite_values() -> None:
    only_loss = [{"loss": 1.0}, {"loss": math.nan}, {"loss": 0.5}]
    image = _pixels(learning_curve_png(only_loss))
    assert image.shape[:2] == (320, 800)
    right = image[:, 420:, :3]
    assert ((right.max(axis=2) - right.min(axis=2)) > 0.3).sum() == 0  # no metrics: no lines
    assert _pixels(learning_curve_png([])).shape[:2] == (320, 800)
