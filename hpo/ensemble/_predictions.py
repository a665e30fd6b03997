"""Reading stored predictions one candidate at a time.

An ensemble over hundreds of candidates must not hold all their predictions at once: each
candidate's ``predictions.npz`` stays on disk, and one array of one candidate is read (as
float32) only when needed. What is kept in memory is small: the targets, and for log loss the
probability each candidate gives to the true class (one float per example and candidate).

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> y = np.array([0, 1])
    >>> for i, p in enumerate([[[0.8, 0.2], [0.4, 0.6]], [[0.6, 0.4], [0.2, 0.8]]]):
    ...     np.savez(d / f"{i}.npz", validation=np.array(p), test=np.array(p),
    ...              validation_true=y, test_true=y)
    >>> preds = PredictionSet([d / "0.npz", d / "1.npz"], "classification")
    >>> preds.true_probs("validation").astype(float).round(2).tolist()
    [[0.8, 0.6], [0.6, 0.8]]
    >>> preds.weighted_sum([0.5, 0.5], "test").astype(float).round(2).tolist()
    [[0.7, 0.3], [0.3, 0.7]]
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpo.ensemble._metrics import true_class_probs

SPLITS = ("validation", "test")
# What every trial stores; "test" predictions too where they were made (see check_predictions).
REQUIRED_ARRAYS = ("validation", "validation_true", "test_true")


def read_array(path: Path, key: str) -> np.ndarray:
    """One array of a ``.npz`` file; only that array is read and decompressed."""
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data[key])


def check_predictions(path: Path, reference: dict[str, np.ndarray] | None = None) -> str | None:
    """Why the predictions file at ``path`` cannot be used, or None when it can.

    It must hold validation predictions and both splits' targets (test predictions are
    optional: :mod:`hpo.ensemble._test_predictions` makes them for the candidates that need
    them); predictions must match their targets in length and be finite, and targets must
    equal ``reference`` (the first candidate's) when given. The file is checked one array at
    a time.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_ARRAYS if k not in data.files]
            if missing:
                return f"predictions.npz has no {', '.join(missing)} array"
            for split in SPLITS:
                target = data[f"{split}_true"]
                if reference is not None:
                    ref = reference[f"{split}_true"]
                    if target.shape != ref.shape or not np.array_equal(target, ref):
                        return f"{split} targets differ from the other candidates'"
                if split not in data.files:
                    continue
                pred = data[split]
                if pred.shape[0] != target.shape[0]:
                    return (
                        f"{split} predictions have {pred.shape[0]} rows but there are "
                        f"{target.shape[0]} targets"
                    )
                if not np.all(np.isfinite(pred)):
                    return f"{split} predictions are not all finite"
                if reference is not None and pred.shape[1:] != reference["shape"].shape[1:]:
                    return (
                        f"{split} predictions have shape {pred.shape}, the other "
                        f"candidates' {reference['shape'].shape}"
                    )
                del pred
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        return f"predictions.npz is unreadable: {type(exc).__name__}: {exc}"
    return None


def reference_of(path: Path) -> dict[str, np.ndarray]:
    """What :func:`check_predictions` compares other candidates with: targets and shapes."""
    ref = {}
    with np.load(path, allow_pickle=False) as data:
        for split in SPLITS:
            ref[f"{split}_true"] = np.asarray(data[f"{split}_true"])
        # An empty array of the right trailing shape (one per model, whatever the split): the
        # shape without the memory.
        ref["shape"] = np.empty((0, *data["validation"].shape[1:]), dtype=np.float32)
    return ref


class PredictionSet:
    """Stored predictions of several candidates, read from disk one candidate at a time.

    Args:
        paths: one ``predictions.npz`` per candidate, in candidate order.
        task: the dataset's task (``classification``, ``binary`` or ``language_model``).
    """

    def __init__(self, paths: Sequence[Path], task: str) -> None:
        if not paths:
            raise ValueError("a prediction set needs at least one candidate")
        self.paths = [Path(p) for p in paths]
        self.task = task
        self._targets: dict[str, np.ndarray] = {}
        self._true_probs: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> PredictionSet:
        """The candidates at ``indices``, in that order."""
        return PredictionSet([self.paths[i] for i in indices], self.task)

    def predictions(self, i: int, split: str) -> np.ndarray:
        """Candidate ``i``'s predictions on ``split`` as float32, read from disk now."""
        return read_array(self.paths[i], split).astype(np.float32, copy=False)

    def targets(self, split: str) -> np.ndarray:
        """The targets of ``split`` (shared by every candidate)."""
        if split not in self._targets:
            self._targets[split] = read_array(self.paths[0], f"{split}_true")
        return self._targets[split]

    def true_probs(self, split: str) -> np.ndarray:
        """A float32 ``(examples, candidates)`` matrix of true-class probabilities.

        Built one candidate at a time; only the matrix is kept.
        """
        if split not in self._true_probs:
            y = self.targets(split)
            first = true_class_probs(self.predictions(0, split), y, self.task)
            out = np.empty((len(first), len(self)), dtype=np.float32)
            out[:, 0] = first
            for i in range(1, len(self)):
                out[:, i] = true_class_probs(self.predictions(i, split), y, self.task)
            self._true_probs[split] = out
        return self._true_probs[split]

    def weighted_sum(self, weights: Sequence[float] | np.ndarray, split: str) -> np.ndarray:
        """``sum_i weights[i] * predictions_i`` on ``split``, reading one candidate at a time."""
        w = np.asarray(weights, dtype=np.float64)
        if len(w) != len(self):
            raise ValueError(f"{len(w)} weights for {len(self)} candidates")
        total: np.ndarray | None = None
        for i in np.flatnonzero(w):
            part = self.predictions(int(i), split) * np.float32(w[i])
            if total is None:
                total = part
            else:
                total += part
        if total is None:
            raise ValueError("every weight is zero")
        return total
