"""Datasets: fixed, seeded train / validation / test splits of real data.

The test split is never used for search or for fitting ensemble weights: trials only report
validation metrics and store the test targets; the final stage (:mod:`hpo.ensemble`) predicts
the test split, for its report alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hpo.errors import UsageError

if TYPE_CHECKING:
    from hpo.inputs import InputSpec

Task = Literal["classification", "binary", "language_model", "reconstruction"]


class DataError(UsageError, ValueError):
    """Data is missing, unreadable, or of the wrong shape or type for a family.

    The message says where the loader looked and what the user can do.
    """


@dataclass
class Split:
    """Inputs and targets of one split."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Dataset:
    """A dataset ready for training, with its fixed splits.

    ``num_classes`` is set for classification and language models (vocabulary size);
    ``meta`` carries what a family may need (vocabulary, class names, sequence length, ...).
    ``inputs`` records how the arrays were made from what users hold (pixels, raw feature
    values, strings): saved models take those raw inputs (:mod:`hpo.inputs`).
    """

    name: str
    task: Task
    train: Split
    validation: Split
    test: Split
    num_classes: int | None = None
    class_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    inputs: InputSpec | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.train.x.shape[1:])

    def fingerprint(self) -> str:
        """A hash of the validation and test targets: equal for two studies on the same split."""
        h = hashlib.sha256()
        for split in (self.validation, self.test):
            y = np.ascontiguousarray(split.y)
            h.update(str(y.shape).encode())
            h.update(y.tobytes())
        return h.hexdigest()[:16]

    def with_validation_in_train(self) -> Dataset:
        """This dataset with its validation examples appended to its training examples (for
        a refit: the chosen configuration trained on all the data that is not test).

        ``validation`` and ``test`` stay as they are, so the fingerprint does not change; the
        input transformation (``inputs``: scaling, vocabulary) stays the one fitted on the
        training split alone, which every trial of the study used.

        Example:
            >>> x, y = np.zeros((4, 2), "float32"), np.array([0, 1, 0, 1])
            >>> data = Dataset("toy", "binary", Split(x[:2], y[:2]), Split(x[2:], y[2:]),
            ...                Split(x, y))
            >>> merged = data.with_validation_in_train()
            >>> len(merged.train), merged.fingerprint() == data.fingerprint()
            (4, True)
        """
        train = Split(
            np.concatenate([self.train.x, self.validation.x]),
            np.concatenate([self.train.y, self.validation.y]),
        )
        return replace(self, train=train)

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "task": self.task,
            "train_size": len(self.train),
            "validation_size": len(self.validation),
            "test_size": len(self.test),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "fingerprint": self.fingerprint(),
            **({"class_names": list(self.class_names)} if self.class_names else {}),
            **({"inputs": self.inputs.to_json()} if self.inputs is not None else {}),
        }


def split_indices(
    n: int,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train / validation / test index arrays; stratified by ``labels`` when given.

    Example:
        >>> tr, va, te = split_indices(100, 0.1, 0.2, seed=0)
        >>> len(tr), len(va), len(te), len(set(tr) | set(va) | set(te))
        (70, 10, 20, 100)
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n)
        n_test = round(n * test_fraction)
        n_val = round(n * validation_fraction)
        return (
            np.sort(order[n_test + n_val :]),
            np.sort(order[n_test : n_test + n_val]),
            np.sort(order[:n_test]),
        )
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * validation_fraction)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


def take_subset(split: Split, size: int | None, seed: int) -> Split:
    """At most ``size`` examples of ``split``, chosen with a seeded permutation."""
    if size is None or size >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:size])
    return Split(split.x[idx], split.y[idx])
