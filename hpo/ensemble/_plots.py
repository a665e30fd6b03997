"""The plots of an ensemble's MLflow run: member weights, metrics against the baselines."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from hpo.ensemble._candidates import (
    Candidate,
)
from hpo.ensemble._combine import Combination
from hpo.ensemble._metrics import evaluate, metric_names
from hpo.ensemble._predictions import SPLITS, PredictionSet
from hpo.ensemble._result import Member


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def weights_png(members: list[Member]) -> bytes:
    """A bar chart of the members' weights."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(members) + 1.5))
    labels = [f"{m.study} #{m.trial} ({m.family})" for m in members]
    ax.barh(range(len(members)), [m.weight for m in members])
    ax.set_yticks(range(len(members)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("weight")
    ax.set_title("ensemble weights")
    return _png(fig)


def metrics_png(preds: PredictionSet, comb: Combination, candidates: list[Candidate]) -> bytes:
    """Each member's metrics beside the ensemble's and the baselines', validation and test."""
    plt = _pyplot()
    names = metric_names(preds.task)
    members = [i for i, w in enumerate(comb.weights) if w > 0]
    rows: list[tuple[str, dict[str, dict[str, float]]]] = []
    for i in members:
        per_split = {
            split: evaluate(preds.predictions(i, split), preds.targets(split), preds.task)
            for split in SPLITS
        }
        rows.append((f"#{candidates[i].trial_number} {candidates[i].study}"[:24], per_split))
    for kind in ("best_single", "average", "ensemble"):
        rows.append((kind, {s: comb.metrics[s][kind] for s in SPLITS}))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 0.35 * len(rows) + 2))
    axes = np.atleast_1d(axes)
    y = np.arange(len(rows))
    for ax, metric in zip(axes, names, strict=True):
        for j, split in enumerate(SPLITS):
            ax.barh(y + 0.4 * j, [r[1][split][metric] for r in rows], height=0.4, label=split)
        ax.set_yticks(y + 0.2, [r[0] for r in rows])
        ax.invert_yaxis()
        ax.set_title(metric)
        ax.legend()
    return _png(fig)
