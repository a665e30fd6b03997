"""Files a trial stores besides its model: which prediction rows a language model keeps, and
the learning-curve plot."""

from __future__ import annotations

import io

import numpy as np

# Language models store next-token distributions of at most this many floats per split
# (16 MB of float32), and of no fewer than LM_MIN_WINDOWS windows.
LM_STORED_FLOATS = 4_000_000
LM_MIN_WINDOWS = 500
LM_ROWS_SEED = 0


def stored_rows(n: int, vocabulary: int | None, task: str) -> np.ndarray | None:
    """Which windows of a split of ``n`` a language model stores predictions for (None: all).

    At most ``max(LM_MIN_WINDOWS, LM_STORED_FLOATS // vocabulary)`` windows, chosen with a
    fixed seed from ``n`` alone, so every trial of a study stores the same windows and their
    predictions still line up for an ensemble. Other tasks store every example.

    Example:
        >>> stored_rows(10, 5, "classification") is None
        True
        >>> len(stored_rows(100_000, 2000, "language_model"))
        2000
    """
    if task != "language_model" or not vocabulary:
        return None
    cap = max(LM_MIN_WINDOWS, LM_STORED_FLOATS // vocabulary)
    if n <= cap:
        return None
    return np.sort(np.random.default_rng(LM_ROWS_SEED).choice(n, size=cap, replace=False))


def learning_curve_png(history: list[dict[str, float]]) -> bytes:
    """A PNG plot of every logged metric against the epoch (loss and the rest side by side).

    Drawn on a bare :class:`~matplotlib.figure.Figure` (no pyplot state) with fixed margins:
    ``tight_layout`` drew the figure twice and cost 40% of the plot, which every trial pays.
    """
    from matplotlib.figure import Figure

    keys = sorted({k for h in history for k in h})
    loss_keys = [k for k in keys if "loss" in k]
    other_keys = [k for k in keys if "loss" not in k]
    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.92, wspace=0.22)
    axes = fig.subplots(1, 2)
    epochs = list(range(1, len(history) + 1))
    for ax, group, title in ((axes[0], loss_keys, "loss"), (axes[1], other_keys, "metrics")):
        for k in group:
            ax.plot(epochs, [h.get(k, float("nan")) for h in history], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if group:
            ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()
