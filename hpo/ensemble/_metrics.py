"""Metrics of stored predictions: accuracy, log loss (NLL), calibration error, bits per token.

Predictions are what a trial stored in ``predictions.npz``: class probabilities of shape
``(n, classes)`` for classifiers, one sigmoid probability ``(n,)`` or ``(n, 1)`` for binary
data, and next-token distributions ``(n, ..., vocabulary)`` for language models, whose targets
are the integer tokens of shape ``(n, ...)``. Everything is computed in float64 so that a
metric recomputed from the same arrays gives the same number.

Example:
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> y = np.array([0, 1, 1])
    >>> round(accuracy(p, y), 4), round(nll(true_class_probs(p, y)), 4)
    (0.6667, 0.4149)
"""

from __future__ import annotations

import math

import numpy as np

from hpo.datasets import Task

# Probabilities are clipped to [EPS, 1] before the log, as Keras' cross-entropy does, so one
# confident mistake gives a large but finite loss.
EPS = 1e-7
ECE_BINS = 15
CLASSIFICATION_METRICS = ("accuracy", "nll", "ece")
LANGUAGE_MODEL_METRICS = ("loss", "bits_per_token")
SUPPORTED_TASKS: tuple[Task, ...] = ("classification", "binary", "language_model")


def metric_names(task: str) -> tuple[str, ...]:
    """The metrics an ensemble reports for ``task``."""
    return LANGUAGE_MODEL_METRICS if task == "language_model" else CLASSIFICATION_METRICS


def as_probabilities(pred: np.ndarray, task: str) -> np.ndarray:
    """Predictions as a 2-D ``(examples, classes)`` probability matrix.

    A binary model's single sigmoid output ``p`` becomes the two columns ``[1 - p, p]``;
    language-model outputs are flattened to one row per predicted token.

    Example:
        >>> as_probabilities(np.array([[0.25], [1.0]]), "binary").tolist()
        [[0.75, 0.25], [0.0, 1.0]]
    """
    pred = np.asarray(pred)
    if task == "binary" and (pred.ndim == 1 or pred.shape[-1] == 1):
        p = pred.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return np.asarray(pred.reshape(-1, pred.shape[-1]))


def flat_targets(y: np.ndarray) -> np.ndarray:
    """Integer targets as one flat vector (one entry per example or predicted token)."""
    return np.asarray(y).reshape(-1).astype(np.int64)


def true_class_probs(pred: np.ndarray, y: np.ndarray, task: str = "classification") -> np.ndarray:
    """The probability each prediction gives to the true class, as a flat float32 vector.

    Log loss depends on nothing else, which is why greedy selection and weight fitting need
    only these vectors (one float per example) instead of whole probability matrices.

    Example:
        >>> true_class_probs(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([1, 1])).tolist()
        [0.10000000149011612, 0.800000011920929]
    """
    probs = as_probabilities(pred, task)
    targets = flat_targets(y)
    if len(targets) != len(probs):
        raise ValueError(
            f"{len(probs)} predictions but {len(targets)} targets: the arrays do not match"
        )
    return np.asarray(probs[np.arange(len(targets)), targets], dtype=np.float32)


def nll(p_true: np.ndarray) -> float:
    """Mean negative log-likelihood (natural log) of the true-class probabilities."""
    p = np.clip(np.asarray(p_true, dtype=np.float64), EPS, 1.0)
    return float(-np.mean(np.log(p)))


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Share of examples whose most probable class is the true one."""
    return float(np.mean(np.argmax(probs, axis=-1) == flat_targets(y)))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al., 2017) over ``bins`` equal-width bins.

    Each example falls in the bin of its confidence (highest probability); the error is the
    average over bins, weighted by their share of examples, of |accuracy - mean confidence|.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
        >>> round(expected_calibration_error(p, np.array([0, 1, 0, 0]), bins=10), 4)
        0.4
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = flat_targets(y)
    confidence = probs.max(axis=-1)
    correct = (np.argmax(probs, axis=-1) == targets).astype(np.float64)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    return float(np.sum(np.abs(acc_sum - conf_sum)) / max(len(targets), 1))


def evaluate(pred: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """The metrics of ``task`` for predictions ``pred`` against targets ``y``.

    Classifiers: ``accuracy``, ``nll`` and ``ece``; language models: ``loss`` (mean NLL per
    token in nats) and ``bits_per_token`` (the same in bits).

    Example:
        >>> evaluate(np.array([[0.5, 0.5]]), np.array([0]), "language_model")
        {'loss': 0.6931471805599453, 'bits_per_token': 1.0}
    """
    probs = as_probabilities(pred, task)
    loss = nll(true_class_probs(probs, y, "classification"))
    if task == "language_model":
        return {"loss": loss, "bits_per_token": loss / math.log(2)}
    return {
        "accuracy": accuracy(probs, y),
        "nll": loss,
        "ece": expected_calibration_error(probs, y),
    }
