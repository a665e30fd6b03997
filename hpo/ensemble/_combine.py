"""Choosing, weighting and scoring: the weights of the candidates, fitted on validation
predictions (:mod:`hpo.ensemble._weights`), and the metrics of the ensemble and its baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.ensemble._errors import EnsembleError
from hpo.ensemble._metrics import accuracy, as_probabilities, evaluate, nll
from hpo.ensemble._predictions import SPLITS, PredictionSet
from hpo.ensemble._weights import (
    METHODS,
    average_weights,
    caruana_weights,
    fit_simplex_weights,
)

SELECTION_METRICS = ("nll", "accuracy")


# What a build may be asked to select on: "auto" picks from the studies' objective.
BUILD_METRICS = ("auto", *SELECTION_METRICS)


KINDS = ("ensemble", "best_single", "average")
# How far (in accuracy) the ensemble may trail its best single candidate on validation before
# the build says so: caruana on log loss can trade accuracy for calibration.
SHORTFALL_POINTS = 1.0


@dataclass
class Combination:
    """Weights fitted on validation predictions, with the metrics of the ensemble and of its
    baselines on both splits.

    ``metrics[split][kind][metric]``: ``split`` is ``validation`` or ``test``; ``kind`` is
    ``ensemble``, ``best_single`` (the best candidate by validation objective) or ``average``
    (the uniform average of the best ``size`` candidates).
    """

    method: str
    weights: np.ndarray
    metrics: dict[str, dict[str, dict[str, float]]]
    size: int


def fit_weights(
    preds: PredictionSet,
    method: str = "caruana",
    size: int = 10,
    metric: str = "nll",
    seed: int | None = 0,
) -> np.ndarray:
    """One weight per candidate of ``preds``, fitted on VALIDATION predictions only.

    Args:
        preds: the candidates' stored predictions, best candidate first.
        method: ``caruana`` (greedy selection with replacement, ``size`` rounds),
            ``weights`` (log loss minimized over the simplex) or ``average`` (the best
            ``size`` candidates, uniformly).
        size: rounds of greedy selection, or members of the average.
        metric: what greedy selection minimizes: ``nll`` (log loss) or ``accuracy``
            (its complement; classifiers only).
        seed: seed of greedy selection's tie-breaking.
    """
    if method not in METHODS:
        raise EnsembleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if metric not in SELECTION_METRICS:
        raise EnsembleError(
            f"unknown selection metric {metric!r}; choose one of {', '.join(SELECTION_METRICS)}"
        )
    n = len(preds)
    if method == "average":
        return average_weights(n, size)
    if method == "weights":
        return fit_simplex_weights(preds.true_probs("validation"))
    if metric == "nll":
        p_true = preds.true_probs("validation")
        return caruana_weights(lambda i: p_true[:, i], n, size, nll, seed)
    if preds.task == "language_model":
        raise EnsembleError("greedy selection on accuracy is for classifiers; use --metric nll")
    y = preds.targets("validation")
    task = preds.task
    return caruana_weights(
        lambda i: preds.predictions(i, "validation"),
        n,
        size,
        lambda p: 1.0 - accuracy(as_probabilities(p, task), y),
        seed,
    )


def score(preds: PredictionSet, weights: np.ndarray, size: int) -> dict[str, Any]:
    """Metrics of the weighted ensemble, the best single candidate and the top-``size``
    average, on validation and test."""
    baselines = {
        "ensemble": weights,
        "best_single": average_weights(len(preds), 1),
        "average": average_weights(len(preds), size),
    }
    out: dict[str, Any] = {}
    for split in SPLITS:
        y = preds.targets(split)
        out[split] = {
            kind: evaluate(preds.weighted_sum(w, split), y, preds.task)
            for kind, w in baselines.items()
        }
    return out


def selection_metric(metric: str, objectives: Sequence[str], task: str) -> str:
    """The metric greedy selection minimizes: ``metric``, or for ``auto`` the studies' own.

    ``auto`` selects on accuracy when every study optimized an accuracy (``val_accuracy``,
    ``val_sparse_categorical_accuracy``, ...) and the task is a classification, since the
    ensemble then answers the question the studies asked; otherwise on log loss. Selecting on
    log loss can pick a calibrated but less accurate mix: in the Keras Tuner benchmark's small
    studies it lost up to 11 points of test accuracy against the best trial
    (``docs/benchmarks.md``, "Caruana on log loss or on accuracy").

    Example:
        >>> selection_metric("auto", ["val_accuracy"], "classification")
        'accuracy'
        >>> selection_metric("auto", ["val_accuracy", "val_loss"], "classification")
        'nll'
        >>> selection_metric("nll", ["val_accuracy"], "classification")
        'nll'
    """
    if metric not in BUILD_METRICS:
        raise EnsembleError(
            f"unknown selection metric {metric!r}; choose one of {', '.join(BUILD_METRICS)}"
        )
    if metric != "auto":
        return metric
    accuracy_objective = bool(objectives) and all("accuracy" in o for o in objectives)
    return "accuracy" if accuracy_objective and task != "language_model" else "nll"


def validation_shortfall(comb: Combination, metric: str) -> str | None:
    """Why the ensemble is less accurate on validation than its best single candidate, if it is
    by more than :data:`SHORTFALL_POINTS` points (None otherwise, and for language models).

    Example:
        >>> comb = Combination("caruana", np.array([0.0, 1.0]), {"validation": {
        ...     "ensemble": {"accuracy": 0.70}, "best_single": {"accuracy": 0.79}}}, 10)
        >>> validation_shortfall(comb, "nll")[:59]
        "the ensemble's validation accuracy (0.7000) is 9.0 points b"
    """
    val = comb.metrics.get("validation", {})
    ens = val.get("ensemble", {}).get("accuracy")
    best = val.get("best_single", {}).get("accuracy")
    if ens is None or best is None or 100 * (best - ens) <= SHORTFALL_POINTS:
        return None
    why = (
        "its weights minimize validation log loss, which can favour better-calibrated, "
        "less accurate models; --metric accuracy selects for accuracy"
        if metric == "nll" and comb.method == "caruana"
        else "compare it with the best single trial before deploying it"
    )
    return (
        f"the ensemble's validation accuracy ({ens:.4f}) is {100 * (best - ens):.1f} points "
        f"below its best single trial's ({best:.4f}): {why}"
    )


def combine(
    preds: PredictionSet,
    method: str = "caruana",
    size: int = 10,
    metric: str = "nll",
    seed: int | None = 0,
) -> Combination:
    """Fit weights (validation only) and score the ensemble and its baselines.

    Example:
        >>> comb = combine(preds, "caruana", size=5)  # doctest: +SKIP
        >>> comb.metrics["test"]["ensemble"]["accuracy"]  # doctest: +SKIP
        0.93
    """
    weights = fit_weights(preds, method, size, metric, seed)
    return Combination(method, weights, score(preds, weights, size), size)
