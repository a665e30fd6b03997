"""Oracles independent of hpo: what a test compares hpo's reported numbers and encodings with.

Nothing here imports hpo. Accuracy and log loss are scikit-learn's; the calibration error,
the splits and the tokens are written out from their documented rules (docs and docstrings),
so that a bug in hpo's own implementation cannot hide behind the same bug in its check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pytest

ECE_BINS = 15  # what hpo documents for its calibration error


def calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``bins`` equal-width confidence bins (Guo et al., 2017).

    An example's confidence is its highest probability; bin ``i`` holds confidences in
    ``(i/bins, (i+1)/bins]`` (a confidence of 0 in bin 0). The error is the sum over bins of
    ``|bin accuracy - bin mean confidence|`` weighted by the bin's share of the examples.
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    total = 0.0
    for i in range(bins):
        low, high = i / bins, (i + 1) / bins
        members = (confidence > low) & (confidence <= high)
        if i == 0:
            members |= confidence == 0.0
        if members.any():
            gap = abs(correct[members].mean() - confidence[members].mean())
            total += gap * members.sum() / len(confidence)
    return total


def near_bin_edges(probs: np.ndarray, within: float, bins: int = ECE_BINS) -> int:
    """How many confidences lie within ``within`` of a bin edge: the examples that two
    computations of nearly equal probabilities may put in neighbouring bins."""
    confidence = np.asarray(probs, dtype=np.float64).max(axis=1)
    edges = np.arange(1, bins) / bins
    return int(np.sum(np.min(np.abs(confidence[:, None] - edges[None, :]), axis=1) <= within))


def assert_reported_metrics(
    reported: dict[str, float], probs: np.ndarray, y: np.ndarray, num_classes: int
) -> None:
    """``reported`` (accuracy, nll, ece) equals scikit-learn's accuracy and log loss and the
    calibration error above, computed from ``probs`` and ``y`` that the test obtained itself.

    ``probs`` may differ from what hpo scored by float rounding (another model path, float32):
    the log loss is compared to 1e-4, the calibration error allows the examples near a bin edge
    to change bins (each moves the error by at most 2/n).
    """
    from sklearn.metrics import accuracy_score, log_loss

    probs = np.asarray(probs, dtype=np.float32)
    y = np.asarray(y)
    assert probs.shape == (len(y), num_classes), probs.shape
    expected = {
        "accuracy": accuracy_score(y, probs.argmax(axis=1)),
        "nll": log_loss(y, y_proba=probs, labels=list(range(num_classes))),
        "ece": calibration_error(probs, y),
    }
    assert reported["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9), (
        reported,
        expected,
    )
    assert reported["nll"] == pytest.approx(expected["nll"], rel=1e-4, abs=1e-5), (
        reported,
        expected,
    )
    slack = 2 * near_bin_edges(probs, 1e-5) / len(y)
    assert reported["ece"] == pytest.approx(expected["ece"], abs=slack + 1e-5), (
        reported,
        expected,
    )


def stratified_split(
    labels: np.ndarray, validation_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hpo's documented split of a labelled pool: per class (in sorted order), a permutation
    from one ``numpy.random.default_rng(seed)``; its first ``round(n * test_fraction)`` are
    test, the next ``round(n * validation_fraction)`` validation, the rest train. Sorted."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    validation: list[int] = []
    test: list[int] = []
    for cls in sorted(set(np.asarray(labels).tolist())):
        idx = rng.permutation(np.flatnonzero(np.asarray(labels) == cls))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * validation_fraction)
        test += idx[:n_test].tolist()
        validation += idx[n_test : n_test + n_val].tolist()
        train += idx[n_test + n_val :].tolist()
    return np.array(sorted(train)), np.array(sorted(validation)), np.array(sorted(test))


_PUNCTUATION = set("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'")


def words(text: str) -> list[str]:
    """Keras' ``TextVectorization`` defaults as its documentation states them: lower-case
    (TensorFlow lower-cases ASCII letters only), strip punctuation, split on white space."""
    lower = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    stripped = "".join(c for c in lower if c not in _PUNCTUATION)
    return [t for t in re.split("[ \t\n\v\f\r]+", stripped) if t]


def vocabulary(documents: Sequence[str], num_words: int) -> list[str]:
    """hpo's documented vocabulary: padding, unknown, then the ``num_words - 2`` most frequent
    words of the training documents, equal counts in order of first occurrence."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for text in documents:
        for w in words(text):
            counts[w] = counts.get(w, 0) + 1
            first.setdefault(w, len(first))
    ranked = sorted(counts, key=lambda w: (-counts[w], first[w]))
    return ["<pad>", "<oov>", *ranked[: num_words - 2]]


def encode(
    texts: Sequence[str], vocab: list[str], maxlen: int | None, multi_hot: bool
) -> np.ndarray:
    """Documents as hpo documents its encodings: ids (0 padding, 1 unknown) of the first
    ``maxlen`` words, padded with 0 at the end; or a 0/1 row per document with column 0 kept 0."""
    index = {w: i for i, w in enumerate(vocab)}
    rows = [[index.get(w, 1) for w in words(t)[:maxlen]] for t in texts]
    if multi_hot:
        out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
        for r, ids in enumerate(rows):
            out[r, ids] = 1.0
        out[:, 0] = 0.0
        return out
    assert maxlen is not None
    return np.array([(ids + [0] * maxlen)[:maxlen] for ids in rows], dtype=np.int64)
