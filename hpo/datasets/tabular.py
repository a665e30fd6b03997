"""The user's own tabular data: a CSV file with a label column, or an NPZ file with x and y.

Options (``dataset: {name: tabular, options: {...}}`` in the space file):

* ``path``: the file (``.csv``, ``.tsv`` or ``.npz``); without it, ``$HPO_TABULAR_PATH``;
* ``label`` [``label``]: the CSV column holding the class; every other column is a feature and
  must be numeric;
* ``delimiter`` [``,``; a tab for ``.tsv``]: the CSV field separator;
* ``x_key`` [``x``], ``y_key`` [``y``]: the arrays of an NPZ file (``x`` of shape (n, ...),
  ``y`` of shape (n,));
* ``task`` [``auto``]: ``auto`` makes two classes ``binary`` data (one sigmoid output) and more
  ``classification``; ``classification`` keeps two classes as softmax classification;
* ``standardize`` [true]: scale every feature to mean 0 and standard deviation 1 with the
  statistics of the training split only, so nothing about validation or test leaks into them;
* ``test_path``: a second file of the same columns (or arrays) that is the test split, whole
  and in its order; without it the test split is a stratified ``test_fraction`` of ``path``.

Saved models take the raw feature values, in the file's column order (the label left out):
the standardization is a ``Normalization`` layer inside them (:mod:`hpo.inputs`).

Labels, numbers or strings, become class indices 0..K-1 in sorted order, and ``class_names``
keeps the original labels (``"setosa"``, or ``"3"`` for a numeric label 3).
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.datasets._base import DataError, Dataset, Split, Task, split_indices, take_subset
from hpo.inputs import InputSpec

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

ENV_VAR = "HPO_TABULAR_PATH"
OPTIONS = ("path", "label", "delimiter", "x_key", "y_key", "task", "standardize", "test_path")
TASKS = ("auto", "binary", "classification")
SUFFIXES = (".csv", ".tsv", ".npz")
_SHOWN = 5  # how many bad columns or rows an error message lists


def load(spec: DatasetSpec) -> Dataset:
    """Read the file, check it, split it (stratified, seeded) and standardize it.

    Validation and test take ``validation_fraction`` and ``test_fraction`` of every class;
    ``subset`` then caps the training rows (seeded). Feature means and standard deviations come
    from that final training split alone and are kept in ``meta`` (``mean``, ``std``) so new data
    can be scaled the same way.

    Raises:
        DataError: no path, missing or empty file, no label column, non-numeric features, NaN
            or infinite features, a single class, or too few rows to split.

    Example:
        >>> from hpo.spaces import DatasetSpec
        >>> data = load(DatasetSpec(name="tabular", options={"path": "wine.csv"}))  # doctest: +SKIP
        >>> data.task, data.num_classes, data.input_shape  # doctest: +SKIP
        ('classification', 3, (13,))
    """
    options = dict(spec.options)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DataError(
            f"dataset 'tabular': unknown option {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(OPTIONS)}"
        )
    task_option = str(options.get("task", "auto"))
    if task_option not in TASKS:
        raise DataError(
            f"dataset 'tabular': option task must be one of {', '.join(TASKS)}, got {task_option!r}"
        )
    if not isinstance(options.get("standardize", True), bool):
        raise DataError(
            "dataset 'tabular': option standardize must be true or false, got "
            f"{options['standardize']!r}"
        )
    path = _resolve_path(options)
    x, labels, feature_names = _read_file(path, options)
    test_file = None
    if options.get("test_path"):
        test_file = _resolve_path({"path": options["test_path"]}, "dataset option 'test_path'")
        x_test, labels_test, test_names = _read_file(test_file, options)
        if test_names != feature_names or x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{test_file} (test_path) has the features {', '.join(test_names[:_SHOWN])}"
                f"{' ...' if len(test_names) > _SHOWN else ''} of shape {x_test.shape[1:]}, but "
                f"{path} has {', '.join(feature_names[:_SHOWN])}"
                f"{' ...' if len(feature_names) > _SHOWN else ''} of shape {x.shape[1:]}"
            )
        _check_finite(x_test, feature_names, test_file)
    _check_finite(x, feature_names, path)
    y, class_names = _encode_labels(labels, path)
    if len(class_names) < 2:
        raise DataError(
            f"{path}: every row has the same label {class_names[0]!r}; a classifier needs at "
            "least two classes (is the label column the right one?)"
        )
    if task_option == "binary" and len(class_names) != 2:
        raise DataError(
            f"{path}: option task: binary needs exactly two classes, found {len(class_names)} "
            f"({', '.join(class_names[:_SHOWN])}{', ...' if len(class_names) > _SHOWN else ''})"
        )
    task: Task = (
        "binary" if task_option != "classification" and len(class_names) == 2 else "classification"
    )

    test_fraction = 0.0 if test_file is not None else spec.test_fraction
    tr, va, te = split_indices(len(y), spec.validation_fraction, test_fraction, spec.seed, labels=y)
    if test_file is not None:
        y_test = _labels_as(labels_test, class_names, test_file)
    if min(len(tr), len(va), len(te) if test_file is None else len(y_test)) == 0:
        raise DataError(
            f"{path}: {len(y)} rows are too few to split into train ({len(tr)}), validation "
            f"({len(va)}) and test ({len(te)}) with validation_fraction "
            f"{spec.validation_fraction} and test_fraction {spec.test_fraction}; add rows or "
            "raise the fractions"
        )
    train = take_subset(Split(x[tr], y[tr]), spec.subset, spec.seed)
    validation = Split(x[va], y[va])
    test = Split(x[te], y[te]) if test_file is None else Split(x_test, y_test)
    scaled: tuple[Split, ...] = (train, validation, test)
    meta: dict[str, Any] = {
        "source": str(path),
        "feature_names": feature_names,
        "standardized": bool(options.get("standardize", True)),
        "test_split": str(test_file) if test_file else f"stratified {spec.test_fraction}",
    }
    inputs = InputSpec.tabular(feature_names, shape=x.shape[1:])
    if meta["standardized"]:
        mean = train.x.mean(axis=0, dtype=np.float64)
        std = train.x.std(axis=0, dtype=np.float64)
        # A constant feature has std 0: leave it centred rather than divide by zero.
        std = np.where(std > 0, std, 1.0)
        scaled = tuple(Split((s.x - mean) / std, s.y) for s in scaled)
        meta.update(mean=mean.tolist(), std=std.tolist())
        inputs = InputSpec.tabular(
            feature_names,
            mean=mean.reshape(-1).tolist(),
            std=std.reshape(-1).tolist(),
            shape=x.shape[1:],
        )
    # float32 only now: the statistics and the scaling were computed in float64.
    train, validation, test = (Split(s.x.astype(np.float32), s.y) for s in scaled)
    return Dataset(
        name="tabular",
        task=task,
        train=train,
        validation=validation,
        test=test,
        num_classes=len(class_names),
        class_names=class_names,
        meta=meta,
        inputs=inputs,
    )


def _read_file(path: Path, options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if path.suffix.lower() == ".npz":
        return _read_npz(path, str(options.get("x_key", "x")), str(options.get("y_key", "y")))
    delimiter = str(options.get("delimiter", "\t" if path.suffix.lower() == ".tsv" else ","))
    return _read_csv(path, str(options.get("label", "label")), delimiter)


def _labels_as(labels: np.ndarray, class_names: list[str], path: Path) -> np.ndarray:
    """Class indices of a test file's labels, in the classes of the training file."""
    y, names = _encode_labels(labels, path)
    index = {c: i for i, c in enumerate(class_names)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise DataError(
            f"{path} (test_path) has labels that the training file lacks: "
            f"{', '.join(map(repr, unknown[:_SHOWN]))}"
        )
    return np.array([index[names[i]] for i in y], dtype=np.int64)


def _resolve_path(options: dict[str, Any], where: str = "dataset option 'path'") -> Path:
    if options.get("path"):
        raw = str(options["path"])
    elif os.environ.get(ENV_VAR):
        where, raw = f"${ENV_VAR}", os.environ[ENV_VAR]
    else:
        raise DataError(
            "dataset 'tabular' needs a file: set `options: {path: data.csv}` in the space "
            f"file's dataset section, or the environment variable {ENV_VAR}"
        )
    path = Path(raw).expanduser()
    if not path.is_file():
        state = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(
            f"tabular data file {path} (from {where}) {state}; give the path of a CSV file "
            "with a label column or an NPZ file with x and y arrays"
        )
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(
            f"{path} (from {where}): unsupported file type {path.suffix or '(no suffix)'!r}; "
            f"the tabular dataset reads {', '.join(SUFFIXES)}"
        )
    return path


def _read_csv(path: Path, label: str, delimiter: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features (float64), raw labels (strings) and feature names of a CSV file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [
                row for row in csv.reader(f, delimiter=delimiter) if any(c.strip() for c in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV: {exc}") from None
    if not rows:
        raise DataError(f"{path} is empty: expected a header line and rows of data")
    header = [c.strip() for c in rows[0]]
    if label not in header:
        hint = " (is the delimiter right? set option 'delimiter')" if len(header) == 1 else ""
        raise DataError(
            f"{path} has no label column {label!r}; its columns are "
            f"{', '.join(map(repr, header))}{hint}. Set the dataset option 'label' to the "
            "column that holds the class"
        )
    body = rows[1:]
    if not body:
        raise DataError(f"{path} is empty: it has a header line but no rows of data")
    if len(header) < 2:
        raise DataError(f"{path} has only the label column {label!r}, no feature columns")
    # Line numbers for messages: blank lines were dropped, so count the kept rows (header = 1).
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{path}: data row {i - 1} (line {i} counting non-blank lines) has {len(row)} "
                f"fields, but the header has {len(header)}"
            )
    columns = list(zip(*body, strict=True))
    li = header.index(label)
    labels = np.array([c.strip() for c in columns[li]])
    names = [h for j, h in enumerate(header) if j != li]
    features = [columns[j] for j in range(len(header)) if j != li]
    x = np.empty((len(body), len(features)), dtype=np.float64)
    bad: list[str] = []
    for j, (name, column) in enumerate(zip(names, features, strict=True)):
        try:
            # An empty cell is a missing value: NaN, reported by the NaN check with the others.
            x[:, j] = [float(c) if c.strip() else math.nan for c in column]
        except ValueError:
            example = next(c for c in column if c.strip() and not _is_float(c))
            bad.append(f"{name!r} (e.g. {example.strip()!r})")
    if bad:
        raise DataError(
            f"{path}: feature columns must be numeric, but {len(bad)} hold text: "
            f"{', '.join(bad[:_SHOWN])}{', ...' if len(bad) > _SHOWN else ''}. Encode them as "
            "numbers (e.g. one-hot) or drop them"
        )
    return x, labels, names


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_npz(path: Path, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features, raw labels and feature names (``f0``, ``f1``, ...) of an NPZ file."""
    try:
        # allow_pickle=False: an NPZ file must not run code when it is read.
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            missing = [k for k in (x_key, y_key) if k not in keys]
            if missing:
                raise DataError(
                    f"{path} has no array {', '.join(map(repr, missing))}; it holds "
                    f"{', '.join(map(repr, keys)) or 'no arrays'}. Set the dataset options "
                    "'x_key' and 'y_key' to the arrays of features and labels"
                )
            x, y = npz[x_key], npz[y_key]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path} as an NPZ file: {exc}") from None
    if len(x.shape) < 2 or x.shape[0] == 0:
        raise DataError(
            f"{path}: array {x_key!r} has shape {x.shape}; expected (rows, features...) with at "
            "least one row"
        )
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: array {x_key!r} has dtype {x.dtype}; features must be numeric")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{path}: array {y_key!r} has shape {y.shape}, expected ({len(x)},): one label per "
            f"row of {x_key!r}"
        )
    names = [f"f{j}" for j in range(int(np.prod(x.shape[1:])))]
    return x.astype(np.float64), y, names


def _check_finite(x: np.ndarray, names: list[str], path: Path) -> None:
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    cols = [names[j] for j in np.flatnonzero(bad.any(axis=0))]
    raise DataError(
        f"{path}: {len(rows)} rows have missing (NaN) or infinite feature values, first rows "
        f"{', '.join(str(int(r) + 1) for r in rows[:_SHOWN])}, in columns "
        f"{', '.join(map(repr, cols[:_SHOWN]))}{', ...' if len(cols) > _SHOWN else ''}. Fill or "
        "drop them before training"
    )


def _encode_labels(labels: np.ndarray, path: Path) -> tuple[np.ndarray, list[str]]:
    """Class indices 0..K-1 (int64) and the original label of each index."""
    values = labels
    if labels.dtype.kind in "US":
        text = np.char.strip(labels.astype(str))
        if (text == "").any():
            rows = np.flatnonzero(text == "")
            raise DataError(
                f"{path}: {len(rows)} rows have no label, first rows "
                f"{', '.join(str(int(r) + 1) for r in rows[:_SHOWN])}"
            )
        numbers = [_number(t) for t in text]
        # Numeric labels sort as numbers (2 before 10), text labels as text.
        values = np.array(numbers) if all(n is not None for n in numbers) else text
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise DataError(
                f"{path}: the labels are not whole numbers (e.g. "
                f"{values[~np.isfinite(values) | (values != np.round(values))][0]}); the tabular "
                "dataset is for classification, not regression"
            )
        values = values.astype(np.int64)
    elif values.dtype.kind == "b":
        values = values.astype(np.int64)
    elif values.dtype.kind not in "iuU":
        raise DataError(f"{path}: labels of dtype {values.dtype} are not supported")
    classes, y = np.unique(values, return_inverse=True)
    return y.astype(np.int64).reshape(-1), [str(c) for c in classes.tolist()]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
