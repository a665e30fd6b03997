"""Ensembles from Python: build one from studies, refit a trial on training + validation data,
load either (registered or exported), predict.

Example:
    >>> result = hpo.build_ensemble(["digits"], "digits-ens", size=5)  # doctest: +SKIP
    >>> ens = hpo.load_ensemble("digits-ens")  # doctest: +SKIP
    >>> ens.predict(images).labels[:3]  # doctest: +SKIP
    ['0', '1', '2']
    >>> hpo.export_ensemble("digits-ens", "digits.keras")  # doctest: +SKIP
    PosixPath('digits.keras')
    >>> hpo.refit("digits").model_uri  # doctest: +SKIP
    'models:/digits-refit/1'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# One function each for Python and ``hpo ensemble build`` / ``hpo export``.
from hpo.ensemble._build import build_ensemble
from hpo.ensemble._export import export_ensemble
from hpo.ensemble._listing import list_ensembles, show_ensemble
from hpo.ensemble._refit import RefitResult, refit

if TYPE_CHECKING:
    import numpy as np

    from hpo.ensemble._members import Predictor


@dataclass(frozen=True)
class Prediction:
    """What a model says about each example.

    ``probabilities`` has one row per example; ``predicted`` the most probable class index;
    ``labels`` its name where the class names are known (``class_names``); ``names`` the
    example names read from a file of documents (``line 3``, a file name), else None.
    """

    probabilities: np.ndarray
    predicted: np.ndarray
    labels: list[str] | None
    class_names: list[str] | None
    names: list[str] | None = None


class Ensemble:
    """A registered ensemble (``NAME[:VERSION]``) or an exported ``.keras`` file, loaded
    (members in memory) and ready to predict from raw inputs."""

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor

    def __repr__(self) -> str:
        return f"Ensemble({self.source!r}, {len(self._predictor.parts)} model(s))"

    @property
    def source(self) -> str:
        """Where it was loaded from (file, or ensemble name and version)."""
        return self._predictor.source

    @property
    def class_names(self) -> list[str] | None:
        return self._predictor.class_names

    @property
    def weights(self) -> list[float]:
        """The weight of each model loaded (one model: an exported ensemble, ``[1.0]``)."""
        return [p.weight for p in self._predictor.parts]

    def predict(self, inputs: Any, *, text_column: str = "text") -> Prediction:
        """Class probabilities for raw inputs: an array (images as the dataset holds them,
        rows of feature values), a list of documents, or a file's :class:`~pathlib.Path`
        (what ``hpo predict --input`` reads: .npz, .npy, CSV, .txt, a folder of .txt files).

        Raises:
            hpo.ensemble.EnsembleError: the inputs do not fit the model.
        """
        import numpy as np

        from hpo.ensemble._predict import predicted_classes

        names: list[str] | None = None
        if isinstance(inputs, os.PathLike):
            probs, names = self._predictor.predict_path(Path(inputs), text_column)
        else:
            probs = self._predictor.predict_inputs(inputs)
        predicted = predicted_classes(probs)
        classes = self.class_names
        labels = None
        if classes and predicted.ndim == 1 and int(predicted.max(initial=0)) < len(classes):
            labels = [classes[int(c)] for c in predicted]
        return Prediction(np.asarray(probs), predicted, labels, classes, names)


def load_ensemble(
    name_or_path: str | os.PathLike[str],
    *,
    tracking_uri: str | None = None,
    want_text: bool | None = None,
    vocabulary: str | os.PathLike[str] | None = None,
) -> Ensemble:
    """Load a registered ensemble ``NAME`` / ``NAME:VERSION`` or an exported ``.keras`` file.

    Models load in safe mode. A registered ensemble serves from its one exported model when
    it has one, else member by member (``want_text=True`` prefers members that read text).
    ``vocabulary``: the ``text_vocabulary.json`` of a ``.keras`` text model saved before
    models took raw text.

    Raises:
        hpo.ensemble.EnsembleError: no such ensemble or version.
        hpo.tracking.models.ModelError: the model file is missing or refused.
    """
    from hpo.ensemble._members import open_predictor

    ref = name_or_path if isinstance(name_or_path, str) else Path(name_or_path)
    vocab = Path(vocabulary) if vocabulary is not None else None
    return Ensemble(open_predictor(ref, tracking_uri, vocab, want_text=want_text))


__all__ = [
    "Ensemble",
    "Prediction",
    "RefitResult",
    "build_ensemble",
    "export_ensemble",
    "list_ensembles",
    "load_ensemble",
    "refit",
    "show_ensemble",
]
