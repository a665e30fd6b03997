"""Weighted ensembles of a study's best trials, registered in MLflow and exported as one file.

Choosing candidates (:mod:`hpo.ensemble._candidates`) and fitting weights
(:mod:`hpo.ensemble._weights`) are separate, as in auto-sklearn. Everything works from what
trials stored: validation predictions choose and weight; test predictions are made at this stage,
from the stored models, only for what is scored on test (:mod:`hpo.ensemble._test_predictions`),
and are only scored.

Example:
    >>> from hpo.ensemble import build_ensemble, export_ensemble
    >>> result = build_ensemble(["image_cnn"], "cnn-ens", size=10)  # doctest: +SKIP
    >>> result.metrics["test"]["ensemble"]["accuracy"]  # doctest: +SKIP
    0.91
    >>> export_ensemble("cnn-ens", "cnn-ens.keras")  # doctest: +SKIP
    PosixPath('cnn-ens.keras')
"""

from hpo.ensemble._build import build_ensemble
from hpo.ensemble._combine import Combination, combine, fit_weights, selection_metric
from hpo.ensemble._errors import EnsembleError, EnsembleWarning, RegistryUnavailableError
from hpo.ensemble._export import FORMATS, ensemble_model, export_ensemble
from hpo.ensemble._listing import list_ensembles, show_ensemble
from hpo.ensemble._metrics import (
    accuracy,
    evaluate,
    expected_calibration_error,
    nll,
    true_class_probs,
)
from hpo.ensemble._predict import load_predictor, predict_arrays, read_inputs, write_predictions
from hpo.ensemble._predictions import PredictionSet
from hpo.ensemble._refit import RefitError, RefitResult, refit
from hpo.ensemble._result import EnsembleResult, Member
from hpo.ensemble._test_predictions import DeferredPredictionError, trial_predictions
from hpo.ensemble._weights import (
    METHODS,
    average_weights,
    caruana_selection,
    caruana_weights,
    fit_simplex_weights,
)
from hpo.tracking.artifacts import TEST_PREDICTIONS_FILE

__all__ = [
    "FORMATS",
    "METHODS",
    "TEST_PREDICTIONS_FILE",
    "Combination",
    "DeferredPredictionError",
    "EnsembleError",
    "EnsembleResult",
    "EnsembleWarning",
    "Member",
    "PredictionSet",
    "RefitError",
    "RefitResult",
    "RegistryUnavailableError",
    "accuracy",
    "average_weights",
    "build_ensemble",
    "caruana_selection",
    "caruana_weights",
    "combine",
    "ensemble_model",
    "evaluate",
    "expected_calibration_error",
    "export_ensemble",
    "fit_simplex_weights",
    "fit_weights",
    "list_ensembles",
    "load_predictor",
    "nll",
    "predict_arrays",
    "read_inputs",
    "refit",
    "selection_metric",
    "show_ensemble",
    "trial_predictions",
    "true_class_probs",
    "write_predictions",
]
