"""The user's own labelled text: a CSV file, or a folder with one subfolder of ``.txt`` per class.

Options (``dataset: {name: text_classification, options: {...}}`` in the space file):

* ``path``: a ``.csv``/``.tsv`` file, or a folder laid out as Keras'
  ``text_dataset_from_directory`` expects (``path/<class>/*.txt``, searched recursively inside
  each class folder; hidden folders are ignored); without it, ``$HPO_TEXT_PATH``;
* ``text_column`` [``text``], ``label_column`` [``label``]: the CSV columns to read;
* ``delimiter`` [``,``; a tab for ``.tsv``]: the CSV field separator;
* ``file_encoding`` [``utf-8``]: how the files are encoded (``latin-1``, ``cp1252``, ...);
* ``test_path``: a second CSV or folder of the same layout that is the test split, whole and
  in its order (documents without any word left out, as in ``path``); without it the test
  split is a stratified ``test_fraction`` of ``path``;
* ``num_words``, ``maxlen``, ``encoding``: see :mod:`hpo.datasets._text`.

Class indices follow the sorted class names (folder names, or CSV labels: numerically when
every label is an integer, else alphabetically), as Keras does for folders. Documents with no
words at all (an empty file, an empty cell) are left out with a warning and counted in
``meta["skipped_empty"]``: one blank file in a folder of thousands should not stop a study,
and a class left without documents is an error anyway.

Splits: validation and test take a stratified, seeded ``validation_fraction`` and
``test_fraction`` (unless ``test_path`` is the test split) of every class; ``subset`` then caps
the training documents (seeded). The vocabulary comes from the training split only.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.datasets._base import DataError, Dataset
from hpo.datasets._text import TextOptions, TokenSplit, build_text_dataset, split_train, tokenize

if TYPE_CHECKING:
    from hpo.spaces import DatasetSpec

log = logging.getLogger(__name__)

ENV_VAR = "HPO_TEXT_PATH"
LOADER_OPTIONS = (
    "path", "text_column", "label_column", "delimiter", "file_encoding", "test_path",
)  # fmt: skip
CSV_SUFFIXES = (".csv", ".tsv")
NAME = "text_classification"
LAYOUT = (
    "a .csv/.tsv file with a text and a label column, or a folder with one subfolder of .txt "
    "files per class (path/<class>/*.txt)"
)
_SHOWN = 5  # how many files or rows an error message lists


def load(spec: DatasetSpec) -> Dataset:
    """Read the documents, split them (stratified, seeded) and encode them.

    Raises:
        DataError: no path, a missing file or folder, missing columns (naming those found),
            empty labels, an empty folder, a class folder without ``.txt`` files, a single
            class, undecodable files, or too few documents to split.

    Example:
        >>> from hpo.spaces import DatasetSpec
        >>> spec = DatasetSpec(name="text_classification", options={"path": "news/"})
        >>> data = load(spec)  # doctest: +SKIP
        >>> data.class_names, data.input_shape  # doctest: +SKIP
        (['business', 'sport', 'tech'], (200,))
    """
    options = dict(spec.options)
    text_options = TextOptions.parse(options, NAME, LOADER_OPTIONS)
    path = _resolve_path(options)
    file_encoding = str(options.get("file_encoding", "utf-8"))
    tokens, labels, keep, empty, kind = _read_documents(path, options, file_encoding)
    class_names = _sorted_labels({labels[i] for i in keep})
    missing = sorted(set(labels) - set(class_names))
    if missing:
        raise DataError(
            f"{path}: class {', '.join(map(repr, missing))} has only empty documents; "
            "add text or remove the class"
        )
    if len(class_names) < 2:
        raise DataError(
            f"{path}: every document has the label {class_names[0]!r}; a classifier needs at "
            f"least 2 classes"
            if class_names
            else f"{path}: no document has any text"
        )
    index = {c: i for i, c in enumerate(class_names)}
    pool = TokenSplit(
        [tokens[i] for i in keep], np.array([index[labels[i]] for i in keep], dtype=np.int64)
    )
    test = None
    if options.get("test_path"):
        test_file = _resolve_path({"path": options["test_path"]})
        t_tokens, t_labels, t_keep, _, _ = _read_documents(test_file, options, file_encoding)
        unknown = sorted({t_labels[i] for i in t_keep} - set(class_names))
        if unknown:
            raise DataError(
                f"{test_file} (test_path): label(s) {', '.join(map(repr, unknown[:_SHOWN]))} "
                f"not among the classes of {path} ({', '.join(class_names[:_SHOWN])})"
            )
        test = TokenSplit(
            [t_tokens[i] for i in t_keep],
            np.array([index[t_labels[i]] for i in t_keep], dtype=np.int64),
        )
    try:
        splits = split_train(pool, spec, test)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return build_text_dataset(
        NAME,
        splits,
        text_options,
        class_names,
        {
            "source": str(path),
            "format": kind,
            "skipped_empty": len(empty),
            "test_split": f"stratified {spec.test_fraction}"
            if test is None
            else f"test_path {options['test_path']}",
        },
    )


def _read_documents(
    path: Path, options: dict[str, Any], file_encoding: str
) -> tuple[list[list[str]], list[str], list[int], list[str], str]:
    """``(tokens, labels, indices of documents with words, names of empty ones, kind)``."""
    if path.is_dir():
        texts, labels, names = _read_folder(path, file_encoding)
        kind = "folder"
    else:
        texts, labels, names = _read_csv(path, options, file_encoding)
        kind = "csv"
    tokens = [tokenize(t) for t in texts]
    empty = [names[i] for i, t in enumerate(tokens) if not t]
    if empty:
        log.warning(
            "%s: left out %d document(s) without any word: %s%s",
            path,
            len(empty),
            ", ".join(empty[:_SHOWN]),
            " ..." if len(empty) > _SHOWN else "",
        )
    return tokens, labels, [i for i, t in enumerate(tokens) if t], empty, kind


def _resolve_path(options: dict[str, Any]) -> Path:
    if options.get("path"):
        path, what = Path(str(options["path"])).expanduser(), "dataset option 'path'"
    elif os.environ.get(ENV_VAR):
        path, what = Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        raise DataError(
            f"dataset {NAME!r} needs your data: set the dataset option 'path' (or ${ENV_VAR}) "
            f"to {LAYOUT}"
        )
    if not path.exists():
        raise DataError(f"{path} ({what}): no such file or folder; it should be {LAYOUT}")
    if path.is_file() and path.suffix.lower() not in CSV_SUFFIXES:
        raise DataError(
            f"{path} ({what}) is neither a .csv/.tsv file nor a folder; it should be {LAYOUT}"
        )
    return path


def _sorted_labels(labels: set[str]) -> list[str]:
    """Numeric order when every label is an integer ("2" before "10"), else alphabetical."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _read_text(path: Path, file_encoding: str) -> str:
    try:
        return path.read_text(encoding=file_encoding)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid {file_encoding} ({exc.reason} at byte {exc.start}); set the "
            "dataset option file_encoding (e.g. latin-1 or cp1252) to its encoding"
        ) from None
    except LookupError:
        raise DataError(f"dataset {NAME!r}: unknown file_encoding {file_encoding!r}") from None


def _read_folder(folder: Path, file_encoding: str) -> tuple[list[str], list[str], list[str]]:
    """(texts, labels, file names) from ``folder/<class>/**/*.txt``."""
    classes = sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )
    if not classes:
        found = sorted(p.name for p in folder.iterdir())[:_SHOWN]
        raise DataError(
            f"{folder} has no class subfolders (found: {', '.join(found) or 'nothing'}); "
            f"it should be {LAYOUT}"
        )
    texts: list[str] = []
    labels: list[str] = []
    names: list[str] = []
    without = []
    for cls in classes:
        files = sorted(p for p in cls.rglob("*.txt") if p.is_file())
        if not files:
            without.append(cls.name)
        for f in files:
            texts.append(_read_text(f, file_encoding))
            labels.append(cls.name)
            names.append(str(f.relative_to(folder)))
    if without:
        raise DataError(
            f"{folder}: class folder(s) {', '.join(without)} have no .txt files"
            + (" (an empty folder?)" if len(without) == len(classes) else "")
            + "; put each class's documents as .txt files in its folder, or remove the folder"
        )
    return texts, labels, names


def _read_csv(
    path: Path, options: dict[str, Any], file_encoding: str
) -> tuple[list[str], list[str], list[str]]:
    """(texts, labels, row names) from the CSV's text and label columns."""
    text_col = str(options.get("text_column", "text"))
    label_col = str(options.get("label_column", "label"))
    delimiter = str(options.get("delimiter", "\t" if path.suffix.lower() == ".tsv" else ","))
    if len(delimiter) != 1:
        raise DataError(f"dataset {NAME!r}: delimiter must be one character, got {delimiter!r}")
    # Articles longer than csv's default 128 KiB field limit are legitimate.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with path.open(newline="", encoding=file_encoding) as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            columns = list(reader.fieldnames or [])
            if not columns:
                raise DataError(
                    f"{path} is empty: expected a header row with {text_col!r} and "
                    f"{label_col!r} columns"
                )
            absent = [c for c in (text_col, label_col) if c not in columns]
            if absent:
                raise DataError(
                    f"{path} has no column {', '.join(map(repr, absent))}; its columns are "
                    f"{', '.join(map(repr, columns))} (delimiter {delimiter!r}). Name the "
                    "columns with the dataset options text_column and label_column"
                )
            texts, labels, names, no_label = [], [], [], []
            for row in reader:
                line = reader.line_num
                label = (row.get(label_col) or "").strip()
                if not label:
                    no_label.append(line)
                    continue
                texts.append(row.get(text_col) or "")
                labels.append(label)
                names.append(f"line {line}")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid {file_encoding} ({exc.reason} at byte {exc.start}); set the "
            "dataset option file_encoding (e.g. latin-1 or cp1252) to its encoding"
        ) from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from None
    except LookupError:
        raise DataError(f"dataset {NAME!r}: unknown file_encoding {file_encoding!r}") from None
    if no_label:
        shown = ", ".join(map(str, no_label[:_SHOWN])) + (" ..." if len(no_label) > _SHOWN else "")
        raise DataError(
            f"{path}: {len(no_label)} row(s) have an empty {label_col!r} column (lines {shown}); "
            "every document needs a label"
        )
    if not texts:
        raise DataError(f"{path} has a header but no rows")
    return texts, labels, names
