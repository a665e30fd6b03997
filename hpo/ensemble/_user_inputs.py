"""Inputs for ``hpo predict`` read from the files users hold, as a model that takes raw
inputs (:mod:`hpo.inputs`) wants them.

What a file holds is decided by the model's ``hpo.json`` (its raw inputs: kind, shape, feature
names): a CSV of raw feature values with a header (columns matched by name, the label column
and any other extra column ignored), images or integer sequences as ``.npz``/``.npy`` arrays
or CSV rows, documents as text (one per line, a folder of ``.txt`` files, or a CSV column), or
language-model contexts as text, one per line.
"""

from __future__ import annotations

import csv
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpo.ensemble._errors import EnsembleError

TEXT_SUFFIXES = (".txt", ".text")
CSV_SUFFIXES = (".csv", ".tsv")


def read_model_inputs(
    path: Path, info: dict[str, Any], text_column: str = "text"
) -> tuple[Any, list[str] | None]:
    """``(model inputs, example names or None)`` for ``path`` under the raw-input record
    ``info["inputs"]``.

    Raises:
        EnsembleError: no such file, no rows, missing feature columns (naming those found),
            non-numeric or missing (NaN) values, or rows of the wrong size.
    """
    inputs = info["inputs"]
    kind = inputs["kind"]
    shape = tuple(int(d) for d in inputs["shape"])
    if not path.exists():
        raise EnsembleError(f"{path}: no such input file or folder")
    if kind == "text":
        texts, names = read_texts(path, text_column)
        return np.asarray(texts, dtype=object), names
    if kind == "tokens":
        return _token_windows(path, inputs, shape, text_column)
    if path.suffix.lower() in (".csv", ".tsv"):
        x = _read_table(path, list(inputs.get("feature_names") or []), int(np.prod(shape)))
    else:
        x = _read_array(path)
    if len(x) == 0:
        raise EnsembleError(f"{path}: no examples to predict (0 rows)")
    if x.dtype.kind not in "biuf":
        raise EnsembleError(f"{path}: inputs of dtype {x.dtype} are not numbers")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        rows = ", ".join(str(int(i) + 1) for i in np.flatnonzero(bad)[:5])
        raise EnsembleError(
            f"{path}: {int(bad.sum())} examples have missing (NaN) or infinite values, first "
            f"rows {rows}; fill or drop them"
        )
    if x.shape[1:] != shape:
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise EnsembleError(
                f"{path}: examples of shape {x.shape[1:]}, but the model takes "
                f"{inputs.get('description') or shape} (shape {shape})"
            )
        x = x.reshape((len(x), *shape))
    return x, None


def _read_array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "x" not in data.files:
                    raise EnsembleError(
                        f"{path} has no array named 'x' (it has {', '.join(data.files)})"
                    )
                return np.asarray(data["x"])
        if path.suffix.lower() == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise EnsembleError(f"{path}: cannot read inputs: {exc}") from None
    raise EnsembleError(f"{path}: give inputs as .csv, .tsv, .npz (array x) or .npy")


def _read_table(path: Path, feature_names: Sequence[str], width: int) -> np.ndarray:
    """Rows of numbers; with a header, the ``feature_names`` columns in that order."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EnsembleError(f"cannot read {path} as CSV: {exc}") from None
    if not rows:
        raise EnsembleError(f"{path}: no examples to predict (the file is empty)")
    header = [c.strip() for c in rows[0]]
    has_header = not all(_is_number(c) for c in header)
    body = rows[1:] if has_header else rows
    if has_header and feature_names:
        missing = [n for n in feature_names if n not in header]
        if missing:
            raise EnsembleError(
                f"{path} lacks the feature column(s) {', '.join(map(repr, missing[:5]))}"
                f"{' ...' if len(missing) > 5 else ''} that the model reads; its columns are "
                f"{', '.join(map(repr, header))}"
            )
        columns = [header.index(n) for n in feature_names]
    else:
        columns = list(range(len(header)))
        if len(columns) != width:
            raise EnsembleError(
                f"{path} has {len(columns)} columns, but the model reads {width} values per "
                "example" + ("" if has_header else " (and the file has no header to match by)")
            )
    x = np.empty((len(body), len(columns)), dtype=np.float64)
    for i, row in enumerate(body):
        line = i + 1 + int(has_header)
        if len(row) != len(header):
            raise EnsembleError(
                f"{path}: line {line} has {len(row)} fields, but the header has {len(header)}"
            )
        for j, c in enumerate(columns):
            cell = row[c].strip()
            try:
                x[i, j] = float(cell) if cell else np.nan
            except ValueError:
                name = header[c] if has_header else f"column {c + 1}"
                raise EnsembleError(
                    f"{path}: line {line}, {name}: {cell!r} is not a number"
                ) from None
    return x


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _token_windows(
    path: Path, inputs: dict[str, Any], shape: tuple[int, ...], text_column: str
) -> tuple[Any, list[str]]:
    """A language model's windows: the last ``maxlen`` tokens of each line of text."""
    from hpo.datasets.text_corpus import tokenize

    tokenizer = inputs.get("tokenizer") or {}
    level, lowercase = tokenizer.get("level", "char"), bool(tokenizer.get("lowercase", False))
    texts, names = read_texts(path, text_column)
    maxlen = shape[0]
    windows = []
    for text, name in zip(texts, names, strict=True):
        tokens = tokenize(text, level, lowercase)
        if len(tokens) < maxlen:
            raise EnsembleError(
                f"{path}, {name}: {len(tokens)} tokens, but the model reads windows of "
                f"{maxlen} ({level} level): give at least {maxlen} tokens per line"
            )
        windows.append(tokens[-maxlen:])
    import tensorflow as tf

    return tf.constant(np.asarray(windows, dtype=str)), names


def is_text_input(path: Path) -> bool | None:
    """True for a ``.txt`` file or a folder, False for arrays, None for CSV (either)."""
    if path.is_dir() or path.suffix.lower() in TEXT_SUFFIXES:
        return True
    if path.suffix.lower() in CSV_SUFFIXES:
        return None
    return False


def read_texts(path: Path, text_column: str = "text") -> tuple[list[str], list[str]]:
    """``(documents, names)`` from raw text.

    * a ``.txt`` file: one document per non-blank line (named ``line N``);
    * a folder: every ``*.txt`` file under it (sorted, hidden ones skipped) is one document;
    * a ``.csv``/``.tsv`` file with a header: the ``text_column`` of each row is one document.

    Files are read as UTF-8.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "docs.txt"
        >>> _ = p.write_text("oil prices rose\\n\\nwheat exports fell\\n")
        >>> read_texts(p)
        (['oil prices rose', 'wheat exports fell'], ['line 1', 'line 3'])
    """
    if not path.exists():
        raise EnsembleError(f"{path}: no such input file or folder")
    try:
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*.txt")
                if p.is_file() and not any(part.startswith(".") for part in p.parts)
            )
            if not files:
                raise EnsembleError(f"{path}: the folder holds no .txt files")
            return [f.read_text(encoding="utf-8") for f in files], [
                str(f.relative_to(path)) for f in files
            ]
        if path.suffix.lower() in CSV_SUFFIXES:
            return _read_csv_texts(path, text_column)
        texts, names = [], []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                texts.append(line)
                names.append(f"line {i}")
    except UnicodeDecodeError as exc:
        raise EnsembleError(f"{path} is not valid UTF-8 text: {exc.reason}") from None
    if not texts:
        raise EnsembleError(f"{path}: no document (every line is blank)")
    return texts, names


def _read_csv_texts(path: Path, text_column: str) -> tuple[list[str], list[str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        if text_column not in columns:
            raise EnsembleError(
                f"{path} has no column {text_column!r}; its columns are "
                f"{', '.join(map(repr, columns)) or 'none'}: name the text column with "
                "--text-column"
            )
        texts, names = [], []
        for row in reader:
            texts.append(row.get(text_column) or "")
            names.append(f"line {reader.line_num}")
    if not texts:
        raise EnsembleError(f"{path} has a header but no rows")
    return texts, names
