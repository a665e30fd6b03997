"""A user's own dataset: ``dataset: {name: mypackage.data:load}`` names a loader that returns
arrays; hpo splits them (fixed and seeded), takes the subset and checks them.

The loader is called with the dataset's ``options`` as keyword arguments and returns either

- ``(x, y)``: every example; hpo splits off ``validation_fraction`` and ``test_fraction`` of
  each class with the dataset's ``seed``, or
- a mapping with ``train`` and optionally ``validation`` and ``test``, each an ``(x, y)`` pair
  (a missing one is split off ``train`` with its fraction), and optionally ``task``
  (``classification``, the default, or ``binary``) and ``class_names``.

``x`` holds numbers of shape ``(examples, ...)`` (made float32), ``y`` integer class labels
``0 .. k-1`` (for ``binary``: 0 and 1, one sigmoid output). ``subset`` caps the training
examples as for every dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo._registry import import_object
from hpo.catalog import check_allowed
from hpo.datasets._base import DataError, Dataset, Split, Task, split_indices, take_subset

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

_SPLITS = ("train", "validation", "test")
_KEYS = (*_SPLITS, "task", "class_names")
_TASKS: tuple[Task, ...] = ("classification", "binary")


def load_user_dataset(spec: DatasetSpec) -> Dataset:
    """Call the loader ``spec.name`` names with ``spec.options`` and make a :class:`Dataset`
    of what it returns (see :func:`from_arrays`)."""
    check_allowed("dataset", spec.name)
    loader = import_object(spec.name)
    try:
        raw = loader(**spec.options)
    except DataError:
        raise
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise DataError(f"dataset {spec.name!r}: its loader failed: {reason}") from exc
    return from_arrays(raw, spec)


def from_arrays(raw: Any, spec: DatasetSpec) -> Dataset:
    """The :class:`Dataset` of what a loader returned, split, subset and checked per ``spec``.

    Raises:
        DataError: one line naming the dataset and what is wrong.

    Example:
        >>> import numpy as np
        >>> from hpo.spaces import DatasetSpec
        >>> x, y = np.random.default_rng(0).normal(size=(100, 4)), np.arange(100) % 3
        >>> data = from_arrays((x, y), DatasetSpec(name="mine:load", subset=50))
        >>> len(data.train), len(data.validation), len(data.test), data.num_classes
        (50, 9, 21, 3)
        >>> from_arrays((x, y[:99]), DatasetSpec(name="mine:load"))
        Traceback (most recent call last):
        ...
        hpo.datasets._base.DataError: dataset 'mine:load': x has 100 examples but y has 99
    """
    name = spec.name

    def fail(message: str) -> DataError:
        return DataError(f"dataset {name!r}: {message}")

    if isinstance(raw, Mapping):
        unknown = [str(k) for k in raw if k not in _KEYS]
        if unknown:
            raise fail(f"the loader returned unknown key {unknown[0]!r}; known: {', '.join(_KEYS)}")
        if "train" not in raw:
            raise fail("the loader returned a mapping without 'train'")
        given = {k: raw[k] for k in _SPLITS if raw.get(k) is not None}
        task = raw.get("task", "classification")
        class_names = raw.get("class_names")
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        given, task, class_names = {"all": raw}, "classification", None
    else:
        raise fail(
            f"the loader returned a {type(raw).__name__}: expected (x, y) or a mapping "
            "with train, validation, test"
        )
    if task not in _TASKS:
        raise fail(f"task must be one of {', '.join(_TASKS)}, got {task!r}")
    pairs = {k: _pair(v, k, fail) for k, v in given.items()}
    shapes = {k: x.shape[1:] for k, (x, _) in pairs.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {tuple(s)}" for k, s in shapes.items())
        raise fail(f"the splits' examples differ in shape: {listed}")
    labels = np.concatenate([y for _, y in pairs.values()])
    if task == "binary" and not np.isin(labels, (0, 1)).all():
        raise fail("binary labels must be 0 or 1")
    num_classes = int(labels.max()) + 1
    if num_classes < 2:
        raise fail("y holds one class only: classification needs two or more")
    if class_names is not None:
        if not isinstance(class_names, Sequence) or len(class_names) != num_classes:
            raise fail(f"class_names must list {num_classes} names, one per class")
        class_names = [str(c) for c in class_names]
    splits = _split(pairs, spec)
    for key, split in zip(_SPLITS, splits, strict=True):
        if len(split) == 0:
            raise fail(f"the {key} split is empty: give more examples or larger fractions")
    train, validation, test = splits
    return Dataset(
        name=name,
        task=task,
        train=take_subset(train, spec.subset, spec.seed),
        validation=validation,
        test=test,
        num_classes=1 if task == "binary" else num_classes,
        class_names=class_names,
        meta={"source": name},
    )


def _pair(value: Any, key: str, fail: Any) -> tuple[np.ndarray, np.ndarray]:
    where = "" if key == "all" else f"{key}: "
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise fail(f"{where}expected a pair (x, y), got a {type(value).__name__}")
    try:
        x, y = np.asarray(value[0]), np.asarray(value[1])
    except Exception as exc:  # ragged lists and the like
        raise fail(f"{where}x and y must be arrays: {exc}") from None
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise fail(
            f"{where}x must be numbers of shape (examples, features...), got {x.dtype} "
            f"of shape {x.shape}"
        )
    if y.ndim != 1 or y.dtype.kind not in "biu":
        raise fail(
            f"{where}y must be integer class labels, one per example, got {y.dtype} "
            f"of shape {y.shape}"
        )
    if len(x) != len(y):
        raise fail(f"{where}x has {len(x)} examples but y has {len(y)}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise fail(f"{where}x holds NaN or infinite values")
    if len(y) and y.min() < 0:
        raise fail(f"{where}class labels must be 0 or more, found {int(y.min())}")
    return x, y.astype(np.int64)


def _split(
    pairs: dict[str, tuple[np.ndarray, np.ndarray]], spec: DatasetSpec
) -> tuple[Split, Split, Split]:
    """Train, validation and test; the ones not given are split off (seeded, stratified)."""
    if "all" in pairs:
        x, y = pairs["all"]
        tr, va, te = split_indices(
            len(y), spec.validation_fraction, spec.test_fraction, spec.seed, labels=y
        )
        return Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te])
    x, y = pairs["train"]
    missing_val = "validation" not in pairs
    missing_test = "test" not in pairs
    tr, va, te = split_indices(
        len(y),
        spec.validation_fraction if missing_val else 0.0,
        spec.test_fraction if missing_test else 0.0,
        spec.seed,
        labels=y,
    )
    train = Split(x[tr], y[tr])
    validation = Split(*pairs["validation"]) if not missing_val else Split(x[va], y[va])
    test = Split(*pairs["test"]) if not missing_test else Split(x[te], y[te])
    return train, validation, test
