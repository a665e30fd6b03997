"""The MLflow model of an exported ensemble, saved as code ("models from code").

MLflow copies this file into the model folder and runs it when the model is loaded
(``mlflow.pyfunc.load_model``, ``mlflow models serve``), so it imports nothing of hpo: only
MLflow, Keras, NumPy and pandas. It loads the ensemble's ``.keras`` file (safe mode), takes raw
inputs as users hold them, and answers with the predicted class, its name and the
probabilities of each example.

Inputs, by the kind of data the ensemble was trained on (``hpo.json`` beside the model):

* ``tabular``: a table whose columns are the training file's feature columns, matched by name
  (extra columns, such as the label, are ignored), or rows of values in that order;
* ``text``: a table with a ``text`` column, or a list or array of strings;
* ``image`` and ``sequence``: an array of shape (n, *shape) of numbers (pixels as stored, e.g.
  0 to 255; integer values);
* ``tokens``: an array (n, maxlen) of token strings (language models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd


class RawInputsModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """Predictions of a Keras model that takes raw inputs, with class names."""

    def load_context(self, context: Any) -> None:
        import keras

        self.model = keras.models.load_model(
            context.artifacts["keras_model"], safe_mode=True, compile=False
        )
        info = json.loads(Path(context.artifacts["info"]).read_text(encoding="utf-8"))
        self.inputs: dict[str, Any] = info["inputs"]
        self.class_names: list[str] | None = info.get("class_names")

    def predict(self, context: Any, model_input: Any, params: Any = None) -> pd.DataFrame:
        probs = np.asarray(self.model.predict(self._inputs(model_input), verbose=0))
        return outputs(probs, self.class_names)

    def _inputs(self, data: Any) -> Any:
        kind = self.inputs["kind"]
        shape = tuple(self.inputs["shape"])
        if kind == "text":
            if isinstance(data, pd.DataFrame):
                data = data["text"] if "text" in data.columns else data.iloc[:, 0]
            return np.asarray([str(t) for t in np.asarray(data).reshape(-1)], dtype=object)
        if kind == "tokens":
            import tensorflow as tf

            rows = np.asarray(data.values if isinstance(data, pd.DataFrame) else data)
            return tf.constant(rows.astype(str).reshape((-1, *shape)))
        if isinstance(data, pd.DataFrame):
            names = self.inputs.get("feature_names") or []
            if names and all(n in data.columns for n in names):
                data = data[names]
            data = data.to_numpy(dtype=np.float32)
        x = np.asarray(data, dtype=np.float32)
        return x.reshape((len(x), *shape))


def outputs(probs: np.ndarray, class_names: list[str] | None) -> pd.DataFrame:
    """One row per example: ``predicted`` (class index), ``class_name`` (where known) and
    ``probabilities`` (one sigmoid output: the probability of class 1)."""
    flat = probs.reshape(len(probs), -1).astype(np.float64)
    one = flat.shape[1] == 1
    predicted = (flat[:, 0] >= 0.5).astype(np.int64) if one else flat.argmax(axis=1)
    frame = pd.DataFrame({"predicted": predicted})
    if class_names and int(predicted.max(initial=0)) < len(class_names):
        frame["class_name"] = [class_names[int(i)] for i in predicted]
    frame["probabilities"] = list(flat)
    return frame


mlflow.models.set_model(RawInputsModel())
