"""``hpo predict``: a model from a file or the registry, the inputs users give it, and what it
predicts (class probabilities, the predicted class) written as CSV or JSON."""

from __future__ import annotations

import csv
import json
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpo.ensemble._errors import EnsembleError
from hpo.ensemble._export import (
    download_model_dir,
    keras_file,
    parse_registered_ref,
    registered_version,
    registry_client,
)

if TYPE_CHECKING:
    import keras


def load_predictor(
    ref: str | Path, tracking_uri: str | None = None, version: int | None = None
) -> keras.Model:
    """A model from a ``.keras`` file or a registered ensemble (``NAME``, ``NAME:VERSION``).

    Files are loaded in safe mode: legacy ``.h5`` files and files holding a ``Lambda`` layer
    or other arbitrary code are refused (:class:`hpo.tracking.models.ModelError`).
    """
    from hpo.tracking.models import load_keras_model

    path = Path(ref)
    if path.exists() or path.suffix.lower() in {".keras", ".h5", ".hdf5"}:
        return load_keras_model(path)

    name, parsed = parse_registered_ref(str(ref))
    client = registry_client(name, tracking_uri)
    mv = registered_version(client, name, version if version is not None else parsed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = download_model_dir(client, mv, Path(tmp))
        return load_keras_model(keras_file(model_dir))


def read_inputs(path: str | Path, input_shape: Sequence[int | None]) -> np.ndarray:
    """Model inputs from an ``.npz`` (array ``x``), ``.npy`` or CSV file of numbers.

    A CSV holds one example per row (a header row is skipped); rows are reshaped to the
    model's ``input_shape`` (without the batch axis), e.g. 64 columns to 8x8x1 images.
    """
    path = Path(path)
    if not path.exists():
        raise EnsembleError(f"{path}: no such input file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "x" not in data.files:
                    raise EnsembleError(
                        f"{path} has no array named 'x' (it has {', '.join(data.files)})"
                    )
                x = np.asarray(data["x"])
        elif suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        else:
            try:
                x = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32)
            except ValueError:
                x = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32, skiprows=1)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise EnsembleError(f"{path}: cannot read inputs: {exc}") from None
    shape = tuple(int(d) for d in input_shape if d is not None)
    if x.shape[1:] != shape:
        if x.ndim >= 1 and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
            x = x.reshape((len(x), *shape))
        else:
            raise EnsembleError(
                f"{path}: inputs of shape {x.shape[1:]} per example, the model expects {shape}"
            )
    return x


def model_probabilities(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """``model``'s outputs for ``x`` (numbers cast to the model's input dtype; strings as
    they are)."""
    dtype = str(model.inputs[0].dtype)
    if "string" not in dtype and isinstance(x, np.ndarray):
        x = x.astype(dtype)
    return np.asarray(model.predict(x, batch_size=256, verbose=0))


def predicted_classes(probs: np.ndarray) -> np.ndarray:
    """The most probable class of each row; a single sigmoid output predicts class 1 when its
    probability is at least 0.5.

    Example:
        >>> predicted_classes(np.array([[0.2, 0.8], [0.9, 0.1]])).tolist()
        [1, 0]
    """
    if probs.ndim >= 1 and (probs.ndim == 1 or probs.shape[-1] == 1):
        return (probs.reshape(len(probs), -1)[:, 0] >= 0.5).astype(np.int64)
    return np.asarray(np.argmax(probs, axis=-1))


def predict_arrays(model: keras.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, predicted)``: model outputs and the most probable class of each."""
    probs = model_probabilities(model, x)
    return probs, predicted_classes(probs)


def write_predictions(
    path: str | Path,
    probs: np.ndarray,
    predicted: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write predictions: ``.npz`` (arrays ``probabilities``, ``predicted`` and, with
    ``class_names`` (one per example), ``class_name``), ``.csv`` (one row per example: the
    probabilities, the predicted class, its name) or ``.json``."""
    path = Path(path)
    suffix = path.suffix.lower()
    names = list(class_names) if class_names is not None else None
    if suffix == ".npz":
        arrays: dict[str, Any] = {"probabilities": probs, "predicted": predicted}
        if names is not None:
            arrays["class_name"] = np.asarray(names, dtype=str)
        np.savez_compressed(path, **arrays)
    elif suffix == ".csv":
        flat = probs.reshape(len(probs), -1)
        pred = predicted.reshape(len(flat), -1)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(
                [*(f"p{i}" for i in range(flat.shape[1])), "predicted"]
                + (["class_name"] if names is not None else [])
            )
            for i, row in enumerate(flat):
                writer.writerow(
                    [*(f"{v:.8g}" for v in row), *(str(int(c)) for c in pred[i])]
                    + ([names[i]] if names is not None else [])
                )
    elif suffix == ".json":
        doc: dict[str, Any] = {"probabilities": probs.tolist(), "predicted": predicted.tolist()}
        if names is not None:
            doc["class_name"] = names
        path.write_text(json.dumps(doc, ensure_ascii=False))
    else:
        raise EnsembleError(f"{path}: write predictions to a .npz, .csv or .json file")
    return path
